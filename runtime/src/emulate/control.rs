//! Control and debug registers, smsw/lmsw/clts, cache and TLB control, rdtsc,
//! hlt (MSRs: `msr`).

use super::addressing::{dest, gpr_index, read_op, write_dest};
use super::{jump_next, EmuResult, Fault, Machine, Outcome};
use crate::cpu::cr0;
use bt86_translator::CalloutSite;
use iced_x86::{Code, Mnemonic, Register};

/// CR4 bits the virtual CPU implements (those its CPUID advertises): TSD, DE, PSE,
/// PGE, PCE, OSFXSR, OSXMMEXCPT. Setting any other bit is #GP(0).
const CR4_VALID: u32 = (1 << 2) | (1 << 3) | (1 << 4) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10);
const CR4_TSD: u32 = 1 << 2;
const CR4_DE: u32 = 1 << 3;
/// CR0 bits that exist on a 32-bit CPU; writes of the others are ignored (as on
/// hardware and KVM, which mask them rather than fault).
const CR0_VALID: u32 = cr0::PE
    | cr0::MP
    | cr0::EM
    | cr0::TS
    | cr0::ET
    | cr0::NE
    | cr0::WP
    | cr0::AM
    | cr0::NW
    | cr0::CD
    | cr0::PG;


fn require_cpl0(m: &Machine<'_>) -> Result<(), Fault> {
    if m.cpu.cpl() == 0 {
        Ok(())
    } else {
        Err(Fault::gp0())
    }
}

/// hlt: the emulation only reports it (eip after the hlt, where the guest
/// resumes after an interrupt); the engine sleeps until an interrupt the guest
/// accepts, or ends the run when nothing can wake it (`Vm::halt`).
pub(crate) fn hlt(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    require_cpl0(m)?;
    m.ctx.eip = super::next_eip(site);
    Err(Fault::Halted)
}

pub(crate) fn emulate(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    let ins = &site.ins;
    match ins.mnemonic() {
        Mnemonic::Smsw => {
            // A 32-bit register gets all of CR0; a 16-bit register or memory the low half.
            let d = dest(m, ins, 0, 2)?;
            let v = read_cr0(m);
            write_dest(m, d, 2, v)?;
            Ok(Outcome::Continue)
        }
        Mnemonic::Lmsw => {
            require_cpl0(m)?;
            let src = read_op(m, ins, 0, 2)?;
            // PE MP EM TS from the source; PE can be set but not cleared.
            let old = m.cpu.cr0;
            let new = (old & !0xe) | (src & 0xf);
            write_cr0(m, site, new)
        }
        Mnemonic::Clts => {
            require_cpl0(m)?;
            let new = m.cpu.cr0 & !cr0::TS;
            write_cr0(m, site, new)
        }
        Mnemonic::Invlpg | Mnemonic::Wbinvd | Mnemonic::Invd => {
            require_cpl0(m)?;
            // The shadow stays coherent by tracing; the engine maps a page whose
            // entry a store retargeted at its invlpg (`Vm::remap_retargeted`).
            Ok(Outcome::Continue)
        }
        Mnemonic::Rdtsc => {
            if m.cpu.cr4 & CR4_TSD != 0 && m.cpu.cpl() > 0 {
                return Err(Fault::gp0());
            }
            let tsc = guest_tsc(m);
            set_edx_eax(m, tsc);
            Ok(Outcome::Continue)
        }
        _ => Err(Fault::ud()),
    }
}

/// CR0 as the guest reads it (ET always 1).
fn read_cr0(m: &Machine<'_>) -> u32 {
    m.cpu.cr0 | cr0::ET
}

/// Writes CR0 after its checks. Leaves translated code when it changed.
fn write_cr0(m: &mut Machine<'_>, site: &CalloutSite, value: u32) -> EmuResult {
    let new = (value & CR0_VALID) | cr0::ET;
    if (new & cr0::PG != 0 && new & cr0::PE == 0) || (new & cr0::NW != 0 && new & cr0::CD == 0) {
        return Err(Fault::gp0());
    }
    if new & cr0::PE == 0 {
        return Err(Fault::unsupported("real mode (clearing CR0.PE)"));
    }
    if new == m.cpu.cr0 {
        return Ok(Outcome::Continue);
    }
    m.cpu.cr0 = new;
    jump_next(m, site)
}

