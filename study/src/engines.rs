//! The three engines, and how a run becomes an outcome.
//!
//! - **deprivileged**: the snippet runs natively in compatibility mode at host CPL 3
//!   ([`crate::native`]), entered at `BODY` with the host's segments, IF=1 and IOPL 0, as
//!   a trap-and-emulate VMM without binary translation would run guest kernel code. A host
//!   signal before the terminator is a `trap`; otherwise the values decide `correct` or
//!   `wrong`.
//! - **bt**: the whole guest (prologue, then the snippet) under bt86's translator, through
//!   the runtime's public API.
//! - **kvm**: the same guest under bt86's KVM engine, only where /dev/kvm is
//!   hardware-backed (or the user allowed a software one).
//!
//! Under bt and KVM a guest exception goes to the guest's own IDT; its stub records the
//! vector, error code and EIP in `FAULT` and halts.

use std::collections::BTreeMap;
use std::time::Duration;

use bt86_runtime::kvm::{KvmOptions, KvmRunError};
use bt86_runtime::{RunOutcome, Vm, VmConfig, VmError};
use thiserror::Error;

use crate::asm::AsmError;
use crate::catalogue::{Case, Ending, Field, Want};
use crate::guest::{self, Chunk};
use crate::native::{self, NativeError};
use crate::report::{EngineResult, Outcome};

/// How long bt and KVM may run one snippet.
const RUN_LIMIT: Duration = Duration::from_secs(2);

/// The engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Deprivileged,
    Bt,
    Kvm,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Reached the terminator.
    Completed,
    /// Halted elsewhere.
    Halted { eip: u32 },
    /// An exception: a host signal (deprivileged) or the guest handler's record.
    Exception { vector: u32, error: Option<u32>, eip: u32, signal: Option<i32> },
}

/// What one engine saw.
#[derive(Clone, Debug)]
pub struct Run {
    pub end: End,
    /// A copy of `RESULT..RESULT + RESULT_SIZE`.
    pub result: Vec<u8>,
    /// bt only: the VMM callouts the run made, by mnemonic.
    pub callouts: BTreeMap<String, u64>,
}

/// An engine could not run a snippet.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Asm(#[from] AsmError),
    #[error(transparent)]
    Native(#[from] NativeError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Kvm(#[from] KvmRunError),
    #[error("the guest did not finish: {0}")]
    Unfinished(String),
}

/// Runs `case` under `engine`.
pub fn run(engine: Engine, case: &Case, kvm: &KvmOptions) -> Result<Run, EngineError> {
    let chunks = case.image()?;
    match engine {
        Engine::Deprivileged => run_deprivileged(case, &chunks),
        Engine::Bt | Engine::Kvm => run_vm(engine, case.terminator, &chunks, kvm),
    }
}

/// A VM holding the image, about to start at the prologue.
fn vm_with(chunks: &[Chunk]) -> Result<Vm, EngineError> {
    let cfg = VmConfig { mem_bytes: u64::from(guest::RAM_END), ..VmConfig::new(1, Box::new(std::io::sink())) };
    let mut vm = Vm::new(cfg)?;
    for c in chunks {
        vm.ram().write(c.addr, &c.bytes).map_err(VmError::from)?;
    }
    let mut regs = [0; 8];
    regs[4] = guest::STACK_TOP;
    vm.set_flat_state(guest::PROLOGUE, regs, 0);
    Ok(vm)
}

fn run_vm(engine: Engine, terminator: u32, chunks: &[Chunk], kvm: &KvmOptions) -> Result<Run, EngineError> {
    let mut vm = vm_with(chunks)?;
    let outcome = if engine == Engine::Kvm {
        vm.run_kvm(KvmOptions { timeout: Some(RUN_LIMIT), ..kvm.clone() })?.0
    } else {
        bt86_runtime::vm::run_with_timeout(&mut vm, RUN_LIMIT)?
    };
    let mut result = vec![0u8; guest::RESULT_SIZE as usize];
    vm.ram().read(guest::RESULT, &mut result).map_err(VmError::from)?;
    let word = |addr: u32| {
        let at = (addr - guest::RESULT) as usize;
        u32::from_le_bytes([result[at], result[at + 1], result[at + 2], result[at + 3]])
    };
    let vector = word(guest::FAULT_VECTOR);
    let end = if vector != guest::NO_FAULT {
        let error = word(guest::FAULT_ERROR);
        let vector_u8 = u8::try_from(vector).unwrap_or(u8::MAX);
        End::Exception { vector, error: guest::has_error_code(vector_u8).then_some(error), eip: word(guest::FAULT_EIP), signal: None }
    } else {
        match outcome {
            RunOutcome::Halted { eip } if eip == terminator => End::Completed,
            RunOutcome::Halted { eip } => End::Halted { eip },
            RunOutcome::GuestException { vector, error, eip } => {
                End::Exception { vector: u32::from(vector), error, eip, signal: None }
            }
            other => return Err(EngineError::Unfinished(describe_outcome(&other))),
        }
    };
    let callouts = if engine == Engine::Bt { vm.stats().callouts } else { BTreeMap::new() };
    Ok(Run { end, result, callouts })
}

