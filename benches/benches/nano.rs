//! Nanobenchmarks (after Adams & Agesen, ASPLOS 2006): bt86 vs QEMU TCG on the same
//! guest (`guest/nano.c`), one row per kernel operation of issue 10 plus the paging
//! benchmarks, with bt86's host signals and system calls per operation.
//!
//! `cargo bench -p bt86-benches --bench nano [-- <name>...]`
//! (build bt86 first: `cargo build --release -p bt86`). See benches/README.md.
//!
//! Every benchmark runs in a VM of its own (the kernel's command line names it), so
//! bt86's counts can be attributed: a `none` run (set-up only) is subtracted from each.

use bt86_benches::nano::{
    describe, find_perf, perf_probe, render_markdown, render_text, run_nano_bt86,
    run_nano_bt86_perf, run_nano_qemu, Counters, HostCounts, NanoRow, NanoRun, BASELINE,
    NANO_GUEST, NANO_NAMES, PERF_EVENTS,
};
use bt86_benches::{find_bt86, find_qemu, median_u64, DEFAULT_TIMEOUT};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// Per benchmark and engine: the cycles of every run, the iteration count, and (bt86)
/// the counters of the first run.
#[derive(Default)]
struct Cell {
    iterations: u64,
    cycles: Vec<u64>,
    counters: Option<Counters>,
    error: Option<String>,
}

impl Cell {
    #[allow(clippy::cast_precision_loss)]
    fn per_iter(&self) -> Option<f64> {
        median_u64(&self.cycles).map(|c| c as f64 / self.iterations.max(1) as f64)
    }
}

/// Prints one run's progress line; records its cycles (or why it failed) in `cell`.
fn record(cell: &mut Cell, what: &str, name: &str, r: Result<&NanoRun, &String>) {
    match r {
        Ok(r) => match r.output.lines.iter().find(|l| l.name == name) {
            Some(l) => {
                println!(
                    "  {what}: {} iterations, {} cycles ({:.1}/iter), wall {:.3} s",
                    l.iterations,
                    l.cycles,
                    l.per_iter(),
                    r.wall.as_secs_f64()
                );
                cell.iterations = l.iterations;
                cell.cycles.push(l.cycles);
                if cell.counters.is_none() {
                    cell.counters = r.counters;
                }
            }
            None if name == BASELINE => {
                println!("  {what}: wall {:.3} s", r.wall.as_secs_f64());
                if cell.counters.is_none() {
                    cell.counters = r.counters;
                }
            }
            None => {
                println!("  {what}: FAILED: no `bt86-nano {name}` line");
                cell.error = Some(format!("{what}: no `bt86-nano {name}` line"));
            }
        },
        Err(e) => {
            println!("  {what}: FAILED: {e}");
            cell.error = Some(format!("{what}: {e}"));
        }
    }
}

fn collect(
    engine: &str,
    name: &str,
    runs: usize,
    mut run: impl FnMut() -> Result<NanoRun, String>,
) -> Cell {
    let mut cell = Cell::default();
    for i in 1..=runs {
        let r = run();
        record(
            &mut cell,
            &format!("{engine} {name} run {i}/{runs}"),
            name,
            r.as_ref(),
        );
        if cell.error.is_some() {
            break;
        }
    }
    cell
}

