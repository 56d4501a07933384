//! Exception and interrupt delivery through the guest's IDT, and `iret`.
//!
//! Delivery follows the SDM's protected-mode rules for interrupt and trap gates:
//! the gate must lie inside the IDT, be present, and (for `int n`, `int3`, `into`)
//! have DPL >= CPL; the target must be a present code segment with DPL <= CPL. A
//! move to an inner ring switches to the stack the TSS names for that ring and
//! pushes the old SS:ESP; then EFLAGS, CS, EIP and the error code. Interrupt gates
//! clear IF; both clear TF, NT and RF. Every check and every stack write happens
//! before any register changes, so a fault during delivery leaves the state as it
//! was (the engine then raises #DF, and a fault during #DF is a triple fault).
//!
//! 16-bit gates push words; task gates switch tasks (`task.rs`). Not here yet:
//! handlers in 16-bit code segments, virtual-8086 mode.

use super::addressing::{read_lin, read_lin_words, read_sys, write_linear_as};
use super::descriptor::{fetch, is_null, set_type_bits, sys, Entry};
use super::flags::{iopl, read_eflags, write_eflags};
use super::{EmuResult, Fault, Machine, Outcome};
use crate::cpu::{eflags, sreg, Segment};
use bt86_translator::abi::{ARITH_FLAGS, FLAG_IF};
use bt86_translator::CalloutSite;
use iced_x86::Mnemonic;

/// Where an event comes from: it decides the DPL check, the EXT bit of error
/// codes, and nothing else (the saved eip is given by the caller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventSource {
    /// `int n`, `int3`, `into`: the gate's DPL must be >= CPL.
    Software,
    /// A processor exception (fault or trap) raised by an instruction.
    Exception,
    /// An external interrupt (from the PIC).
    External,
}

const GATE_INT16: u8 = 0x6;
const GATE_TRAP16: u8 = 0x7;
const GATE_INT32: u8 = 0xe;
const GATE_TRAP32: u8 = 0xf;
const ACCESSED: u8 = 1;

/// Delivers `vector` through the IDT; the frame saves `return_eip`.
pub(crate) fn deliver(
    m: &mut Machine<'_>,
    vector: u8,
    error: Option<u32>,
    source: EventSource,
    return_eip: u32,
) -> Result<(), Fault> {
    let ext = u16::from(source != EventSource::Software);
    let idt_error = u16::from(vector) * 8 + 2 + ext;
    let (offset, selector, gate_type) = read_gate(m, vector, source, idt_error)?;
    if gate_type == sys::TASK_GATE {
        let t = super::task::event_target(m, selector, ext)?;
        return super::task::switch(m, selector, t, super::task::Source::Event(error), return_eip);
    }
    if is_null(selector) {
        return Err(Fault::gp(ext));
    }
    let e = fetch(m, selector)?.ok_or(Fault::gp((selector & 0xfffc) | ext))?;
    let d = e.desc;
    let cpl = m.cpu.cpl();
    if d.is_system() || !d.is_code() || d.dpl() > cpl {
        return Err(Fault::gp((selector & 0xfffc) | ext));
    }
    if !d.present() {
        return Err(Fault::exc(super::vector::NP, Some(u32::from((selector & 0xfffc) | ext))));
    }
    let new_cpl = if d.conforming() { cpl } else { d.dpl() };
    let refusal = Fault::gp((selector & 0xfffc) | ext);
    super::segments::check_runnable_cs(&d, new_cpl, refusal, "an interrupt handler in")?;
    let old_flags = read_eflags(m);
    let old_cs = m.cpu.seg[sreg::CS].selector;
    // A 16-bit gate pushes words (the low halves of eflags, eip and the error code).
    let slot = if matches!(gate_type, GATE_INT16 | GATE_TRAP16) { 2 } else { 4 };
    // The frame, first pushed first: [ss, esp,] eflags, cs, eip[, error].
    let mut words = [u32::from(m.cpu.seg[sreg::SS].selector), m.ctx.gpr[4], old_flags, u32::from(old_cs), return_eip, 0];
    let end = if let Some(e) = error {
        words[5] = e;
        6
    } else {
        5
    };
    let (new_ss, new_esp) = if new_cpl < cpl {
        let (ss, esp) = inner_stack(m, new_cpl, ext)?;
        (Some(ss), write_frame(m, ss.base, esp, &words[..end], slot, false)?)
    } else {
        let ss = m.cpu.seg[sreg::SS];
        (None, write_frame(m, ss.base, m.ctx.gpr[4], &words[2..end], slot, m.cpu.cpl() == 3)?)
    };
    // Commit: nothing below can fault.
    let d = set_type_bits(m, e, ACCESSED)?;
    let cs = d.to_segment((selector & !3) | u16::from(new_cpl));
    commit_gate(m, GateTarget { offset, cs, ss: new_ss, interrupt_gate: matches!(gate_type, GATE_INT32 | GATE_INT16) }, new_esp);
    Ok(())
}

