//! Registers, effective addresses, segment checks and guest memory accesses for the
//! handlers.

use super::{Fault, Machine};
use crate::cpu::{sreg, Cpu};
use bt86_translator::abi::VcpuCtx;
use iced_x86::{Instruction, OpAccess, OpKind, Register};

/// The segment-register index (`cpu::sreg`) of `r`.
pub(crate) fn sreg_index(r: Register) -> Option<usize> {
    Some(match r {
        Register::ES => sreg::ES,
        Register::CS => sreg::CS,
        Register::SS => sreg::SS,
        Register::DS => sreg::DS,
        Register::FS => sreg::FS,
        Register::GS => sreg::GS,
        _ => return None,
    })
}

/// The x86 number of the 32-bit register that holds `r` (al, ah, ax, eax → 0).
pub(crate) fn gpr_index(r: Register) -> Option<usize> {
    Some(match r.full_register32() {
        Register::EAX => 0,
        Register::ECX => 1,
        Register::EDX => 2,
        Register::EBX => 3,
        Register::ESP => 4,
        Register::EBP => 5,
        Register::ESI => 6,
        Register::EDI => 7,
        _ => return None,
    })
}

fn is_high_byte(r: Register) -> bool {
    matches!(r, Register::AH | Register::CH | Register::DH | Register::BH)
}

/// The value of general register `r` (8, 16 or 32 bits, zero-extended); 0 for
/// anything else.
pub(crate) fn read_reg(ctx: &VcpuCtx, r: Register) -> u32 {
    let Some(v) = gpr_index(r).and_then(|i| ctx.gpr.get(i).copied()) else {
        return 0;
    };
    match r.size() {
        1 if is_high_byte(r) => (v >> 8) & 0xff,
        1 => v & 0xff,
        2 => v & 0xffff,
        _ => v,
    }
}

/// Writes general register `r`: 8- and 16-bit registers keep the other bits of their
/// 32-bit register, as on hardware. Anything else is ignored.
pub(crate) fn write_reg(ctx: &mut VcpuCtx, r: Register, v: u32) {
    let size = r.size();
    let high = is_high_byte(r);
    let Some(slot) = gpr_index(r).and_then(|i| ctx.gpr.get_mut(i)) else {
        return;
    };
    *slot = match size {
        1 if high => (*slot & !0xff00) | ((v & 0xff) << 8),
        1 => (*slot & !0xff) | (v & 0xff),
        2 => (*slot & !0xffff) | (v & 0xffff),
        _ => v,
    };
}

/// A memory operand: segment register index and offset (effective address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MemRef {
    pub seg: usize,
    pub offset: u32,
}

/// The memory operand of `ins` (32- or 16-bit addressing), or `None` if it has none.
pub(crate) fn effective(ctx: &VcpuCtx, ins: &Instruction) -> Option<MemRef> {
    if !(0..ins.op_count()).any(|op| ins.op_kind(op) == OpKind::Memory) {
        return None;
    }
    let seg = sreg_index(ins.memory_segment())?;
    let (base, index) = (ins.memory_base(), ins.memory_index());
    let a16 = base.size() == 2
        || index.size() == 2
        || (base == Register::None && index == Register::None && ins.memory_displ_size() == 2);
    let mut ea = ins.memory_displacement32();
    if base != Register::None {
        ea = ea.wrapping_add(read_reg(ctx, base));
    }
    if index != Register::None {
        ea = ea.wrapping_add(read_reg(ctx, index).wrapping_mul(ins.memory_index_scale()));
    }
    if a16 {
        ea &= 0xffff;
    }
    Some(MemRef { seg, offset: ea })
}

/// What an access does, for the segment type checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
}

/// Attribute bits of `Segment::attrs`.
pub(crate) mod attr {
    /// Readable (code) / writable (data).
    pub const RW: u16 = 1 << 1;
    /// Conforming (code) / expand-down (data).
    pub const CE: u16 = 1 << 2;
    pub const CODE: u16 = 1 << 3;
    pub const S: u16 = 1 << 4;
    pub const P: u16 = 1 << 7;
    pub const DB: u16 = 1 << 14;
}

