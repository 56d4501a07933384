//! The `bt86` command: help, bad input, the demo and `--stats=json`.

use std::process::Command;

fn bt86() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bt86"))
}

fn tmp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("bt86-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, bytes).expect("write temp file");
    p
}

#[test]
fn help_lists_the_commands() {
    let out = bt86().arg("--help").output().expect("run bt86");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("run") && text.contains("demo"), "{text}");
}

#[test]
fn missing_kernel_is_bad_input() {
    let out = bt86().args(["run", "--kernel", "/nonexistent/kernel.elf"]).output().expect("run bt86");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read kernel image"));
}

#[test]
fn non_elf_kernel_is_bad_input() {
    let p = tmp_file("garbage", b"this is not an ELF file at all");
    let out = bt86().args(["run", "--kernel"]).arg(&p).output().expect("run bt86");
    let _ = std::fs::remove_file(&p);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn sixty_four_bit_elf_is_bad_input() {
    // The test binary itself is a 64-bit ELF.
    let me = std::env::current_exe().expect("current exe");
    let out = bt86().args(["run", "--kernel"]).arg(&me).output().expect("run bt86");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("64-bit"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn absurd_memory_size_is_bad_input() {
    let out = bt86().args(["demo", "--mem", "0"]).output().expect("run bt86");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn demo_runs_and_reports_json_statistics() {
    let out = bt86().args(["demo", "--stats=json"]).output().expect("run bt86");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{}\nstderr:\n{stderr}", String::from_utf8_lossy(&out.stdout));
    let json_line = stderr.lines().rev().find(|l| l.starts_with('{')).expect("a JSON line");
    let v: serde_json::Value = serde_json::from_str(json_line).expect("valid JSON");
    for key in ["units_translated", "code_cache_bytes", "chained_jumps", "callouts", "guest_exits"] {
        assert!(v.get(key).is_some(), "missing {key}: {json_line}");
    }
    assert!(v["callouts"].as_object().is_some_and(|c| !c.is_empty()), "{json_line}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("push"), "demo output names the instructions");
}
