//! The kit's guests, built from source by `build.rs`, and a helper that runs one
//! under bt86 in-process with its console captured.

use bt86_runtime::devices::SharedBuffer;
use bt86_runtime::vm::run_with_timeout;
use bt86_runtime::{RunOutcome, UserCode, Vm, VmConfig};
use std::time::Duration;

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// What a guest run produced.
#[derive(Debug)]
pub struct GuestRun {
    pub outcome: RunOutcome,
    pub console: String,
    pub stats: bt86_runtime::stats::StatsReport,
}

/// Runs the kernel at `path` with `cmdline`, for at most `limit`.
pub fn run_guest(path: &str, cmdline: &str, limit: Duration) -> GuestRun {
    run_guest_with_input(path, cmdline, None, limit)
}

/// `run_guest` with `input` fed to the guest's serial port (then end of input).
pub fn run_guest_with_input(path: &str, cmdline: &str, input: Option<&[u8]>, limit: Duration) -> GuestRun {
    run_guest_full(path, cmdline, input, UserCode::default(), limit)
}

/// `run_guest` with guest user code run as `user_code` says.
pub fn run_guest_user_code(path: &str, cmdline: &str, user_code: UserCode, limit: Duration) -> GuestRun {
    run_guest_full(path, cmdline, None, user_code, limit)
}

fn run_guest_full(path: &str, cmdline: &str, input: Option<&[u8]>, user_code: UserCode, limit: Duration) -> GuestRun {
    let image = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read guest {path}: {e}"));
    let console = SharedBuffer::new();
    let mut vm = Vm::new(VmConfig::new(32, Box::new(console.clone()))).expect("create VM");
    vm.set_user_code(user_code);
    vm.load_multiboot(&image, cmdline).expect("load guest");
    if let Some(bytes) = input {
        vm.attach_console_input(std::io::Cursor::new(bytes.to_vec())).expect("attach input");
    }
    let outcome = run_with_timeout(&mut vm, limit).expect("VMM error");
    vm.flush_devices();
    GuestRun { outcome, console: console.to_string_lossy(), stats: vm.stats() }
}

impl GuestRun {
    /// The console with every line prefixed, so a guest's own "N passed, M failed"
    /// line cannot be mistaken for a test runner's summary in a log.
    pub fn quoted_console(&self) -> String {
        self.console.lines().map(|l| format!("guest| {l}\n")).collect()
    }

    /// Asserts the kit's verdict line reports no failures and the guest exited 0.
    pub fn assert_passed(&self) {
        let failed: Vec<&str> = self.console.lines().filter(|l| l.starts_with("FAIL")).collect();
        assert!(
            failed.is_empty() && self.outcome == RunOutcome::GuestExit(0) && self.console.contains(" 0 failed"),
            "guest failed: {:?}\nfailures:\n{}\nconsole:\n{}",
            self.outcome,
            failed.join("\n"),
            self.quoted_console()
        );
    }
}