/// The linear address of `size` bytes at `seg:offset`, after the checks that are
/// cheap: type (no writes to code or read-only data, no reads of execute-only code)
/// and limit (expand-up and expand-down). An access through an unusable (null,
/// not present) segment is #GP(0), as in translated code. Faults are #GP(0), or
/// #SS(0) for the stack segment.
pub(crate) fn linear(
    cpu: &Cpu,
    seg: usize,
    offset: u32,
    size: u32,
    access: Access,
) -> Result<u32, Fault> {
    let Some(s) = cpu.seg.get(seg) else {
        return Err(Fault::gp0());
    };
    let fault = || {
        if seg == sreg::SS {
            Fault::ss(0)
        } else {
            Fault::gp0()
        }
    };
    let a = s.attrs;
    if a & attr::P == 0 {
        return Err(fault());
    }
    if a & attr::S == 0 {
        return Ok(s.base.wrapping_add(offset));
    }
    let last = u64::from(offset) + u64::from(size.max(1)) - 1;
    if a & attr::CODE != 0 {
        if access == Access::Write || a & attr::RW == 0 {
            return Err(fault());
        }
    } else if access == Access::Write && a & attr::RW == 0 {
        return Err(fault());
    }
    let ok = if a & attr::CODE == 0 && a & attr::CE != 0 {
        let upper: u64 = if a & attr::DB != 0 {
            0xffff_ffff
        } else {
            0xffff
        };
        offset > s.limit && last <= upper
    } else {
        last <= u64::from(s.limit)
    };
    if !ok {
        return Err(fault());
    }
    Ok(s.base.wrapping_add(offset))
}

/// Reads guest memory at a linear address with the current privilege (a user
/// access at CPL 3); an access that runs past 4 GiB wraps.
pub(crate) fn read_linear(m: &mut Machine<'_>, linear: u32, buf: &mut [u8]) -> Result<(), Fault> {
    let user = m.cpu.cpl() == 3;
    read_linear_as(m, linear, buf, user)
}

/// Reads guest memory as a user (`user`) or supervisor access.
pub(crate) fn read_linear_as(m: &mut Machine<'_>, linear: u32, buf: &mut [u8], user: bool) -> Result<(), Fault> {
    let first = first_part(linear, buf.len());
    let (a, b) = buf.split_at_mut(first);
    m.mem.read(linear, a, user)?;
    if !b.is_empty() {
        m.mem.read(0, b, user)?;
    }
    Ok(())
}

/// Writes guest memory at a linear address with the current privilege; an
/// access that runs past 4 GiB wraps.
pub(crate) fn write_linear(m: &mut Machine<'_>, linear: u32, data: &[u8]) -> Result<(), Fault> {
    let user = m.cpu.cpl() == 3;
    write_linear_as(m, linear, data, user)
}

/// Writes guest memory as a user (`user`) or supervisor access.
pub(crate) fn write_linear_as(m: &mut Machine<'_>, linear: u32, data: &[u8], user: bool) -> Result<(), Fault> {
    let first = first_part(linear, data.len());
    let (a, b) = data.split_at(first);
    m.mem.write(linear, a, user)?;
    if !b.is_empty() {
        m.mem.write(0, b, user)?;
    }
    Ok(())
}

/// Reads `size` (1, 2 or 4) bytes of a system structure (IDT, TSS) at linear
/// `addr`: a supervisor access whatever the CPL.
pub(crate) fn read_sys(m: &mut Machine<'_>, addr: u32, size: u32) -> Result<u32, Fault> {
    let mut b = [0u8; 4];
    let n = size.clamp(1, 4) as usize;
    read_linear_as(m, addr, &mut b[..n], false)?;
    Ok(u32::from_le_bytes(b))
}

/// How many of `len` bytes at `linear` lie below 4 GiB.
fn first_part(linear: u32, len: usize) -> usize {
    let room = (1u64 << 32) - u64::from(linear);
    usize::try_from(room).map_or(len, |room| room.min(len))
}

/// Reads `size` (1, 2 or 4) bytes at linear `addr`, zero-extended.
pub(crate) fn read_lin(m: &mut Machine<'_>, addr: u32, size: u32) -> Result<u32, Fault> {
    let mut b = [0u8; 4];
    let n = size.clamp(1, 4) as usize;
    read_linear(m, addr, &mut b[..n])?;
    Ok(u32::from_le_bytes(b))
}

