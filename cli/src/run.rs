//! `bt86 run`, `bt86 demo` and `bt86 restore`: set the VM up from the arguments (or
//! from a checkpoint), run it, save checkpoints when asked, and report how it ended —
//! one message, the statistics (however the run ended), the screen file, and the
//! exit status (see `EXIT_STATUS_HELP` in main.rs).

use crate::console::{self, StopCause};
use crate::display::{self, Display, Hint, SerialPane};
use crate::{signals, DisplayKind, Engine, ExitCodeStyle, RestoreOpts, RunOpts, StatsFormat};
use anyhow::Context;
use clap::ValueEnum;
use bt86_runtime::checkpoint::{self, Checkpoint, CheckpointError};
use bt86_runtime::devices::InputSource;
use bt86_runtime::gdb::GdbEnd;
use bt86_runtime::kvm::{self, KvmOptions, KvmUnavailable};
use bt86_runtime::{RunOutcome, Vm, VmConfig, VmError};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEMO_KERNEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/demo.elf"));

/// Exit status for bad input.
pub(crate) const EXIT_BAD_INPUT: u8 = 2;
/// Exit status for a guest that stopped abnormally (and for --timeout).
pub(crate) const EXIT_GUEST_FAILED: u8 = 3;
/// The same with `--exit-code-style qemu`: even, like all of bt86's own statuses.
const EXIT_GUEST_FAILED_QEMU_STYLE: u8 = 6;
/// Exit status when the KVM engine cannot (or may not) run on this host.
const EXIT_KVM_UNAVAILABLE: u8 = 4;
/// Exit status after a checkpoint was saved and the run stopped.
pub(crate) const EXIT_CHECKPOINT: u8 = 8;
/// Exit status for an internal error.
const EXIT_INTERNAL: u8 = 70;

/// Where the kernel (and initrd) come from, or the checkpoint to continue.
pub(crate) enum Inputs {
    Demo,
    Files { kernel: PathBuf, initrd: Option<PathBuf> },
    Checkpoint { file: PathBuf, checkpoint: Result<Box<Checkpoint>, CheckpointError> },
}

/// How the process ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exit {
    Status(u8),
    /// By this signal, re-raised.
    Signal(i32),
}

/// How the run ended: the `stop` member of the statistics, and the exit.
#[derive(Debug)]
struct Stop {
    /// guest-exit, halted, reset, guest-exception, triple-fault, unsupported, unbacked,
    /// timeout, quit, signal, stopped, gdb-kill, bad-input, kvm-unavailable,
    /// internal-error.
    reason: &'static str,
    exit: Exit,
    /// The line bt86 prints about it (without "bt86: "), if any.
    message: Option<String>,
    eip: Option<u32>,
}

impl Stop {
    fn new(reason: &'static str, exit: Exit, message: Option<String>) -> Self {
        Self { reason, exit, message, eip: None }
    }

    fn at(mut self, eip: u32) -> Self {
        self.eip = Some(eip);
        self
    }

    fn json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "reason": self.reason,
            "exit_status": match self.exit {
                Exit::Status(s) => i32::from(s),
                Exit::Signal(s) => 128 + s,
            },
        });
        if let Exit::Signal(s) = self.exit {
            v["signal"] = signals::name(s).into();
        }
        if let Some(m) = &self.message {
            v["message"] = m.clone().into();
        }
        if let Some(eip) = self.eip {
            v["eip"] = format!("{eip:#010x}").into();
        }
        v
    }
}

/// Reads an input file of at most `limit` bytes: a larger file (or an endless one
/// such as /dev/zero) cannot fit in guest RAM, so reading stops there.
pub(crate) fn read_bounded(path: &Path, what: &str, limit: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    let mut data = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if data.len() as u64 > limit {
        anyhow::bail!("{what} {} is larger than guest RAM ({} MiB)", path.display(), limit >> 20);
    }
    Ok(data)
}

pub(crate) fn read_kernel(path: &Path) -> anyhow::Result<Vec<u8>> {
    read_bounded(path, "kernel image", u64::from(bt86_runtime::memory::MAX_RAM))
}

