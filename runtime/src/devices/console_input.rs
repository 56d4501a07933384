//! Console input: bytes from the host for the guest's serial console (or keyboard).
//!
//! An [`InputQueue`] sits between a source and the platform: a source thread pushes
//! bytes, the platform moves them into the UART as its receive FIFO has room
//! ([`super::Platform::poll`]), and a halted vCPU sleeps on the queue
//! ([`InputQueue::wait`]) until input arrives, its deadline passes, the source ends, or
//! it is woken. The queue is bounded ([`INPUT_QUEUE_CAPACITY`]).
//!
//! Sources ([`ConsoleInput`]):
//! - the host's standard input. If it is a terminal (and bt86 is in its foreground
//!   process group), the terminal is put in raw mode, as QEMU's `-nographic` does: no
//!   echo, no line buffering, no CR→NL translation, no XON/XOFF, no signal characters —
//!   Ctrl-C, Ctrl-\ and Ctrl-Z are bytes for the guest (Ctrl-C interrupts the guest's
//!   foreground command, not bt86); output processing is left on. Ctrl-A is an escape
//!   prefix ([`Escape`]): the byte after it is a command for bt86, handed to the
//!   handler set with [`ConsoleInput::set_escape_handler`] (without one, Ctrl-A is an
//!   ordinary byte); Ctrl-A Ctrl-A sends one Ctrl-A. The terminal is restored when the
//!   source is dropped, at `exit()` (an `atexit` handler, for `std::process::exit`
//!   paths), and by [`restore_terminal`] (signal handlers call it); only SIGKILL leaves
//!   it raw (`stty sane` repairs that). Terminal input that finds the queue full is
//!   dropped. If standard input is a pipe or a file it is read to its end without loss
//!   (the reader waits for room); at EOF the guest simply sees no more input. If it is
//!   closed, or at EOF already, there is no input. One platform at a time can own
//!   standard input.
//! - any `Read` ([`ConsoleInput::from_reader`]), read to its end without loss.

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

use rustix::termios::{self, InputModes, LocalModes, OptionalActions, SpecialCodeIndex, Termios};

/// Bytes the queue holds at most.
pub const INPUT_QUEUE_CAPACITY: usize = 64 * 1024;

/// How long a blocked producer waits before looking at its stop flag again.
const PRODUCER_RECHECK: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum ConsoleInputError {
    #[error("standard input is already attached to another platform")]
    StdinBusy,
    #[error("cannot start the console input thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Called after a source queued new bytes (e.g. to make a running vCPU exit and poll).
pub type InputNotify = Arc<dyn Fn() + Send + Sync>;

/// The escape prefix on a terminal: Ctrl-A, as in QEMU.
pub const ESCAPE_PREFIX: u8 = 0x01;

/// A command typed after the escape prefix (Ctrl-A) on the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// Ctrl-A x: end bt86.
    Quit,
    /// Ctrl-A h: list the escapes.
    Help,
    /// Ctrl-A s: save a checkpoint to the `--checkpoint` file and stop.
    Checkpoint,
    /// Ctrl-A c: save a checkpoint to the `--checkpoint` file and continue.
    CheckpointContinue,
    /// Ctrl-A followed by a byte that means nothing (dropped).
    Unknown(u8),
}

/// What the escapes do, for Ctrl-A h (lines end in CR LF: the terminal is raw).
pub const ESCAPE_HELP: &str = "bt86 console escapes (Ctrl-A, then):\r\n  \
x        end bt86 (the terminal is restored; statistics printed if --stats)\r\n  \
h        this list\r\n  \
s        save a checkpoint to the --checkpoint file and stop\r\n  \
c        save a checkpoint to the --checkpoint file and continue\r\n  \
Ctrl-A   send Ctrl-A to the guest\r\n\
Ctrl-C, Ctrl-\\ and Ctrl-Z go to the guest.\r\n";

