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

    /// Translated `cpuid` answers from the context's table exactly as the model
    /// does, leaves the flags alone, and leaves only the leaves with subleaves and
    /// those outside the table to the VMM.
    #[test]
    fn inline_cpuid_matches_the_model() {
        // esi: (leaf, subleaf) pairs; edi: out rows of eax, ebx, ecx, edx, eflags.
        // 12 times: load the pair, popf 0x8d7 (every arithmetic flag), cpuid, pushf,
        // store; then the debug-exit port.
        let code = [
            0xbe, 0x00, 0x20, 0x00, 0x00, 0xbf, 0x00, 0x30, 0x00, 0x00, 0xbd, 0x0c, 0x00, 0x00, 0x00, 0x8b, 0x06, 0x8b,
            0x4e, 0x04, 0x68, 0xd7, 0x08, 0x00, 0x00, 0x9d, 0x0f, 0xa2, 0x9c, 0x8f, 0x47, 0x10, 0x89, 0x07, 0x89, 0x5f,
            0x04, 0x89, 0x4f, 0x08, 0x89, 0x57, 0x0c, 0x68, 0x02, 0x02, 0x00, 0x00, 0x9d, 0x83, 0xc6, 0x08, 0x83, 0xc7,
            0x14, 0x4d, 0x75, 0xd5, 0x66, 0xba, 0xf4, 0x00, 0xb8, 0x05, 0x00, 0x00, 0x00, 0xef,
        ];
        let pairs: [(u32, u32); 12] = [
            (0, 0),
            (1, 0x55),
            (4, 0),
            (4, 1),
            (7, 0),
            (7, 1),
            (0xd, 0),
            (0x8000_0000, 0),
            (0x8000_0001, 9),
            (0x8000_0008, 0),
            (0x4000_0000, 0),
            (0x20, 0),
        ];
        let mut vm = crate::vm::Vm::new(crate::vm::VmConfig::new(2, Box::new(std::io::sink()))).unwrap();
        vm.ram.write(0x1000, &code).unwrap();
        let list: Vec<u8> = pairs.iter().flat_map(|&(l, s)| [l.to_le_bytes(), s.to_le_bytes()]).flatten().collect();
        vm.ram.write(0x2000, &list).unwrap();
        vm.set_flat_state(0x1000, [0, 0, 0, 0, 0x8000, 0, 0, 0], 0);
        assert_eq!(vm.run().unwrap(), crate::vm::RunOutcome::GuestExit(5));
        let mut out = [0u8; 12 * 20];
        vm.ram.read(0x3000, &mut out).unwrap();
        for (row, &(leaf, sub)) in out.chunks(20).zip(&pairs) {
            let w: Vec<u32> = row.chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
            assert_eq!(w[..4], vm.cpu.model.cpuid(leaf, sub), "leaf {leaf:#x}.{sub}");
            assert_eq!(w[4], 0x8d7, "flags after leaf {leaf:#x}");
        }
        if std::is_x86_feature_detected!("bmi2") {
            let callouts = vm.stats.callouts.get(&iced_x86::Mnemonic::Cpuid).copied().unwrap_or(0);
            assert_eq!(callouts, 6, "only leaves 4, 7 and those outside the table leave translated code");
        }
    }
}