/// `--timeout SECS` as a duration, or a message for bad input.
pub(crate) fn parse_timeout(secs: f64) -> Result<Duration, String> {
    if secs > 0.0 {
        Duration::try_from_secs_f64(secs).map_err(|_| format!("timeout {secs} s is out of range"))
    } else {
        Err(format!("timeout must be a positive number of seconds, not {secs}"))
    }
}

/// A file bt86 will write, created now so a bad path is bad input before anything runs.
fn create_output(path: &Path, what: &str) -> anyhow::Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("cannot write {what} {}", path.display()))
}

/// Everything checked and opened before the guest runs.
struct Prepared {
    trace: Option<std::fs::File>,
    stats_file: Option<std::fs::File>,
    timeout: Option<Duration>,
    checkpoint_after: Option<Duration>,
    gdb: Option<crate::gdb::GdbListen>,
}

fn prepare(opts: &RunOpts) -> anyhow::Result<Prepared> {
    let timeout = opts.session.timeout.map(parse_timeout).transpose().map_err(anyhow::Error::msg)?;
    let checkpoint_after = opts
        .checkpoint_after
        .map(|s| parse_timeout(s).map_err(|_| anyhow::anyhow!("--checkpoint-after must be a positive number of seconds, not {s}")))
        .transpose()?;
    if let Some(p) = &opts.checkpoint {
        checkpoint::check_writable(p)?;
    }
    if opts.display == DisplayKind::Vga && !std::io::stdout().is_terminal() {
        anyhow::bail!("--display vga draws on a terminal, and standard output is not one (use --screen FILE to get the screen as text)");
    }
    if opts.display == DisplayKind::Vga && opts.engine == Engine::Kvm {
        anyhow::bail!("--display vga works with --engine bt only");
    }
    if let Some(p) = &opts.session.screen {
        create_output(p, "the screen to")?;
    }
    let stats_file = opts.session.stats_file.as_deref().map(|p| create_output(p, "statistics to")).transpose()?;
    let trace = opts.session.trace.as_deref().map(|p| create_output(p, "the trace to")).transpose()?;
    let gdb = crate::gdb::listen(opts)?;
    Ok(Prepared { trace, stats_file, timeout, checkpoint_after, gdb })
}

/// `bt86 restore FILE`: the checkpoint read, and `bt86 run`'s options made of the
/// ones given and the ones the checkpoint kept.
pub(crate) fn restore(file: &Path, r: RestoreOpts) -> ExitCode {
    let checkpoint = Checkpoint::read_from(file).map(Box::new);
    let kept = |name: &str| checkpoint.as_ref().ok().and_then(|c| c.option(name)).map(str::to_string);
    let engine = r.engine.or(checkpoint.as_ref().ok().map(|c| match c.engine() {
        checkpoint::Engine::Bt => Engine::Bt,
        checkpoint::Engine::Kvm => Engine::Kvm,
    }));
    let display = r.display.or_else(|| kept(OPT_DISPLAY).and_then(|v| DisplayKind::from_str(&v, false).ok()));
    let style = r.exit_code_style.or_else(|| kept(OPT_EXIT_CODE_STYLE).and_then(|v| ExitCodeStyle::from_str(&v, false).ok()));
    let opts = RunOpts {
        mem: checkpoint.as_ref().map_or(bt86_runtime::DEFAULT_MEM_MIB, |c| c.mem_bytes() >> 20),
        cmdline: String::new(),
        engine: engine.unwrap_or(Engine::Bt),
        display: display.unwrap_or(DisplayKind::None),
        exit_code_style: style.unwrap_or(ExitCodeStyle::Bt86),
        checkpoint: Some(r.checkpoint.unwrap_or_else(|| file.to_path_buf())),
        checkpoint_after: r.checkpoint_after,
        session: r.session,
    };
    main(Inputs::Checkpoint { file: file.to_path_buf(), checkpoint }, &opts, true)
}

/// Names of the run options a checkpoint keeps for `bt86 restore`.
const OPT_DISPLAY: &str = "display";
const OPT_EXIT_CODE_STYLE: &str = "exit-code-style";

fn value_name(v: &impl ValueEnum) -> String {
    v.to_possible_value().map(|p| p.get_name().to_string()).unwrap_or_default()
}