/// Called on the input thread for each escape typed.
pub type EscapeHandler = Arc<dyn Fn(Escape) + Send + Sync>;

/// Splits terminal bytes into guest bytes and escapes: `prefixed` carries "the last
/// byte was the prefix" across reads.
fn split_escapes(bytes: &[u8], prefixed: &mut bool) -> (Vec<u8>, Vec<Escape>) {
    let mut data = Vec::with_capacity(bytes.len());
    let mut escapes = Vec::new();
    for &b in bytes {
        if std::mem::take(prefixed) {
            match b {
                ESCAPE_PREFIX => data.push(ESCAPE_PREFIX),
                b'x' | b'X' => escapes.push(Escape::Quit),
                b'h' | b'H' | b'?' => escapes.push(Escape::Help),
                b's' | b'S' => escapes.push(Escape::Checkpoint),
                b'c' | b'C' => escapes.push(Escape::CheckpointContinue),
                other => escapes.push(Escape::Unknown(other)),
            }
        } else if b == ESCAPE_PREFIX {
            *prefixed = true;
        } else {
            data.push(b);
        }
    }
    (data, escapes)
}

/// Why [`InputQueue::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Input is queued (and was wanted).
    Input,
    /// [`InputQueue::wake`] was called.
    Woken,
    /// The timeout passed.
    Deadline,
    /// The source has ended with nothing queued, and there was no timeout: no input can
    /// ever end this wait.
    Ended,
}

#[derive(Debug, Default)]
struct QueueState {
    bytes: VecDeque<u8>,
    received: u64,
    dropped: u64,
    woken: bool,
    ended: bool,
}

struct Shared {
    state: Mutex<QueueState>,
    cv: Condvar,
    notify: Mutex<Option<InputNotify>>,
}

/// A bounded byte queue from an input source to the platform; clones share it.
#[derive(Clone)]
pub struct InputQueue(Arc<Shared>);

impl std::fmt::Debug for InputQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("InputQueue")
            .field("queued", &st.bytes.len())
            .field("received", &st.received)
            .field("dropped", &st.dropped)
            .finish_non_exhaustive()
    }
}

impl Default for InputQueue {
    fn default() -> Self {
        Self::new()
    }
}

fn relock<'a, T>(r: std::sync::LockResult<MutexGuard<'a, T>>) -> MutexGuard<'a, T> {
    r.unwrap_or_else(|e| e.into_inner())
}