/// Where a delivery through an interrupt or trap gate goes, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct GateTarget {
    pub offset: u32,
    pub cs: Segment,
    /// The inner ring's stack segment (None: the same ring's).
    pub ss: Option<Segment>,
    /// An interrupt gate (clears IF), not a trap gate.
    pub interrupt_gate: bool,
}

/// What a delivery through a gate changes once every check passed and the frame,
/// ending at `new_esp`, is written.
pub(super) fn commit_gate(m: &mut Machine<'_>, t: GateTarget, new_esp: u32) {
    m.cpu.seg[sreg::CS] = t.cs;
    if let Some(ss) = t.ss {
        m.cpu.seg[sreg::SS] = ss;
    }
    m.ctx.gpr[4] = new_esp;
    m.ctx.eip = t.offset;
    m.ctx.sys_flags &= !(eflags::TF | eflags::NT | eflags::RF | eflags::VM);
    if t.interrupt_gate {
        m.ctx.vif = 0;
    }
}

/// Reads and checks IDT entry `vector`: (offset, selector, gate type).
fn read_gate(
    m: &mut Machine<'_>,
    vector: u8,
    source: EventSource,
    idt_error: u16,
) -> Result<(u32, u16, u8), Fault> {
    let at = u32::from(vector) * 8;
    if at + 7 > u32::from(m.cpu.idtr.limit) {
        return Err(Fault::gp(idt_error));
    }
    let base = m.cpu.idtr.base.wrapping_add(at);
    let lo = read_sys(m, base, 4)?;
    let hi = read_sys(m, base.wrapping_add(4), 4)?;
    let gate_type = ((hi >> 8) & 0x1f) as u8;
    let dpl = ((hi >> 13) & 3) as u8;
    let present = hi & 0x8000 != 0;
    match gate_type {
        GATE_INT32 | GATE_TRAP32 | GATE_INT16 | GATE_TRAP16 | sys::TASK_GATE => {}
        _ => return Err(Fault::gp(idt_error)),
    }
    if source == EventSource::Software && dpl < m.cpu.cpl() {
        return Err(Fault::gp(idt_error & !1));
    }
    if !present {
        return Err(Fault::exc(super::vector::NP, Some(u32::from(idt_error))));
    }
    let high = if matches!(gate_type, GATE_INT16 | GATE_TRAP16) { 0 } else { hi & 0xffff_0000 };
    Ok(((lo & 0xffff) | high, (lo >> 16) as u16, gate_type))
}

