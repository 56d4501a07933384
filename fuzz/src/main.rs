//! `bt86-fuzz`: run a fuzzing campaign against bt86, or replay reproducers.
use bt86_fuzz::campaign::{self, Options};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// A guest-code fuzzer for bt86: random and structured guest code at CPL 0 and 3,
/// paging off and on, a timer interrupt stream; differential runs against the CPU;
/// mutated kernel images. Every run must end in a guest-level outcome.
///
/// Exit status: 0 no failure, 1 failures found (see --out), 2 bad input.
#[derive(Parser, Debug)]
#[command(name = "bt86-fuzz", version)]
struct Args {
    /// Run for this many seconds.
    #[arg(long)]
    seconds: Option<u64>,
    /// Run this many cases (default: 1000 when --seconds is not given).
    #[arg(long)]
    runs: Option<u64>,
    /// Campaign seed: case N of seed S is always the same guest.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// First case number (to continue a campaign in chunks).
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// What to generate: mixed, guest, oracle or loader.
    #[arg(long, default_value = "mixed")]
    kind: String,
    /// Where reproducers and summary.json go.
    #[arg(long, default_value = "fuzz-out")]
    out: PathBuf,
    /// Do not minimize the first reproducer of each distinct failure.
    #[arg(long)]
    no_minimize: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    /// Replay reproducer files (NAME.json with NAME.bin beside it) instead.
    #[arg(long, num_args = 1..)]
    replay: Vec<PathBuf>,
    /// Internal: be the worker process (cases on stdin, verdicts on stdout).
    #[arg(long, hide = true)]
    worker: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.worker {
        return match bt86_fuzz::supervise::worker_main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bt86-fuzz worker: {e}");
                ExitCode::from(70)
            }
        };
    }
    if !args.replay.is_empty() {
        let scratch = std::env::temp_dir().join(format!("bt86-fuzz-replay-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&scratch);
        let r = campaign::replay(&args.replay, &scratch);
        let _ = std::fs::remove_dir_all(&scratch);
        return match r {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("bt86-fuzz: {e}");
                ExitCode::from(2)
            }
        };
    }
    if !["mixed", "guest", "oracle", "loader"].contains(&args.kind.as_str()) {
        eprintln!("bt86-fuzz: --kind must be mixed, guest, oracle or loader");
        return ExitCode::from(2);
    }
    let opts = Options {
        seed: args.seed,
        first: args.first,
        runs: args.runs.or(if args.seconds.is_none() { Some(1000) } else { None }),
        seconds: args.seconds,
        kind: args.kind,
        out: args.out,
        minimize: !args.no_minimize,
        progress: !args.quiet,
    };
    match campaign::run(&opts) {
        Ok(sum) => {
            print!("{}", sum.text());
            println!("  summary: {}", opts.out.join("summary.json").display());
            if sum.failed() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("bt86-fuzz: {e}");
            ExitCode::from(2)
        }
    }
}
