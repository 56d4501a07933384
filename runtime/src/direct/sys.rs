//! Everything unsafe of direct execution: the runner's code (assembly, copied into
//! the runner), the fork and the child's set-up, the shared block, and the host
//! calls the VMM makes to drive the runner (futex, pidfd, seccomp notifications).
//!
//! The runner's code is position-independent assembly in this binary between
//! `bt86_runner_blob_start` and `bt86_runner_blob_end`. The child copies it to
//! [`comm::CODE`] and jumps there; from then on it uses nothing of the VMM's
//! image (which it unmaps), only constants and its own region:
//! - `entry`: unmaps everything outside its region (the VMM's code, heap, RAM
//!   alias, views, stacks, the vDSO), turns Syscall User Dispatch on for calls made
//!   outside its code, installs the seccomp filter with a listener, reports READY
//!   (with the listener's fd, which the VMM takes with `pidfd_getfd` and the runner
//!   then closes) and waits for commands;
//! - the command loop: waits on `Comm::cmd_seq`, makes the command's system calls
//!   (`Op`s: mmap, munmap, modify_ldt, close), loads DS/ES/FS/GS, the guest's
//!   x87/SSE state (`fxrstor64`) and enters the guest with `iretq` to its 32-bit
//!   code selector (in the runner's LDT);
//! - the signal handler (every trap signal, on the alternate stack, nothing
//!   blocked): copies the state the kernel saved (registers, CS/SS, trap number,
//!   error code, CR2, siginfo) and DS/ES/FS/GS into `Comm`, reloads the guest's
//!   x87/SSE state from the signal frame (`xrstor`) and stores it (`fxsave64`),
//!   publishes the report (a futex wake) and goes back to the command loop
//!   without `rt_sigreturn`. A kick (SIGUSR1) that lands in the runner's own code
//!   (a race with a trap) resumes that code exactly instead.
//!
//! No Rust code runs in the runner after the jump, so nothing there depends on
//! the FS base the guest may load (the VMM's own handlers never see guest code:
//! it runs in another process).

use super::comm::{self, off, Comm, Op, Report};
use super::filter::Insn;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use thiserror::Error;

/// Host failures of the runner's machinery (not guest events).
#[derive(Debug, Error)]
pub enum SysError {
    #[error("direct execution: {what}: {source}")]
    Host {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("direct execution: the runner's set-up failed at step {step}: {source}")]
    Setup {
        step: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("direct execution: the runner did not start within {0:?}")]
    StartTimeout(Duration),
    #[error("direct execution: the runner's code is larger than its region ({0} bytes)")]
    CodeTooLarge(usize),
}

fn host(what: &'static str) -> SysError {
    SysError::Host { what, source: std::io::Error::last_os_error() }
}

const UC_GREGS: usize = 40;
const UC_FPREGS: usize = 224;
const SA_RESTORER: u64 = 0x0400_0000;
const PR_SET_SYSCALL_USER_DISPATCH: u64 = 59;
const ARCH_SET_CPUID: u64 = 0x1012;
const ARCH_SET_GS: u64 = 0x1001;
const ARCH_SET_FS: u64 = 0x1002;
const FPX_MAGIC1: u32 = 0x4650_5853;

