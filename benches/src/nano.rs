//! The nanobenchmarks (after Adams & Agesen, ASPLOS 2006): `guest/nano.c`, one multiboot
//! kernel ([`NANO_GUEST`]) whose command line selects which benchmarks run: the kernel
//! operations of issue 10 (system call, port I/O, `cli`/`sti`, `pushf`/`popf`, `cpuid`,
//! CR0.WP, page fault, #DE, PTE store, `call`/`ret`, CR3 reload) and the paging ones.
//!
//! Each benchmark prints `bt86-nano <name> iterations=<n> cycles=<total>` (the guest's
//! own rdtsc around the loop); the guest ends with `bt86-nano done errors=<n>`. The
//! `nano` bench runs every benchmark in a VM of its own under bt86 (`--stats=json`)
//! and QEMU TCG, once more under bt86 inside `perf stat` (host system calls and
//! signals, [`run_nano_bt86_perf`]), plus a `none` run (set-up only) whose counts are
//! subtracted, so the counts per iteration belong to that benchmark alone.

use crate::{group_digits, run_with_timeout, tail, RunError};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The nanobenchmark kernel (built by `build.rs` from `guest/nano.c`).
pub const NANO_GUEST: &str = env!("BT86_NANO_GUEST");

/// The benchmarks, in the order the guest runs them.
pub const NANO_NAMES: [&str; 14] = [
    "syscall",
    "inb",
    "clisti",
    "pushfpopf",
    "cpuid",
    "wptoggle",
    "pgfault",
    "de",
    "ptestore",
    "callret",
    "cr3reload",
    "ptemod",
    "cr3switch",
    "forklike",
];

/// What one iteration of benchmark `name` is (for tables); `name` itself if unknown.
pub fn describe(name: &str) -> &str {
    match name {
        "syscall" => "`int $0x80` from CPL 3 + `iret`",
        "inb" => "`inb $0x80`",
        "clisti" => "`cli; sti`",
        "pushfpopf" => "`pushfl; popfl` at CPL 0",
        "cpuid" => "`cpuid` (leaf 0)",
        "wptoggle" => "toggle CR0.WP (clear + set: 2 writes)",
        "pgfault" => "guest #PF: clear P, `invlpg`, touch, handler sets P, `iret`",
        "de" => "#DE handled by the guest",
        "ptestore" => "`mov` to a PTE (no `invlpg`)",
        "callret" => "`call`/`ret`",
        "cr3reload" => "`mov %cr3` reload (same value)",
        "ptemod" => "PTE retarget + `invlpg` + read",
        "cr3switch" => "CR3 switch between two spaces + read",
        "forklike" => "fork-like: copy PD + 1,024 PTEs, write 256 pages",
        _ => name,
    }
}

/// The command line that runs the set-up alone (the counter baseline).
pub const BASELINE: &str = "none";

/// One `bt86-nano <name> iterations=<n> cycles=<total>` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NanoLine {
    /// Benchmark name.
    pub name: String,
    /// Iterations timed.
    pub iterations: u64,
    /// rdtsc difference around all of them.
    pub cycles: u64,
}

impl NanoLine {
    /// Cycles per iteration.
    #[allow(clippy::cast_precision_loss)]
    pub fn per_iter(&self) -> f64 {
        self.cycles as f64 / self.iterations.max(1) as f64
    }
}

/// Everything the guest printed that matters: the result lines and the error count of
/// `bt86-nano done errors=<n>` (`None` if that line is missing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NanoOutput {
    /// Result lines, in order.
    pub lines: Vec<NanoLine>,
    /// The guest's own error count.
    pub errors: Option<u64>,
    /// `bt86-nano FAIL ...` lines.
    pub failures: Vec<String>,
}

