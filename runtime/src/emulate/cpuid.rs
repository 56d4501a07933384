//! CPUID: the host's, filtered down to what the virtual CPU implements. No VMX/SVM,
//! no hypervisor leaves, no local APIC, no PAE/long mode, no AVX/XSAVE (the VMM
//! does not switch that state), no SYSENTER/SYSCALL (not emulated yet).

use super::{EmuResult, Machine, Outcome};
use bt86_translator::CalloutSite;

/// Highest basic leaf offered.
const MAX_BASIC: u32 = 7;
/// Highest extended leaf offered.
const MAX_EXTENDED: u32 = 0x8000_0008;

const fn bits(list: &[u32]) -> u32 {
    let mut v = 0;
    let mut i = 0;
    while i < list.len() {
        v |= 1 << list[i];
        i += 1;
    }
    v
}

/// Leaf 1 ECX: SSE3 PCLMULQDQ SSSE3 CX16 SSE4.1 SSE4.2 MOVBE POPCNT AES RDRAND.
const LEAF1_ECX: u32 = bits(&[0, 1, 9, 13, 19, 20, 22, 23, 25, 30]);
/// Leaf 1 EDX: FPU DE PSE TSC MSR CX8 PGE CMOV CLFSH MMX FXSR SSE SSE2.
const LEAF1_EDX: u32 = bits(&[0, 2, 3, 4, 5, 8, 13, 15, 19, 23, 24, 25, 26]);
/// Leaf 7.0 EBX: ERMS ADX.
const LEAF7_EBX: u32 = bits(&[9, 19]);
/// Leaf 0x8000_0001 ECX: LAHF/SAHF, ABM (LZCNT), PREFETCHW.
const EXT1_ECX: u32 = bits(&[0, 5, 8]);

/// The host's CPUID.
fn host(leaf: u32, subleaf: u32) -> [u32; 4] {
    // `__cpuid_count` is a safe function on current toolchains and an unsafe one on
    // older ones; the block keeps both building.
    #[allow(unused_unsafe)]
    // SAFETY: cpuid is available on every x86-64 CPU and has no memory effects.
    let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, subleaf) };
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// The guest's CPUID `leaf`/`subleaf` given the host's (`host(leaf, subleaf)`).
pub(crate) fn filter(leaf: u32, subleaf: u32, host: impl Fn(u32, u32) -> [u32; 4]) -> [u32; 4] {
    let host_max = host(0, 0)[0];
    let host_ext_max = host(0x8000_0000, 0)[0];
    match leaf {
        0 => {
            let [eax, ebx, ecx, edx] = host(0, 0);
            [eax.min(MAX_BASIC), ebx, ecx, edx]
        }
        1..=MAX_BASIC if leaf > host_max => [0; 4],
        1 => {
            let [eax, ebx, ecx, edx] = host(1, 0);
            // EBX: brand index and CLFLUSH line size; no APIC id or logical count.
            [eax, ebx & 0xffff, ecx & LEAF1_ECX, edx & LEAF1_EDX]
        }
        // Cache and TLB descriptors, deterministic cache parameters.
        2 => host(2, 0),
        4 => host(4, subleaf),
        7 if subleaf == 0 => [0, host(7, 0)[1] & LEAF7_EBX, 0, 0],
        0x8000_0000 => {
            let [eax, ebx, ecx, edx] = host(0x8000_0000, 0);
            if eax < 0x8000_0000 {
                [0; 4]
            } else {
                [eax.min(MAX_EXTENDED), ebx, ecx, edx]
            }
        }
        0x8000_0001..=MAX_EXTENDED if leaf > host_ext_max => [0; 4],
        0x8000_0001 => {
            let [eax, _, ecx, _] = host(leaf, 0);
            // EDX: no NX, SYSCALL, long mode or RDTSCP.
            [eax, 0, ecx & EXT1_ECX, 0]
        }
        // Brand string, cache and TLB information, address sizes.
        0x8000_0002..=MAX_EXTENDED => host(leaf, 0),
        // Other basic leaves, hypervisor leaves (0x4000_0000..), everything else.
        _ => [0; 4],
    }
}

/// What the guest's `cpuid` returns for `leaf`/`subleaf` on this host (eax, ebx, ecx, edx):
/// the virtual CPU model, for tools that compare it with other engines (`bt86 study`).
pub fn guest_cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    filter(leaf, subleaf, host)
}