// The runner's code. Register use in the command loop: rbx = the shared block,
// r12 = the private page, r13/r14 = the current op.
std::arch::global_asm!(
    ".pushsection .text.bt86_runner,\"ax\",@progbits",
    ".balign 64",
    ".globl bt86_runner_blob_start",
    "bt86_runner_blob_start:",
    // Entry from the child's set-up (rsp anywhere; nothing is returned to).
    "    movabs rsp, {stack_top}",
    "    movabs rbx, {comm}",
    "    movabs r12, {privp}",
    // Nothing of the VMM's state stays in registers the guest could read after an
    // escape to 64-bit mode: FS/GS bases zero (the VMM's thread pointer was
    // there), every XSAVE component in its initial state (AVX upper halves, ...;
    // AMX tiles excluded: the kernel arms XFD for them).
    "    mov edi, {arch_set_fs}",
    "    xor esi, esi",
    "    mov eax, {nr_arch_prctl}",
    "    syscall",
    "    mov edi, {arch_set_gs}",
    "    xor esi, esi",
    "    mov eax, {nr_arch_prctl}",
    "    syscall",
    "    mov eax, 1",
    "    xor ecx, ecx",
    "    cpuid",
    "    bt ecx, 27",
    "    jnc 2f",
    "    mov eax, 0xfff9ffff",
    "    mov edx, 0xffffffff",
    "    xrstor64 [r12 + {priv_xinit}]",
    "2:",
    "    movabs rbx, {comm}",
    "    xor edi, edi",
    "    movabs rsi, {base}",
    "    mov eax, {nr_munmap}",
    "    syscall",
    "    mov r15d, 1",
    "    test rax, rax",
    "    jnz .Lbt86_setup_failed",
    "    movabs rdi, {end}",
    "    movabs rsi, {above}",
    "    mov eax, {nr_munmap}",
    "    syscall",
    "    mov r15d, 2",
    "    test rax, rax",
    "    jnz .Lbt86_setup_failed",
    // CPUID faulting (where the CPU has it): the guest's cpuid raises #GP and
    // runs translated, so it sees the guest's CPU model, not the host's. The
    // result goes to the READY report (aux[1]).
    "    mov edi, {arch_set_cpuid}",
    "    xor esi, esi",
    "    mov eax, {nr_arch_prctl}",
    "    syscall",
    "    mov [rbx + {o_aux} + 8], rax",
    // Syscall User Dispatch: calls from outside the runner's code raise SIGSYS.
    "    mov edi, {pr_sud}",
    "    mov esi, 1",
    "    movabs rdx, {code}",
    "    mov r10d, {code_max}",
    "    lea r8, [r12 + {priv_selector}]",
    "    mov byte ptr [r8], 1",
    "    mov eax, {nr_prctl}",
    "    syscall",
    "    mov r15d, 3",
    "    test rax, rax",
    "    jnz .Lbt86_setup_failed",
    // The dispatch selector, the filter and the XSAVE init area read-only.
    "    mov rdi, r12",
    "    mov esi, {priv_readonly}",
    "    mov edx, {prot_read}",
    "    mov eax, {nr_mprotect}",
    "    syscall",
    "    mov r15d, 6",
    "    test rax, rax",
    "    jnz .Lbt86_setup_failed",
    // PR_SET_NO_NEW_PRIVS, then the filter with a listener.
    "    mov edi, 38",
    "    mov esi, 1",
    "    xor edx, edx",
    "    xor r10d, r10d",
    "    xor r8d, r8d",
    "    mov eax, {nr_prctl}",
    "    syscall",
    "    mov r15d, 4",
    "    test rax, rax",
    "    jnz .Lbt86_setup_failed",
    "    mov edi, 1",
    "    mov esi, 8",
    "    lea rdx, [r12 + {priv_fprog}]",
    "    mov eax, {nr_seccomp}",
    "    syscall",
    "    mov r15d, 5",
    "    cmp rax, -4095",
    "    jae .Lbt86_setup_failed",
    "    mov [rbx + {o_aux}], rax",
    "    mov dword ptr [rbx + {o_kind}], {kind_ready}",
    "    call .Lbt86_publish",
    "    jmp .Lbt86_main",
    ".Lbt86_setup_failed:",
    "    mov [rbx + {o_aux}], rax",
    "    mov [rbx + {o_aux} + 8], r15",
    "    mov dword ptr [rbx + {o_kind}], {kind_setup_failed}",
    "    call .Lbt86_publish",
    "    mov edi, 2",
    "    mov eax, {nr_exit_group}",
    "    syscall",
    "    ud2",
    // Publish a report: bump report_seq and wake the VMM.
    ".Lbt86_publish:",
    "    lock inc dword ptr [rbx + {o_report_seq}]",
    "    lea rdi, [rbx + {o_report_seq}]",
    "    mov esi, 1",
    "    mov edx, 1",
    "    mov eax, {nr_futex}",
    "    syscall",
    "    ret",
    // The command loop.
    ".Lbt86_main:",
    "    movabs rsp, {stack_top}",
    "    movabs rbx, {comm}",
    "    movabs r12, {privp}",
    ".Lbt86_wait:",
    "    mov eax, [rbx + {o_cmd_seq}]",
    "    cmp eax, [r12 + {priv_last}]",
    "    jne .Lbt86_command",
    "    lea rdi, [rbx + {o_cmd_seq}]",
    "    xor esi, esi",
    "    mov edx, [r12 + {priv_last}]",
    "    xor r10d, r10d",
    "    mov eax, {nr_futex}",
    "    syscall",
    "    jmp .Lbt86_wait",
    ".Lbt86_command:",
    "    mov [r12 + {priv_last}], eax",
    "    mov eax, [rbx + {o_cmd}]",
    "    cmp eax, {cmd_exit}",
    "    jne .Lbt86_ops",
    "    xor edi, edi",
    "    mov eax, {nr_exit_group}",
    "    syscall",
    "    ud2",
    ".Lbt86_ops:",
    "    xor r13d, r13d",
    ".Lbt86_op:",
    "    cmp r13d, [rbx + {o_n_ops}]",
    "    jae .Lbt86_ops_done",
    "    cmp r13d, {max_ops}",
    "    jae .Lbt86_ops_done",
    "    imul r14, r13, {op_size}",
    "    lea r14, [rbx + r14 + {o_ops}]",
    "    mov rax, [r14]",
    "    mov rdi, [r14 + 8]",
    "    mov rsi, [r14 + 16]",
    "    mov rdx, [r14 + 24]",
    "    mov r10, [r14 + 32]",
    "    mov r8, [r14 + 40]",
    "    mov r9, [r14 + 48]",
    "    syscall",
    "    cmp rax, -4095",
    "    jae .Lbt86_op_failed",
    "    inc r13d",
    "    jmp .Lbt86_op",
    ".Lbt86_op_failed:",
    "    mov [rbx + {o_aux}], rax",
    "    mov [rbx + {o_aux} + 8], r13",
    "    mov dword ptr [rbx + {o_kind}], {kind_op_failed}",
    "    call .Lbt86_publish",
    "    jmp .Lbt86_main",
    ".Lbt86_ops_done:",
    "    cmp dword ptr [rbx + {o_cmd}], {cmd_run}",
    "    je .Lbt86_enter",
    "    mov dword ptr [rbx + {o_kind}], {kind_ops_done}",
    "    call .Lbt86_publish",
    "    jmp .Lbt86_main",
    // Enter the guest: segments, x87/SSE, an iretq frame, registers.
    ".Lbt86_enter:",
    "    mov eax, [rbx + {o_entry} + 48]",
    "    mov ds, eax",
    "    mov eax, [rbx + {o_entry} + 52]",
    "    mov es, eax",
    "    mov eax, [rbx + {o_entry} + 56]",
    "    mov fs, eax",
    "    mov eax, [rbx + {o_entry} + 60]",
    "    mov gs, eax",
    "    fxrstor64 [rbx + {o_fpu}]",
    "    mov eax, [rbx + {o_entry} + 44]",
    "    push rax",
    "    mov eax, [rbx + {o_entry} + 16]",
    "    push rax",
    "    mov eax, [rbx + {o_entry} + 36]",
    "    push rax",
    "    mov eax, [rbx + {o_entry} + 40]",
    "    push rax",
    "    mov eax, [rbx + {o_entry} + 32]",
    "    push rax",
    "    xor r8d, r8d",
    "    xor r9d, r9d",
    "    xor r10d, r10d",
    "    xor r11d, r11d",
    "    xor r12d, r12d",
    "    xor r13d, r13d",
    "    xor r14d, r14d",
    "    xor r15d, r15d",
    "    mov eax, [rbx + {o_entry}]",
    "    mov ecx, [rbx + {o_entry} + 4]",
    "    mov edx, [rbx + {o_entry} + 8]",
    "    mov ebp, [rbx + {o_entry} + 20]",
    "    mov esi, [rbx + {o_entry} + 24]",
    "    mov edi, [rbx + {o_entry} + 28]",
    "    mov ebx, [rbx + {o_entry} + 12]",
    "    iretq",
    // The signal handler: rdi = signal, rsi = siginfo, rdx = ucontext.
    ".balign 16",
    ".globl bt86_runner_handler",
    "bt86_runner_handler:",
    "    movabs rbx, {comm}",
    "    mov r13, rdx",
    "    mov rax, [r13 + {uc_gregs} + 18 * 8]",
    "    cmp ax, 0x33",
    "    jne .Lbt86_trap",
    "    mov rax, [r13 + {uc_gregs} + 16 * 8]",
    "    movabs rcx, {code}",
    "    sub rax, rcx",
    "    cmp rax, {code_max}",
    "    jae .Lbt86_trap",
    "    cmp edi, {sigusr1}",
    "    je .Lbt86_resume",
    "    mov dword ptr [rbx + {o_kind}], {kind_runner_fault}",
    "    jmp .Lbt86_fill",
    ".Lbt86_trap:",
    "    mov dword ptr [rbx + {o_kind}], {kind_trap}",
    ".Lbt86_fill:",
    "    mov [rbx + {o_signo}], edi",
    "    mov eax, [rsi + 8]",
    "    mov [rbx + {o_code}], eax",
    "    mov rax, [rsi + 16]",
    "    mov [rbx + {o_addr}], rax",
    "    mov eax, [rsi + 24]",
    "    mov [rbx + {o_syscall}], eax",
    "    mov eax, [rsi + 28]",
    "    mov [rbx + {o_arch}], eax",
    "    mov rax, [r13 + {uc_gregs} + 20 * 8]",
    "    mov [rbx + {o_trapno}], rax",
    "    mov rax, [r13 + {uc_gregs} + 19 * 8]",
    "    mov [rbx + {o_err}], rax",
    "    mov rax, [r13 + {uc_gregs} + 22 * 8]",
    "    mov [rbx + {o_cr2}], rax",
    "    mov rax, [r13 + {uc_gregs} + 16 * 8]",
    "    mov [rbx + {o_rip}], rax",
    "    mov rax, [r13 + {uc_gregs} + 17 * 8]",
    "    mov [rbx + {o_rflags}], rax",
    "    mov rax, [r13 + {uc_gregs} + 18 * 8]",
    "    mov [rbx + {o_csgsfs}], rax",
    "    mov rax, [r13 + {uc_gregs} + 13 * 8]",
    "    mov [rbx + {o_regs}], rax",
    "    mov rax, [r13 + {uc_gregs} + 14 * 8]",
    "    mov [rbx + {o_regs} + 8], rax",
    "    mov rax, [r13 + {uc_gregs} + 12 * 8]",
    "    mov [rbx + {o_regs} + 16], rax",
    "    mov rax, [r13 + {uc_gregs} + 11 * 8]",
    "    mov [rbx + {o_regs} + 24], rax",
    "    mov rax, [r13 + {uc_gregs} + 15 * 8]",
    "    mov [rbx + {o_regs} + 32], rax",
    "    mov rax, [r13 + {uc_gregs} + 10 * 8]",
    "    mov [rbx + {o_regs} + 40], rax",
    "    mov rax, [r13 + {uc_gregs} + 9 * 8]",
    "    mov [rbx + {o_regs} + 48], rax",
    "    mov rax, [r13 + {uc_gregs} + 8 * 8]",
    "    mov [rbx + {o_regs} + 56], rax",
    "    xor eax, eax",
    "    mov ax, ds",
    "    mov [rbx + {o_dsegs}], rax",
    "    mov ax, es",
    "    mov [rbx + {o_dsegs} + 8], rax",
    "    mov ax, fs",
    "    mov [rbx + {o_dsegs} + 16], rax",
    "    mov ax, gs",
    "    mov [rbx + {o_dsegs} + 24], rax",
    "    mov rcx, [r13 + {uc_fpregs}]",
    "    test rcx, rcx",
    "    jz .Lbt86_fpu_done",
    "    cmp dword ptr [rcx + 464], {fpx_magic}",
    "    jne .Lbt86_fpu_fx",
    "    mov eax, 3",
    "    xor edx, edx",
    "    xrstor64 [rcx]",
    "    jmp .Lbt86_fpu_save",
    ".Lbt86_fpu_fx:",
    "    fxrstor64 [rcx]",
    ".Lbt86_fpu_save:",
    "    fxsave64 [rbx + {o_fpu}]",
    ".Lbt86_fpu_done:",
    "    call .Lbt86_publish",
    "    jmp .Lbt86_main",
    // A kick that interrupted the runner's own code: put everything back.
    ".Lbt86_resume:",
    "    mov rcx, [r13 + {uc_fpregs}]",
    "    test rcx, rcx",
    "    jz .Lbt86_resume_regs",
    "    cmp dword ptr [rcx + 464], {fpx_magic}",
    "    jne .Lbt86_resume_fx",
    "    mov eax, -1",
    "    mov edx, -1",
    "    xrstor64 [rcx]",
    "    jmp .Lbt86_resume_regs",
    ".Lbt86_resume_fx:",
    "    fxrstor64 [rcx]",
    ".Lbt86_resume_regs:",
    "    push 0x2b",
    "    push qword ptr [r13 + {uc_gregs} + 15 * 8]",
    "    push qword ptr [r13 + {uc_gregs} + 17 * 8]",
    "    push 0x33",
    "    push qword ptr [r13 + {uc_gregs} + 16 * 8]",
    "    mov r8, [r13 + {uc_gregs}]",
    "    mov r9, [r13 + {uc_gregs} + 8]",
    "    mov r10, [r13 + {uc_gregs} + 2 * 8]",
    "    mov r11, [r13 + {uc_gregs} + 3 * 8]",
    "    mov r12, [r13 + {uc_gregs} + 4 * 8]",
    "    mov r14, [r13 + {uc_gregs} + 6 * 8]",
    "    mov r15, [r13 + {uc_gregs} + 7 * 8]",
    "    mov rdi, [r13 + {uc_gregs} + 8 * 8]",
    "    mov rsi, [r13 + {uc_gregs} + 9 * 8]",
    "    mov rbp, [r13 + {uc_gregs} + 10 * 8]",
    "    mov rbx, [r13 + {uc_gregs} + 11 * 8]",
    "    mov rdx, [r13 + {uc_gregs} + 12 * 8]",
    "    mov rax, [r13 + {uc_gregs} + 13 * 8]",
    "    mov rcx, [r13 + {uc_gregs} + 14 * 8]",
    "    mov r13, [r13 + {uc_gregs} + 5 * 8]",
    "    iretq",
    ".globl bt86_runner_restorer",
    "bt86_runner_restorer:",
    "    ud2",
    ".globl bt86_runner_blob_end",
    "bt86_runner_blob_end:",
    ".popsection",
    stack_top = const comm::STACK_TOP,
    comm = const comm::COMM,
    privp = const comm::PRIV,
    base = const comm::BASE,
    end = const comm::END,
    above = const comm::USER_TOP - comm::END,
    code = const comm::CODE,
    code_max = const comm::CODE_MAX,
    pr_sud = const PR_SET_SYSCALL_USER_DISPATCH,
    priv_selector = const comm::PRIV_SELECTOR,
    priv_fprog = const comm::PRIV_FPROG,
    priv_last = const comm::PRIV_LAST_SEQ,
    priv_readonly = const comm::PRIV_READONLY,
    prot_read = const libc::PROT_READ,
    nr_mprotect = const libc::SYS_mprotect,
    nr_munmap = const libc::SYS_munmap,
    nr_arch_prctl = const libc::SYS_arch_prctl,
    arch_set_cpuid = const ARCH_SET_CPUID,
    arch_set_fs = const ARCH_SET_FS,
    arch_set_gs = const ARCH_SET_GS,
    priv_xinit = const comm::PRIV_XINIT,
    nr_prctl = const libc::SYS_prctl,
    nr_seccomp = const libc::SYS_seccomp,
    nr_futex = const libc::SYS_futex,
    nr_exit_group = const libc::SYS_exit_group,
    o_cmd_seq = const off::CMD_SEQ,
    o_cmd = const off::CMD,
    o_n_ops = const off::N_OPS,
    o_entry = const off::ENTRY,
    o_report_seq = const off::REPORT_SEQ,
    o_kind = const off::KIND,
    o_signo = const off::SIGNO,
    o_code = const off::CODE,
    o_addr = const off::ADDR,
    o_syscall = const off::SYSCALL,
    o_arch = const off::ARCH,
    o_trapno = const off::TRAPNO,
    o_err = const off::ERR,
    o_cr2 = const off::CR2,
    o_rip = const off::RIP,
    o_rflags = const off::RFLAGS,
    o_csgsfs = const off::CSGSFS,
    o_regs = const off::REGS,
    o_dsegs = const off::DSEGS,
    o_aux = const off::AUX,
    o_fpu = const off::FPU,
    o_ops = const off::OPS,
    op_size = const core::mem::size_of::<Op>(),
    max_ops = const comm::MAX_OPS,
    cmd_exit = const comm::CMD_EXIT,
    cmd_run = const comm::CMD_RUN,
    kind_ready = const comm::KIND_READY,
    kind_trap = const comm::KIND_TRAP,
    kind_runner_fault = const comm::KIND_RUNNER_FAULT,
    kind_op_failed = const comm::KIND_OP_FAILED,
    kind_setup_failed = const comm::KIND_SETUP_FAILED,
    kind_ops_done = const comm::KIND_OPS_DONE,
    uc_gregs = const UC_GREGS,
    uc_fpregs = const UC_FPREGS,
    sigusr1 = const libc::SIGUSR1,
    fpx_magic = const FPX_MAGIC1,
);

