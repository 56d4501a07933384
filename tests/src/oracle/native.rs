//! The native half of the differential oracle: runs a [`Snippet`] directly on this CPU in
//! 32-bit compatibility mode, inside a forked child process.
//!
//! This is the only module of the oracle with `unsafe` code.
//!
//! How one run goes:
//! - The parent maps a `MAP_SHARED` result page, prepares everything the child needs
//!   (code with the `hlt` terminator appended, data, entry registers) and forks.
//! - The child uses only async-signal-safe calls (thin system-call wrappers, no
//!   allocation, no locks, no thread-locals): it maps the snippet region
//!   `CODE_ADDR..CODE_ADDR + REGION_SIZE` RWX with `MAP_FIXED_NOREPLACE`, copies code and
//!   data, installs a handler for SIGSEGV/SIGILL/SIGFPE/SIGTRAP/SIGBUS on an alternate
//!   stack, unblocks all signals, enters seccomp strict mode (so a stray `int $0x80` or
//!   `syscall` in guest code kills the child instead of doing anything), loads DS/ES with
//!   the flat user data selector 0x2b, loads eflags and the eight registers and far-jumps
//!   (`ljmpl *m16:32`) to selector 0x23 (the 32-bit user code segment) at `CODE_ADDR`.
//! - The appended `hlt` raises #GP (SIGSEGV, trap number 13) at its own address. Any
//!   signal ends the run: the handler copies the 32-bit registers, eflags, trap number,
//!   error code and CR2 from the ucontext and the data block into the result page and
//!   leaves with a raw `exit` system call (one of the four that strict mode allows).
//! - The parent waits at most [`TIMEOUT`] (a pidfd and `poll`); on timeout it kills the
//!   child with SIGKILL and returns `Err`. The child also has PR_SET_PDEATHSIG and a CPU
//!   time limit, so it cannot outlive a parent killed mid-test.
//!
//! Conventions for [`SnippetFault`]:
//! - `vector` is the x86 exception vector (the kernel's trap number): 0 #DE (SIGFPE),
//!   1 #DB (`int1`/`icebp`), 3 #BP (`int3`, `int $3`), 4 #OF (`into`), 5 #BR (`bound`),
//!   6 #UD (SIGILL), 13 #GP (privileged instructions, `int n` through a DPL-0 gate, and
//!   `hlt` other than the terminator), 14 #PF (any access outside the snippet region),
//!   17 #AC.
//! - `eip` is the EIP the exception frame would hold, i.e. exactly what a guest kernel would
//!   see: for faults (#DE #UD #GP #PF #BR ...) the address of the faulting instruction,
//!   including its prefixes; for traps (#BP from `int3`/`int $3`, #OF from `into`, #DB from
//!   `int1`) the address of the *next* instruction. So `int3` at 0x100005 reports
//!   eip 0x100006, and `int $3` (cd 03) at 0x100005 reports eip 0x100007.
//! - The registers, flags and data are the state at that point: for a fault, before the
//!   faulting instruction (nothing of it is committed) — except for string instructions
//!   with a `rep` prefix, which fault *between iterations*: eip is the address of the rep
//!   instruction, and ecx, esi, edi (and the data written) reflect the iterations that
//!   completed, so resuming re-executes only the remaining ones.
//! - Memory outside `CODE_ADDR..CODE_ADDR + REGION_SIZE` is unmapped: any access there is #PF.
//! - The snippet runs at CPL 3 with IOPL 0 (and IF=1 in pushed flags): privileged and
//!   IOPL-sensitive instructions (`cli`, `hlt`, `in`/`out`, `mov %crN`, ...) and `int n`
//!   through a DPL-0 gate are #GP; `pushf` pushes IF=1.
//!
//! Guest code must not make system calls (`int $0x80`, `syscall`, `sysenter`): seccomp
//! strict mode kills the child (the run returns `Err`).

