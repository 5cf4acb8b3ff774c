//! The CPUID each vCPU sees: what KVM supports, with the topology rewritten
//! so the guest sees one socket of `vcpus` single-threaded cores, its own APIC
//! id on every vCPU, the hypervisor bit, and no performance monitoring.
//!
//! Intel describes topology in leaves 0x1, 0x4 and 0xB; AMD in 0x1,
//! 0x8000_0008 and 0x8000_001E. Both vendors' leaves are rewritten when
//! present, so one code path serves either host.

use kvm_bindings::{CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, kvm_cpuid_entry2};

/// CPU vendor, from CPUID leaf 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

/// Why the CPUID could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    #[error("cannot grow the CPUID table")]
    Grow(#[source] vmm_sys_util::fam::Error),
}

const LEAF_VENDOR: u32 = 0;
const LEAF_FEATURES: u32 = 1;
const LEAF_CACHE_INTEL: u32 = 4;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_CACHE: u32 = 0x8000_001d;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;
const AMD_ECX_CMP_LEGACY: u32 = 1 << 1;
const LEVEL_TYPE_INVALID: u32 = 0;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// The vendor named in leaf 0 of `cpuid`.
pub fn vendor(cpuid: &CpuId) -> Vendor {
    let Some(leaf0) = cpuid.as_slice().iter().find(|e| e.function == LEAF_VENDOR) else {
        return Vendor::Other;
    };
    let mut name = [0u8; 12];
    name[0..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    name[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    name[8..12].copy_from_slice(&leaf0.ecx.to_le_bytes());
    match &name {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Bits needed to hold `count` distinct ids (ceil(log2(count))).
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Returns the CPUID for vCPU `cpu_index` (also its APIC id) of `vcpus`,
/// starting from KVM's supported CPUID. `tsc_deadline`: KVM emulates the
/// LAPIC TSC-deadline timer (KVM_CAP_TSC_DEADLINE_TIMER), which KVM's
/// supported CPUID does not list; offering it spares the guest the LAPIC
/// timer calibration at boot.
pub fn for_vcpu(
    supported: &CpuId,
    cpu_index: u8,
    vcpus: u8,
    tsc_deadline: bool,
) -> Result<CpuId, CpuidError> {
    let apic_id = u32::from(cpu_index);
    let count = u32::from(vcpus);
    let core_bits = id_bits(count);
    let vendor = vendor(supported);
    let max_basic = supported
        .as_slice()
        .iter()
        .find(|e| e.function == LEAF_VENDOR)
        .map_or(0, |e| e.eax);

    let mut entries: Vec<kvm_cpuid_entry2> = supported
        .as_slice()
        .iter()
        .filter(|e| e.function != LEAF_TOPOLOGY && e.function != LEAF_TOPOLOGY_V2)
        .copied()
        .collect();

    for entry in entries.iter_mut() {
        match entry.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC id, EBX[23:16] addressable logical ids.
                entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | ((1 << core_bits) << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if tsc_deadline {
                    entry.ecx |= ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_INTEL if vendor == Vendor::Intel => {
                // EAX[31:26] cores per package - 1; EAX[25:14] threads sharing this cache - 1.
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { (1 << core_bits) - 1 } else { 0 };
                entry.eax = (entry.eax & 0x3fff) | (sharing << 14) | (((1 << core_bits) - 1) << 26);
            }
            LEAF_PMU => {
                // No virtual PMU: the guest must not program counters.
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            LEAF_EXT_FEATURES if vendor == Vendor::Amd => {
                // CmpLegacy means "HTT is really cores": true when more than one vCPU.
                if count > 1 {
                    entry.ecx |= AMD_ECX_CMP_LEGACY;
                } else {
                    entry.ecx &= !AMD_ECX_CMP_LEGACY;
                }
            }
            LEAF_AMD_SIZES if vendor == Vendor::Amd => {
                // ECX[15:12] APIC id bits for cores, ECX[7:0] cores - 1.
                entry.ecx = (entry.ecx & !0xf0ff) | (core_bits << 12) | (count - 1);
            }
            LEAF_AMD_CACHE if vendor == Vendor::Amd => {
                // EAX[25:14] logical processors sharing this cache - 1.
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                entry.eax = (entry.eax & !(0xfff << 14)) | (sharing << 14);
            }
            LEAF_AMD_TOPOLOGY if vendor == Vendor::Amd => {
                // EAX extended APIC id; EBX[15:8] threads per core - 1, EBX[7:0] core id; ECX node id.
                entry.eax = apic_id;
                entry.ebx = apic_id & 0xff;
                entry.ecx = 0;
            }
            _ => {}
        }
    }

    if max_basic >= LEAF_TOPOLOGY {
        entries.extend(topology_leaf(apic_id, count, core_bits));
    }
    CpuId::from_entries(&entries).map_err(CpuidError::Grow)
}

/// Leaf 0xB: level 0 is SMT (one thread per core), level 1 the cores, level 2 ends the list.
fn topology_leaf(apic_id: u32, count: u32, core_bits: u32) -> [kvm_cpuid_entry2; 3] {
    let entry = |index: u32, eax: u32, ebx: u32, level_type: u32| kvm_cpuid_entry2 {
        function: LEAF_TOPOLOGY,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: (level_type << 8) | index,
        edx: apic_id,
        ..Default::default()
    };
    [
        entry(0, 0, 1, LEVEL_TYPE_SMT),
        entry(1, core_bits, count, LEVEL_TYPE_CORE),
        entry(2, 0, 0, LEVEL_TYPE_INVALID),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn vendor_leaf(name: &[u8; 12], max: u32) -> kvm_cpuid_entry2 {
        let word = |i: usize| u32::from_le_bytes(name[i..i + 4].try_into().unwrap());
        entry(0, 0, max, word(0), word(8), word(4))
    }

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn detects_vendors() {
        let intel = CpuId::from_entries(&[vendor_leaf(b"GenuineIntel", 0xd)]).unwrap();
        let amd = CpuId::from_entries(&[vendor_leaf(b"AuthenticAMD", 0xd)]).unwrap();
        assert_eq!(vendor(&intel), Vendor::Intel);
        assert_eq!(vendor(&amd), Vendor::Amd);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
    }

    #[test]
    fn intel_topology_names_each_vcpu() {
        let supported = CpuId::from_entries(&[
            vendor_leaf(b"GenuineIntel", 0xd),
            entry(1, 0, 0x906ea, 0x0010_0800, 0, 0),
            entry(4, 0, (3 << 5) | 0x3, 0, 0, 0),
            entry(0xb, 0, 1, 2, 0x100, 9),
            entry(0xa, 0, 0x0704_0002, 0, 0, 0),
        ])
        .unwrap();
        let c = for_vcpu(&supported, 3, 4, true).unwrap();
        let leaf1 = find(&c, 1, 0);
        assert_eq!(leaf1.ebx >> 24, 3);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
        assert_ne!(leaf1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(leaf1.edx & EDX_HTT, 0);
        assert_ne!(leaf1.ecx & ECX_TSC_DEADLINE, 0);
        let l3 = find(&c, 4, 0);
        assert_eq!(l3.eax >> 26, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 3);
        assert_eq!(find(&c, 0xb, 0).edx, 3);
        assert_eq!(find(&c, 0xb, 1).ebx, 4);
        assert_eq!(find(&c, 0xb, 1).eax, 2);
        assert_eq!((find(&c, 0xb, 2).ecx >> 8) & 0xff, LEVEL_TYPE_INVALID);
        assert_eq!(find(&c, 0xa, 0).eax, 0);
        // The host's own 0xB entry is replaced, not duplicated.
        assert_eq!(c.as_slice().iter().filter(|e| e.function == 0xb).count(), 3);
    }

    #[test]
    fn amd_topology_counts_cores() {
        let supported = CpuId::from_entries(&[
            vendor_leaf(b"AuthenticAMD", 0xd),
            entry(1, 0, 0x663, 0, 0, 0),
            entry(0x8000_0001, 0, 0, 0, 0, 0),
            entry(0x8000_0008, 0, 0x3030, 0, 0x0000_0003, 0),
            entry(0x8000_001e, 0, 7, 0x100, 5, 0),
        ])
        .unwrap();
        let c = for_vcpu(&supported, 1, 2, false).unwrap();
        assert_eq!(find(&c, 0x8000_0008, 0).ecx, (1 << 12) | 1);
        assert_ne!(find(&c, 0x8000_0001, 0).ecx & AMD_ECX_CMP_LEGACY, 0);
        let topo = find(&c, 0x8000_001e, 0);
        assert_eq!(topo.eax, 1);
        assert_eq!(topo.ebx, 1);
        assert_eq!(find(&c, 1, 0).ebx >> 24, 1);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let supported = CpuId::from_entries(&[
            vendor_leaf(b"AuthenticAMD", 0x1),
            entry(1, 0, 0, 0, 0, EDX_HTT),
        ])
        .unwrap();
        let c = for_vcpu(&supported, 0, 1, false).unwrap();
        assert_eq!(find(&c, 1, 0).edx & EDX_HTT, 0);
        assert!(c.as_slice().iter().all(|e| e.function != 0xb));
    }
}
