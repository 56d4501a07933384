//! The deprivileged runner: runs 32-bit guest code directly on this CPU in compatibility
//! mode at host CPL 3, inside a forked, confined child process. This is how a
//! trap-and-emulate VMM without binary translation would run guest kernel code, and it is
//! also the native half of the differential oracle (`tests/src/oracle/native.rs`).
//!
//! This is the only module of the crate with `unsafe` code.
//!
//! How one run goes:
//! - The parent maps a `MAP_SHARED` result page, checks that every chunk of the image lies
//!   in the region `REGION_BASE..REGION_BASE + REGION_SIZE`, and forks.
//! - The child uses only async-signal-safe calls (thin system-call wrappers, no allocation,
//!   no locks, no thread-locals): it dies with its parent (PR_SET_PDEATHSIG), limits its CPU
//!   time (RLIMIT_CPU) and core dumps, maps the region RWX with `MAP_FIXED_NOREPLACE`, copies
//!   the chunks, installs a handler for SIGSEGV/SIGILL/SIGFPE/SIGTRAP/SIGBUS on an alternate
//!   stack, unblocks all signals, installs a seccomp filter that allows only `exit` (so a
//!   stray `int $0x80` or `syscall` in guest code kills the child instead of doing
//!   anything; strict mode would do too, but it also disables `rdtsc`), loads DS/ES with
//!   the flat user data selector 0x2b, loads eflags and the eight registers and far-jumps
//!   (`ljmpl *m16:32`) to selector 0x23 (the 32-bit user code segment) at the entry EIP.
//! - Any signal ends the run: the handler copies the 32-bit registers, eflags, signal,
//!   trap number, error code and CR2 from the ucontext, and the requested memory range, into
//!   the result page and leaves with a raw `exit` system call (the one the filter allows).
//!   Guest code ends a run by executing an instruction that faults, usually
//!   `hlt` (#GP at CPL 3).
//! - The parent waits at most [`TIMEOUT`] (a pidfd and `poll`); on timeout it kills the
//!   child with SIGKILL and returns an error.
//!
//! What the host kernel does without telling anyone is visible here too: with UMIP on,
//! `sgdt`/`sidt`/`sldt`/`smsw`/`str` fault to the host kernel, which emulates them for
//! user code with dummy values and resumes — no signal reaches the child.

use std::ffi::c_void;
use std::ops::Range;
use std::sync::atomic::{fence, AtomicPtr, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bt86_runtime::snippet::{CODE_ADDR, REGION_SIZE as SNIPPET_REGION_SIZE};
use thiserror::Error;

/// First guest address of the region the child maps (the snippet region of
/// [`bt86_runtime::snippet`]).
pub const REGION_BASE: u32 = CODE_ADDR;
/// Size of that region.
pub const REGION_SIZE: u32 = SNIPPET_REGION_SIZE;
/// How long the parent waits for the child before killing it.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Linux's 32-bit user code selector (`__USER32_CS`).
pub const USER32_CS: u16 = 0x23;
/// Linux's flat user data selector (`__USER_DS`).
pub const USER_DS: u16 = 0x2b;
/// The eflags bits a run can start with: CF PF AF ZF SF DF OF (IF is always set at CPL 3,
/// IOPL is the host's, 0).
pub const FLAGS_MASK: u32 = 0x0cd5;
/// IF and the always-one bit 1: what every run's eflags has besides [`FLAGS_MASK`].
const FLAGS_FIXED: u32 = 0x202;

const STATE_NONE: u32 = 0;
const STATE_DONE: u32 = 1;
const STATE_SETUP_FAILED: u32 = 2;
const STATE_HOST_FAULT: u32 = 3;

const ALT_STACK_SIZE: usize = 64 * 1024;
/// Largest memory range copied back.
const MAX_COPY: usize = REGION_SIZE as usize;

/// Bytes placed at a guest address before the run.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    pub addr: u32,
    pub bytes: &'a [u8],
}

/// The state the guest code starts in.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub eip: u32,
    /// eax ecx edx ebx esp ebp esi edi.
    pub regs: [u32; 8],
    /// Only the bits in [`FLAGS_MASK`] are used.
    pub eflags: u32,
}

