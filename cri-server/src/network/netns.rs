//! The pod's named network namespace.