/// The stack for ring `ring` from the current 32-bit TSS, checked: (SS cache, ESP).
pub(crate) fn inner_stack(m: &mut Machine<'_>, ring: u8, ext: u16) -> Result<(Segment, u32), Fault> {
    let tr = m.cpu.tr;
    let ts = |sel: u16| Fault::exc(10, Some(u32::from((sel & 0xfffc) | ext)));
    let ty = (tr.attrs & 0xf) as u8;
    if is_null(tr.selector) || !(ty == sys::TSS32_AVAIL || ty == sys::TSS32_BUSY) {
        return Err(Fault::unsupported("a privilege change without a 32-bit TSS loaded (ltr)"));
    }
    let at = 4 + 8 * u32::from(ring);
    if at + 5 > tr.limit {
        return Err(ts(tr.selector));
    }
    let esp = read_sys(m, tr.base.wrapping_add(at), 4)?;
    let ss_sel = read_sys(m, tr.base.wrapping_add(at + 4), 2)? as u16;
    if is_null(ss_sel) || u8::try_from(ss_sel & 3).ok() != Some(ring) {
        return Err(ts(ss_sel));
    }
    let e: Entry = fetch(m, ss_sel)?.ok_or(ts(ss_sel))?;
    let d = e.desc;
    if d.is_system() || !d.is_data() || !d.writable() || d.dpl() != ring {
        return Err(ts(ss_sel));
    }
    if !d.present() {
        return Err(Fault::ss(ss_sel & 0xfffc));
    }
    let d = set_type_bits(m, e, ACCESSED)?;
    Ok((d.to_segment(ss_sel), esp))
}

/// Writes `frame` (first element pushed first) in `slot`-byte slots (4, or 2 for a
/// 16-bit gate) below `esp` in the stack segment at `ss_base`, as a user access if
/// `user` (the handler runs at CPL 3); returns the new esp.
pub(super) fn write_frame(m: &mut Machine<'_>, ss_base: u32, esp: u32, frame: &[u32], slot: u32, user: bool) -> Result<u32, Fault> {
    let n = frame.len().min(6);
    let size = slot as usize;
    let new_esp = esp.wrapping_sub(u32::try_from(n * size).unwrap_or(0));
    let bottom = ss_base.wrapping_add(new_esp);
    if bottom & 0xfff <= 0x1000 - (n * size) as u32 {
        // Within one page: one write (the pushes can fault only all together).
        let mut bytes = [0u8; 24];
        for (i, v) in frame[..n].iter().enumerate() {
            let at = (n - 1 - i) * size;
            bytes[at..at + size].copy_from_slice(&v.to_le_bytes()[..size]);
        }
        write_linear_as(m, bottom, &bytes[..n * size], user)?;
        return Ok(new_esp);
    }
    // Across pages: push by push, so a fault names the page the CPU's would.
    for (i, v) in frame[..n].iter().enumerate() {
        let at = u32::try_from((n - 1 - i) * size).unwrap_or(0);
        write_linear_as(m, bottom.wrapping_add(at), &v.to_le_bytes()[..size], user)?;
    }
    Ok(new_esp)
}

/// iret/iretd in protected mode: to the same ring, or to an outer ring (popping
/// SS:ESP too and nulling data segments the outer ring may not use). The 16-bit
/// form (`iretw`) pops words: IP (zero-extended), CS, the low 16 bits of EFLAGS and,
/// to an outer ring, SP and SS. With NT set it is a task return (`task_return`).
pub(crate) fn iret(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    let size: u32 = if site.ins.mnemonic() == Mnemonic::Iret { 2 } else { 4 };
    if m.ctx.sys_flags & eflags::NT != 0 {
        return task_return(m, super::next_eip(site));
    }
    let ss = m.cpu.seg[sreg::SS];
    let esp = m.ctx.gpr[4];
    let at = |k: u32| ss.base.wrapping_add(esp.wrapping_add(size * k));
    let [eip, cs_sel, flags] = read_lin_words(m, at(0), size)?;
    let cs_sel = cs_sel as u16;
    if size == 4 && flags & eflags::VM != 0 && m.cpu.cpl() == 0 {
        return Err(Fault::unsupported("iret to virtual-8086 mode"));
    }
    let cpl = m.cpu.cpl();
    let rpl = (cs_sel & 3) as u8;
    let e = return_cs(m, cs_sel, eip)?;
    let outer = if rpl > cpl {
        let [new_esp, ss_sel] = read_lin_words(m, at(3), size)?;
        Some((outer_ss(m, ss_sel as u16, rpl)?, new_esp))
    } else {
        None
    };
    // Commit.
    let d = set_type_bits(m, e, ACCESSED)?;
    let ret = IretFrame { eip, cs: d.to_segment(cs_sel), flags, outer };
    commit_iret(m, size, &ret, esp.wrapping_add(3 * size));
    Ok(Outcome::Jump)
}