/// Which benchmarks to run: the names among the arguments (`cargo bench --bench nano --
/// syscall inb`) and in `$BT86_NANO` (comma- or space-separated); all of them if none.
fn selection(args: &[String]) -> Result<Vec<&'static str>, String> {
    let env = std::env::var("BT86_NANO").unwrap_or_default();
    let asked: Vec<String> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .cloned()
        .chain(
            env.split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        )
        .collect();
    if let Some(bad) = asked.iter().find(|a| !NANO_NAMES.contains(&a.as_str())) {
        return Err(format!(
            "unknown benchmark {bad:?}; the benchmarks are: {}",
            NANO_NAMES.join(" ")
        ));
    }
    Ok(NANO_NAMES
        .into_iter()
        .filter(|n| asked.is_empty() || asked.iter().any(|a| a == n))
        .collect())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("nano: not run under `cargo bench`; skipping (use cargo bench)");
        return;
    }
    let names = match selection(&args) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("nano: {e}");
            std::process::exit(2);
        }
    };

    let kernel = PathBuf::from(NANO_GUEST);
    let bt86 = find_bt86();
    let qemu = find_qemu();
    let runs = env_usize("BT86_BENCH_RUNS").unwrap_or(5).max(1);
    let qemu_runs = env_usize("BT86_BENCH_QEMU_RUNS").unwrap_or(5);
    let timeout =
        env_usize("BT86_BENCH_TIMEOUT").map_or(DEFAULT_TIMEOUT, |s| Duration::from_secs(s as u64));
    let perf = match find_perf() {
        None => {
            Err("perf not found (apt-get install linux-perf), or BT86_BENCH_PERF=none".to_string())
        }
        Some(p) => perf_probe(&p, timeout).map(|()| p),
    };

    println!("bt86 nanobenchmarks (Adams & Agesen): one VM per benchmark");
    println!("  guest kernel : {}", kernel.display());
    match &bt86 {
        Ok(p) => println!(
            "  bt86         : {} run --kernel <guest> --cmdline <bench> --stats=json",
            p.display()
        ),
        Err(why) => println!("  bt86         : {why}"),
    }
    match &qemu {
        Some(q) => println!(
            "  qemu         : {} -accel tcg -append <bench>",
            q.display()
        ),
        None => println!("  qemu         : not found (apt-get install qemu-system-x86)"),
    }
    match &perf {
        Ok(p) => println!(
            "  perf         : {} stat -x, -e {PERF_EVENTS} -- <bt86 run>",
            p.display()
        ),
        Err(why) => println!("  perf         : n/a: {why}"),
    }
    println!(
        "  runs         : bt86 {runs}, qemu {qemu_runs}, bt86 under perf {} per benchmark; limit {} s per run",
        usize::from(perf.is_ok()),
        timeout.as_secs()
    );
    println!("  benchmarks   : {}", names.join(" "));
    println!();

    let run_b = |p: &Path, cmd: &str| run_nano_bt86(p, &kernel, cmd, timeout);
    let run_q = |p: &Path, cmd: &str| run_nano_qemu(p, &kernel, cmd, timeout);
    // One run under perf: the guest's own checks as usual, plus the host counts.
    let run_p = |b: &Path, name: &str| -> (Cell, Option<HostCounts>) {
        let mut cell = Cell::default();
        let Ok(p) = &perf else {
            return (cell, None);
        };
        let r = run_nano_bt86_perf(p, b, &kernel, name, timeout);
        let (run, host) = match r {
            Ok((run, host)) => (Ok(run), Some(host)),
            Err(e) => (Err(e), None),
        };
        record(&mut cell, &format!("perf {name}"), name, run.as_ref());
        if let Some(h) = host {
            println!(
                "    host: {} system calls, {} signals",
                h.syscalls, h.signals
            );
        }
        (cell, host)
    };

    let mut failed = false;
    let (base, base_host) = match &bt86 {
        Ok(p) => {
            let c = collect("bt86", BASELINE, 1, || run_b(p, BASELINE));
            let (pc, host) = run_p(p, BASELINE);
            failed |= c.error.is_some() || pc.error.is_some();
            (c.counters.unwrap_or_default(), host)
        }
        Err(_) => (Counters::default(), None),
    };

    let mut rows = Vec::new();
    for name in names {
        println!("{name}: {}", describe(name));
        let (b, p, host) = match &bt86 {
            Ok(bin) => {
                let b = collect("bt86", name, runs, || run_b(bin, name));
                let (p, host) = run_p(bin, name);
                (b, p, host)
            }
            Err(_) => (Cell::default(), Cell::default(), None),
        };
        let q = match &qemu {
            Some(bin) if qemu_runs > 0 => collect("qemu", name, qemu_runs, || run_q(bin, name)),
            _ => Cell::default(),
        };
        let errors: Vec<String> = [&b, &p, &q]
            .iter()
            .filter_map(|c| c.error.clone())
            .collect();
        failed |= !errors.is_empty();
        rows.push(NanoRow {
            name: name.to_string(),
            iterations: b.iterations.max(q.iterations).max(p.iterations),
            bt86_cycles: b.per_iter(),
            qemu_cycles: q.per_iter(),
            counters: b.counters.map(|c| c.minus(&base)),
            host: match (host, base_host) {
                (Some(h), Some(base)) => Some(h.minus(&base)),
                _ => None,
            },
            errors,
        });
    }

    println!();
    print!("{}", render_text(&rows));
    println!();
    println!(
        "cyc: median over runs of the guest's own rdtsc around the loop / iterations (host TSC\n\
         \x20    under bt86; QEMU's virtual TSC, which follows host time, under QEMU).\n\
         signals, syscalls: host signals delivered to bt86 (signal:signal_deliver) and host\n\
         \x20    system calls it entered (raw_syscalls:sys_enter), counted by perf stat over one\n\
         \x20    more bt86 run of that benchmark, minus those of a `{BASELINE}` run, / iterations;\n\
         \x20    n/a without perf. Baseline ({BASELINE}): {}.\n\
         exits (guest_exits), callouts (sum of `callouts`), hidden, true, trace (faults),\n\
         \x20    flushes (paging.view_flushes): bt86's --stats=json counters of that benchmark's\n\
         \x20    VM minus those of the `{BASELINE}` VM, / iterations; they include the loop's\n\
         \x20    first-touch and translation costs. Baseline: exits {} callouts {} hidden {}\n\
         \x20    true {} trace {} flushes {}.",
        base_host.map_or_else(
            || "n/a".to_string(),
            |h| format!("{} system calls, {} signals", h.syscalls, h.signals)
        ),
        base.guest_exits,
        base.callouts,
        base.hidden_faults,
        base.true_faults,
        base.trace_faults,
        base.view_flushes
    );
    println!();
    print!("{}", render_markdown(&rows));
    if let Err(why) = &bt86 {
        println!("bt86 not run: {why}");
    }
    if failed {
        std::process::exit(1);
    }
}