/// Parses the guest's output. Lines may start mid-line (QEMU's firmware prints
/// without a newline before the kernel starts) and end in `\r`.
pub fn parse_nano_output(output: &str) -> NanoOutput {
    let mut out = NanoOutput::default();
    for raw in output.lines() {
        let Some(at) = raw.find("bt86-nano ") else {
            continue;
        };
        let line = raw[at + "bt86-nano ".len()..].trim_end_matches('\r').trim();
        let mut toks = line.split_whitespace();
        let Some(name) = toks.next() else { continue };
        if name == "FAIL" {
            out.failures.push(line.to_string());
            continue;
        }
        let (mut it, mut cy, mut err) = (None, None, None);
        for t in toks {
            if let Some(v) = t.strip_prefix("iterations=") {
                it = v.parse().ok();
            } else if let Some(v) = t.strip_prefix("cycles=") {
                cy = v.parse().ok();
            } else if let Some(v) = t.strip_prefix("errors=") {
                err = v.parse().ok();
            }
        }
        if name == "done" {
            out.errors = err;
        } else if let (Some(iterations), Some(cycles)) = (it, cy) {
            out.lines.push(NanoLine {
                name: name.to_string(),
                iterations,
                cycles,
            });
        }
    }
    out
}

/// bt86's counters from `--stats=json` (the last JSON line on stderr).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// `paging.hidden_faults`: SIGSEGVs the shadow MMU resolved by mapping a page.
    pub hidden_faults: u64,
    /// `paging.true_faults`: faults delivered to the guest as #PF.
    pub true_faults: u64,
    /// `paging.trace_faults`: writes to traced page-table pages.
    pub trace_faults: u64,
    /// `paging.view_flushes`: times every shadow mapping was dropped.
    pub view_flushes: u64,
    /// `paging.cr3_switches`.
    pub cr3_switches: u64,
    /// `guest_exits`: exits from translated code to the engine.
    pub guest_exits: u64,
    /// The sum of the `callouts` object: sensitive instructions handed to the VMM.
    pub callouts: u64,
}

impl Counters {
    /// Shadow-MMU faults: hidden + true + trace (each one a host SIGSEGV taken by bt86;
    /// the host signals of other kinds are counted by `perf`, see [`HostCounts`]).
    pub fn faults(&self) -> u64 {
        self.hidden_faults + self.true_faults + self.trace_faults
    }

    /// `self - base`, saturating at 0.
    pub fn minus(&self, base: &Counters) -> Counters {
        Counters {
            hidden_faults: self.hidden_faults.saturating_sub(base.hidden_faults),
            true_faults: self.true_faults.saturating_sub(base.true_faults),
            trace_faults: self.trace_faults.saturating_sub(base.trace_faults),
            view_flushes: self.view_flushes.saturating_sub(base.view_flushes),
            cr3_switches: self.cr3_switches.saturating_sub(base.cr3_switches),
            guest_exits: self.guest_exits.saturating_sub(base.guest_exits),
            callouts: self.callouts.saturating_sub(base.callouts),
        }
    }
}

/// Finds the last line of `stderr` that parses as a JSON object and reads the counters
/// from it. A missing field reads as 0 (older binaries); no JSON at all is `None`.
pub fn parse_stats_json(stderr: &str) -> Option<Counters> {
    let v: serde_json::Value = stderr
        .lines()
        .rev()
        .filter(|l| l.trim_start().starts_with('{'))
        .find_map(|l| serde_json::from_str(l.trim()).ok())?;
    let paging = |k: &str| {
        v.get("paging")
            .and_then(|p| p.get(k))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    Some(Counters {
        hidden_faults: paging("hidden_faults"),
        true_faults: paging("true_faults"),
        trace_faults: paging("trace_faults"),
        view_flushes: paging("view_flushes"),
        cr3_switches: paging("cr3_switches"),
        guest_exits: v
            .get("guest_exits")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0),
        callouts: v
            .get("callouts")
            .and_then(serde_json::Value::as_object)
            .map_or(0, |m| {
                m.values().filter_map(serde_json::Value::as_u64).sum()
            }),
    })
}