/// mov to/from CR0, CR2, CR3, CR4 and DR0-DR7 (test registers: #UD).
pub(crate) fn mov_cr_dr(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    let ins = &site.ins;
    match ins.code() {
        Code::Mov_r32_cr => {
            let n = cr_number(ins.op1_register())?;
            require_cpl0(m)?;
            let v = match n {
                0 => read_cr0(m),
                2 => m.cpu.cr2,
                3 => m.cpu.cr3,
                _ => m.cpu.cr4,
            };
            set_gpr(m, ins.op0_register(), v)?;
            Ok(Outcome::Continue)
        }
        Code::Mov_cr_r32 => {
            let n = cr_number(ins.op0_register())?;
            require_cpl0(m)?;
            let v = get_gpr(m, ins.op1_register())?;
            match n {
                0 => write_cr0(m, site, v),
                2 => {
                    m.cpu.cr2 = v;
                    Ok(Outcome::Continue)
                }
                3 => {
                    // The engine switches the views to the new space after the
                    // callout (`Vm::paging_controls_changed`).
                    m.cpu.cr3 = v;
                    Ok(Outcome::Continue)
                }
                _ => {
                    if v & !CR4_VALID != 0 {
                        return Err(Fault::gp0());
                    }
                    if v == m.cpu.cr4 {
                        return Ok(Outcome::Continue);
                    }
                    m.cpu.cr4 = v;
                    jump_next(m, site)
                }
            }
        }
        Code::Mov_r32_dr => {
            let n = dr_number(m, ins.op1_register())?;
            require_cpl0(m)?;
            let v = m.cpu.dr.get(n).copied().unwrap_or(0);
            set_gpr(m, ins.op0_register(), v)?;
            Ok(Outcome::Continue)
        }
        Code::Mov_dr_r32 => {
            let n = dr_number(m, ins.op0_register())?;
            require_cpl0(m)?;
            let v = get_gpr(m, ins.op1_register())?;
            // Data breakpoints (DR0-DR3 for reads and writes) are checked by the
            // engine; instruction and I/O breakpoints and DR7.GD are not emulated.
            let v = match n {
                6 => (v & 0x0000_e00f) | 0xffff_0ff0,
                7 => (v & 0xffff_27ff) | 0x400,
                _ => v,
            };
            if let Some(slot) = m.cpu.dr.get_mut(n) {
                *slot = v;
            }
            if n == 7 {
                // The engine watches from the next boundary on.
                return jump_next(m, site);
            }
            Ok(Outcome::Continue)
        }
        // Test registers (mov to/from tr3-tr7) do not exist after the 486.
        _ => Err(Fault::ud()),
    }
}

/// 0, 2, 3 or 4; the others are #UD.
fn cr_number(r: Register) -> Result<u8, Fault> {
    match r {
        Register::CR0 => Ok(0),
        Register::CR2 => Ok(2),
        Register::CR3 => Ok(3),
        Register::CR4 => Ok(4),
        _ => Err(Fault::ud()),
    }
}

/// The debug register index; dr4/dr5 alias dr6/dr7 unless CR4.DE (then #UD).
fn dr_number(m: &Machine<'_>, r: Register) -> Result<usize, Fault> {
    let n = match r {
        Register::DR0 => 0,
        Register::DR1 => 1,
        Register::DR2 => 2,
        Register::DR3 => 3,
        Register::DR4 => 4,
        Register::DR5 => 5,
        Register::DR6 => 6,
        Register::DR7 => 7,
        _ => return Err(Fault::ud()),
    };
    if n == 4 || n == 5 {
        if m.cpu.cr4 & CR4_DE != 0 {
            return Err(Fault::ud());
        }
        return Ok(n + 2);
    }
    Ok(n)
}

