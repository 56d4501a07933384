//! Paging nanobenchmarks (after Adams & Agesen, ASPLOS 2006): bt86 vs QEMU TCG on the
//! same guest (`guest/nano.c`).
//!
//! `cargo bench -p bt86-benches --bench paging`
//! (build bt86 first: `cargo build --release -p bt86`). See benches/README.md.
//!
//! Every benchmark runs in a VM of its own (the kernel's command line names it), so
//! bt86's counters can be attributed: a `none` run (set-up only) is subtracted from each.

use bt86_benches::nano::{
    run_nano_bt86, run_nano_qemu, Counters, NanoRun, BASELINE, NANO_GUEST, NANO_NAMES,
};
use bt86_benches::{find_bt86, find_qemu, median_u64, DEFAULT_TIMEOUT};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// Per benchmark and engine: median cycles, the iteration count, and (bt86) counters.
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

fn collect(
    engine: &str,
    name: &str,
    runs: usize,
    mut run: impl FnMut() -> Result<NanoRun, String>,
) -> Cell {
    let mut cell = Cell::default();
    for i in 1..=runs {
        match run() {
            Ok(r) => {
                let line = r.output.lines.iter().find(|l| l.name == name);
                match line {
                    Some(l) => {
                        println!(
                            "  {engine} {name} run {i}/{runs}: {} iterations, {} cycles ({:.0}/iter), wall {:.3} s",
                            l.iterations,
                            l.cycles,
                            l.per_iter(),
                            r.wall.as_secs_f64()
                        );
                        cell.iterations = l.iterations;
                        cell.cycles.push(l.cycles);
                    }
                    None if name == BASELINE => {
                        println!(
                            "  {engine} {name} run {i}/{runs}: wall {:.3} s",
                            r.wall.as_secs_f64()
                        );
                    }
                    None => {
                        cell.error = Some(format!("no `bt86-nano {name}` line"));
                        break;
                    }
                }
                if cell.counters.is_none() {
                    cell.counters = r.counters;
                }
            }
            Err(e) => {
                println!("  {engine} {name} run {i}/{runs}: FAILED: {e}");
                cell.error = Some(e);
                break;
            }
        }
    }
    cell
}

fn fmt_f(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.prec$}"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("paging: not run under `cargo bench`; skipping (use cargo bench)");
        return;
    }

    let kernel = PathBuf::from(NANO_GUEST);
    let bt86 = find_bt86();
    let qemu = find_qemu();
    let runs = env_usize("BT86_BENCH_RUNS").unwrap_or(3).max(1);
    let qemu_runs = env_usize("BT86_BENCH_QEMU_RUNS").unwrap_or(3);
    let timeout =
        env_usize("BT86_BENCH_TIMEOUT").map_or(DEFAULT_TIMEOUT, |s| Duration::from_secs(s as u64));

    println!("bt86 paging nanobenchmarks (Adams & Agesen): one VM per benchmark");
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
    println!(
        "  runs         : bt86 {runs}, qemu {qemu_runs} per benchmark; limit {} s per run",
        timeout.as_secs()
    );
    println!();

    let run_b = |p: &Path, cmd: &str| run_nano_bt86(p, &kernel, cmd, timeout);
    let run_q = |p: &Path, cmd: &str| run_nano_qemu(p, &kernel, cmd, timeout);

    let mut failed = false;
    let base = match &bt86 {
        Ok(p) => {
            let c = collect("bt86", BASELINE, 1, || run_b(p, BASELINE));
            failed |= c.error.is_some();
            c.counters.unwrap_or_default()
        }
        Err(_) => Counters::default(),
    };
    let mut rows = Vec::new();
    for name in NANO_NAMES {
        let b = match &bt86 {
            Ok(p) => collect("bt86", name, runs, || run_b(p, name)),
            Err(_) => Cell::default(),
        };
        let q = match &qemu {
            Some(p) if qemu_runs > 0 => collect("qemu", name, qemu_runs, || run_q(p, name)),
            _ => Cell::default(),
        };
        failed |= b.error.is_some() || q.error.is_some();
        rows.push((name, b, q));
    }

    println!();
    println!(
        "{:<10} {:>6} {:>12} {:>12} {:>9} | {:>8} {:>7} {:>7} {:>8} {:>8} {:>9}",
        "bench",
        "iters",
        "bt86 cyc/it",
        "qemu cyc/it",
        "bt86/qemu",
        "hidden",
        "true",
        "trace",
        "flushes",
        "exits",
        "signals"
    );
    #[allow(clippy::cast_precision_loss)]
    for (name, b, q) in &rows {
        let bc = b.per_iter();
        let qc = q.per_iter();
        let ratio = match (bc, qc) {
            (Some(b), Some(q)) if q > 0.0 => format!("{:.2}x", b / q),
            _ => "-".into(),
        };
        let iters = b.iterations.max(q.iterations);
        let per = |f: fn(&Counters) -> u64| {
            b.counters
                .map(|c| c.minus(&base))
                .map(|c| f(&c) as f64 / b.iterations.max(1) as f64)
        };
        println!(
            "{:<10} {:>6} {:>12} {:>12} {:>9} | {:>8} {:>7} {:>7} {:>8} {:>8} {:>9}",
            name,
            iters,
            fmt_f(bc, 0),
            fmt_f(qc, 0),
            ratio,
            fmt_f(per(|c| c.hidden_faults), 2),
            fmt_f(per(|c| c.true_faults), 2),
            fmt_f(per(|c| c.trace_faults), 2),
            fmt_f(per(|c| c.view_flushes), 2),
            fmt_f(per(|c| c.guest_exits), 2),
            fmt_f(per(Counters::signals), 2),
        );
        for (engine, cell) in [("bt86", b), ("qemu", q)] {
            if let Some(e) = &cell.error {
                println!("{:<10} {engine} FAILED: {e}", "");
            }
        }
    }
    println!();
    println!(
        "cyc/it: median over runs of the guest's own rdtsc around the loop / iterations (host TSC\n\
         \x20       under bt86, QEMU's virtual TSC, which follows host time, under QEMU).\n\
         hidden, true, trace, flushes (paging.view_flushes), exits (guest_exits): bt86's --stats\n\
         \x20       counters of that benchmark's VM minus those of a `{BASELINE}` VM (set-up only), divided\n\
         \x20       by the iterations; they include the loop's first-touch and translation costs.\n\
         signals: hidden + true + trace faults per iteration = host SIGSEGVs taken by bt86.\n\
         \x20       baseline ({BASELINE}): hidden {} true {} trace {} flushes {} exits {}",
        base.hidden_faults, base.true_faults, base.trace_faults, base.view_flushes, base.guest_exits
    );
    if let Err(why) = &bt86 {
        println!("bt86 not run: {why}");
    }
    if failed {
        std::process::exit(1);
    }
}
