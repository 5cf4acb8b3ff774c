//! Guest RAM: one memfd mapped shared, split around the 32-bit MMIO gap.
//!
//! A memfd (rather than anonymous memory) keeps guest pages apart from the
//! VMM's own in `/proc/<pid>/status`: they count as `RssShmem`, so the VMM's
//! overhead is `RssAnon + RssFile`.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Why guest memory could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory size must be between 64 MiB and 1 TiB, got {0} MiB")]
    InvalidSize(u64),
    #[error("cannot create the guest memory memfd")]
    Memfd(#[source] std::io::Error),
    #[error("cannot size the guest memory memfd")]
    Truncate(#[source] std::io::Error),
    #[error("cannot map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    #[error("KVM refused guest memory slot {slot}")]
    RegisterSlot {
        slot: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// The guest RAM ranges for `size` bytes: below the MMIO gap first, the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START),
        ]
    }
}

/// Creates guest RAM of `mem_mib` MiB backed by one memfd.
pub fn create_guest_memory(mem_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if !(64..=1 << 20).contains(&mem_mib) {
        return Err(MemoryError::InvalidSize(mem_mib));
    }
    let size = mem_mib << 20;
    let name = CString::new("hull-guest-ram").expect("static name has no NUL");
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call;
    // the flags are valid memfd_create flags. The result is checked below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create, is valid and owned by no
    // one else; `File` takes sole ownership and closes it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(MemoryError::Truncate)?;
    let mut offset = 0u64;
    let mut ranges = Vec::new();
    for (start, len) in ram_ranges(size) {
        let file = file.try_clone().map_err(MemoryError::Memfd)?;
        ranges.push((start, len as usize, Some(FileOffset::new(file, offset))));
        offset += len;
    }
    GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Map)
}

/// Registers every region of `mem` with KVM, one slot each.
pub fn register_with_kvm(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let host_addr = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .expect("an mmap region has a host address at offset 0");
        let kvm_region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host_addr as u64,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes at
        // `userspace_addr`, owned by `mem`, which the VMM keeps alive for as
        // long as the VM exists (the process ends with the VM); slots do not
        // overlap because the ranges come from one non-overlapping collection.
        unsafe { vm.set_user_memory_region(kvm_region) }
            .map_err(|source| MemoryError::RegisterSlot { slot, source })?;
    }
    Ok(())
}

/// Total bytes of guest RAM.
pub fn total_size(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// End of the RAM below the MMIO gap (exclusive).
pub fn low_ram_end(mem: &GuestMemoryMmap) -> GuestAddress {
    let first = mem
        .iter()
        .next()
        .expect("guest memory has at least one region");
    first.start_addr().unchecked_add(first.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn small_vm_has_one_range() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
    }

    #[test]
    fn large_vm_skips_the_mmio_gap() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(
            r[1],
            (GuestAddress(MMIO_GAP_END), (4 << 30) - MMIO_GAP_START)
        );
    }

    #[test]
    fn memfd_memory_is_readable_and_writable() {
        let mem = create_guest_memory(64).unwrap();
        assert_eq!(total_size(&mem), 64 << 20);
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert!(mem.write_obj(1u8, GuestAddress(64 << 20)).is_err());
        assert_eq!(low_ram_end(&mem), GuestAddress(64 << 20));
    }

    #[test]
    fn rejects_tiny_memory() {
        assert!(matches!(
            create_guest_memory(1),
            Err(MemoryError::InvalidSize(1))
        ));
    }
}