/// Saves the stopped VM to `path`, with the options a restore keeps; the message
/// says where, how big and how long it took.
fn save_checkpoint(vm: &mut Vm, opts: &RunOpts, path: &Path) -> Result<String, CheckpointError> {
    let started = Instant::now();
    let engine = match opts.engine {
        Engine::Bt => checkpoint::Engine::Bt,
        Engine::Kvm => checkpoint::Engine::Kvm,
    };
    let kept = vec![
        (OPT_DISPLAY.to_string(), value_name(&opts.display)),
        (OPT_EXIT_CODE_STYLE.to_string(), value_name(&opts.exit_code_style)),
    ];
    let written = Checkpoint::capture(vm, engine, kept)?.write_to(path)?;
    Ok(format!(
        "checkpoint saved to {} ({} KiB: {} pages of guest RAM, in {} ms)",
        path.display(),
        written.bytes.div_ceil(1024),
        written.pages,
        started.elapsed().as_millis()
    ))
}

pub(crate) fn main(inputs: Inputs, opts: &RunOpts, console_input: bool) -> ExitCode {
    // Before any thread exists, so that every thread inherits the blocked signals.
    if let Err(e) = signals::block() {
        eprintln!("bt86: cannot block termination signals: {e}");
    }
    console::handle_signals();
    let prepared = match prepare(opts) {
        Ok(p) => p,
        Err(e) => {
            crate::logging::init(None);
            return finish(opts, None, None, Stop::new("bad-input", Exit::Status(EXIT_BAD_INPUT), Some(format!("{e:#}"))));
        }
    };
    crate::logging::init(prepared.trace.map(|f| (f, &opts.session.trace_events[..])));
    let mut stats_file = prepared.stats_file;
    // The time limit runs from here: reading a FIFO nobody writes must not hang us.
    if let (Some(t), Engine::Bt) = (prepared.timeout, opts.engine) {
        console::watchdog(t);
    }
    let deadline = prepared.timeout.map(|t| Instant::now() + t);
    if let Inputs::Checkpoint { checkpoint: Err(e), file } = &inputs {
        let status = if e.is_bad_input() { EXIT_BAD_INPUT } else { EXIT_INTERNAL };
        let stop = Stop::new("bad-input", Exit::Status(status), Some(format!("cannot restore {}: {e}", file.display())));
        return finish(opts, stats_file.as_mut(), None, stop);
    }
    if opts.engine == Engine::Kvm {
        if let Err(stop) = check_kvm_host(opts.session.allow_software_kvm) {
            return finish(opts, stats_file.as_mut(), None, stop);
        }
    }
    let ram_limit = u64::from(opts.mem) << 20;
    let loaded = match &inputs {
        Inputs::Checkpoint { .. } => Ok((Vec::new(), None)),
        Inputs::Demo => Ok((DEMO_KERNEL.to_vec(), None)),
        Inputs::Files { kernel, initrd } => read_bounded(kernel, "kernel image", ram_limit).and_then(|k| {
            let i = initrd.as_deref().map(|p| read_bounded(p, "initrd", ram_limit)).transpose()?;
            Ok((k, i))
        }),
    };
    let (image, initrd) = match loaded {
        Ok(x) => x,
        Err(e) => return finish(opts, stats_file.as_mut(), None, Stop::new("bad-input", Exit::Status(EXIT_BAD_INPUT), Some(format!("{e:#}")))),
    };
    let pane = (opts.display == DisplayKind::Vga).then(SerialPane::default);
    let console_out: Box<dyn Write + Send> = match &pane {
        Some(p) => Box::new(p.clone()),
        None => Box::new(std::io::stdout()),
    };
    let stdin_input = console_input && opts.engine == Engine::Bt;
    let mut vm = if let Inputs::Checkpoint { file, checkpoint: Ok(ck) } = inputs {
        match ck.restore(console_out, stdin_input) {
            Ok(vm) => vm,
            Err(e) => {
                let (reason, status) = if e.is_bad_input() { ("bad-input", EXIT_BAD_INPUT) } else { ("internal-error", EXIT_INTERNAL) };
                let stop = Stop::new(reason, Exit::Status(status), Some(format!("cannot restore {}: {e}", file.display())));
                return finish(opts, stats_file.as_mut(), None, stop);
            }
        }
    } else {
        let mut cfg = VmConfig::new(opts.mem, console_out);
        cfg.stdin_input = stdin_input;
        let mut vm = match Vm::new(cfg) {
            Ok(vm) => vm,
            Err(e @ VmError::MemSize(_)) => return finish(opts, stats_file.as_mut(), None, Stop::new("bad-input", Exit::Status(EXIT_BAD_INPUT), Some(e.to_string()))),
            Err(e) => {
                let stop = Stop::new("internal-error", Exit::Status(EXIT_INTERNAL), Some(format!("cannot create the virtual machine: {e}")));
                return finish(opts, stats_file.as_mut(), None, stop);
            }
        };
        if let Err(e) = vm.load_kernel(&image, &opts.cmdline, initrd.as_deref()) {
            let stop = Stop::new("bad-input", Exit::Status(EXIT_BAD_INPUT), Some(e.to_string()));
            return finish(opts, stats_file.as_mut(), Some(&vm), stop);
        }
        vm
    };
    vm.set_user_code(opts.session.user_code);
    // The screen: shown live, or watched for the hint.
    let screen_ram = vm.ram().reader();
    let vga = vm.platform().vga_state();
    let mut live = None;
    let mut hint = None;
    let say: console::Say = match &pane {
        Some(p) => {
            vm.platform_mut().attach_keyboard();
            let p2 = p.clone();
            match vm.ram().reader().map_err(|e| e.to_string()).and_then(|r| Display::start(r, vga.clone(), p.clone()).map_err(|e| e.to_string())) {
                Ok(d) => live = Some(d),
                Err(e) => return finish(opts, stats_file.as_mut(), Some(&vm), Stop::new("internal-error", Exit::Status(EXIT_INTERNAL), Some(format!("cannot start the display: {e}")))),
            }
            Arc::new(move |m: &str| p2.message(m))
        }
        None => {
            if opts.session.screen.is_none() {
                hint = vm.ram().reader().ok().map(|r| Hint::start(r, vga.clone()));
            }
            Arc::new(|m: &str| eprint!("{m}"))
        }
    };
    if vm.platform().input_source() == InputSource::Terminal {
        vm.platform().set_escape_handler(console::escape_handler(say.clone(), opts.checkpoint.is_some()));
    }
    let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    // KVM has one time limit: the nearer of --timeout and --checkpoint-after.
    let kvm_checkpoints = prepared.checkpoint_after.is_some_and(|c| remaining.is_none_or(|t| c < t));
    let kvm_limit = if kvm_checkpoints { prepared.checkpoint_after } else { remaining };
    if let (Some(after), Engine::Bt) = (prepared.checkpoint_after, opts.engine) {
        console::checkpoint_after(after);
    }
    // How the run ended when a checkpoint was saved (or failed to be).
    let mut saved: Option<Stop> = None;
    let mut gdb_wait = opts.session.gdb_wait;
    let result = loop {
        let result = match opts.engine {
            Engine::Bt => {
                console::started(Some(vm.stop_handle()));
                match &prepared.gdb {
                    // Only the first run waits for gdb (not one after a checkpoint).
                    Some(gdb) => run_gdb(&mut vm, gdb, gdb_wait, &say),
                    None => vm.run().map(|o| (o, None)).map_err(internal),
                }
            }
            Engine::Kvm => {
                console::started(None);
                run_kvm(&mut vm, opts, kvm_limit)
            }
        };
        gdb_wait = false;
        let and_continue = match (&result, console::cause(), opts.engine) {
            (Ok((RunOutcome::Stopped { .. }, _)), Some(StopCause::Checkpoint { and_continue }), Engine::Bt) => and_continue,
            (Ok((RunOutcome::Stopped { .. }, _)), None, Engine::Kvm) if kvm_checkpoints => false,
            _ => break result,
        };
        let Some(path) = opts.checkpoint.as_deref() else { break result };
        let eip = vm.eip();
        match save_checkpoint(&mut vm, opts, path) {
            Ok(m) if and_continue => {
                if console::continue_after_checkpoint(|| vm.clear_stop()) {
                    say(&format!("bt86: {m}; the guest goes on\r\n"));
                    continue;
                }
                saved = Some(Stop::new("checkpoint", Exit::Status(EXIT_CHECKPOINT), Some(format!("{m}; stopped at eip {eip:#010x}"))).at(eip));
            }
            Ok(m) => {
                let m = format!("{m}; stopped at eip {eip:#010x}: `bt86 restore {}` continues the guest", path.display());
                saved = Some(Stop::new("checkpoint", Exit::Status(EXIT_CHECKPOINT), Some(m)).at(eip));
            }
            Err(e) if and_continue && e.is_bad_input() && console::continue_after_checkpoint(|| vm.clear_stop()) => {
                say(&format!("bt86: {e}; the guest goes on\r\n"));
                continue;
            }
            Err(e) => {
                let (reason, status) = if e.is_bad_input() { ("bad-input", EXIT_BAD_INPUT) } else { ("internal-error", EXIT_INTERNAL) };
                saved = Some(Stop::new(reason, Exit::Status(status), Some(format!("{e}"))).at(eip));
            }
        }
        break result;
    };
    vm.flush_devices();
    if let Some(d) = live {
        d.finish();
    }
    if let Some(h) = hint {
        h.finish();
    }
    if let (Some(path), Ok(ram)) = (&opts.session.screen, &screen_ram) {
        if let Err(e) = display::write_screen(path, ram, &vga) {
            eprintln!("bt86: cannot write the screen to {}: {e}", path.display());
        }
    }
    let (stop, kvm_stats) = match result {
        Ok((outcome, kvm_stats)) => (saved.unwrap_or_else(|| stop_of(&outcome, &vm, opts)), kvm_stats),
        Err(stop) => (stop, None),
    };
    let report = match kvm_stats {
        Some(s) => serde_json::to_value(&s).ok(),
        None if opts.engine == Engine::Bt => serde_json::to_value(vm.stats()).ok(),
        None => None,
    };
    emit(opts, stats_file.as_mut(), report, stop)
}

