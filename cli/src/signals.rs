//! The termination signals (SIGINT, SIGTERM, SIGHUP, SIGQUIT) of `bt86 run`: they are
//! blocked in every thread from the start ([`block`], before any thread exists) and
//! taken by one thread with `sigwait` ([`spawn`]), which asks the run to stop. The main
//! thread then restores the terminal, prints the statistics and ends by the same signal
//! ([`reraise`]), so the parent sees how bt86 ended. Only SIGKILL escapes this.

use std::io;

/// The signals handled.
pub const TERMINATING: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

fn set_of(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it before any use, and
    // sigaddset only writes inside it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the termination signals in the calling thread, and so in every thread it
/// starts afterwards. Call before any other thread exists.
pub fn block() -> io::Result<()> {
    let set = set_of(&TERMINATING);
    // SAFETY: `set` is an initialized signal set; the old mask is not asked for.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Starts the thread that waits for a termination signal and calls `on_signal` with
/// its number, for each one.
pub fn spawn(on_signal: impl Fn(i32) + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new().name("bt86-signals".into()).spawn(move || {
        let set = set_of(&TERMINATING);
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is initialized and `sig` is a valid place for the result.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc == 0 {
                on_signal(sig);
            }
        }
    })?;
    Ok(())
}

/// Ends the process by `sig` with its default action (terminate; SIGQUIT also dumps
/// core where allowed), as if bt86 had not caught it.
pub fn reraise(sig: i32) -> ! {
    let set = set_of(&[sig]);
    // SAFETY: resetting a signal's disposition to SIG_DFL and unblocking it in this
    // thread touch only process signal state; `set` is initialized.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
    // Not reached for the signals above; the shell's convention otherwise.
    std::process::exit(128 + sig)
}

/// The signal's name, for messages.
pub fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        _ => "a signal",
    }
}
