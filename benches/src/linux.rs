//! The Linux benchmark: Debian's unmodified i386 kernel and a busybox initramfs under
//! bt86 and under QEMU TCG, timed in four phases — boot to `/init`, 300 fork+exec of
//! busybox `true`, md5sum + sha256sum of a 16 MiB tmpfs file (system-call-bound: 4 KiB
//! `read`s), an awk loop (compute-bound: busybox's interpreter, no system calls) — plus
//! the last three run natively by the same busybox on the host, as a reference.
//!
//! The guest's script prints a marker line per phase boundary (`guest/linux-workload.sh`); the
//! harness timestamps each line as it arrives on the engine's standard output, so every
//! engine is timed the same way, in host wall time. The guest's own uptime at each marker
//! is kept too, but QEMU's guest clock (PIT clocksource on isapc) may run slow under
//! TCG, so the wall times are the ones compared.

use crate::{kill_group, tail};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The workload (see the file): shared by the guest's `/init` and the native run.
pub const WORKLOAD: &str = include_str!("../guest/linux-workload.sh");
const INIT_HEAD: &str = include_str!("../guest/linux-init-head.sh");

/// What starts a marker line.
pub const MARKER: &str = "bt86-linux: ";
/// md5 and sha256 of the 16 MiB of zeros hashed: every run must print both.
pub const EXPECTED_HASHES: [&str; 2] =
    ["2c7ab85a893283e98c931e9511add182", "080acf35a507ac9849cfcba47dc2ad83e01b75663a516279c8b9d243b719643e"];
/// What the awk loop prints: every run must print it.
pub const EXPECTED_AWK: &str = "awk: 3999997";
/// The kernel command line, the same for both engines: nothing but the console.
pub const APPEND: &str = "console=ttyS0";
/// Guest RAM, MiB.
pub const MEM_MIB: u32 = 256;

/// The guest's `/init`: mount, mark `init`, the workload, power off.
pub fn guest_init() -> String {
    format!("{INIT_HEAD}{WORKLOAD}poweroff -f\n")
}

/// `bt86 run` of the kernel and initrd, guest user code run as `user_code` says
/// (`--user-code`: translate, direct or auto; empty: bt86's default).
pub fn bt86_command(bt86: &Path, kernel: &Path, initrd: &Path, user_code: &str) -> Command {
    let mut cmd = Command::new(bt86);
    cmd.arg("run").arg("--kernel").arg(kernel).arg("--initrd").arg(initrd);
    cmd.args(["--append", APPEND, "--mem", &MEM_MIB.to_string()]);
    if !user_code.is_empty() {
        cmd.args(["--user-code", user_code]);
    }
    cmd
}

/// The `--user-code` modes bt86 runs in (`BT86_BENCH_USER_CODE`, comma-separated;
/// unset: bt86's default only, named "").
pub fn user_code_modes(var: Option<&str>) -> Vec<String> {
    let modes: Vec<String> = var.unwrap_or("").split(',').map(str::trim).filter(|m| !m.is_empty()).map(str::to_owned).collect();
    if modes.is_empty() {
        vec![String::new()]
    } else {
        modes
    }
}

/// QEMU TCG on the smallest PC the kernel boots on (LINUX.md): an ISA machine, a CPU
/// without an APIC, the same RAM and command line.
pub fn qemu_command(qemu: &Path, kernel: &Path, initrd: &Path) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.args(["-M", "isapc", "-cpu", "pentium3,-apic", "-m", &MEM_MIB.to_string()]);
    cmd.args(["-nographic", "-no-reboot", "-kernel"]).arg(kernel).arg("-initrd").arg(initrd);
    cmd.args(["-append", APPEND]);
    cmd
}

/// The workload run natively by `busybox`'s shell, its applets linked into `bin`
/// (made by `link_applets`), on a scratch folder in `scratch` (a tmpfs: /dev/shm).
pub fn native_command(busybox: &Path, bin: &Path, scratch: &Path) -> Command {
    let mut cmd = Command::new(busybox);
    cmd.args(["sh", "-c", WORKLOAD]).env("BIN", bin).env("SCRATCH", scratch);
    cmd
}