type RunResult = Result<(RunOutcome, Option<bt86_runtime::kvm::KvmStats>), Stop>;

/// The run under the gdb stub (`--gdb`); `wait`: for gdb before the first instruction.
fn run_gdb(vm: &mut Vm, gdb: &crate::gdb::GdbListen, wait: bool, say: &console::Say) -> RunResult {
    match crate::gdb::run(vm, gdb, wait, &|m: &str| say(&format!("bt86: {m}\r\n"))) {
        Ok(GdbEnd::Ended(outcome)) => Ok((outcome, None)),
        Ok(GdbEnd::Killed) => Err(Stop::new("gdb-kill", Exit::Status(0), Some("the guest was killed from gdb".into()))),
        Err(e) => Err(internal(e)),
    }
}

fn internal(e: impl std::fmt::Display) -> Stop {
    Stop::new("internal-error", Exit::Status(EXIT_INTERNAL), Some(format!("internal error: {e}")))
}

fn run_kvm(vm: &mut Vm, opts: &RunOpts, timeout: Option<Duration>) -> RunResult {
    match vm.run_kvm(KvmOptions { allow_software: opts.session.allow_software_kvm, timeout }) {
        Ok((outcome, stats)) => Ok((outcome, Some(stats))),
        Err(e) if e.is_host_problem() => Err(Stop::new("kvm-unavailable", Exit::Status(EXIT_KVM_UNAVAILABLE), Some(format!("{KVM_PREFIX}{e}")))),
        Err(e) => Err(internal(e)),
    }
}

