//! `bt86`: run a 32-bit x86 guest kernel under binary translation (or, for
//! comparison, under the host's KVM), and compare the engines side by side.
//!
//! Exit status of `bt86 run` and `bt86 demo`: the guest's own value when it writes to
//! the isa-debug-exit port (0xf4); 0 when it halts for good (or asks for a reset); 2
//! for bad input (arguments, a missing or malformed kernel); 3 when the guest stops
//! abnormally (an exception it cannot handle, a triple fault, an unsupported
//! instruction, memory that does not exist, the `--timeout`); 4 when `--engine kvm`
//! cannot run on this host (/dev/kvm missing or not accessible, a KVM that is backed
//! by a software hypervisor and `--allow-software-kvm` not given, or KVM refusing to
//! set the VM up); 70 for an internal error of bt86.
//!
//! Exit status of `bt86 compare`: 0 when every engine that ran gave the same console
//! output and the same status; 1 otherwise (or when none ran); 2 for bad input.

use anyhow::Context;
use bt86_runtime::kvm::{self, KvmOptions, KvmUnavailable};
use bt86_runtime::{RunOutcome, Vm, VmConfig, VmError, DEFAULT_MEM_MIB};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

mod study;

const DEMO_KERNEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/demo.elf"));

const EXIT_STATUS_HELP: &str = "\
Exit status of run and demo:
  N   the guest wrote N to the isa-debug-exit port (0xf4)
  0   the guest halted for good (or asked for a reset)
  2   bad input (arguments, a missing or malformed kernel)
  3   the guest stopped abnormally (unhandled exception, triple fault, unsupported
      instruction, memory that does not exist, --timeout)
  4   --engine kvm cannot run here: /dev/kvm missing or not accessible, or backed by
      a software hypervisor (use --allow-software-kvm to run anyway)
  70  internal error of bt86
Exit status of compare: 0 if every engine that ran agreed (same console output and
status), 1 otherwise, 2 for bad input.";

#[derive(Parser)]
#[command(
    name = "bt86",
    version,
    about = "A binary-translating virtual machine monitor for 32-bit x86 guests",
    after_help = EXIT_STATUS_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a kernel: a multiboot (v1) ELF or a Linux bzImage (told apart by content).
    #[command(after_help = EXIT_STATUS_HELP)]
    Run {
        /// The kernel image: a 32-bit ELF with a multiboot header, or a Linux bzImage.
        #[arg(long, value_name = "PATH")]
        kernel: PathBuf,
        /// An initial ramdisk: Linux's initrd, or module 0 for a multiboot kernel.
        #[arg(long, value_name = "PATH")]
        initrd: Option<PathBuf>,
        #[command(flatten)]
        opts: RunOpts,
    },
    /// Run the built-in demo guest: what sensitive instructions return under bt86.
    #[command(after_help = EXIT_STATUS_HELP)]
    Demo {
        #[command(flatten)]
        opts: RunOpts,
    },
    /// Run one kernel under every available engine (bt; kvm when hardware-backed or
    /// allowed; QEMU TCG when qemu-system-i386 is installed) and print a table of wall
    /// time, ratio to the fastest, guest exits, callouts, status and whether the
    /// console output matched.
    #[command(after_help = EXIT_STATUS_HELP)]
    Compare {
        /// The kernel image (32-bit ELF with a multiboot header).
        #[arg(long, value_name = "PATH")]
        kernel: PathBuf,
        /// Guest RAM in MiB (for every engine).
        #[arg(long, value_name = "MiB", default_value_t = DEFAULT_MEM_MIB)]
        mem: u32,
        /// The kernel command line.
        #[arg(long, value_name = "STR", default_value = "")]
        cmdline: String,
        /// Include the kvm engine even where /dev/kvm is backed by a software hypervisor.
        #[arg(long)]
        allow_software_kvm: bool,
        /// Stop each engine after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 120.0)]
        timeout: f64,
    },
    /// Why x86 was not virtualizable, measured: each sensitive instruction run by a guest
    /// kernel deprivileged (natively at CPL 3), under binary translation and under KVM.
    #[command(after_help = study::EXIT_STATUS_HELP)]
    Study(study::StudyArgs),
}