/// How a run ended: the signal and the machine state the kernel reported with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeExit {
    /// The host signal (SIGSEGV for #GP and #PF, SIGILL for #UD, ...).
    pub signal: i32,
    /// The kernel's trap number for it: the x86 vector.
    pub trapno: u32,
    /// The exception error code.
    pub error_code: u32,
    /// The faulting linear address for #PF.
    pub cr2: u32,
    /// The EIP the exception frame held.
    pub eip: u32,
    /// eax ecx edx ebx esp ebp esi edi at that point.
    pub regs: [u32; 8],
    pub eflags: u32,
    /// The requested memory range, as it was at that point.
    pub memory: Vec<u8>,
}

/// Why a native run gave no result.
#[derive(Debug, Error)]
pub enum NativeError {
    #[error("native run: {what} {start:#x}..{end:#x} is outside the region {REGION_BASE:#x}..{:#x}", REGION_BASE + REGION_SIZE)]
    OutOfRegion { what: &'static str, start: u64, end: u64 },
    #[error("native run: {what}: {source}")]
    Host {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("native child: setup step {step} failed: {source}")]
    Setup {
        step: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("native child: signal {signal} (trap {trapno}) in host code at rip {rip:#x}, cs {cs:#x}")]
    HostFault { signal: i32, trapno: u64, rip: u64, cs: u64 },
    /// The child ended without reporting (e.g. seccomp killed a system call).
    #[error("{0}")]
    NoReport(String),
    #[error("native run timed out after {0:?} (child killed)")]
    Timeout(Duration),
}

/// Runs guest code natively (see the module documentation): places `chunks`, enters at
/// `entry`, and returns how the run ended with a copy of `copy_back`.
pub fn run(chunks: &[Chunk<'_>], entry: &Entry, copy_back: Range<u32>) -> Result<NativeExit, NativeError> {
    let region = u64::from(REGION_BASE)..u64::from(REGION_BASE) + u64::from(REGION_SIZE);
    let inside = |start: u64, end: u64| region.start <= start && start <= end && end <= region.end;
    for c in chunks {
        let (start, end) = (u64::from(c.addr), u64::from(c.addr) + c.bytes.len() as u64);
        if !inside(start, end) {
            return Err(NativeError::OutOfRegion { what: "chunk", start, end });
        }
    }
    let (start, end) = (u64::from(copy_back.start), u64::from(copy_back.end));
    if !inside(start, end) {
        return Err(NativeError::OutOfRegion { what: "copied range", start, end });
    }
    let plan = Plan {
        chunks,
        entry: EntryState { regs: entry.regs, eip: entry.eip, eflags: u64::from((entry.eflags & FLAGS_MASK) | FLAGS_FIXED) },
        copy_addr: copy_back.start as usize,
        copy_len: copy_back.len(),
        parent: i32::try_from(std::process::id()).unwrap_or(-1),
    };
    let shared = SharedPage::new()?;
    let (raw, memory) = sys::run_in_child(&plan, &shared)?;
    match raw.state {
        STATE_DONE => {}
        STATE_SETUP_FAILED => {
            return Err(NativeError::Setup { step: raw.setup_step, source: std::io::Error::from_raw_os_error(raw.setup_errno) })
        }
        STATE_HOST_FAULT => {
            return Err(NativeError::HostFault { signal: raw.signo, trapno: raw.trapno, rip: raw.rip, cs: raw.cs })
        }
        _ => return Err(NativeError::NoReport("native child exited without a result".into())),
    }
    #[allow(clippy::cast_possible_truncation)]
    let low = |v: u64| v as u32;
    Ok(NativeExit {
        signal: raw.signo,
        trapno: low(raw.trapno),
        error_code: low(raw.err),
        cr2: low(raw.cr2),
        eip: low(raw.rip),
        regs: raw.regs,
        eflags: raw.eflags,
        memory,
    })
}

/// Registers and flags loaded just before entering the guest code. Layout is used by the
/// entry assembly: eax ecx edx ebx esp ebp esi edi at 0..32, eip at 32, rflags at 40.
#[repr(C)]
#[derive(Clone, Copy)]
struct EntryState {
    regs: [u32; 8],
    eip: u32,
    eflags: u64,
}

struct Plan<'a> {
    chunks: &'a [Chunk<'a>],
    entry: EntryState,
    copy_addr: usize,
    copy_len: usize,
    parent: i32,
}

