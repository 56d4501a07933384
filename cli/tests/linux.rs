//! Debian's unmodified i386 kernel (`linux-image-686`) with a busybox initramfs, run by
//! the `bt86` binary as a person runs it: a scripted `/init` that checks processes,
//! pipes, a tmpfs file and signals, then powers off; and, under tmux, a shell on the
//! interactive console.
//!
//! The kernel and busybox are fetched with apt on first use and cached under
//! `target/linux-guest/` (see `bt86_tests::linux`); where they cannot be fetched (no apt,
//! no network, i386 packages not enabled and not root) the tests skip, saying so.
//! These tests live here rather than in the tests crate because they run the binary
//! (`CARGO_BIN_EXE_bt86`, which only this package's tests are given).

use bt86_tests::linux::{LinuxGuest, CHECKS, CHECKS_INIT, SHELL_INIT, SHELL_PROMPT};
use bt86_tests::tmux::Tmux;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The machine the issue asks for: nothing on the command line but the console.
const APPEND: &str = "console=ttyS0";
const MEM_MIB: &str = "256";
/// bt86's own limit on a run (`--timeout`, status 3): boot takes 2.5 s on an idle machine
/// here, around 10 s while the machine builds.
const RUN_LIMIT_S: &str = "60";

/// A scratch file of this test process, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        Self(std::env::temp_dir().join(format!("bt86-linux-{}-{name}", std::process::id())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The initramfs with `init`, written for this test.
fn initrd(guest: &LinuxGuest, name: &str, init: &str) -> Scratch {
    let file = Scratch::new(name);
    guest.write_initramfs(init, &file.0).unwrap_or_else(|e| panic!("building the initramfs: {e}"));
    file
}

/// `bt86 run` of the guest with `initrd`: the arguments after `bt86`.
fn run_args(guest: &LinuxGuest, initrd: &Scratch) -> Vec<String> {
    let (kernel, initrd) = (guest.kernel.display().to_string(), initrd.0.display().to_string());
    ["run", "--kernel", &kernel, "--initrd", &initrd, "--append", APPEND, "--mem", MEM_MIB, "--timeout", RUN_LIMIT_S]
        .map(str::to_owned)
        .to_vec()
}

/// The console's last lines, each prefixed (so the guest's lines cannot be taken for
/// the test runner's), for a failure message.
fn console_tail(console: &str) -> String {
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(60)..].iter().map(|l| format!("guest| {l}\n")).collect()
}

#[test]
fn debian_kernel_runs_busybox_checks_and_powers_off() {
    let Some(guest) = LinuxGuest::for_test() else { return };
    let initrd = initrd(&guest, "checks.gz", CHECKS_INIT);
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_bt86"))
        .args(run_args(&guest, &initrd))
        .args(["--stats", "json"])
        .stdin(Stdio::null())
        .output()
        .expect("run bt86");
    // The guest's tty ends its lines with "\r\n".
    let console = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    let err = String::from_utf8_lossy(&out.stderr);
    let context = format!("{}bt86 said: {err}(guest: {})", console_tail(&console), guest.source.replace('\n', ", "));
    for check in CHECKS {
        assert!(console.contains(&format!("bt86-check: {check} ok\n")), "check {check} did not pass:\n{context}");
    }
    assert!(console.contains("bt86-check: PASS\n"), "{context}");
    assert_eq!(out.status.code(), Some(0), "{context}");
    assert!(err.contains("guest powered off"), "{context}");
    // Linux's fault handlers make pages present with their A bit set: those are
    // mapped by the handler's store, not by a second fault.
    let stats: serde_json::Value =
        err.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or_else(|| panic!("no --stats json in {err}"));
    assert!(stats["paging"]["mapped_on_present"].as_u64() > Some(0), "{}", stats["paging"]);
    eprintln!("booted, checked and powered off in {:.1} s", start.elapsed().as_secs_f64());
}

