//! Hardware task switches to a 32-bit TSS (SDM vol. 3, 8.3 "Task Switching"): far
//! jmp and call to a TSS descriptor or through a task gate, an event delivered
//! through a task gate of the IDT, and iret with NT set (a return to the task the
//! back link names).
//!
//! The outgoing task's registers, EFLAGS, EIP and selectors go into its TSS; the
//! busy bits and the back link follow the SDM for each source; CR0.TS is set; the
//! incoming task's CR3 (with paging on), LDTR, EFLAGS, registers and segment
//! registers are loaded, the segment registers with their checks, whose faults
//! (#TS, #NP, #SS) come in the context of the new task. The TSS and the
//! descriptor tables are read in the address space the switch starts in (a
//! guest that maps its GDT and TSSs alike in every space sees no difference).
//! 16-bit TSSs and tasks in 16-bit or based code stop as unsupported, except that
//! user code (CPL 3) gets a fault instead (README, limits).

use super::addressing::{read_sys, write_linear_as};
use super::descriptor::{fetch, is_null, set_type_bits, sys, Entry};
use super::flags::{read_eflags, write_eflags, EFLAGS_WRITABLE};
use super::{Fault, Machine};
use crate::cpu::{cr0, eflags, sreg, Segment};

/// What starts a task switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Jmp,
    Call,
    Iret,
    /// An exception or interrupt through a task gate, with its error code (pushed
    /// on the new task's stack).
    Event(Option<u32>),
}

const BUSY: u8 = 2;
/// The smallest limit of a 32-bit TSS.
const MIN_LIMIT: u32 = 0x67;

fn ts(sel: u16) -> Fault {
    Fault::exc(super::vector::TS, Some(u32::from(sel & 0xfffc)))
}

