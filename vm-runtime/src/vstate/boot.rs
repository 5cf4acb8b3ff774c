//! Direct kernel boot: the kernel image (vmlinux ELF or bzImage), the
//! initramfs, the command line and the zero page, as the Linux x86 64-bit
//! boot protocol describes them.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{BzImage, Cmdline, Elf, KernelLoader, load_cmdline};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIMEM_START, MMIO_GAP_END, ZERO_PAGE_START,
};
use super::memory;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
/// Offset of the 64-bit entry point from the start of a bzImage's protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 4096;

/// Why the kernel could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open {what} {path}")]
    Open {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the kernel image")]
    ReadKernel(#[source] std::io::Error),
    #[error("cannot load the kernel image")]
    LoadKernel(#[source] linux_loader::loader::Error),
    #[error("the initramfs ({size} bytes) does not fit in guest memory below {limit:#x}")]
    InitramfsTooLarge { size: u64, limit: u64 },
    #[error("cannot copy the initramfs into guest memory")]
    LoadInitramfs(#[source] vm_memory::GuestMemoryError),
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("cannot write the command line")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    #[error("cannot write the zero page")]
    WriteZeroPage(#[source] vm_memory::GuestMemoryError),
}

/// Which format a kernel image is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// Where the loaded kernel starts and how to enter it.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub format: KernelFormat,
    /// 64-bit entry point (RIP of the boot vCPU).
    pub entry: GuestAddress,
    /// The bzImage's setup header, to start the zero page from.
    setup_header: Option<linux_loader::loader::bootparam::setup_header>,
    /// `initrd_addr_max` from the setup header, when the kernel gave one.
    initrd_addr_max: Option<u64>,
}

fn open(what: &'static str, path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::Open {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// Tells an ELF vmlinux from a bzImage by its first bytes.
pub fn detect_format(image: &mut File) -> Result<KernelFormat, BootError> {
    let mut magic = [0u8; 4];
    image
        .seek(SeekFrom::Start(0))
        .map_err(BootError::ReadKernel)?;
    image
        .read_exact(&mut magic)
        .map_err(BootError::ReadKernel)?;
    image
        .seek(SeekFrom::Start(0))
        .map_err(BootError::ReadKernel)?;
    Ok(if magic == *b"\x7fELF" {
        KernelFormat::Elf
    } else {
        KernelFormat::BzImage
    })
}

/// Loads the kernel at `path` into guest memory.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let mut image = open("kernel", path)?;
    let format = detect_format(&mut image)?;
    let result = match format {
        KernelFormat::Elf => Elf::load(mem, None, &mut image, Some(GuestAddress(HIMEM_START))),
        KernelFormat::BzImage => {
            BzImage::load(mem, None, &mut image, Some(GuestAddress(HIMEM_START)))
        }
    }
    .map_err(BootError::LoadKernel)?;
    let entry = match format {
        KernelFormat::Elf => result.kernel_load,
        KernelFormat::BzImage => result.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET),
    };
    let initrd_addr_max = result
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|max| *max != 0);
    Ok(LoadedKernel {
        format,
        entry,
        setup_header: result.setup_header,
        initrd_addr_max,
    })
}

/// Where an initramfs sits in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitramfsLocation {
    pub address: GuestAddress,
    pub size: u64,
}

/// The highest page-aligned address that fits `size` bytes below `limit`.
pub fn initramfs_address(size: u64, limit: u64) -> Option<u64> {
    let start = limit.checked_sub(size)? & !(PAGE_SIZE - 1);
    (start >= HIMEM_START).then_some(start)
}

/// Copies the initramfs to the top of low memory (below the kernel's `initrd_addr_max`).
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<InitramfsLocation, BootError> {
    let mut file = open("initramfs", path)?;
    let size = file
        .metadata()
        .map_err(|source| BootError::Open {
            what: "initramfs",
            path: path.display().to_string(),
            source,
        })?
        .len();
    // The 2.03+ boot protocol's initrd_addr_max is the last usable byte.
    let kernel_limit = kernel.initrd_addr_max.map_or(0x3fff_ffff + 1, |m| m + 1);
    let limit = memory::low_ram_end(mem).raw_value().min(kernel_limit);
    let address =
        initramfs_address(size, limit).ok_or(BootError::InitramfsTooLarge { size, limit })?;
    mem.read_exact_volatile_from(GuestAddress(address), &mut file, size as usize)
        .map_err(BootError::LoadInitramfs)?;
    Ok(InitramfsLocation {
        address: GuestAddress(address),
        size,
    })
}

