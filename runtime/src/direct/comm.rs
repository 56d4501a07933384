//! The runner's address-space layout and the page it shares with the VMM.
//!
//! Everything the runner has lives in one region at a fixed host address far
//! above the guest's 4 GiB (the same in every runner, so it tells nothing about
//! the VMM's own layout): its code, a private page, two stacks, and the shared
//! [`Comm`] block. Values in `Comm` written by the runner are guest-controlled
//! (an escaped guest can write anything there): the VMM copies them out once
//! and treats them as a guest user state.

use core::mem::offset_of;

/// Host address of the runner's region (64 GiB: above the 8 GiB its `munmap`s may
/// reach, see `filter`).
pub const BASE: u64 = 0x10_0000_0000;
/// The runner's code (copied from this binary), read-only and executable.
pub const CODE: u64 = BASE;
/// Largest runner code.
pub const CODE_MAX: u64 = 0x1_0000;
/// The private region: the SUD selector byte, the filter, the XSAVE init area (all
/// read-only once set up), the last command seen.
pub const PRIV: u64 = BASE + 0x1_0000;
pub const PRIV_SIZE: u64 = 0x1_0000;
/// The main stack (grows down from `STACK_TOP`).
pub const STACK_TOP: u64 = BASE + 0x3_0000;
/// The alternate signal stack.
pub const ALT_STACK: u64 = BASE + 0x3_0000;
pub const ALT_STACK_SIZE: u64 = 0x4_0000;
/// The shared block.
pub const COMM: u64 = BASE + 0x10_0000;
/// Size of the shared block (a multiple of the page size).
pub const COMM_SIZE: u64 = (core::mem::size_of::<Comm>() as u64).next_multiple_of(4096);
/// End of the region.
pub const END: u64 = COMM + COMM_SIZE;
/// The highest user address of a 47-bit address space.
pub const USER_TOP: u64 = 0x7fff_ffff_f000;
/// The guest-RAM memfd's number in the runner.
pub const MEMFD: u64 = 100;

/// Offsets inside the private page.
pub const PRIV_SELECTOR: u64 = 0;
pub const PRIV_FPROG: u64 = 16;
pub const PRIV_FILTER: u64 = 64;
/// An all-zero XSAVE area (standard form, XSTATE_BV = 0): restoring it puts every
/// extended register in its initial state.
pub const PRIV_XINIT: u64 = 0x1000;
/// The first bytes of the private region (the dispatch selector, the filter, the
/// XSAVE init area) are read-only once the runner is set up: an escaped guest
/// cannot turn Syscall User Dispatch off.
pub const PRIV_READONLY: u64 = 0x3000;
/// The last command seen (written by the runner; after the read-only part).
pub const PRIV_LAST_SEQ: u64 = 0x8000;

/// Operations one command carries at most.
pub const MAX_OPS: usize = 512;
/// Bytes of argument data (descriptors for `modify_ldt`) per command.
pub const DATA_BYTES: usize = 8192;

/// Commands.
pub const CMD_RUN: u32 = 1;
pub const CMD_OPS: u32 = 2;
pub const CMD_EXIT: u32 = 3;

/// Report kinds.
pub const KIND_READY: u32 = 1;
pub const KIND_TRAP: u32 = 2;
pub const KIND_RUNNER_FAULT: u32 = 3;
pub const KIND_OP_FAILED: u32 = 4;
pub const KIND_SETUP_FAILED: u32 = 5;
pub const KIND_OPS_DONE: u32 = 6;

/// Index of each value in [`Comm::entry`].
pub mod entry {
    pub const EIP: usize = 8;
    pub const EFLAGS: usize = 9;
    pub const CS: usize = 10;
    pub const SS: usize = 11;
    pub const DS: usize = 12;
    pub const ES: usize = 13;
    pub const FS: usize = 14;
    pub const GS: usize = 15;
}

/// One system call the runner makes before entering the guest.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Op {
    pub nr: u64,
    pub args: [u64; 6],
}

/// A 512-byte FXSAVE area, 64-byte aligned.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct FxArea(pub [u8; 512]);