extern "C" {
    static bt86_runner_blob_start: u8;
    static bt86_runner_blob_end: u8;
    static bt86_runner_handler: u8;
    static bt86_runner_restorer: u8;
}

/// The runner's code in this binary: (start address, length, handler offset,
/// restorer offset).
fn blob() -> (usize, usize, u64, u64) {
    let start = core::ptr::addr_of!(bt86_runner_blob_start) as usize;
    let end = core::ptr::addr_of!(bt86_runner_blob_end) as usize;
    let handler = core::ptr::addr_of!(bt86_runner_handler) as usize;
    let restorer = core::ptr::addr_of!(bt86_runner_restorer) as usize;
    (start, end - start, (handler - start) as u64, (restorer - start) as u64)
}

/// The signals the runner handles.
const SIGNALS: [libc::c_int; 7] =
    [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGTRAP, libc::SIGSYS, libc::SIGUSR1];

/// The kernel's `struct sigaction` for `rt_sigaction` on x86-64.
#[repr(C)]
struct KernelSigaction {
    handler: u64,
    flags: u64,
    restorer: u64,
    mask: u64,
}

/// `struct sock_fprog`.
#[repr(C)]
struct Fprog {
    len: u16,
    filter: u64,
}

/// Makes the calling thread's timed sleeps (the futex waits for a runner's report,
/// timed to the next guest timer event) end on time rather than up to 50 µs late
/// (the default timer slack).
pub fn tighten_timer_slack() {
    // SAFETY: prctl with integer arguments, on the calling thread only.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
}