fn run_deprivileged(case: &Case, chunks: &[Chunk]) -> Result<Run, EngineError> {
    let native_chunks: Vec<native::Chunk<'_>> =
        chunks.iter().map(|c| native::Chunk { addr: c.addr, bytes: &c.bytes }).collect();
    let mut regs = [0; 8];
    regs[4] = guest::STACK_TOP;
    let entry = native::Entry { eip: guest::BODY, regs, eflags: case.state.eflags };
    let exit = native::run(&native_chunks, &entry, guest::RESULT..guest::RESULT + guest::RESULT_SIZE)?;
    // The terminator's hlt is #GP at CPL 3 (SIGSEGV, trap 13) at its own address.
    let end = if exit.signal == libc::SIGSEGV && exit.trapno == 13 && exit.error_code == 0 && exit.eip == case.terminator {
        End::Completed
    } else {
        End::Exception {
            vector: exit.trapno,
            error: Some(exit.error_code),
            eip: exit.eip,
            signal: Some(exit.signal),
        }
    };
    Ok(Run { end, result: exit.memory, callouts: BTreeMap::new() })
}

/// A run that ended other than by halting, in words.
fn describe_outcome(o: &RunOutcome) -> String {
    match o {
        RunOutcome::Unsupported { eip, what } => format!("unsupported at {eip:#010x}: {what}"),
        RunOutcome::Unbacked { eip, linear } => format!("access to {linear:#010x}, outside RAM, at {eip:#010x}"),
        RunOutcome::Stopped { eip } => format!("still running after {RUN_LIMIT:?} (stopped at {eip:#010x})"),
        RunOutcome::TripleFault { eip, .. } => format!("triple fault at {eip:#010x}"),
        RunOutcome::GuestExit(v) => format!("the guest exited with {v}"),
        RunOutcome::Reset => "the guest reset the machine".into(),
        RunOutcome::Halted { eip } | RunOutcome::GuestException { eip, .. } => format!("stopped at {eip:#010x}"),
    }
}

/// The VM's CPU model for [`Want::VmCpuid`].
pub trait CpuModel {
    /// eax, ebx, ecx, edx of `leaf` (subleaf 0), if known.
    fn cpuid(&self, leaf: u32) -> Option<[u32; 4]>;
}

/// bt86's virtual CPU (what the bt engine answers, and what a VMM would want the
/// deprivileged guest to see).
pub struct Bt86Cpu;

impl CpuModel for Bt86Cpu {
    fn cpuid(&self, leaf: u32) -> Option<[u32; 4]> {
        Some(bt86_runtime::cpu_model::CpuModel::host().cpuid(leaf, 0))
    }
}

/// The CPUID table bt86's KVM engine gives the guest (`KVM_GET_SUPPORTED_CPUID`).
pub struct KvmCpu(pub Vec<(u32, [u32; 4])>);

impl KvmCpu {
    /// Reads KVM's supported CPUID (an empty table if /dev/kvm cannot tell).
    pub fn read() -> Self {
        let table = kvm_ioctls::Kvm::new()
            .and_then(|k| k.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES))
            .map(|c| {
                c.as_slice()
                    .iter()
                    .filter(|e| e.index == 0)
                    .map(|e| (e.function, [e.eax, e.ebx, e.ecx, e.edx]))
                    .collect()
            })
            .unwrap_or_default();
        Self(table)
    }
}

impl CpuModel for KvmCpu {
    fn cpuid(&self, leaf: u32) -> Option<[u32; 4]> {
        self.0.iter().find(|(f, _)| *f == leaf).map(|(_, r)| *r)
    }
}

/// A want with the VM's CPU model filled in: (value, mask) or a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resolved {
    Masked { value: u64, mask: u64 },
    Range { lo: u64, hi: u64 },
    Unknown,
}

