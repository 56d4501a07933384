//! The nanobenchmark guest itself: every benchmark passes its own checks and prints its
//! line, under QEMU TCG and under bt86 (both ignored by default: they take a second or
//! two; `cargo test --release -p bt86-benches -- --ignored`; skipped when QEMU is not
//! installed or bt86 not built).

use bt86_benches::nano::{run_nano_bt86, run_nano_qemu, NanoRun, NANO_GUEST, NANO_NAMES};
use bt86_benches::{find_bt86, find_qemu, DEFAULT_TIMEOUT};
use std::path::Path;

/// An empty command line runs every benchmark, in [`NANO_NAMES`] order.
fn check_all(run: &NanoRun) {
    let names: Vec<&str> = run.output.lines.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, NANO_NAMES, "{run:?}");
    for l in &run.output.lines {
        assert!(l.iterations > 0 && l.cycles > 0, "{l:?}");
    }
}

#[test]
#[ignore = "runs QEMU TCG for about a second"]
fn every_benchmark_passes_under_qemu() {
    let Some(qemu) = find_qemu() else {
        eprintln!("qemu-system-i386 not installed; skipping");
        return;
    };
    let kernel = Path::new(NANO_GUEST);
    check_all(&run_nano_qemu(&qemu, kernel, "", DEFAULT_TIMEOUT).expect("qemu run"));
    // the command line selects: one name, or none at all
    let one = run_nano_qemu(&qemu, kernel, "de", DEFAULT_TIMEOUT).expect("qemu run");
    assert_eq!(one.output.lines.len(), 1);
    assert_eq!(one.output.lines[0].name, "de");
    let none = run_nano_qemu(&qemu, kernel, "none", DEFAULT_TIMEOUT).expect("qemu run");
    assert!(none.output.lines.is_empty());
}

#[test]
#[ignore = "needs a release build of bt86 and takes seconds"]
fn every_benchmark_passes_under_bt86() {
    let bt86 = match find_bt86() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("{why}; skipping");
            return;
        }
    };
    let run = run_nano_bt86(&bt86, Path::new(NANO_GUEST), "", DEFAULT_TIMEOUT).expect("bt86 run");
    check_all(&run);
    assert!(run.counters.is_some());
}