/// Links the applets the workload runs from `$BIN` to `busybox`, in `bin`.
pub fn link_applets(busybox: &Path, bin: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(bin)?;
    for applet in ["true", "dd", "md5sum", "sha256sum", "awk"] {
        let link = bin.join(applet);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(busybox, link)?;
    }
    Ok(())
}

/// A marker line, when it arrived.
#[derive(Clone, Debug, PartialEq)]
pub struct Mark {
    pub name: String,
    /// Since the process was started.
    pub wall: Duration,
    /// The machine's uptime it printed, seconds.
    pub uptime: Option<f64>,
}

/// `(name, uptime)` of a marker line.
pub fn parse_mark(line: &str) -> Option<(String, Option<f64>)> {
    let rest = &line[line.find(MARKER)? + MARKER.len()..];
    let mut words = rest.split_whitespace();
    let name = words.next()?.to_owned();
    Some((name, words.next().and_then(|u| u.parse().ok())))
}

#[derive(Debug, thiserror::Error)]
pub enum LinuxRunError {
    #[error("cannot start {what}: {source}")]
    Spawn { what: String, source: std::io::Error },
    #[error("no `done` marker within {} s (killed); output tail: {tail:?}", limit.as_secs())]
    Timeout { limit: Duration, tail: String },
    #[error("ended ({status}) before the `done` marker; output tail: {tail:?}")]
    Early { status: String, tail: String },
    #[error("ended ({status}) after the workload; expected {expected}")]
    BadExit { status: ExitStatus, expected: &'static str },
    #[error("the hashes printed are not those of 16 MiB of zeros, or the awk loop's sum is wrong; output tail: {tail:?}")]
    WrongHashes { tail: String },
    #[error("marker {0:?} missing")]
    MissingMark(&'static str),
}

/// One run: its markers and everything it printed.
#[derive(Debug)]
pub struct MarkedRun {
    pub marks: Vec<Mark>,
    pub output: String,
}

/// How the run should end once it has printed `done`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// It ends by itself with status 0 (bt86 at the guest's power-off; the native shell).
    ExitsZero,
    /// It is killed (QEMU halts with the guest but does not exit).
    Kill,
}

/// Runs `cmd` in a process group of its own (stdin closed), timestamping its output
/// lines, until it prints the `done` marker and ends as `ending` says, or `limit` passes.
pub fn run_marked(cmd: &mut Command, limit: Duration, ending: Ending) -> Result<MarkedRun, LinuxRunError> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|source| LinuxRunError::Spawn { what: format!("{cmd:?}"), source })?;
    let lines = timestamped_lines(child.stdout.take().expect("piped"));
    let stderr = collect(child.stderr.take().expect("piped"));
    let mut run = MarkedRun { marks: Vec::new(), output: String::new() };
    let done = read_until_done(&lines, &mut run, start, limit);
    if !done || ending == Ending::Kill {
        kill_group(child.id());
    }
    let status = wait_for(&mut child, start + limit + Duration::from_secs(5));
    run.output.push_str(&stderr.recv_timeout(Duration::from_secs(5)).unwrap_or_default());
    let output_tail = || tail(&run.output, 600);
    match status {
        _ if !done && start.elapsed() >= limit => Err(LinuxRunError::Timeout { limit, tail: output_tail() }),
        s if !done => Err(LinuxRunError::Early { status: format!("{s:?}"), tail: output_tail() }),
        Some(s) if ending == Ending::ExitsZero && !s.success() => Err(LinuxRunError::BadExit { status: s, expected: "status 0" }),
        _ if !EXPECTED_HASHES.iter().all(|h| run.output.contains(h)) || !run.output.contains(EXPECTED_AWK) => {
            Err(LinuxRunError::WrongHashes { tail: output_tail() })
        }
        _ => Ok(run),
    }
}

