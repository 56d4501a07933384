//! Segment registers: mov to/from them, push/pop, lds/les/lfs/lgs/lss, and the far
//! transfers (jmp, call, retf) at the same privilege level, with the protected-mode
//! checks of the SDM.
//!
//! Loading a selector validates its descriptor, sets the descriptor's accessed bit
//! in memory (only if clear), and fills the cache: base, limit (granularity
//! applied), attributes. Far calls through call gates may move to an inner ring
//! (`through_call_gate`); returns to an outer ring are in `delivery.rs`; task
//! switches in `task.rs`.

use super::addressing::{dest, mem_operand, read_mem, read_op, sreg_index, write_dest, write_linear_as, write_reg};
use super::descriptor::{fetch, is_null, set_type_bits, sys, Descriptor, Entry};
use super::stack::{esp_plus, push_partial, read_at, write_at};
use super::{next_eip, EmuResult, Fault, Machine, Outcome};
use crate::cpu::{sreg, Segment};
use bt86_translator::CalloutSite;
use iced_x86::{Code, Instruction, Mnemonic, OpKind};

/// Whether an operand of `ins` is a segment register.
pub(crate) fn touches_sreg(ins: &Instruction) -> bool {
    (0..ins.op_count())
        .any(|op| ins.op_kind(op) == OpKind::Register && ins.op_register(op).is_segment_register())
}

/// Accessed bit of the type field.
const ACCESSED: u8 = 1;

/// A flat data segment: base 0, limit 4 GiB, writable, expand-up, present.
/// Loading one flat segment over another leaves the translation mode as it is,
/// which is what lets translated code do it (`bt86_translator::abi::SegReload`).
fn is_flat(seg: &Segment) -> bool {
    !is_null(seg.selector) && seg.base == 0 && seg.limit == u32::MAX && seg.attrs & 0x9e == 0x92
}

/// Prepares the context's `SegReload` for translated code: which data segment
/// registers hold a flat segment now, and (if the GDTR moved) no known selectors.
pub(crate) fn prepare_inline_loads(cpu: &crate::cpu::Cpu, r: &mut bt86_translator::abi::SegReload) {
    let flat = cpu.cr0 & crate::cpu::cr0::PE != 0;
    for (i, seg) in cpu.seg.iter().enumerate() {
        r.not_flat[i] = u64::from(!(flat && is_flat(seg)));
    }
    let gdtr = u64::from(cpu.gdtr.base) << 16 | u64::from(cpu.gdtr.limit);
    if r.gdtr != gdtr {
        r.forget();
        r.gdtr = gdtr;
    }
}

/// After translated code ran: the caches of the data segment registers it
/// loaded inline (it wrote only their selectors), from the known descriptors.
pub(crate) fn finish_inline_loads(cpu: &mut crate::cpu::Cpu, sel: &[u16; 6], r: &bt86_translator::abi::SegReload) {
    for idx in [sreg::ES, sreg::DS, sreg::FS, sreg::GS] {
        if sel[idx] == cpu.seg[idx].selector {
            continue;
        }
        let known = r.known[usize::from(sel[idx] & 0xff)];
        if let Some(raw) = known.descriptor_of(sel[idx]) {
            #[allow(clippy::cast_possible_truncation)]
            let desc = Descriptor { lo: raw as u32, hi: (raw >> 32) as u32 };
            cpu.seg[idx] = desc.to_segment(sel[idx]);
        }
    }
}

/// Records a flat data segment just loaded from the GDT for translated code to
/// load again inline at CPL 0 (where DPL >= RPL is all a load checks).
fn remember_flat(m: &mut Machine<'_>, e: &Entry, d: Descriptor, seg: &Segment) {
    let sel = seg.selector;
    if sel & 4 == 0 && is_flat(seg) && d.dpl() >= (sel & 3) as u8 && e.addr <= u32::MAX - 7 {
        let raw = u64::from(d.hi) << 32 | u64::from(d.lo);
        m.ctx.seg_reload.known[usize::from(sel & 0xff)] = bt86_translator::abi::KnownSelector::new(sel, raw, e.addr);
    }
}

/// Looks `sel` up, #GP(sel) if it lies beyond its table.
fn entry(m: &mut Machine<'_>, sel: u16) -> Result<Entry, Fault> {
    fetch(m, sel)?.ok_or_else(|| Fault::gp_sel(sel))
}

/// Marks the descriptor accessed and builds the cache for `selector`.
fn load(m: &mut Machine<'_>, e: Entry, selector: u16) -> Result<Segment, Fault> {
    let d = set_type_bits(m, e, ACCESSED)?;
    Ok(d.to_segment(selector))
}

/// The cache for `sel` loaded into DS, ES, FS or GS.
pub(crate) fn check_data(m: &mut Machine<'_>, sel: u16) -> Result<Segment, Fault> {
    if is_null(sel) {
        // An unusable segment; using it is the translated code's business.
        return Ok(Segment {
            selector: sel,
            ..Segment::default()
        });
    }
    let e = entry(m, sel)?;
    let d = e.desc;
    if !d.readable() {
        return Err(Fault::gp_sel(sel));
    }
    let rpl = (sel & 3) as u8;
    if !d.conforming() && d.dpl() < m.cpu.cpl().max(rpl) {
        return Err(Fault::gp_sel(sel));
    }
    if !d.present() {
        return Err(Fault::np_sel(sel));
    }
    let d = set_type_bits(m, e, ACCESSED)?;
    let seg = d.to_segment(sel);
    remember_flat(m, &e, d, &seg);
    Ok(seg)
}