impl InputQueue {
    pub fn new() -> Self {
        Self(Arc::new(Shared {
            state: Mutex::new(QueueState::default()),
            cv: Condvar::new(),
            notify: Mutex::new(None),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        relock(self.0.state.lock())
    }

    fn notify(&self) {
        let f = relock(self.0.notify.lock()).clone();
        if let Some(f) = f {
            f();
        }
    }

    /// Queues as much of `bytes` as fits and drops the rest; returns how many were queued.
    pub fn push(&self, bytes: &[u8]) -> usize {
        if bytes.is_empty() {
            return 0;
        }
        let n = {
            let mut st = self.lock();
            let n = bytes
                .len()
                .min(INPUT_QUEUE_CAPACITY.saturating_sub(st.bytes.len()));
            st.bytes.extend(&bytes[..n]);
            st.received += n as u64;
            st.dropped += (bytes.len() - n) as u64;
            n
        };
        if n < bytes.len() {
            tracing::debug!(
                dropped = bytes.len() - n,
                "console input queue full; input dropped"
            );
        }
        self.0.cv.notify_all();
        if n > 0 {
            self.notify();
        }
        n
    }

    /// Queues all of `bytes`, waiting for room; false if `stop` was set first.
    pub fn push_blocking(&self, mut bytes: &[u8], stop: &AtomicBool) -> bool {
        while !bytes.is_empty() {
            if stop.load(Ordering::Acquire) {
                return false;
            }
            let n = {
                let mut st = self.lock();
                let room = INPUT_QUEUE_CAPACITY.saturating_sub(st.bytes.len());
                if room == 0 {
                    // Wait for the consumer to take some, or for the stop flag.
                    let _guard = match self.0.cv.wait_timeout(st, PRODUCER_RECHECK) {
                        Ok((g, _)) => g,
                        Err(e) => e.into_inner().0,
                    };
                    continue;
                }
                let n = bytes.len().min(room);
                st.bytes.extend(&bytes[..n]);
                st.received += n as u64;
                n
            };
            bytes = &bytes[n..];
            self.0.cv.notify_all();
            self.notify();
        }
        true
    }

    /// Takes up to `max` bytes from the front.
    pub fn take(&self, max: usize) -> Vec<u8> {
        let out: Vec<u8> = {
            let mut st = self.lock();
            let n = max.min(st.bytes.len());
            st.bytes.drain(..n).collect()
        };
        if !out.is_empty() {
            // Room for a producer waiting in push_blocking.
            self.0.cv.notify_all();
        }
        out
    }

    /// A copy of the bytes queued now (for a checkpoint).
    pub fn peek_all(&self) -> Vec<u8> {
        self.lock().bytes.iter().copied().collect()
    }

    /// Puts `bytes` before everything queued (input a checkpoint had queued comes
    /// before what the new source reads), as much as fits.
    pub fn push_front(&self, bytes: &[u8]) -> usize {
        let n = {
            let mut st = self.lock();
            let n = bytes.len().min(INPUT_QUEUE_CAPACITY.saturating_sub(st.bytes.len()));
            for &b in bytes[..n].iter().rev() {
                st.bytes.push_front(b);
            }
            n
        };
        if n > 0 {
            self.0.cv.notify_all();
            self.notify();
        }
        n
    }

    /// Bytes queued now.
    pub fn len(&self) -> usize {
        self.lock().bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes ever queued, and bytes dropped because the queue was full.
    pub fn counts(&self) -> (u64, u64) {
        let st = self.lock();
        (st.received, st.dropped)
    }

    /// Whether the source reached its end (EOF, error).
    pub fn source_ended(&self) -> bool {
        self.lock().ended
    }

    fn mark_ended(&self) {
        self.lock().ended = true;
        self.0.cv.notify_all();
    }

    /// Makes a current or the next [`InputQueue::wait`] return [`WaitOutcome::Woken`].
    pub fn wake(&self) {
        self.lock().woken = true;
        self.0.cv.notify_all();
    }

    /// Sets (or clears) the function called after a source queued new bytes.
    pub fn set_notify(&self, f: Option<InputNotify>) {
        *relock(self.0.notify.lock()) = f;
    }

    /// Blocks until input is queued (if `want_input`), [`InputQueue::wake`] is called, or
    /// `timeout` passes (None: no timeout). Without a timeout it also returns once the
    /// source has ended with nothing queued ([`WaitOutcome::Ended`]): the end is part of
    /// what the wait checks under the lock, so an end that comes after the caller last
    /// looked ([`InputQueue::source_ended`]) still ends the wait (a lost wake-up
    /// otherwise: issue 12 item 5).
    pub fn wait(&self, timeout: Option<Duration>, want_input: bool) -> WaitOutcome {
        // A timeout too far to represent is no timeout.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut st = self.lock();
        loop {
            if st.woken {
                st.woken = false;
                return WaitOutcome::Woken;
            }
            if want_input && !st.bytes.is_empty() {
                return WaitOutcome::Input;
            }
            if deadline.is_none() && st.ended && st.bytes.is_empty() {
                return WaitOutcome::Ended;
            }
            st = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return WaitOutcome::Deadline;
                    }
                    match self.0.cv.wait_timeout(st, d - now) {
                        Ok((g, _)) => g,
                        Err(e) => e.into_inner().0,
                    }
                }
                None => relock(self.0.cv.wait(st)),
            };
        }
    }
}

/// What a [`ConsoleInput`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputSource {
    /// Nothing (no standard input, or input not wanted).
    None,
    /// A terminal, in raw mode.
    Terminal,
    /// A pipe, a file or another reader, read to its end.
    Stream,
}

