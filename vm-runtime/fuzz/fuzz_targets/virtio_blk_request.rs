//! virtio-blk request parsing and handling on guest-chosen descriptor chains.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vm_runtime::fuzzing::blk_requests(data);
});
