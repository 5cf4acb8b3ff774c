//! The protocol between hulld (host) and the guest agent (PID 1 in each pod VM).
