//! bt86 benchmarks and the side-by-side comparison harness.
//!
//! The CPU benchmark is one freestanding C workload (`guest/workload.c`) built by
//! `build.rs` into two programs from the same object file:
//!
//! * [`NATIVE_PROGRAM`] — a static i386 Linux program run directly on the host (the
//!   baseline: the x86-64 host runs it through its IA-32 emulation, i.e. natively);
//! * [`GUEST_KERNEL`] — a multiboot v1 kernel run under bt86 (`bt86 run --kernel`) and,
//!   when installed, under QEMU TCG (`qemu-system-i386 -kernel`) as the reference.
//!
//! Each prints exactly one line `bt86-bench cycles=<decimal> checksum=<hex>`: the rdtsc
//! difference around the workload and the workload's checksum. This module runs the
//! programs ([`run_native`], [`run_bt86`], [`run_qemu`]), parses that line
//! ([`parse_bench_line`]), checks that all checksums agree and renders a table of
//! median cycles and wall times relative to native ([`compare`], [`Comparison`]).
//! The `vs_native` bench (`cargo bench -p bt86-benches --bench vs_native`) is a thin
//! wrapper around [`compare`]; tests can call the same functions.
//!
//! The nanobenchmarks (`guest/nano.c`, the `nano` bench) live in [`nano`].

use std::fmt;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub mod linux;
pub mod nano;

/// The native static i386 Linux build of the workload (built by `build.rs`).
pub const NATIVE_PROGRAM: &str = env!("BT86_BENCH_NATIVE");

/// The multiboot kernel build of the workload (built by `build.rs`).
pub const GUEST_KERNEL: &str = env!("BT86_BENCH_GUEST");

/// The checksum the workload produces with the committed `BENCH_ROUNDS` (25). The
/// workload is defined-behaviour C, so this does not depend on the compiler; change
/// it together with `guest/workload.c`.
pub const EXPECTED_CHECKSUM: u32 = 0x7766_f10c;

/// The marker that starts the result line.
pub const LINE_MARKER: &str = "bt86-bench ";

/// Default per-run time limit (QEMU TCG takes about 4 s, native about 1 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The parsed result line of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchLine {
    /// rdtsc difference around the workload, as seen by the program.
    pub cycles: u64,
    /// The workload checksum.
    pub checksum: u32,
}

/// Finds the last `bt86-bench cycles=<decimal> checksum=<hex>` in `output` and parses
/// it. The marker may appear mid-line (QEMU's firmware prints without a newline before
/// the kernel starts) and the line may end in `\r`.
pub fn parse_bench_line(output: &str) -> Option<BenchLine> {
    let start = output.rfind(LINE_MARKER)?;
    let rest = &output[start + LINE_MARKER.len()..];
    let line = rest.lines().next().unwrap_or("");
    let mut cycles = None;
    let mut checksum = None;
    for tok in line.split_whitespace() {
        if let Some(v) = tok.strip_prefix("cycles=") {
            cycles = v.parse::<u64>().ok();
        } else if let Some(v) = tok.strip_prefix("checksum=") {
            let v = v.trim_start_matches("0x");
            checksum = u32::from_str_radix(v, 16).ok();
        }
    }
    Some(BenchLine {
        cycles: cycles?,
        checksum: checksum?,
    })
}

/// The ways of running the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The static i386 program, directly on the host.
    Native,
    /// The guest kernel under `bt86 run --kernel`.
    Bt86,
    /// The guest kernel under `qemu-system-i386` (TCG).
    QemuTcg,
}

impl Engine {
    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Native => "native",
            Engine::Bt86 => "bt86",
            Engine::QemuTcg => "qemu-tcg",
        }
    }

    /// The exit code a successful run ends with. The guest writes 0 to the
    /// isa-debug-exit port: bt86 exits with 0, QEMU with `(0 << 1) | 1`.
    pub fn expected_exit_code(self) -> i32 {
        match self {
            Engine::Native | Engine::Bt86 => 0,
            Engine::QemuTcg => 1,
        }
    }
}

/// One finished run.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The parsed result line.
    pub line: BenchLine,
    /// Wall time from spawn to exit (includes process start-up, VMM set-up and, for
    /// QEMU, the firmware boot).
    pub wall: Duration,
    /// The process exit code (`None` if killed by a signal).
    pub exit_code: Option<i32>,
    /// Something worth showing, e.g. an unexpected exit code.
    pub note: Option<String>,
}

