//! CPUID: answered from the CPU model's table (`crate::cpu_model`), never by
//! running the host's `cpuid`.

use super::{EmuResult, Machine, Outcome};
use bt86_translator::CalloutSite;

/// cpuid: eax = leaf, ecx = subleaf.
pub(crate) fn emulate(m: &mut Machine<'_>, _site: &CalloutSite) -> EmuResult {
    let r = m.cpu.model.cpuid(m.ctx.gpr[0], m.ctx.gpr[1]);
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

    #[test]
    fn guest_cpuid_on_this_host() {
        let mut t = TestMachine::new();
        t.ctx.gpr[0] = 1;
        t.ctx.gpr[1] = 0;
        assert_eq!(t.run(&[0x0f, 0xa2]), Outcome::Continue);
        let (ecx, edx, ebx) = (t.ctx.gpr[1], t.ctx.gpr[2], t.ctx.gpr[3]);
        assert_eq!(ecx & (1 << 5), 0, "no VMX");
        assert_eq!(ecx & (1 << 31), 0, "no hypervisor bit");
        assert_eq!(ecx & !crate::cpu_model::LEAF1_ECX, 0);
        assert_eq!(edx & !crate::cpu_model::LEAF1_EDX, 0);
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