/// cpuid: eax = leaf, ecx = subleaf.
pub(crate) fn emulate(m: &mut Machine<'_>, _site: &CalloutSite) -> EmuResult {
    let r = filter(m.ctx.gpr[0], m.ctx.gpr[1], host);
    m.ctx.gpr[0] = r[0];
    m.ctx.gpr[3] = r[1];
    m.ctx.gpr[1] = r[2];
    m.ctx.gpr[2] = r[3];
    Ok(Outcome::Continue)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    /// A host that offers everything: all ones in every leaf, high maxima.
    fn generous(leaf: u32, _sub: u32) -> [u32; 4] {
        match leaf {
            0 => [0x20, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
            0x8000_0000 => [0x8000_0021, 0, 0, 0],
            _ => [u32::MAX; 4],
        }
    }

    #[test]
    fn filters_a_generous_host() {
        assert_eq!(
            filter(0, 0, generous),
            [7, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]
        );
        let [_, ebx, ecx, edx] = filter(1, 0, generous);
        assert_eq!(ebx, 0xffff);
        assert_eq!(ecx, LEAF1_ECX);
        assert_eq!(ecx & (1 << 5), 0, "VMX");
        assert_eq!(ecx & (1 << 31), 0, "hypervisor");
        assert_eq!(
            ecx & ((1 << 26) | (1 << 27) | (1 << 28)),
            0,
            "XSAVE OSXSAVE AVX"
        );
        assert_eq!(edx, 0x0788_a13d);
        assert_eq!(edx & ((1 << 6) | (1 << 9) | (1 << 11)), 0, "PAE APIC SEP");
        assert_eq!(filter(7, 0, generous), [0, (1 << 9) | (1 << 19), 0, 0]);
        assert_eq!(filter(7, 1, generous), [0; 4]);
        assert_eq!(filter(3, 0, generous), [0; 4]);
        assert_eq!(filter(0xd, 0, generous), [0; 4]);
        assert_eq!(filter(0x4000_0000, 0, generous), [0; 4]);
        assert_eq!(filter(0x4000_0001, 0, generous), [0; 4]);
        assert_eq!(filter(0x8000_0000, 0, generous)[0], 0x8000_0008);
        assert_eq!(filter(0x8000_0001, 0, generous), [u32::MAX, 0, 0x121, 0]);
        assert_eq!(filter(0x8000_0004, 0, generous), [u32::MAX; 4]);
        assert_eq!(filter(0x8000_0008, 0, generous), [u32::MAX; 4]);
        assert_eq!(filter(0x8000_0009, 0, generous), [0; 4]);
        assert_eq!(filter(4, 3, generous), [u32::MAX; 4]);
    }

    #[test]
    fn stingy_host_leaves_are_zero() {
        let stingy = |leaf: u32, _| match leaf {
            0 => [2, 1, 2, 3],
            0x8000_0000 => [0x8000_0004, 0, 0, 0],
            _ => [u32::MAX; 4],
        };
        assert_eq!(filter(0, 0, stingy)[0], 2);
        assert_eq!(filter(4, 0, stingy), [0; 4]);
        assert_eq!(filter(7, 0, stingy), [0; 4]);
        assert_eq!(filter(0x8000_0005, 0, stingy), [0; 4]);
        assert_eq!(filter(0x8000_0000, 0, stingy)[0], 0x8000_0004);
    }

    #[test]
    fn guest_cpuid_on_this_host() {
        let mut t = TestMachine::new();
        t.ctx.gpr[0] = 1;
        t.ctx.gpr[1] = 0;
        assert_eq!(t.run(&[0x0f, 0xa2]), Outcome::Continue);
        let (ecx, edx, ebx) = (t.ctx.gpr[1], t.ctx.gpr[2], t.ctx.gpr[3]);
        assert_eq!(ecx & (1 << 5), 0, "no VMX");
        assert_eq!(ecx & (1 << 31), 0, "no hypervisor bit");
        assert_eq!(ecx & !LEAF1_ECX, 0);
        assert_eq!(edx & !LEAF1_EDX, 0);
        assert_eq!(ebx >> 16, 0, "no APIC id or logical count");
        assert_ne!(edx & 1, 0, "FPU");
        t.ctx.gpr[0] = 0;
        assert_eq!(t.run(&[0x0f, 0xa2]), Outcome::Continue);
        assert!(t.ctx.gpr[0] <= 7);
        t.ctx.gpr[0] = 0x4000_0000;
        assert_eq!(t.run(&[0x0f, 0xa2]), Outcome::Continue);
        assert_eq!(&t.ctx.gpr[0..4], &[0, 0, 0, 0]);
    }
}