#[derive(clap::Args)]
struct RunOpts {
    /// Guest RAM in MiB.
    #[arg(long, value_name = "MiB", default_value_t = DEFAULT_MEM_MIB)]
    mem: u32,
    /// The kernel command line (`--cmdline` is the same option).
    #[arg(long = "append", visible_alias = "cmdline", value_name = "STR", default_value = "")]
    cmdline: String,
    /// Print statistics to stderr when the guest stops (`--stats` or `--stats=json`).
    #[arg(long, value_name = "FORMAT", num_args = 0..=1, require_equals = true, default_missing_value = "text")]
    stats: Option<StatsFormat>,
    /// The engine: bt (binary translation) or kvm (the host's hardware-assisted KVM).
    #[arg(long, value_enum, default_value_t = Engine::Bt)]
    engine: Engine,
    /// With --engine kvm: run even where /dev/kvm is backed by a software hypervisor
    /// (slow, and its timings say nothing about hardware-assisted virtualization).
    #[arg(long)]
    allow_software_kvm: bool,
    /// Stop the guest after this many seconds (exit status 3).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
}

#[derive(Clone, Copy, ValueEnum)]
enum StatsFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Engine {
    Bt,
    Kvm,
}

/// Exit status for bad input.
const EXIT_BAD_INPUT: u8 = 2;
/// Exit status for a guest that stopped abnormally.
const EXIT_GUEST_FAILED: u8 = 3;
/// Exit status when the KVM engine cannot (or may not) run on this host.
const EXIT_KVM_UNAVAILABLE: u8 = 4;
/// Exit status for an internal error.
const EXIT_INTERNAL: u8 = 70;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // The guest's serial port reads the terminal (or a pipe) only for `run`.
    let (inputs, opts, console_input) = match cli.command {
        Command::Run { kernel, initrd, opts } => (Inputs::Files { kernel, initrd }, opts, true),
        Command::Demo { opts } => (Inputs::Demo, opts, false),
        Command::Compare { kernel, mem, cmdline, allow_software_kvm, timeout } => {
            return compare::main(&compare::Settings { kernel, mem, cmdline, allow_software_kvm, timeout });
        }
        Command::Study(args) => return study::main(&args),
    };
    run(inputs, &opts, console_input)
}

/// Where the kernel (and initrd) come from.
enum Inputs {
    Demo,
    Files { kernel: PathBuf, initrd: Option<PathBuf> },
}

