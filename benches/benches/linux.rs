//! Debian's i386 kernel and busybox under bt86 and under QEMU TCG: boot to /init, 300
//! fork+exec, md5sum + sha256sum of 16 MiB, an awk loop; the last three natively too.
//!
//! `cargo bench -p bt86-benches --bench linux`
//! (build bt86 first: `cargo build --release`). See benches/README.md.
//!
//! The engines take turns (bt86, QEMU, native, then again), so a burst of load on this
//! shared machine lands on all of them rather than on one.

use bt86_benches::linux::{
    bt86_command, guest_init, link_applets, native_command, qemu_command, run_marked, user_code_modes, Ending,
    EngineRuns, Phases, Results,
};
use bt86_benches::{find_bt86, find_qemu};
use bt86_tests::linux::{FetchError, LinuxGuest};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// Runs `cmd` once, prints its phases, records them (or the error) in `runs`.
fn measure(runs: &mut EngineRuns, what: &str, mut cmd: Command, limit: Duration, ending: Ending) {
    let phases = run_marked(&mut cmd, limit, ending).and_then(|r| Phases::from_marks(&r.marks));
    match phases {
        Ok(p) => {
            let init = p.to_init.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64()));
            let guest = p.guest.map(|g| g.map_or("-".into(), |s| format!("{s:.2}")));
            println!(
                "  {what}: to /init {init}, fork+exec {:.2} s, hashes {:.2} s, awk {:.2} s (guest clock: {} / {} / {} / {})",
                p.fork.as_secs_f64(),
                p.hash.as_secs_f64(),
                p.awk.as_secs_f64(),
                guest[0],
                guest[1],
                guest[2],
                guest[3]
            );
            runs.phases.push(p);
        }
        Err(e) => {
            println!("  {what}: FAILED: {e}");
            runs.errors.push(e.to_string());
        }
    }
}

/// Scratch files of this run, removed at the end.
struct Scratch {
    initrd: PathBuf,
    bin: PathBuf,
    tmpfs: PathBuf,
}

impl Scratch {
    fn new(guest: &LinuxGuest) -> Self {
        let id = std::process::id();
        let tmp = std::env::temp_dir();
        // /dev/shm is a tmpfs, as the guest's /tmp is.
        let shm = Path::new("/dev/shm");
        let tmpfs = if shm.is_dir() { shm.join(format!("bt86-linux-bench-{id}")) } else { tmp.join(format!("bt86-linux-bench-{id}-shm")) };
        let s = Self { initrd: tmp.join(format!("bt86-linux-bench-{id}.gz")), bin: tmp.join(format!("bt86-linux-bench-{id}-bin")), tmpfs };
        guest.write_initramfs(&guest_init(), &s.initrd).unwrap_or_else(|e| panic!("building the initramfs: {e}"));
        link_applets(&guest.busybox, &s.bin).unwrap_or_else(|e| panic!("linking busybox applets in {}: {e}", s.bin.display()));
        std::fs::create_dir_all(&s.tmpfs).unwrap_or_else(|e| panic!("creating {}: {e}", s.tmpfs.display()));
        s
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.initrd);
        let _ = std::fs::remove_dir_all(&self.bin);
        let _ = std::fs::remove_dir_all(&self.tmpfs);
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("linux: not run under `cargo bench`; skipping (use cargo bench)");
        return;
    }
    let guest = match LinuxGuest::get() {
        Ok(g) => g,
        Err(FetchError::Unavailable(why)) => {
            println!("linux: skipped: cannot fetch Debian's i386 kernel and busybox: {why}");
            return;
        }
        Err(e) => panic!("fetching the Linux guest: {e}"),
    };
    let runs = env_usize("BT86_BENCH_RUNS").unwrap_or(3).max(1);
    let qemu_runs = env_usize("BT86_BENCH_QEMU_RUNS").unwrap_or(3);
    let limit = Duration::from_secs(env_usize("BT86_BENCH_TIMEOUT").unwrap_or(120) as u64);
    let (bt86, qemu) = (find_bt86(), find_qemu());
    let scratch = Scratch::new(&guest);

    println!("Linux benchmark: {}", guest.source.trim().replace('\n', ", "));
    println!("  bt86 : {}", bt86.as_ref().map_or_else(|e| e.clone(), |p| p.display().to_string()));
    println!("  qemu : {}", qemu.as_ref().map_or("not found (apt-get install qemu-system-x86)".into(), |p| p.display().to_string()));
    println!("  runs : bt86 {runs}, QEMU {qemu_runs}, native {runs}; limit {} s per run", limit.as_secs());
    let modes = user_code_modes(std::env::var("BT86_BENCH_USER_CODE").ok().as_deref());
    if modes.len() > 1 {
        println!("  bt86 --user-code, in turn: {}", modes.join(", "));
    }
    let mut results = Results { modes: modes.iter().map(|m| (m.clone(), EngineRuns::default())).collect(), ..Results::default() };
    for round in 0..runs.max(qemu_runs) {
        if let (Ok(b), true) = (&bt86, round < runs) {
            for (mode, engine) in &mut results.modes {
                let cmd = bt86_command(b, &guest.kernel, &scratch.initrd, mode);
                let what = if mode.is_empty() { format!("bt86 #{}", round + 1) } else { format!("bt86 {mode} #{}", round + 1) };
                measure(engine, &what, cmd, limit, Ending::ExitsZero);
            }
        }
        if let (Some(q), true) = (&qemu, round < qemu_runs) {
            let cmd = qemu_command(q, &guest.kernel, &scratch.initrd);
            measure(&mut results.qemu, &format!("QEMU #{}", round + 1), cmd, limit, Ending::Kill);
        }
        if round < runs {
            let cmd = native_command(&guest.busybox, &scratch.bin, &scratch.tmpfs);
            measure(&mut results.native, &format!("native #{}", round + 1), cmd, limit, Ending::ExitsZero);
        }
    }
    // The QEMU comparison is with bt86 in the first mode.
    if let Some((_, first)) = results.modes.first() {
        results.bt86 = EngineRuns { phases: first.phases.clone(), errors: first.errors.clone() };
    }
    println!();
    print!("{}", results.render_text());
    println!(
        "\nwall: host time between the guest's marker lines on the serial console (boot: from\n\
         starting the process). guest: the same spans by the guest's own /proc/uptime.\n\
         native: the same busybox on the host (its shell, the same applets, /dev/shm).\n"
    );
    print!("{}", results.render_markdown());
    if results.modes.len() > 1 {
        println!("\nbt86 by --user-code mode (medians, wall seconds):\n");
        print!("{}", results.render_modes_markdown());
    }
    let failed = [&results.bt86, &results.qemu, &results.native].iter().any(|r| !r.errors.is_empty())
        || results.modes.iter().any(|(_, r)| !r.errors.is_empty());
    if failed {
        std::process::exit(1);
    }
}
