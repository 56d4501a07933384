//! Model-specific registers: `rdmsr`, `wrmsr` and `rdpmc`, answered consistently
//! with the CPU model.
//!
//! An MSR exists only where a real CPU of the reported description has it: the
//! SYSENTER MSRs with SEP, the TSC with TSC, AMD's configuration registers with
//! an AMD vendor string, Intel's with Intel's; AMD's legacy performance counters
//! (0xc0010000..7) with any vendor, as QEMU has them (see `kind`). Every
//! other index raises #GP(0), as hardware does (kernels probe with `rdmsr_safe`
//! and act on the fault). MSRs that only hold a value for the guest (performance
//! counter controls, configuration registers bt86 has nothing behind) keep what
//! was written in [`MsrFile`].

use super::{EmuResult, Fault, Machine, Outcome};
use crate::cpu_model::Vendor;
use std::collections::BTreeMap;

pub(crate) const TSC: u32 = 0x10;
const APIC_BASE: u32 = 0x1b;
const FEATURE_CONTROL: u32 = 0x3a;
const PLATFORM_ID: u32 = 0x17;
const MICROCODE_REV: u32 = 0x8b;
/// IA32_MISC_ENABLE, on every Intel CPU since the Pentium 4 and Pentium M
/// (Linux reads it unchecked on family 6 and 15).
const MISC_ENABLE: u32 = 0x1a0;
/// What it holds at reset, as QEMU's: fast strings on, BTS and PEBS
/// unavailable.
const MISC_ENABLE_DEFAULT: u64 = 1 | 1 << 11 | 1 << 12;
pub(crate) const SYSENTER_CS: u32 = 0x174;
pub(crate) const SYSENTER_ESP: u32 = 0x175;
pub(crate) const SYSENTER_EIP: u32 = 0x176;
/// Intel P6 performance counters (PERFCTR0/1) and their event selects.
const INTEL_PMC: [u32; 2] = [0xc1, 0xc2];
const INTEL_EVTSEL: [u32; 2] = [0x186, 0x187];
/// AMD K7+ PERF_CTL0-3 (0xc0010000..) and PERF_CTR0-3 (0xc0010004..).
const AMD_PERF_CTL: u32 = 0xc001_0000;
const AMD_PERF_CTR: u32 = 0xc001_0004;
/// AMD SYSCFG, HWCR, NB_CFG, LS_CFG, DE_CFG, and the patch loader.
const AMD_CONFIG: [u32; 6] = [0xc001_0010, 0xc001_0015, 0xc001_001f, 0xc001_1020, 0xc001_1029, 0xc001_0020];
/// Where a 32-bit PC's local APIC would be (the base MSR reports it, disabled).
const APIC_DEFAULT_BASE: u64 = 0xfee0_0000;
/// IA32_APIC_BASE.BSP: this is the bootstrap processor.
const APIC_BSP: u64 = 1 << 8;
const CR4_PCE: u32 = 1 << 8;

/// The values of MSRs that only hold what the guest wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsrFile {
    values: BTreeMap<u32, u64>,
}

impl MsrFile {
    fn get(&self, msr: u32, default: u64) -> u64 {
        self.values.get(&msr).copied().unwrap_or(default)
    }

    fn set(&mut self, msr: u32, v: u64) {
        self.values.insert(msr, v);
    }
}

/// What kind of register an index is on this CPU.
enum Kind {
    Tsc,
    SysenterCs,
    SysenterEsp,
    SysenterEip,
    /// Reads a fixed value, ignores writes.
    Fixed(u64),
    /// Holds what was written (this until then).
    Stored(u64),
}