/// The cache for `sel` loaded into SS.
pub(crate) fn check_ss(m: &mut Machine<'_>, sel: u16) -> Result<Segment, Fault> {
    if is_null(sel) {
        return Err(Fault::gp0());
    }
    let e = entry(m, sel)?;
    let d = e.desc;
    let cpl = m.cpu.cpl();
    if (sel & 3) as u8 != cpl || !d.writable() || d.dpl() != cpl {
        return Err(Fault::gp_sel(sel));
    }
    if !d.present() {
        return Err(Fault::ss(sel & 0xfffc));
    }
    load(m, e, sel)
}

/// The cache for `sel` loaded into segment register `idx` by mov, pop or l*s.
fn check_sreg(m: &mut Machine<'_>, idx: usize, sel: u16) -> Result<Segment, Fault> {
    match idx {
        sreg::CS => Err(Fault::ud()),
        sreg::SS => check_ss(m, sel),
        _ => check_data(m, sel),
    }
}

/// Whether bt86 can run code in the code segment `d` once loaded into CS at
/// privilege `new_cpl`: it translates flat 32-bit code only (base 0, D set). A
/// CPU runs 16-bit and based code segments; bt86 cannot, so a transfer into one
/// is refused before anything changes: at CPL 3 (user code reaches both through
/// its LDT, e.g. Linux's modify_ldt) with `refusal` (#GP(selector) for far
/// transfers and returns), so the guest kernel sees a fault and ends the process
/// while the VM goes on — a deviation from the CPU the README lists; in the
/// kernel's rings the VM stops as unsupported (`what`), as before.
pub(crate) fn check_runnable_cs(d: &Descriptor, new_cpl: u8, refusal: Fault, what: &str) -> Result<(), Fault> {
    if d.big() && d.base() == 0 {
        return Ok(());
    }
    if new_cpl == 3 {
        return Err(refusal);
    }
    Err(Fault::unsupported(if d.big() { format!("{what} a code segment with a non-zero base") } else { format!("{what} a 16-bit code segment") }))
}

/// Common tail of the CS checks: present, offset within the limit, a flat 32-bit
/// segment (see [`check_runnable_cs`]).
fn finish_cs(m: &mut Machine<'_>, e: Entry, sel: u16, offset: u32) -> Result<Segment, Fault> {
    let d = e.desc;
    if !d.present() {
        return Err(Fault::np_sel(sel));
    }
    if offset > d.limit() {
        return Err(Fault::gp0());
    }
    let cpl = m.cpu.cpl();
    check_runnable_cs(&d, cpl, Fault::gp_sel(sel), "a far transfer or return to")?;
    load(m, e, (sel & !3) | u16::from(cpl))
}

/// The new CS for a far jmp/call to `sel:offset` (same privilege level).
pub(crate) fn check_cs_transfer(
    m: &mut Machine<'_>,
    sel: u16,
    offset: u32,
) -> Result<Segment, Fault> {
    if is_null(sel) {
        return Err(Fault::gp0());
    }
    let e = entry(m, sel)?;
    let d: Descriptor = e.desc;
    if d.is_system() {
        return match d.typ() {
            sys::TASK_GATE | sys::TSS16_AVAIL | sys::TSS32_AVAIL => {
                Err(Fault::unsupported("far jmp/call through a task gate or TSS (a task switch)"))
            }
            _ => Err(Fault::gp_sel(sel)),
        };
    }
    if !d.is_code() {
        return Err(Fault::gp_sel(sel));
    }
    let (cpl, rpl) = (m.cpu.cpl(), (sel & 3) as u8);
    let ok = if d.conforming() {
        d.dpl() <= cpl
    } else {
        rpl <= cpl && d.dpl() == cpl
    };
    if !ok {
        return Err(Fault::gp_sel(sel));
    }
    finish_cs(m, e, sel, offset)
}

/// The new CS for a far return to `sel:offset`.
pub(crate) fn check_cs_return(
    m: &mut Machine<'_>,
    sel: u16,
    offset: u32,
) -> Result<Segment, Fault> {
    if is_null(sel) {
        return Err(Fault::gp0());
    }
    let e = entry(m, sel)?;
    let d = e.desc;
    let (cpl, rpl) = (m.cpu.cpl(), (sel & 3) as u8);
    if rpl < cpl || !d.is_code() {
        return Err(Fault::gp_sel(sel));
    }
    let ok = if d.conforming() {
        d.dpl() <= rpl
    } else {
        d.dpl() == rpl
    };
    if !ok {
        return Err(Fault::gp_sel(sel));
    }
    if !d.present() {
        return Err(Fault::np_sel(sel));
    }
    if rpl > cpl {
        return Err(Fault::unsupported(
            "far return to an outer privilege level comes with the protected-mode issue",
        ));
    }
    finish_cs(m, e, sel, offset)
}

/// mov sreg, r/m16 and mov r/m, sreg.
pub(crate) fn mov(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    let ins = &site.ins;
    match ins.code() {
        Code::Mov_Sreg_rm16 | Code::Mov_Sreg_r32m16 => {
            let idx = sreg_index(ins.op0_register()).ok_or_else(Fault::ud)?;
            if idx == sreg::CS {
                return Err(Fault::ud());
            }
            let sel = read_op(m, ins, 1, 2)? as u16;
            let seg = check_sreg(m, idx, sel)?;
            m.cpu.seg[idx] = seg;
            // TODO(interrupt issue): mov ss inhibits interrupts for one instruction.
            Ok(Outcome::Continue)
        }
        Code::Mov_rm16_Sreg | Code::Mov_r32m16_Sreg => {
            let idx = sreg_index(ins.op1_register()).ok_or_else(Fault::ud)?;
            let sel = m.cpu.seg[idx].selector;
            // A 32-bit register receives the selector zero-extended; memory gets 2 bytes.
            let d = dest(m, ins, 0, 2)?;
            write_dest(m, d, 2, u32::from(sel))?;
            Ok(Outcome::Continue)
        }
        _ => Err(Fault::ud()),
    }
}