const KVM_PREFIX: &str = "cannot use --engine kvm: ";

/// Refuses (exit status 4, one line naming the reason) unless KVM is usable here;
/// warns on a software-backed KVM that the user allowed.
fn check_kvm_host(allow_software: bool) -> Result<(), Stop> {
    match kvm::check_host() {
        Ok(_) => Ok(()),
        Err(e @ KvmUnavailable::Software { .. }) if allow_software => {
            let what = e.software_host().map(kvm::KvmHost::describe).unwrap_or_default();
            eprintln!(
                "bt86: warning: /dev/kvm here is {what}, not VT-x/AMD-V: 32-bit guests run very slowly and timings mean nothing (running anyway: --allow-software-kvm)"
            );
            Ok(())
        }
        Err(e) => Err(Stop::new("kvm-unavailable", Exit::Status(EXIT_KVM_UNAVAILABLE), Some(format!("{KVM_PREFIX}{e}")))),
    }
}

/// The status of a guest that failed, in the chosen style.
fn failed(opts: &RunOpts) -> Exit {
    Exit::Status(match opts.exit_code_style {
        ExitCodeStyle::Bt86 => EXIT_GUEST_FAILED,
        ExitCodeStyle::Qemu => EXIT_GUEST_FAILED_QEMU_STYLE,
    })
}