fn kind(m: &Machine<'_>, msr: u32) -> Option<Kind> {
    let model = m.cpu.model;
    let vendor = model.vendor();
    let sep = model.has_bit(1, 3, 11);
    let tsc = model.has_bit(1, 3, 4);
    Some(match msr {
        TSC if tsc => Kind::Tsc,
        SYSENTER_CS if sep => Kind::SysenterCs,
        SYSENTER_ESP if sep => Kind::SysenterEsp,
        SYSENTER_EIP if sep => Kind::SysenterEip,
        // No local APIC: the base MSR reads as disabled at the default address.
        APIC_BASE => Kind::Fixed(APIC_DEFAULT_BASE | APIC_BSP),
        // Microcode revision: none loaded (written 0 before a CPUID to latch it).
        MICROCODE_REV => Kind::Fixed(0),
        PLATFORM_ID if vendor == Vendor::Intel => Kind::Fixed(0),
        // Locked, VMX off.
        FEATURE_CONTROL if vendor == Vendor::Intel => Kind::Fixed(1),
        MISC_ENABLE if vendor == Vendor::Intel && model.family() >= 6 => Kind::Stored(MISC_ENABLE_DEFAULT),
        _ if vendor == Vendor::Intel && (INTEL_PMC.contains(&msr) || INTEL_EVTSEL.contains(&msr)) => Kind::Stored(0),
        // AMD's PERF_CTL/PERF_CTR exist on every vendor here: test kernels written
        // for QEMU's PC write them unconditionally, and QEMU's Intel CPUs accept
        // them too (an Intel CPU raises #GP; README, limits).
        _ if (AMD_PERF_CTL..AMD_PERF_CTR + 4).contains(&msr) => Kind::Stored(0),
        _ if vendor == Vendor::Amd && AMD_CONFIG.contains(&msr) => Kind::Stored(0),
        _ => return None,
    })
}

fn require_cpl0(m: &Machine<'_>) -> Result<(), Fault> {
    if m.cpu.cpl() == 0 {
        Ok(())
    } else {
        Err(Fault::gp0())
    }
}

fn set_edx_eax(m: &mut Machine<'_>, v: u64) {
    m.ctx.gpr[0] = v as u32;
    m.ctx.gpr[2] = (v >> 32) as u32;
}

/// rdmsr: ecx = index → edx:eax.
pub(crate) fn rdmsr(m: &mut Machine<'_>) -> EmuResult {
    require_cpl0(m)?;
    let msr = m.ctx.gpr[1];
    let v = match kind(m, msr).ok_or_else(Fault::gp0)? {
        Kind::Tsc => super::control::guest_tsc(m),
        Kind::SysenterCs => u64::from(m.cpu.sysenter_cs),
        Kind::SysenterEsp => u64::from(m.cpu.sysenter_esp),
        Kind::SysenterEip => u64::from(m.cpu.sysenter_eip),
        Kind::Fixed(v) => v,
        Kind::Stored(default) => m.cpu.msrs.get(msr, default),
    };
    set_edx_eax(m, v);
    Ok(Outcome::Continue)
}

/// wrmsr: ecx = index, edx:eax = value.
pub(crate) fn wrmsr(m: &mut Machine<'_>) -> EmuResult {
    require_cpl0(m)?;
    let msr = m.ctx.gpr[1];
    let v = (u64::from(m.ctx.gpr[2]) << 32) | u64::from(m.ctx.gpr[0]);
    match kind(m, msr).ok_or_else(Fault::gp0)? {
        Kind::Tsc => m.cpu.tsc_offset = v.wrapping_sub(super::control::host_tsc()) as i64,
        Kind::SysenterCs => m.cpu.sysenter_cs = v as u32,
        Kind::SysenterEsp => m.cpu.sysenter_esp = v as u32,
        Kind::SysenterEip => m.cpu.sysenter_eip = v as u32,
        Kind::Fixed(_) => {}
        Kind::Stored(_) => m.cpu.msrs.set(msr, v),
    }
    Ok(Outcome::Continue)
}

