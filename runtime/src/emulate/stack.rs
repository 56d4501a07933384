//! The guest stack at ss:esp, with a 16-bit stack pointer when SS.B is clear.
//!
//! Handlers that push or pop several values check and write (or read) every slot
//! first and commit esp last, so a fault leaves esp as it was.

use super::addressing::{attr, dest, linear, read_lin, read_op, write_dest, write_lin, Access};
use super::{EmuResult, Fault, Machine, Outcome};
use crate::cpu::{sreg, Cpu};
use bt86_translator::CalloutSite;
use iced_x86::{Code, Mnemonic, OpKind};

/// Whether the stack pointer is 32 bits wide (SS.B).
fn stack32(cpu: &Cpu) -> bool {
    cpu.seg[sreg::SS].attrs & attr::DB != 0
}

/// `esp` moved by `delta` bytes (two's complement), wrapping within sp for a 16-bit
/// stack.
pub(crate) fn esp_plus(cpu: &Cpu, esp: u32, delta: u32) -> u32 {
    if stack32(cpu) {
        esp.wrapping_add(delta)
    } else {
        (esp & 0xffff_0000) | (esp.wrapping_add(delta) & 0xffff)
    }
}

/// The offset in SS that `esp` addresses.
fn sp_offset(cpu: &Cpu, esp: u32) -> u32 {
    if stack32(cpu) {
        esp
    } else {
        esp & 0xffff
    }
}

/// Reads `size` bytes at ss:(`esp` + `offset`) without moving esp.
pub(crate) fn read_at(m: &mut Machine<'_>, esp: u32, offset: u32, size: u32) -> Result<u32, Fault> {
    let at = sp_offset(m.cpu, esp_plus(m.cpu, esp, offset));
    let addr = linear(m.cpu, sreg::SS, at, size, Access::Read)?;
    read_lin(m, addr, size)
}

/// Writes the low `bytes` bytes of `v` at ss:(`esp` + `offset`) without moving esp.
pub(crate) fn write_at(
    m: &mut Machine<'_>,
    esp: u32,
    offset: u32,
    bytes: u32,
    v: u32,
) -> Result<(), Fault> {
    let at = sp_offset(m.cpu, esp_plus(m.cpu, esp, offset));
    let addr = linear(m.cpu, sreg::SS, at, bytes, Access::Write)?;
    write_lin(m, addr, bytes, v)
}

/// Pushes a `slot`-byte value of which the low `bytes` bytes are written (push of a
/// segment register with 32-bit operand size writes 2 bytes into a 4-byte slot).
pub(crate) fn push_partial(
    m: &mut Machine<'_>,
    slot: u32,
    bytes: u32,
    v: u32,
) -> Result<(), Fault> {
    let esp = esp_plus(m.cpu, m.ctx.gpr[4], slot.wrapping_neg());
    write_at(m, esp, 0, bytes, v)?;
    m.ctx.gpr[4] = esp;
    Ok(())
}

/// Pushes `size` (2 or 4) bytes.
pub(crate) fn push(m: &mut Machine<'_>, size: u32, v: u32) -> Result<(), Fault> {
    push_partial(m, size, size, v)
}

/// Pops `size` (2 or 4) bytes.
pub(crate) fn pop(m: &mut Machine<'_>, size: u32) -> Result<u32, Fault> {
    let esp = m.ctx.gpr[4];
    let v = read_at(m, esp, 0, size)?;
    m.ctx.gpr[4] = esp_plus(m.cpu, esp, size);
    Ok(v)
}

