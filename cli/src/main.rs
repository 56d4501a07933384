//! `bt86`: run a 32-bit x86 guest kernel under binary translation (or, for
//! comparison, under the host's KVM), compare the engines side by side, and study
//! why x86 needed binary translation.
//!
//! This crate is the command line only: arguments ([`Cli`]), logging set-up
//! ([`logging`]), and output — the run and its report ([`run`]), the terminal console
//! and its signals ([`console`], [`signals`]), the VGA display ([`display`]), `bt86
//! compare` ([`compare`]) and `bt86 study` ([`study`]). The exit statuses are in
//! [`EXIT_STATUS_HELP`], shown by `--help`, and in the README.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

mod compare;
mod console;
mod display;
mod gdb;
mod logging;
mod run;
mod signals;
mod study;

/// `--version`: the package version and the git commit it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("BT86_GIT_COMMIT"), ")");

const EXIT_STATUS_HELP: &str = "\
Exit status of run, demo and restore:
  N   the guest wrote N to the isa-debug-exit port (0xf4); with --exit-code-style qemu,
      (N << 1) | 1, as QEMU's isa-debug-exit (odd: never one of bt86's own statuses)
  0   the guest powered off (hlt with interrupts off), halted for good, asked for a
      reset (reboot), Ctrl-A x ended bt86, or gdb killed the guest (gdb's kill)
  2   bad input (arguments, a missing or malformed kernel, an unwritable file)
  3   the guest stopped abnormally (unhandled exception, triple fault, unsupported
      instruction, memory that does not exist) or --timeout passed; 6 with
      --exit-code-style qemu (so that every status of bt86's own is even)
  4   --engine kvm cannot run here: /dev/kvm missing or not accessible, or backed by
      a software hypervisor (use --allow-software-kvm to run anyway)
  8   the VM was saved to the --checkpoint file and stopped (--checkpoint-after,
      Ctrl-A s): bt86 restore FILE continues it
  70  internal error of bt86
  A termination signal (SIGINT, SIGTERM, SIGHUP, SIGQUIT) stops the guest: bt86
  restores the terminal, prints the statistics if asked, and ends by that signal
  (a shell shows 128 + its number).
Exit status of compare: 0 if every engine that ran agreed (same console output and
status), 1 otherwise, 2 for bad input.";

#[derive(Parser)]
#[command(
    name = "bt86",
    version = VERSION,
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
    /// The guest's COM1 is the terminal (Ctrl-A h lists the console escapes).
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
    /// Continue a VM saved by `bt86 run --checkpoint FILE` (or by an earlier restore),
    /// from the instruction where it stopped, with the console and the run options
    /// it was saved with (the engine, --display, --exit-code-style), unless given
    /// here. Ctrl-A s and c save to FILE again, or to --checkpoint.
    #[command(after_help = EXIT_STATUS_HELP)]
    Restore {
        /// The checkpoint file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        opts: RestoreOpts,
    },
    /// Run one kernel under every available engine (bt; kvm when hardware-backed or
    /// allowed; QEMU TCG when qemu-system-i386 is installed) and print a table of wall
    /// time, ratio to the fastest, guest exits, callouts, status and whether the
    /// console output matched.
    #[command(after_help = compare::EXIT_STATUS_HELP)]
    Compare(compare::CompareArgs),
    /// Why x86 was not virtualizable, measured: each sensitive instruction run by a guest
    /// kernel deprivileged (natively at CPL 3), under binary translation and under KVM.
    #[command(after_help = study::EXIT_STATUS_HELP)]
    Study(study::StudyArgs),
}

/// Guest RAM sizes bt86 accepts, in MiB.
pub(crate) fn mem_arg() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=3072)
}

#[derive(clap::Args)]
struct RunOpts {
    /// Guest RAM in MiB (1 to 3072).
    #[arg(long, value_name = "MiB", default_value_t = bt86_runtime::DEFAULT_MEM_MIB, value_parser = mem_arg())]
    mem: u32,
    /// The kernel command line (`--cmdline` is the same option).
    #[arg(long = "append", visible_alias = "cmdline", value_name = "STR", default_value = "")]
    cmdline: String,
    /// The engine: bt (binary translation) or kvm (the host's hardware-assisted KVM).
    #[arg(long, value_enum, default_value_t = Engine::Bt)]
    engine: Engine,
    /// Show the guest's VGA text screen live in the terminal (`vga`), with a PS/2
    /// keyboard fed from the terminal; COM1 is shown below the screen. `none`: COM1
    /// only.
    #[arg(long, value_enum, default_value_t = DisplayKind::None)]
    display: DisplayKind,
    /// How the guest's isa-debug-exit value N becomes the exit status: as it is
    /// (`bt86`), or QEMU's (N << 1) | 1 (`qemu`), which never equals a status of bt86's
    /// own.
    #[arg(long, value_enum, default_value_t = ExitCodeStyle::Bt86)]
    exit_code_style: ExitCodeStyle,
    /// Where to save a checkpoint of the whole VM: after --checkpoint-after, or when
    /// Ctrl-A s (save and stop) or Ctrl-A c (save and continue) is typed. `bt86
    /// restore FILE` continues it.
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Save a checkpoint to the --checkpoint file after the guest has run this many
    /// seconds, and stop (exit status 8).
    #[arg(long, value_name = "SECS", requires = "checkpoint")]
    checkpoint_after: Option<f64>,
    #[command(flatten)]
    session: SessionOpts,
}