use std::ffi::c_void;
use std::sync::atomic::{fence, AtomicPtr, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bt86_runtime::snippet::{
    Snippet, SnippetFault, SnippetResult, CODE_ADDR, DATA_ADDR, REGION_SIZE, STACK_TOP,
};

/// How long the parent waits for the child before killing it.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Linux's 32-bit user code selector (`__USER32_CS`).
pub const USER32_CS: u16 = 0x23;
/// Linux's flat user data selector (`__USER_DS`).
pub const USER_DS: u16 = 0x2b;
/// The arithmetic flags and DF: CF PF AF ZF SF DF OF.
pub const FLAGS_MASK: u32 = 0x0cd5;
/// Largest code a snippet may have (the terminator must fit before the data block).
pub const MAX_CODE: usize = (DATA_ADDR - CODE_ADDR) as usize - 1;
/// Largest data block: up to the initial stack top (the limit `run_snippet` has too).
pub const MAX_DATA: usize = (STACK_TOP - DATA_ADDR) as usize;
/// The terminator appended to the code.
pub const HLT: u8 = 0xf4;

const STATE_NONE: u32 = 0;
const STATE_DONE: u32 = 1;
const STATE_SETUP_FAILED: u32 = 2;
const STATE_HOST_FAULT: u32 = 3;

const ALT_STACK_SIZE: usize = 64 * 1024;

/// Everything the native run observed, more than a [`SnippetResult`] holds; useful in
/// diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeRun {
    pub result: SnippetResult,
    /// The host signal that ended the run (SIGSEGV for the terminator).
    pub signal: i32,
    /// The kernel's trap number (x86 vector) for that signal.
    pub trapno: u32,
    /// The exception error code (e.g. the #PF error code).
    pub error_code: u32,
    /// The faulting linear address for #PF.
    pub cr2: u32,
}

/// Runs `s` natively (see the module documentation) and returns the final state.
pub fn run_native(s: &Snippet) -> Result<SnippetResult, String> {
    run_native_detailed(s).map(|r| r.result)
}

/// Like [`run_native`], with the signal, trap number, error code and CR2 as well.
pub fn run_native_detailed(s: &Snippet) -> Result<NativeRun, String> {
    if s.code.len() > MAX_CODE {
        return Err(format!(
            "code too long: {} bytes (max {MAX_CODE})",
            s.code.len()
        ));
    }
    if s.data.len() > MAX_DATA {
        return Err(format!(
            "data too long: {} bytes (max {MAX_DATA})",
            s.data.len()
        ));
    }
    let mut code = Vec::with_capacity(s.code.len() + 1);
    code.extend_from_slice(&s.code);
    code.push(HLT);
    let mut regs = s.regs;
    if regs[4] == 0 {
        regs[4] = STACK_TOP;
    }
    let entry = EntryState {
        regs,
        eflags: u64::from((s.eflags & FLAGS_MASK) | 0x202),
    };
    let plan = Plan {
        code: &code,
        data: &s.data,
        entry,
        parent: std::process::id() as i32,
    };
    let shared = SharedPage::new()?;
    let raw = sys::run_in_child(&plan, &shared)?;
    decode(raw, s)
}

fn decode(raw: Shared, s: &Snippet) -> Result<NativeRun, String> {
    match raw.state {
        STATE_DONE => {}
        STATE_SETUP_FAILED => {
            return Err(format!(
                "native child: setup step {} failed: {}",
                raw.setup_step,
                std::io::Error::from_raw_os_error(raw.setup_errno)
            ))
        }
        STATE_HOST_FAULT => {
            return Err(format!(
                "native child: signal {} (trap {}) in host code at rip {:#x}, cs {:#x}",
                raw.signo, raw.trapno, raw.rip, raw.cs
            ))
        }
        _ => return Err("native child exited without a result".into()),
    }
    let terminator = u64::from(CODE_ADDR) + s.code.len() as u64;
    let fault = if raw.signo == libc::SIGSEGV
        && raw.trapno == 13
        && raw.err == 0
        && raw.rip == terminator
    {
        None
    } else {
        Some(SnippetFault {
            vector: raw.trapno as u8,
            eip: raw.rip as u32,
        })
    };
    Ok(NativeRun {
        result: SnippetResult {
            regs: raw.regs,
            eflags: raw.eflags & FLAGS_MASK,
            data: raw.data[..s.data.len()].to_vec(),
            fault,
        },
        signal: raw.signo,
        trapno: raw.trapno as u32,
        error_code: raw.err as u32,
        cr2: raw.cr2 as u32,
    })
}