#[test]
fn a_person_uses_the_busybox_shell_on_the_console() {
    let Some(guest) = LinuxGuest::for_test() else { return };
    let initrd = initrd(&guest, "shell.gz", SHELL_INIT);
    let shell = format!("sh -c '{} {}; echo \"EXIT=$?\"; sleep 60'", env!("CARGO_BIN_EXE_bt86"), run_args(&guest, &initrd).join(" "));
    let Some(t) = Tmux::start("linux-shell", &shell) else { return };
    let prompt = SHELL_PROMPT.trim_end();
    // The prompt ends the last line; after Ctrl-C the tty's "^C" echo can land in
    // front of it, on the same line, depending on timing.
    let at_prompt = |s: &str| s.lines().rfind(|l| !l.trim().is_empty()).is_some_and(|l| l.trim_end().ends_with(prompt));
    t.wait_until("the shell's prompt", Duration::from_secs(60), at_prompt);
    // A command typed, its output.
    t.keys(&["-l", "echo $((6 * 7)) $(uname -m) $(cat /proc/cpuinfo | grep -c ^processor)"]);
    t.keys(&["Enter"]);
    t.wait_for("42 i686 1");
    // Ctrl-C interrupts the foreground command: the prompt is back at once.
    t.keys(&["-l", "sleep 100"]);
    t.keys(&["Enter"]);
    t.wait_until("sleep to start", Duration::from_secs(10), |s| !at_prompt(s));
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    t.keys(&["C-c"]);
    let s = t.wait_until("the prompt after Ctrl-C", Duration::from_secs(5), at_prompt);
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(3), "the prompt took {took:?} to come back:\n{s}");
    // The shell still works, and Ctrl-A x ends bt86 with status 0.
    t.keys(&["-l", "echo still-$((1 + 1))"]);
    t.keys(&["Enter"]);
    t.wait_for("still-2");
    t.keys(&["C-a", "x"]);
    let s = t.wait_for("EXIT=");
    assert!(s.contains("EXIT=0"), "Ctrl-A x ends bt86 with status 0:\n{s}");
}

/// The same checks with guest user code run directly (`--user-code direct`): busybox's
/// processes run in bt86's runner; the statistics show it.
#[test]
fn busybox_checks_pass_with_user_code_run_directly() {
    let Some(guest) = LinuxGuest::for_test() else { return };
    let initrd = initrd(&guest, "checks-direct.gz", CHECKS_INIT);
    let stats = Scratch::new("direct-stats.json");
    let mut args = run_args(&guest, &initrd);
    args.extend(["--user-code", "direct", "--stats", "json", "--stats-file"].map(str::to_owned));
    args.push(stats.0.display().to_string());
    let out = Command::new(env!("CARGO_BIN_EXE_bt86")).args(&args).stdin(Stdio::null()).output().expect("run bt86");
    let console = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    let err = String::from_utf8_lossy(&out.stderr);
    let direct = std::fs::read(&stats.0).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()).map(|j| j["direct"].clone());
    let context = format!("{}bt86 said: {err}\ndirect execution: {direct:?}", console_tail(&console));
    for check in CHECKS {
        assert!(console.contains(&format!("bt86-check: {check} ok\n")), "check {check} did not pass:\n{context}");
    }
    assert!(console.contains("bt86-check: PASS\n"), "{context}");
    assert_eq!(out.status.code(), Some(0), "{context}");
    let direct = direct.expect("statistics written");
    eprintln!("direct: {direct}");
    // Off only where the host kernel refused a step of the runner's set-up.
    if let Some(why) = direct["disabled"].as_str() {
        assert!(why.contains("set-up failed"), "direct execution failed: {why}");
        eprintln!("skipped: direct execution is not available on this host: {why}");
        return;
    }
    assert!(direct["entries"].as_u64().unwrap_or(0) > 100, "user code ran directly: {direct}");
    assert_eq!(direct["escapes"].as_u64(), Some(0), "{direct}");
}

/// Runs bt86 on the guest with `init` and `programs` in `/bin` and `extra` arguments,
/// statistics as JSON: (console, stderr, exit status, the `direct` statistics).
fn run_with_programs(guest: &LinuxGuest, name: &str, init: &str, programs: &[(&str, &[u8])], extra: &[&str]) -> (String, String, Option<i32>, serde_json::Value) {
    let initrd = Scratch::new(name);
    guest.write_initramfs_with(init, programs, &initrd.0).unwrap_or_else(|e| panic!("building the initramfs: {e}"));
    let stats = Scratch::new(&format!("{name}-stats.json"));
    let mut args = run_args(guest, &initrd);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.extend(["--stats", "json", "--stats-file"].map(str::to_owned));
    args.push(stats.0.display().to_string());
    let out = Command::new(env!("CARGO_BIN_EXE_bt86")).args(&args).stdin(Stdio::null()).output().expect("run bt86");
    let console = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let direct = std::fs::read(&stats.0)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map_or(serde_json::Value::Null, |j| j["direct"].clone());
    (console, err, out.status.code(), direct)
}

/// Whether direct execution ran; false (after saying so) only where the host kernel
/// refused a step of the runner's set-up.
fn direct_available(direct: &serde_json::Value) -> bool {
    match direct["disabled"].as_str() {
        None => true,
        Some(why) => {
            assert!(why.contains("set-up failed"), "direct execution failed: {why}");
            eprintln!("skipped: direct execution is not available on this host: {why}");
            false
        }
    }
}

