//! `bt86`: run a 32-bit x86 guest kernel under binary translation.
//!
//! Exit status: the guest's own value when it writes to the isa-debug-exit port
//! (0xf4); 0 when it halts for good; 2 for bad input (arguments, a missing or
//! malformed kernel); 3 when the guest stops abnormally (an exception it cannot
//! handle, an unsupported instruction, memory that does not exist); 70 for an
//! internal error of bt86.

use anyhow::Context;
use bt86_runtime::{RunOutcome, Vm, VmConfig, VmError, DEFAULT_MEM_MIB};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

const DEMO_KERNEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/demo.elf"));

#[derive(Parser)]
#[command(name = "bt86", version, about = "A binary-translating virtual machine monitor for 32-bit x86 guests")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a multiboot (v1) ELF kernel.
    Run {
        /// The kernel image (32-bit ELF with a multiboot header).
        #[arg(long, value_name = "PATH")]
        kernel: PathBuf,
        #[command(flatten)]
        opts: RunOpts,
    },
    /// Run the built-in demo guest: what sensitive instructions return under bt86.
    Demo {
        #[command(flatten)]
        opts: RunOpts,
    },
}

#[derive(clap::Args)]
struct RunOpts {
    /// Guest RAM in MiB.
    #[arg(long, value_name = "MiB", default_value_t = DEFAULT_MEM_MIB)]
    mem: u32,
    /// The kernel command line (passed in the multiboot information).
    #[arg(long, value_name = "STR", default_value = "")]
    cmdline: String,
    /// Print statistics to stderr when the guest stops (`--stats` or `--stats=json`).
    #[arg(long, value_name = "FORMAT", num_args = 0..=1, require_equals = true, default_missing_value = "text")]
    stats: Option<StatsFormat>,
}

#[derive(Clone, Copy, ValueEnum)]
enum StatsFormat {
    Text,
    Json,
}

/// Exit status for bad input.
const EXIT_BAD_INPUT: u8 = 2;
/// Exit status for a guest that stopped abnormally.
const EXIT_GUEST_FAILED: u8 = 3;
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
    let (image, opts) = match cli.command {
        Command::Run { kernel, opts } => match read_kernel(&kernel) {
            Ok(image) => (image, opts),
            Err(e) => {
                eprintln!("bt86: {e:#}");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        },
        Command::Demo { opts } => (DEMO_KERNEL.to_vec(), opts),
    };
    run(&image, &opts)
}

fn read_kernel(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read kernel image {}", path.display()))
}

fn run(image: &[u8], opts: &RunOpts) -> ExitCode {
    let mut vm = match Vm::new(VmConfig::new(opts.mem, Box::new(std::io::stdout()))) {
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
    if let Err(e) = vm.load_multiboot(image, &opts.cmdline) {
        eprintln!("bt86: {e}");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let outcome = vm.run();
    vm.flush_devices();
    if let Some(format) = opts.stats {
        print_stats(&vm, format);
    }
    match outcome {
        Ok(o) => report(&o),
        Err(e) => {
            eprintln!("bt86: internal error: {e}");
            ExitCode::from(EXIT_INTERNAL)
        }
    }
}

fn print_stats(vm: &Vm, format: StatsFormat) {
    let report = vm.stats();
    match format {
        StatsFormat::Json => match serde_json::to_string(&report) {
            Ok(s) => eprintln!("{s}"),
            Err(e) => eprintln!("bt86: cannot format statistics: {e}"),
        },
        StatsFormat::Text => eprint!("bt86 statistics:\n{}", report.to_text()),
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
            let names: Vec<String> = faults.iter().map(|v| format!("{} (vector {v})", exception_name(*v))).collect();
            eprintln!("bt86: triple fault at eip {eip:#010x}: {}", names.join(", then "));
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
