//! The runner's seccomp filter, as classic BPF.
//!
//! What the runner may do once guest code can run in it (an escaped guest can do
//! the same, so this is the whole of what an escape gains):
//! - `prctl(PR_SET_TSC)` (rdtsc native or trapping, as the guest's TSC needs);
//! - `futex` (its half of the protocol with the VMM), `exit`, `exit_group`,
//!   `close`, `modify_ldt` (it can only create DPL-3 code and data segments,
//!   which the host GDT's 64-bit selector 0x33 already exceeds);
//! - `munmap` of ranges below 8 GiB only (the guest's 4 GiB; the runner's own
//!   region is at 64 GiB);
//! - `mmap` only through a user notification: the VMM answers each one, and lets
//!   through only the exact call (address, length, protection, flags, fd,
//!   offset) it asked the runner to make (`runner::Runner::serve_maps`);
//! - anything else, and any 32-bit system call, raises SIGSYS (`SECCOMP_RET_TRAP`),
//!   which the runner reports and the VMM turns into an escape.
//!
//! No `mprotect` (mappings change by a new `mmap`), no `mremap`, no
//! `rt_sigreturn`/`rt_sigprocmask`/`sigaltstack`/`rt_sigaction` (the runner's
//! signal mask stays empty and its handler in place, so the VMM's kick always
//! reaches it), no `clone`, no file or socket calls.

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_USER_NOTIF: u32 = 0x7fc0_0000;

/// One BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

fn stmt(code: u16, k: u32) -> Insn {
    Insn { code, jt: 0, jf: 0, k }
}

fn jeq(k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code: BPF_JMP_JEQ_K, jt, jf, k }
}

fn nr(n: libc::c_long) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The filter program.
pub fn program() -> Vec<Insn> {
    const ARCH: u32 = 4;
    const NR: u32 = 0;
    const ARG0_LO: u32 = 16;
    const ARG0_HI: u32 = 16 + 4;
    const PR_SET_TSC: u32 = 26;
    const ARG1_HI: u32 = 24 + 4;
    let allowed = [libc::SYS_futex, libc::SYS_exit, libc::SYS_exit_group, libc::SYS_close, libc::SYS_modify_ldt];
    let mut p = vec![stmt(BPF_LD_W_ABS, ARCH), jeq(AUDIT_ARCH_X86_64, 1, 0), stmt(BPF_RET_K, RET_TRAP), stmt(BPF_LD_W_ABS, NR)];
    for n in allowed {
        p.push(jeq(nr(n), 0, 1));
        p.push(stmt(BPF_RET_K, RET_ALLOW));
    }
    p.push(jeq(nr(libc::SYS_mmap), 0, 1));
    p.push(stmt(BPF_RET_K, RET_USER_NOTIF));
    // prctl(PR_SET_TSC, ...) only.
    p.push(jeq(nr(libc::SYS_prctl), 0, 4));
    p.push(stmt(BPF_LD_W_ABS, ARG0_LO));
    p.push(jeq(PR_SET_TSC, 0, 1));
    p.push(stmt(BPF_RET_K, RET_ALLOW));
    p.push(stmt(BPF_RET_K, RET_TRAP));
    // munmap: address and length below 4 GiB.
    p.push(jeq(nr(libc::SYS_munmap), 0, 5));
    p.push(stmt(BPF_LD_W_ABS, ARG0_HI));
    p.push(jeq(0, 0, 3));
    p.push(stmt(BPF_LD_W_ABS, ARG1_HI));
    p.push(jeq(0, 0, 1));
    p.push(stmt(BPF_RET_K, RET_ALLOW));
    p.push(stmt(BPF_RET_K, RET_TRAP));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small interpreter for the subset used, to check the program's decisions.
    fn decide(p: &[Insn], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u32; 16];
        data[0] = nr;
        data[1] = arch;
        for (i, a) in args.iter().enumerate() {
            data[4 + 2 * i] = *a as u32;
            data[5 + 2 * i] = (*a >> 32) as u32;
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = p[pc];
            match i.code {
                BPF_LD_W_ABS => acc = data[(i.k / 4) as usize],
                BPF_JMP_JEQ_K => {
                    pc += usize::from(if acc == i.k { i.jt } else { i.jf });
                }
                BPF_RET_K => return i.k,
                c => panic!("opcode {c:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn decisions() {
        let p = program();
        let x64 = AUDIT_ARCH_X86_64;
        let n = |c: libc::c_long| c as u32;
        assert_eq!(decide(&p, x64, n(libc::SYS_futex), [0; 6]), RET_ALLOW);
        assert_eq!(decide(&p, x64, n(libc::SYS_modify_ldt), [0; 6]), RET_ALLOW);
        assert_eq!(decide(&p, x64, n(libc::SYS_mmap), [0; 6]), RET_USER_NOTIF);
        assert_eq!(decide(&p, x64, n(libc::SYS_prctl), [26, 2, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(decide(&p, x64, n(libc::SYS_prctl), [59, 0, 0, 0, 0, 0]), RET_TRAP);
        assert_eq!(decide(&p, x64, n(libc::SYS_prctl), [1 << 32 | 26, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(decide(&p, x64, n(libc::SYS_munmap), [0x1000, 0x1000, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(decide(&p, x64, n(libc::SYS_munmap), [0x10_0000_0000, 0x1000, 0, 0, 0, 0]), RET_TRAP);
        assert_eq!(decide(&p, x64, n(libc::SYS_munmap), [0, 0x1_0000_0000_0000, 0, 0, 0, 0]), RET_TRAP);
        for c in [libc::SYS_mprotect, libc::SYS_mremap, libc::SYS_rt_sigreturn, libc::SYS_rt_sigprocmask, libc::SYS_write, libc::SYS_openat, libc::SYS_clone, libc::SYS_execve, libc::SYS_getpid] {
            assert_eq!(decide(&p, x64, n(c), [0; 6]), RET_TRAP, "{c}");
        }
        // 32-bit calls (an escaped guest with the dispatch selector flipped).
        assert_eq!(decide(&p, 0x4000_0003, 240, [0; 6]), RET_TRAP);
    }
}
