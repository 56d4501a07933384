//! The console, the screen and what `bt86 run` reports: the VGA guest's screen as a
//! file, the hint, statistics with a stop record, exit-code styles, and — under tmux,
//! a real terminal — the interactive console (raw mode, Ctrl-C to the guest, the
//! Ctrl-A escapes), the terminal restored after a signal, and `--display vga` with the
//! keyboard. The tmux tests skip, saying so, where tmux is not installed
//! (`apt-get install -y tmux`).

use bt86_tests::guests;
use bt86_tests::tmux::Tmux;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn bt86() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bt86"))
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("bt86-console-{}-{name}", std::process::id()))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(args: &[&str]) -> Output {
    bt86().args(args).output().expect("run bt86")
}

#[test]
fn vga_guest_screen_is_written_as_text() {
    let screen = tmp("screen.txt");
    let out = bt86().args(["run", "--kernel", guests::VGA, "--screen"]).arg(&screen).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "the guest writes only the screen");
    let s = std::fs::read_to_string(&screen).unwrap();
    let _ = std::fs::remove_file(&screen);
    let lines: Vec<&str> = s.lines().collect();
    // What QEMU's VGA shows for the same guest (checked with a dump of 0xB8000).
    assert_eq!(lines[0], "bt86 VGA text mode: hello from 0xB8000");
    assert_eq!(lines[1], "0123456789ABCDEF");
    assert_eq!(lines[2], "╔══╗ ░▒▓█ ♥♫");
    assert_eq!(lines[3], "misc=67 cur_start=0d cur_end=0e cursor=01:90 retrace=y");
    assert_eq!(lines[4], "scrolled: row 24 is now row 23");
    assert_eq!(lines.len(), 24, "blank rows inside kept, trailing ones trimmed: {s:?}");
    assert_eq!(lines[23], "last row before the scroll");
    assert!(lines.iter().all(|l| l.len() == l.trim_end().len()), "trailing blanks trimmed");
}

#[test]
fn a_screen_nobody_sees_gets_a_hint() {
    let out = run(&["run", "--kernel", guests::VGA]);
    assert_eq!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert_eq!(err.matches("--display vga").count(), 1, "said once: {err}");
    // A serial-only guest gets none.
    let out = run(&["run", "--kernel", guests::HELLO]);
    assert!(!text(&out.stderr).contains("--display vga"), "{}", text(&out.stderr));
}

