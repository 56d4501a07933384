//! The gdb stub: gdb's remote serial protocol over TCP (the `gdbstub` crate,
//! with `gdbstub_arch`'s i386 + SSE register description), on the engine's
//! debugger support (`crate::debug`). Binary translation only: the KVM engine
//! has no debugger hooks.
//!
//! [`serve`] runs the guest for the whole run. It waits for gdb before the
//! first instruction (`--gdb-wait`), or runs the guest free and pauses it when
//! gdb connects (a thread watches the listening socket). In a session the guest
//! runs only when gdb says so (continue, step), and a thread watches the
//! connection meanwhile so that gdb's Ctrl-C pauses it. When gdb detaches or the
//! connection drops, its breakpoints go, the guest runs on, and gdb may connect
//! again. When gdb kills the guest, or the guest's run ends, `serve` returns.

mod target;
mod watcher;

use crate::debug::Resume;
use crate::debug::DebugStop;
use crate::vm::{RunOutcome, Vm, VmError};
use gdbstub::stub::{DisconnectReason, GdbStub};
use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use target::{EventLoop, GdbTarget};
use thiserror::Error;
use watcher::Watcher;

/// How a run under the gdb stub ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GdbEnd {
    /// The guest's run ended (gdb, if connected, was told).
    Ended(RunOutcome),
    /// gdb killed the guest.
    Killed,
}

/// What stops the stub itself.
#[derive(Debug, Error)]
pub enum GdbError {
    #[error("gdb stub: cannot accept a connection: {0}")]
    Accept(std::io::Error),
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// How a session ended.
enum SessionEnd {
    /// gdb detached, or the connection broke: the guest runs on.
    Detached,
    Ended(RunOutcome),
    Killed,
}

/// Runs `vm` under the gdb stub on `listener` until the guest's run ends or gdb
/// kills it. `wait`: hold the guest before its first instruction until gdb
/// connects. `note` hears what a person watching bt86 should know (gdb
/// connected, detached, lost).
pub fn serve(vm: &mut Vm, listener: &TcpListener, wait: bool, note: &dyn Fn(&str)) -> Result<GdbEnd, GdbError> {
    listener.set_nonblocking(true).map_err(GdbError::Accept)?;
    let mut waiting = wait;
    loop {
        let conn = if waiting {
            accept_blocking(listener)?
        } else {
            match run_until_connection(vm, listener)? {
                Ok(conn) => conn,
                Err(outcome) => return Ok(GdbEnd::Ended(outcome)),
            }
        };
        waiting = false;
        note(&format!("gdb connected from {}", conn.peer_addr().map_or("?".into(), |a| a.to_string())));
        let end = session(vm, conn, note)?;
        // gdb's breakpoints and watchpoints go with it, however it left.
        vm.clear_debug()?;
        match end {
            SessionEnd::Detached => note("gdb detached; the guest runs on"),
            SessionEnd::Ended(outcome) => return Ok(GdbEnd::Ended(outcome)),
            SessionEnd::Killed => return Ok(GdbEnd::Killed),
        }
    }
}

/// Runs the guest free until gdb connects (Ok) or the run ends (Err).
fn run_until_connection(vm: &mut Vm, listener: &TcpListener) -> Result<Result<TcpStream, RunOutcome>, GdbError> {
    loop {
        let watcher = Watcher::start(listener.as_fd(), vm.debug_interrupt_handle()).map_err(GdbError::Accept)?;
        let stop = vm.debug_run(Resume::Continue);
        drop(watcher);
        match stop? {
            DebugStop::Ended(outcome) => return Ok(Err(outcome)),
            // Nothing else is set: the pause is the watcher's, for a connection.
            DebugStop::Paused(_) => {
                if let Some(conn) = accept(listener)? {
                    return Ok(Ok(conn));
                }
            }
        }
    }
}

/// A pending connection, if any (the listener does not block).
fn accept(listener: &TcpListener) -> Result<Option<TcpStream>, GdbError> {
    match listener.accept() {
        Ok((conn, _)) => {
            conn.set_nonblocking(false).map_err(GdbError::Accept)?;
            Ok(Some(conn))
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {
            Ok(None)
        }
        Err(e) => Err(GdbError::Accept(e)),
    }
}

/// Waits for a connection.
fn accept_blocking(listener: &TcpListener) -> Result<TcpStream, GdbError> {
    loop {
        let mut fds = [rustix::event::PollFd::new(listener, rustix::event::PollFlags::IN)];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(GdbError::Accept(e.into())),
        }
        if let Some(conn) = accept(listener)? {
            return Ok(conn);
        }
    }
}

/// One gdb session on `conn`, the guest paused at its start.
fn session(vm: &mut Vm, conn: TcpStream, note: &dyn Fn(&str)) -> Result<SessionEnd, GdbError> {
    let mut target = GdbTarget::new(vm);
    let result = GdbStub::new(conn).run_blocking::<EventLoop<'_>>(&mut target);
    if let Some(outcome) = target.ended.take() {
        // The run ended (whether or not gdb heard of it before the connection closed).
        return Ok(SessionEnd::Ended(outcome));
    }
    match result {
        Ok(DisconnectReason::Kill) => Ok(SessionEnd::Killed),
        Ok(_) => Ok(SessionEnd::Detached),
        Err(e) if e.is_target_error() => {
            Err(e.into_target_error().unwrap_or_else(|| VmError::Internal("gdb stub: target error".into())).into())
        }
        Err(e) => {
            note(&format!("gdb connection lost ({e})"));
            Ok(SessionEnd::Detached)
        }
    }
}