/// Builds the command line from hull's base arguments, the devices' entries and the caller's extras.
pub fn build_cmdline(base: &str, devices: &[String], extra: &str) -> Result<Cmdline, BootError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    for part in std::iter::once(base)
        .chain(devices.iter().map(String::as_str))
        .chain(std::iter::once(extra))
        .filter(|p| !p.trim().is_empty())
    {
        cmdline
            .insert_str(part.trim())
            .map_err(BootError::Cmdline)?;
    }
    Ok(cmdline)
}

/// The e820 map: low RAM below the EBDA, the EBDA..1 MiB hole reserved, RAM above.
pub fn e820_map(mem: &GuestMemoryMmap) -> Vec<boot_e820_entry> {
    let mut map = vec![
        boot_e820_entry {
            addr: 0,
            size: EBDA_START,
            r#type: E820_RAM,
        },
        boot_e820_entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            r#type: E820_RESERVED,
        },
    ];
    let low_end = memory::low_ram_end(mem).raw_value();
    map.push(boot_e820_entry {
        addr: HIMEM_START,
        size: low_end - HIMEM_START,
        r#type: E820_RAM,
    });
    let total = memory::total_size(mem);
    if total > low_end {
        map.push(boot_e820_entry {
            addr: MMIO_GAP_END,
            size: total - low_end,
            r#type: E820_RAM,
        });
    }
    map
}

/// Writes the command line and the zero page.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initramfs: Option<InitramfsLocation>,
) -> Result<(), BootError> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(BootError::WriteCmdline)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(BootError::Cmdline)?
        .as_bytes()
        .len();

    let mut params = boot_params::default();
    if let Some(header) = kernel.setup_header {
        params.hdr = header;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initramfs) = initramfs {
        params.hdr.ramdisk_image = initramfs.address.raw_value() as u32;
        params.hdr.ramdisk_size = initramfs.size as u32;
    }
    let map = e820_map(mem);
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = *entry;
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(BootError::WriteZeroPage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem(mib: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (mib << 20) as usize)]).unwrap()
    }

    #[test]
    fn initramfs_goes_to_the_top_page_aligned() {
        assert_eq!(initramfs_address(0x1800, 0x40_0000), Some(0x3f_e000));
        assert_eq!(initramfs_address(0x100_0000, 0x80_0000), None);
        assert_eq!(initramfs_address(u64::MAX, 0x80_0000), None);
    }

    #[test]
    fn cmdline_joins_parts_and_rejects_overflow() {
        let c = build_cmdline(
            "console=ttyS0",
            &["virtio_mmio.device=4K@0xd0000000:5".into()],
            " quiet ",
        )
        .unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 quiet"
        );
        let long = "x".repeat(CMDLINE_MAX_SIZE + 1);
        assert!(build_cmdline("a", &[], &long).is_err());
    }

    #[test]
    fn e820_reserves_the_ebda_and_covers_ram() {
        let m = e820_map(&mem(128));
        assert_eq!(m.len(), 3);
        assert_eq!({ m[1].r#type }, E820_RESERVED);
        assert_eq!({ m[2].addr } + { m[2].size }, 128 << 20);
    }

    #[test]
    fn zero_page_carries_cmdline_and_initramfs() {
        let m = mem(64);
        let kernel = LoadedKernel {
            format: KernelFormat::Elf,
            entry: GuestAddress(0x100_0000),
            setup_header: None,
            initrd_addr_max: None,
        };
        let cmdline = build_cmdline("console=ttyS0", &[], "").unwrap();
        let loc = InitramfsLocation {
            address: GuestAddress(0x200_0000),
            size: 1234,
        };
        write_boot_params(&m, &kernel, &cmdline, Some(loc)).unwrap();
        let params: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ params.hdr.ramdisk_image }, 0x200_0000);
        assert_eq!({ params.hdr.ramdisk_size }, 1234);
        assert_eq!({ params.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!(params.e820_entries, 3);
    }

    #[test]
    fn initramfs_is_copied_below_the_end_of_ram() {
        let m = mem(64);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"070701initramfs").unwrap();
        let kernel = LoadedKernel {
            format: KernelFormat::Elf,
            entry: GuestAddress(0x100_0000),
            setup_header: None,
            initrd_addr_max: None,
        };
        let loc = load_initramfs(&m, f.path(), &kernel).unwrap();
        assert_eq!(loc.size, 15);
        assert!(loc.address.raw_value() + loc.size <= 64 << 20);
        let mut back = [0u8; 15];
        m.read_slice(&mut back, loc.address).unwrap();
        assert_eq!(&back, b"070701initramfs");
    }

    #[test]
    fn garbage_kernel_is_refused() {
        let m = mem(64);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0u8; 8192]).unwrap();
        assert!(matches!(
            load_kernel(&m, f.path()),
            Err(BootError::LoadKernel(_))
        ));
    }
}