/// One run of the nanobenchmark kernel.
#[derive(Debug, Clone)]
pub struct NanoRun {
    /// What the guest printed.
    pub output: NanoOutput,
    /// bt86's counters (bt86 runs only).
    pub counters: Option<Counters>,
    /// Wall time, spawn to exit.
    pub wall: Duration,
}

fn check_run(fin: crate::Finished, want_exit: i32, want_stats: bool) -> Result<NanoRun, String> {
    let output = parse_nano_output(&fin.stdout);
    let counters = parse_stats_json(&fin.stderr);
    let all = || tail(&format!("{}{}", fin.stdout, fin.stderr), 600);
    if output.errors != Some(0) || !output.failures.is_empty() {
        return Err(format!(
            "guest reported errors={:?} {:?} ({}); output tail: {:?}",
            output.errors,
            output.failures,
            fin.status,
            all()
        ));
    }
    if fin.status.code() != Some(want_exit) {
        return Err(format!(
            "exited with {} (expected {want_exit}); output tail: {:?}",
            fin.status,
            all()
        ));
    }
    if want_stats && counters.is_none() {
        return Err(format!(
            "no --stats=json line on stderr; output tail: {:?}",
            all()
        ));
    }
    Ok(NanoRun {
        output,
        counters,
        wall: fin.wall,
    })
}

fn finish(
    cmd: &mut Command,
    timeout: Duration,
    want_exit: i32,
    want_stats: bool,
) -> Result<NanoRun, String> {
    let fin = run_with_timeout(cmd, timeout).map_err(|e: RunError| e.to_string())?;
    check_run(fin, want_exit, want_stats)
}

/// Runs the kernel under `bt86 run --kernel <kernel> --cmdline <cmdline> --stats=json`.
pub fn run_nano_bt86(
    bt86: &Path,
    kernel: &Path,
    cmdline: &str,
    timeout: Duration,
) -> Result<NanoRun, String> {
    let mut cmd = crate::bt86_command(bt86, kernel);
    cmd.args(["--cmdline", cmdline, "--stats=json"]);
    finish(&mut cmd, timeout, 0, true)
}

/// Runs the kernel under QEMU TCG with `-append <cmdline>` (QEMU exits with
/// `(0 << 1) | 1 = 1` when the guest writes 0 to the isa-debug-exit port).
pub fn run_nano_qemu(
    qemu: &Path,
    kernel: &Path,
    cmdline: &str,
    timeout: Duration,
) -> Result<NanoRun, String> {
    let mut cmd = crate::qemu_command(qemu, kernel);
    cmd.args(["-append", cmdline]);
    finish(&mut cmd, timeout, 1, false)
}

/// The `perf stat` events that count bt86's host system calls and host signals. They
/// are tracepoints: they count as root here even where hardware counters do not.
pub const PERF_EVENTS: &str = "raw_syscalls:sys_enter,signal:signal_deliver";

/// Host system calls and signals of one process tree, counted by `perf stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCounts {
    /// `raw_syscalls:sys_enter`: system calls entered (each `rt_sigreturn` included).
    pub syscalls: u64,
    /// `signal:signal_deliver`: signals delivered to a handler.
    pub signals: u64,
}

impl HostCounts {
    /// `self - base`, saturating at 0.
    pub fn minus(&self, base: &HostCounts) -> HostCounts {
        HostCounts {
            syscalls: self.syscalls.saturating_sub(base.syscalls),
            signals: self.signals.saturating_sub(base.signals),
        }
    }
}

