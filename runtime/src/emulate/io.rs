//! Port I/O: in/out (imm8 or dx port; 1, 2 or 4 bytes) and ins/outs with their rep
//! forms, routed to the port bus.
//!
//! A rep string instruction runs at most [`REP_CHUNK`] iterations per callout; if
//! the count is not exhausted it leaves translated code at the same instruction
//! (as hardware lets interrupts in between iterations), so a huge count cannot
//! stall the VMM. Registers always reflect the completed iterations, so a fault in
//! the middle restarts where it stopped.

use super::addressing::{linear, read_lin, read_reg, sreg_index, write_lin, write_reg, Access};
use super::flags::iopl;
use super::{EmuResult, Fault, Machine, Outcome};
use crate::cpu::sreg;
use crate::devices::IoEffect;
use bt86_translator::CalloutSite;
use iced_x86::{Instruction, Mnemonic, OpKind, Register};

/// Most iterations of a rep ins/outs done in one callout.
pub(crate) const REP_CHUNK: u32 = 1 << 16;

/// DF in the host rflags image.
const DF: u64 = 1 << 10;

pub(crate) fn emulate(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    let ins = &site.ins;
    if m.cpu.cpl() > iopl(m) {
        let size = match ins.mnemonic() {
            Mnemonic::Insb | Mnemonic::Outsb => 1,
            Mnemonic::Insw | Mnemonic::Outsw => 2,
            Mnemonic::Insd | Mnemonic::Outsd => 4,
            Mnemonic::In => accumulator(ins, 0)?.1,
            _ => accumulator(ins, 1)?.1,
        };
        let port = match ins.mnemonic() {
            Mnemonic::In => port_of(m, ins, 1)?,
            Mnemonic::Out => port_of(m, ins, 0)?,
            _ => read_reg(m.ctx, Register::DX) as u16,
        };
        check_io_bitmap(m, port, size)?;
    }
    match ins.mnemonic() {
        Mnemonic::In => port_in(m, ins),
        Mnemonic::Out => port_out(m, ins),
        Mnemonic::Insb | Mnemonic::Insw | Mnemonic::Insd => string(m, site, true),
        _ => string(m, site, false),
    }
}

/// With CPL > IOPL, every port the access touches must be allowed (bit clear) in the
/// I/O permission bitmap of the current 32-bit TSS; a bitmap that the TSS limit cuts
/// short, or no 32-bit TSS at all, denies. #GP(0) otherwise.
fn check_io_bitmap(m: &mut Machine<'_>, port: u16, size: u8) -> Result<(), Fault> {
    let tr = m.cpu.tr;
    let ty = tr.attrs & 0xf;
    if tr.selector & 0xfffc == 0 || !(ty == 9 || ty == 0xb) || tr.limit < 0x67 {
        return Err(Fault::gp0());
    }
    let map = read_lin(m, tr.base.wrapping_add(0x66), 2)?;
    for p in u32::from(port)..u32::from(port) + u32::from(size) {
        let at = map + p / 8;
        if at > tr.limit {
            return Err(Fault::gp0());
        }
        let byte = read_lin(m, tr.base.wrapping_add(at), 1)?;
        if byte & (1 << (p % 8)) != 0 {
            return Err(Fault::gp0());
        }
    }
    Ok(())
}

/// The port operand: an imm8 or dx.
fn port_of(m: &Machine<'_>, ins: &Instruction, op: u32) -> Result<u16, Fault> {
    match ins.op_kind(op) {
        OpKind::Immediate8 => Ok(u16::from(ins.immediate8())),
        OpKind::Register if ins.op_register(op) == Register::DX => {
            Ok(read_reg(m.ctx, Register::DX) as u16)
        }
        _ => Err(Fault::ud()),
    }
}

/// The accumulator operand (al, ax or eax) and its size in bytes.
fn accumulator(ins: &Instruction, op: u32) -> Result<(Register, u8), Fault> {
    let r = ins.op_register(op);
    match r {
        Register::AL | Register::AX | Register::EAX => Ok((r, r.size() as u8)),
        _ => Err(Fault::ud()),
    }
}

