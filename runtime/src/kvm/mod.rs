//! The hardware-assisted engine: the same guest, loader, RAM and port devices as the
//! binary-translation engine, run by the host's KVM (through kvm-ioctls) instead of
//! translated code.
//!
//! - [`host`]: whether this host has a usable, hardware-backed /dev/kvm (and, if not,
//!   one line that says why).
//! - [`crate::vm::Vm::run_kvm`] (in `run.rs`): the engine. The guest RAM memfd's alias
//!   mapping becomes KVM memory slot 0 at guest physical 0; the vCPU starts in the state
//!   `Vm::load_multiboot` left (flat 32-bit protected mode, multiboot registers); port
//!   I/O exits go to the VM's `PortBus`; hlt, shutdown (triple fault), internal errors
//!   (emulation failures of a software KVM), failed entries and MMIO are reported as
//!   `RunOutcome`s (a KVM shutdown exit is `RunOutcome::TripleFault` with no fault list:
//!   KVM does not tell which faults led to it).
//! - `sys.rs`: the little `unsafe` this needs.
//!
//! Differences from the BT engine that a guest can see: CPUID is what KVM supports
//! (`KVM_GET_SUPPORTED_CPUID`, including its hypervisor leaves) rather than the BT
//! engine's filtered host CPUID, and a triple fault is reported without the vectors
//! that caused it.

pub mod host;
mod run;
mod state;
mod sys;

pub use host::{check_host, check_host_allowing, Backing, KvmHost, KvmUnavailable};

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use thiserror::Error;

/// How to run the KVM engine.
#[derive(Clone, Debug, Default)]
pub struct KvmOptions {
    /// Run on a software-backed /dev/kvm (no VT-x/AMD-V) instead of refusing.
    pub allow_software: bool,
    /// Stop the guest (`RunOutcome::Stopped`) after this long.
    pub timeout: Option<Duration>,
}

/// What the KVM engine counts (`--stats`). Keys shared with the BT engine's
/// `StatsReport` mean the same thing: `guest_exits` is every exit from the guest to
/// the VMM, `exits` counts them by reason, `run_seconds` is the time spent running
/// the guest (setup excluded).
#[derive(Serialize, Debug, Clone, Default)]
pub struct KvmStats {
    /// Always `kvm`.
    pub engine: &'static str,
    /// What backs /dev/kvm: `hardware (vmx)`, `software (kvm_pvm)`, ...
    pub kvm_backing: String,
    pub guest_exits: u64,
    /// Exits by reason: `io`, `hlt`, `mmio`, `shutdown`, `internal_error`,
    /// `fail_entry`, `intr` (a signal, e.g. the timeout), `other`.
    pub exits: BTreeMap<String, u64>,
    /// Port accesses handled (string I/O counts each element).
    pub port_accesses: u64,
    pub run_seconds: f64,
}

impl KvmStats {
    pub(crate) fn count(&mut self, reason: &str) {
        self.guest_exits += 1;
        *self.exits.entry(reason.to_string()).or_insert(0) += 1;
    }

    /// Human-readable lines, in the style of `StatsReport::to_text`.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: String| s.push_str(&format!("  {k:<40} {v}\n"));
        line("engine", format!("{} ({})", self.engine, self.kvm_backing));
        line("guest exits (to the VMM)", self.guest_exits.to_string());
        let by: Vec<String> = self.exits.iter().map(|(k, v)| format!("{k}={v}")).collect();
        line("  by reason", by.join(" "));
        line("port accesses", self.port_accesses.to_string());
        line("run time (s)", format!("{:.4}", self.run_seconds));
        s
    }
}

/// Errors that stop the KVM engine itself (not the guest).
#[derive(Debug, Error)]
pub enum KvmRunError {
    /// The host check failed (see [`KvmUnavailable`]).
    #[error(transparent)]
    Unavailable(#[from] KvmUnavailable),
    /// Setting the VM up failed.
    #[error("KVM: cannot {what}: {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The timeout could not be armed.
    #[error("KVM: cannot arm the timeout: {0}")]
    Watchdog(#[source] std::io::Error),
    /// A KVM ioctl failed while the guest was running.
    #[error("KVM: {what} failed while the guest ran: {source}")]
    Run {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
}

impl KvmRunError {
    /// Whether the error means "the KVM engine cannot run on this host" (as opposed
    /// to a failure in the middle of a run).
    pub fn is_host_problem(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Setup { .. } | Self::Watchdog(_))
    }
}