/// push sreg / pop sreg.
pub(crate) fn push_pop(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    use Code::*;
    let ins = &site.ins;
    let idx = sreg_index(ins.op0_register()).ok_or_else(Fault::ud)?;
    let size: u32 = match ins.code() {
        Pushw_ES | Pushw_CS | Pushw_SS | Pushw_DS | Pushw_FS | Pushw_GS | Popw_ES | Popw_SS
        | Popw_DS | Popw_FS | Popw_GS => 2,
        Pushd_ES | Pushd_CS | Pushd_SS | Pushd_DS | Pushd_FS | Pushd_GS | Popd_ES | Popd_SS
        | Popd_DS | Popd_FS | Popd_GS => 4,
        _ => return Err(Fault::ud()),
    };
    let sel = m.cpu.seg[idx].selector;
    if ins.mnemonic() == Mnemonic::Push {
        // 32-bit operand size: a 4-byte slot of which the low 2 bytes are written.
        push_partial(m, size, 2, u32::from(sel))?;
        return Ok(Outcome::Continue);
    }
    let esp = m.ctx.gpr[4];
    let sel = read_at(m, esp, 0, 2)? as u16;
    let seg = check_sreg(m, idx, sel)?;
    // esp moves with the old stack's width.
    let new_esp = esp_plus(m.cpu, esp, size);
    m.cpu.seg[idx] = seg;
    m.ctx.gpr[4] = new_esp;
    Ok(Outcome::Continue)
}

/// lds/les/lfs/lgs/lss reg, m16:16 or m16:32.
pub(crate) fn load_far_pointer(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    use Code::*;
    let ins = &site.ins;
    let (size, idx) = match ins.code() {
        Lds_r16_m1616 => (2, sreg::DS),
        Lds_r32_m1632 => (4, sreg::DS),
        Les_r16_m1616 => (2, sreg::ES),
        Les_r32_m1632 => (4, sreg::ES),
        Lfs_r16_m1616 => (2, sreg::FS),
        Lfs_r32_m1632 => (4, sreg::FS),
        Lgs_r16_m1616 => (2, sreg::GS),
        Lgs_r32_m1632 => (4, sreg::GS),
        Lss_r16_m1616 => (2, sreg::SS),
        Lss_r32_m1632 => (4, sreg::SS),
        _ => return Err(Fault::ud()),
    };
    let r = mem_operand(m, ins)?;
    let offset = read_mem(m, r.seg, r.offset, size)?;
    let sel = read_mem(m, r.seg, r.offset.wrapping_add(size), 2)? as u16;
    let seg = check_sreg(m, idx, sel)?;
    m.cpu.seg[idx] = seg;
    write_reg(m.ctx, ins.op0_register(), offset);
    Ok(Outcome::Continue)
}

/// Far jmp and far call (ptr16:16/32 immediates or m16:16/32 memory operands).
pub(crate) fn far_jmp_call(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    let ins = &site.ins;
    let (sel, offset, size) = match ins.op0_kind() {
        OpKind::FarBranch32 => (ins.far_branch_selector(), ins.far_branch32(), 4u32),
        OpKind::FarBranch16 => (ins.far_branch_selector(), u32::from(ins.far_branch16()), 2),
        OpKind::Memory => {
            let size = match ins.code() {
                Code::Jmp_m1632 | Code::Call_m1632 => 4,
                Code::Jmp_m1616 | Code::Call_m1616 => 2,
                _ => return Err(Fault::ud()),
            };
            let r = mem_operand(m, ins)?;
            let offset = read_mem(m, r.seg, r.offset, size)?;
            let sel = read_mem(m, r.seg, r.offset.wrapping_add(size), 2)? as u16;
            (sel, offset, size)
        }
        // Near forms never come here; be explicit if one does.
        _ => {
            return Err(Fault::unsupported(format!(
                "{:?} as a far transfer",
                ins.code()
            )))
        }
    };
    if !is_null(sel) {
        if let Some(e) = fetch(m, sel)? {
            if e.desc.is_system() && matches!(e.desc.typ(), sys::CALL_GATE16 | sys::CALL_GATE32) {
                return through_call_gate(m, site, sel, e.desc);
            }
            if e.desc.is_system() && matches!(e.desc.typ(), sys::TASK_GATE | sys::TSS16_AVAIL | sys::TSS32_AVAIL) {
                let (tss, t) = super::task::transfer_target(m, sel, e)?;
                let source = if ins.mnemonic() == Mnemonic::Call { super::task::Source::Call } else { super::task::Source::Jmp };
                super::task::switch(m, tss, t, source, next_eip(site))?;
                return Ok(Outcome::Jump);
            }
        }
    }
    let cs = check_cs_transfer(m, sel, offset)?;
    let mut esp = m.ctx.gpr[4];
    if ins.mnemonic() == Mnemonic::Call {
        let old_cs = u32::from(m.cpu.seg[sreg::CS].selector);
        let ret = next_eip(site);
        // cs in a `size`-byte slot (2 bytes written), then the return offset.
        write_at(m, esp, size.wrapping_neg(), 2, old_cs)?;
        write_at(m, esp, (2 * size).wrapping_neg(), size, ret)?;
        esp = esp_plus(m.cpu, esp, (2 * size).wrapping_neg());
    }
    m.cpu.seg[sreg::CS] = cs;
    m.ctx.gpr[4] = esp;
    m.ctx.eip = offset;
    Ok(Outcome::Jump)
}

