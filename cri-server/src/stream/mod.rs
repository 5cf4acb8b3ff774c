//! hulld's streaming server: the URLs that Exec, Attach and PortForward
//! return, and the protocols the kubelet and crictl speak on them (SPDY/3.1
//! and WebSocket).

pub mod spdy;
