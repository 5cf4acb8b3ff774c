//! Shared helpers for hull's end-to-end tests: starting hulld, a CRI client
//! over its unix socket, a local registry, and waiting with deadlines.