/// The exit status for the guest's isa-debug-exit value `v`, and a note when it does
/// not fit.
pub(crate) fn guest_exit_status(v: u32, style: ExitCodeStyle) -> (u8, Option<String>) {
    match style {
        // QEMU: exit((v << 1) | 1), of which the OS keeps the low 8 bits.
        ExitCodeStyle::Qemu => ((((v << 1) | 1) & 0xff) as u8, None),
        ExitCodeStyle::Bt86 => match u8::try_from(v) {
            Ok(code) => (code, None),
            Err(_) => (255, Some(format!("guest exit value {v:#x} does not fit an exit status; exiting with 255"))),
        },
    }
}

fn stop_of(outcome: &RunOutcome, vm: &Vm, opts: &RunOpts) -> Stop {
    match outcome {
        RunOutcome::GuestExit(v) => {
            tracing::info!(value = v, "guest requested exit");
            let (code, note) = guest_exit_status(*v, opts.exit_code_style);
            Stop::new("guest-exit", Exit::Status(code), note)
        }
        // hlt with interrupts off is how a PC without ACPI powers off (Linux's
        // `poweroff -f` ends in "System halted": cli; hlt).
        RunOutcome::Halted { eip } if !vm.interrupts_enabled() => {
            Stop::new("powered-off", Exit::Status(0), Some(format!("guest powered off (hlt with interrupts off at eip {eip:#010x})"))).at(*eip)
        }
        RunOutcome::Halted { eip } => {
            Stop::new("halted", Exit::Status(0), Some(format!("guest halted at eip {eip:#010x} with nothing left to wake it"))).at(*eip)
        }
        RunOutcome::GuestException { vector, error, eip } => {
            let err = error.map(|e| format!(" (error code {e:#x})")).unwrap_or_default();
            let m = format!(
                "guest exception {} (vector {vector}){err} at eip {eip:#010x}: the guest has no IDT to handle it",
                exception_name(*vector)
            );
            Stop::new("guest-exception", failed(opts), Some(m)).at(*eip)
        }
        RunOutcome::Unsupported { eip, what } => {
            Stop::new("unsupported", failed(opts), Some(format!("unsupported at eip {eip:#010x}: {what}"))).at(*eip)
        }
        RunOutcome::Unbacked { eip, linear } => {
            let m = format!("guest accessed {linear:#010x}, outside its RAM, at eip {eip:#010x}");
            Stop::new("unbacked", failed(opts), Some(m)).at(*eip)
        }
        RunOutcome::TripleFault { faults, eip } => {
            let m = if faults.is_empty() {
                // The KVM engine: KVM reports a shutdown without the faults behind it.
                format!("triple fault at eip {eip:#010x} (the CPU shut down)")
            } else {
                let names: Vec<String> = faults.iter().map(|v| format!("{} (vector {v})", exception_name(*v))).collect();
                let boot_idt = vm.idtr() == (0, bt86_runtime::vm::BOOT_IDTR_LIMIT);
                let why = if boot_idt { ": the guest never loaded an IDT (IDTR is still the boot loader's real-mode table)" } else { "" };
                format!("triple fault at eip {eip:#010x}: {}{why}", names.join(", then "))
            };
            Stop::new("triple-fault", failed(opts), Some(m)).at(*eip)
        }
        RunOutcome::Reset => Stop::new(
            "reset",
            Exit::Status(0),
            Some("the guest asked for a reset; bt86 does not reboot guests, so the run ends here".into()),
        ),
        RunOutcome::Stopped { eip } => {
            let cause = console::cause().or((opts.session.timeout.is_some() && opts.engine == Engine::Kvm).then_some(StopCause::Timeout));
            match cause {
                Some(StopCause::Timeout) => {
                    Stop::new("timeout", failed(opts), Some(format!("stopped at eip {eip:#010x}: --timeout passed"))).at(*eip)
                }
                Some(StopCause::Quit) => {
                    Stop::new("quit", Exit::Status(0), Some(format!("ended by Ctrl-A x at eip {eip:#010x}"))).at(*eip)
                }
                Some(StopCause::Signal(s)) => {
                    let m = format!("stopped by {} at eip {eip:#010x}", signals::name(s));
                    Stop::new("signal", Exit::Signal(s), Some(m)).at(*eip)
                }
                // Saved (or refused) above; not reached.
                Some(StopCause::Checkpoint { .. }) | None => {
                    Stop::new("stopped", failed(opts), Some(format!("stopped at eip {eip:#010x}"))).at(*eip)
                }
            }
        }
    }
}