/// Reads `N` consecutive `size`-byte (2 or 4) words at linear `addr`, zero-
/// extended, in one access when they lie in one page (word by word otherwise,
/// so a fault names the page the CPU's would).
pub(crate) fn read_lin_words<const N: usize>(m: &mut Machine<'_>, addr: u32, size: u32) -> Result<[u32; N], Fault> {
    let size = size.clamp(1, 4);
    let mut words = [0u32; N];
    let len = N * size as usize;
    if N <= 8 && (addr & 0xfff) as usize + len <= 0x1000 {
        let mut b = [0u8; 32];
        read_linear(m, addr, &mut b[..len])?;
        for (w, chunk) in words.iter_mut().zip(b[..len].chunks_exact(size as usize)) {
            let mut v = [0u8; 4];
            v[..chunk.len()].copy_from_slice(chunk);
            *w = u32::from_le_bytes(v);
        }
        return Ok(words);
    }
    for (k, w) in words.iter_mut().enumerate() {
        *w = read_lin(m, addr.wrapping_add(size * k as u32), size)?;
    }
    Ok(words)
}

/// Writes the low `size` (1, 2 or 4) bytes of `v` at linear `addr`.
pub(crate) fn write_lin(m: &mut Machine<'_>, addr: u32, size: u32, v: u32) -> Result<(), Fault> {
    let n = size.clamp(1, 4) as usize;
    write_linear(m, addr, &v.to_le_bytes()[..n])
}

/// Reads `size` bytes at `seg:offset`, with the segment checks.
pub(crate) fn read_mem(
    m: &mut Machine<'_>,
    seg: usize,
    offset: u32,
    size: u32,
) -> Result<u32, Fault> {
    let addr = linear(m.cpu, seg, offset, size, Access::Read)?;
    read_lin(m, addr, size)
}

/// The memory operand of the instruction, or #UD if it has none (register forms of
/// memory-only instructions are invalid encodings).
pub(crate) fn mem_operand(m: &Machine<'_>, ins: &Instruction) -> Result<MemRef, Fault> {
    effective(m.ctx, ins).ok_or_else(Fault::ud)
}

/// Reads operand `op`: a general register (its own width, zero-extended, then cut to
/// `size` bytes) or `size` bytes of memory.
pub(crate) fn read_op(
    m: &mut Machine<'_>,
    ins: &Instruction,
    op: u32,
    size: u32,
) -> Result<u32, Fault> {
    let mask = if size >= 4 {
        u32::MAX
    } else {
        (1u32 << (8 * size)) - 1
    };
    match ins.op_kind(op) {
        OpKind::Register => Ok(read_reg(m.ctx, ins.op_register(op)) & mask),
        OpKind::Memory => {
            let r = mem_operand(m, ins)?;
            read_mem(m, r.seg, r.offset, size)
        }
        _ => Err(Fault::ud()),
    }
}

/// Where operand `op` of an instruction lives, resolved before anything is written
/// (so a later fault cannot leave a half-done instruction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dest {
    Reg(Register),
    /// A checked linear address.
    Mem(u32),
}

/// Resolves destination operand `op` for a write of `size` bytes (memory: segment
/// checks done now).
pub(crate) fn dest(m: &Machine<'_>, ins: &Instruction, op: u32, size: u32) -> Result<Dest, Fault> {
    match ins.op_kind(op) {
        OpKind::Register => Ok(Dest::Reg(ins.op_register(op))),
        OpKind::Memory => {
            let r = mem_operand(m, ins)?;
            Ok(Dest::Mem(linear(
                m.cpu,
                r.seg,
                r.offset,
                size,
                Access::Write,
            )?))
        }
        _ => Err(Fault::ud()),
    }
}

/// Writes `v` to a resolved destination: a register takes its own width (so a
/// 32-bit register receives `v` whole), memory takes `size` bytes.
pub(crate) fn write_dest(m: &mut Machine<'_>, d: Dest, size: u32, v: u32) -> Result<(), Fault> {
    match d {
        Dest::Reg(r) => {
            write_reg(m.ctx, r, v);
            Ok(())
        }
        Dest::Mem(addr) => write_lin(m, addr, size, v),
    }
}

