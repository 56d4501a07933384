//! bt86 vs native vs QEMU TCG on the CPU-bound workload.
//!
//! `cargo bench -p bt86-benches --bench vs_native`
//! (build bt86 first: `cargo build --release -p bt86`). See benches/README.md.

use bt86_benches::{compare, Config, Engine, EXPECTED_CHECKSUM};

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing special.
    // Under `cargo test` (no --bench flag) only check that the programs exist.
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("vs_native: not run under `cargo bench`; skipping (use cargo bench)");
        return;
    }

    let cfg = Config::from_env();
    println!("bt86 CPU benchmark: same workload object, native i386 vs guest kernel");
    println!("  native program : {}", cfg.native.display());
    println!("  guest kernel   : {}", cfg.guest.display());
    match &cfg.bt86 {
        Ok(p) => println!("  bt86           : {} run --kernel <guest>", p.display()),
        Err(why) => println!("  bt86           : {why}"),
    }
    match &cfg.qemu {
        Some(q) => println!("  qemu           : {} (TCG)", q.display()),
        None => println!("  qemu           : not found"),
    }
    println!(
        "  runs           : native {}, bt86 {}, qemu {}; limit {} s per run",
        cfg.native_runs,
        cfg.bt86_runs,
        cfg.qemu_runs,
        cfg.timeout.as_secs()
    );
    println!();

    let cmp = compare(&cfg, |msg| println!("  {msg}"));
    println!();
    print!("{}", cmp.render_table());
    println!();
    println!(
        "cycles: the program's own rdtsc around the workload (host TSC natively and under \
         bt86;\n        QEMU TCG's virtual TSC). wall: spawn to exit, including start-up \
         (and QEMU's firmware)."
    );

    let mut failed = false;
    match cmp.agreed_checksum() {
        Ok(c) if c == EXPECTED_CHECKSUM => println!("checksums agree: {c:08x}"),
        Ok(c) => println!(
            "checksums agree: {c:08x} (note: EXPECTED_CHECKSUM in src/lib.rs is {:08x}; \
             update it if guest/workload.c changed)",
            EXPECTED_CHECKSUM
        ),
        Err(e) => {
            println!("CHECKSUM MISMATCH: {e}");
            failed = true;
        }
    }
    for r in &cmp.reports {
        if r.skipped.is_none() && !r.errors.is_empty() {
            println!("{} had failed runs", r.engine.name());
            failed = true;
        }
    }
    if !cmp.report(Engine::Native).is_some_and(|r| r.ok()) {
        println!("the native baseline did not run");
        failed = true;
    }
    if failed {
        std::process::exit(1);
    }
}