/// Why a run produced no [`Sample`].
#[derive(Debug)]
pub enum RunError {
    /// The program could not be started.
    Spawn(String, io::Error),
    /// It did not finish within the limit and was killed.
    Timeout(Duration, String),
    /// It finished without printing a result line.
    NoResult {
        /// Its exit status.
        status: ExitStatus,
        /// The tail of what it printed (stdout then stderr).
        output_tail: String,
    },
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Spawn(what, e) => write!(f, "cannot start {what}: {e}"),
            RunError::Timeout(t, tail) => {
                write!(
                    f,
                    "no exit within {} s (killed); output tail: {tail:?}",
                    t.as_secs()
                )
            }
            RunError::NoResult {
                status,
                output_tail,
            } => write!(
                f,
                "exited ({status}) without a `{}` line; output tail: {output_tail:?}",
                LINE_MARKER.trim()
            ),
        }
    }
}

impl std::error::Error for RunError {}

/// What a process printed and how it ended.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
    /// Spawn-to-exit wall time.
    pub wall: Duration,
}

pub(crate) fn tail(s: &str, n: usize) -> String {
    let start = s.len().saturating_sub(n);
    let start = (start..=s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    s[start..].to_string()
}

fn reader<R: Read + Send + 'static>(r: Option<R>, tx: mpsc::Sender<(bool, String)>, is_out: bool) {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        let _ = tx.send((is_out, String::from_utf8_lossy(&buf).into_owned()));
    });
}

/// SIGKILLs the process group `pgid` (one this module created with
/// `process_group(0)`), so helpers the program forked (e.g. a VMM's runner child) go too.
pub(crate) fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `cmd` in a process group of its own, with stdin closed and stdout/stderr
/// captured, killing the group after `timeout`. Wall time is measured from spawn to
/// observed exit (polled every 1 ms).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Finished, RunError> {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| RunError::Spawn(what, e))?;
    let pgid = child.id();
    let (tx, rx) = mpsc::channel();
    reader(child.stdout.take(), tx.clone(), true);
    reader(child.stderr.take(), tx, false);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() >= timeout => {
                kill_group(pgid);
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(1)),
            Err(_) => break child.wait().ok(),
        }
    };
    let wall = start.elapsed();
    // Collect both pipes. If something left behind in the group still holds them open,
    // kill the group after a grace period rather than wait forever.
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let mut killed = false;
    let mut got = 0;
    while got < 2 {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok((true, s)) => (stdout, got) = (s, got + 1),
            Ok((false, s)) => (stderr, got) = (s, got + 1),
            Err(mpsc::RecvTimeoutError::Timeout) if !killed => {
                kill_group(pgid);
                killed = true;
            }
            Err(_) => break,
        }
    }
    match status {
        Some(status) => Ok(Finished {
            status,
            stdout,
            stderr,
            wall,
        }),
        None => Err(RunError::Timeout(
            timeout,
            tail(&format!("{stdout}{stderr}"), 400),
        )),
    }
}

fn sample(engine: Engine, cmd: &mut Command, timeout: Duration) -> Result<Sample, RunError> {
    let fin = run_with_timeout(cmd, timeout)?;
    let Some(line) = parse_bench_line(&fin.stdout) else {
        return Err(RunError::NoResult {
            status: fin.status,
            output_tail: tail(&format!("{}{}", fin.stdout, fin.stderr), 600),
        });
    };
    let exit_code = fin.status.code();
    let note = (exit_code != Some(engine.expected_exit_code())).then(|| {
        format!(
            "{} (expected exit status {})",
            fin.status,
            engine.expected_exit_code()
        )
    });
    Ok(Sample {
        line,
        wall: fin.wall,
        exit_code,
        note,
    })
}

/// Runs the native program once.
pub fn run_native(program: &Path, timeout: Duration) -> Result<Sample, RunError> {
    sample(Engine::Native, &mut Command::new(program), timeout)
}

/// The command line bt86 is run with: `bt86 run --kernel <kernel>`.
pub fn bt86_command(bt86: &Path, kernel: &Path) -> Command {
    let mut cmd = Command::new(bt86);
    cmd.arg("run").arg("--kernel").arg(kernel);
    cmd
}

/// Runs the guest kernel under bt86 once.
pub fn run_bt86(bt86: &Path, kernel: &Path, timeout: Duration) -> Result<Sample, RunError> {
    sample(Engine::Bt86, &mut bt86_command(bt86, kernel), timeout)
}