/// The shared block.
#[repr(C, align(4096))]
pub struct Comm {
    // VMM → runner.
    /// Bumped by the VMM for each command (a futex).
    pub cmd_seq: u32,
    pub cmd: u32,
    pub n_ops: u32,
    pub _pad0: u32,
    /// eax ecx edx ebx esp ebp esi edi, eip, eflags, cs ss ds es fs gs.
    pub entry: [u32; 16],
    // Runner → VMM.
    /// Bumped by the runner for each report (a futex).
    pub report_seq: u32,
    pub kind: u32,
    pub signo: u32,
    pub code: u32,
    /// `si_addr` (SIGSEGV, SIGBUS) or `si_call_addr` (SIGSYS).
    pub addr: u64,
    pub syscall: u32,
    pub arch: u32,
    pub trapno: u64,
    pub err: u64,
    pub cr2: u64,
    pub rip: u64,
    pub rflags: u64,
    /// CS, GS, FS, SS as the kernel's sigcontext packs them.
    pub csgsfs: u64,
    /// rax rcx rdx rbx rsp rbp rsi rdi.
    pub regs: [u64; 8],
    /// ds es fs gs as the handler found them.
    pub dsegs: [u64; 4],
    /// READY: the seccomp listener's fd; OP_FAILED: the error, the op's index;
    /// SETUP_FAILED: the error, the step.
    pub aux: [u64; 2],
    /// The guest's x87/SSE state (both ways).
    pub fpu: FxArea,
    pub ops: [Op; MAX_OPS],
    pub data: [u8; DATA_BYTES],
}

/// Byte offsets into [`Comm`] as the runner's assembly uses them.
pub mod off {
    use super::*;
    pub const CMD_SEQ: usize = offset_of!(Comm, cmd_seq);
    pub const CMD: usize = offset_of!(Comm, cmd);
    pub const N_OPS: usize = offset_of!(Comm, n_ops);
    pub const ENTRY: usize = offset_of!(Comm, entry);
    pub const REPORT_SEQ: usize = offset_of!(Comm, report_seq);
    pub const KIND: usize = offset_of!(Comm, kind);
    pub const SIGNO: usize = offset_of!(Comm, signo);
    pub const CODE: usize = offset_of!(Comm, code);
    pub const ADDR: usize = offset_of!(Comm, addr);
    pub const SYSCALL: usize = offset_of!(Comm, syscall);
    pub const ARCH: usize = offset_of!(Comm, arch);
    pub const TRAPNO: usize = offset_of!(Comm, trapno);
    pub const ERR: usize = offset_of!(Comm, err);
    pub const CR2: usize = offset_of!(Comm, cr2);
    pub const RIP: usize = offset_of!(Comm, rip);
    pub const RFLAGS: usize = offset_of!(Comm, rflags);
    pub const CSGSFS: usize = offset_of!(Comm, csgsfs);
    pub const REGS: usize = offset_of!(Comm, regs);
    pub const DSEGS: usize = offset_of!(Comm, dsegs);
    pub const AUX: usize = offset_of!(Comm, aux);
    pub const FPU: usize = offset_of!(Comm, fpu);
    pub const OPS: usize = offset_of!(Comm, ops);
    pub const DATA: usize = offset_of!(Comm, data);
}

/// A report as the VMM copied it out of [`Comm`] (every field guest-controlled).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub kind: u32,
    pub signo: u32,
    pub code: u32,
    pub addr: u64,
    pub syscall: u32,
    pub arch: u32,
    pub trapno: u64,
    pub err: u64,
    pub cr2: u64,
    pub rip: u64,
    pub rflags: u64,
    pub cs: u16,
    pub ss: u16,
    /// ds es fs gs.
    pub dsegs: [u16; 4],
    /// rax rcx rdx rbx rsp rbp rsi rdi.
    pub regs: [u64; 8],
    pub aux: [u64; 2],
}

const _: () = assert!(COMM_SIZE <= 0x10_0000);
const _: () = assert!(PRIV_FILTER + 8 * 64 <= PRIV_XINIT);
const _: () = assert!(PRIV_XINIT + 0x2000 <= PRIV_READONLY);
const _: () = assert!(PRIV_READONLY <= PRIV_LAST_SEQ && PRIV_LAST_SEQ + 8 <= PRIV_SIZE);
