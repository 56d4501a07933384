//! pushf/popf: EFLAGS assembled from the host rflags image (arithmetic flags, DF),
//! the virtual IF and the system flags, and split back on popf.
//!
//! TF, AC, NT, IOPL and ID live only in `VcpuCtx::sys_flags`: they never reach host
//! rflags, so the host neither single-steps nor alignment-checks translated code.

use super::stack::{pop, push};
use super::{jump_next, EmuResult, Machine, Outcome};
use crate::cpu::eflags;
use bt86_translator::abi::{VcpuCtx, ARITH_FLAGS, FLAG_IF};
use bt86_translator::CalloutSite;
use iced_x86::Mnemonic;

/// System flags kept in `VcpuCtx::sys_flags` that pushf shows and popf may write.
const SYS_FLAGS: u32 = eflags::TF | eflags::IOPL | eflags::NT | eflags::AC | eflags::ID;

/// The guest's EFLAGS as pushf shows it (VM and RF read as 0).
pub(crate) fn read_eflags(m: &Machine<'_>) -> u32 {
    eflags_of(m.ctx)
}

/// The guest's EFLAGS in `ctx` (VM and RF read as 0).
pub(crate) fn eflags_of(ctx: &VcpuCtx) -> u32 {
    let arith = (ctx.rflags as u32) & ARITH_FLAGS;
    let vif = if ctx.vif != 0 { FLAG_IF } else { 0 };
    arith | (ctx.sys_flags & SYS_FLAGS) | vif | eflags::FIXED
}

/// The guest's IOPL.
pub(crate) fn iopl(m: &Machine<'_>) -> u8 {
    ((m.ctx.sys_flags & eflags::IOPL) >> 12) as u8
}

/// Writes the bits of `value` selected by `mask` into EFLAGS: arithmetic flags and DF
/// into the host rflags image, IF into the virtual IF, the rest into `sys_flags`.
/// RF is cleared; VM is never set.
pub(crate) fn write_eflags(m: &mut Machine<'_>, value: u32, mask: u32) {
    set_eflags_of(m.ctx, value, mask);
}

/// `write_eflags` on `ctx`; `mask` = `EFLAGS_WRITABLE` writes every flag popf
/// may write at CPL 0.
pub(crate) fn set_eflags_of(ctx: &mut VcpuCtx, value: u32, mask: u32) {
    let arith = u64::from(ARITH_FLAGS & mask);
    ctx.rflags = (ctx.rflags & !arith) | (u64::from(value) & arith) | u64::from(eflags::FIXED);
    if mask & FLAG_IF != 0 {
        ctx.vif = u8::from(value & FLAG_IF != 0);
    }
    let sys = SYS_FLAGS & mask;
    ctx.sys_flags = ((ctx.sys_flags & !sys) | (value & sys)) & !(eflags::RF | eflags::VM);
}

/// Every EFLAGS bit that popf may write at CPL 0.
pub(crate) const EFLAGS_WRITABLE: u32 = ARITH_FLAGS | SYS_FLAGS | FLAG_IF;

/// Sets or clears ZF in the host rflags image.
pub(crate) fn set_zf(m: &mut Machine<'_>, zf: bool) {
    const ZF: u64 = 1 << 6;
    if zf {
        m.ctx.rflags |= ZF;
    } else {
        m.ctx.rflags &= !ZF;
    }
}

/// pushf (16-bit: the low half) / pushfd.
pub(crate) fn pushf(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    let size = if site.ins.mnemonic() == Mnemonic::Pushf {
        2
    } else {
        4
    };
    let v = read_eflags(m);
    push(m, size, v)?;
    Ok(Outcome::Continue)
}