/// Records lines and markers until the `done` marker (true), end of output or `limit`.
fn read_until_done(lines: &mpsc::Receiver<(Instant, String)>, run: &mut MarkedRun, start: Instant, limit: Duration) -> bool {
    while let Some(left) = limit.checked_sub(start.elapsed()) {
        let Ok((at, line)) = lines.recv_timeout(left) else { return false };
        run.output.push_str(&line);
        if let Some((name, uptime)) = parse_mark(&line) {
            let is_done = name == "done";
            run.marks.push(Mark { name, wall: at - start, uptime });
            if is_done {
                return true;
            }
        }
    }
    false
}

/// Each line of `out` (newline kept) with the moment it was read.
fn timestamped_lines(out: impl Read + Send + 'static) -> mpsc::Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut out = BufReader::new(out);
        let mut line = Vec::new();
        while out.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let at = Instant::now();
            if tx.send((at, String::from_utf8_lossy(&line).into_owned())).is_err() {
                return;
            }
            line.clear();
        }
    });
    rx
}

/// All of `r`, once it ends.
fn collect(mut r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

/// The child's status once it exits; killed (and None) if it has not by `deadline`.
fn wait_for(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            _ => {
                kill_group(child.id());
                return child.wait().ok();
            }
        }
    }
}

/// One run's phases, in host wall time (and the machine's own uptime).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Phases {
    /// Process start to the `init` marker (None natively).
    pub to_init: Option<Duration>,
    pub fork: Duration,
    pub hash: Duration,
    pub awk: Duration,
    /// The same by the guest's clock: uptime at `init`, the loop's, the hashes' and awk's.
    pub guest: [Option<f64>; 4],
}

impl Phases {
    pub fn from_marks(marks: &[Mark]) -> Result<Self, LinuxRunError> {
        let find = |name: &'static str| marks.iter().find(|m| m.name == name).ok_or(LinuxRunError::MissingMark(name));
        let span = |a, b| -> Result<(Duration, Option<f64>), LinuxRunError> {
            let (a, b) = (find(a)?, find(b)?);
            Ok((b.wall.saturating_sub(a.wall), b.uptime.zip(a.uptime).map(|(b, a)| b - a)))
        };
        let init = find("init").ok();
        let (fork, guest_fork) = span("fork-start", "fork-end")?;
        let (hash, guest_hash) = span("hash-start", "hash-end")?;
        let (awk, guest_awk) = span("awk-start", "awk-end")?;
        Ok(Self { to_init: init.map(|m| m.wall), fork, hash, awk, guest: [init.and_then(|m| m.uptime), guest_fork, guest_hash, guest_awk] })
    }
}

/// The median of some values (the lower middle one of an even count); None if empty.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len().saturating_sub(1) / 2).copied()
}

/// All runs of one engine.
#[derive(Debug, Default)]
pub struct EngineRuns {
    pub phases: Vec<Phases>,
    pub errors: Vec<String>,
}

/// The four rows: what they measure, and how to read each from `Phases` (seconds).
type Phase = (&'static str, fn(&Phases) -> Option<f64>, fn(&Phases) -> Option<f64>);
pub const PHASES: [Phase; 4] = [
    ("boot to /init", |p| p.to_init.map(|d| d.as_secs_f64()), |p| p.guest[0]),
    ("300 fork+exec of busybox `true`", |p| Some(p.fork.as_secs_f64()), |p| p.guest[1]),
    ("md5sum + sha256sum of 16 MiB (tmpfs)", |p| Some(p.hash.as_secs_f64()), |p| p.guest[2]),
    ("awk loop, 2·10⁶ rounds (no system calls)", |p| Some(p.awk.as_secs_f64()), |p| p.guest[3]),
];

impl EngineRuns {
    /// The median of a phase over the runs (wall time with `wall`, else guest time).
    pub fn median(&self, phase: usize, wall: bool) -> Option<f64> {
        let (_, w, g) = PHASES[phase];
        median(self.phases.iter().filter_map(if wall { w } else { g }).collect())
    }
}

/// The engines of one benchmark run.
#[derive(Debug, Default)]
pub struct Results {
    /// bt86 in the first `--user-code` mode.
    pub bt86: EngineRuns,
    pub qemu: EngineRuns,
    pub native: EngineRuns,
    /// bt86 in each `--user-code` mode, when more than one was asked for.
    pub modes: Vec<(String, EngineRuns)>,
}

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{s:.2}"))
}