/// Registers and flags loaded just before entering the snippet. Layout is used by the
/// entry assembly: eax ecx edx ebx esp ebp esi edi at 0..32, rflags at 32.
#[repr(C)]
#[derive(Clone, Copy)]
struct EntryState {
    regs: [u32; 8],
    eflags: u64,
}

struct Plan<'a> {
    code: &'a [u8],
    data: &'a [u8],
    entry: EntryState,
    parent: i32,
}

/// The result page shared between parent and child.
#[repr(C)]
#[derive(Clone)]
struct Shared {
    state: u32,
    setup_step: u32,
    setup_errno: i32,
    signo: i32,
    trapno: u64,
    err: u64,
    cr2: u64,
    rip: u64,
    cs: u64,
    regs: [u32; 8],
    eflags: u32,
    data: [u8; MAX_DATA],
}

/// The `MAP_SHARED` anonymous mapping holding one [`Shared`]; unmapped on drop.
struct SharedPage {
    ptr: *mut Shared,
    len: usize,
}

// Child-side globals. They are written only in the child (after fork, its own copy of
// memory) and read by its signal handler.
static SHARED: AtomicPtr<Shared> = AtomicPtr::new(std::ptr::null_mut());
static DATA_LEN: AtomicUsize = AtomicUsize::new(0);

impl SharedPage {
    fn new() -> Result<SharedPage, String> {
        let len = std::mem::size_of::<Shared>().next_multiple_of(4096);
        let ptr = sys::map_shared(len)?;
        Ok(SharedPage { ptr, len })
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        sys::unmap(self.ptr.cast(), self.len);
    }
}

/// Everything unsafe: fork, the child's setup, the entry into compatibility mode, the
/// signal handler, and the parent's wait.
mod sys {
    use super::*;
    use std::arch::asm;

    pub(super) fn map_shared(len: usize) -> Result<*mut Shared, String> {
        // SAFETY: a fresh anonymous mapping; the kernel picks the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap result page: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(p.cast())
    }

    pub(super) fn unmap(p: *mut c_void, len: usize) {
        // SAFETY: `p`/`len` is a mapping made by `map_shared` that nothing references any more.
        unsafe {
            libc::munmap(p, len);
        }
    }

