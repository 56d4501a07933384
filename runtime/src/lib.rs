//! The bt86 virtual machine: guest RAM, the multiboot loader, the vCPU, devices,
//! and the engines.
mod alarm;
pub mod cpu;
pub mod cpu_model;
pub mod devices;
pub mod emulate;
mod engine;
pub mod kvm;
pub mod loader;
pub mod memory;
mod mmu;
pub mod signals;
pub mod snippet;
pub mod stats;
pub mod vm;

pub use vm::{RunOutcome, StopHandle, Vm, VmConfig, VmError, DEFAULT_MEM_MIB};
