//! Why a run was stopped from outside, and who stops it: the `--timeout` and
//! `--checkpoint-after` watchdogs, the console's Ctrl-A escapes, and the
//! termination signals.
//!
//! Each sets the cause ([`StopCause`]) first, then asks the VM to stop through its
//! [`StopHandle`]; the run then returns `Stopped`, and the report says why (or a
//! checkpoint is saved). The first cause wins, except that a checkpoint the run
//! continues after gives way to any other.

use bt86_runtime::devices::console_input::{self, Escape, ESCAPE_HELP};
use bt86_runtime::StopHandle;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why the run was stopped from outside the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// `--timeout` passed.
    Timeout,
    /// Ctrl-A x on the console.
    Quit,
    /// A termination signal (its number).
    Signal(i32),
    /// Save a checkpoint (`--checkpoint-after`, Ctrl-A s or c), then stop, or continue
    /// the run if `and_continue`.
    Checkpoint { and_continue: bool },
}

const NONE: i32 = 0;
const TIMEOUT: i32 = -1;
const QUIT: i32 = -2;
const CHECKPOINT: i32 = -3;
const CHECKPOINT_CONTINUE: i32 = -4;

/// The first cause recorded (0: none; negative: timeout/quit; positive: a signal).
static CAUSE: AtomicI32 = AtomicI32::new(NONE);
/// The running VM's stop handle, once there is one.
static HANDLE: Mutex<Option<StopHandle>> = Mutex::new(None);
/// The guest has started: a stop request now goes to the VM.
static STARTED: AtomicBool = AtomicBool::new(false);

/// The cause recorded, if any.
pub fn cause() -> Option<StopCause> {
    match CAUSE.load(Ordering::SeqCst) {
        NONE => None,
        TIMEOUT => Some(StopCause::Timeout),
        QUIT => Some(StopCause::Quit),
        CHECKPOINT => Some(StopCause::Checkpoint { and_continue: false }),
        CHECKPOINT_CONTINUE => Some(StopCause::Checkpoint { and_continue: true }),
        s => Some(StopCause::Signal(s)),
    }
}

/// Records `cause` (the first one wins, but any cause replaces a checkpoint that
/// continues) and stops the VM if it runs; false if no VM has started yet.
pub fn request_stop(cause: StopCause) -> bool {
    let code = match cause {
        StopCause::Timeout => TIMEOUT,
        StopCause::Quit => QUIT,
        StopCause::Signal(s) => s,
        StopCause::Checkpoint { and_continue: false } => CHECKPOINT,
        StopCause::Checkpoint { and_continue: true } => CHECKPOINT_CONTINUE,
    };
    let _ = CAUSE.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| (c == NONE || c == CHECKPOINT_CONTINUE).then_some(code));
    if !STARTED.load(Ordering::SeqCst) {
        return false;
    }
    if let Some(h) = HANDLE.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        h.stop();
    }
    true
}

/// The guest is about to run under `handle` (None: the engine cannot be stopped from
/// outside, e.g. KVM, which keeps its own time limit).
pub fn started(handle: Option<StopHandle>) {
    *HANDLE.lock().unwrap_or_else(|e| e.into_inner()) = handle;
    STARTED.store(true, Ordering::SeqCst);
}

/// After a checkpoint that continues: withdraws the stop so the run can go on
/// (`clear` withdraws it from the VM), unless another cause came in meanwhile.
/// True if the run may continue.
pub fn continue_after_checkpoint(clear: impl FnOnce()) -> bool {
    // The VM's stop first: a cause arriving after it stops the VM again.
    clear();
    CAUSE.compare_exchange(CHECKPOINT_CONTINUE, NONE, Ordering::SeqCst, Ordering::SeqCst).is_ok()
}

/// Asks for a checkpoint after `after` of run time (from now), then a stop.
pub fn checkpoint_after(after: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        request_stop(StopCause::Checkpoint { and_continue: false });
    });
}

/// Restores what bt86 changed on the terminal: raw mode and the full-screen display.
pub fn restore_terminal() {
    crate::display::leave();
    console_input::restore_terminal();
}

/// Stops the run when `limit` passes (from now).
pub fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        if !request_stop(StopCause::Timeout) {
            // Still reading the kernel (a FIFO nobody writes, ...).
            restore_terminal();
            eprintln!("bt86: --timeout reached before the guest started");
            std::process::exit(i32::from(crate::run::EXIT_GUEST_FAILED));
        }
    });
}

/// Takes the termination signals: the first stops the run (the main thread then
/// reports and ends by the same signal); if the run does not end within a few seconds,
/// or has not started, the terminal is restored here and bt86 ends at once.
pub fn handle_signals() {
    let r = crate::signals::spawn(|sig| {
        if request_stop(StopCause::Signal(sig)) {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(3));
                restore_terminal();
                crate::signals::reraise(sig);
            });
        } else {
            restore_terminal();
            crate::signals::reraise(sig);
        }
    });
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot watch for termination signals");
    }
}

/// Where the escapes print their messages: standard error, or the display's pane.
pub type Say = Arc<dyn Fn(&str) + Send + Sync>;

/// The handler of the console's Ctrl-A escapes; `checkpoints`: a `--checkpoint` file
/// was given (Ctrl-A s and c save there).
pub fn escape_handler(say: Say, checkpoints: bool) -> console_input::EscapeHandler {
    Arc::new(move |e| match e {
        Escape::Quit => {
            request_stop(StopCause::Quit);
        }
        Escape::Help => say(ESCAPE_HELP),
        Escape::Checkpoint | Escape::CheckpointContinue if !checkpoints => {
            say("bt86: no checkpoint: give bt86 run --checkpoint FILE to save one with Ctrl-A s or c\r\n");
        }
        Escape::Checkpoint => {
            request_stop(StopCause::Checkpoint { and_continue: false });
        }
        Escape::CheckpointContinue => {
            request_stop(StopCause::Checkpoint { and_continue: true });
        }
        Escape::Unknown(b) => say(&format!("bt86: Ctrl-A {}: no such escape (Ctrl-A h lists them)\r\n", printable(b))),
    })
}

fn printable(b: u8) -> String {
    match b {
        0x20..=0x7e => char::from(b).to_string(),
        0..=0x1f => format!("Ctrl-{}", char::from(b + 0x40)),
        _ => format!("{b:#04x}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_escapes_are_named() {
        assert_eq!(super::printable(b'q'), "q");
        assert_eq!(super::printable(0x02), "Ctrl-B");
        assert_eq!(super::printable(0xe9), "0xe9");
    }
}