    /// Forks, runs the snippet in the child, waits, and returns a copy of the result page.
    pub(super) fn run_in_child(plan: &Plan<'_>, page: &SharedPage) -> Result<Shared, String> {
        // SAFETY: the page is ours, mapped read-write, and large enough for one `Shared`;
        // zeroed memory is a valid `Shared` (plain integers), and no child exists yet.
        unsafe {
            std::ptr::write_bytes(page.ptr.cast::<u8>(), 0, std::mem::size_of::<Shared>());
        }
        // SAFETY: fork is allowed in a multithreaded process as long as the child only uses
        // async-signal-safe functions until it exits; `child_main` does only that and never
        // returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            child_main(plan, page.ptr);
        }
        let status = wait_with_timeout(pid, TIMEOUT)?;
        // SAFETY: the child has exited (reaped above), so nobody writes the page any more;
        // it holds a valid `Shared`.
        let raw = unsafe { (*page.ptr).clone() };
        if raw.state == STATE_NONE {
            return Err(describe_status(status));
        }
        Ok(raw)
    }

    fn describe_status(status: libc::c_int) -> String {
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            let hint = if sig == libc::SIGKILL {
                " (seccomp strict mode kills a guest system call)"
            } else {
                ""
            };
            format!("native child killed by signal {sig}{hint} before reporting")
        } else if libc::WIFEXITED(status) {
            format!(
                "native child exited with status {} before reporting",
                libc::WEXITSTATUS(status)
            )
        } else {
            format!("native child ended with wait status {status:#x} before reporting")
        }
    }

    fn waitpid_blocking(pid: libc::pid_t) -> Result<libc::c_int, String> {
        loop {
            let mut status = 0;
            // SAFETY: waits for our own child; `status` is a valid out pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r == pid {
                return Ok(status);
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(format!("waitpid: {e}"));
            }
        }
    }

    fn kill_and_reap(pid: libc::pid_t) {
        // SAFETY: `pid` is our unreaped child, so the pid cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let _ = waitpid_blocking(pid);
    }

    fn wait_with_timeout(pid: libc::pid_t, timeout: Duration) -> Result<libc::c_int, String> {
        let deadline = Instant::now() + timeout;
        // SAFETY: pidfd_open on our own child; returns a new fd or -1.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
        if pidfd >= 0 {
            let exited = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let mut pfd = libc::pollfd {
                    fd: pidfd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
                // SAFETY: one valid pollfd.
                let r = unsafe { libc::poll(&mut pfd, 1, ms) };
                if r > 0 {
                    break true;
                }
                if r == 0 {
                    break false;
                }
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    // SAFETY: closing our own fd.
                    unsafe { libc::close(pidfd) };
                    kill_and_reap(pid);
                    return Err(format!("poll pidfd: {e}"));
                }
            };
            // SAFETY: closing our own fd.
            unsafe { libc::close(pidfd) };
            if !exited {
                kill_and_reap(pid);
                return Err(format!(
                    "native run timed out after {timeout:?} (child killed)"
                ));
            }
            return waitpid_blocking(pid);
        }
        // No pidfd: poll waitpid.
        loop {
            let mut status = 0;
            // SAFETY: waits for our own child without blocking.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                return Ok(status);
            }
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(format!("waitpid: {e}"));
                }
            }
            if Instant::now() >= deadline {
                kill_and_reap(pid);
                return Err(format!(
                    "native run timed out after {timeout:?} (child killed)"
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// Leaves the child with a raw `exit` system call (allowed in seccomp strict mode; no
    /// libc, no thread-locals).
    fn exit_raw(code: i32) -> ! {
        // SAFETY: the exit system call does not return.
        unsafe {
            asm!("syscall", in("rax") libc::SYS_exit, in("rdi") code as i64, options(noreturn, nostack));
        }
    }

    fn setup_failed(shared: *mut Shared, step: u32) -> ! {
        let e = errno();
        // SAFETY: `shared` is the mapped result page (only the child writes it now).
        unsafe {
            (*shared).setup_step = step;
            (*shared).setup_errno = e;
            fence(Ordering::SeqCst);
            (*shared).state = STATE_SETUP_FAILED;
        }
        exit_raw(2);
    }

    /// The child: only async-signal-safe calls from here on.
    fn child_main(plan: &Plan<'_>, shared: *mut Shared) -> ! {
        // Step 1: die with the parent; no core dumps; a CPU-time backstop.
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } != 0 {
            setup_failed(shared, 1);
        }
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != plan.parent {
            exit_raw(3);
        }
        let core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let cpu = libc::rlimit {
            rlim_cur: 5,
            rlim_max: 6,
        };
        // SAFETY: valid rlimit structures.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &core);
            libc::setrlimit(libc::RLIMIT_CPU, &cpu);
        }

        // Step 2: the snippet region.
        let region = CODE_ADDR as usize as *mut c_void;
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
        let p = unsafe {
            libc::mmap(
                region,
                REGION_SIZE as usize,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p != region {
            setup_failed(shared, 2);
        }
        // SAFETY: the region is mapped read-write and the lengths were checked against
        // MAX_CODE / MAX_DATA by the parent; sources are the parent's buffers, still valid in
        // the child's copy of memory.
        unsafe {
            std::ptr::copy_nonoverlapping(
                plan.code.as_ptr(),
                CODE_ADDR as usize as *mut u8,
                plan.code.len(),
            );
            std::ptr::copy_nonoverlapping(
                plan.data.as_ptr(),
                DATA_ADDR as usize as *mut u8,
                plan.data.len(),
            );
        }

        // Step 3: alternate signal stack.
        // SAFETY: a fresh anonymous mapping.
        let alt = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ALT_STACK_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if alt == libc::MAP_FAILED {
            setup_failed(shared, 3);
        }
        let ss = libc::stack_t {
            ss_sp: alt,
            ss_flags: 0,
            ss_size: ALT_STACK_SIZE,
        };
        // SAFETY: `ss` describes the mapping above.
        if unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) } != 0 {
            setup_failed(shared, 3);
        }

        // Globals for the handler (the child's own copies).
        SHARED.store(shared, Ordering::SeqCst);
        DATA_LEN.store(plan.data.len(), Ordering::SeqCst);

        // Step 4: signal handlers, all signals blocked while one runs.
        for sig in [
            libc::SIGSEGV,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGTRAP,
            libc::SIGBUS,
        ] {
            // SAFETY: zeroed sigaction is valid; we fill in handler, flags and mask.
            let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            // SAFETY: sigfillset on our own set; sigaction with valid pointers. glibc's
            // sigaction sets the restorer.
            let r = unsafe {
                libc::sigfillset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut())
            };
            if r != 0 {
                setup_failed(shared, 4);
            }
        }
        // Step 5: unblock everything (the forking thread's mask was inherited).
        // SAFETY: valid set pointers.
        let r = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut())
        };
        if r != 0 {
            setup_failed(shared, 5);
        }
        // Step 6: seccomp strict: only read, write, exit and sigreturn from now on.
        // SAFETY: prctl with integer arguments.
        if unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_STRICT as libc::c_ulong,
            )
        } != 0
        {
            setup_failed(shared, 6);
        }
        let entry = plan.entry;
        // SAFETY: the region holds the code; handlers are installed; never returns.
        unsafe { enter_compat(&entry) }
    }

    /// Loads DS/ES, rflags and the eight registers from `state` and far-jumps to
    /// 0x23:CODE_ADDR.
    ///
    /// # Safety
    /// Child only: the snippet region must be mapped with the code in place, and the signal
    /// handler installed, since nothing comes back here.
    unsafe fn enter_compat(state: *const EntryState) -> ! {
        // SAFETY: per the function contract. The far pointer is m16:32 (FF /5 without
        // REX.W), valid in 64-bit mode; rflags is loaded before the registers so that the
        // moves keep it.
        unsafe {
            asm!(
                "movl $0x2b, %eax",
                "movl %eax, %ds",
                "movl %eax, %es",
                "pushq 32(%rdi)",
                "popfq",
                "movl 0(%rdi), %eax",
                "movl 4(%rdi), %ecx",
                "movl 8(%rdi), %edx",
                "movl 12(%rdi), %ebx",
                "movl 16(%rdi), %esp",
                "movl 20(%rdi), %ebp",
                "movl 24(%rdi), %esi",
                "movl 28(%rdi), %edi",
                "ljmpl *2f(%rip)",
                "2:",
                ".long {code}",
                ".word {cs}",
                code = const CODE_ADDR,
                cs = const USER32_CS,
                in("rdi") state,
                options(noreturn, att_syntax),
            );
        }
    }

    /// The child's signal handler: records the state and exits. Touches no thread-locals
    /// (guest code may have changed FS) and calls no libc.
    extern "C" fn on_signal(sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut c_void) {
        let shared = SHARED.load(Ordering::Relaxed);
        if shared.is_null() {
            exit_raw(4);
        }
        // SAFETY: the kernel passes a valid ucontext_t for SA_SIGINFO handlers.
        let g = unsafe { &(*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
        let r = |i: libc::c_int| g[i as usize] as u64;
        let cs = r(libc::REG_CSGSFS) & 0xffff;
        let data_len = DATA_LEN.load(Ordering::Relaxed).min(MAX_DATA);
        // SAFETY: `shared` is the mapped result page; the data block is mapped (it is in
        // the region) and `data_len <= MAX_DATA` bytes long.
        unsafe {
            let s = &mut *shared;
            s.signo = sig;
            s.trapno = r(libc::REG_TRAPNO);
            s.err = r(libc::REG_ERR);
            s.cr2 = r(libc::REG_CR2);
            s.rip = r(libc::REG_RIP);
            s.cs = cs;
            s.regs = [
                r(libc::REG_RAX) as u32,
                r(libc::REG_RCX) as u32,
                r(libc::REG_RDX) as u32,
                r(libc::REG_RBX) as u32,
                r(libc::REG_RSP) as u32,
                r(libc::REG_RBP) as u32,
                r(libc::REG_RSI) as u32,
                r(libc::REG_RDI) as u32,
            ];
            s.eflags = r(libc::REG_EFL) as u32;
            if cs == u64::from(USER32_CS) {
                std::ptr::copy_nonoverlapping(
                    DATA_ADDR as usize as *const u8,
                    s.data.as_mut_ptr(),
                    data_len,
                );
            }
            fence(Ordering::SeqCst);
            s.state = if cs == u64::from(USER32_CS) {
                STATE_DONE
            } else {
                STATE_HOST_FAULT
            };
        }
        exit_raw(0);
    }
}