/// rdpmc: ecx = counter. Allowed at CPL 0, or anywhere with CR4.PCE. The
/// counters count nothing: they read what the guest last wrote to them.
pub(crate) fn rdpmc(m: &mut Machine<'_>) -> EmuResult {
    if m.cpu.cpl() != 0 && m.cpu.cr4 & CR4_PCE == 0 {
        return Err(Fault::gp0());
    }
    let counter = m.ctx.gpr[1];
    let msr = match m.cpu.model.vendor() {
        Vendor::Amd if counter < 4 => AMD_PERF_CTR + counter,
        Vendor::Intel if counter < 2 => INTEL_PMC[counter as usize],
        _ => return Err(Fault::gp0()),
    };
    // 40-bit (Intel) / 48-bit (AMD) counters.
    let v = m.cpu.msrs.get(msr, 0) & ((1 << 48) - 1);
    set_edx_eax(m, v);
    Ok(Outcome::Continue)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    const RDMSR: [u8; 2] = [0x0f, 0x32];
    const WRMSR: [u8; 2] = [0x0f, 0x30];
    const RDPMC: [u8; 2] = [0x0f, 0x33];

    fn rd(t: &mut TestMachine, msr: u32) -> Outcome {
        t.ctx.gpr[1] = msr;
        t.run(&RDMSR)
    }

    #[test]
    fn apic_base_reads_disabled_and_unknown_msrs_fault() {
        let mut t = TestMachine::new();
        assert_eq!(rd(&mut t, APIC_BASE), Outcome::Continue);
        assert_eq!((t.ctx.gpr[0], t.ctx.gpr[2]), (0xfee0_0100, 0));
        assert_eq!(rd(&mut t, 0xc000_0080), gp(0), "EFER: no long mode");
        assert_eq!(rd(&mut t, 0x2ff), gp(0), "MTRRs: not advertised");
        assert_eq!(rd(&mut t, 0x179), gp(0), "machine check: not advertised");
    }

    #[test]
    fn vendor_performance_counters_hold_values() {
        let mut t = TestMachine::new();
        let (ctr, counter) = match t.cpu.model.vendor() {
            Vendor::Amd => (AMD_PERF_CTR + 1, 1),
            Vendor::Intel => (INTEL_PMC[1], 1),
            Vendor::Other => return,
        };
        t.ctx.gpr[1] = ctr;
        t.ctx.gpr[0] = 0x1234;
        t.ctx.gpr[2] = 0x5;
        assert_eq!(t.run(&WRMSR), Outcome::Continue);
        assert_eq!(rd(&mut t, ctr), Outcome::Continue);
        assert_eq!((t.ctx.gpr[0], t.ctx.gpr[2]), (0x1234, 0x5));
        t.ctx.gpr[1] = counter;
        assert_eq!(t.run(&RDPMC), Outcome::Continue);
        assert_eq!(t.ctx.gpr[0], 0x1234);
        t.set_cpl(3);
        assert_eq!(t.run(&RDPMC), gp(0), "CR4.PCE clear");
        t.cpu.cr4 |= CR4_PCE;
        assert_eq!(t.run(&RDPMC), Outcome::Continue);
        t.ctx.gpr[1] = 9;
        assert_eq!(t.run(&RDPMC), gp(0), "no such counter");
        t.ctx.gpr[1] = ctr;
        assert_eq!(t.run(&RDMSR), gp(0), "rdmsr at CPL 3");
    }

    #[test]
    fn amd_performance_counter_msrs_exist_with_any_vendor() {
        // As on QEMU's CPUs of either vendor: written and read back at CPL 0 (a
        // test kernel for QEMU's PC writes them unconditionally), #GP at CPL 3.
        let mut t = TestMachine::new();
        for msr in AMD_PERF_CTL..AMD_PERF_CTR + 4 {
            t.ctx.gpr[1] = msr;
            t.ctx.gpr[0] = msr ^ 0x5a;
            t.ctx.gpr[2] = 0;
            assert_eq!(t.run(&WRMSR), Outcome::Continue, "{msr:#x}");
            assert_eq!(rd(&mut t, msr), Outcome::Continue, "{msr:#x}");
            assert_eq!((t.ctx.gpr[0], t.ctx.gpr[2]), (msr ^ 0x5a, 0), "{msr:#x}");
        }
        assert_eq!(rd(&mut t, AMD_PERF_CTR + 4), gp(0), "0xc0010008: none");
        t.set_cpl(3);
        assert_eq!(rd(&mut t, AMD_PERF_CTL), gp(0), "rdmsr at CPL 3");
    }

    #[test]
    fn misc_enable_exists_on_intel_only() {
        let mut t = TestMachine::new();
        match t.cpu.model.vendor() {
            Vendor::Intel if t.cpu.model.family() >= 6 => {
                assert_eq!(rd(&mut t, MISC_ENABLE), Outcome::Continue);
                assert_eq!((t.ctx.gpr[0], t.ctx.gpr[2]), (0x1801, 0), "fast strings, no BTS or PEBS");
                t.ctx.gpr[0] = 0x1800;
                assert_eq!(t.run(&WRMSR), Outcome::Continue);
                assert_eq!(rd(&mut t, MISC_ENABLE), Outcome::Continue);
                assert_eq!(t.ctx.gpr[0], 0x1800);
            }
            _ => assert_eq!(rd(&mut t, MISC_ENABLE), gp(0)),
        }
    }
}
