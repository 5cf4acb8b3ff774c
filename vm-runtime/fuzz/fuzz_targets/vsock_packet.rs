//! vsock packet parsing (tx) and writing (rx) on guest-chosen descriptor chains.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vm_runtime::fuzzing::vsock_packets(data);
});