/// Switches to the task of the TSS `sel` names (`e`, its descriptor, already
/// checked by the caller for what the source needs: available, or busy for iret).
/// `return_eip` is the eip the outgoing task resumes at.
pub(crate) fn switch(m: &mut Machine<'_>, sel: u16, e: Entry, source: Source, return_eip: u32) -> Result<(), Fault> {
    let d = e.desc;
    if !d.present() {
        return Err(Fault::np_sel(sel));
    }
    if matches!(d.typ(), sys::TSS16_AVAIL | sys::TSS16_BUSY) {
        // bt86 switches to 32-bit TSSs only. User code's own jmp, call or iret
        // (through a kernel's DPL-3 descriptor) gets #GP(selector) (#TS for iret)
        // instead of stopping the VM, as for 16-bit code (README, limits).
        return Err(match source {
            Source::Jmp | Source::Call if m.cpu.cpl() == 3 => Fault::gp_sel(sel),
            Source::Iret if m.cpu.cpl() == 3 => ts(sel),
            _ => Fault::unsupported("a task switch to a 16-bit TSS"),
        });
    }
    if d.limit() < MIN_LIMIT {
        return Err(ts(sel));
    }
    let old = m.cpu.tr;
    if is_null(old.selector) || !matches!((old.attrs & 0xf) as u8, sys::TSS32_AVAIL | sys::TSS32_BUSY) {
        return Err(Fault::unsupported("a task switch without a 32-bit TSS loaded (ltr)"));
    }
    if old.limit < MIN_LIMIT {
        return Err(ts(old.selector));
    }
    // The incoming task's state, read before anything is written.
    let new_base = d.base();
    let rd = |m: &mut Machine<'_>, off: u32, size: u32| read_sys(m, new_base.wrapping_add(off), size);
    let cr3 = rd(m, 0x1c, 4)?;
    let eip = rd(m, 0x20, 4)?;
    let mut flags = rd(m, 0x24, 4)?;
    let mut gpr = [0u32; 8];
    for (k, r) in gpr.iter_mut().enumerate() {
        *r = rd(m, 0x28 + 4 * k as u32, 4)?;
    }
    let mut sels = [0u16; 6];
    for (k, s) in sels.iter_mut().enumerate() {
        *s = rd(m, 0x48 + 4 * k as u32, 2)? as u16;
    }
    let ldt = rd(m, 0x60, 2)? as u16;

    // Save the outgoing task (NT cleared in the image for an iret).
    let mut old_flags = read_eflags(m);
    if source == Source::Iret {
        old_flags &= !eflags::NT;
    }
    let mut image = vec![(0x20, return_eip, 4), (0x24, old_flags, 4)];
    for k in 0..8 {
        image.push((0x28 + 4 * k, m.ctx.gpr[k as usize], 4));
    }
    for k in 0..6 {
        image.push((0x48 + 4 * k, u32::from(m.cpu.seg[k as usize].selector), 2));
    }
    for (off, v, size) in image {
        write_linear_as(m, old.base.wrapping_add(off), &v.to_le_bytes()[..size], false)?;
    }
    // Busy bits and the back link.
    if matches!(source, Source::Jmp | Source::Iret) {
        if let Some(o) = fetch(m, old.selector)? {
            let access = (o.desc.hi >> 8) as u8 & !BUSY;
            write_linear_as(m, o.addr.wrapping_add(5), &[access], false)?;
        }
    }
    let new_desc = if source == Source::Iret { d } else { set_type_bits(m, e, BUSY)? };
    if matches!(source, Source::Call | Source::Event(_)) {
        write_linear_as(m, new_base, &old.selector.to_le_bytes(), false)?;
        flags |= eflags::NT;
    }

    // Commit: the new task's TR, CR0.TS, CR3, registers and flags.
    m.cpu.tr = new_desc.to_segment(sel);
    m.cpu.cr0 |= cr0::TS;
    if m.cpu.cr0 & cr0::PG != 0 {
        m.cpu.cr3 = cr3;
    }
    m.ctx.gpr = gpr;
    m.ctx.eip = eip;
    write_eflags(m, flags, EFLAGS_WRITABLE);
    // From here on, faults belong to the new task.
    load_ldt(m, ldt)?;
    load_segments(m, sels)?;
    if let Source::Event(Some(code)) = source {
        let ss = m.cpu.seg[sreg::SS];
        let esp = m.ctx.gpr[4].wrapping_sub(4);
        write_linear_as(m, ss.base.wrapping_add(esp), &code.to_le_bytes(), m.cpu.cpl() == 3)?;
        m.ctx.gpr[4] = esp;
    }
    if m.ctx.eip > m.cpu.seg[sreg::CS].limit {
        return Err(Fault::gp0());
    }
    Ok(())
}

/// LDTR from the new TSS: null, or an LDT descriptor in the GDT (#TS), present.
fn load_ldt(m: &mut Machine<'_>, sel: u16) -> Result<(), Fault> {
    if is_null(sel) {
        m.cpu.ldtr = Segment { selector: sel, ..Segment::default() };
        return Ok(());
    }
    if sel & 4 != 0 {
        return Err(ts(sel));
    }
    let d = fetch(m, sel)?.ok_or_else(|| ts(sel))?.desc;
    if !d.is_system() || d.typ() != sys::LDT || !d.present() {
        return Err(ts(sel));
    }
    m.cpu.ldtr = d.to_segment(sel);
    Ok(())
}