/// A source of console input feeding an [`InputQueue`] from a thread of its own.
pub struct ConsoleInput {
    queue: InputQueue,
    source: InputSource,
    /// This source owns the process's standard input.
    owns_stdin: bool,
    stop: Arc<AtomicBool>,
    terminal: Option<TerminalGuard>,
}

impl std::fmt::Debug for ConsoleInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleInput")
            .field("source", &self.source)
            .field("raw_terminal", &self.terminal.is_some())
            .finish_non_exhaustive()
    }
}

impl ConsoleInput {
    /// No input.
    pub fn none(queue: InputQueue) -> Self {
        Self {
            queue,
            source: InputSource::None,
            owns_stdin: false,
            stop: Arc::new(AtomicBool::new(true)),
            terminal: None,
        }
    }

    /// The host's standard input (see the module documentation). A closed standard input,
    /// one already at EOF, or a terminal bt86 does not own in the foreground give
    /// [`InputSource::None`] rather than an error.
    pub fn stdin(queue: InputQueue) -> Result<Self, ConsoleInputError> {
        let stdin = std::io::stdin();
        let fd = stdin.as_fd();
        if rustix::fs::fstat(fd).is_err() {
            tracing::debug!("no standard input; the guest gets no console input");
            return Ok(Self::none(queue));
        }
        let mut hub = lock_hub();
        if hub.sink.is_some() {
            return Err(ConsoleInputError::StdinBusy);
        }
        if hub.at_eof {
            tracing::debug!("standard input already at its end");
            return Ok(Self::none(queue));
        }
        let mut source = InputSource::Stream;
        let mut terminal = None;
        if termios::isatty(fd) {
            let foreground = termios::tcgetpgrp(fd)
                .map(|pg| pg == rustix::process::getpgrp())
                .unwrap_or(false);
            if !foreground {
                tracing::info!("not in the terminal's foreground process group; no console input");
                return Ok(Self::none(queue));
            }
            match TerminalGuard::enter_raw(fd) {
                Ok(guard) => terminal = Some(guard),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot put the terminal in raw mode; input stays line-buffered")
                }
            }
            source = InputSource::Terminal;
        }
        let stop = Arc::new(AtomicBool::new(false));
        hub.sink = Some(Sink {
            queue: queue.clone(),
            stop: stop.clone(),
            lossless: source == InputSource::Stream,
            escapes: None,
        });
        if !hub.reader_running {
            match thread::Builder::new()
                .name("bt86-stdin".into())
                .spawn(stdin_reader)
            {
                Ok(_detached) => hub.reader_running = true,
                Err(e) => {
                    hub.sink = None;
                    return Err(ConsoleInputError::Spawn(e));
                }
            }
        }
        Ok(Self {
            queue,
            source,
            owns_stdin: true,
            stop,
            terminal,
        })
    }

    /// Reads `reader` to its end on a thread of its own, queueing everything.
    pub fn from_reader<R: Read + Send + 'static>(
        mut reader: R,
        queue: InputQueue,
    ) -> Result<Self, ConsoleInputError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (q, st) = (queue.clone(), stop.clone());
        thread::Builder::new()
            .name("bt86-input".into())
            .spawn(move || {
                let mut buf = [0u8; 512];
                while !st.load(Ordering::Acquire) {
                    match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if !q.push_blocking(&buf[..n], &st) {
                                break;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "console input read failed; no more input");
                            break;
                        }
                    }
                }
                q.mark_ended();
            })
            .map_err(ConsoleInputError::Spawn)?;
        Ok(Self {
            queue,
            source: InputSource::Stream,
            owns_stdin: false,
            stop,
            terminal: None,
        })
    }

    pub fn source(&self) -> InputSource {
        self.source
    }

    /// Turns on the Ctrl-A escapes of a terminal source, handled by `f` on the input
    /// thread (no effect on other sources).
    pub fn set_escape_handler(&self, f: EscapeHandler) {
        if !self.owns_stdin || self.source != InputSource::Terminal {
            return;
        }
        let mut hub = lock_hub();
        if let Some(s) = hub.sink.as_mut().filter(|s| Arc::ptr_eq(&s.stop, &self.stop)) {
            s.escapes = Some(f);
        }
    }

    /// The queue this source feeds.
    pub fn queue(&self) -> &InputQueue {
        &self.queue
    }
}

