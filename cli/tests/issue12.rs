//! Issue 12 item 6: an endless or blocking kernel file must not take bt86's memory or
//! time: reading is capped by what guest RAM can hold, and `--timeout` applies from
//! the start.

use std::process::Command;
use std::time::{Duration, Instant};

fn bt86() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bt86"))
}

/// The largest resident set of the children this test process has waited for, in KiB.
fn children_max_rss_kb() -> i64 {
    // SAFETY: getrusage writes only into the zeroed struct we pass.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u.ru_maxrss
    }
}

#[test]
fn dev_zero_as_kernel_is_refused_without_reading_gigabytes() {
    let started = Instant::now();
    let out = bt86().args(["run", "--kernel", "/dev/zero", "--mem", "16", "--timeout", "20"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let rss_mib = children_max_rss_kb() >> 10;
    assert!(rss_mib < 256, "bt86 grew to {rss_mib} MiB reading /dev/zero");
}

#[test]
fn a_fifo_nobody_writes_ends_at_the_timeout() {
    let path = std::env::temp_dir().join(format!("bt86-issue12-fifo-{}", std::process::id()));
    let c = std::ffi::CString::new(path.to_str().expect("utf-8 path")).expect("no NUL");
    // SAFETY: mkfifo reads the NUL-terminated path only.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let started = Instant::now();
    let out = bt86().args(["run", "--timeout", "1", "--kernel"]).arg(&path).output().expect("runs");
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(6), "took {:?}", started.elapsed());
}
