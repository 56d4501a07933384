//! `bt86 study`: why x86 was not virtualizable by trap-and-emulate, measured on this
//! machine.
//!
//! Popek and Goldberg (1974): a machine can be virtualized by trap-and-emulate if every
//! *sensitive* instruction (one that reads or changes privileged state, or behaves
//! differently depending on it) is *privileged* (traps when run outside the most
//! privileged mode). Robin and Irvine (2000) listed the Pentium's sensitive instructions
//! that are not privileged. The study runs a small guest-kernel snippet for each of them
//! (and for privileged and host-leaking instructions, for contrast) at guest CPL 0 with a
//! known state, under three engines, and records what the guest actually saw:
//!
//! - [`catalogue`]: the snippets and what the guest's state says each should see;
//! - [`guest`]: the guest's known state and memory image; [`arch`]: the architectural
//!   rules the expected values are computed with; [`asm`]: the little assembler;
//! - [`engines`]: deprivileged (natively at CPL 3, through [`native`]), bt (bt86's
//!   translator), kvm (hardware-backed KVM only), and how a run becomes an outcome;
//! - [`report`]: the rows and outcomes; [`render`]: the terminal table, JSON and HTML.

pub mod arch;
pub mod asm;
pub mod catalogue;
pub mod engines;
pub mod guest;
pub mod native;
pub mod render;
pub mod report;

use std::collections::BTreeMap;

use bt86_runtime::kvm::{self, KvmOptions, KvmUnavailable};
use thiserror::Error;

pub use report::{EngineResult, Engines, HostFacts, Outcome, Row, Study};

use engines::{Bt86Cpu, CpuModel, Engine, HostContext, KvmCpu};

/// How to run the study.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Run the kvm engine even where /dev/kvm is a software hypervisor.
    pub allow_software_kvm: bool,
}

/// Why the study could not run at all (a failure on one row is reported in that row).
#[derive(Debug, Error)]
pub enum StudyError {
    #[error("building the guest snippets: {0}")]
    Asm(#[from] asm::AsmError),
    #[error("the bt engine cannot run the guest's start-up: {0}")]
    Baseline(#[source] engines::EngineError),
}

/// Whether every CPU in `cpuinfo` lists the `umip` flag.
pub fn umip_in(cpuinfo: &str) -> bool {
    let mut flags = cpuinfo.lines().filter_map(|l| l.split_once(':')).filter(|(k, _)| k.trim() == "flags").peekable();
    flags.peek().is_some() && flags.all(|(_, v)| v.split_whitespace().any(|w| w == "umip"))
}

/// What the host is.
fn host_facts(opts: &Options) -> (HostFacts, Option<String>) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default();
    let (kvm, not_run) = match kvm::check_host() {
        Ok(host) => (format!("hardware-backed KVM: {}", host.describe()), None),
        Err(e @ KvmUnavailable::Software { .. }) if opts.allow_software_kvm => {
            let what = e.software_host().map(kvm::KvmHost::describe).unwrap_or_default();
            (format!("KVM backed by {what}, not VT-x/AMD-V: run because --allow-software-kvm was given, so the kvm column shows that hypervisor"), None)
        }
        Err(e) => (e.to_string(), Some(e.to_string())),
    };
    let facts = HostFacts { kernel, umip: umip_in(&cpuinfo), kvm_ran: not_run.is_none(), kvm };
    (facts, not_run)
}

/// Runs every case under every engine.
pub fn run(opts: &Options) -> Result<Study, StudyError> {
    let cases = catalogue::catalogue()?;
    let (host, kvm_not_run) = host_facts(opts);
    let context = HostContext { umip: host.umip };
    let kvm_opts = KvmOptions { allow_software: opts.allow_software_kvm, timeout: None };
    // The callouts of the guest's start-up alone, to tell each row's own.
    let mut empty = guest::body();
    empty.hlt();
    let (body, _) = empty.finish()?;
    let baseline_case = catalogue::Case {
        name: "start-up",
        group: catalogue::Group::Privileged,
        umip: false,
        about: "",
        state: guest::GuestState::base(),
        body,
        insn: guest::BODY,
        terminator: guest::BODY,
        checks: Vec::new(),
        ending: catalogue::Ending::Completed,
    };
    let baseline = engines::run(Engine::Bt, &baseline_case, &kvm_opts).map_err(StudyError::Baseline)?.callouts;
    let kvm_cpu = if kvm_not_run.is_none() { Some(KvmCpu::read()) } else { None };
    let mut rows = Vec::with_capacity(cases.len());
    for case in &cases {
        let cell = |engine: Engine, cpu: &dyn CpuModel, baseline: &BTreeMap<String, u64>| match engines::run(engine, case, &kvm_opts) {
            Ok(run) => engines::evaluate(engine, case, &run, cpu, &context, baseline),
            Err(e) => EngineResult { outcome: Outcome::Error, observed: String::new(), expected: String::new(), note: e.to_string() },
        };
        let deprivileged = cell(Engine::Deprivileged, &Bt86Cpu, &baseline);
        let bt = cell(Engine::Bt, &Bt86Cpu, &baseline);
        let kvm = match (&kvm_not_run, &kvm_cpu) {
            (None, Some(cpu)) => cell(Engine::Kvm, cpu, &baseline),
            (reason, _) => EngineResult::not_run(reason.as_deref().unwrap_or("")),
        };
        rows.push(Row {
            instruction: case.name.to_string(),
            sensitive: case.group.sensitive(),
            privileged: case.group.privileged(),
            group: case.group.label().to_string(),
            about: case.about.to_string(),
            code: asm::disassemble(&case.body, guest::BODY),
            engines: Engines { deprivileged, bt, kvm },
        });
    }
    Ok(Study { rows, host, guest_state: guest::GuestState::base().describe() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn umip_needs_every_cpu() {
        assert!(umip_in("processor : 0\nflags : fpu umip sse\nprocessor : 1\nflags : umip\n"));
        assert!(!umip_in("flags : fpu umip sse\nflags : fpu\n"));
        assert!(!umip_in("flags : fpu umipx\n"));
        assert!(!umip_in(""));
    }
}
