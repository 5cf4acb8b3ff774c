//! Guest physical address map of a hull microVM (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT (4 entries), then a null IDT at 0x520
//! 0x0000_7000  zero page (`boot_params`)
//! 0x0000_8ff0  boot stack pointer (grows down)
//! 0x0000_9000  PML4, 0xa000 PDPTE, 0xb000 PDE (identity map of the first 1 GiB)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (start of the EBDA), reserved up to 1 MiB
//! 0x0010_0000  high memory: the kernel, then the initramfs near the top of low RAM
//! 0xc000_0000  32-bit MMIO gap: virtio-mmio devices, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM above 4 GiB when the VM has more than 3 GiB
//! ```

/// Where the GDT is written.
pub const BOOT_GDT_START: u64 = 0x500;
/// Where the (empty) IDT is written.
pub const BOOT_IDT_START: u64 = 0x520;
/// The zero page: Linux `boot_params`.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level 4 page table.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (512 × 2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line the x86 kernel accepts (`COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; the MP table goes here.
pub const EBDA_START: u64 = 0x9fc00;
/// First byte above the legacy hole.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC registers.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const APIC_ADDR: u64 = 0xfee0_0000;
/// First IOAPIC pin given to virtio devices (0–4 are legacy: PIT, keyboard, cascade, COM2, COM1).
pub const IRQ_VIRTIO_FIRST: u32 = 5;
/// Last usable IOAPIC pin (the in-kernel IOAPIC has 24).
pub const IRQ_MAX: u32 = 23;
/// COM1 interrupt line.
pub const IRQ_SERIAL: u32 = 4;
/// i8042 keyboard interrupt line.
pub const IRQ_KEYBOARD: u32 = 1;
/// COM1 I/O ports.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
/// i8042 data port (0x60); the command/status port is 0x64.
pub const I8042_PORT_BASE: u16 = 0x60;
/// KVM's TSS needs three pages below 4 GiB outside guest RAM.
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// How many virtio devices can get their own interrupt line.
pub const fn virtio_irq_count() -> usize {
    (IRQ_MAX - IRQ_VIRTIO_FIRST + 1) as usize
}