impl Drop for ConsoleInput {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.queue.0.cv.notify_all();
        if self.owns_stdin {
            let mut hub = lock_hub();
            if hub
                .sink
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(&s.stop, &self.stop))
            {
                hub.sink = None;
            }
        }
        // Restores the terminal, after the reader stopped delivering to us.
        self.terminal.take();
    }
}

/// Where the standard-input reader delivers.
struct Sink {
    queue: InputQueue,
    stop: Arc<AtomicBool>,
    /// Pipe or file: wait for room instead of dropping.
    lossless: bool,
    /// Handles Ctrl-A escapes (terminal only).
    escapes: Option<EscapeHandler>,
}

/// The process's one standard-input reader and its current consumer.
struct Hub {
    sink: Option<Sink>,
    reader_running: bool,
    at_eof: bool,
}

static HUB: Mutex<Hub> = Mutex::new(Hub {
    sink: None,
    reader_running: false,
    at_eof: false,
});

fn lock_hub() -> MutexGuard<'static, Hub> {
    relock(HUB.lock())
}

/// The standard-input reader thread: delivers to the hub's sink until EOF, an error, or
/// no one is listening any more.
fn stdin_reader() {
    let stdin = std::io::stdin();
    let fd: BorrowedFd<'_> = stdin.as_fd();
    let mut buf = [0u8; 512];
    let mut prefixed = false;
    loop {
        let n = match rustix::io::read(fd, &mut buf) {
            Ok(0) => {
                finish_stdin(true);
                return;
            }
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => {
                thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading standard input failed; no more console input");
                finish_stdin(true);
                return;
            }
        };
        let (queue, stop, lossless, escapes) = {
            let mut hub = lock_hub();
            let Some(s) = hub.sink.as_ref() else {
                hub.reader_running = false;
                return;
            };
            (s.queue.clone(), s.stop.clone(), s.lossless, s.escapes.clone())
        };
        let bytes = &buf[..n];
        if lossless {
            queue.push_blocking(bytes, &stop);
            continue;
        }
        match escapes {
            None => {
                queue.push(bytes);
            }
            Some(handler) => {
                let (data, escapes) = split_escapes(bytes, &mut prefixed);
                queue.push(&data);
                for e in escapes {
                    handler(e);
                }
            }
        }
    }
}

fn finish_stdin(eof: bool) {
    let mut hub = lock_hub();
    hub.reader_running = false;
    hub.at_eof |= eof;
    if let Some(s) = hub.sink.as_ref() {
        s.queue.mark_ended();
    }
}

/// The terminal settings to restore, while a [`TerminalGuard`] is live.
static SAVED_TERMIOS: Mutex<Option<Termios>> = Mutex::new(None);
static ATEXIT: Once = Once::new();

/// Raw mode on standard input for as long as it lives.
struct TerminalGuard;