/// What the child reports, apart from the memory it copies.
#[repr(C)]
#[derive(Clone, Copy)]
struct Header {
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
}

/// The result page shared between parent and child.
#[repr(C)]
struct Shared {
    head: Header,
    memory: [u8; MAX_COPY],
}

/// The `MAP_SHARED` anonymous mapping holding one [`Shared`]; unmapped on drop.
struct SharedPage {
    ptr: *mut Shared,
    len: usize,
}

// Child-side globals. They are written only in the child (after fork, its own copy of
// memory) and read by its signal handler.
static SHARED: AtomicPtr<Shared> = AtomicPtr::new(std::ptr::null_mut());
static COPY_ADDR: AtomicUsize = AtomicUsize::new(0);
static COPY_LEN: AtomicUsize = AtomicUsize::new(0);

impl SharedPage {
    fn new() -> Result<SharedPage, NativeError> {
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

    fn last_error(what: &'static str) -> NativeError {
        NativeError::Host { what, source: std::io::Error::last_os_error() }
    }

    /// A fresh read-write anonymous mapping of `len` bytes (`MAP_FAILED` on failure);
    /// async-signal-safe.
    fn map_anonymous(len: usize, sharing: libc::c_int) -> *mut c_void {
        // SAFETY: a fresh anonymous mapping; the kernel picks the address.
        unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, sharing | libc::MAP_ANONYMOUS, -1, 0)
        }
    }

    pub(super) fn map_shared(len: usize) -> Result<*mut Shared, NativeError> {
        let p = map_anonymous(len, libc::MAP_SHARED);
        if p == libc::MAP_FAILED {
            return Err(last_error("mmap of the result page"));
        }
        Ok(p.cast())
    }

    pub(super) fn unmap(p: *mut c_void, len: usize) {
        // SAFETY: `p`/`len` is a mapping made by `map_shared` that nothing references any more.
        unsafe {
            libc::munmap(p, len);
        }
    }

    /// Forks, runs the guest code in the child, waits, and returns what the result page says
    /// and the memory the child copied.
    pub(super) fn run_in_child(plan: &Plan<'_>, page: &SharedPage) -> Result<(Header, Vec<u8>), NativeError> {
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
            return Err(last_error("fork"));
        }
        if pid == 0 {
            child_main(plan, page.ptr);
        }
        let status = wait_with_timeout(pid, TIMEOUT)?;
        // SAFETY: the child has exited (reaped above), so nobody writes the page any more;
        // it holds a valid `Shared`, and `copy_len <= MAX_COPY` (checked by `run`).
        let s = unsafe { &*page.ptr };
        if s.head.state == STATE_NONE {
            return Err(NativeError::NoReport(describe_status(status)));
        }
        Ok((s.head, s.memory[..plan.copy_len.min(MAX_COPY)].to_vec()))
    }

    fn describe_status(status: libc::c_int) -> String {
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            let hint = if sig == libc::SIGKILL { " (the seccomp filter kills a guest system call)" } else { "" };
            format!("native child killed by signal {sig}{hint} before reporting")
        } else if libc::WIFEXITED(status) {
            format!("native child exited with status {} before reporting", libc::WEXITSTATUS(status))
        } else {
            format!("native child ended with wait status {status:#x} before reporting")
        }
    }

    fn waitpid_blocking(pid: libc::pid_t) -> Result<libc::c_int, NativeError> {
        loop {
            let mut status = 0;
            // SAFETY: waits for our own child; `status` is a valid out pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r == pid {
                return Ok(status);
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(NativeError::Host { what: "waitpid", source: e });
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

    fn close(fd: libc::c_int) {
        // SAFETY: closing our own fd, used by nothing else.
        unsafe {
            libc::close(fd);
        }
    }

    fn wait_with_timeout(pid: libc::pid_t, timeout: Duration) -> Result<libc::c_int, NativeError> {
        let deadline = Instant::now() + timeout;
        // SAFETY: pidfd_open on our own child; returns a new fd or -1.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if let Ok(pidfd) = libc::c_int::try_from(pidfd) {
            if pidfd >= 0 {
                let exited = loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let mut pfd = libc::pollfd { fd: pidfd, events: libc::POLLIN, revents: 0 };
                    let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
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
                        close(pidfd);
                        kill_and_reap(pid);
                        return Err(NativeError::Host { what: "poll on the child's pidfd", source: e });
                    }
                };
                close(pidfd);
                if !exited {
                    kill_and_reap(pid);
                    return Err(NativeError::Timeout(timeout));
                }
                return waitpid_blocking(pid);
            }
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
                    return Err(NativeError::Host { what: "waitpid", source: e });
                }
            }
            if Instant::now() >= deadline {
                kill_and_reap(pid);
                return Err(NativeError::Timeout(timeout));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// Leaves the child with a raw `exit` system call (the one the seccomp filter allows; no
    /// libc, no thread-locals).
    fn exit_raw(code: i32) -> ! {
        // SAFETY: the exit system call does not return.
        unsafe {
            asm!("syscall", in("rax") libc::SYS_exit, in("rdi") i64::from(code), options(noreturn, nostack));
        }
    }

    fn setup_failed(shared: *mut Shared, step: u32) -> ! {
        let e = errno();
        // SAFETY: `shared` is the mapped result page (only the child writes it now).
        unsafe {
            (*shared).head.setup_step = step;
            (*shared).head.setup_errno = e;
            fence(Ordering::SeqCst);
            (*shared).head.state = STATE_SETUP_FAILED;
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
        let core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        let cpu = libc::rlimit { rlim_cur: 5, rlim_max: 6 };
        // SAFETY: valid rlimit structures.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &core);
            libc::setrlimit(libc::RLIMIT_CPU, &cpu);
        }

        // Step 2: the region, and the image in it.
        let region = REGION_BASE as usize as *mut c_void;
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
        for c in plan.chunks {
            // SAFETY: the region is mapped read-write and the parent checked that every chunk
            // lies inside it; the sources are the parent's buffers, still valid in the child's
            // copy of memory.
            unsafe {
                std::ptr::copy_nonoverlapping(c.bytes.as_ptr(), c.addr as usize as *mut u8, c.bytes.len());
            }
        }

        // Step 3: alternate signal stack.
        let alt = map_anonymous(ALT_STACK_SIZE, libc::MAP_PRIVATE);
        if alt == libc::MAP_FAILED {
            setup_failed(shared, 3);
        }
        let ss = libc::stack_t { ss_sp: alt, ss_flags: 0, ss_size: ALT_STACK_SIZE };
        // SAFETY: `ss` describes the mapping above.
        if unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) } != 0 {
            setup_failed(shared, 3);
        }

        // Globals for the handler (the child's own copies).
        SHARED.store(shared, Ordering::SeqCst);
        COPY_ADDR.store(plan.copy_addr, Ordering::SeqCst);
        COPY_LEN.store(plan.copy_len, Ordering::SeqCst);

        // Step 4: signal handlers, all signals blocked while one runs.
        for sig in [libc::SIGSEGV, libc::SIGILL, libc::SIGFPE, libc::SIGTRAP, libc::SIGBUS] {
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
        // Step 6: a seccomp filter: from now on only the raw `exit` the handler makes.
        if !confine() {
            setup_failed(shared, 6);
        }
        let entry = plan.entry;
        // SAFETY: the region holds the code; handlers are installed; never returns.
        unsafe { enter_compat(&entry) }
    }

    /// Installs the seccomp filter that allows only the 64-bit `exit` system call and kills
    /// the process on any other (a guest `int $0x80` arrives as a 32-bit call and is killed
    /// too). A filter rather than strict mode: strict mode also sets CR4.TSD for the task
    /// (Linux's `disable_TSC`), which would make `rdtsc` fault where it normally runs.
    fn confine() -> bool {
        const BPF_LD_W_ABS: u16 = 0x20;
        const BPF_JMP_JEQ_K: u16 = 0x15;
        const BPF_RET_K: u16 = 0x06;
        const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
        const NR_OFFSET: u32 = 0; // seccomp_data.nr
        const ARCH_OFFSET: u32 = 4; // seccomp_data.arch
        let stmt = |code: u16, k: u32| libc::sock_filter { code, jt: 0, jf: 0, k };
        let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter { code: BPF_JMP_JEQ_K, jt, jf, k };
        #[allow(clippy::cast_possible_truncation)]
        let exit_nr = libc::SYS_exit as u32;
        let program = [
            stmt(BPF_LD_W_ABS, ARCH_OFFSET),
            jeq(AUDIT_ARCH_X86_64, 0, 3),
            stmt(BPF_LD_W_ABS, NR_OFFSET),
            jeq(exit_nr, 0, 1),
            stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW),
            stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        ];
        let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr().cast_mut() };
        // SAFETY: prctl with integer arguments, then with a pointer to a valid filter program
        // that outlives the call (the kernel copies it).
        unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) == 0
                && libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER as libc::c_ulong, &prog as *const libc::sock_fprog) == 0
        }
    }

    /// Loads DS/ES, rflags and the eight registers from `state` and far-jumps to
    /// 0x23:`state.eip`.
    ///
    /// # Safety
    /// Child only: the region must be mapped with the code in place, and the signal
    /// handler installed, since nothing comes back here.
    unsafe fn enter_compat(state: *const EntryState) -> ! {
        // SAFETY: per the function contract. The far pointer (m16:32, FF /5 without REX.W,
        // valid in 64-bit mode) is built on the stack below the entry state's copy; rflags is
        // loaded before the registers so that the moves keep it, and esp last but one.
        unsafe {
            asm!(
                "movl $0x2b, %eax",
                "movl %eax, %ds",
                "movl %eax, %es",
                "subq $16, %rsp",
                "movl 32(%rdi), %eax",
                "movl %eax, (%rsp)",
                "movw ${cs}, 4(%rsp)",
                "pushq 40(%rdi)",
                "popfq",
                "movl 0(%rdi), %eax",
                "movl 4(%rdi), %ecx",
                "movl 8(%rdi), %edx",
                "movl 12(%rdi), %ebx",
                "movl 20(%rdi), %ebp",
                "movl 24(%rdi), %esi",
                "movq %rsp, %r8",
                "movl 16(%rdi), %esp",
                "movl 28(%rdi), %edi",
                "ljmpl *(%r8)",
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
        #[allow(clippy::cast_sign_loss)]
        let r = |i: libc::c_int| g[i as usize] as u64;
        #[allow(clippy::cast_possible_truncation)]
        let low = |i: libc::c_int| r(i) as u32;
        let cs = r(libc::REG_CSGSFS) & 0xffff;
        let in_guest = cs == u64::from(USER32_CS);
        let copy_addr = COPY_ADDR.load(Ordering::Relaxed);
        let copy_len = COPY_LEN.load(Ordering::Relaxed).min(MAX_COPY);
        // SAFETY: `shared` is the mapped result page; the copied range lies in the region
        // (checked by the parent) and is at most MAX_COPY bytes long.
        unsafe {
            let s = &mut *shared;
            s.head = Header {
                state: STATE_NONE,
                setup_step: 0,
                setup_errno: 0,
                signo: sig,
                trapno: r(libc::REG_TRAPNO),
                err: r(libc::REG_ERR),
                cr2: r(libc::REG_CR2),
                rip: r(libc::REG_RIP),
                cs,
                regs: [
                    low(libc::REG_RAX),
                    low(libc::REG_RCX),
                    low(libc::REG_RDX),
                    low(libc::REG_RBX),
                    low(libc::REG_RSP),
                    low(libc::REG_RBP),
                    low(libc::REG_RSI),
                    low(libc::REG_RDI),
                ],
                eflags: low(libc::REG_EFL),
            };
            if in_guest {
                std::ptr::copy_nonoverlapping(copy_addr as *const u8, s.memory.as_mut_ptr(), copy_len);
            }
            fence(Ordering::SeqCst);
            s.head.state = if in_guest { STATE_DONE } else { STATE_HOST_FAULT };
        }
        exit_raw(0);
    }
}