#[test]
fn display_vga_needs_a_terminal() {
    let out = run(&["run", "--kernel", guests::VGA, "--display", "vga"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not one"), "{}", text(&out.stderr));
}

#[test]
fn stats_json_with_a_space_reports_how_the_run_stopped() {
    let out = run(&["run", "--kernel", guests::EXIT_CODE, "--stats", "json"]);
    assert_eq!(out.status.code(), Some(42));
    let err = text(&out.stderr);
    let line = err.lines().find(|l| l.starts_with('{')).expect("a JSON line");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["stop"]["reason"], "guest-exit");
    assert_eq!(v["stop"]["exit_status"], 42);
    assert!(v["units_translated"].as_u64().unwrap() > 0);
    // Text: the same groups, stop included.
    let out = run(&["run", "--kernel", guests::EXIT_CODE, "--stats"]);
    let t = text(&out.stderr);
    for k in v.as_object().unwrap().keys() {
        assert!(t.lines().any(|l| l.trim_start().starts_with(k.as_str())), "{k} missing in the text:\n{t}");
    }
}

#[test]
fn stats_file_timeout_and_bad_input_all_have_a_stop() {
    let f = tmp("stats.json");
    let path = f.to_str().unwrap();
    // The echo guest waits for input that never comes (its stdin stays open): --timeout
    // ends it.
    let mut child = bt86()
        .args(["run", "--kernel", guests::ECHO, "--timeout", "0.3", "--stats-file", path])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
    assert_eq!(v["stop"]["reason"], "timeout");
    assert_eq!(v["stop"]["exit_status"], 3);
    assert!(v["guest_exits"].as_u64().is_some(), "engine counters too");
    // Bad input: a stop record, no counters.
    let out = run(&["run", "--kernel", "/nonexistent/k.elf", "--stats", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    let v: serde_json::Value = serde_json::from_str(err.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
    assert_eq!(v["stop"]["reason"], "bad-input");
    let _ = std::fs::remove_file(&f);
}

#[test]
fn exit_code_style_qemu_keeps_guest_values_odd() {
    let out = run(&["run", "--kernel", guests::EXIT_CODE, "--exit-code-style", "qemu"]);
    assert_eq!(out.status.code(), Some(85), "(42 << 1) | 1");
    let out = run(&["run", "--kernel", guests::EXC_UD, "--exit-code-style", "qemu"]);
    assert_eq!(out.status.code(), Some(6), "bt86's own statuses are even: {}", text(&out.stderr));
    let out = run(&["run", "--kernel", guests::EXC_UD]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("#UD (vector 6)"), "{}", text(&out.stderr));
}

#[test]
fn mem_errors_report_the_value_given() {
    for v in ["4096", "5000", "0"] {
        let out = run(&["run", "--kernel", guests::HELLO, "--mem", v]);
        assert_eq!(out.status.code(), Some(2));
        let err = text(&out.stderr);
        assert!(err.contains(&format!("'{v}'")) && !err.contains("4095"), "{err}");
    }
}

#[test]
fn trace_file_records_guest_code_and_interrupts() {
    let f = tmp("trace.txt");
    let out = bt86()
        .args(["run", "--kernel", guests::EXC_IDT, "--trace"])
        .arg(&f)
        .args(["--trace-events", "in_asm,out_asm,int"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let t = std::fs::read_to_string(&f).unwrap();
    let _ = std::fs::remove_file(&f);
    assert!(t.contains("IN: guest 0x00100") && t.contains("OUT: guest 0x00100"), "{}", &t[..t.len().min(2000)]);
    assert!(t.contains("INT: vector 0x06") && t.contains("INT: vector 0x08"), "the #UD and the #DF: {}", t.lines().filter(|l| l.starts_with("INT")).collect::<Vec<_>>().join("\n"));
    assert!(t.contains("ud2"), "guest instructions disassembled");
    assert!(!t.contains('\x1b'), "no colour codes in a file");
}

#[test]
fn logs_have_no_colour_codes_off_a_terminal() {
    let out = bt86().args(["run", "--kernel", guests::HELLO]).env("RUST_LOG", "debug").output().unwrap();
    let err = text(&out.stderr);
    assert!(err.contains("DEBUG"), "debug logs shown: {}", &err[..err.len().min(500)]);
    assert!(!err.contains('\x1b'), "no escape sequences when stderr is a pipe");
}

#[test]
fn version_names_the_commit() {
    let out = run(&["--version"]);
    let v = text(&out.stdout);
    assert!(v.starts_with("bt86 ") && v.contains("commit "), "{v}");
}

// ---- under tmux: a real terminal ----

/// The pane's shell: bt86 with `args`, then its exit status and the terminal modes.
fn shell(args: &str) -> String {
    format!(
        "sh -c '{} {args}; echo \"EXIT=$?\"; stty -a | tr -s \" ;\\n\" \"   \" | sed \"s/^/MODES: /\"; sleep 60'",
        env!("CARGO_BIN_EXE_bt86")
    )
}

/// The terminal modes `stty -a` printed after bt86 ended are cooked again.
fn assert_restored(screen: &str) {
    let modes = screen.lines().skip_while(|l| !l.starts_with("MODES:")).collect::<Vec<_>>().join(" ");
    for m in [" icanon ", " echo ", " isig ", " icrnl "] {
        assert!(modes.contains(m), "terminal not restored ({m:?} missing):\n{screen}");
    }
}

#[test]
fn interactive_console_echoes_passes_ctrl_c_and_ends_with_ctrl_a_x() {
    let Some(t) = Tmux::start("echo", &shell(&format!("run --kernel {} --stats json", guests::ECHO))) else { return };
    t.wait_for("waits for Ctrl-C)");
    t.keys(&["-l", "hello vm"]);
    t.wait_for("> hello vm");
    t.keys(&["BSpace", "BSpace"]);
    t.keys(&["-l", "xx"]);
    t.wait_for("> hello xx");
    t.keys(&["Enter"]);
    t.wait_for("HELLO XX");
    // A foreground command in the guest, interrupted by Ctrl-C: bt86 goes on.
    t.keys(&["-l", "wait"]);
    t.keys(&["Enter"]);
    t.wait_for("waiting until Ctrl-C");
    t.keys(&["C-c"]);
    t.wait_for("wait interrupted");
    // The escapes: help, a checkpoint without --checkpoint, then quit.
    t.keys(&["C-a", "h"]);
    t.wait_for("end bt86");
    t.keys(&["C-a", "s"]);
    t.wait_for("no checkpoint: give bt86 run --checkpoint FILE");
    t.keys(&["C-a", "x"]);
    let s = t.wait_for("MODES:");
    assert!(s.contains("EXIT=0"), "Ctrl-A x ends with status 0:\n{s}");
    assert!(s.contains("\"reason\":\"quit\""), "statistics printed with the stop:\n{s}");
    assert_restored(&s);
}

#[test]
fn ctrl_a_c_saves_and_goes_on_ctrl_a_s_saves_and_stops_and_restore_continues() {
    let file = tmp("console.bt86");
    let Some(t) = Tmux::start("ckpt", &shell(&format!("run --kernel {} --checkpoint {}", guests::ECHO, file.display()))) else { return };
    t.wait_for("waits for Ctrl-C)");
    t.keys(&["-l", "abc"]);
    t.wait_for("> abc");
    t.keys(&["C-a", "c"]);
    t.wait_for("the guest goes on");
    t.keys(&["-l", "d"]);
    // The guest echoes it after bt86's message.
    t.wait_for("goes on\nd");
    t.keys(&["C-a", "s"]);
    let s = t.wait_for("MODES:");
    assert!(s.contains("EXIT=8") && s.contains("bt86 restore"), "Ctrl-A s saves and stops with status 8:\n{s}");
    assert_restored(&s);
    drop(t);
    // A new process, on a new terminal: the guest's half-typed line is still there.
    let Some(t) = Tmux::start("ckpt2", &shell(&format!("restore {}", file.display()))) else { return };
    t.keys(&["-l", "e"]);
    t.wait_for("e");
    t.keys(&["Enter"]);
    t.wait_for("ABCDE");
    t.keys(&["-l", "exit"]);
    t.keys(&["Enter"]);
    let s = t.wait_for("MODES:");
    let _ = std::fs::remove_file(&file);
    assert!(s.contains("EXIT=0"), "{s}");
    assert_restored(&s);
}

#[test]
fn a_signal_restores_the_terminal() {
    for (sig, status) in [(libc::SIGTERM, 143), (libc::SIGHUP, 129), (libc::SIGQUIT, 131)] {
        let Some(t) = Tmux::start(&format!("sig{sig}"), &shell(&format!("run --kernel {} --stats json", guests::ECHO))) else { return };
        t.wait_for("waits for Ctrl-C)");
        let pid = t.child_pid();
        // SAFETY: kill only sends a signal to the bt86 process this test started.
        assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
        let s = t.wait_for("MODES:");
        assert!(s.contains(&format!("EXIT={status}")), "ends by the signal:\n{s}");
        assert!(s.contains("\"reason\":\"signal\""), "statistics on the way out:\n{s}");
        assert_restored(&s);
    }
}

#[test]
fn display_vga_shows_the_screen_and_takes_keys() {
    let screen = tmp("vga-screen.txt");
    let args = format!("run --kernel {} --append keys --display vga --screen {}", guests::VGA, screen.display());
    let Some(t) = Tmux::start("vga", &shell(&args)) else { return };
    let s = t.wait_for("keys>");
    assert!(s.contains("bt86 VGA text mode") && s.contains("COM1"), "{s}");
    t.keys(&["-l", "Hi there!"]);
    t.wait_for("keys> Hi there!");
    t.keys(&["BSpace", "Enter"]);
    let s = t.wait_for("MODES:");
    assert!(s.contains("EXIT=0"), "{s}");
    assert!(!s.contains("bt86 VGA text mode"), "the full-screen view is gone:\n{s}");
    assert_restored(&s);
    let text = std::fs::read_to_string(&screen).unwrap();
    let _ = std::fs::remove_file(&screen);
    assert!(text.contains("keys> Hi there\n") && text.contains("keys: done"), "{text}");
}

/// The vga guest's screen under bt86 (`--screen`) is QEMU's: its text buffer dumped
/// from QEMU's monitor once the guest has halted, read as text the same way.
#[test]
fn vga_screen_matches_qemu() {
    use bt86_runtime::devices::vga::{Cell, TextScreen};
    use std::io::Write;
    if !bt86_tests::qemu_installed() {
        return;
    }
    let (dump, screen) = (tmp("qemu-vga.bin"), tmp("bt86-vga.txt"));
    let mut q = Command::new("qemu-system-i386")
        .args(["-kernel", guests::VGA, "-append", "halt", "-m", "64", "-display", "none", "-serial", "none"])
        .args(["-monitor", "stdio", "-no-reboot", "-net", "none"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start qemu");
    let mut monitor = q.stdin.take().unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    let mut raw = Vec::new();
    // Dump until the guest's last write is there (the last character of row 4's text;
    // it halts right after).
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(300));
        writeln!(monitor, "pmemsave 0xb8000 4000 \"{}\"", dump.display()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        raw = std::fs::read(&dump).unwrap_or_default();
        if raw.len() == 4000 && raw[4 * 160 + 29 * 2] == b'3' {
            break;
        }
    }
    let _ = writeln!(monitor, "quit");
    let _ = q.wait();
    let _ = std::fs::remove_file(&dump);
    assert_eq!(raw.len(), 4000, "no dump from QEMU");
    let cells = raw.chunks(2).map(|c| Cell { ch: c[0], attr: c[1] }).collect();
    let qemu = TextScreen { cells, cursor: None }.to_text();
    let out = bt86().args(["run", "--kernel", guests::VGA, "--append", "halt", "--screen"]).arg(&screen).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let ours = std::fs::read_to_string(&screen).unwrap();
    let _ = std::fs::remove_file(&screen);
    assert_eq!(ours, qemu);
}
