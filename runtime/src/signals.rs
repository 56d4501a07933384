//! Host signals raised inside translated code (SIGSEGV, SIGBUS, SIGFPE, SIGILL,
//! SIGTRAP) become exits: the handler records what happened in the vCPU context and
//! redirects the interrupted context to the translator's `exit_fault` stub, which
//! returns to the engine like any other exit. All interpretation (which guest
//! instruction, hidden or true fault, self-modifying code) happens afterwards in
//! ordinary Rust code, never in the handler.
//!
//! A signal that does not come from translated code on this thread goes to the
//! handler that was installed before ours (Rust's stack-overflow handler, or the
//! default action).

use bt86_translator::abi::{FaultRecord, VcpuCtx};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

const SIGNALS: [libc::c_int; 5] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL, libc::SIGTRAP];

/// What the handler needs to know about the translated code running on this thread.
#[derive(Clone, Copy)]
pub struct Active {
    pub code_start: u64,
    pub code_end: u64,
    pub exit_fault: u64,
    pub ctx: *mut VcpuCtx,
}

impl Active {
    const NONE: Self = Self { code_start: 0, code_end: 0, exit_fault: 0, ctx: core::ptr::null_mut() };
}

thread_local! {
    // Const-initialised and without a destructor: reading it from a signal handler
    // does no lazy initialisation.
    static ACTIVE: Cell<Active> = const { Cell::new(Active::NONE) };
}

/// The previous handlers, by signal number (a `sigaction` copy leaked once).
static PREVIOUS: [AtomicUsize; 32] = [const { AtomicUsize::new(0) }; 32];

/// Installs the handlers (once per process) and registers this thread's code cache.
pub fn activate(active: Active) {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(install);
    ACTIVE.with(|a| a.set(active));
}

/// Unregisters this thread's code cache.
pub fn deactivate() {
    ACTIVE.with(|a| a.set(Active::NONE));
}

fn install() {
    for sig in SIGNALS {
        // SAFETY: zeroed sigaction structs are valid; we fill the handler and flags
        // and pass valid pointers to sigaction(2). The old action is leaked so the
        // handler can read it at any time.
        unsafe {
            let mut sa: libc::sigaction = core::mem::zeroed();
            sa.sa_sigaction = handler as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut sa.sa_mask);
            let old = Box::into_raw(Box::new(core::mem::zeroed::<libc::sigaction>()));
            if libc::sigaction(sig, &sa, old) == 0 {
                PREVIOUS[sig as usize].store(old as usize, Ordering::Release);
            }
        }
    }
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let active = ACTIVE.with(Cell::get);
    // SAFETY: the kernel passes a valid ucontext_t for SA_SIGINFO handlers.
    let uc = unsafe { &mut *uc.cast::<libc::ucontext_t>() };
    let gregs = &mut uc.uc_mcontext.gregs;
    #[allow(clippy::cast_sign_loss)]
    let rip = gregs[libc::REG_RIP as usize] as u64;
    if active.ctx.is_null() || rip < active.code_start || rip >= active.code_end {
        forward(sig, info, uc);
        return;
    }
    // SAFETY: `info` is valid for SA_SIGINFO handlers; si_addr is meaningful for
    // SIGSEGV/SIGBUS/SIGFPE/SIGILL and harmless to read for SIGTRAP.
    let (addr, code) = unsafe { ((*info).si_addr() as u64, (*info).si_code) };
    #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
    let record = FaultRecord {
        host_rip: rip,
        addr,
        signo: sig as u32,
        code,
        trapno: gregs[libc::REG_TRAPNO as usize] as u32,
        err: gregs[libc::REG_ERR as usize] as u32,
        rcx: gregs[libc::REG_RCX as usize] as u64,
    };
    // SAFETY: `ctx` was registered by the engine for the translated code that is
    // running on this thread right now; no Rust code holds a reference to it while
    // translated code runs.
    unsafe { (*active.ctx).fault = record };
    #[allow(clippy::cast_possible_wrap)]
    {
        gregs[libc::REG_RIP as usize] = active.exit_fault as i64;
    }
}

fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::ucontext_t) {
    let prev = PREVIOUS.get(sig as usize).map_or(0, |p| p.load(Ordering::Acquire));
    // SAFETY: `prev` is either 0 or a leaked, never-freed sigaction from install().
    let prev = unsafe { (prev as *const libc::sigaction).as_ref() };
    match prev {
        Some(sa) if sa.sa_sigaction != libc::SIG_DFL && sa.sa_sigaction != libc::SIG_IGN => {
            if sa.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was installed with SA_SIGINFO, so it
                // has this signature.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { core::mem::transmute(sa.sa_sigaction) };
                f(sig, info, uc.cast());
            } else {
                // SAFETY: a plain handler takes the signal number only.
                let f: extern "C" fn(libc::c_int) = unsafe { core::mem::transmute(sa.sa_sigaction) };
                f(sig);
            }
        }
        _ => {
            // Not ours and no handler before us: restore the default action and
            // return, so the faulting instruction re-executes and kills the process
            // the normal way (with a core dump where enabled).
            // SAFETY: resetting a signal to SIG_DFL with a zeroed sigaction is valid.
            unsafe {
                let mut sa: libc::sigaction = core::mem::zeroed();
                sa.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &sa, core::ptr::null_mut());
            }
        }
    }
}