/// The segment checks (limit, expand-down, type) of the memory accesses `ins`
/// makes with the registers now, for the segments `checked` names (bit i: es, cs,
/// ss, ds, fs, gs): #GP(0), or #SS(0) through SS. A repeated string instruction
/// is checked at its first and last element. Nothing is accessed.
pub(crate) fn check_accesses(m: &Machine<'_>, ins: &Instruction, checked: u8) -> Result<(), Fault> {
    let mut factory = iced_x86::InstructionInfoFactory::new();
    let info = factory.info(ins);
    let reps = if ins.is_string_instruction() && (ins.has_rep_prefix() || ins.has_repne_prefix()) {
        let ecx = m.ctx.gpr[1];
        let addr16 = (0..ins.op_count())
            .any(|i| matches!(ins.op_kind(i), OpKind::MemorySegSI | OpKind::MemorySegDI | OpKind::MemoryESDI));
        Some(if addr16 { ecx & 0xffff } else { ecx })
    } else {
        None
    };
    if reps == Some(0) {
        return Ok(());
    }
    let down = m.ctx.rflags & u64::from(crate::cpu::eflags::DF) != 0;
    for used in info.used_memory() {
        let Some(seg) = sreg_index(used.segment()) else { continue };
        if checked & (1 << seg) == 0 {
            continue;
        }
        let access = match used.access() {
            OpAccess::Read | OpAccess::CondRead => Access::Read,
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite => Access::Write,
            _ => continue,
        };
        let Some(first) = used.virtual_address(0, |r, _, _| {
            Some(if r.is_segment_register() { 0 } else { u64::from(read_reg(m.ctx, r)) })
        }) else {
            continue;
        };
        let size = match reps {
            Some(_) => ins.memory_size().size(),
            None => used.memory_size().size(),
        };
        let size = u32::try_from(size.max(1)).unwrap_or(u32::MAX);
        #[allow(clippy::cast_possible_truncation)]
        let first = first as u32;
        linear(m.cpu, seg, first, size, access)?;
        if let Some(n) = reps {
            let span = (n - 1).wrapping_mul(size);
            let last = if down { first.wrapping_sub(span) } else { first.wrapping_add(span) };
            linear(m.cpu, seg, last, size, access)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::cpu::Segment;
    use iced_x86::{Decoder, DecoderOptions};

    fn decode(bytes: &[u8]) -> Instruction {
        Decoder::with_ip(32, bytes, 0, DecoderOptions::NONE).decode()
    }

    #[test]
    fn partial_registers() {
        let mut ctx = VcpuCtx::default();
        ctx.gpr[0] = 0x1122_3344;
        assert_eq!(read_reg(&ctx, Register::AH), 0x33);
        assert_eq!(read_reg(&ctx, Register::AL), 0x44);
        assert_eq!(read_reg(&ctx, Register::AX), 0x3344);
        write_reg(&mut ctx, Register::AH, 0xaa);
        assert_eq!(ctx.gpr[0], 0x1122_aa44);
        write_reg(&mut ctx, Register::AX, 0x1_beef);
        assert_eq!(ctx.gpr[0], 0x1122_beef);
        write_reg(&mut ctx, Register::BH, 0x12);
        assert_eq!(ctx.gpr[3], 0x1200);
        write_reg(&mut ctx, Register::ESP, 5);
        assert_eq!(ctx.gpr[4], 5);
        write_reg(&mut ctx, Register::CR0, 5);
        assert_eq!(read_reg(&ctx, Register::DS), 0);
    }

    #[test]
    fn effective_addresses() {
        let mut ctx = VcpuCtx::default();
        ctx.gpr = [0x100, 0x8, 0, 0x1000, 0x7000, 0xfff0, 0x20, 0x30];
        // lgdt [ebx+ecx*4+0x10]
        let r = effective(&ctx, &decode(&[0x0f, 0x01, 0x54, 0x8b, 0x10])).unwrap();
        assert_eq!(
            r,
            MemRef {
                seg: sreg::DS,
                offset: 0x1000 + 0x20 + 0x10
            }
        );
        // lgdt [ebp-8]: ss
        let r = effective(&ctx, &decode(&[0x0f, 0x01, 0x55, 0xf8])).unwrap();
        assert_eq!(
            r,
            MemRef {
                seg: sreg::SS,
                offset: 0xffe8
            }
        );
        // lgdt fs:[eax-0x200] wraps
        let r = effective(
            &ctx,
            &decode(&[0x64, 0x0f, 0x01, 0x90, 0x00, 0xfe, 0xff, 0xff]),
        )
        .unwrap();
        assert_eq!(
            r,
            MemRef {
                seg: sreg::FS,
                offset: 0xffff_ff00
            }
        );
        // 16-bit addressing: lgdt [bp+di+0x20] wraps at 64 KiB, default ss.
        let r = effective(&ctx, &decode(&[0x67, 0x0f, 0x01, 0x53, 0x20])).unwrap();
        assert_eq!(
            r,
            MemRef {
                seg: sreg::SS,
                offset: (0xfff0 + 0x30 + 0x20) & 0xffff
            }
        );
        // 16-bit absolute: lgdt [0x1234]
        let r = effective(&ctx, &decode(&[0x67, 0x0f, 0x01, 0x16, 0x34, 0x12])).unwrap();
        assert_eq!(
            r,
            MemRef {
                seg: sreg::DS,
                offset: 0x1234
            }
        );
        // 16-bit negative displacement: lgdt [si-2]
        let r = effective(&ctx, &decode(&[0x67, 0x0f, 0x01, 0x54, 0xfe])).unwrap();
        assert_eq!(
            r,
            MemRef {
                seg: sreg::DS,
                offset: 0x1e
            }
        );
        // 32-bit absolute
        let r = effective(&ctx, &decode(&[0x0f, 0x01, 0x15, 0x78, 0x56, 0x34, 0x12])).unwrap();
        assert_eq!(
            r,
            MemRef {
                seg: sreg::DS,
                offset: 0x1234_5678
            }
        );
        // No memory operand.
        assert_eq!(effective(&ctx, &decode(&[0x0f, 0x00, 0xd0])), None);
    }

    #[test]
    fn segment_checks() {
        let t = TestMachine::new();
        let mut cpu = t.cpu.clone();
        assert_eq!(
            linear(&cpu, sreg::DS, 0xffff_fffc, 4, Access::Write),
            Ok(0xffff_fffc)
        );
        assert_eq!(
            linear(&cpu, sreg::DS, 0xffff_fffd, 4, Access::Read),
            Err(Fault::gp0())
        );
        assert_eq!(
            linear(&cpu, sreg::CS, 0x10, 4, Access::Write),
            Err(Fault::gp0())
        );
        assert_eq!(linear(&cpu, sreg::CS, 0x10, 4, Access::Read), Ok(0x10));
        cpu.seg[sreg::SS] = Segment {
            selector: 0x10,
            base: 0x1000,
            limit: 0xfff,
            attrs: 0x4093,
        };
        assert_eq!(linear(&cpu, sreg::SS, 0xffc, 4, Access::Read), Ok(0x1ffc));
        assert_eq!(
            linear(&cpu, sreg::SS, 0xffd, 4, Access::Read),
            Err(Fault::ss(0))
        );
        // Expand-down: valid above the limit.
        cpu.seg[sreg::SS].attrs = 0x4097;
        assert_eq!(
            linear(&cpu, sreg::SS, 0xffc, 4, Access::Read),
            Err(Fault::ss(0))
        );
        assert_eq!(linear(&cpu, sreg::SS, 0x1000, 4, Access::Read), Ok(0x2000));
        // Read-only data.
        cpu.seg[sreg::ES].attrs = 0xc091;
        assert_eq!(
            linear(&cpu, sreg::ES, 0, 1, Access::Write),
            Err(Fault::gp0())
        );
        // An unusable (null) segment is #GP(0).
        cpu.seg[sreg::GS] = Segment::default();
        assert_eq!(linear(&cpu, sreg::GS, 5, 4, Access::Write), Err(Fault::gp0()));
    }
}