fn secs_unit(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{s:.2} s"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

impl Results {
    /// The table: seconds (medians) per phase and engine, with bt86/QEMU; guest-clock
    /// seconds after.
    pub fn render_text(&self) -> String {
        let mut s = format!(
            "{:<38} {:>8} {:>9} {:>10} {:>8} | {:>10} {:>10}\n",
            "wall seconds (median)", "bt86", "QEMU TCG", "bt86/QEMU", "native", "guest:bt86", "guest:QEMU"
        );
        for (i, (name, _, _)) in PHASES.iter().enumerate() {
            let (b, q, n) = (self.bt86.median(i, true), self.qemu.median(i, true), self.native.median(i, true));
            let (gb, gq) = (self.bt86.median(i, false), self.qemu.median(i, false));
            let _ = writeln!(
                s,
                "{name:<38} {:>8} {:>9} {:>10} {:>8} | {:>10} {:>10}",
                secs(b),
                secs(q),
                ratio(b, q),
                secs(n),
                secs(gb),
                secs(gq)
            );
        }
        s
    }

    /// The same as a Markdown table (wall time only), for the README.
    pub fn render_markdown(&self) -> String {
        let mut s = String::from("| phase | bt86 | QEMU TCG | bt86/QEMU | native |\n|---|---|---|---|---|\n");
        for (i, (name, _, _)) in PHASES.iter().enumerate() {
            let (b, q, n) = (self.bt86.median(i, true), self.qemu.median(i, true), self.native.median(i, true));
            let _ = writeln!(s, "| {name} | {} | {} | {} | {} |", secs_unit(b), secs_unit(q), ratio(b, q), secs_unit(n));
        }
        s
    }

    /// bt86 in each `--user-code` mode (medians, wall time), each against the first
    /// mode and against native, as a Markdown table; empty with fewer than two modes.
    pub fn render_modes_markdown(&self) -> String {
        let Some((first, base)) = self.modes.first().filter(|_| self.modes.len() > 1) else { return String::new() };
        let mut s = String::from("| phase |");
        for (m, _) in &self.modes {
            let _ = write!(s, " {m} |");
        }
        for (m, _) in &self.modes[1..] {
            let _ = write!(s, " {m}/{first} |");
        }
        for (m, _) in &self.modes {
            let _ = write!(s, " {m}/native |");
        }
        s.push_str(" native |\n|---|");
        for _ in 0..self.modes.len() * 3 {
            s.push_str("---|");
        }
        s.push('\n');
        for (i, (name, _, _)) in PHASES.iter().enumerate() {
            let n = self.native.median(i, true);
            let _ = write!(s, "| {name} |");
            for (_, r) in &self.modes {
                let _ = write!(s, " {} |", secs_unit(r.median(i, true)));
            }
            for (_, r) in &self.modes[1..] {
                let _ = write!(s, " {} |", ratio(r.median(i, true), base.median(i, true)));
            }
            for (_, r) in &self.modes {
                let _ = write!(s, " {} |", ratio(r.median(i, true), n));
            }
            let _ = writeln!(s, " {} |", secs_unit(n));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(name: &str, wall_ms: u64, uptime: f64) -> Mark {
        Mark { name: name.into(), wall: Duration::from_millis(wall_ms), uptime: Some(uptime) }
    }

    #[test]
    fn markers_are_found_after_console_noise() {
        assert_eq!(parse_mark("bt86-linux: init 2.41\n"), Some(("init".into(), Some(2.41))));
        assert_eq!(parse_mark("\r[    2.5] x bt86-linux: done\n"), Some(("done".into(), None)));
        assert_eq!(parse_mark("bt86-linux:\n"), None);
        assert_eq!(parse_mark("[    1.0] Run /init as init process\n"), None);
    }

    #[test]
    fn phases_are_spans_between_markers() {
        let marks = [
            mark("init", 2500, 2.0),
            mark("fork-start", 2700, 2.2),
            mark("fork-end", 3500, 3.1),
            mark("hash-start", 3510, 3.1),
            mark("hash-end", 4010, 3.7),
            mark("awk-start", 4020, 3.7),
            mark("awk-end", 5020, 4.7),
        ];
        let p = Phases::from_marks(&marks).unwrap();
        assert_eq!(p.to_init, Some(Duration::from_millis(2500)));
        assert_eq!((p.fork, p.hash), (Duration::from_millis(800), Duration::from_millis(500)));
        assert_eq!(p.guest[0], Some(2.0));
        assert!((p.guest[1].unwrap() - 0.9).abs() < 1e-9 && (p.guest[2].unwrap() - 0.6).abs() < 1e-9);
        assert_eq!(p.awk, Duration::from_millis(1000));
        // Natively there is no init marker; a missing phase marker is an error.
        assert_eq!(Phases::from_marks(&marks[1..]).unwrap().to_init, None);
        assert!(matches!(Phases::from_marks(&marks[..4]), Err(LinuxRunError::MissingMark("hash-end"))));
        assert!(matches!(Phases::from_marks(&marks[..6]), Err(LinuxRunError::MissingMark("awk-end"))));
    }

    #[test]
    fn the_table_has_medians_and_ratios() {
        let run = |init: u64, fork: u64, hash: u64| Phases {
            to_init: Some(Duration::from_millis(init)),
            fork: Duration::from_millis(fork),
            hash: Duration::from_millis(hash),
            awk: Duration::ZERO,
            guest: [None; 4],
        };
        let mut r = Results::default();
        r.bt86.phases = vec![run(2000, 500, 400), run(3000, 600, 450), run(2500, 550, 500)];
        r.qemu.phases = vec![run(5000, 1000, 900)];
        let t = r.render_text();
        assert!(t.lines().nth(1).unwrap().contains("2.50      5.00      0.50x"), "{t}");
        let md = r.render_markdown();
        assert!(md.contains("| 300 fork+exec of busybox `true` | 0.55 s | 1.00 s | 0.55x | - |"), "{md}");
        assert_eq!(median(vec![3.0, 1.0, 2.0, 4.0]), Some(2.0));
        assert_eq!(median(vec![]), None);
        assert!(r.render_modes_markdown().is_empty());
        // Two modes: each against the first, and against native.
        r.native.phases = vec![run(0, 100, 200)];
        let d = EngineRuns { phases: vec![run(2000, 1100, 300)], errors: vec![] };
        r.modes = vec![("translate".into(), EngineRuns { phases: r.bt86.phases.clone(), errors: vec![] }), ("direct".into(), d)];
        let md = r.render_modes_markdown();
        assert!(md.starts_with("| phase | translate | direct | direct/translate | translate/native | direct/native | native |\n"), "{md}");
        assert!(md.contains("| 300 fork+exec of busybox `true` | 0.55 s | 1.10 s | 2.00x | 5.50x | 11.00x | 0.10 s |"), "{md}");
        assert_eq!(user_code_modes(None), vec![String::new()]);
        assert_eq!(user_code_modes(Some("translate, direct,auto")), vec!["translate", "direct", "auto"]);
    }

    #[test]
    fn the_guest_init_runs_the_workload_then_powers_off() {
        let init = guest_init();
        assert!(init.starts_with("#!/bin/sh\n"));
        let (head, rest) = init.split_once("mark() {").unwrap();
        assert!(head.contains("bt86-linux: init") && head.contains("mount -t tmpfs"));
        assert!(rest.contains("while [ $i -lt 300 ]") && rest.ends_with("mark done\npoweroff -f\n"));
    }
}