fn exception_name(vector: u8) -> &'static str {
    const NAMES: [&str; 20] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS", "#GP",
        "#PF", "reserved", "#MF", "#AC", "#MC", "#XM",
    ];
    NAMES.get(usize::from(vector)).copied().unwrap_or("interrupt")
}

/// Ends a run that did not get to run the guest: the report without engine counters.
fn finish(opts: &RunOpts, stats_file: Option<&mut std::fs::File>, vm: Option<&Vm>, stop: Stop) -> ExitCode {
    let report = vm.filter(|_| opts.engine == Engine::Bt).and_then(|vm| serde_json::to_value(vm.stats()).ok());
    emit(opts, stats_file, report, stop)
}

/// The terminal back to normal, the message, the statistics, and the exit.
fn emit(opts: &RunOpts, stats_file: Option<&mut std::fs::File>, report: Option<serde_json::Value>, stop: Stop) -> ExitCode {
    console::restore_terminal();
    if let Some(m) = &stop.message {
        eprintln!("bt86: {m}");
    }
    let format = opts.session.stats.or(opts.session.stats_file.as_ref().map(|_| StatsFormat::Json));
    if let Some(format) = format {
        let mut v = report.unwrap_or_else(|| serde_json::json!({}));
        if let Some(obj) = v.as_object_mut() {
            obj.insert("stop".into(), stop.json());
        }
        let text = match format {
            StatsFormat::Json => format!("{v}\n"),
            StatsFormat::Text => format!("bt86 statistics:\n{}", bt86_runtime::stats::text_from_json(&v)),
        };
        match stats_file {
            Some(f) => {
                if let Err(e) = f.write_all(text.as_bytes()) {
                    eprintln!("bt86: cannot write the statistics: {e}");
                }
            }
            None => eprint!("{text}"),
        }
    }
    match stop.exit {
        Exit::Status(s) => ExitCode::from(s),
        Exit::Signal(sig) => {
            let _ = std::io::stdout().flush();
            signals::reraise(sig)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_style_exit_values_are_odd() {
        assert_eq!(guest_exit_status(0, ExitCodeStyle::Qemu).0, 1);
        assert_eq!(guest_exit_status(1, ExitCodeStyle::Qemu).0, 3);
        assert_eq!(guest_exit_status(42, ExitCodeStyle::Qemu).0, 85);
        assert_eq!(guest_exit_status(0x80, ExitCodeStyle::Qemu).0, 1, "as QEMU: the low 8 bits");
        assert_eq!(guest_exit_status(7, ExitCodeStyle::Bt86), (7, None));
        assert_eq!(guest_exit_status(256, ExitCodeStyle::Bt86).0, 255);
        for own in [0, EXIT_BAD_INPUT, EXIT_GUEST_FAILED_QEMU_STYLE, EXIT_KVM_UNAVAILABLE, EXIT_CHECKPOINT, EXIT_INTERNAL] {
            assert_eq!(own % 2, 0, "bt86's own statuses are even in the qemu style");
        }
    }

    #[test]
    fn stop_json_names_reason_and_status() {
        let s = Stop::new("signal", Exit::Signal(libc::SIGTERM), Some("stopped".into())).at(0x1000);
        let v = s.json();
        assert_eq!(v["reason"], "signal");
        assert_eq!(v["exit_status"], 143);
        assert_eq!(v["signal"], "SIGTERM");
        assert_eq!(v["eip"], "0x00001000");
        let v = Stop::new("guest-exit", Exit::Status(7), None).json();
        assert_eq!(v["exit_status"], 7);
        assert!(v.get("message").is_none());
    }
}
