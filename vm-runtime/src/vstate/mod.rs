//! The virtual machine's state in KVM: memory, vCPUs, CPUID, boot setup.

pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod regs;
pub mod vcpu;
pub mod vm;