/// A live runner process as the VMM holds it.
pub struct Process {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    /// The seccomp listener (the VMM's copy).
    listener: OwnedFd,
    /// The runner's number for the listener (to close it there).
    pub runner_listener_fd: u64,
    /// The guest's `cpuid` faults in the runner (CPUID faulting is on).
    pub cpuid_faulting: bool,
    /// The VMM's mapping of the shared block.
    comm: *mut Comm,
    reaped: bool,
}

// SAFETY: the process handle owns its mapping and fds; nothing is tied to a thread
// (the kill on drop is by pidfd).
unsafe impl Send for Process {}

/// A seccomp notification as received.
#[derive(Clone, Copy, Debug)]
pub struct Notification {
    pub id: u64,
    pub pid: u32,
    pub nr: i32,
    pub arch: u32,
    pub args: [u64; 6],
}

/// What waiting for a report gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    /// `report_seq` moved.
    Report,
    /// The time ran out.
    TimedOut,
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl Process {
    /// Forks a runner holding `memfd` (as fd [`comm::MEMFD`]) under `filter`, and
    /// waits for it to report READY.
    pub fn spawn(memfd: RawFd, filter: &[Insn], start_timeout: Duration) -> Result<Process, SysError> {
        let (blob_start, blob_len, handler, restorer) = blob();
        if blob_len as u64 > comm::CODE_MAX {
            return Err(SysError::CodeTooLarge(blob_len));
        }
        let len = usize::try_from(comm::COMM_SIZE).unwrap_or(usize::MAX);
        // SAFETY: a fresh shared anonymous mapping; the kernel picks the address.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0)
        };
        if p == libc::MAP_FAILED {
            return Err(host("mmap of the shared block"));
        }
        let comm_ptr = p.cast::<Comm>();
        let plan = ChildPlan {
            parent: i32::try_from(std::process::id()).unwrap_or(-1),
            memfd,
            comm_vmm: p as u64,
            blob_start,
            blob_len,
            handler: comm::CODE + handler,
            restorer: comm::CODE + restorer,
            filter_ptr: filter.as_ptr(),
            filter_len: filter.len(),
        };
        // SAFETY: the child runs only `child_main`, which makes raw system calls and
        // plain memory copies (async-signal-safe) and never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            // SAFETY: our own mapping, not yet shared with anyone.
            unsafe { libc::munmap(p, len) };
            return Err(host("fork of the runner"));
        }
        if pid == 0 {
            child_main(&plan);
        }
        // SAFETY: pidfd_open on our own unreaped child.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let pidfd = match i32::try_from(pidfd) {
            Ok(fd) if fd >= 0 => fd,
            _ => {
                let e = host("pidfd_open");
                kill_reap(pid);
                // SAFETY: as above; the child is gone.
                unsafe { libc::munmap(p, len) };
                return Err(e);
            }
        };
        // SAFETY: a new fd we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        // SAFETY: a placeholder fd (dup of the pidfd) replaced below before use.
        let mut proc = Process { pid, pidfd, listener: placeholder_fd()?, runner_listener_fd: 0, cpuid_faulting: false, comm: comm_ptr, reaped: false };
        match proc.wait_report(0, Some(start_timeout))? {
            Waited::Report => {}
            Waited::TimedOut => return Err(SysError::StartTimeout(start_timeout)),
        }
        let r = proc.report();
        if r.kind == comm::KIND_SETUP_FAILED {
            #[allow(clippy::cast_possible_truncation)]
            let e = (r.aux[0] as i64).unsigned_abs() as i32;
            return Err(SysError::Setup { step: r.aux[1], source: std::io::Error::from_raw_os_error(e) });
        }
        if r.kind != comm::KIND_READY {
            return Err(SysError::Host { what: "runner start", source: std::io::Error::other(format!("report kind {} signal {} trap {} at {:#x}", r.kind, r.signo, r.trapno, r.rip.wrapping_sub(comm::CODE))) });
        }
        // SAFETY: pidfd_getfd on our child's listener fd (the number it reported).
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, proc.pidfd.as_raw_fd(), r.aux[0], 0) };
        let fd = i32::try_from(fd).ok().filter(|&f| f >= 0).ok_or_else(|| host("pidfd_getfd of the seccomp listener"))?;
        // SAFETY: a new fd we own.
        proc.listener = unsafe { OwnedFd::from_raw_fd(fd) };
        proc.runner_listener_fd = r.aux[0];
        proc.cpuid_faulting = r.aux[1] == 0;
        Ok(proc)
    }

    pub fn pid(&self) -> u32 {
        u32::try_from(self.pid).unwrap_or(0)
    }

    fn seq(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` is the offset of a u32 field of the mapped, aligned block,
        // which lives as long as `self`; other processes change it only atomically.
        unsafe { &*(self.comm.cast::<u8>().add(offset).cast::<AtomicU32>()) }
    }

    /// The runner's report counter now.
    pub fn report_seq(&self) -> u32 {
        self.seq(off::REPORT_SEQ).load(Ordering::Acquire)
    }

    /// Writes a command with its operations and entry state, and wakes the runner.
    pub fn send(&mut self, cmd: u32, ops: &[Op], data: &[u8], entry: &[u32; 16], fpu: &[u8; 512]) {
        let n = ops.len().min(comm::MAX_OPS);
        let d = data.len().min(comm::DATA_BYTES);
        // SAFETY: the block is mapped read-write for our lifetime; the runner reads
        // these fields only after the seq bump below (release), and a hostile runner
        // writing them concurrently only changes what it is asked to do.
        unsafe {
            let c = self.comm;
            std::ptr::copy_nonoverlapping(ops.as_ptr(), core::ptr::addr_of_mut!((*c).ops).cast::<Op>(), n);
            std::ptr::copy_nonoverlapping(data.as_ptr(), core::ptr::addr_of_mut!((*c).data).cast::<u8>(), d);
            std::ptr::write_volatile(core::ptr::addr_of_mut!((*c).entry), *entry);
            std::ptr::write_volatile(core::ptr::addr_of_mut!((*c).fpu.0), *fpu);
            std::ptr::write_volatile(core::ptr::addr_of_mut!((*c).n_ops), n as u32);
            std::ptr::write_volatile(core::ptr::addr_of_mut!((*c).cmd), cmd);
        }
        self.seq(off::CMD_SEQ).fetch_add(1, Ordering::Release);
        futex_wake(self.seq(off::CMD_SEQ));
    }

    /// Waits until the report counter differs from `seen` or `timeout` passes.
    pub fn wait_report(&self, seen: u32, timeout: Option<Duration>) -> Result<Waited, SysError> {
        let word = self.seq(off::REPORT_SEQ);
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            if word.load(Ordering::Acquire) != seen {
                return Ok(Waited::Report);
            }
            let left = match deadline {
                Some(d) => {
                    let now = std::time::Instant::now();
                    if now >= d {
                        return Ok(Waited::TimedOut);
                    }
                    Some(d - now)
                }
                None => None,
            };
            futex_wait(word, seen, left)?;
        }
    }

    /// Copies the last report out of the block (once; every value guest-controlled).
    pub fn report(&self) -> Report {
        // SAFETY: reads of plain integers from our mapping; volatile because the
        // runner writes them.
        unsafe {
            let c = self.comm;
            let rd = |p: *const u64| std::ptr::read_volatile(p);
            let csgsfs = rd(core::ptr::addr_of!((*c).csgsfs));
            let dsegs: [u64; 4] = std::ptr::read_volatile(core::ptr::addr_of!((*c).dsegs));
            #[allow(clippy::cast_possible_truncation)]
            Report {
                kind: std::ptr::read_volatile(core::ptr::addr_of!((*c).kind)),
                signo: std::ptr::read_volatile(core::ptr::addr_of!((*c).signo)),
                code: std::ptr::read_volatile(core::ptr::addr_of!((*c).code)),
                addr: rd(core::ptr::addr_of!((*c).addr)),
                syscall: std::ptr::read_volatile(core::ptr::addr_of!((*c).syscall)),
                arch: std::ptr::read_volatile(core::ptr::addr_of!((*c).arch)),
                trapno: rd(core::ptr::addr_of!((*c).trapno)),
                err: rd(core::ptr::addr_of!((*c).err)),
                cr2: rd(core::ptr::addr_of!((*c).cr2)),
                rip: rd(core::ptr::addr_of!((*c).rip)),
                rflags: rd(core::ptr::addr_of!((*c).rflags)),
                cs: csgsfs as u16,
                ss: (csgsfs >> 48) as u16,
                dsegs: dsegs.map(|v| v as u16),
                regs: std::ptr::read_volatile(core::ptr::addr_of!((*c).regs)),
                aux: std::ptr::read_volatile(core::ptr::addr_of!((*c).aux)),
            }
        }
    }

    /// The x87/SSE image the runner stored with its last report.
    pub fn fpu(&self) -> [u8; 512] {
        // SAFETY: a plain byte array in our mapping.
        unsafe { std::ptr::read_volatile(core::ptr::addr_of!((*self.comm).fpu.0)) }
    }

    /// Waits up to `timeout` for a seccomp notification; None if none came.
    pub fn next_notification(&self, timeout: Duration) -> Result<Option<Notification>, SysError> {
        let mut pfd = libc::pollfd { fd: self.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            if errno() == libc::EINTR {
                return Ok(None);
            }
            return Err(host("poll of the seccomp listener"));
        }
        if r == 0 || pfd.revents & libc::POLLIN == 0 {
            return Ok(None);
        }
        // SAFETY: zeroed seccomp_notif is valid (plain integers); the ioctl fills it.
        let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: RECV on our listener with a valid, zeroed buffer of the right size.
        let r = unsafe { libc::ioctl(self.listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut n) };
        if r < 0 {
            let e = errno();
            if e == libc::EINTR || e == libc::ENOENT {
                return Ok(None);
            }
            return Err(host("seccomp notification receive"));
        }
        Ok(Some(Notification { id: n.id, pid: n.pid, nr: n.data.nr, arch: n.data.arch, args: n.data.args }))
    }

    /// Answers notification `id`: let the call through unchanged, or fail it with
    /// EPERM. False if the call is gone (interrupted).
    pub fn answer(&self, id: u64, allow: bool) -> Result<bool, SysError> {
        // SAFETY: a zeroed response is valid; fields set below.
        let mut resp: libc::seccomp_notif_resp = unsafe { std::mem::zeroed() };
        resp.id = id;
        if allow {
            resp.flags = u32::try_from(libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE).unwrap_or(1);
        } else {
            resp.error = -libc::EPERM;
        }
        // SAFETY: SEND on our listener with a valid response.
        let r = unsafe { libc::ioctl(self.listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
        if r < 0 {
            if errno() == libc::ENOENT {
                return Ok(false);
            }
            return Err(host("seccomp notification answer"));
        }
        Ok(true)
    }

    /// Sends the runner a kick (SIGUSR1): it reports from wherever the guest is.
    pub fn kick(&self) {
        // SAFETY: pidfd_send_signal on our own child's pidfd, no siginfo.
        unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, self.pidfd.as_raw_fd(), libc::SIGUSR1, std::ptr::null::<u8>(), 0);
        }
    }

    /// Whether the runner has exited (reaps it if so).
    pub fn exited(&mut self) -> bool {
        if self.reaped {
            return true;
        }
        let mut status = 0;
        // SAFETY: waits without blocking for our own child.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        if r == self.pid {
            self.reaped = true;
        }
        self.reaped
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: pidfd_send_signal on our own child's pidfd.
            unsafe {
                libc::syscall(libc::SYS_pidfd_send_signal, self.pidfd.as_raw_fd(), libc::SIGKILL, std::ptr::null::<u8>(), 0);
            }
            let mut status = 0;
            // SAFETY: reaps our own child (it was killed above).
            unsafe { libc::waitpid(self.pid, &mut status, 0) };
        }
        // SAFETY: our mapping of the block; the runner is gone.
        unsafe { libc::munmap(self.comm.cast(), usize::try_from(comm::COMM_SIZE).unwrap_or(0)) };
    }
}

fn placeholder_fd() -> Result<OwnedFd, SysError> {
    // SAFETY: opens /dev/null read-only; a new fd we own.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(host("open /dev/null"));
    }
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn kill_reap(pid: libc::pid_t) {
    // SAFETY: `pid` is our unreaped child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE (shared, not private: another process waits) on a valid word.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1, std::ptr::null::<libc::timespec>());
    }
}

fn futex_wait(word: &AtomicU32, seen: u32, timeout: Option<Duration>) -> Result<(), SysError> {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(t.subsec_nanos()),
    });
    let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT on a valid word with a valid (or null) relative timeout.
    let r = unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, seen, tsp) };
    if r < 0 {
        let e = errno();
        if e != libc::EAGAIN && e != libc::EINTR && e != libc::ETIMEDOUT {
            return Err(host("futex wait"));
        }
    }
    Ok(())
}

/// What the child needs, prepared before the fork (it must not allocate).
struct ChildPlan {
    parent: i32,
    memfd: RawFd,
    comm_vmm: u64,
    blob_start: usize,
    blob_len: usize,
    handler: u64,
    restorer: u64,
    filter_ptr: *const Insn,
    filter_len: usize,
}

/// Leaves the child with a report of a failed set-up step (the block is still at
/// its VMM address).
fn child_failed(plan: &ChildPlan, comm_at: u64, step: u64) -> ! {
    let e = errno();
    let c = comm_at as *mut Comm;
    // SAFETY: `c` is the shared block, mapped at `comm_at` in this process.
    unsafe {
        std::ptr::write_volatile(core::ptr::addr_of_mut!((*c).aux), [(-i64::from(e)) as u64, step]);
        std::ptr::write_volatile(core::ptr::addr_of_mut!((*c).kind), comm::KIND_SETUP_FAILED);
        let seq = &*(core::ptr::addr_of_mut!((*c).report_seq).cast::<AtomicU32>());
        seq.fetch_add(1, Ordering::Release);
        futex_wake(seq);
    }
    let _ = plan;
    // SAFETY: exit_group does not return.
    unsafe { libc::syscall(libc::SYS_exit_group, 2) };
    unreachable!()
}

extern "C" {
    /// glibc (2.35+): offset of the thread's `struct rseq` from the thread pointer.
    static __rseq_offset: isize;
    /// glibc (2.35+): size of the registered area (0: not registered).
    static __rseq_size: u32;
}

/// Unregisters the calling thread's rseq area, if glibc registered one.
fn unregister_rseq() {
    const RSEQ_FLAG_UNREGISTER: u64 = 1;
    const RSEQ_SIG: u64 = 0x5305_3053;
    // SAFETY: reads two glibc constants and the thread pointer (fs:0 holds the TCB's
    // own address in glibc on x86-64); the rseq call only unregisters (it fails
    // harmlessly if the area or length differ).
    unsafe {
        let size = __rseq_size;
        if size == 0 {
            return;
        }
        let tp: u64;
        std::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly, preserves_flags));
        let area = tp.wrapping_add_signed(i64::try_from(__rseq_offset).unwrap_or(0));
        for len in [32u64, u64::from(size)] {
            if libc::syscall(libc::SYS_rseq, area, len, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) == 0 {
                return;
            }
        }
    }
}

/// The child, right after the fork: only raw system calls and memory copies.
fn child_main(plan: &ChildPlan) -> ! {
    let comm_vmm = plan.comm_vmm;
    // SAFETY: (whole block) system calls with integer arguments or pointers to
    // locals and to mappings this process owns; the region at `comm::BASE` is
    // mapped with MAP_FIXED (whatever was there is the VMM's, which this process
    // drops anyway); nothing returns to Rust code after the final jump.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 || libc::getppid() != plan.parent {
            child_failed(plan, comm_vmm, 10);
        }
        // glibc registered this thread's rseq area (in the VMM's TLS, which goes
        // away below): unregister it, or the kernel's next rseq update kills us.
        unregister_rseq();
        let core0 = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &core0);
        // The guest-RAM memfd at a known number; every other fd closed.
        let memfd = comm::MEMFD as libc::c_int;
        if plan.memfd != memfd && libc::dup2(plan.memfd, memfd) != memfd {
            child_failed(plan, comm_vmm, 11);
        }
        libc::syscall(libc::SYS_close_range, 0u32, (memfd - 1) as u32, 0u32);
        libc::syscall(libc::SYS_close_range, (memfd + 1) as u32, u32::MAX, 0u32);
        // The region: code, private page, stacks.
        let priv_len = (comm::COMM - comm::BASE) as usize;
        let r = libc::mmap(
            comm::BASE as *mut libc::c_void,
            priv_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        );
        if r as u64 != comm::BASE {
            child_failed(plan, comm_vmm, 12);
        }
        std::ptr::copy_nonoverlapping(plan.blob_start as *const u8, comm::CODE as *mut u8, plan.blob_len);
        if libc::mprotect(comm::CODE as *mut libc::c_void, comm::CODE_MAX as usize, libc::PROT_READ | libc::PROT_EXEC) != 0 {
            child_failed(plan, comm_vmm, 13);
        }
        // The filter and its fprog in the private page.
        let filter_at = (comm::PRIV + comm::PRIV_FILTER) as *mut Insn;
        std::ptr::copy_nonoverlapping(plan.filter_ptr, filter_at, plan.filter_len);
        let fprog = (comm::PRIV + comm::PRIV_FPROG) as *mut Fprog;
        std::ptr::write(fprog, Fprog { len: plan.filter_len as u16, filter: filter_at as u64 });
        // The shared block, moved to its place in the region.
        let r = libc::mremap(
            comm_vmm as *mut libc::c_void,
            comm::COMM_SIZE as usize,
            comm::COMM_SIZE as usize,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            comm::COMM as *mut libc::c_void,
        );
        if r as u64 != comm::COMM {
            child_failed(plan, comm_vmm, 14);
        }
        // From here on the block is at comm::COMM.
        let ss = libc::stack_t { ss_sp: comm::ALT_STACK as *mut libc::c_void, ss_flags: 0, ss_size: comm::ALT_STACK_SIZE as usize };
        if libc::sigaltstack(&ss, std::ptr::null_mut()) != 0 {
            child_failed(plan, comm::COMM, 15);
        }
        let act = KernelSigaction {
            handler: plan.handler,
            flags: (libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER | libc::SA_RESTART) as u64 | SA_RESTORER,
            restorer: plan.restorer,
            mask: 0,
        };
        for sig in SIGNALS {
            if libc::syscall(libc::SYS_rt_sigaction, sig, &act as *const KernelSigaction, std::ptr::null_mut::<u8>(), 8usize) != 0 {
                child_failed(plan, comm::COMM, 16);
            }
        }
        let empty: u64 = 0;
        if libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &empty as *const u64, std::ptr::null_mut::<u8>(), 8usize) != 0 {
            child_failed(plan, comm::COMM, 17);
        }
        // Into the runner's own code, for good.
        std::arch::asm!("jmp {0}", in(reg) comm::CODE, options(noreturn));
    }
}