/// popf / popfd. CPL 0 writes every flag; at CPL > 0 IOPL is kept and IF changes
/// only when CPL <= IOPL. The 16-bit form writes only the low 16 bits. Leaves
/// translated code (IF may have changed).
pub(crate) fn popf(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    let size = if site.ins.mnemonic() == Mnemonic::Popf {
        2
    } else {
        4
    };
    let v = pop(m, size)?;
    let mut mask = EFLAGS_WRITABLE;
    let cpl = m.cpu.cpl();
    if cpl > 0 {
        mask &= !eflags::IOPL;
        if cpl > iopl(m) {
            mask &= !FLAG_IF;
        }
    }
    if size == 2 {
        mask &= 0xffff;
    }
    write_eflags(m, v, mask);
    jump_next(m, site)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    const PUSHFD: &[u8] = &[0x9c];
    const PUSHFW: &[u8] = &[0x66, 0x9c];
    const POPFD: &[u8] = &[0x9d];
    const POPFW: &[u8] = &[0x66, 0x9d];

    #[test]
    fn pushf_assembles_eflags() {
        let mut t = TestMachine::new();
        // Host rflags image with CF ZF DF OF, plus TF and AC bits that must not leak
        // (they never should be there, but pushf takes only the arithmetic bits).
        t.ctx.rflags = 0x0c41 | 0x2 | 0x100 | 0x4_0000;
        t.ctx.vif = 1;
        t.ctx.sys_flags = eflags::IOPL | eflags::NT | eflags::RF | eflags::ID;
        assert_eq!(t.run(PUSHFD), Outcome::Continue);
        assert_eq!(t.esp(), STACK_TOP - 4);
        assert_eq!(
            t.read_u32(STACK_TOP - 4),
            0x0c41 | 0x2 | 0x200 | 0x3000 | 0x4000 | 0x20_0000
        );
        assert_eq!(t.run(PUSHFW), Outcome::Continue);
        assert_eq!(t.esp(), STACK_TOP - 6);
        assert_eq!(t.read_u16(STACK_TOP - 6), 0x7e43);
        assert_eq!(t.ctx.eip, EIP, "Continue leaves eip alone");
    }

    #[test]
    fn popf_at_cpl0_writes_everything() {
        let mut t = TestMachine::new();
        t.write_u32(STACK_TOP, 0x0025_7fd7 | eflags::VM | eflags::RF);
        assert_eq!(t.run(POPFD), Outcome::Jump);
        assert_eq!(t.ctx.eip, EIP + 1);
        assert_eq!(t.esp(), STACK_TOP + 4);
        assert_eq!(
            t.ctx.rflags, 0x0cd7,
            "arithmetic flags and DF only, bit 1 set"
        );
        assert_eq!(t.ctx.vif, 1);
        assert_eq!(
            t.ctx.sys_flags,
            eflags::TF | eflags::IOPL | eflags::NT | eflags::AC | eflags::ID
        );
        // popf of zero clears them again.
        t.ctx.gpr[4] = STACK_TOP;
        t.write_u32(STACK_TOP, 0);
        assert_eq!(t.run(POPFD), Outcome::Jump);
        assert_eq!((t.ctx.rflags, t.ctx.vif, t.ctx.sys_flags), (2, 0, 0));
    }

    #[test]
    fn popf16_writes_low_half_only() {
        let mut t = TestMachine::new();
        t.ctx.sys_flags = eflags::AC | eflags::ID;
        t.ctx.rflags = 0x2;
        t.write_u16(STACK_TOP, 0x0201);
        assert_eq!(t.run(POPFW), Outcome::Jump);
        assert_eq!(t.esp(), STACK_TOP + 2);
        assert_eq!(t.ctx.rflags, 0x3);
        assert_eq!(t.ctx.vif, 1);
        assert_eq!(t.ctx.sys_flags, eflags::AC | eflags::ID);
    }

    #[test]
    fn popf_at_cpl3_keeps_iopl_and_if() {
        let mut t = TestMachine::new();
        t.set_cpl(3);
        t.ctx.vif = 1;
        t.ctx.sys_flags = 0; // IOPL 0
        t.write_u32(STACK_TOP, 0x3000 | 0x0801); // IOPL 3, IF 0, CF, OF
        assert_eq!(t.run(POPFD), Outcome::Jump);
        assert_eq!(t.ctx.sys_flags & eflags::IOPL, 0, "IOPL kept");
        assert_eq!(t.ctx.vif, 1, "IF kept at CPL > IOPL");
        assert_eq!(t.ctx.rflags, 0x0803);
        // With IOPL 3 the same popf may change IF.
        t.ctx.sys_flags = eflags::IOPL;
        t.ctx.gpr[4] = STACK_TOP;
        assert_eq!(t.run(POPFD), Outcome::Jump);
        assert_eq!(t.ctx.vif, 0);
        assert_eq!(t.ctx.sys_flags & eflags::IOPL, eflags::IOPL);
    }

    #[test]
    fn popf_stack_fault_changes_nothing() {
        let mut t = TestMachine::new();
        t.ctx.gpr[4] = 0xffff_fffe;
        let before = (t.ctx.rflags, t.ctx.vif, t.ctx.sys_flags);
        assert_eq!(t.run(POPFD), exc(12, Some(0)));
        assert_eq!(t.esp(), 0xffff_fffe);
        assert_eq!((t.ctx.rflags, t.ctx.vif, t.ctx.sys_flags), before);
    }
}
