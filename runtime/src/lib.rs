//! The bt86 virtual machine: guest RAM, the multiboot loader, the vCPU, devices,
//! and the engines.
mod alarm;
pub mod checkpoint;
pub mod cpu;
pub mod cpu_model;
pub mod debug;
pub mod devices;
pub mod direct;
pub mod emulate;
mod engine;
pub mod gdb;
pub mod kvm;
mod light;
mod light_cpu;
pub mod loader;
pub mod memory;
mod mmu;
mod page_probe;
pub mod signals;
mod slow_path;
pub mod snippet;
pub mod stats;
pub mod vm;

/// Switches the `--trace` events of translation units on (guest code, host code).
pub use bt86_translator::trace::enable as enable_unit_trace;
pub use direct::UserCode;
pub use vm::{RunOutcome, StopHandle, Vm, VmConfig, VmError, DEFAULT_MEM_MIB};
