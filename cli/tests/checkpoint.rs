//! `bt86 run --checkpoint FILE --checkpoint-after SECS` and `bt86 restore FILE`: a
//! guest checkpointed after a second and restored in a new process prints what an
//! uninterrupted run prints; a restored guest checkpoints again; the file is small;
//! damaged files and bad options are refused with status 2. (Ctrl-A s and c are
//! tested under tmux in console.rs; KVM in kvm.rs.)

use bt86_runtime::checkpoint::{Checkpoint, FORMAT_VERSION};
use bt86_tests::guests;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bt86() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bt86"))
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("bt86-ckpt-{}-{name}", std::process::id()))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(args: &[&str]) -> Output {
    bt86().args(args).output().expect("run bt86")
}

fn restore(file: &Path, extra: &[&str]) -> Output {
    bt86().arg("restore").arg(file).args(extra).output().expect("run bt86")
}

/// The ticker guest's whole output, uninterrupted.
fn uninterrupted(cmdline: &str) -> String {
    let out = run(&["run", "--kernel", guests::TICKER, "--append", cmdline]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// `bt86 run` of the ticker that checkpoints to `file` after `after` seconds.
fn run_and_checkpoint(cmdline: &str, file: &Path, after: &str) -> Output {
    let out = bt86()
        .args(["run", "--kernel", guests::TICKER, "--append", cmdline, "--checkpoint"])
        .arg(file)
        .args(["--checkpoint-after", after, "--stats", "json"])
        .output()
        .expect("run bt86");
    assert_eq!(out.status.code(), Some(8), "stopped by the checkpoint: {}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("checkpoint saved to") && err.contains("bt86 restore"), "{err}");
    assert!(err.contains("\"reason\":\"checkpoint\""), "{err}");
    out
}

#[test]
fn checkpointed_after_a_second_and_restored_in_a_new_process_prints_the_same() {
    let cmdline = "steps=1600 maxgap=1000";
    let whole = uninterrupted(cmdline);
    let file = tmp("second.bt86");
    let first = run_and_checkpoint(cmdline, &file, "1");
    // 128 MiB of RAM, of which the guest touched about 1.1 MiB.
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size < 3 << 20, "checkpoint of {size} bytes");
    // The guest checks that neither its timer nor its TSC moves by a second or more
    // between two steps: the time the file waits must not show.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let second = restore(&file, &[]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second.stderr));
    let joined = text(&first.stdout) + &text(&second.stdout);
    assert!(!text(&first.stdout).contains("RESULT"), "checkpointed before the end");
    assert_eq!(joined, whole, "the checkpointed run prints what the uninterrupted one does");
}

#[test]
fn a_restored_paging_guest_checkpoints_again() {
    let cmdline = "steps=800 paging";
    let whole = uninterrupted(cmdline);
    let (a, b) = (tmp("again-a.bt86"), tmp("again-b.bt86"));
    let first = run_and_checkpoint(cmdline, &a, "0.3");
    let second = restore(&a, &["--checkpoint", b.to_str().unwrap(), "--checkpoint-after", "0.2"]);
    assert_eq!(second.status.code(), Some(8), "{}", text(&second.stderr));
    let third = restore(&b, &["--stats", "json"]);
    assert_eq!(third.status.code(), Some(0), "{}", text(&third.stderr));
    assert!(text(&third.stderr).contains("\"reason\":\"guest-exit\""));
    for f in [&a, &b] {
        let _ = std::fs::remove_file(f);
    }
    let joined = text(&first.stdout) + &text(&second.stdout) + &text(&third.stdout);
    assert_eq!(joined, whole);
}

/// Rewrites the header's own checksum after changing the header.
fn reseal(bytes: &mut [u8]) {
    let crc = crc32(&bytes[..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
}

/// CRC-32 (IEEE), bit by bit: what the header uses, computed independently.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn damaged_checkpoints_are_refused_with_status_2() {
    let file = tmp("good.bt86");
    run_and_checkpoint("steps=100000", &file, "0.2");
    let good = std::fs::read(&file).unwrap();
    assert_eq!(&good[..8], b"BT86CKPT");
    assert!(Checkpoint::from_bytes(&good).is_ok());
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    let mut corrupt = good.clone();
    let at = good.len() / 2;
    corrupt[at] ^= 0x10;
    cases.push(("corrupt", corrupt, "corrupt"));
    cases.push(("truncated", good[..good.len() - 4096].to_vec(), "truncated"));
    let mut version = good.clone();
    version[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    reseal(&mut version);
    cases.push(("version", version, "format version"));
    let mut engine = good.clone();
    engine[12..16].copy_from_slice(&7u32.to_le_bytes());
    reseal(&mut engine);
    cases.push(("engine", engine, "engine 7"));
    cases.push(("elf", std::fs::read(guests::TICKER).unwrap(), "not a bt86 checkpoint"));
    for (name, bytes, says) in cases {
        let f = tmp(name);
        std::fs::write(&f, bytes).unwrap();
        let out = restore(&f, &["--stats", "json"]);
        let _ = std::fs::remove_file(&f);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains("cannot restore") && err.contains(says), "{name}: {err}");
        assert!(err.contains("\"reason\":\"bad-input\""), "{name}: {err}");
        assert!(out.stdout.is_empty(), "{name}: nothing ran");
    }
    let out = restore(&tmp("missing"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read"), "{}", text(&out.stderr));
    let _ = std::fs::remove_file(&file);
}

#[test]
fn checkpoint_options_are_checked_before_the_guest_runs() {
    // --checkpoint-after needs --checkpoint.
    let out = run(&["run", "--kernel", guests::TICKER, "--checkpoint-after", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = run(&["run", "--kernel", guests::TICKER, "--checkpoint", "/nonexistent/dir/x.bt86"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot write the checkpoint"), "{}", text(&out.stderr));
    let f = tmp("opts.bt86");
    let out = bt86().args(["run", "--kernel", guests::TICKER, "--checkpoint"]).arg(&f).args(["--checkpoint-after", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--checkpoint-after"), "{}", text(&out.stderr));
    assert!(!f.exists(), "nothing written");
    // A guest that ends before the checkpoint is due ends as usual.
    let out = bt86().args(["run", "--kernel", guests::HELLO, "--checkpoint"]).arg(&f).args(["--checkpoint-after", "30"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!f.exists(), "no checkpoint taken");
}

#[test]
fn a_checkpoint_taken_under_kvm_continues_under_bt() {
    use bt86_runtime::checkpoint::Engine;
    use bt86_runtime::kvm;
    if let Err(e) = kvm::check_host() {
        if e.software_host().is_none() {
            eprintln!("skipped: no usable /dev/kvm ({e})");
            return;
        }
    }
    // No timer and no x87/SSE: today's KVM engine delivers no interrupts, and the
    // software KVM of the development machines emulates no x87.
    let cmdline = "steps=150 notimer nofpu every=10";
    let whole = uninterrupted(cmdline);
    let file = tmp("kvm.bt86");
    let first = bt86()
        .args(["run", "--engine", "kvm", "--allow-software-kvm", "--kernel", guests::TICKER, "--append", cmdline, "--checkpoint"])
        .arg(&file)
        .args(["--checkpoint-after", "1"])
        .output()
        .unwrap();
    if first.status.code() == Some(0) {
        eprintln!("skipped: the guest ended under KVM within the second before the checkpoint");
        return;
    }
    assert_eq!(first.status.code(), Some(8), "{}", text(&first.stderr));
    assert_eq!(Checkpoint::read_from(&file).unwrap().engine(), Engine::Kvm);
    // The engine the checkpoint names is the default; --engine bt continues under BT.
    let second = restore(&file, &["--engine", "bt"]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second.stderr));
    assert_eq!(text(&first.stdout) + &text(&second.stdout), whole);
}