fn port_in(m: &mut Machine<'_>, ins: &Instruction) -> EmuResult {
    let (r, size) = accumulator(ins, 0)?;
    let port = port_of(m, ins, 1)?;
    let v = m.io.read(port, size);
    write_reg(m.ctx, r, v);
    Ok(Outcome::Continue)
}

fn port_out(m: &mut Machine<'_>, ins: &Instruction) -> EmuResult {
    let port = port_of(m, ins, 0)?;
    let (r, size) = accumulator(ins, 1)?;
    let v = read_reg(m.ctx, r);
    effect(m.io.write(port, size, v))?;
    Ok(Outcome::Continue)
}

fn effect(e: IoEffect) -> Result<(), Fault> {
    match e {
        IoEffect::None => Ok(()),
        IoEffect::Exit(v) => Err(Fault::GuestExit(v)),
        IoEffect::Reset => Err(Fault::Reset),
    }
}

/// ins (`input`) or outs, with or without rep.
fn string(m: &mut Machine<'_>, site: &CalloutSite, input: bool) -> EmuResult {
    let ins = &site.ins;
    let size: u32 = match ins.mnemonic() {
        Mnemonic::Insb | Mnemonic::Outsb => 1,
        Mnemonic::Insw | Mnemonic::Outsw => 2,
        _ => 4,
    };
    // The memory operand: es:(e)di for ins, seg:(e)si for outs (ds unless overridden).
    let mem_op = if input { 0 } else { 1 };
    let (index_reg, a16) = match ins.op_kind(mem_op) {
        OpKind::MemoryESDI => (Register::EDI, true),
        OpKind::MemoryESEDI => (Register::EDI, false),
        OpKind::MemorySegSI => (Register::ESI, true),
        OpKind::MemorySegESI => (Register::ESI, false),
        _ => return Err(Fault::ud()),
    };
    let seg = if input {
        sreg::ES
    } else {
        sreg_index(ins.memory_segment()).ok_or_else(Fault::ud)?
    };
    let port = read_reg(m.ctx, Register::DX) as u16;
    let rep = ins.has_rep_prefix() || ins.has_repne_prefix();
    let idx = if index_reg == Register::EDI { 7 } else { 6 };
    let width_mask: u32 = if a16 { 0xffff } else { u32::MAX };
    let step = if m.ctx.rflags & DF != 0 {
        size.wrapping_neg()
    } else {
        size
    };

    let mut count = if rep { m.ctx.gpr[1] & width_mask } else { 1 };
    let mut done = 0u32;
    while count != 0 {
        if done == REP_CHUNK {
            // Come back for the rest (eip stays at this instruction).
            m.ctx.eip = site.eip;
            return Ok(Outcome::Jump);
        }
        let offset = m.ctx.gpr[idx] & width_mask;
        let access = if input { Access::Write } else { Access::Read };
        let addr = linear(m.cpu, seg, offset, size, access)?;
        let mut result = Ok(());
        if input {
            // Probe the destination first, so the port is not read for a lost value.
            read_lin(m, addr, size)?;
            let v = m.io.read(port, size as u8);
            write_lin(m, addr, size, v)?;
        } else {
            let v = read_lin(m, addr, size)?;
            result = effect(m.io.write(port, size as u8, v));
        }
        // The iteration completed: step the index and the count.
        let new = offset.wrapping_add(step) & width_mask;
        m.ctx.gpr[idx] = (m.ctx.gpr[idx] & !width_mask) | new;
        count -= 1;
        done += 1;
        if rep {
            m.ctx.gpr[1] = (m.ctx.gpr[1] & !width_mask) | count;
        }
        result?;
    }
    Ok(Outcome::Continue)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::devices::{COM1_BASE, DEBUG_EXIT_PORT};

    #[test]
    fn in_out_sizes_and_partial_registers() {
        let mut t = TestMachine::new();
        t.ctx.gpr[0] = 0x1234_5678;
        // in al, 0x80 (unclaimed: 0xff), rest of eax kept.
        assert_eq!(t.run(&[0xe4, 0x80]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[0], 0x1234_56ff);
        // in ax, dx
        t.ctx.gpr[2] = 0x80;
        assert_eq!(t.run(&[0x66, 0xed]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[0], 0x1234_ffff);
        // in eax, dx from the UART's LSR (5), MSR, SCR, then past the UART.
        t.ctx.gpr[2] = u32::from(COM1_BASE) + 5;
        assert_eq!(t.run(&[0xed]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[0] & 0xffff, 0xb060);
        // out dx, al to the UART data port.
        t.ctx.gpr[2] = u32::from(COM1_BASE);
        t.ctx.gpr[0] = u32::from(b'\n') | 0x4100;
        assert_eq!(t.run(&[0xee]), Outcome::Continue);
        assert_eq!(t.console.to_string_lossy(), "\n");
        // out 0xf4, eax → guest exit with the whole value.
        t.ctx.gpr[0] = 0x1_0003;
        assert_eq!(
            t.run(&[0xe7, DEBUG_EXIT_PORT as u8]),
            Outcome::Stop(super::super::Stop::GuestExit(0x1_0003))
        );
        // out 0xf4, al
        assert_eq!(
            t.run(&[0xe6, DEBUG_EXIT_PORT as u8]),
            Outcome::Stop(super::super::Stop::GuestExit(3))
        );
    }

    #[test]
    fn io_needs_cpl_le_iopl() {
        let mut t = TestMachine::new();
        t.set_cpl(3);
        assert_eq!(t.run(&[0xe4, 0x80]), gp(0));
        t.ctx.sys_flags = crate::cpu::eflags::IOPL;
        assert_eq!(t.run(&[0xe4, 0x80]), Outcome::Continue);
    }

    #[test]
    fn io_bitmap_grants_single_ports_at_cpl3() {
        let mut t = TestMachine::new();
        t.set_cpl(3);
        const TSS: u32 = 0x6000;
        // Bitmap at offset 0x68 covering ports 0..0x3ff: all denied but 0x80 and 0x81.
        t.write_u16(TSS + 0x66, 0x68);
        t.write(TSS + 0x68, &[0xff; 0x80]);
        t.write(TSS + 0x68 + 0x10, &[0xfc]);
        t.cpu.tr = crate::cpu::Segment { selector: 0x28, base: TSS, limit: 0x68 + 0x80 - 1, attrs: 0x8b };
        assert_eq!(t.run(&[0xe4, 0x80]), Outcome::Continue, "port 0x80 allowed");
        assert_eq!(t.run(&[0x66, 0xe5, 0x80]), Outcome::Continue, "word at 0x80: 0x80 and 0x81 allowed");
        assert_eq!(t.run(&[0xe5, 0x80]), gp(0), "dword at 0x80 touches 0x82");
        assert_eq!(t.run(&[0xe4, 0x60]), gp(0));
        t.ctx.gpr[2] = 0x400; // beyond the bitmap the limit covers
        assert_eq!(t.run(&[0xec]), gp(0));
    }

    #[test]
    fn rep_outsb_to_uart() {
        let mut t = TestMachine::new();
        let msg = b"hello, world\n";
        t.write(0x5000, msg);
        t.ctx.gpr[6] = 0x5000;
        t.ctx.gpr[1] = msg.len() as u32;
        t.ctx.gpr[2] = u32::from(COM1_BASE);
        assert_eq!(t.run(&[0xf3, 0x6e]), Outcome::Continue);
        assert_eq!(t.console.to_string_lossy(), "hello, world\n");
        assert_eq!(t.ctx.gpr[1], 0);
        assert_eq!(t.ctx.gpr[6], 0x5000 + msg.len() as u32);
        // Zero count: nothing.
        assert_eq!(t.run(&[0xf3, 0x6e]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[6], 0x5000 + msg.len() as u32);
    }

    #[test]
    fn outs_with_override_and_backwards() {
        let mut t = TestMachine::new();
        t.cpu.seg[sreg::FS].base = 0x100;
        t.write(0x5100, b"ba");
        t.ctx.gpr[6] = 0x5001;
        t.ctx.gpr[1] = 2;
        t.ctx.gpr[2] = u32::from(COM1_BASE);
        t.ctx.rflags |= DF;
        // rep outsb dx, fs:[esi] backwards: "ab".
        assert_eq!(t.run(&[0x64, 0xf3, 0x6e]), Outcome::Continue);
        t.io.flush();
        assert_eq!(t.console.to_string_lossy(), "ab");
        assert_eq!(t.ctx.gpr[6], 0x4fff);
    }

    #[test]
    fn rep_insw_and_single_insd() {
        let mut t = TestMachine::new();
        t.ctx.gpr[2] = 0x80; // unclaimed: all ones
        t.ctx.gpr[7] = 0x6000;
        t.ctx.gpr[1] = 3;
        assert_eq!(t.run(&[0x66, 0xf3, 0x6d]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[7], 0x6006);
        assert_eq!(t.ctx.gpr[1], 0);
        assert_eq!(t.read_u32(0x6000), 0xffff_ffff);
        assert_eq!(t.read_u16(0x6004), 0xffff);
        assert_eq!(t.read_u16(0x6006), 0);
        // insd without rep ignores ecx.
        t.ctx.gpr[1] = 7;
        assert_eq!(t.run(&[0x6d]), Outcome::Continue);
        assert_eq!((t.ctx.gpr[7], t.ctx.gpr[1]), (0x600a, 7));
    }

    #[test]
    fn rep_ins_fault_keeps_progress() {
        let mut t = TestMachine::new();
        t.ctx.gpr[2] = 0x80;
        t.ctx.gpr[7] = RAM as u32 - 2;
        t.ctx.gpr[1] = 5;
        assert_eq!(
            t.run(&[0xf3, 0x6c]),
            Outcome::Stop(super::super::Stop::Unbacked {
                eip: EIP,
                linear: RAM as u32
            })
        );
        assert_eq!(t.ctx.gpr[7], RAM as u32);
        assert_eq!(t.ctx.gpr[1], 3);
    }

    #[test]
    fn rep_chunks_and_16bit_addressing() {
        let mut t = TestMachine::new();
        t.ctx.gpr[2] = 0x80;
        t.ctx.gpr[6] = 0x1234_0000;
        t.ctx.gpr[1] = 0xabcd_0000 | 0xffff;
        // a16 rep outsb: cx, si (wrapping within 64 KiB), high halves kept.
        let mut n = 0;
        loop {
            match t.run(&[0x67, 0xf3, 0x6e]) {
                Outcome::Continue => break,
                Outcome::Jump => {
                    assert_eq!(t.ctx.eip, EIP);
                    n += 1;
                }
                o => panic!("{o:?}"),
            }
        }
        assert_eq!(n, 0, "0xffff iterations fit in one chunk");
        assert_eq!(t.ctx.gpr[1], 0xabcd_0000);
        assert_eq!(t.ctx.gpr[6], 0x1234_ffff);
        // A 32-bit count above the chunk comes back once.
        t.ctx.gpr[6] = 0;
        t.ctx.gpr[1] = REP_CHUNK + 1;
        assert_eq!(t.run(&[0xf3, 0x6e]), Outcome::Jump);
        assert_eq!(t.ctx.eip, EIP);
        assert_eq!(t.ctx.gpr[1], 1);
        assert_eq!(t.run(&[0xf3, 0x6e]), Outcome::Continue);
        assert_eq!(t.ctx.gpr[1], 0);
        assert_eq!(t.ctx.gpr[6], REP_CHUNK + 1);
    }
}