fn get_gpr(m: &Machine<'_>, r: Register) -> Result<u32, Fault> {
    let i = gpr_index(r).ok_or_else(Fault::ud)?;
    Ok(m.ctx.gpr[i])
}

fn set_gpr(m: &mut Machine<'_>, r: Register, v: u32) -> Result<(), Fault> {
    let i = gpr_index(r).ok_or_else(Fault::ud)?;
    m.ctx.gpr[i] = v;
    Ok(())
}

fn set_edx_eax(m: &mut Machine<'_>, v: u64) {
    m.ctx.gpr[0] = v as u32;
    m.ctx.gpr[2] = (v >> 32) as u32;
}

/// The host time-stamp counter.
pub(crate) fn host_tsc() -> u64 {
    crate::devices::clock::host_tsc()
}

/// The guest's time-stamp counter: the host's plus the guest's offset (while
/// the guest calibrates it, the platform's clipped time instead).
pub(crate) fn guest_tsc(m: &Machine<'_>) -> u64 {
    let tsc = m.io.calibration_tsc().unwrap_or_else(host_tsc);
    tsc.wrapping_add(m.cpu.tsc_offset as u64)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::Stop;
    use super::*;

    #[test]
    fn hlt_stops_and_needs_cpl0() {
        let mut t = TestMachine::new();
        assert_eq!(t.run(&[0xf4]), Outcome::Stop(Stop::Halted { eip: EIP }));
        assert_eq!(t.ctx.eip, EIP + 1);
        t.ctx.eip = EIP;
        t.ctx.vif = 1;
        assert_eq!(t.run(&[0xf4]), Outcome::Stop(Stop::Halted { eip: EIP }));
        t.ctx.eip = EIP;
        t.set_cpl(3);
        assert_eq!(t.run(&[0xf4]), gp(0));
        assert_eq!(t.ctx.eip, EIP);
    }

    #[test]
    fn smsw_lmsw_clts() {
        let mut t = TestMachine::new();
        t.cpu.cr0 = cr0::PE | cr0::ET | cr0::TS | cr0::NE | cr0::WP;
        // smsw eax: all of CR0
        assert_eq!(t.run(&[0x0f, 0x01, 0xe0]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[0], t.cpu.cr0);
        // smsw ax, smsw [ebx]: low 16
        t.ctx.gpr[0] = 0xffff_ffff;
        assert_eq!(t.run(&[0x66, 0x0f, 0x01, 0xe0]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[0], 0xffff_0039);
        t.ctx.gpr[3] = 0x5000;
        t.write_u32(0x5000, 0xaaaa_aaaa);
        assert_eq!(t.run(&[0x0f, 0x01, 0x23]), Outcome::Continue);
        assert_eq!(t.read_u32(0x5000), 0xaaaa_0039);
        // clts
        assert_eq!(t.run(&[0x0f, 0x06]), Outcome::Jump);
        assert_eq!(t.ctx.eip, EIP + 2);
        assert_eq!(t.cpu.cr0 & cr0::TS, 0);
        t.ctx.eip = EIP;
        assert_eq!(t.run(&[0x0f, 0x06]), Outcome::Continue, "no change");
        // lmsw ax: sets MP and TS; cannot clear PE.
        t.ctx.gpr[0] = 0xa;
        assert_eq!(t.run(&[0x0f, 0x01, 0xf0]), Outcome::Jump);
        assert_eq!(
            t.cpu.cr0,
            cr0::PE | cr0::ET | cr0::MP | cr0::TS | cr0::NE | cr0::WP
        );
        // smsw works at CPL 3, lmsw and clts do not.
        t.set_cpl(3);
        assert_eq!(t.run(&[0x0f, 0x01, 0xe0]), Outcome::Continue);
        assert_eq!(t.run(&[0x0f, 0x01, 0xf0]), gp(0));
        assert_eq!(t.run(&[0x0f, 0x06]), gp(0));
    }

    #[test]
    fn mov_cr() {
        let mut t = TestMachine::new();
        // mov eax, cr0: ET reads 1.
        t.cpu.cr0 = cr0::PE;
        assert_eq!(t.run(&[0x0f, 0x20, 0xc0]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[0], cr0::PE | cr0::ET);
        // mov cr0, eax with WP|NE|MP and reserved bit 6 (ignored).
        t.ctx.gpr[0] = cr0::PE | cr0::MP | cr0::NE | cr0::WP | 0x40;
        assert_eq!(t.run(&[0x0f, 0x22, 0xc0]), Outcome::Jump);
        assert_eq!(t.cpu.cr0, cr0::PE | cr0::MP | cr0::ET | cr0::NE | cr0::WP);
        // Setting PG leaves translated code (the engine rebuilds its shadow mappings).
        t.ctx.gpr[0] = cr0::PE | cr0::PG;
        assert_eq!(t.run(&[0x0f, 0x22, 0xc0]), Outcome::Jump);
        // Clearing PE: unsupported.
        t.ctx.gpr[0] = 0;
        assert!(matches!(
            t.run(&[0x0f, 0x22, 0xc0]),
            Outcome::Stop(Stop::Unsupported { .. })
        ));
        // PG without PE, NW without CD: #GP(0).
        t.ctx.gpr[0] = cr0::PG;
        assert_eq!(t.run(&[0x0f, 0x22, 0xc0]), gp(0));
        t.ctx.gpr[0] = cr0::PE | cr0::NW;
        assert_eq!(t.run(&[0x0f, 0x22, 0xc0]), gp(0));
        // cr2, cr3
        t.ctx.gpr[3] = 0x1234_5000;
        assert_eq!(t.run(&[0x0f, 0x22, 0xd3]), Outcome::Continue);
        assert_eq!(t.run(&[0x0f, 0x22, 0xdb]), Outcome::Continue);
        assert_eq!((t.cpu.cr2, t.cpu.cr3), (0x1234_5000, 0x1234_5000));
        assert_eq!(t.run(&[0x0f, 0x20, 0xd9]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[1], 0x1234_5000);
        // cr4: PSE ok, PAE (not offered) #GP, VMXE #GP.
        t.ctx.gpr[0] = 0x10;
        assert_eq!(t.run(&[0x0f, 0x22, 0xe0]), Outcome::Jump);
        assert_eq!(t.cpu.cr4, 0x10);
        t.ctx.gpr[0] = 0x30;
        assert_eq!(t.run(&[0x0f, 0x22, 0xe0]), gp(0));
        t.ctx.gpr[0] = 1 << 13;
        assert_eq!(t.run(&[0x0f, 0x22, 0xe0]), gp(0));
        assert_eq!(t.cpu.cr4, 0x10);
        // cr1, cr5: #UD (iced decodes them).
        assert_eq!(t.run(&[0x0f, 0x20, 0xc8]), exc(6, None));
        assert_eq!(t.run(&[0x0f, 0x22, 0xe8]), exc(6, None));
        // CPL 3: #GP(0).
        t.set_cpl(3);
        assert_eq!(t.run(&[0x0f, 0x20, 0xc0]), gp(0));
    }

    #[test]
    fn mov_dr() {
        let mut t = TestMachine::new();
        // mov dr0, eax / mov ecx, dr0
        t.ctx.gpr[0] = 0xc000_1000;
        assert_eq!(t.run(&[0x0f, 0x23, 0xc0]), Outcome::Continue);
        assert_eq!(t.run(&[0x0f, 0x21, 0xc1]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[1], 0xc000_1000);
        // dr6/dr7 fixed bits.
        t.ctx.gpr[0] = 0;
        assert_eq!(t.run(&[0x0f, 0x23, 0xf0]), Outcome::Continue);
        assert_eq!(t.cpu.dr[6], 0xffff_0ff0);
        t.ctx.gpr[0] = 0xffff_ffff;
        assert_eq!(t.run(&[0x0f, 0x23, 0xf8]), Outcome::Jump, "the engine watches from the next boundary");
        assert_eq!(t.cpu.dr[7], 0xffff_27ff);
        // dr4 aliases dr6 ...
        assert_eq!(t.run(&[0x0f, 0x21, 0xe1]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[1], 0xffff_0ff0);
        // ... unless CR4.DE.
        t.cpu.cr4 = CR4_DE;
        assert_eq!(t.run(&[0x0f, 0x21, 0xe1]), exc(6, None));
        assert_eq!(t.run(&[0x0f, 0x23, 0xe8]), exc(6, None));
        t.set_cpl(3);
        assert_eq!(t.run(&[0x0f, 0x21, 0xc1]), gp(0));
    }

    #[test]
    fn rdtsc_and_msrs() {
        let mut t = TestMachine::new();
        assert_eq!(t.run(&[0x0f, 0x31]), Outcome::Continue);
        let first = (u64::from(t.ctx.gpr[2]) << 32) | u64::from(t.ctx.gpr[0]);
        assert!(first > 0);
        // wrmsr TSC = 0x100_0000_0000: reads continue from there.
        t.ctx.gpr[1] = super::super::msr::TSC;
        t.ctx.gpr[2] = 0x100;
        t.ctx.gpr[0] = 0;
        // An offset TSC is no longer the host's: translated rdtsc changes (a new mode).
        assert_eq!(t.run(&[0x0f, 0x30]), Outcome::Jump);
        assert_eq!(t.run(&[0x0f, 0x32]), Outcome::Continue);
        let v = (u64::from(t.ctx.gpr[2]) << 32) | u64::from(t.ctx.gpr[0]);
        assert!(
            (0x100_0000_0000..0x100_0000_0000 + (1 << 40)).contains(&v),
            "{v:#x}"
        );
        // SYSENTER MSRs.
        for (msr, val) in [(0x174, 0x10u32), (0x175, 0x9000), (0x176, 0xc000_0000)] {
            t.ctx.gpr[1] = msr;
            t.ctx.gpr[0] = val;
            t.ctx.gpr[2] = 0;
            assert_eq!(t.run(&[0x0f, 0x30]), Outcome::Continue);
            t.ctx.gpr[0] = 0;
            t.ctx.gpr[2] = 0xffff;
            assert_eq!(t.run(&[0x0f, 0x32]), Outcome::Continue);
            assert_eq!((t.ctx.gpr[0], t.ctx.gpr[2]), (val, 0));
        }
        assert_eq!(
            (t.cpu.sysenter_cs, t.cpu.sysenter_esp, t.cpu.sysenter_eip),
            (0x10, 0x9000, 0xc000_0000)
        );
        // Unknown MSRs: #GP(0).
        t.ctx.gpr[1] = 0xc000_0080;
        assert_eq!(t.run(&[0x0f, 0x30]), gp(0));
        // CPL 3: rdmsr #GP; rdtsc allowed unless CR4.TSD.
        t.set_cpl(3);
        t.ctx.gpr[1] = super::super::msr::TSC;
        assert_eq!(t.run(&[0x0f, 0x32]), gp(0));
        assert_eq!(t.run(&[0x0f, 0x31]), Outcome::Continue);
        t.cpu.cr4 = CR4_TSD;
        assert_eq!(t.run(&[0x0f, 0x31]), gp(0));
    }

    #[test]
    fn cache_control_and_invlpg() {
        let mut t = TestMachine::new();
        assert_eq!(t.run(&[0x0f, 0x09]), Outcome::Continue);
        assert_eq!(t.run(&[0x0f, 0x08]), Outcome::Continue);
        assert_eq!(t.run(&[0x0f, 0x01, 0x38]), Outcome::Continue);
        t.set_cpl(3);
        assert_eq!(t.run(&[0x0f, 0x09]), gp(0));
        assert_eq!(t.run(&[0x0f, 0x01, 0x38]), gp(0));
    }
}
