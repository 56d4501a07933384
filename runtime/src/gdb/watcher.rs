//! A thread that pauses the running guest when a socket becomes readable: gdb
//! sent its Ctrl-C (or closed the connection) while the guest runs, or gdb
//! connects to a guest that runs free. Told to stop, and joined, when dropped,
//! so it never outlives the run it watches.

use crate::debug::DebugInterrupt;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use std::io::Write;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

pub(super) struct Watcher {
    /// Written on drop: the thread stops waiting.
    cancel: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Watches `fd` (a duplicate of it: the caller keeps using its own).
    pub(super) fn start(fd: BorrowedFd<'_>, interrupt: DebugInterrupt) -> std::io::Result<Self> {
        let fd = fd.try_clone_to_owned()?;
        let (cancel, cancelled) = UnixStream::pair()?;
        let thread = std::thread::Builder::new().name("bt86-gdb-watch".into()).spawn(move || {
            if wait_readable(&fd, &cancelled) {
                interrupt.interrupt();
            }
        })?;
        Ok(Self { cancel, thread: Some(thread) })
    }
}

/// Blocks until `fd` or `cancelled` is readable (or hung up); true if it was
/// `fd` alone.
fn wait_readable(fd: &OwnedFd, cancelled: &UnixStream) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::IN), PollFd::new(cancelled, PollFlags::IN)];
    loop {
        match poll(&mut fds, None) {
            Ok(_) => return fds[1].revents().is_empty() && !fds[0].revents().is_empty(),
            Err(Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = (&self.cancel).write_all(&[0]);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn readable_fd_wins_and_cancel_stops_waiting() {
        let (mut gdb, stub) = UnixStream::pair().unwrap();
        let (cancel, cancelled) = UnixStream::pair().unwrap();
        let fd = stub.as_fd().try_clone_to_owned().unwrap();
        gdb.write_all(&[3]).unwrap();
        assert!(wait_readable(&fd, &cancelled));
        (&cancel).write_all(&[0]).unwrap();
        assert!(!wait_readable(&fd, &cancelled), "cancelled: not the watched fd's doing");
    }
}