/// A program in the guest far-jumps to the host's 64-bit code selector 0x33 and makes
/// x86-64 system calls (`mkdir` of a host path, `write`): run directly, neither reaches
/// the host (the directory is never made), the guest kernel gets a #GP for it and kills
/// the process with SIGSEGV (status 139), as hardware would have, and carries on.
#[test]
fn a_far_jump_to_0x33_and_host_system_calls_reach_neither_host_nor_guest_kernel() {
    let Some(guest) = LinuxGuest::for_test() else { return };
    let dir = Scratch::new("programs");
    let escape = bt86_tests::linux::programs::build(bt86_tests::linux::programs::ESCAPE, &dir.0.with_extension("d"))
        .unwrap_or_else(|e| panic!("assembling the escape program: {e}"));
    let target = Scratch::new("escaped");
    let target_path = target.0.display().to_string();
    let init = format!(
        "#!/bin/sh\nmount -t proc proc /proc\nfor i in 1 2; do /bin/escape {target_path}; echo \"escape: status $?\"; done\n\
         echo \"escape: the kernel carries on: $((6 * 7))\"\npoweroff -f\n"
    );
    let (console, err, status, direct) = run_with_programs(&guest, "escape.gz", &init, &[("escape", &escape)], &["--user-code", "direct"]);
    let _ = std::fs::remove_dir_all(dir.0.with_extension("d"));
    let context = format!("{}bt86 said: {err}\ndirect execution: {direct}", console_tail(&console));
    assert!(!target.0.exists(), "the escaped guest made a host directory: {context}");
    let _ = std::fs::remove_dir(&target.0);
    assert!(!console.contains("ESCAPED"), "{context}");
    assert_eq!(console.matches("escape: far jump to 0x33\n").count(), 2, "{context}");
    assert_eq!(console.matches("escape: status 139\n").count(), 2, "the process dies of SIGSEGV: {context}");
    assert!(console.contains("escape: the kernel carries on: 42\n"), "{context}");
    assert_eq!(status, Some(0), "{context}");
    if !direct_available(&direct) {
        return;
    }
    assert_eq!(direct["escapes"].as_u64(), Some(2), "each escape caught: {context}");
}

/// A compute-bound process (a loop with no system calls) under the default
/// `--user-code auto`: its address space goes direct after a few long runs, and the
/// loop runs directly for at least 80% of its time (guest uptime before and after);
/// its reload of %ds with 0x7b then sends it back to translation for good.
#[test]
fn a_compute_bound_process_runs_directly_under_auto() {
    let Some(guest) = LinuxGuest::for_test() else { return };
    let dir = Scratch::new("spin-programs");
    let spin = bt86_tests::linux::programs::build(bt86_tests::linux::programs::SPIN, &dir.0.with_extension("d"))
        .unwrap_or_else(|e| panic!("assembling the spin program: {e}"));
    let _ = std::fs::remove_dir_all(dir.0.with_extension("d"));
    // About 1.5 s natively here.
    let rounds = 600_000_000;
    let init = format!(
        "#!/bin/sh\nmount -t proc proc /proc\necho \"spin: from $(cut -d' ' -f1 /proc/uptime)\"\n/bin/spin {rounds} reload\n\
         echo \"spin: to $(cut -d' ' -f1 /proc/uptime)\"\npoweroff -f\n"
    );
    let (console, err, status, direct) = run_with_programs(&guest, "spin.gz", &init, &[("spin", &spin)], &[]);
    let context = format!("{}bt86 said: {err}\ndirect execution: {direct}", console_tail(&console));
    assert!(console.contains(&format!("\n{}\n", bt86_tests::linux::programs::spin_result(rounds))), "{context}");
    assert_eq!(status, Some(0), "{context}");
    assert_eq!(direct["mode"].as_str(), Some("auto"), "auto is the default: {context}");
    if !direct_available(&direct) {
        return;
    }
    let uptime = |what: &str| {
        console
            .lines()
            .find_map(|l| l.strip_prefix(&format!("spin: {what} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {what} time: {context}"))
    };
    let loop_seconds = uptime("to") - uptime("from");
    let seconds = direct["seconds"].as_f64().unwrap_or(0.0);
    eprintln!("spin: {loop_seconds:.2} s, {seconds:.2} s of it direct: {direct}");
    assert!(seconds >= 0.8 * loop_seconds, "{seconds:.2} s direct of a {loop_seconds:.2} s loop: {context}");
    assert!(direct["mode_switches"].as_u64().unwrap_or(0) >= 1, "{context}");
    // After the loop it reloads %ds with 0x7b, which the host gives its own meaning:
    // repaired, and its address space runs translated from then on.
    assert!(direct["segment_repairs"].as_u64().unwrap_or(0) >= 1, "{context}");
    assert!(direct["pinned_translated"].as_u64().unwrap_or(0) >= 1, "{context}");
}
