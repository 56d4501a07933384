//! The benchmark programs themselves: the native build runs and prints the expected
//! checksum; the guest kernel does the same under QEMU TCG (ignored by default: it
//! takes a few seconds; `cargo test -p bt86-benches -- --ignored`) and under bt86
//! (ignored too, and skipped when bt86 is not built).

use bt86_benches::*;
use std::path::Path;

#[test]
fn native_program_prints_expected_checksum() {
    let s = run_native(Path::new(NATIVE_PROGRAM), DEFAULT_TIMEOUT).expect("native run");
    assert_eq!(s.exit_code, Some(0));
    assert_eq!(s.line.checksum, EXPECTED_CHECKSUM, "{s:?}");
    assert!(s.line.cycles > 0);
}

#[test]
#[ignore = "runs QEMU TCG for about 4 s"]
fn guest_kernel_matches_under_qemu() {
    let Some(qemu) = find_qemu() else {
        eprintln!("qemu-system-i386 not installed; skipping");
        return;
    };
    let s = run_qemu(&qemu, Path::new(GUEST_KERNEL), DEFAULT_TIMEOUT).expect("qemu run");
    assert_eq!(s.exit_code, Some(Engine::QemuTcg.expected_exit_code()));
    assert_eq!(s.line.checksum, EXPECTED_CHECKSUM, "{s:?}");
}

#[test]
#[ignore = "needs a release build of bt86 and takes seconds"]
fn guest_kernel_matches_under_bt86() {
    let bt86 = match find_bt86() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("{why}; skipping");
            return;
        }
    };
    let s = run_bt86(&bt86, Path::new(GUEST_KERNEL), DEFAULT_TIMEOUT).expect("bt86 run");
    assert_eq!(s.line.checksum, EXPECTED_CHECKSUM, "{s:?}");
    assert_eq!(s.exit_code, Some(Engine::Bt86.expected_exit_code()));
}