/// What an `iret` returns to, popped and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct IretFrame {
    pub eip: u32,
    pub cs: Segment,
    pub flags: u32,
    /// To an outer ring: its SS and ESP.
    pub outer: Option<(Segment, u32)>,
}

/// What an `iret` of `size`-byte words changes once every check passed;
/// `same_ring_esp` is the stack pointer after the frame when the ring stays.
pub(super) fn commit_iret(m: &mut Machine<'_>, size: u32, ret: &IretFrame, same_ring_esp: u32) {
    let cpl = m.cpu.cpl();
    let mut mask = ARITH_FLAGS | eflags::TF | eflags::NT | eflags::AC | eflags::ID;
    if cpl == 0 {
        mask |= eflags::IOPL | FLAG_IF;
    } else if cpl <= iopl(m) {
        mask |= FLAG_IF;
    }
    if size == 2 {
        mask &= 0xffff;
    }
    write_eflags(m, ret.flags, mask);
    m.cpu.seg[sreg::CS] = ret.cs;
    m.ctx.eip = ret.eip;
    match ret.outer {
        Some((ss, new_esp)) => {
            m.cpu.seg[sreg::SS] = ss;
            m.ctx.gpr[4] = new_esp;
            null_inaccessible_data_segments(m, (ret.cs.selector & 3) as u8);
        }
        None => m.ctx.gpr[4] = same_ring_esp,
    }
}

/// iret with NT set: a return to the task the current TSS's back link names (SDM,
/// IRET "TASK-RETURN"). The link must name a busy TSS in the GDT (else #TS(link)),
/// present (else #NP(link)); the outgoing task resumes at `next_eip`.
fn task_return(m: &mut Machine<'_>, next_eip: u32) -> EmuResult {
    let link = read_sys(m, m.cpu.tr.base, 2)? as u16;
    let ts = Fault::exc(10, Some(u32::from(link & 0xfffc)));
    if link & 4 != 0 {
        return Err(ts);
    }
    let e = fetch(m, link)?.ok_or_else(|| ts.clone())?;
    if !e.desc.is_system() || !matches!(e.desc.typ(), sys::TSS16_BUSY | sys::TSS32_BUSY) {
        return Err(ts);
    }
    super::task::switch(m, link, e, super::task::Source::Iret, next_eip)?;
    Ok(Outcome::Jump)
}

/// A far return to an outer ring (`lret` with RPL > CPL): pops eip and cs, releases
/// `release` bytes, pops esp and ss for the outer ring, and releases `release`
/// bytes there too (SDM, RET "return to outer privilege level").
pub(crate) fn far_return_outer(m: &mut Machine<'_>, size: u32, eip: u32, cs_sel: u16, release: u32) -> EmuResult {
    let rpl = (cs_sel & 3) as u8;
    let e = return_cs(m, cs_sel, eip)?;
    let ss = m.cpu.seg[sreg::SS];
    let esp = m.ctx.gpr[4];
    let at = |off: u32| ss.base.wrapping_add(esp.wrapping_add(off));
    // A 16-bit return (`lretw`) pops words: the outer SP (zero-extended) and SS.
    let new_esp = read_lin(m, at(2 * size + release), size)?;
    let ss_sel = read_lin(m, at(3 * size + release), size)? as u16;
    let new_ss = outer_ss(m, ss_sel, rpl)?;
    let d = set_type_bits(m, e, ACCESSED)?;
    m.cpu.seg[sreg::CS] = d.to_segment(cs_sel);
    m.cpu.seg[sreg::SS] = new_ss;
    m.ctx.gpr[4] = new_esp.wrapping_add(release);
    m.ctx.eip = eip;
    null_inaccessible_data_segments(m, rpl);
    Ok(Outcome::Jump)
}

