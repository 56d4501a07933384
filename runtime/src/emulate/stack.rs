//! The guest stack at ss:esp, with a 16-bit stack pointer when SS.B is clear.
//!
//! Handlers that push or pop several values check and write (or read) every slot
//! first and commit esp last, so a fault leaves esp as it was.

use super::addressing::{attr, linear, read_lin, write_lin, Access};
use super::{Fault, Machine};
use crate::cpu::{sreg, Cpu};

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