/// Reads `perf stat -x,` output (`<count>,<unit>,<event>,...` lines, anywhere in
/// `stderr`). `None` unless both events of [`PERF_EVENTS`] have a numeric count (a
/// missing tracepoint reads `<not supported>` or `<not counted>`).
pub fn parse_perf_stat(stderr: &str) -> Option<HostCounts> {
    let (mut syscalls, mut signals) = (None, None);
    for line in stderr.lines() {
        let mut f = line.trim().split(',');
        let (Some(count), Some(_unit), Some(event)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let Ok(count) = count.trim().parse::<u64>() else {
            continue;
        };
        match event.trim() {
            "raw_syscalls:sys_enter" => syscalls = Some(count),
            "signal:signal_deliver" => signals = Some(count),
            _ => {}
        }
    }
    Some(HostCounts {
        syscalls: syscalls?,
        signals: signals?,
    })
}

/// Finds `perf`: `$BT86_BENCH_PERF` (`0` or `none` skips it), else the first on `$PATH`.
pub fn find_perf() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BT86_BENCH_PERF") {
        let p = PathBuf::from(p);
        let s = p.to_string_lossy();
        if s.is_empty() || s == "0" || s == "none" {
            return None;
        }
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("perf"))
        .find(|p| p.is_file())
}

/// `perf stat -x, -e <PERF_EVENTS> -- <program> <args...>`.
pub fn perf_command(perf: &Path, program: &Path) -> Command {
    let mut cmd = Command::new(perf);
    cmd.args(["stat", "-x,", "-e", PERF_EVENTS, "--"])
        .arg(program);
    cmd
}

/// Checks that `perf stat` can count [`PERF_EVENTS`] (on `true`); the error says why not.
pub fn perf_probe(perf: &Path, timeout: Duration) -> Result<(), String> {
    let fin = run_with_timeout(&mut perf_command(perf, Path::new("true")), timeout)
        .map_err(|e| e.to_string())?;
    if parse_perf_stat(&fin.stderr).is_some() {
        Ok(())
    } else {
        Err(format!(
            "perf stat cannot count {PERF_EVENTS} ({}): {}",
            fin.status,
            tail(fin.stderr.trim(), 300)
        ))
    }
}

/// Runs the kernel under bt86 inside `perf stat` ([`perf_command`]): the guest's output
/// is checked as in [`run_nano_bt86`]; returns the host system calls and signals of the
/// whole run (start-up included: subtract a `none` run).
pub fn run_nano_bt86_perf(
    perf: &Path,
    bt86: &Path,
    kernel: &Path,
    cmdline: &str,
    timeout: Duration,
) -> Result<(NanoRun, HostCounts), String> {
    let mut cmd = perf_command(perf, bt86);
    cmd.arg("run")
        .arg("--kernel")
        .arg(kernel)
        .args(["--cmdline", cmdline]);
    let fin = run_with_timeout(&mut cmd, timeout).map_err(|e: RunError| e.to_string())?;
    let host = parse_perf_stat(&fin.stderr);
    let run = check_run(fin, 0, false)?;
    let host = host.ok_or_else(|| "no perf stat counts on stderr".to_string())?;
    Ok((run, host))
}

/// One benchmark's results, everything per iteration.
#[derive(Debug, Clone, Default)]
pub struct NanoRow {
    /// Benchmark name.
    pub name: String,
    /// Iterations the guest timed.
    pub iterations: u64,
    /// bt86: median guest rdtsc cycles per iteration.
    pub bt86_cycles: Option<f64>,
    /// QEMU TCG: median guest rdtsc cycles per iteration.
    pub qemu_cycles: Option<f64>,
    /// bt86's `--stats=json` counters minus the `none` run's (totals, not per iteration).
    pub counters: Option<Counters>,
    /// Host system calls and signals minus the `none` run's (totals), if perf counted.
    pub host: Option<HostCounts>,
    /// What failed (runs of either engine, perf).
    pub errors: Vec<String>,
}

impl NanoRow {
    /// bt86 cycles / QEMU cycles.
    pub fn ratio(&self) -> Option<f64> {
        match (self.bt86_cycles, self.qemu_cycles) {
            (Some(b), Some(q)) if q > 0.0 => Some(b / q),
            _ => None,
        }
    }

    /// A total divided by the iterations.
    #[allow(clippy::cast_precision_loss)]
    pub fn per_iter(&self, total: u64) -> f64 {
        total as f64 / self.iterations.max(1) as f64
    }