/// The QEMU command line: TCG (the default accelerator without KVM), serial on stdio,
/// isa-debug-exit at 0xf4.
pub fn qemu_command(qemu: &Path, kernel: &Path) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.arg("-kernel")
        .arg(kernel)
        .args(["-accel", "tcg"])
        .args(["-nographic", "-no-reboot"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .args(["-serial", "stdio", "-display", "none", "-monitor", "none"]);
    cmd
}

/// Runs the guest kernel under QEMU TCG once.
pub fn run_qemu(qemu: &Path, kernel: &Path, timeout: Duration) -> Result<Sample, RunError> {
    sample(Engine::QemuTcg, &mut qemu_command(qemu, kernel), timeout)
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

/// Where `bt86` is looked for: `$BT86_BIN`, else `$CARGO_TARGET_DIR/release/bt86`
/// (relative to the workspace if relative), else `<workspace>/target/release/bt86`.
pub fn bt86_candidates() -> Vec<PathBuf> {
    if let Some(bin) = std::env::var_os("BT86_BIN") {
        return vec![PathBuf::from(bin)];
    }
    let root = workspace_root();
    let mut v = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        v.push(root.join(t).join("release").join("bt86"));
    }
    v.push(root.join("target").join("release").join("bt86"));
    v
}

/// Finds the bt86 binary, or explains that it is not built.
pub fn find_bt86() -> Result<PathBuf, String> {
    let cands = bt86_candidates();
    if let Some(p) = cands.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    let looked: Vec<String> = cands.iter().map(|p| p.display().to_string()).collect();
    Err(format!(
        "bt86 not built (looked for {}); run `cargo build --release -p bt86` or set BT86_BIN",
        looked.join(", ")
    ))
}

/// Finds `qemu-system-i386`: `$BT86_BENCH_QEMU` (set it to `0` or `none` to skip
/// QEMU), else the first one on `$PATH`.
pub fn find_qemu() -> Option<PathBuf> {
    if let Some(q) = std::env::var_os("BT86_BENCH_QEMU") {
        let q = PathBuf::from(q);
        let s = q.to_string_lossy();
        if s.is_empty() || s == "0" || s == "none" {
            return None;
        }
        return q.is_file().then_some(q);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-i386"))
        .find(|p| p.is_file())
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The native program.
    pub native: PathBuf,
    /// The guest kernel.
    pub guest: PathBuf,
    /// The bt86 binary, or why there is none.
    pub bt86: Result<PathBuf, String>,
    /// The QEMU binary, if any.
    pub qemu: Option<PathBuf>,
    /// Runs of the native program.
    pub native_runs: usize,
    /// Runs under bt86.
    pub bt86_runs: usize,
    /// Runs under QEMU.
    pub qemu_runs: usize,
    /// Per-run time limit.
    pub timeout: Duration,
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.trim().parse().ok()
}

impl Config {
    /// The defaults: native ×3, bt86 ×3, QEMU ×1, 300 s limit per run. Overrides:
    /// `BT86_BENCH_RUNS` (native and bt86 runs), `BT86_BENCH_QEMU_RUNS`,
    /// `BT86_BENCH_TIMEOUT` (seconds), `BT86_BIN`, `BT86_BENCH_QEMU`.
    pub fn from_env() -> Config {
        let runs = env_usize("BT86_BENCH_RUNS").unwrap_or(3).max(1);
        Config {
            native: PathBuf::from(NATIVE_PROGRAM),
            guest: PathBuf::from(GUEST_KERNEL),
            bt86: find_bt86(),
            qemu: find_qemu(),
            native_runs: runs,
            bt86_runs: runs,
            qemu_runs: env_usize("BT86_BENCH_QEMU_RUNS").unwrap_or(1),
            timeout: env_usize("BT86_BENCH_TIMEOUT")
                .map(|s| Duration::from_secs(s as u64))
                .unwrap_or(DEFAULT_TIMEOUT),
        }
    }
}

/// All runs of one engine.
#[derive(Debug)]
pub struct EngineReport {
    /// Which engine.
    pub engine: Engine,
    /// Why it was not run (not built / not installed), if it was not.
    pub skipped: Option<String>,
    /// Successful runs.
    pub samples: Vec<Sample>,
    /// Failed runs.
    pub errors: Vec<String>,
}

/// Median of a list (the mean of the two middle values for an even count).
pub fn median_u64(values: &[u64]) -> Option<u64> {
    let mut v = values.to_vec();
    v.sort_unstable();
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some(v[n / 2 - 1] / 2 + v[n / 2] / 2 + (v[n / 2 - 1] % 2 + v[n / 2] % 2) / 2),
    }
}

impl EngineReport {
    fn new(engine: Engine) -> Self {
        EngineReport {
            engine,
            skipped: None,
            samples: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Median rdtsc cycles over the successful runs.
    pub fn median_cycles(&self) -> Option<u64> {
        median_u64(
            &self
                .samples
                .iter()
                .map(|s| s.line.cycles)
                .collect::<Vec<_>>(),
        )
    }

    /// Median wall time over the successful runs.
    pub fn median_wall(&self) -> Option<Duration> {
        let ns: Vec<u64> = self
            .samples
            .iter()
            .map(|s| s.wall.as_nanos() as u64)
            .collect();
        median_u64(&ns).map(Duration::from_nanos)
    }

    /// True if the engine ran and had no failed run.
    pub fn ok(&self) -> bool {
        self.skipped.is_none() && self.errors.is_empty() && !self.samples.is_empty()
    }
}

/// The result of [`compare`].
#[derive(Debug)]
pub struct Comparison {
    /// Native first, then bt86, then QEMU.
    pub reports: Vec<EngineReport>,
}

impl Comparison {
    /// The report of one engine.
    pub fn report(&self, engine: Engine) -> Option<&EngineReport> {
        self.reports.iter().find(|r| r.engine == engine)
    }

    /// Checks that every successful run of every engine printed the same checksum, and
    /// returns it (the native one is the reference).
    pub fn agreed_checksum(&self) -> Result<u32, String> {
        let mut reference: Option<(Engine, u32)> = None;
        let mut mismatches = Vec::new();
        for r in &self.reports {
            for s in &r.samples {
                match reference {
                    None => reference = Some((r.engine, s.line.checksum)),
                    Some((e, c)) if c != s.line.checksum => mismatches.push(format!(
                        "{} printed checksum={:08x}, {} printed {:08x}",
                        r.engine.name(),
                        s.line.checksum,
                        e.name(),
                        c
                    )),
                    Some(_) => {}
                }
            }
        }
        match (reference, mismatches.is_empty()) {
            (Some((_, c)), true) => Ok(c),
            (None, _) => Err("no run produced a result".into()),
            (Some(_), false) => Err(mismatches.join("; ")),
        }
    }

    /// The table: median cycles and wall time per engine, and ratios to native.
    pub fn render_table(&self) -> String {
        let native = self.report(Engine::Native);
        let n_cycles = native.and_then(EngineReport::median_cycles);
        let n_wall = native.and_then(EngineReport::median_wall);
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".into(),
        };
        let mut out = String::new();
        out.push_str(&format!(
            "{:<10} {:>4}  {:>16}  {:>10}  {:>10}  {:>9}  {}\n",
            "engine", "runs", "median cycles", "vs native", "wall", "vs native", "checksum"
        ));
        for r in &self.reports {
            if let Some(why) = &r.skipped {
                out.push_str(&format!("{:<10} {:>4}  {}\n", r.engine.name(), 0, why));
                continue;
            }
            let cycles = r.median_cycles();
            let wall = r.median_wall();
            let sums: Vec<String> = {
                let mut v: Vec<u32> = r.samples.iter().map(|s| s.line.checksum).collect();
                v.dedup();
                v.iter().map(|c| format!("{c:08x}")).collect()
            };
            out.push_str(&format!(
                "{:<10} {:>4}  {:>16}  {:>10}  {:>10}  {:>9}  {}\n",
                r.engine.name(),
                r.samples.len(),
                cycles.map(group_digits).unwrap_or_else(|| "-".into()),
                ratio(cycles.map(|c| c as f64), n_cycles.map(|c| c as f64)),
                wall.map(|w| format!("{:.3} s", w.as_secs_f64()))
                    .unwrap_or_else(|| "-".into()),
                ratio(
                    wall.map(|w| w.as_secs_f64()),
                    n_wall.map(|w| w.as_secs_f64())
                ),
                if sums.is_empty() {
                    "-".into()
                } else {
                    sums.join(",")
                },
            ));
            for e in &r.errors {
                out.push_str(&format!("{:<10}       FAILED: {e}\n", ""));
            }
            for s in r.samples.iter().filter_map(|s| s.note.as_ref()) {
                out.push_str(&format!("{:<10}       note: {s}\n", ""));
            }
        }
        out
    }
}

/// Formats 1234567 as 1,234,567.
pub fn group_digits(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        let left = s.len() - i; // digits from here to the end
        if i > 0 && left % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Runs everything `cfg` asks for, reporting each run through `progress`.
pub fn compare(cfg: &Config, mut progress: impl FnMut(&str)) -> Comparison {
    let mut reports = Vec::new();

    let mut one = |engine: Engine,
                   runs: usize,
                   skipped: Option<String>,
                   mut f: Box<dyn FnMut() -> Result<Sample, RunError> + '_>| {
        let mut rep = EngineReport::new(engine);
        if let Some(why) = skipped {
            progress(&format!("{}: skipped: {why}", engine.name()));
            rep.skipped = Some(why);
            return rep;
        }
        for i in 1..=runs {
            match f() {
                Ok(s) => {
                    progress(&format!(
                        "{} run {i}/{runs}: cycles={} checksum={:08x} wall={:.3} s{}",
                        engine.name(),
                        s.line.cycles,
                        s.line.checksum,
                        s.wall.as_secs_f64(),
                        s.note
                            .as_deref()
                            .map(|n| format!(" ({n})"))
                            .unwrap_or_default()
                    ));
                    rep.samples.push(s);
                }
                Err(e) => {
                    progress(&format!("{} run {i}/{runs}: FAILED: {e}", engine.name()));
                    rep.errors.push(e.to_string());
                    if matches!(e, RunError::Spawn(..) | RunError::Timeout(..)) {
                        break; // do not repeat a hang or a missing program
                    }
                }
            }
        }
        rep
    };

    reports.push(one(
        Engine::Native,
        cfg.native_runs,
        None,
        Box::new(|| run_native(&cfg.native, cfg.timeout)),
    ));
    let (bt86_path, bt86_skip) = match &cfg.bt86 {
        Ok(p) => (p.clone(), None),
        Err(why) => (PathBuf::new(), Some(why.clone())),
    };
    reports.push(one(
        Engine::Bt86,
        cfg.bt86_runs,
        bt86_skip,
        Box::new(|| run_bt86(&bt86_path, &cfg.guest, cfg.timeout)),
    ));
    let (qemu_path, qemu_skip) = match (&cfg.qemu, cfg.qemu_runs) {
        (_, 0) => (
            PathBuf::new(),
            Some("disabled (BT86_BENCH_QEMU_RUNS=0)".to_string()),
        ),
        (Some(q), _) => (q.clone(), None),
        (None, _) => (
            PathBuf::new(),
            Some("qemu-system-i386 not installed (apt-get install qemu-system-x86)".to_string()),
        ),
    };
    reports.push(one(
        Engine::QemuTcg,
        cfg.qemu_runs,
        qemu_skip,
        Box::new(|| run_qemu(&qemu_path, &cfg.guest, cfg.timeout)),
    ));
    Comparison { reports }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_line() {
        let l = parse_bench_line("bt86-bench cycles=2242670909 checksum=7766f10c\n").unwrap();
        assert_eq!(l.cycles, 2_242_670_909);
        assert_eq!(l.checksum, 0x7766_f10c);
    }

    #[test]
    fn parses_line_after_firmware_noise() {
        let out = "\x1b[2J SeaBIOS ...\r\nBooting from ROM..bt86-bench cycles=10180126404 \
                   checksum=7766f10c\r\n";
        let l = parse_bench_line(out).unwrap();
        assert_eq!(l.cycles, 10_180_126_404);
        assert_eq!(l.checksum, 0x7766_f10c);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_bench_line("nothing here").is_none());
        assert!(parse_bench_line("bt86-bench cycles=12").is_none());
        assert!(parse_bench_line("bt86-bench cycles=x checksum=1").is_none());
    }

    #[test]
    fn medians() {
        assert_eq!(median_u64(&[]), None);
        assert_eq!(median_u64(&[5, 1, 3]), Some(3));
        assert_eq!(median_u64(&[4, 1, 3, 2]), Some(2));
        assert_eq!(median_u64(&[u64::MAX, u64::MAX]), Some(u64::MAX));
    }

    #[test]
    fn digits() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
        assert_eq!(group_digits(2_242_670_909), "2,242,670,909");
    }
}
