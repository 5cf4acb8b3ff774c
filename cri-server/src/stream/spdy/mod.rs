//! SPDY/3.1 (placeholder; being written).