    fn counter(&self, f: fn(&Counters) -> u64) -> Option<f64> {
        self.counters.as_ref().map(|c| self.per_iter(f(c)))
    }

    /// Host signals per iteration.
    pub fn signals(&self) -> Option<f64> {
        self.host.map(|h| self.per_iter(h.signals))
    }

    /// Host system calls per iteration.
    pub fn syscalls(&self) -> Option<f64> {
        self.host.map(|h| self.per_iter(h.syscalls))
    }
}

fn fmt_f(v: Option<f64>, prec: usize, none: &str) -> String {
    v.map_or_else(|| none.into(), |v| format!("{v:.prec$}"))
}

/// Cycles for a table: one decimal below 100, else whole and grouped (`11,400`).
pub fn fmt_cycles(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v < 100.0 => format!("{v:.1}"),
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(v) => group_digits(v.round() as u64),
    }
}

/// The plain-text table: cycles per iteration of both engines and their ratio, host
/// signals and system calls per iteration (`n/a` without perf), then bt86's counters
/// per iteration.
pub fn render_text(rows: &[NanoRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:>8} {:>11} {:>11} {:>9} | {:>8} {:>8} | {:>8} {:>8} {:>7} {:>6} {:>6} {:>7}",
        "bench",
        "iters",
        "bt86 cyc",
        "qemu cyc",
        "bt86/qemu",
        "signals",
        "syscalls",
        "exits",
        "callouts",
        "hidden",
        "true",
        "trace",
        "flushes"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<10} {:>8} {:>11} {:>11} {:>9} | {:>8} {:>8} | {:>8} {:>8} {:>7} {:>6} {:>6} {:>7}",
            r.name,
            r.iterations,
            fmt_cycles(r.bt86_cycles),
            fmt_cycles(r.qemu_cycles),
            r.ratio().map_or_else(|| "-".into(), |x| format!("{x:.2}x")),
            fmt_f(r.signals(), 2, "n/a"),
            fmt_f(r.syscalls(), 2, "n/a"),
            fmt_f(r.counter(|c| c.guest_exits), 2, "-"),
            fmt_f(r.counter(|c| c.callouts), 2, "-"),
            fmt_f(r.counter(|c| c.hidden_faults), 2, "-"),
            fmt_f(r.counter(|c| c.true_faults), 2, "-"),
            fmt_f(r.counter(|c| c.trace_faults), 2, "-"),
            fmt_f(r.counter(|c| c.view_flushes), 2, "-"),
        );
        for e in &r.errors {
            let _ = writeln!(out, "{:<10} FAILED: {e}", "");
        }
    }
    out
}