/// The implicit stack instructions (push, pop, pusha, popa, enter, leave, near call
/// and ret) while SS has a base or is a 16-bit stack: translated code addresses the
/// stack as flat 32-bit, so the translator leaves them to the VMM then.
pub(crate) fn emulate(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    let ins = &site.ins;
    let next = super::next_eip(site);
    // Operand size: 2 with a 66 prefix, else 4 (iced says through the stack delta).
    let size = if ins.code().op_code().operand_size() == 16 { 2 } else { 4 };
    match ins.mnemonic() {
        Mnemonic::Push => {
            let v = match ins.op0_kind() {
                OpKind::Register | OpKind::Memory => read_op(m, ins, 0, size)?,
                _ => ins.immediate(0) as u32,
            };
            push(m, size, v)?;
        }
        Mnemonic::Pop => {
            // The destination's address is computed with esp already incremented.
            let old = m.ctx.gpr[4];
            let v = read_at(m, old, 0, size)?;
            m.ctx.gpr[4] = esp_plus(m.cpu, old, size);
            let stored = dest(m, ins, 0, size).and_then(|d| write_dest(m, d, size, v));
            if let Err(f) = stored {
                m.ctx.gpr[4] = old;
                return Err(f);
            }
        }
        Mnemonic::Pusha | Mnemonic::Pushad => {
            let esp = m.ctx.gpr[4];
            for (k, &v) in m.ctx.gpr.clone().iter().enumerate() {
                let slot = (k as u32 + 1) * size;
                write_at(m, esp, slot.wrapping_neg(), size, v)?;
            }
            m.ctx.gpr[4] = esp_plus(m.cpu, esp, (8 * size).wrapping_neg());
        }
        Mnemonic::Popa | Mnemonic::Popad => {
            let esp = m.ctx.gpr[4];
            let mut vals = [0u32; 8];
            for (k, v) in vals.iter_mut().enumerate() {
                *v = read_at(m, esp, (7 - k as u32) * size, size)?;
            }
            for (k, v) in vals.into_iter().enumerate() {
                if k != 4 {
                    let keep = if size == 2 { m.ctx.gpr[k] & 0xffff_0000 } else { 0 };
                    m.ctx.gpr[k] = keep | v;
                }
            }
            m.ctx.gpr[4] = esp_plus(m.cpu, esp, 8 * size);
        }
        Mnemonic::Leave => {
            // esp = ebp (sp = bp on a 16-bit stack), then pop ebp.
            let ebp = m.ctx.gpr[5];
            let esp = if stack32(m.cpu) { ebp } else { (m.ctx.gpr[4] & 0xffff_0000) | (ebp & 0xffff) };
            let v = read_at(m, esp, 0, size)?;
            m.ctx.gpr[4] = esp_plus(m.cpu, esp, size);
            m.ctx.gpr[5] = if size == 2 { (ebp & 0xffff_0000) | v } else { v };
        }
        Mnemonic::Enter => {
            let (alloc, level) = (u32::from(ins.immediate16()), ins.immediate8_2nd() as u32 % 32);
            let esp = m.ctx.gpr[4];
            let mut at = esp_plus(m.cpu, esp, size.wrapping_neg());
            write_at(m, at, 0, size, m.ctx.gpr[5])?;
            let frame = at;
            let mut ebp = m.ctx.gpr[5];
            for _ in 1..level.max(1) {
                ebp = esp_plus(m.cpu, ebp, size.wrapping_neg());
                let v = read_at(m, ebp, 0, size)?;
                at = esp_plus(m.cpu, at, size.wrapping_neg());
                write_at(m, at, 0, size, v)?;
            }
            if level > 0 {
                at = esp_plus(m.cpu, at, size.wrapping_neg());
                write_at(m, at, 0, size, frame)?;
            }
            m.ctx.gpr[5] = if size == 2 { (m.ctx.gpr[5] & 0xffff_0000) | (frame & 0xffff) } else { frame };
            m.ctx.gpr[4] = esp_plus(m.cpu, at, alloc.wrapping_neg());
        }
        Mnemonic::Call => {
            let target = match ins.op0_kind() {
                OpKind::Register | OpKind::Memory => read_op(m, ins, 0, size)?,
                _ => ins.near_branch_target() as u32,
            };
            push(m, size, if size == 2 { next & 0xffff } else { next })?;
            m.ctx.eip = target;
            return Ok(Outcome::Jump);
        }
        Mnemonic::Ret => {
            let esp = m.ctx.gpr[4];
            let target = read_at(m, esp, 0, size)?;
            let release = if matches!(ins.code(), Code::Retnd_imm16 | Code::Retnw_imm16) { u32::from(ins.immediate16()) } else { 0 };
            m.ctx.gpr[4] = esp_plus(m.cpu, esp, size.wrapping_add(release));
            m.ctx.eip = target;
            return Ok(Outcome::Jump);
        }
        _ => return Err(Fault::unsupported(format!("{:?} as an implicit stack instruction", ins.code()))),
    }
    Ok(Outcome::Continue)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::Machine;
    use super::*;

    #[test]
    fn push_pop_32_and_16_bit_stack() {
        let mut t = TestMachine::new();
        {
            let mut m = Machine {
                cpu: &mut t.cpu,
                ctx: &mut t.ctx,
                mem: &mut t.mem,
                io: &mut t.io,
            };
            push(&mut m, 4, 0xdead_beef).unwrap();
            push_partial(&mut m, 4, 2, 0x1_2345).unwrap();
        }
        assert_eq!(t.esp(), STACK_TOP - 8);
        assert_eq!(t.read_u32(STACK_TOP - 4), 0xdead_beef);
        assert_eq!(t.read_u16(STACK_TOP - 8), 0x2345);
        // 16-bit stack: sp wraps inside the segment, esp's high half stays.
        t.cpu.seg[sreg::SS].attrs &= !attr::DB;
        t.ctx.gpr[4] = 0xabcd_0000;
        let mut m = Machine {
            cpu: &mut t.cpu,
            ctx: &mut t.ctx,
            mem: &mut t.mem,
            io: &mut t.io,
        };
        push(&mut m, 2, 0x4242).unwrap();
        assert_eq!(m.ctx.gpr[4], 0xabcd_fffe);
        assert_eq!(pop(&mut m, 2).unwrap(), 0x4242);
        assert_eq!(m.ctx.gpr[4], 0xabcd_0000);
    }
}

