//! hulld: serves the CRI v1 RuntimeService and ImageService on a unix socket.

fn main() {}