/// The code segment an iret or far return goes back to, checked (SDM): not null, a
/// code segment with RPL >= CPL whose DPL matches the RPL (or is at most the RPL
/// when conforming), present, 32-bit, and `eip` within its limit.
fn return_cs(m: &mut Machine<'_>, cs_sel: u16, eip: u32) -> Result<Entry, Fault> {
    if is_null(cs_sel) {
        return Err(Fault::gp0());
    }
    let rpl = (cs_sel & 3) as u8;
    let e = fetch(m, cs_sel)?.ok_or(Fault::gp_sel(cs_sel))?;
    let d = e.desc;
    let dpl_ok = if d.conforming() { d.dpl() <= rpl } else { d.dpl() == rpl };
    if rpl < m.cpu.cpl() || d.is_system() || !d.is_code() || !dpl_ok {
        return Err(Fault::gp_sel(cs_sel));
    }
    if !d.present() {
        return Err(Fault::np_sel(cs_sel));
    }
    super::segments::check_runnable_cs(&d, rpl, Fault::gp_sel(cs_sel), "a return to")?;
    if eip > d.limit() {
        return Err(Fault::gp0());
    }
    Ok(e)
}

/// The SS for an iret to ring `rpl`.
fn outer_ss(m: &mut Machine<'_>, ss_sel: u16, rpl: u8) -> Result<Segment, Fault> {
    if is_null(ss_sel) {
        return Err(Fault::gp0());
    }
    let e = fetch(m, ss_sel)?.ok_or(Fault::gp_sel(ss_sel))?;
    let d = e.desc;
    if (ss_sel & 3) as u8 != rpl || d.is_system() || !d.is_data() || !d.writable() || d.dpl() != rpl {
        return Err(Fault::gp_sel(ss_sel));
    }
    if !d.present() {
        return Err(Fault::ss(ss_sel & 0xfffc));
    }
    let d = set_type_bits(m, e, ACCESSED)?;
    Ok(d.to_segment(ss_sel))
}

/// On a return to an outer ring, data segment registers whose DPL is below the new
/// CPL (and that are not conforming code) become null (SDM, iret/ret "return to
/// outer privilege level").
fn null_inaccessible_data_segments(m: &mut Machine<'_>, cpl: u8) {
    for r in [sreg::ES, sreg::DS, sreg::FS, sreg::GS] {
        let s = m.cpu.seg[r];
        let dpl = ((s.attrs >> 5) & 3) as u8;
        let conforming_code = s.attrs & 0x0c == 0x0c;
        if !is_null(s.selector) && dpl < cpl && !conforming_code {
            m.cpu.seg[r] = Segment::default();
        }
    }
}

/// cli/sti at CPL > 0 (at CPL 0 cli is inline and sti is handled here too): they
/// need CPL <= IOPL, else #GP(0). sti leaves translated code, so the engine can
/// give the one-instruction interrupt shadow.
pub(crate) fn cli_sti(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    if m.cpu.cpl() > iopl(m) {
        return Err(Fault::gp0());
    }
    if site.ins.mnemonic() == Mnemonic::Sti {
        m.ctx.vif = 1;
        return super::jump_next(m, site);
    }
    m.ctx.vif = 0;
    Ok(Outcome::Continue)
}

/// Why an event could not be delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryFailure {
    /// Delivery itself raised this exception (the engine escalates to #DF).
    Exception { vector: u8, error: Option<u32> },
    /// Delivery needs something bt86 does not support, or memory outside RAM.
    Stop(super::Stop),
}