/// Reads an input file of at most `limit` bytes: a larger file (or an endless one
/// such as /dev/zero) cannot fit in guest RAM, so reading stops there.
fn read_bounded(path: &Path, what: &str, limit: u64) -> anyhow::Result<Vec<u8>> {
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

fn read_kernel(path: &Path) -> anyhow::Result<Vec<u8>> {
    read_bounded(path, "kernel image", u64::from(bt86_runtime::memory::MAX_RAM))
}

/// `--timeout SECS` as a duration, or a message for bad input.
fn parse_timeout(secs: f64) -> Result<Duration, String> {
    if secs > 0.0 {
        Duration::try_from_secs_f64(secs).map_err(|_| format!("timeout {secs} s is out of range"))
    } else {
        Err(format!("timeout must be a positive number of seconds, not {secs}"))
    }
}

fn run(inputs: Inputs, opts: &RunOpts, console_input: bool) -> ExitCode {
    let timeout = match opts.timeout.map(parse_timeout).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bt86: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    // The time limit runs from here: reading a FIFO nobody writes must not hang us.
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    if let Some(t) = timeout {
        std::thread::spawn(move || {
            std::thread::sleep(t);
            if !VM_STARTED.load(std::sync::atomic::Ordering::SeqCst) {
                eprintln!("bt86: --timeout reached before the guest started");
                std::process::exit(i32::from(EXIT_GUEST_FAILED));
            }
        });
    }
    // The host check comes first, so a refusal is quick and does not depend on the kernel.
    if opts.engine == Engine::Kvm {
        if let Err(code) = check_kvm_host(opts.allow_software_kvm) {
            return code;
        }
    }
    let ram_limit = u64::from(opts.mem) << 20;
    let loaded = match &inputs {
        Inputs::Demo => Ok((DEMO_KERNEL.to_vec(), None)),
        Inputs::Files { kernel, initrd } => read_bounded(kernel, "kernel image", ram_limit).and_then(|k| {
            let i = initrd.as_deref().map(|p| read_bounded(p, "initrd", ram_limit)).transpose()?;
            Ok((k, i))
        }),
    };
    let (image, initrd) = match loaded {
        Ok(x) => x,
        Err(e) => {
            eprintln!("bt86: {e:#}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let mut cfg = VmConfig::new(opts.mem, Box::new(std::io::stdout()));
    cfg.stdin_input = console_input && opts.engine == Engine::Bt;
    let mut vm = match Vm::new(cfg) {
        Ok(vm) => vm,
        Err(e @ VmError::MemSize(_)) => {
            eprintln!("bt86: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
        Err(e) => {
            eprintln!("bt86: cannot create the virtual machine: {e}");
            return ExitCode::from(EXIT_INTERNAL);
        }
    };
    if let Err(e) = vm.load_kernel(&image, &opts.cmdline, initrd.as_deref()) {
        eprintln!("bt86: {e}");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    VM_STARTED.store(true, std::sync::atomic::Ordering::SeqCst);
    let remaining = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
    match opts.engine {
        Engine::Bt => run_bt(&mut vm, opts.stats, remaining),
        Engine::Kvm => run_kvm(&mut vm, opts, remaining),
    }
}

/// Set once the guest runs; until then the --timeout watchdog ends the process.
static VM_STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Refuses (exit status 4, one line naming the reason) unless KVM is usable here;
/// warns on a software-backed KVM that the user allowed.
fn check_kvm_host(allow_software: bool) -> Result<(), ExitCode> {
    match kvm::check_host() {
        Ok(_) => Ok(()),
        Err(e @ KvmUnavailable::Software { .. }) if allow_software => {
            let what = e.software_host().map(kvm::KvmHost::describe).unwrap_or_default();
            eprintln!(
                "bt86: warning: /dev/kvm here is {what}, not VT-x/AMD-V: 32-bit guests run very slowly and timings mean nothing (running anyway: --allow-software-kvm)"
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("bt86: cannot use --engine kvm: {e}");
            Err(ExitCode::from(EXIT_KVM_UNAVAILABLE))
        }
    }
}

fn run_bt(vm: &mut Vm, stats: Option<StatsFormat>, timeout: Option<Duration>) -> ExitCode {
    let outcome = match timeout {
        Some(t) => bt86_runtime::vm::run_with_timeout(vm, t),
        None => vm.run(),
    };
    vm.flush_devices();
    if let Some(format) = stats {
        let report = vm.stats();
        print_stats(serde_json::to_value(&report), format, || report.to_text());
    }
    match outcome {
        Ok(o) => report(&o),
        Err(e) => {
            eprintln!("bt86: internal error: {e}");
            ExitCode::from(EXIT_INTERNAL)
        }
    }
}

fn run_kvm(vm: &mut Vm, opts: &RunOpts, timeout: Option<Duration>) -> ExitCode {
    let result = vm.run_kvm(KvmOptions { allow_software: opts.allow_software_kvm, timeout });
    vm.flush_devices();
    match result {
        Ok((outcome, stats)) => {
            if let Some(format) = opts.stats {
                print_stats(serde_json::to_value(&stats), format, || stats.to_text());
            }
            report(&outcome)
        }
        Err(e) if e.is_host_problem() => {
            eprintln!("bt86: cannot use --engine kvm: {e}");
            ExitCode::from(EXIT_KVM_UNAVAILABLE)
        }
        Err(e) => {
            eprintln!("bt86: internal error: {e}");
            ExitCode::from(EXIT_INTERNAL)
        }
    }
}

/// Prints statistics to stderr: one JSON line, or the engine's text report.
fn print_stats(
    report: Result<serde_json::Value, serde_json::Error>,
    format: StatsFormat,
    text: impl FnOnce() -> String,
) {
    match format {
        StatsFormat::Json => match report {
            Ok(v) => eprintln!("{v}"),
            Err(e) => eprintln!("bt86: cannot format statistics: {e}"),
        },
        StatsFormat::Text => eprint!("bt86 statistics:\n{}", text()),
    }
}

fn report(outcome: &RunOutcome) -> ExitCode {
    match outcome {
        RunOutcome::GuestExit(v) => {
            tracing::info!(value = v, "guest requested exit");
            match u8::try_from(*v) {
                Ok(code) => ExitCode::from(code),
                Err(_) => {
                    eprintln!("bt86: guest exit value {v:#x} does not fit an exit status; exiting with 255");
                    ExitCode::from(255)
                }
            }
        }
        RunOutcome::Halted { eip } => {
            eprintln!("bt86: guest halted at eip {eip:#010x} with nothing left to wake it");
            ExitCode::SUCCESS
        }
        RunOutcome::GuestException { vector, error, eip } => {
            let err = error.map(|e| format!(" (error code {e:#x})")).unwrap_or_default();
            eprintln!(
                "bt86: guest exception {} (vector {vector}){err} at eip {eip:#010x}: the guest has no IDT to handle it",
                exception_name(*vector)
            );
            ExitCode::from(EXIT_GUEST_FAILED)
        }
        RunOutcome::Unsupported { eip, what } => {
            eprintln!("bt86: unsupported at eip {eip:#010x}: {what}");
            ExitCode::from(EXIT_GUEST_FAILED)
        }
        RunOutcome::Unbacked { eip, linear } => {
            eprintln!("bt86: guest accessed {linear:#010x}, outside its RAM, at eip {eip:#010x}");
            ExitCode::from(EXIT_GUEST_FAILED)
        }
        RunOutcome::TripleFault { faults, eip } => {
            if faults.is_empty() {
                // The KVM engine: KVM reports a shutdown without the faults behind it.
                eprintln!("bt86: triple fault at eip {eip:#010x} (the CPU shut down)");
            } else {
                let names: Vec<String> =
                    faults.iter().map(|v| format!("{} (vector {v})", exception_name(*v))).collect();
                eprintln!("bt86: triple fault at eip {eip:#010x}: {}", names.join(", then "));
            }
            ExitCode::from(EXIT_GUEST_FAILED)
        }
        RunOutcome::Reset => {
            eprintln!("bt86: the guest asked for a reset; bt86 does not reboot guests, so the run ends here");
            ExitCode::SUCCESS
        }
        RunOutcome::Stopped { eip } => {
            eprintln!("bt86: stopped at eip {eip:#010x}");
            ExitCode::from(EXIT_GUEST_FAILED)
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

/// `bt86 compare`: the same guest under each engine, each in a child process.
///
/// What is compared, and why it is fair:
/// - Every engine gets the same kernel file, RAM size and command line, and runs as
///   its own process with stdin from /dev/null; the wall clock runs from spawning the
///   process to its exit, so process start-up, loading and (for QEMU) its firmware are
///   included for every engine alike. For a tiny guest that start-up dominates.
/// - The console output is the guest's COM1 output (stdout of the child). Outputs are
///   compared byte for byte after two normalisations only: CRLF line ends become LF,
///   and in QEMU's output the kernel path QEMU's multiboot loader puts in front of the
///   command line (it passes "PATH CMDLINE" where bt86 passes "CMDLINE") is removed —
///   so a guest that prints its command line does not differ for that reason alone.
/// - The status is how the guest ended: `exit N` (isa-debug-exit), `halted`, `reset`,
///   `timeout`, `crashed` (an exception the guest could not handle or a triple fault:
///   bt reports the exception, KVM the triple fault it becomes on a CPU, QEMU with
///   -no-reboot ends as on a reset — all the same crash, so they agree), or `failed`
///   (an engine's own limitation, such as an instruction it cannot run; two failures
///   agree only with the same message). The reasons are printed as notes. QEMU's
///   isa-debug-exit carries only the low 7 bits of N (its exit status is (N << 1) | 1),
///   so exit values are compared in those 7 bits when QEMU is one of the two. QEMU
///   does not stop at a final `hlt` (it idles until the timeout): that shows as a
///   different status, which it is.
/// - Guest exits mean different things per engine: for bt the exits from translated
///   code to the VMM (`guest_exits`), for kvm the VM exits (`guest_exits`); QEMU has no
///   such count. Callouts (sensitive instructions emulated by the VMM) exist only for bt.
mod compare {
    use super::{parse_timeout, read_kernel, EXIT_BAD_INPUT};
    use bt86_runtime::kvm::{self, KvmUnavailable};
    use std::io::Read;
    use std::path::{Path, PathBuf};
    use std::process::{Command, ExitCode, Stdio};
    use std::time::{Duration, Instant};

    pub(super) struct Settings {
        pub kernel: PathBuf,
        pub mem: u32,
        pub cmdline: String,
        pub allow_software_kvm: bool,
        pub timeout: f64,
    }

    /// How a guest ended, comparable across engines.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub(super) enum Status {
        Exit(u32),
        Halted,
        Reset,
        Timeout,
        /// The guest crashed: an exception it could not handle, or a triple fault
        /// (bt reports the first, KVM the second, for the same guest); the message.
        Crashed(String),
        /// Stopped abnormally for another reason (an engine's limitation); the message.
        Failed(String),
    }

    impl Status {
        fn label(&self) -> String {
            match self {
                Status::Exit(v) => format!("exit {v}"),
                Status::Halted => "halted".into(),
                Status::Reset => "reset".into(),
                Status::Timeout => "timeout".into(),
                Status::Crashed(_) => "crashed".into(),
                Status::Failed(_) => "failed".into(),
            }
        }
    }

    /// Whether two engines' statuses agree (see the module notes for QEMU).
    pub(super) fn same_status(a: (&str, &Status), b: (&str, &Status)) -> bool {
        match (a.1, b.1) {
            (Status::Exit(x), Status::Exit(y)) if a.0 == "qemu" || b.0 == "qemu" => x & 0x7f == y & 0x7f,
            // With -no-reboot QEMU ends a triple fault exactly like a reset.
            (Status::Crashed(_), Status::Reset) | (Status::Reset, Status::Crashed(_))
                if a.0 == "qemu" || b.0 == "qemu" =>
            {
                true
            }
            // How a crash is described differs by engine; that it crashed does not.
            (Status::Crashed(_), Status::Crashed(_)) => true,
            (x, y) => x == y,
        }
    }

    /// One engine's result.
    struct Row {
        engine: &'static str,
        result: Result<Ran, String>,
        /// A remark printed under the table (software-backed KVM, ...).
        note: Option<String>,
    }

    struct Ran {
        wall: Duration,
        output: String,
        status: Status,
        guest_exits: Option<u64>,
        callouts: Option<u64>,
    }

    /// A finished child process.
    struct Child {
        wall: Duration,
        stdout: Vec<u8>,
        stderr: String,
        /// None when killed at the timeout.
        code: Option<i32>,
    }

    pub(super) fn main(s: &Settings) -> ExitCode {
        let limit = match parse_timeout(s.timeout) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("bt86: {e}");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        };
        // Fail early on bad input that every engine would refuse alike.
        if !(1..=3072).contains(&s.mem) {
            eprintln!("bt86: guest memory size {} MiB is out of range (1 to 3072 MiB)", s.mem);
            return ExitCode::from(EXIT_BAD_INPUT);
        }
        if let Err(e) = read_kernel(&s.kernel) {
            eprintln!("bt86: {e:#}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
        let mut rows = vec![run_bt86(s, "bt", limit, None)];
        rows.push(match kvm::check_host() {
            Ok(h) => run_bt86(s, "kvm", limit, Some(format!("KVM is {}", h.describe()))),
            Err(e @ KvmUnavailable::Software { .. }) if s.allow_software_kvm => {
                let what = e.software_host().map(kvm::KvmHost::describe).unwrap_or_default();
                let note = format!(
                    "KVM here is {what}, not VT-x/AMD-V: its time says nothing about hardware-assisted virtualization"
                );
                run_bt86(s, "kvm", limit, Some(note))
            }
            Err(e) => Row { engine: "kvm", result: Err(format!("skipped: {e}")), note: None },
        });
        rows.push(match find_on_path("qemu-system-i386") {
            Some(qemu) => run_qemu(s, &qemu, limit),
            None => Row { engine: "qemu", result: Err("skipped: qemu-system-i386 is not on PATH".into()), note: None },
        });
        let agree = print_table(s, &rows);
        if agree {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }

    /// bt86 itself (`run --engine ENGINE --stats=json`) as a child process.
    fn run_bt86(s: &Settings, engine: &'static str, limit: Duration, note: Option<String>) -> Row {
        let exe = match std::env::current_exe() {
            Ok(p) => p,
            Err(e) => return Row { engine, result: Err(format!("cannot find the bt86 executable: {e}")), note },
        };
        let mut cmd = Command::new(exe);
        cmd.arg("run")
            .arg("--kernel")
            .arg(&s.kernel)
            // `--cmdline=...` so a command line that starts with '-' stays a value.
            .args(["--engine", engine, "--stats=json", "--mem", &s.mem.to_string(), &format!("--cmdline={}", s.cmdline)])
            .args(["--timeout", &limit.as_secs_f64().to_string()]);
        if engine == "kvm" {
            cmd.arg("--allow-software-kvm");
        }
        // The child stops itself at the limit (printing its statistics); the grace
        // period only matters if it cannot.
        let child = match spawn_and_wait(cmd, limit + Duration::from_secs(5)) {
            Ok(c) => c,
            Err(e) => return Row { engine, result: Err(format!("could not run: {e}")), note },
        };
        let stats = child
            .stderr
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        let guest_exits = stats.as_ref().and_then(|v| v["guest_exits"].as_u64());
        let callouts = stats
            .as_ref()
            .and_then(|v| v["callouts"].as_object().map(|m| m.values().filter_map(serde_json::Value::as_u64).sum()));
        let status = bt86_status(child.code, &child.stderr);
        let output = normalise(&child.stdout, None);
        Row { engine, result: Ok(Ran { wall: child.wall, output, status, guest_exits, callouts }), note }
    }

    /// How a `bt86 run` child ended, from its exit status and its stderr messages.
    pub(super) fn bt86_status(code: Option<i32>, stderr: &str) -> Status {
        let Some(code) = code else { return Status::Timeout };
        // bt86's own last message about the run (warnings and statistics aside).
        let message = stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("bt86: ") && !l.starts_with("bt86: warning"))
            .map(|l| l.trim_start_matches("bt86: ").to_string());
        match (code, message) {
            (0, Some(m)) if m.starts_with("guest halted") => Status::Halted,
            (0, Some(m)) if m.contains("asked for a reset") => Status::Reset,
            (3, Some(m)) if m.starts_with("stopped at eip") => Status::Timeout,
            (3, Some(m)) if m.starts_with("guest exception") || m.starts_with("triple fault") => Status::Crashed(m),
            (2 | 3 | 4 | 70, Some(m)) => Status::Failed(m),
            (c, _) if c >= 0 => Status::Exit(c.unsigned_abs()),
            (c, m) => Status::Failed(m.unwrap_or_else(|| format!("exit status {c}"))),
        }
    }

    /// QEMU TCG with isa-debug-exit, the reference emulator.
    fn run_qemu(s: &Settings, qemu: &Path, limit: Duration) -> Row {
        let mut cmd = Command::new(qemu);
        cmd.args(["-accel", "tcg", "-kernel"])
            .arg(&s.kernel)
            .args(["-append", &s.cmdline, "-m", &s.mem.to_string()])
            // Not -nographic: with it, SeaBIOS copies its own banner ("SeaBIOS (version
            // ...)", "Booting from ROM..", terminal escapes) to the serial port, in front
            // of the guest's output. -display none and -monitor none already keep QEMU
            // off the terminal, so the serial port carries only the guest's output.
            .args(["-no-reboot", "-net", "none", "-display", "none", "-monitor", "none"])
            .args(["-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        let child = match spawn_and_wait(cmd, limit) {
            Ok(c) => c,
            Err(e) => return Row { engine: "qemu", result: Err(format!("could not run: {e}")), note: None },
        };
        let status = match child.code {
            None => Status::Timeout,
            // isa-debug-exit: QEMU exits with (v << 1) | 1.
            Some(c) if c & 1 == 1 => Status::Exit(c.unsigned_abs() >> 1),
            // With -no-reboot a reset or triple fault ends QEMU with 0.
            Some(0) => Status::Reset,
            Some(c) => {
                let why = child.stderr.lines().last().unwrap_or("").trim().to_string();
                Status::Failed(format!("QEMU exit status {c}: {why}"))
            }
        };
        let output = normalise(&child.stdout, Some(&s.kernel));
        let note = (status == Status::Reset).then(|| {
            "qemu: QEMU ended without an exit-port write: the guest reset or triple-faulted (-no-reboot)".to_string()
        });
        Row {
            engine: "qemu",
            result: Ok(Ran { wall: child.wall, output, status, guest_exits: None, callouts: None }),
            note,
        }
    }

    /// The console output in comparable form (see the module notes).
    pub(super) fn normalise(raw: &[u8], qemu_kernel: Option<&Path>) -> String {
        let mut text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
        if let Some(k) = qemu_kernel {
            text = text.replace(&format!("{} ", k.display()), "");
        }
        text
    }

    /// Runs `cmd` with stdin from /dev/null and captured output, killing it after
    /// `limit`; times it by the wall clock.
    fn spawn_and_wait(mut cmd: Command, limit: Duration) -> std::io::Result<Child> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn()?;
        let drain = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut buf);
                }
                buf
            })
        };
        let out = drain(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
        let err = drain(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
        // Poll with a short, growing sleep: precise enough to time a run of a few
        // milliseconds, cheap for a long one.
        let mut nap = Duration::from_micros(50);
        let (code, wall) = loop {
            if let Some(st) = child.try_wait()? {
                break (st.code(), started.elapsed());
            }
            if started.elapsed() >= limit {
                let _ = child.kill();
                let _ = child.wait();
                break (None, started.elapsed());
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(1));
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
        Ok(Child { wall, stdout, stderr, code })
    }

    /// `name` in a directory of $PATH, if it is an executable file there.
    fn find_on_path(name: &str) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
    }

    /// Where two outputs differ: the first differing line (1-based number, a's line,
    /// b's line) and how many lines differ in all.
    pub(super) fn first_difference<'a>(a: &'a str, b: &'a str) -> Option<(usize, &'a str, &'a str, usize)> {
        let (la, lb): (Vec<&str>, Vec<&str>) = (a.split('\n').collect(), b.split('\n').collect());
        let line = |v: &[&'a str], i: usize| v.get(i).copied().unwrap_or("<end of output>");
        let differing: Vec<usize> = (0..la.len().max(lb.len())).filter(|&i| la.get(i) != lb.get(i)).collect();
        let &first = differing.first()?;
        Some((first + 1, line(&la, first), line(&lb, first), differing.len()))
    }

    /// Prints the table and the notes; returns whether every engine that ran agreed.
    fn print_table(s: &Settings, rows: &[Row]) -> bool {
        println!(
            "bt86 compare: {} ({} MiB, cmdline {:?})",
            s.kernel.display(),
            s.mem,
            s.cmdline
        );
        let ran: Vec<(&'static str, &Ran)> =
            rows.iter().filter_map(|r| r.result.as_ref().ok().map(|x| (r.engine, x))).collect();
        let fastest = ran
            .iter()
            .filter(|(_, r)| r.status != Status::Timeout)
            .map(|(_, r)| r.wall)
            .min();
        let reference = ran.first().copied();
        println!(
            "{:<6} {:>10} {:>10} {:>12} {:>9}  {:<10} output",
            "engine", "wall time", "vs fastest", "guest exits", "callouts", "status"
        );
        let mut agree = !ran.is_empty();
        let mut notes = Vec::new();
        for row in rows {
            let r = match &row.result {
                Ok(r) => r,
                Err(why) => {
                    println!("{:<6} {why}", row.engine);
                    continue;
                }
            };
            let wall = if r.status == Status::Timeout {
                format!(">{:.3} s", r.wall.as_secs_f64())
            } else {
                format!("{:.3} s", r.wall.as_secs_f64())
            };
            let ratio = match fastest {
                Some(f) if r.status != Status::Timeout && !f.is_zero() => {
                    format!("{:.2}x", r.wall.as_secs_f64() / f.as_secs_f64())
                }
                _ => "-".to_string(),
            };
            let num = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |n| n.to_string());
            let (ref_engine, ref_run) = reference.unwrap_or((row.engine, r));
            let same_output = r.output == ref_run.output;
            let same = same_output && same_status((row.engine, &r.status), (ref_engine, &ref_run.status));
            agree &= same;
            let verdict = match (row.engine == ref_engine, same_output, same) {
                (true, _, _) => "match".to_string(),
                (false, true, true) => "match".to_string(),
                (false, true, false) => format!("same output, status differs from {ref_engine}"),
                (false, false, _) => format!("DIFFERS from {ref_engine}"),
            };
            println!(
                "{:<6} {:>10} {:>10} {:>12} {:>9}  {:<10} {}",
                row.engine,
                wall,
                ratio,
                num(r.guest_exits),
                num(r.callouts),
                r.status.label(),
                verdict
            );
            if let Status::Failed(why) | Status::Crashed(why) = &r.status {
                notes.push(format!("{}: {}: {why}", row.engine, r.status.label()));
            }
            if !same_output {
                if let Some((n, a, b, count)) = first_difference(&ref_run.output, &r.output) {
                    notes.push(format!(
                        "{}: output differs from {ref_engine} in {count} line(s), first at line {n}: {a:?} vs {b:?}",
                        row.engine
                    ));
                }
            }
            if let Some(n) = &row.note {
                notes.push(n.clone());
            }
        }
        println!();
        for n in &notes {
            println!("{n}");
        }
        if agree {
            let bytes = reference.map_or(0, |(_, r)| r.output.len());
            println!(
                "all {} engines that ran agree: the same console output ({bytes} bytes) and status",
                ran.len()
            );
        } else if ran.is_empty() {
            println!("no engine ran");
        } else {
            println!("the engines disagree");
        }
        agree
    }
}

#[cfg(test)]
mod tests {
    use super::compare::*;
    use std::path::Path;

    #[test]
    fn qemu_kernel_path_is_ignored() {
        let k = Path::new("/tmp/k.elf");
        assert_eq!(normalise(b"cmdline: /tmp/k.elf a=1\r\nok\n", Some(k)), "cmdline: a=1\nok\n");
        assert_eq!(normalise(b"cmdline: /tmp/k.elf \n", Some(k)), "cmdline: \n");
        // bt86 output is left alone.
        assert_eq!(normalise(b"/tmp/k.elf x\n", None), "/tmp/k.elf x\n");
    }

    #[test]
    fn child_statuses() {
        assert_eq!(bt86_status(Some(7), ""), Status::Exit(7));
        assert_eq!(bt86_status(Some(3), "bt86: warning: slow\n"), Status::Exit(3));
        assert_eq!(bt86_status(Some(0), "bt86: guest halted at eip 0x00100010 with nothing left to wake it\n{}"), Status::Halted);
        assert_eq!(bt86_status(Some(3), "bt86: stopped at eip 0x1\n"), Status::Timeout);
        assert!(matches!(bt86_status(Some(3), "bt86: triple fault at eip 0x1 (the CPU shut down)\n"), Status::Crashed(_)));
        assert!(matches!(bt86_status(Some(3), "bt86: guest exception #UD (vector 6) at eip 0x1: no IDT\n"), Status::Crashed(_)));
        assert!(matches!(bt86_status(Some(3), "bt86: unsupported at eip 0x1: lar\n"), Status::Failed(_)));
        assert_eq!(bt86_status(None, ""), Status::Timeout);
    }

    #[test]
    fn qemu_exit_values_compare_in_seven_bits() {
        assert!(same_status(("bt", &Status::Exit(200)), ("qemu", &Status::Exit(72))));
        assert!(!same_status(("bt", &Status::Exit(200)), ("kvm", &Status::Exit(72))));
        assert!(same_status(("bt", &Status::Crashed("a".into())), ("kvm", &Status::Crashed("b".into()))));
        assert!(!same_status(("bt", &Status::Failed("a".into())), ("kvm", &Status::Failed("b".into()))));
        assert!(same_status(("kvm", &Status::Crashed("a".into())), ("qemu", &Status::Reset)));
        assert!(!same_status(("bt", &Status::Crashed("a".into())), ("kvm", &Status::Reset)));
        assert!(!same_status(("bt", &Status::Halted), ("qemu", &Status::Timeout)));
    }

    #[test]
    fn first_difference_names_the_line() {
        assert_eq!(first_difference("a\nb\n", "a\nb\n"), None);
        assert_eq!(first_difference("a\nb\n", "a\nc\n"), Some((2, "b", "c", 1)));
        assert_eq!(first_difference("a\n", "a\nmore"), Some((2, "", "more", 1)));
        assert_eq!(first_difference("x\ny\n", "a\n"), Some((1, "x", "a", 3)));
    }
}
