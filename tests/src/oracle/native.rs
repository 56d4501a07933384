//! The native half of the differential oracle: runs a [`Snippet`] directly on this CPU in
//! 32-bit compatibility mode, inside a forked child process, through the deprivileged
//! runner of `bt86-study` ([`bt86_study::native`], which documents the machinery: fork,
//! confinement, entry, signal handler, timeout).
//!
//! The snippet's code (with a `hlt` terminator appended) goes at `CODE_ADDR`, its data at
//! `DATA_ADDR`; the run starts at `CODE_ADDR` and the data block is copied back when it
//! ends. The appended `hlt` raises #GP (SIGSEGV, trap number 13) at its own address.
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
//! Guest code must not make system calls (`int $0x80`, `syscall`, `sysenter`): the runner's
//! seccomp filter kills the child (the run returns `Err`).

use bt86_runtime::snippet::{Snippet, SnippetFault, SnippetResult, CODE_ADDR, DATA_ADDR, STACK_TOP};
use bt86_study::native::{self, Chunk, Entry};

pub use bt86_study::native::{FLAGS_MASK, TIMEOUT, USER32_CS, USER_DS};

/// Largest code a snippet may have (the terminator must fit before the data block).
pub const MAX_CODE: usize = (DATA_ADDR - CODE_ADDR) as usize - 1;
/// Largest data block: up to the initial stack top (the limit `run_snippet` has too).
pub const MAX_DATA: usize = (STACK_TOP - DATA_ADDR) as usize;
/// The terminator appended to the code.
pub const HLT: u8 = 0xf4;

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
    let chunks = [
        Chunk { addr: CODE_ADDR, bytes: &code },
        Chunk { addr: DATA_ADDR, bytes: &s.data },
    ];
    let entry = Entry { eip: CODE_ADDR, regs, eflags: s.eflags };
    let data_end = DATA_ADDR + s.data.len() as u32;
    let exit = native::run(&chunks, &entry, DATA_ADDR..data_end).map_err(|e| e.to_string())?;
    let terminator = CODE_ADDR + s.code.len() as u32;
    let fault = if exit.signal == libc::SIGSEGV
        && exit.trapno == 13
        && exit.error_code == 0
        && exit.eip == terminator
    {
        None
    } else {
        Some(SnippetFault {
            vector: exit.trapno as u8,
            eip: exit.eip,
        })
    };
    Ok(NativeRun {
        result: SnippetResult {
            regs: exit.regs,
            eflags: exit.eflags & FLAGS_MASK,
            data: exit.memory,
            fault,
        },
        signal: exit.signal,
        trapno: exit.trapno,
        error_code: exit.error_code,
        cr2: exit.cr2,
    })
}