fn resolve(want: Want, cpu: &dyn CpuModel) -> Resolved {
    match want {
        Want::Eq(value) => Resolved::Masked { value, mask: u64::MAX },
        Want::Masked { value, mask } => Resolved::Masked { value, mask },
        Want::Range { lo, hi } => Resolved::Range { lo, hi },
        Want::VmCpuid { leaf, reg, mask } => match cpu.cpuid(leaf).and_then(|r| r.get(reg).copied()) {
            Some(v) => Resolved::Masked { value: u64::from(v & mask), mask: u64::from(mask) },
            None => Resolved::Unknown,
        },
    }
}

impl Resolved {
    fn accepts(self, v: u64) -> bool {
        match self {
            Resolved::Masked { value, mask } => v & mask == value & mask,
            Resolved::Range { lo, hi } => (lo..hi).contains(&v),
            Resolved::Unknown => false,
        }
    }
}

/// A value as the report shows it: decimal for flags, hex sized to the field.
fn show(field: &Field, v: u64) -> String {
    match field.bytes {
        1 => v.to_string(),
        2 => format!("{v:#06x}"),
        4 => format!("{v:#010x}"),
        _ => format!("{v:#x}"),
    }
}

/// An expected value; hex digits outside the compared bits are `?`.
fn show_want(field: &Field, r: Resolved) -> String {
    match r {
        Resolved::Masked { value, mask } if field.bytes > 1 => {
            let digits = show(field, value);
            let last = digits.len() - 1;
            digits
                .char_indices()
                .map(|(i, c)| {
                    let shift = (last - i) * 4;
                    if i >= 2 && shift < 64 && (mask >> shift) & 0xf == 0 { '?' } else { c }
                })
                .collect()
        }
        Resolved::Masked { value, .. } => show(field, value),
        Resolved::Range { lo, hi } => format!("{lo:#x}+<2^{}", (hi - lo).ilog2()),
        Resolved::Unknown => "?".into(),
    }
}

/// Exception mnemonics by vector.
pub fn vector_name(vector: u32) -> String {
    const NAMES: [&str; 20] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS", "#GP", "#PF",
        "#15", "#MF", "#AC", "#MC", "#XM",
    ];
    usize::try_from(vector).ok().and_then(|v| NAMES.get(v)).map_or_else(|| format!("vector {vector}"), |n| (*n).to_string())
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGILL => "SIGILL".into(),
        libc::SIGFPE => "SIGFPE".into(),
        libc::SIGTRAP => "SIGTRAP".into(),
        libc::SIGBUS => "SIGBUS".into(),
        other => format!("signal {other}"),
    }
}

fn show_end(end: &End) -> String {
    match end {
        End::Completed => String::new(),
        End::Halted { eip } => format!("halted at {eip:#010x}"),
        End::Exception { vector, error, eip, .. } => {
            let err = error.map(|e| format!("({e:#x})")).unwrap_or_default();
            format!("{}{err} at {eip:#010x}", vector_name(*vector))
        }
    }
}

/// The facts about the host that notes mention.
#[derive(Clone, Debug, Default)]
pub struct HostContext {
    /// CR4.UMIP is on.
    pub umip: bool,
}