/// A far jmp or call through the call gate `gate_sel` (SDM, CALL and JMP,
/// "CALL-GATE"): the gate's DPL must be at least CPL and the selector's RPL, its
/// code segment a present code segment with DPL <= CPL. A call to a non-conforming
/// segment of a lower DPL switches to that ring's stack from the TSS and copies
/// the gate's parameter count of dwords (words for a 16-bit gate) from the old
/// stack; a jmp may not change privilege. The gate's size sets the size of what is
/// pushed. The return (retf, to an outer ring too) is `retf`.
fn through_call_gate(m: &mut Machine<'_>, site: &CalloutSite, gate_sel: u16, gate: Descriptor) -> EmuResult {
    let call = site.ins.mnemonic() == Mnemonic::Call;
    let cpl = m.cpu.cpl();
    if gate.dpl() < cpl || gate.dpl() < (gate_sel & 3) as u8 {
        return Err(Fault::gp_sel(gate_sel));
    }
    if !gate.present() {
        return Err(Fault::np_sel(gate_sel));
    }
    let size: u32 = if gate.typ() == sys::CALL_GATE32 { 4 } else { 2 };
    let cs_sel = (gate.lo >> 16) as u16;
    let offset = if size == 4 { (gate.lo & 0xffff) | (gate.hi & 0xffff_0000) } else { gate.lo & 0xffff };
    let params = gate.hi & 0x1f;
    if is_null(cs_sel) {
        return Err(Fault::gp0());
    }
    let e = entry(m, cs_sel)?;
    let d = e.desc;
    if d.is_system() || !d.is_code() || d.dpl() > cpl {
        return Err(Fault::gp_sel(cs_sel));
    }
    if !call && !d.conforming() && d.dpl() != cpl {
        return Err(Fault::gp_sel(cs_sel));
    }
    if !d.present() {
        return Err(Fault::np_sel(cs_sel));
    }
    let new_cpl = if d.conforming() { cpl } else { d.dpl() };
    if new_cpl == cpl {
        // Same privilege: an ordinary far transfer to the gate's target.
        let cs = finish_cs(m, e, cs_sel, offset)?;
        let mut esp = m.ctx.gpr[4];
        if call {
            let old_cs = u32::from(m.cpu.seg[sreg::CS].selector);
            write_at(m, esp, size.wrapping_neg(), 2, old_cs)?;
            write_at(m, esp, (2 * size).wrapping_neg(), size, next_eip(site))?;
            esp = esp_plus(m.cpu, esp, (2 * size).wrapping_neg());
        }
        m.cpu.seg[sreg::CS] = cs;
        m.ctx.gpr[4] = esp;
        m.ctx.eip = offset;
        return Ok(Outcome::Jump);
    }
    // More privilege: a call to a non-conforming segment of a lower DPL.
    if offset > d.limit() {
        return Err(Fault::gp0());
    }
    check_runnable_cs(&d, new_cpl, Fault::gp_sel(cs_sel), "a call gate to")?;
    let (new_ss, new_esp) = super::delivery::inner_stack(m, new_cpl, 0)?;
    let old_esp = m.ctx.gpr[4];
    let mut copied = Vec::with_capacity(params as usize);
    for k in 0..params {
        copied.push(read_at(m, old_esp, k * size, size)?);
    }
    let mut frame = vec![u32::from(m.cpu.seg[sreg::SS].selector), old_esp];
    frame.extend(copied.iter().rev());
    frame.extend([u32::from(m.cpu.seg[sreg::CS].selector), next_eip(site)]);
    let bytes = size * frame.len() as u32;
    let top = new_esp.wrapping_sub(bytes);
    for (k, v) in frame.iter().enumerate() {
        let at = new_ss.base.wrapping_add(top.wrapping_add(bytes - size * (k as u32 + 1)));
        write_linear_as(m, at, &v.to_le_bytes()[..size as usize], false)?;
    }
    // Commit.
    let cs = load(m, e, (cs_sel & !3) | u16::from(new_cpl))?;
    m.cpu.seg[sreg::CS] = cs;
    m.cpu.seg[sreg::SS] = new_ss;
    m.ctx.gpr[4] = top;
    m.ctx.eip = offset;
    Ok(Outcome::Jump)
}

