//! `bt86 compare`: the table of engines for a tiny hand-assembled guest. QEMU may or
//! may not be installed: the main test hides it (PATH without it), another checks its
//! row only where it is installed.

use bt86_runtime::kvm::{self, Backing, KvmUnavailable};
use std::path::PathBuf;
use std::process::{Command, Output};

fn bt86() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bt86"))
}

/// A minimal multiboot ELF with `code` as the entry point (see `bt86_tests::images`).
fn multiboot_elf(code: &[u8]) -> Vec<u8> {
    bt86_tests::images::multiboot_elf(code, &[])
}

/// Prints "K" on COM1, then exits with 7 (after `prefix`).
fn k_guest(prefix: &[u8]) -> Vec<u8> {
    let mut code = prefix.to_vec();
    code.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03, 0xb0, b'K', 0xee]);
    code.extend_from_slice(&[0xb8, 7, 0, 0, 0, 0x66, 0xba, 0xf4, 0x00, 0xef, 0xeb, 0xfe]);
    multiboot_elf(&code)
}

fn tmp_image(name: &str, bytes: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("bt86-compare-{}-{name}.elf", std::process::id()));
    std::fs::write(&p, bytes).expect("write temp image");
    p
}

fn compare(name: &str, image: &[u8], path_env: Option<&str>) -> Output {
    let p = tmp_image(name, image);
    let mut cmd = bt86();
    cmd.arg("compare").arg("--kernel").arg(&p).args(["--allow-software-kvm", "--timeout", "20"]);
    if let Some(path) = path_env {
        cmd.env("PATH", path);
    }
    let out = cmd.output().expect("run bt86 compare");
    let _ = std::fs::remove_file(&p);
    out
}

fn row<'a>(table: &'a str, engine: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(engine))
        .unwrap_or_else(|| panic!("no {engine} row in:\n{table}"))
}

fn usable_kvm() -> bool {
    match kvm::check_host() {
        Ok(_) => true,
        Err(e) => e.software_host().is_some(),
    }
}

#[test]
fn table_has_bt_and_kvm_rows_that_match() {
    // No qemu-system-i386 on this PATH: the result must not depend on it.
    let out = compare("table", &k_guest(&[]), Some("/nonexistent"));
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{table}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(table.contains("wall time") && table.contains("vs fastest") && table.contains("guest exits"), "{table}");
    let bt = row(&table, "bt");
    assert!(bt.contains("exit 7") && bt.contains("match"), "{bt}");
    let kvm_row = row(&table, "kvm");
    if usable_kvm() {
        assert!(kvm_row.contains("exit 7") && kvm_row.ends_with("match"), "{kvm_row}");
        // Two port writes: guest exits 2 for both engines; 2 callouts for bt.
        assert_eq!(kvm_row.split_whitespace().nth(4), Some("2"), "{kvm_row}");
        assert_eq!(bt.split_whitespace().nth(5), Some("2"), "{bt}");
    } else {
        assert!(kvm_row.contains("skipped"), "{kvm_row}");
    }
    assert!(row(&table, "qemu").contains("skipped"), "{table}");
    assert!(table.contains("engines that ran agree"), "{table}");
}

#[test]
fn software_kvm_is_skipped_without_the_flag() {
    let Err(e @ KvmUnavailable::Software { .. }) = kvm::check_host() else { return };
    let p = tmp_image("noflag", &k_guest(&[]));
    let out = bt86().arg("compare").arg("--kernel").arg(&p).env("PATH", "/nonexistent").output().expect("run");
    let _ = std::fs::remove_file(&p);
    let table = String::from_utf8_lossy(&out.stdout);
    let kvm_row = row(&table, "kvm");
    assert!(kvm_row.contains("skipped") && kvm_row.contains(&e.to_string()), "{kvm_row}");
    assert_eq!(out.status.code(), Some(0), "bt alone agrees with itself: {table}");
}

#[test]
fn qemu_row_when_installed() {
    if !bt86_tests::qemu_installed() {
        return;
    }
    let out = compare("qemu", &k_guest(&[]), None);
    let table = String::from_utf8_lossy(&out.stdout);
    let q = row(&table, "qemu");
    assert!(!q.contains("skipped"), "{q}");
    assert!(q.contains("exit 7") && q.contains("match"), "{table}");
    // QEMU has no exit count.
    assert_eq!(q.split_whitespace().nth(4), Some("-"), "{q}");
}

#[test]
fn disagreement_is_exit_status_1() {
    // lar first: the software KVM here (kvm_pvm) cannot emulate it, bt can.
    let Err(KvmUnavailable::Software { host }) = kvm::check_host() else { return };
    if host.backing != (Backing::Software { module: Some("kvm_pvm".into()) }) {
        return;
    }
    let out = compare("lar", &k_guest(&[0x0f, 0x02, 0xc8]), Some("/nonexistent"));
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{table}");
    let kvm_row = row(&table, "kvm");
    assert!(kvm_row.contains("failed") && kvm_row.contains("DIFFERS"), "{kvm_row}");
    assert!(table.contains("KVM emulation failure on instruction bytes 0f 02 c8"), "{table}");
    assert!(table.contains("the engines disagree"), "{table}");
}

#[test]
fn missing_kernel_is_bad_input() {
    let out = bt86().args(["compare", "--kernel", "/nonexistent/k.elf"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read kernel image"));
}

#[test]
fn unloadable_kernel_is_bad_input_before_any_engine_runs() {
    let p = tmp_image("garbage", b"not a kernel at all");
    let out = bt86().arg("compare").arg("--kernel").arg(&p).output().expect("run");
    let _ = std::fs::remove_file(&p);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot load the kernel") && !err.contains("running"), "{err}");
    for bad in [["--mem", "0"], ["--runs", "0"], ["--timeout", "-1"]] {
        let out = bt86().args(["compare", "--kernel", bt86_tests::guests::HELLO]).args(bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn runs_report_the_median_and_the_spread_with_progress() {
    let p = tmp_image("runs", &k_guest(&[]));
    let out = bt86()
        .arg("compare")
        .arg("--kernel")
        .arg(&p)
        .args(["--runs", "3", "--timeout", "20"])
        .env("PATH", "/nonexistent")
        .output()
        .expect("run");
    let _ = std::fs::remove_file(&p);
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{table}");
    assert!(table.contains("median") && table.contains("spread"), "{table}");
    assert!(row(&table, "bt").contains("exit 7"), "{table}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("running bt (run 3 of 3)"), "{err}");
}

/// The kit's guests that print the multiboot state, the sensitive instructions and a
/// timer-driven OS agree with QEMU, lines marked as varying aside (timer ticks, CPUID).
#[test]
fn kit_guests_agree_with_qemu() {
    if !bt86_tests::qemu_installed() {
        return;
    }
    use bt86_tests::guests;
    for g in [guests::HELLO, guests::SENSITIVE, guests::PMODE] {
        let out = bt86().args(["compare", "--kernel", g, "--timeout", "60"]).output().expect("run");
        let table = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{g}:\n{table}");
        assert!(row(&table, "qemu").ends_with("match"), "{table}");
    }
}