/// The options of `bt86 restore`: the run options that can change between runs.
#[derive(clap::Args)]
struct RestoreOpts {
    /// The engine to continue under (default: the one the checkpoint was taken under).
    #[arg(long, value_enum)]
    engine: Option<Engine>,
    /// `vga` or `none` (default: as when the checkpoint was taken).
    #[arg(long, value_enum)]
    display: Option<DisplayKind>,
    /// `bt86` or `qemu` (default: as when the checkpoint was taken).
    #[arg(long, value_enum)]
    exit_code_style: Option<ExitCodeStyle>,
    /// Where Ctrl-A s and c and --checkpoint-after save (default: the FILE restored).
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Save a checkpoint after the guest has run this many more seconds, and stop
    /// (exit status 8).
    #[arg(long, value_name = "SECS")]
    checkpoint_after: Option<f64>,
    #[command(flatten)]
    session: SessionOpts,
}

/// The options of one run that `run`, `demo` and `restore` share: what it reports,
/// its time limit, KVM's permission and the gdb stub.
#[derive(clap::Args)]
struct SessionOpts {
    /// Print statistics when the run ends, however it ends: `--stats`, `--stats text`,
    /// `--stats json` (one JSON object with a `stop` member saying how the run ended).
    #[arg(long, value_name = "FORMAT", num_args = 0..=1, default_missing_value = "text")]
    stats: Option<StatsFormat>,
    /// Write the statistics to FILE instead of standard error (JSON unless --stats
    /// says text).
    #[arg(long, value_name = "FILE")]
    stats_file: Option<PathBuf>,
    /// With --engine kvm: run even where /dev/kvm is backed by a software hypervisor
    /// (slow, and its timings say nothing about hardware-assisted virtualization).
    #[arg(long)]
    allow_software_kvm: bool,
    /// Stop the guest after this many seconds (exit status 3).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// How guest user code (CPL 3) runs with --engine bt: `auto` (the default:
    /// each address space translated while it traps often, natively in a
    /// sandboxed runner process while it computes), `direct` (natively whenever
    /// the CPU state allows) or `translate` (always translated).
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = |s: &str| s.parse::<bt86_runtime::UserCode>())]
    user_code: bt86_runtime::UserCode,
    /// Write the final 80x25 VGA text screen to FILE as plain text when the run ends.
    #[arg(long, value_name = "FILE")]
    screen: Option<PathBuf>,
    /// Write a trace of the translator and the CPU to FILE (see --trace-events).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// What --trace records, comma-separated: in_asm (guest code translated), out_asm
    /// (host code emitted), int (exceptions and interrupts delivered).
    #[arg(long, value_name = "LIST", value_enum, value_delimiter = ',', default_value = "in_asm,int")]
    trace_events: Vec<logging::TraceEvent>,
    /// Listen for gdb's remote protocol on HOST:PORT (in gdb: `target remote HOST:PORT`;
    /// `tcp::PORT` or `:PORT` mean 127.0.0.1:PORT, port 0 picks a free one). The guest
    /// runs until gdb connects, unless --gdb-wait. Breakpoints, watchpoints, single
    /// steps, Ctrl-C; after gdb detaches the guest runs on. BT engine only.
    #[arg(long, value_name = "HOST:PORT")]
    gdb: Option<String>,
    /// With --gdb (or -s): hold the guest before its first instruction until gdb
    /// connects and continues it (QEMU's -S).
    #[arg(short = 'S', long)]
    gdb_wait: bool,
    /// QEMU's -s: the same as --gdb 127.0.0.1:1234.
    #[arg(short = 's', conflicts_with = "gdb")]
    gdb_default_port: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum StatsFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum Engine {
    Bt,
    Kvm,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum DisplayKind {
    None,
    Vga,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum ExitCodeStyle {
    Bt86,
    Qemu,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { kernel, initrd, opts } => run::main(run::Inputs::Files { kernel, initrd }, &opts, true),
        Command::Demo { opts } => run::main(run::Inputs::Demo, &opts, false),
        Command::Restore { file, opts } => run::restore(&file, opts),
        Command::Compare(args) => {
            logging::init(None);
            compare::main(&args)
        }
        Command::Study(args) => {
            logging::init(None);
            study::main(&args)
        }
    }
}
