//! The paging nanobenchmarks (after Adams & Agesen, ASPLOS 2006): `guest/nano.c`, one
//! multiboot kernel ([`NANO_GUEST`]) whose command line selects which benchmarks run.
//!
//! Each benchmark prints `bt86-nano <name> iterations=<n> cycles=<total>` (the guest's
//! own rdtsc around the loop); the guest ends with `bt86-nano done errors=<n>`. The
//! `paging` bench runs every benchmark in a VM of its own under bt86 (`--stats=json`)
//! and QEMU TCG, plus a `none` run (set-up only) whose bt86 counters are subtracted, so
//! the counters per iteration belong to that benchmark alone.

use crate::{run_with_timeout, tail, RunError};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The nanobenchmark kernel (built by `build.rs` from `guest/nano.c`).
pub const NANO_GUEST: &str = env!("BT86_NANO_GUEST");

/// The benchmarks, in the order the guest runs them.
pub const NANO_NAMES: [&str; 4] = ["pgfault", "ptemod", "cr3switch", "forklike"];

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
}

impl Counters {
    /// Host signals: hidden + true + trace faults (each one a SIGSEGV taken by bt86).
    pub fn signals(&self) -> u64 {
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

fn finish(
    cmd: &mut Command,
    timeout: Duration,
    want_exit: i32,
    want_stats: bool,
) -> Result<NanoRun, String> {
    let fin = run_with_timeout(cmd, timeout).map_err(|e: RunError| e.to_string())?;
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
        assert_eq!(c.signals(), 29469);
        assert!(parse_stats_json("no json").is_none());
    }
}