/// Delivers an event for the engine: `return_eip` is the eip the frame saves (the
/// faulting instruction for faults, the next one for traps and interrupts).
pub fn deliver_event(
    m: &mut Machine<'_>,
    vector: u8,
    error: Option<u32>,
    source: EventSource,
    return_eip: u32,
) -> Result<(), DeliveryFailure> {
    deliver(m, vector, error, source, return_eip).map_err(|f| match f {
        Fault::Exception { vector, error } => DeliveryFailure::Exception { vector, error },
        Fault::Mem(super::MemFault::PageFault { error_code, .. }) => {
            DeliveryFailure::Exception { vector: 14, error: Some(error_code) }
        }
        other => match other.into_outcome(return_eip) {
            Outcome::Stop(s) => DeliveryFailure::Stop(s),
            _ => DeliveryFailure::Stop(super::Stop::Unsupported { eip: return_eip, what: "delivery".into() }),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    use super::super::testutil::gates::*;

    fn deliver_t(t: &mut TestMachine, vector: u8, error: Option<u32>, source: EventSource) -> Result<(), DeliveryFailure> {
        let mut m = Machine { cpu: &mut t.cpu, ctx: &mut t.ctx, mem: &mut t.mem, io: &mut t.io };
        deliver_event(&mut m, vector, error, source, 0x1234)
    }

    #[test]
    fn same_ring_interrupt_gate_pushes_three_words_and_clears_if() {
        let mut t = machine();
        t.ctx.vif = 1;
        deliver_t(&mut t, 0x20, None, EventSource::External).unwrap();
        assert_eq!(t.ctx.eip, HANDLER);
        assert_eq!(t.ctx.gpr[4], STACK_TOP - 12);
        assert_eq!(t.read_u32(STACK_TOP - 12), 0x1234);
        assert_eq!(t.read_u32(STACK_TOP - 8), u32::from(KCODE));
        assert_eq!(t.read_u32(STACK_TOP - 4) & (1 << 9), 1 << 9, "saved IF=1");
        assert_eq!(t.ctx.vif, 0, "interrupt gate clears IF");
    }

    #[test]
    fn user_system_call_switches_to_the_tss_stack_and_iret_returns() {
        let mut t = machine();
        t.set_cpl(3);
        t.ctx.vif = 1;
        t.ctx.gpr[4] = 0x7000;
        deliver_t(&mut t, 0x80, None, EventSource::Software).unwrap();
        assert_eq!(t.cpu.cpl(), 0);
        assert_eq!(t.cpu.seg[sreg::SS].selector, KDATA);
        assert_eq!(t.ctx.gpr[4], KSTACK - 20);
        let frame: Vec<u32> = (0..5).map(|k| t.read_u32(KSTACK - 20 + 4 * k)).collect();
        assert_eq!(frame[0], 0x1234);
        assert_eq!(frame[1], 0x1b);
        assert_eq!(frame[3], 0x7000, "old esp");
        assert_eq!(frame[4], 0x23, "old ss");
        assert_eq!(t.ctx.vif, 1, "a trap gate keeps IF");
        // iret back to ring 3.
        t.ctx.eip = HANDLER;
        assert_eq!(t.run(&[0xcf]), Outcome::Jump);
        assert_eq!(t.cpu.cpl(), 3);
        assert_eq!((t.ctx.eip, t.ctx.gpr[4]), (0x1234, 0x7000));
        assert_eq!(t.cpu.seg[sreg::SS].selector, 0x23);
    }

    #[test]
    fn int_to_a_dpl0_gate_from_ring3_is_gp_with_the_idt_error_code() {
        let mut t = machine();
        t.set_cpl(3);
        let r = deliver_t(&mut t, 0x20, None, EventSource::Software);
        assert_eq!(r, Err(DeliveryFailure::Exception { vector: 13, error: Some(0x20 * 8 + 2) }));
        assert_eq!(t.cpu.cpl(), 3, "nothing changed");
    }

    #[test]
    fn missing_gate_and_not_present_gate() {
        let mut t = machine();
        t.cpu.idtr.limit = 0x20 * 8 - 1;
        let r = deliver_t(&mut t, 0x20, None, EventSource::External);
        assert_eq!(r, Err(DeliveryFailure::Exception { vector: 13, error: Some(0x20 * 8 + 3) }));
        let mut t = machine();
        gate(&mut t, 0x21, 0x0e);
        let r = deliver_t(&mut t, 0x21, None, EventSource::Exception);
        assert_eq!(r, Err(DeliveryFailure::Exception { vector: 11, error: Some(0x21 * 8 + 3) }));
    }

    #[test]
    fn error_code_is_pushed_after_eip() {
        let mut t = machine();
        gate(&mut t, 13, 0x8e);
        deliver_t(&mut t, 13, Some(0x18), EventSource::Exception).unwrap();
        assert_eq!(t.ctx.gpr[4], STACK_TOP - 16);
        assert_eq!(t.read_u32(STACK_TOP - 16), 0x18);
        assert_eq!(t.read_u32(STACK_TOP - 12), 0x1234);
    }

    #[test]
    fn far_return_to_ring3_loads_the_outer_stack() {
        let mut t = machine();
        t.set_gdt(3, desc(0, 0xfffff, 0xfb, 0xc));
        t.set_gdt(4, desc(0, 0xfffff, 0xf3, 0xc));
        let esp = STACK_TOP - 16;
        for (k, v) in [0x4321u32, 0x1b, 0x7000, 0x23].into_iter().enumerate() {
            t.write_u32(esp + 4 * k as u32, v);
        }
        t.ctx.gpr[4] = esp;
        assert_eq!(t.run(&[0xcb]), Outcome::Jump); // lret
        assert_eq!(t.cpu.cpl(), 3);
        assert_eq!((t.ctx.eip, t.ctx.gpr[4], t.cpu.seg[sreg::SS].selector), (0x4321, 0x7000, 0x23));
        assert_eq!(t.cpu.seg[sreg::DS].selector, 0, "ring-0 data segments are nulled");
    }

    #[test]
    fn iretw_pops_words_and_keeps_the_upper_flags() {
        let mut t = machine();
        t.set_gdt(3, desc(0, 0xfffff, 0xfb, 0xc));
        t.set_gdt(4, desc(0, 0xfffff, 0xf3, 0xc));
        t.set_cpl(3);
        t.ctx.sys_flags |= eflags::AC;
        let esp = STACK_TOP - 6;
        t.write_u32(esp, 0x001b_4321);
        t.write_u32(esp + 4, 0x0001_0003); // flags 0x0003 (CF), then a word of the caller's
        t.ctx.gpr[4] = esp;
        assert_eq!(t.run(&[0x66, 0xcf]), Outcome::Jump);
        assert_eq!((t.ctx.eip, t.ctx.gpr[4], t.cpu.cpl()), (0x4321, STACK_TOP, 3));
        assert_eq!(t.ctx.rflags & 1, 1, "CF from the frame");
        assert_ne!(t.ctx.sys_flags & eflags::AC, 0, "AC is above the low 16 bits");
    }

    #[test]
    fn iret_with_nt_is_a_task_return_that_checks_the_back_link() {
        let mut t = machine();
        t.set_cpl(3);
        t.ctx.sys_flags |= eflags::NT;
        // Back link 0: GDT entry 0 is no busy TSS.
        assert!(matches!(t.run(&[0xcf]), Outcome::Exception { vector: 10, error: Some(0), .. }));
        // An LDT selector.
        t.write_u32(TSS, 0x2c);
        assert!(matches!(t.run(&[0x66, 0xcf]), Outcome::Exception { vector: 10, error: Some(0x2c), .. }));
        // A busy TSS that is not present: #NP.
        t.set_gdt(6, desc(TSS, 0x67, 0x0b, 0));
        t.write_u32(TSS, 0x30);
        assert!(matches!(t.run(&[0xcf]), Outcome::Exception { vector: 11, error: Some(0x30), .. }));
        assert_eq!(t.cpu.cpl(), 3, "nothing changed");
    }

    #[test]
    fn a_call_gate_moves_to_ring_0_with_its_parameters_and_lret_comes_back() {
        let mut t = machine();
        t.set_cpl(3);
        // GDT 6: a 32-bit call gate to KCODE:HANDLER, DPL 3, two parameters.
        let gate = |dpl: u64| (u64::from(HANDLER & 0xffff_0000) << 32) | ((0x8c | (dpl << 5)) << 40) | (2 << 32) | (u64::from(KCODE) << 16) | u64::from(HANDLER & 0xffff);
        t.set_gdt(6, gate(3));
        t.ctx.gpr[4] = 0x7000;
        t.write_u32(0x7000, 0x11);
        t.write_u32(0x7004, 0x22);
        let lcall = [0x9a, 0, 0, 0, 0, 0x33, 0];
        assert_eq!(t.run(&lcall), Outcome::Jump);
        assert_eq!((t.cpu.cpl(), t.ctx.eip, t.cpu.seg[sreg::SS].selector), (0, HANDLER, KDATA));
        assert_eq!(t.ctx.gpr[4], KSTACK - 24);
        let frame: Vec<u32> = (0..6).map(|k| t.read_u32(KSTACK - 24 + 4 * k)).collect();
        assert_eq!(frame, vec![EIP + 7, 0x1b, 0x11, 0x22, 0x7000, 0x23]);
        // lret $8 releases the parameters on both stacks.
        t.ctx.eip = HANDLER;
        assert_eq!(t.run(&[0xca, 0x08, 0x00]), Outcome::Jump);
        assert_eq!((t.cpu.cpl(), t.ctx.eip, t.ctx.gpr[4]), (3, EIP + 7, 0x7008));
        // A jmp may not change privilege: #GP(the code segment).
        assert!(matches!(t.run(&[0xea, 0, 0, 0, 0, 0x33, 0]), Outcome::Exception { vector: 13, error: Some(e), .. } if e == u32::from(KCODE)));
        // A gate of DPL 0 is out of reach of ring 3: #GP(the gate).
        t.set_gdt(6, gate(0));
        assert!(matches!(t.run(&lcall), Outcome::Exception { vector: 13, error: Some(0x30), .. }));
        assert_eq!(t.cpu.cpl(), 3);
    }

    #[test]
    fn a_16_bit_gate_pushes_words_and_iretw_returns() {
        let mut t = machine();
        gate(&mut t, 0x21, 0x86); // 16-bit interrupt gate, DPL 0
        t.ctx.vif = 1;
        deliver_t(&mut t, 0x21, Some(0xabcd_0018), EventSource::Exception).unwrap();
        assert_eq!((t.ctx.eip, t.ctx.gpr[4], t.ctx.vif), (HANDLER & 0xffff, STACK_TOP - 8, 0));
        assert_eq!(t.read_u16(STACK_TOP - 8), 0x0018, "the error code's low word");
        assert_eq!(t.read_u16(STACK_TOP - 6), 0x1234);
        assert_eq!(t.read_u16(STACK_TOP - 4), KCODE);
        assert_eq!(t.read_u16(STACK_TOP - 2) & (1 << 9), 1 << 9, "saved IF=1");
        t.ctx.gpr[4] += 2; // the handler drops the error code
        assert_eq!(t.run(&[0x66, 0xcf]), Outcome::Jump);
        assert_eq!((t.ctx.eip, t.ctx.gpr[4], t.ctx.vif), (0x1234, STACK_TOP, 1));
    }

    #[test]
    fn a_16_bit_far_return_to_ring3_pops_words() {
        let mut t = machine();
        t.set_gdt(3, desc(0, 0xfffff, 0xfb, 0xc));
        t.set_gdt(4, desc(0, 0xfffff, 0xf3, 0xc));
        let esp = STACK_TOP - 8;
        for (k, v) in [0x4321u16, 0x1b, 0x7000, 0x23].into_iter().enumerate() {
            t.write(esp + 2 * k as u32, &v.to_le_bytes());
        }
        t.ctx.gpr[4] = esp;
        assert_eq!(t.run(&[0x66, 0xcb]), Outcome::Jump); // lretw
        assert_eq!(t.cpu.cpl(), 3);
        assert_eq!((t.ctx.eip, t.ctx.gpr[4], t.cpu.seg[sreg::SS].selector), (0x4321, 0x7000, 0x23));
    }

    #[test]
    fn user_cli_and_sti_need_iopl() {
        let mut t = machine();
        t.set_cpl(3);
        t.ctx.vif = 1;
        assert!(matches!(t.run(&[0xfa]), Outcome::Exception { vector: 13, error: Some(0), .. }));
        assert_eq!(t.ctx.vif, 1);
        t.ctx.sys_flags |= eflags::IOPL;
        assert_eq!(t.run(&[0xfa]), Outcome::Continue);
        assert_eq!(t.ctx.vif, 0);
    }
}
