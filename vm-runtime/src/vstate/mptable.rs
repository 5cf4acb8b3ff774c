//! The Intel MultiProcessor Specification (v1.4) table that tells a guest
//! without ACPI how many CPUs it has and how its interrupts are wired.
//!
//! Layout: the 16-byte floating pointer at the start of the EBDA, the
//! configuration table right after it. Entries follow the KVM in-kernel
//! irqchip's default routing: ISA IRQ *n* goes to IOAPIC pin *n*; LINT0 of
//! every local APIC is ExtINT (the PIC), LINT1 is NMI.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR, IRQ_MAX};

/// Most vCPUs whose entries fit in the 1 KiB EBDA next to the other entries.
pub const MAX_VCPUS: u8 = 32;

const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR_ENTRY_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;
const SPEC_REVISION: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INTERRUPT_INT: u8 = 0;
const INTERRUPT_NMI: u8 = 1;
const INTERRUPT_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
// Family 6, model 15: what the guest sees in the processor entry only.
const CPU_SIGNATURE: u32 = (6 << 8) | (15 << 4);
// FPU and APIC present.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

/// Why the MP table could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("the MP table supports 1 to {MAX_VCPUS} vCPUs, got {0}")]
    VcpuCount(u8),
    #[error("the MP table does not fit in the EBDA ({0} bytes)")]
    TooLarge(usize),
    #[error("cannot write the MP table to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Little-endian byte builder for the table's packed structures.
#[derive(Default)]
struct TableBytes(Vec<u8>);

impl TableBytes {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
}

/// The byte that makes all bytes of `data` sum to zero (mod 256).
fn checksum(data: &[u8]) -> u8 {
    0u8.wrapping_sub(data.iter().fold(0u8, |acc, b| acc.wrapping_add(*b)))
}

/// Builds the floating pointer and the configuration table for `vcpus`
/// processors, as the bytes to place at `EBDA_START`.
pub fn build(vcpus: u8) -> Result<Vec<u8>, MptableError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(MptableError::VcpuCount(vcpus));
    }
    let ioapic_id = vcpus + 1;
    let table_addr = EBDA_START as u32 + FLOATING_POINTER_LEN as u32;

    let mut entries = TableBytes::default();
    let mut entry_count: u16 = 0;
    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries
            .u8(ENTRY_PROCESSOR)
            .u8(cpu)
            .u8(APIC_VERSION)
            .u8(flags)
            .u32(CPU_SIGNATURE)
            .u32(CPU_FEATURES)
            .bytes(&[0; 8]);
        entry_count += 1;
    }
    entries.u8(ENTRY_BUS).u8(0).bytes(b"ISA   ");
    entry_count += 1;
    entries
        .u8(ENTRY_IOAPIC)
        .u8(ioapic_id)
        .u8(IOAPIC_VERSION)
        .u8(1)
        .u32(IOAPIC_ADDR as u32);
    entry_count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        entries
            .u8(ENTRY_IO_INTERRUPT)
            .u8(INTERRUPT_INT)
            .u16(0)
            .u8(0)
            .u8(irq)
            .u8(ioapic_id)
            .u8(irq);
        entry_count += 1;
    }
    // LINT0 of every CPU: ExtINT; LINT1 of every CPU (0xff): NMI.
    entries
        .u8(ENTRY_LOCAL_INTERRUPT)
        .u8(INTERRUPT_EXTINT)
        .u16(0)
        .u8(0)
        .u8(0)
        .u8(0)
        .u8(0);
    entries
        .u8(ENTRY_LOCAL_INTERRUPT)
        .u8(INTERRUPT_NMI)
        .u16(0)
        .u8(0)
        .u8(0)
        .u8(0xff)
        .u8(1);
    entry_count += 2;

    let table_len = HEADER_LEN + entries.0.len();
    let mut table = TableBytes::default();
    table
        .bytes(b"PCMP")
        .u16(table_len as u16)
        .u8(SPEC_REVISION)
        .u8(0) // checksum, patched below
        .bytes(b"HULL    ")
        .bytes(b"HULL-MICROVM")
        .u32(0)
        .u16(0)
        .u16(entry_count)
        .u32(APIC_ADDR as u32)
        .u16(0)
        .u8(0)
        .u8(0)
        .bytes(&entries.0);
    table.0[7] = checksum(&table.0);

    let mut out = TableBytes::default();
    out.bytes(b"_MP_")
        .u32(table_addr)
        .u8(1) // length in 16-byte units
        .u8(SPEC_REVISION)
        .u8(0) // checksum, patched below
        .bytes(&[0; 5]);
    out.0[10] = checksum(&out.0);
    out.bytes(&table.0);

    let ebda_room = (0xa0000 - EBDA_START) as usize;
    if out.0.len() > ebda_room {
        return Err(MptableError::TooLarge(out.0.len()));
    }
    debug_assert_eq!(
        out.0.len(),
        FLOATING_POINTER_LEN
            + HEADER_LEN
            + PROCESSOR_ENTRY_LEN * vcpus as usize
            + SMALL_ENTRY_LEN * (4 + IRQ_MAX as usize + 1)
    );
    Ok(out.0)
}

/// Writes the MP table for `vcpus` processors into guest memory.
pub fn setup_mptable(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), MptableError> {
    let bytes = build(vcpus)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(data: &[u8]) -> u8 {
        data.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn floating_pointer_and_table_checksums_are_zero() {
        for vcpus in [1, 2, 8, MAX_VCPUS] {
            let t = build(vcpus).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..FLOATING_POINTER_LEN]), 0);
            let table = &t[FLOATING_POINTER_LEN..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0);
        }
    }

    #[test]
    fn table_pointer_and_entry_count_match() {
        let t = build(4).unwrap();
        let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap());
        assert_eq!(ptr as u64, EBDA_START + FLOATING_POINTER_LEN as u64);
        let table = &t[FLOATING_POINTER_LEN..];
        let count = u16::from_le_bytes([table[34], table[35]]);
        // 4 CPUs + bus + IOAPIC + 24 IO interrupts + 2 local interrupts.
        assert_eq!(count, 4 + 1 + 1 + 24 + 2);
        // First processor entry is the bootstrap CPU with APIC id 0.
        let first = &table[HEADER_LEN..HEADER_LEN + PROCESSOR_ENTRY_LEN];
        assert_eq!(first[0], ENTRY_PROCESSOR);
        assert_eq!(first[1], 0);
        assert_eq!(first[3], CPU_ENABLED | CPU_BOOTSTRAP);
    }

    #[test]
    fn rejects_zero_and_too_many_vcpus() {
        assert!(matches!(build(0), Err(MptableError::VcpuCount(0))));
        assert!(build(MAX_VCPUS + 1).is_err());
    }

    #[test]
    fn written_table_lands_in_the_ebda() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        setup_mptable(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