/// Turns a run into a row cell.
pub fn evaluate(engine: Engine, case: &Case, run: &Run, cpu: &dyn CpuModel, host: &HostContext, baseline: &BTreeMap<String, u64>) -> EngineResult {
    let expected_end = match case.ending {
        Ending::Completed => End::Completed,
        Ending::HaltedAt(eip) => End::Halted { eip },
    };
    let wants: Vec<(Field, Resolved)> = case.checks.iter().map(|(f, w)| (*f, resolve(*w, cpu))).collect();
    let expected = if wants.is_empty() {
        show_end(&expected_end)
    } else {
        wants.iter().map(|(f, r)| format!("{}={}", f.name, show_want(f, *r))).collect::<Vec<_>>().join(" ")
    };
    let values: Vec<Option<u64>> = case.checks.iter().map(|(f, _)| f.read(&run.result)).collect();
    let shown_values = || {
        case.checks
            .iter()
            .zip(&values)
            .map(|((f, _), v)| format!("{}={}", f.name, v.map_or_else(|| "?".into(), |v| show(f, v))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if let (Engine::Deprivileged, End::Exception { eip, signal, .. }) = (engine, &run.end) {
        let mut note = format!(
            "{} ({}): the VMM gets control here and can emulate it",
            signal.map(signal_name).unwrap_or_default(),
            vector_name(match run.end {
                End::Exception { vector, .. } => vector,
                _ => 0,
            })
        );
        if *eip != case.insn {
            note = format!("{note}; but at {eip:#010x}, not at the studied instruction ({:#010x})", case.insn);
        }
        return EngineResult { outcome: Outcome::Trap, observed: show_end(&run.end), expected, note };
    }
    let differing: Vec<&str> = wants
        .iter()
        .zip(&values)
        .filter(|((_, r), v)| !v.is_some_and(|v| r.accepts(v)))
        .map(|((f, _), _)| f.name)
        .collect();
    let ok = run.end == expected_end && differing.is_empty();
    let observed = match (&run.end, wants.is_empty()) {
        (End::Completed, false) => shown_values(),
        (end, _) => show_end(end),
    };
    let mut notes = Vec::new();
    if engine == Engine::Deprivileged {
        notes.push("no trap".to_string());
        if case.umip && host.umip {
            notes.push(format!(
                "UMIP is on: the CPU faulted into the host kernel, which emulated the instruction with its dummy value ({}) and resumed, so the VMM never saw it",
                shown_values()
            ));
        }
        if case.name == "cpuid" {
            notes.push(cpuid_difference(case, &values, cpu));
        }
        if case.name == "rdtsc" {
            notes.push("the host's TSC: without VT-x's TSC offsetting the VMM cannot shift it (it could only make rdtsc trap, CR4.TSD via prctl PR_SET_TSC)".into());
        }
    }
    if !ok && !differing.is_empty() && run.end == expected_end {
        notes.push(format!("differs: {}", differing.join(", ")));
    }
    if !ok && run.end != expected_end {
        notes.push(format!("expected {}", if expected_end == End::Completed { "to run to the end".into() } else { show_end(&expected_end) }));
    }
    if engine == Engine::Bt {
        notes.push(callout_note(&run.callouts, baseline));
    }
    let outcome = if ok { Outcome::Correct } else { Outcome::Wrong };
    EngineResult { outcome, observed, expected, note: notes.into_iter().filter(|n| !n.is_empty()).collect::<Vec<_>>().join("; ") }
}

/// The callouts a row made beyond the prologue's.
fn callout_note(callouts: &BTreeMap<String, u64>, baseline: &BTreeMap<String, u64>) -> String {
    let extra: Vec<String> = callouts
        .iter()
        .filter_map(|(m, n)| {
            let more = n.saturating_sub(baseline.get(m).copied().unwrap_or(0));
            (more > 0).then(|| if more == 1 { m.clone() } else { format!("{m} x{more}") })
        })
        .collect();
    if extra.is_empty() {
        "translated inline (no callout)".into()
    } else {
        format!("VMM callout: {}", extra.join(", "))
    }
}

/// Leaf 1 feature names (ECX, EDX), for the cpuid note.
const LEAF1_ECX: [&str; 32] = [
    "sse3", "pclmulqdq", "dtes64", "monitor", "ds-cpl", "vmx", "smx", "est", "tm2", "ssse3", "cnxt-id", "sdbg", "fma",
    "cx16", "xtpr", "pdcm", "", "pcid", "dca", "sse4.1", "sse4.2", "x2apic", "movbe", "popcnt", "tsc-deadline", "aes",
    "xsave", "osxsave", "avx", "f16c", "rdrand", "hypervisor",
];
const LEAF1_EDX: [&str; 32] = [
    "fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", "", "sep", "mtrr", "pge", "mca", "cmov", "pat",
    "pse36", "psn", "clflush", "", "ds", "acpi", "mmx", "fxsr", "sse", "sse2", "ss", "htt", "tm", "ia64", "pbe",
];

/// Which feature flags the guest saw that the VM does not have, and the other way round.
fn cpuid_difference(case: &Case, values: &[Option<u64>], cpu: &dyn CpuModel) -> String {
    let Some(model) = cpu.cpuid(1) else { return String::new() };
    let mut extra = Vec::new();
    let mut missing = Vec::new();
    for ((field, want), v) in case.checks.iter().zip(values) {
        let (Want::VmCpuid { reg, mask, .. }, Some(v)) = (want, v) else { continue };
        let names = if *reg == 2 { &LEAF1_ECX } else { &LEAF1_EDX };
        #[allow(clippy::cast_possible_truncation)]
        let seen = *v as u32 & mask;
        let vm = model[*reg] & mask;
        for (bit, name) in names.iter().enumerate() {
            let b = 1u32 << bit;
            let name = if name.is_empty() { format!("{}.{bit}", field.name) } else { (*name).to_string() };
            if seen & b != 0 && vm & b == 0 {
                extra.push(name);
            } else if seen & b == 0 && vm & b != 0 {
                missing.push(name);
            }
        }
    }
    let mut parts = Vec::new();
    if !extra.is_empty() {
        parts.push(format!("host features the VM does not offer: {}", extra.join(" ")));
    }
    if !missing.is_empty() {
        parts.push(format!("VM features the host lacks: {}", missing.join(" ")));
    }
    parts.join("; ")
}