impl TerminalGuard {
    /// Raw mode for as long as the guard lives.
    fn enter_raw(fd: BorrowedFd<'_>) -> rustix::io::Result<Self> {
        let saved = termios::tcgetattr(fd)?;
        let mut raw = saved.clone();
        raw.local_modes.remove(
            LocalModes::ICANON
                | LocalModes::ECHO
                | LocalModes::ECHONL
                | LocalModes::IEXTEN
                | LocalModes::ISIG,
        );
        raw.input_modes.remove(
            InputModes::ICRNL
                | InputModes::INLCR
                | InputModes::IGNCR
                | InputModes::IXON
                | InputModes::ISTRIP,
        );
        raw.special_codes[SpecialCodeIndex::VMIN] = 1;
        raw.special_codes[SpecialCodeIndex::VTIME] = 0;
        *relock(SAVED_TERMIOS.lock()) = Some(saved);
        ATEXIT.call_once(register_atexit);
        if let Err(e) = termios::tcsetattr(fd, OptionalActions::Now, &raw) {
            relock(SAVED_TERMIOS.lock()).take();
            return Err(e);
        }
        Ok(Self)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Whether bt86 has the terminal in raw mode now.
pub fn terminal_is_raw() -> bool {
    relock(SAVED_TERMIOS.lock()).is_some()
}

/// Puts the saved terminal settings back, once (a no-op when bt86 did not change them).
/// Safe to call from any thread, e.g. a signal-handling thread, and at any time.
pub fn restore_terminal() {
    let saved = match SAVED_TERMIOS.try_lock() {
        Ok(mut g) => g.take(),
        Err(TryLockError::Poisoned(e)) => e.into_inner().take(),
        // Someone else is restoring it right now.
        Err(TryLockError::WouldBlock) => None,
    };
    if let Some(t) = saved {
        if let Err(e) = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &t) {
            tracing::debug!(error = %e, "cannot restore the terminal");
        }
    }
}

extern "C" fn restore_terminal_at_exit() {
    restore_terminal();
}

fn register_atexit() {
    // SAFETY: atexit only records the address of `restore_terminal_at_exit`, a plain
    // `extern "C" fn()` with no captured state that lives as long as the process.
    let rc = unsafe { libc::atexit(restore_terminal_at_exit) };
    if rc != 0 {
        tracing::debug!("atexit registration failed; the terminal is restored on drop only");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn wait_until(mut f: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < end, "timed out");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn queue_is_bounded_and_counts_drops() {
        let q = InputQueue::new();
        assert_eq!(q.push(b"abc"), 3);
        assert_eq!(q.take(2), b"ab");
        let big = vec![7u8; INPUT_QUEUE_CAPACITY + 10];
        assert_eq!(q.push(&big), INPUT_QUEUE_CAPACITY - 1);
        assert_eq!(q.len(), INPUT_QUEUE_CAPACITY);
        assert_eq!(q.counts(), (3 + INPUT_QUEUE_CAPACITY as u64 - 1, 11));
        assert_eq!(q.take(1), b"c");
        assert_eq!(q.take(usize::MAX).len(), INPUT_QUEUE_CAPACITY - 1);
        assert!(q.is_empty());
    }

    #[test]
    fn wait_outcomes() {
        let q = InputQueue::new();
        assert_eq!(q.wait(Some(Duration::ZERO), true), WaitOutcome::Deadline);
        let t0 = Instant::now();
        assert_eq!(
            q.wait(Some(Duration::from_millis(20)), true),
            WaitOutcome::Deadline
        );
        assert!(t0.elapsed() >= Duration::from_millis(20));
        q.wake();
        assert_eq!(q.wait(None, true), WaitOutcome::Woken);
        q.push(b"x");
        assert_eq!(q.wait(None, true), WaitOutcome::Input);
        assert_eq!(
            q.wait(Some(Duration::from_millis(5)), false),
            WaitOutcome::Deadline,
            "input not wanted (UART full)"
        );
        // Woken from another thread while blocked without a timeout.
        let q2 = q.clone();
        let h = thread::spawn(move || {
            thread::sleep(Duration::from_millis(10));
            q2.wake();
        });
        assert_eq!(q.wait(None, false), WaitOutcome::Woken);
        h.join().unwrap();
        // An absurd timeout is treated as none.
        q.wake();
        assert_eq!(q.wait(Some(Duration::MAX), true), WaitOutcome::Woken);
    }

    /// Issue 12 item 5: a wait with no timeout that starts before the source ends must
    /// return when it ends (it blocked forever before the end was part of the wait).
    #[test]
    fn wait_returns_when_the_source_ends_meanwhile() {
        let q = InputQueue::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let q2 = q.clone();
        let waiter = thread::spawn(move || {
            let _ = tx.send(q2.wait(None, true));
        });
        thread::sleep(Duration::from_millis(20));
        q.mark_ended();
        let got = rx.recv_timeout(Duration::from_secs(5));
        assert_eq!(got, Ok(WaitOutcome::Ended), "the wait missed the end of input");
        waiter.join().unwrap();
        // Already ended: returns at once; with a timeout, the timeout governs.
        assert_eq!(q.wait(None, true), WaitOutcome::Ended);
        assert_eq!(q.wait(Some(Duration::from_millis(5)), true), WaitOutcome::Deadline);
        // Queued bytes still come first.
        q.push(b"z");
        assert_eq!(q.wait(None, true), WaitOutcome::Input);
    }

    #[test]
    fn notify_called_on_new_input() {
        let q = InputQueue::new();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = hits.clone();
        q.set_notify(Some(Arc::new(move || {
            h.fetch_add(1, Ordering::SeqCst);
        })));
        q.push(b"a");
        q.push(b"");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        q.set_notify(None);
        q.push(b"b");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn reader_source_is_lossless() {
        let q = InputQueue::new();
        let data: Vec<u8> = (0..3 * INPUT_QUEUE_CAPACITY)
            .map(|i| (i % 251) as u8)
            .collect();
        let input = ConsoleInput::from_reader(Cursor::new(data.clone()), q.clone()).unwrap();
        assert_eq!(input.source(), InputSource::Stream);
        let mut got = Vec::new();
        wait_until(|| {
            got.extend(q.take(1000));
            got.len() == data.len()
        });
        assert_eq!(got, data);
        wait_until(|| q.source_ended());
        assert_eq!(q.counts().1, 0, "nothing dropped");
    }

    #[test]
    fn dropping_the_source_stops_a_blocked_reader() {
        let q = InputQueue::new();
        let endless = std::io::repeat(b'z');
        let input = ConsoleInput::from_reader(endless, q.clone()).unwrap();
        wait_until(|| q.len() == INPUT_QUEUE_CAPACITY);
        drop(input);
        wait_until(|| q.source_ended());
        assert_eq!(q.len(), INPUT_QUEUE_CAPACITY);
    }

    #[test]
    fn escapes_are_split_from_guest_bytes() {
        let mut p = false;
        let (d, e) = split_escapes(b"ab\x03\x01xcd", &mut p);
        assert_eq!(d, b"ab\x03cd", "Ctrl-C is a byte for the guest");
        assert_eq!(e, [Escape::Quit]);
        let (d, e) = split_escapes(b"\x01\x01\x01h\x01s\x01q", &mut p);
        assert_eq!(d, b"\x01", "Ctrl-A Ctrl-A sends one Ctrl-A");
        assert_eq!(e, [Escape::Help, Escape::Checkpoint, Escape::Unknown(b'q')]);
        // The prefix at the end of one read applies to the next.
        let (d, e) = split_escapes(b"z\x01", &mut p);
        assert!(p && d == b"z" && e.is_empty());
        let (d, e) = split_escapes(b"x", &mut p);
        assert!(!p && d.is_empty() && e == [Escape::Quit]);
        assert!(ESCAPE_HELP.contains("and continue"));
        let (_, e) = split_escapes(b"\x01c\x01C", &mut p);
        assert_eq!(e, [Escape::CheckpointContinue, Escape::CheckpointContinue]);
    }

    #[test]
    fn none_source() {
        let q = InputQueue::new();
        let input = ConsoleInput::none(q.clone());
        assert_eq!(input.source(), InputSource::None);
        drop(input);
        assert!(q.is_empty());
    }
}