/// retf / retf imm16 to the same privilege level.
pub(crate) fn retf(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    let ins = &site.ins;
    let size: u32 = match ins.code() {
        Code::Retfd | Code::Retfd_imm16 => 4,
        Code::Retfw | Code::Retfw_imm16 => 2,
        _ => return Err(Fault::ud()),
    };
    let release = if ins.op_count() > 0 {
        u32::from(ins.immediate16())
    } else {
        0
    };
    let esp = m.ctx.gpr[4];
    let offset = read_at(m, esp, 0, size)?;
    let sel = read_at(m, esp, size, 2)? as u16;
    if u8::try_from(sel & 3).unwrap_or(0) > m.cpu.cpl() {
        return super::delivery::far_return_outer(m, size, offset, sel, release);
    }
    let cs = check_cs_return(m, sel, offset)?;
    m.cpu.seg[sreg::CS] = cs;
    m.ctx.gpr[4] = esp_plus(m.cpu, esp, (2 * size).wrapping_add(release));
    m.ctx.eip = offset;
    Ok(Outcome::Jump)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    /// mov ds, ax / mov ss, ax / mov es, [ebx] / mov fs, ax
    const MOV_DS_AX: &[u8] = &[0x8e, 0xd8];
    const MOV_SS_AX: &[u8] = &[0x8e, 0xd0];
    const MOV_ES_MEM: &[u8] = &[0x8e, 0x03];
    const MOV_FS_AX: &[u8] = &[0x8e, 0xe0];

    fn gdt_setup() -> TestMachine {
        let mut t = TestMachine::new();
        t.set_gdt(5, desc(0x10_0000, 0xfff, 0x92, 0x4)); // data, base 1 MiB, not accessed
        t.set_gdt(6, desc(0, 0xfffff, 0x12, 0xc)); // not present data
        t.set_gdt(7, desc(0, 0xfffff, 0x98, 0xc)); // execute-only code
        t.set_gdt(8, desc(0, 0xfffff, 0x9a, 0xc)); // readable code
        t.set_gdt(9, desc(0, 0xfffff, 0xf2, 0xc)); // DPL 3 data
        t.set_gdt(10, desc(0x3000, 0x67, 0x89, 0)); // TSS
        t.set_gdt(11, desc(0, 0xfffff, 0x90, 0xc)); // read-only data
        t.set_gdt(12, desc(0, 0xfffff, 0x9e, 0xc)); // conforming readable code
        t.set_gdt(13, desc(0x4000, 0xfffff, 0xda, 0xc)); // DPL 2 code
        t.set_gdt(14, desc(0x5000, 0xffff, 0x9a, 0x0)); // 16-bit code
        t.set_gdt(15, desc(0x20_0000, 0xfffff, 0x9a, 0xc)); // code, base 2 MiB
        t
    }

    #[test]
    fn mov_ds_loads_cache_and_sets_accessed() {
        let mut t = gdt_setup();
        t.ctx.gpr[0] = 0x28;
        assert_eq!(
            t.run(MOV_DS_AX),
            Outcome::Jump,
            "base changed: leave the unit"
        );
        assert_eq!(t.ctx.eip, EIP + 2);
        assert_eq!(
            t.cpu.seg[sreg::DS],
            Segment {
                selector: 0x28,
                base: 0x10_0000,
                limit: 0xfff,
                attrs: 0x4093
            }
        );
        assert_eq!(t.read_u8(GDT_BASE + 5 * 8 + 5), 0x93);
        // Back to the flat base: leaves the unit again; same base: stays in it.
        t.ctx.gpr[0] = 0x10;
        assert_eq!(t.run(MOV_DS_AX), Outcome::Jump);
        t.ctx.gpr[0] = 0x40; // readable code into fs: writes through it are checked now
        assert_eq!(t.run(MOV_FS_AX), Outcome::Jump);
        assert_eq!(t.cpu.seg[sreg::FS].attrs, 0xc09b);
    }

    #[test]
    fn data_segment_checks() {
        let mut t = gdt_setup();
        let before = t.cpu.seg;
        for (sel, want) in [
            (0x30u16, exc(11, Some(0x30))), // not present → #NP
            (0x38, gp(0x38)),               // execute-only code
            (0x50, gp(0x50)),               // TSS
            (0x100, gp(0x100)),             // beyond the GDT limit
            (0x0c, gp(0x0c)),               // LDT, none loaded
            (0x13, gp(0x10)),               // RPL 3 > DPL 0
        ] {
            t.ctx.gpr[0] = u32::from(sel);
            assert_eq!(t.run(MOV_DS_AX), want, "selector {sel:#x}");
            assert_eq!(t.cpu.seg, before);
        }
        // Null selector: allowed for ds, unusable cache (a new translation mode:
        // accesses through ds are #GP(0) now).
        t.ctx.gpr[0] = 3;
        assert_eq!(t.run(MOV_DS_AX), Outcome::Jump);
        assert_eq!(
            t.cpu.seg[sreg::DS],
            Segment {
                selector: 3,
                ..Segment::default()
            }
        );
        // Conforming code ignores the DPL check (ds usable again: a new mode).
        t.ctx.gpr[0] = 0x63;
        assert_eq!(t.run(MOV_DS_AX), Outcome::Jump);
        // DPL 3 data at CPL 0 with RPL 3 (flat data again: a new mode).
        t.ctx.gpr[0] = 0x4b;
        assert_eq!(t.run(MOV_DS_AX), Outcome::Jump);
        // At CPL 3, DPL 0 data is out of reach.
        t.set_cpl(3);
        t.ctx.gpr[0] = 0x10;
        assert_eq!(t.run(MOV_DS_AX), gp(0x10));
        t.ctx.gpr[0] = 0x4b;
        assert_eq!(t.run(MOV_DS_AX), Outcome::Continue);
    }

    #[test]
    fn ss_checks() {
        let mut t = gdt_setup();
        t.ctx.gpr[0] = 0;
        assert_eq!(t.run(MOV_SS_AX), gp(0));
        t.ctx.gpr[0] = 0x58; // read-only data
        assert_eq!(t.run(MOV_SS_AX), gp(0x58));
        t.ctx.gpr[0] = 0x11; // RPL != CPL
        assert_eq!(t.run(MOV_SS_AX), gp(0x10));
        t.ctx.gpr[0] = 0x48; // DPL 3 != CPL 0
        assert_eq!(t.run(MOV_SS_AX), gp(0x48));
        t.ctx.gpr[0] = 0x30; // not present → #SS(sel)
        assert_eq!(t.run(MOV_SS_AX), exc(12, Some(0x30)));
        t.ctx.gpr[0] = 0x28;
        assert_eq!(t.run(MOV_SS_AX), Outcome::Jump);
        assert_eq!(t.cpu.seg[sreg::SS].base, 0x10_0000);
    }

    #[test]
    fn mov_cs_is_ud_and_mov_from_sreg() {
        let mut t = gdt_setup();
        // mov cs, ax: iced may decode it as invalid; either way not a load.
        let out = t.run(&[0x8e, 0xc8]);
        assert!(
            matches!(out, Outcome::Exception { vector: 6, .. } | Outcome::Stop(_)),
            "{out:?}"
        );
        // mov eax, ss (zero-extends)
        t.ctx.gpr[0] = 0xffff_ffff;
        assert_eq!(t.run(&[0x8c, 0xd0]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[0], 0x10);
        // mov ax, cs (16-bit: keeps the high half)
        t.ctx.gpr[0] = 0xffff_ffff;
        assert_eq!(t.run(&[0x66, 0x8c, 0xc8]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[0], 0xffff_0008);
        // mov [ebx], ds: two bytes.
        t.ctx.gpr[3] = 0x5000;
        t.write_u32(0x5000, 0xaaaa_aaaa);
        assert_eq!(t.run(&[0x8c, 0x1b]), Outcome::Continue);
        assert_eq!(t.read_u32(0x5000), 0xaaaa_0010);
        // mov es, [ebx]
        t.write_u16(0x5000, 0x28);
        assert_eq!(t.run(MOV_ES_MEM), Outcome::Jump);
        assert_eq!(t.cpu.seg[sreg::ES].selector, 0x28);
    }

    #[test]
    fn push_pop_sreg() {
        let mut t = gdt_setup();
        t.write_u32(STACK_TOP - 4, 0xffff_ffff);
        // push ds (32-bit): 4-byte slot, 2 bytes written.
        assert_eq!(t.run(&[0x1e]), Outcome::Continue);
        assert_eq!(t.esp(), STACK_TOP - 4);
        assert_eq!(t.read_u32(STACK_TOP - 4), 0xffff_0010);
        // push fs (16-bit)
        assert_eq!(t.run(&[0x66, 0x0f, 0xa0]), Outcome::Continue);
        assert_eq!(t.esp(), STACK_TOP - 6);
        assert_eq!(t.read_u16(STACK_TOP - 6), 0x10);
        // pop gs (16-bit) then pop es (32-bit) of a bad selector: #GP, esp kept.
        t.write_u16(STACK_TOP - 6, 0x28);
        assert_eq!(t.run(&[0x66, 0x0f, 0xa9]), Outcome::Jump);
        assert_eq!(t.cpu.seg[sreg::GS].base, 0x10_0000);
        assert_eq!(t.esp(), STACK_TOP - 4);
        t.write_u32(STACK_TOP - 4, 0x38);
        assert_eq!(t.run(&[0x07]), gp(0x38));
        assert_eq!(t.esp(), STACK_TOP - 4);
        t.write_u32(STACK_TOP - 4, 0x28);
        assert_eq!(t.run(&[0x07]), Outcome::Jump);
        assert_eq!(t.esp(), STACK_TOP);
        // pop ss
        t.ctx.gpr[4] = STACK_TOP - 4;
        t.write_u32(STACK_TOP - 4, 0x10);
        assert_eq!(t.run(&[0x17]), Outcome::Continue);
        assert_eq!(t.esp(), STACK_TOP);
        // push cs
        assert_eq!(t.run(&[0x0e]), Outcome::Continue);
        assert_eq!(t.read_u16(STACK_TOP - 4), 0x08);
    }

    #[test]
    fn lds_les_lss_from_memory() {
        let mut t = gdt_setup();
        // lds esi, [ebx+4]
        t.ctx.gpr[3] = 0x5000;
        t.write_u32(0x5004, 0xdead_beef);
        t.write_u16(0x5008, 0x28);
        assert_eq!(t.run(&[0xc5, 0x73, 0x04]), Outcome::Jump);
        assert_eq!(t.ctx.gpr[6], 0xdead_beef);
        assert_eq!(t.cpu.seg[sreg::DS].selector, 0x28);
        assert_eq!(t.cpu.seg[sreg::DS].base, 0x10_0000);
        // les di, [0x6000] (16-bit operand size): ds now has a 4 KiB limit → #GP(0).
        let out = t.run(&[0x66, 0xc4, 0x3d, 0x00, 0x60, 0x00, 0x00]);
        assert_eq!(out, gp(0));
        assert_eq!(t.cpu.seg[sreg::ES], Segment::flat(KDATA, 0x93));
        t.ctx.gpr[3] = 0xff8;
        t.ctx.eip = EIP;
        assert_eq!(
            t.run(&[0xc4, 0x3b]),
            Outcome::Stop(super::super::Stop::Unbacked {
                eip: EIP,
                linear: 0x10_0ff8
            })
        );
        t.cpu.seg[sreg::DS] = Segment::flat(0x10, 0x93);
        t.ctx.gpr[7] = 0xaaaa_aaaa;
        t.write_u16(0x6000, 0x1234);
        t.write_u16(0x6002, 0x10);
        assert_eq!(
            t.run(&[0x66, 0xc4, 0x3d, 0x00, 0x60, 0x00, 0x00]),
            Outcome::Continue
        );
        assert_eq!(t.ctx.gpr[7], 0xaaaa_1234);
        // lss esp, [ebx]: a bad selector leaves esp alone.
        t.ctx.gpr[3] = 0x5000;
        t.write_u32(0x5000, 0x9000);
        t.write_u16(0x5004, 0x58);
        assert_eq!(t.run(&[0x0f, 0xb2, 0x23]), gp(0x58));
        assert_eq!(t.esp(), STACK_TOP);
        t.write_u16(0x5004, 0x10);
        assert_eq!(t.run(&[0x0f, 0xb2, 0x23]), Outcome::Continue);
        assert_eq!(t.esp(), 0x9000);
    }

    #[test]
    fn far_call_and_ret_round_trip() {
        let mut t = gdt_setup();
        // call 0x78:0x1000 (code based at 2 MiB): bt86 runs flat code only, so at
        // CPL 0 the VM stops before anything changes.
        let based = [0x9a, 0x00, 0x10, 0x00, 0x00, 0x78, 0x00];
        assert!(matches!(t.run(&based), Outcome::Stop(super::super::Stop::Unsupported { .. })));
        assert_eq!((t.cpu.seg[sreg::CS], t.esp()), (Segment::flat(KCODE, 0x9b), STACK_TOP));
        // call 0x40:0x1000 (readable code)
        let call = [0x9a, 0x00, 0x10, 0x00, 0x00, 0x40, 0x00];
        assert_eq!(t.run(&call), Outcome::Jump);
        assert_eq!(t.ctx.eip, 0x1000);
        assert_eq!(t.cpu.seg[sreg::CS].selector, 0x40);
        assert_eq!(t.esp(), STACK_TOP - 8);
        assert_eq!(t.read_u32(STACK_TOP - 8), EIP + 7);
        assert_eq!(t.read_u16(STACK_TOP - 4), KCODE);
        assert_eq!(t.read_u8(GDT_BASE + 8 * 8 + 5), 0x9b, "accessed bit set");
        // retf 8
        t.ctx.eip = 0x1000;
        assert_eq!(t.run(&[0xca, 0x08, 0x00]), Outcome::Jump);
        assert_eq!(t.ctx.eip, EIP + 7);
        assert_eq!(t.cpu.seg[sreg::CS], Segment::flat(KCODE, 0x9b));
        assert_eq!(t.esp(), STACK_TOP + 8);
    }

    #[test]
    fn far_call16_and_memory_forms() {
        let mut t = gdt_setup();
        // call far word [ebx]: m16:16
        t.ctx.gpr[3] = 0x5000;
        t.write_u16(0x5000, 0x2000);
        t.write_u16(0x5002, 0x40);
        assert_eq!(t.run(&[0x66, 0xff, 0x1b]), Outcome::Jump);
        assert_eq!(t.ctx.eip, 0x2000);
        assert_eq!(t.esp(), STACK_TOP - 4);
        assert_eq!(t.read_u16(STACK_TOP - 2), KCODE);
        assert_eq!(t.read_u16(STACK_TOP - 4), (EIP + 3) as u16);
        // retfw
        assert_eq!(t.run(&[0x66, 0xcb]), Outcome::Jump);
        assert_eq!(t.ctx.eip, (EIP + 3) & 0xffff);
        assert_eq!(t.esp(), STACK_TOP);
        // jmp far dword [ebx]: m16:32
        t.ctx.eip = EIP;
        t.write_u32(0x5000, 0x12345);
        t.write_u16(0x5004, 0x08);
        assert_eq!(t.run(&[0xff, 0x2b]), Outcome::Jump);
        assert_eq!(t.ctx.eip, 0x12345);
        assert_eq!(t.esp(), STACK_TOP);
    }

    #[test]
    fn far_transfer_checks() {
        let mut t = gdt_setup();
        let jmp = |sel: u16| -> Vec<u8> {
            let mut v = vec![0xea, 0x00, 0x10, 0x00, 0x00];
            v.extend_from_slice(&sel.to_le_bytes());
            v
        };
        let before = (t.cpu.seg, t.ctx.gpr);
        assert_eq!(t.run(&jmp(0)), gp(0));
        assert_eq!(t.run(&jmp(0x10)), gp(0x10), "data segment");
        assert_eq!(t.run(&jmp(0x68)), gp(0x68), "DPL 2 non-conforming");
        assert_eq!(t.run(&jmp(0x0b)), gp(0x08), "RPL 3 > CPL 0");
        assert_eq!(t.run(&jmp(0x400)), gp(0x400), "beyond the GDT");
        assert!(
            matches!(
                t.run(&jmp(0x50)),
                Outcome::Stop(super::super::Stop::Unsupported { .. })
            ),
            "TSS"
        );
        assert!(
            matches!(
                t.run(&jmp(0x70)),
                Outcome::Stop(super::super::Stop::Unsupported { .. })
            ),
            "16-bit"
        );
        t.set_gdt(16, desc(0, 0xfffff, 0x1a, 0xc));
        assert_eq!(t.run(&jmp(0x80)), exc(11, Some(0x80)), "not present");
        t.set_gdt(17, desc(0, 0xf, 0x9a, 0x4));
        assert_eq!(t.run(&jmp(0x88)), gp(0), "offset beyond the limit");
        assert_eq!((t.cpu.seg, t.ctx.gpr), before);
        // Conforming code at a lower DPL: allowed, CPL stays (RPL = CPL).
        t.set_cpl(3);
        assert_eq!(t.run(&jmp(0x60)), Outcome::Jump);
        assert_eq!(t.cpu.seg[sreg::CS].selector, 0x63);
        assert_eq!(t.cpu.cpl(), 3);
        // A far call whose stack push faults changes nothing.
        t.set_cpl(0);
        t.cpu.seg[sreg::SS].limit = 0x7fff;
        t.ctx.gpr[4] = 2;
        let call = [0x9a, 0x00, 0x10, 0x00, 0x00, 0x08, 0x00];
        assert_eq!(t.run(&call), exc(12, Some(0)));
        assert_eq!(t.esp(), 2);
        assert_eq!(t.cpu.seg[sreg::CS], Segment::flat(KCODE, 0x9b));
    }

    #[test]
    fn retf_checks() {
        let mut t = gdt_setup();
        let retf = [0xcb];
        t.write_u32(STACK_TOP, 0x1000);
        t.write_u32(STACK_TOP + 4, 0x1b);
        t.set_cpl(0);
        // Return to an outer level with a null SS on the stack: #GP(0).
        t.set_gdt(3, desc(0, 0xfffff, 0xfb, 0xc));
        assert_eq!(t.run(&retf), gp(0));
        t.write_u32(STACK_TOP + 4, 0x10);
        assert_eq!(t.run(&retf), gp(0x10));
        t.write_u32(STACK_TOP + 4, 0);
        assert_eq!(t.run(&retf), gp(0));
        // At CPL 3, returning to ring 0 is #GP(sel).
        t.set_cpl(3);
        t.write_u32(STACK_TOP + 4, 0x08);
        assert_eq!(t.run(&retf), gp(0x08));
        assert_eq!(t.esp(), STACK_TOP);
    }

    /// Translated code loads known flat selectors into DS and ES without the
    /// VMM (mov, push/pop swaps), the VMM takes the caches back after the run,
    /// and a load whose GDT descriptor has changed since goes to the VMM again.
    #[test]
    fn known_flat_selectors_load_inline() {
        // lgdt 0x3000; mov $0x18,%ax; mov %ax,%ds; mov $0x20,%ax; mov %ax,%es
        // mov $0x20,%ax; mov %ax,%ds; mov $0x18,%ax; mov %ax,%es        (inline)
        // mov $100,%ecx; 1: push %ds; push %es; pop %ds; pop %es; loop 1b
        // mov %ds,%ebx; movl $0x1000ffff,0x3028 (entry 4 gets base 0x1000)
        // mov $0x20,%ax; mov %ax,%ds (to the VMM); mov 0,%esi (ds:0 = 0x1000)
        // mov $0xf4,%dx; mov $5,%eax; out %eax,(%dx)
        let code = [
            0x0f, 0x01, 0x15, 0x00, 0x30, 0x00, 0x00, 0x66, 0xb8, 0x18, 0x00, 0x8e, 0xd8, 0x66, 0xb8, 0x20, 0x00, 0x8e,
            0xc0, 0x66, 0xb8, 0x20, 0x00, 0x8e, 0xd8, 0x66, 0xb8, 0x18, 0x00, 0x8e, 0xc0, 0xb9, 0x64, 0x00, 0x00, 0x00,
            0x1e, 0x06, 0x1f, 0x07, 0xe2, 0xfa, 0x8c, 0xdb, 0xc7, 0x05, 0x28, 0x30, 0x00, 0x00, 0xff, 0xff, 0x00, 0x10,
            0x66, 0xb8, 0x20, 0x00, 0x8e, 0xd8, 0x8b, 0x35, 0x00, 0x00, 0x00, 0x00, 0x66, 0xba, 0xf4, 0x00, 0xb8, 0x05,
            0x00, 0x00, 0x00, 0xef,
        ];
        let flat = |typ: u32| [0x0000_ffffu32, 0x00cf_0000 | typ << 8];
        let gdt: Vec<u32> = [[0, 0], [0, 0], flat(0x9b), flat(0x93), flat(0x93)].concat();
        let mut vm = crate::vm::Vm::new(crate::vm::VmConfig::new(2, Box::new(std::io::sink()))).unwrap();
        vm.ram.write(0x1000, &code).unwrap();
        vm.ram.write(0x3000, &[0x27, 0x00, 0x08, 0x30, 0x00, 0x00]).unwrap();
        vm.ram.write(0x3008, &gdt.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        vm.set_flat_state(0x1000, [0, 0, 0, 0, 0x8000, 0, 0, 0], 0);
        assert_eq!(vm.run().unwrap(), crate::vm::RunOutcome::GuestExit(5));
        let regs = vm.registers().0;
        assert_eq!(regs[3], 0x20, "mov %ds,%ebx after an even number of swaps");
        assert_eq!(regs[6], u32::from_le_bytes(code[..4].try_into().unwrap()), "ds:0 reads at the new base");
        assert_eq!(vm.cpu.seg[sreg::ES], Segment { selector: 0x18, base: 0, limit: u32::MAX, attrs: 0xc093 });
        assert_eq!(vm.cpu.seg[sreg::DS].base, 0x1000, "the changed descriptor was loaded");
        let calls = |m| vm.stats.callouts.get(&m).copied().unwrap_or(0);
        assert_eq!(calls(Mnemonic::Mov), 3, "two first loads and the changed descriptor");
        assert_eq!(calls(Mnemonic::Push) + calls(Mnemonic::Pop), 0);
    }
}