#[cfg(test)]
mod implicit {
    use super::super::testutil::*;
    use super::*;
    use crate::cpu::Segment;

    /// A 32-bit stack segment based at 0x4000 (esp 0x100), or a 16-bit one.
    fn based(big: bool) -> TestMachine {
        let mut t = TestMachine::new();
        let attrs = if big { 0xc093 } else { 0x0093 };
        t.cpu.seg[sreg::SS] = Segment { selector: KDATA, base: 0x4000, limit: 0xffff, attrs };
        t.ctx.gpr[4] = 0x100;
        t
    }

    #[test]
    fn push_pop_pusha_popa_through_the_segment_base() {
        let mut t = based(true);
        assert_eq!(t.run(&[0x68, 0x78, 0x56, 0x34, 0x12]), Outcome::Continue); // push $0x12345678
        assert_eq!((t.esp(), t.read_u32(0x40fc)), (0xfc, 0x1234_5678));
        t.ctx.gpr = [1, 2, 3, 4, 0xfc, 6, 7, 8];
        assert_eq!(t.run(&[0x60]), Outcome::Continue); // pusha
        assert_eq!((t.esp(), t.read_u32(0x40dc), t.read_u32(0x40e8)), (0xdc, 8, 0xfc));
        t.ctx.gpr = [0, 0, 0, 0, 0xdc, 0, 0, 0];
        assert_eq!(t.run(&[0x61]), Outcome::Continue); // popa
        assert_eq!(t.ctx.gpr, [1, 2, 3, 4, 0xfc, 6, 7, 8]);
        assert_eq!(t.run(&[0x8f, 0x44, 0x24, 0xfc]), Outcome::Continue); // pop -4(%esp): esp already moved
        assert_eq!((t.esp(), t.read_u32(0x40fc)), (0x100, 0x1234_5678));
    }

    #[test]
    fn call_ret_enter_leave_through_the_segment_base() {
        let mut t = based(true);
        assert_eq!(t.run(&[0xe8, 0x10, 0, 0, 0]), Outcome::Jump); // call .+0x15
        assert_eq!((t.ctx.eip, t.esp(), t.read_u32(0x40fc)), (EIP + 0x15, 0xfc, EIP + 5));
        t.ctx.gpr[5] = 0x5555;
        assert_eq!(t.run(&[0xc8, 0x08, 0x00, 0x00]), Outcome::Continue); // enter $8,$0
        assert_eq!((t.ctx.gpr[5], t.esp(), t.read_u32(0x40f8)), (0xf8, 0xf0, 0x5555));
        assert_eq!(t.run(&[0xc9]), Outcome::Continue); // leave
        assert_eq!((t.ctx.gpr[5], t.esp()), (0x5555, 0xfc));
        assert_eq!(t.run(&[0xc2, 0x04, 0x00]), Outcome::Jump); // ret $4
        assert_eq!((t.ctx.eip, t.esp()), (EIP + 5, 0x104));
    }

    #[test]
    fn a_16_bit_stack_wraps_sp_and_checks_the_limit() {
        let mut t = based(false);
        t.ctx.gpr[4] = 0xabcd_0002;
        t.ctx.gpr[0] = 0x4242;
        assert_eq!(t.run(&[0x66, 0x50]), Outcome::Continue); // push %ax
        assert_eq!(t.run(&[0x66, 0x50]), Outcome::Continue);
        assert_eq!((t.esp(), t.read_u16(0x4000 + 0xfffe)), (0xabcd_fffe, 0x4242));
        // A 4-byte push from sp 2 wraps to 0xfffe and runs past the limit: #SS(0),
        // esp unchanged.
        t.ctx.gpr[4] = 0xabcd_0002;
        assert_eq!(t.run(&[0x50]), exc(12, Some(0)));
        assert_eq!(t.esp(), 0xabcd_0002);
    }
}
