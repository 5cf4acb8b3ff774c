//! Pod networking: CNI plugins configure a network namespace per pod, and a
//! tap device in that namespace, joined to the CNI interface with tc mirred
//! redirects, carries the pod's network into its VM as virtio-net.
//!
//! - [`cni`]: network configuration, plugin invocation (ADD/CHECK/DEL) and
//!   results, per the CNI specification.
//! - [`netns`]: the pod's named network namespace (created, entered,
//!   removed, listed after a restart).
//! - [`tap`]: the tap device and the tc redirects between it and the CNI
//!   interface.

pub mod cni;
pub mod netns;
mod rtnl;
pub mod tap;