/// The new task's segment registers: CS decides the CPL (its RPL); SS a writable
/// data segment of that privilege; the data registers null or readable with the
/// usual privilege rule. A bad descriptor is #TS(selector); a segment not present
/// #NP (#SS for SS).
fn load_segments(m: &mut Machine<'_>, sels: [u16; 6]) -> Result<(), Fault> {
    let cs_sel = sels[sreg::CS];
    let cpl = (cs_sel & 3) as u8;
    let cs = descriptor(m, cs_sel)?;
    let d = cs.desc;
    let dpl_ok = if d.conforming() { d.dpl() <= cpl } else { d.dpl() == cpl };
    if d.is_system() || !d.is_code() || !dpl_ok {
        return Err(ts(cs_sel));
    }
    if !d.present() {
        return Err(Fault::np_sel(cs_sel));
    }
    super::segments::check_runnable_cs(&d, cpl, ts(cs_sel), "a task in")?;
    m.cpu.seg[sreg::CS] = set_type_bits(m, cs, 1)?.to_segment(cs_sel);
    let ss_sel = sels[sreg::SS];
    let ss = descriptor(m, ss_sel)?;
    let d = ss.desc;
    if d.is_system() || !d.is_data() || !d.writable() || d.dpl() != cpl || (ss_sel & 3) as u8 != cpl {
        return Err(ts(ss_sel));
    }
    if !d.present() {
        return Err(Fault::ss(ss_sel & 0xfffc));
    }
    m.cpu.seg[sreg::SS] = set_type_bits(m, ss, 1)?.to_segment(ss_sel);
    for r in [sreg::ES, sreg::DS, sreg::FS, sreg::GS] {
        let sel = sels[r];
        if is_null(sel) {
            m.cpu.seg[r] = Segment { selector: sel, ..Segment::default() };
            continue;
        }
        let e = descriptor(m, sel)?;
        let d = e.desc;
        let rpl = (sel & 3) as u8;
        let usable = !d.is_system() && (d.is_data() || d.readable());
        let privileged = d.is_code() && d.conforming() || (d.dpl() >= cpl && d.dpl() >= rpl);
        if !usable || !privileged {
            return Err(ts(sel));
        }
        if !d.present() {
            return Err(Fault::np_sel(sel));
        }
        m.cpu.seg[r] = set_type_bits(m, e, 1)?.to_segment(sel);
    }
    Ok(())
}

/// The descriptor `sel` names, #TS(selector) when null or beyond its table.
fn descriptor(m: &mut Machine<'_>, sel: u16) -> Result<Entry, Fault> {
    if is_null(sel) {
        return Err(ts(sel));
    }
    fetch(m, sel)?.ok_or_else(|| ts(sel))
}

/// The TSS a far jmp or call names, directly or through a task gate (`sel`'s
/// descriptor `e`): checked as the SDM's JMP and CALL say (#GP for privilege and
/// type, #NP for a gate not present). Returns the TSS selector and descriptor.
pub(crate) fn transfer_target(m: &mut Machine<'_>, sel: u16, e: Entry) -> Result<(u16, Entry), Fault> {
    let d = e.desc;
    let (cpl, rpl) = (m.cpu.cpl(), (sel & 3) as u8);
    if d.dpl() < cpl || d.dpl() < rpl {
        return Err(Fault::gp_sel(sel));
    }
    if d.typ() != sys::TASK_GATE {
        return Ok((sel, e));
    }
    if !d.present() {
        return Err(Fault::np_sel(sel));
    }
    let tss = (d.lo >> 16) as u16;
    if tss & 4 != 0 {
        return Err(Fault::gp_sel(tss));
    }
    let t = fetch(m, tss)?.ok_or_else(|| Fault::gp_sel(tss))?;
    if !t.desc.is_system() || !matches!(t.desc.typ(), sys::TSS16_AVAIL | sys::TSS32_AVAIL) {
        return Err(Fault::gp_sel(tss));
    }
    Ok((tss, t))
}

/// The TSS a task gate of the IDT names (its selector `tss`), for an event: in the
/// GDT and available, else #TS(selector + EXT).
pub(crate) fn event_target(m: &mut Machine<'_>, tss: u16, ext: u16) -> Result<Entry, Fault> {
    let bad = || Fault::exc(super::vector::TS, Some(u32::from((tss & 0xfffc) | ext)));
    if tss & 4 != 0 {
        return Err(bad());
    }
    let t = fetch(m, tss)?.ok_or_else(bad)?;
    if !t.desc.is_system() || !matches!(t.desc.typ(), sys::TSS16_AVAIL | sys::TSS32_AVAIL) {
        return Err(bad());
    }
    Ok(t)
}