/// The same results as a Markdown table shaped like issue 10's.
pub fn render_markdown(rows: &[NanoRow]) -> String {
    let mut out = String::from(
        "| operation | bt86 | QEMU TCG | bt86/QEMU | host signals/op | host syscalls/op |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} (`{}`) | {} | {} | {} | {} | {} |",
            describe(&r.name),
            r.name,
            fmt_cycles(r.bt86_cycles),
            fmt_cycles(r.qemu_cycles),
            r.ratio().map_or_else(|| "-".into(), |x| format!("{x:.2}×")),
            fmt_f(r.signals(), 2, "n/a"),
            fmt_f(r.syscalls(), 2, "n/a"),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_guest_output() {
        let o = parse_nano_output(
            "Booting from ROM..bt86-nano pgfault iterations=2000 cycles=2714804\r\n\
             bt86-nano forklike iterations=20 cycles=15326032\nbt86-nano done errors=0\n",
        );
        assert_eq!(o.errors, Some(0));
        assert_eq!(o.lines.len(), 2);
        assert_eq!(o.lines[0].name, "pgfault");
        assert_eq!(o.lines[0].iterations, 2000);
        assert_eq!(o.lines[0].cycles, 2_714_804);
        assert_eq!(o.lines[1].name, "forklike");
        assert!(o.failures.is_empty());
    }

    #[test]
    fn parses_stats() {
        let s = "warn: something\n{\"guest_exits\":67301,\"paging\":{\"cr3_switches\":2041,\
                 \"hidden_faults\":20470,\"mappings_live\":259,\"trace_faults\":6999,\
                 \"true_faults\":2000,\"view_flushes\":16041}}\n";
        let c = parse_stats_json(s).unwrap();
        assert_eq!(c.hidden_faults, 20470);
        assert_eq!(c.true_faults, 2000);
        assert_eq!(c.trace_faults, 6999);
        assert_eq!(c.view_flushes, 16041);
        assert_eq!(c.guest_exits, 67301);
        assert_eq!(c.faults(), 29469);
        assert_eq!(c.callouts, 0);
        assert!(parse_stats_json("no json").is_none());
        let c = parse_stats_json(
            "{\"callouts\":{\"int\":20001,\"iretd\":20001,\"mov\":40024},\"guest_exits\":9}",
        )
        .unwrap();
        assert_eq!(c.callouts, 80026);
        assert_eq!(c.guest_exits, 9);
    }

    #[test]
    fn every_benchmark_is_described() {
        for name in NANO_NAMES {
            assert_ne!(describe(name), name, "{name} has no description");
        }
    }

    #[test]
    fn parses_perf_stat() {
        let s = "bt86-nano done errors=0\n{\"guest_exits\":1}\n\
                 1234,,raw_syscalls:sys_enter,1100910,100.00,,\n\
                 56,,signal:signal_deliver,1100910,100.00,,\n";
        let h = parse_perf_stat(s).unwrap();
        assert_eq!(
            h,
            HostCounts {
                syscalls: 1234,
                signals: 56
            }
        );
        assert_eq!(
            h.minus(&HostCounts {
                syscalls: 1000,
                signals: 60
            }),
            HostCounts {
                syscalls: 234,
                signals: 0
            }
        );
        // a tracepoint perf cannot count, or no perf output at all
        let missing = "1234,,raw_syscalls:sys_enter,1100910,100.00,,\n\
                       <not supported>,,signal:signal_deliver,0,100.00,,\n";
        assert!(parse_perf_stat(missing).is_none());
        assert!(parse_perf_stat("event syntax error").is_none());
    }

    #[test]
    fn renders_tables() {
        let rows = [
            NanoRow {
                name: "syscall".into(),
                iterations: 1000,
                bt86_cycles: Some(11_400.4),
                qemu_cycles: Some(1_070.0),
                counters: Some(Counters {
                    guest_exits: 8000,
                    callouts: 8000,
                    ..Counters::default()
                }),
                host: Some(HostCounts {
                    syscalls: 2500,
                    signals: 1000,
                }),
                errors: vec![],
            },
            NanoRow {
                name: "callret".into(),
                iterations: 10,
                bt86_cycles: Some(14.04),
                qemu_cycles: None,
                counters: None,
                host: None,
                errors: vec!["qemu: boom".into()],
            },
        ];
        let t = render_text(&rows);
        let line = t.lines().find(|l| l.starts_with("syscall")).unwrap();
        for want in ["11,400", "1,070", "10.65x", "1.00", "2.50", "8.00"] {
            assert!(line.contains(want), "{want} not in {line:?}");
        }
        let line = t.lines().find(|l| l.starts_with("callret")).unwrap();
        assert!(line.contains("14.0") && line.contains("n/a"), "{line:?}");
        assert!(t.contains("FAILED: qemu: boom"));
        let m = render_markdown(&rows);
        assert!(m.contains("| `int $0x80` from CPL 3 + `iret` (`syscall`) | 11,400 | 1,070 | 10.65× | 1.00 | 2.50 |"), "{m}");
        assert!(
            m.contains("| `call`/`ret` (`callret`) | 14.0 | - | - | n/a | n/a |"),
            "{m}"
        );
    }
}
