//! `div`/`idiv` by a register: a zero divisor raises #DE through a callout
//! instead of a host SIGFPE (13–18k cycles on this machine, the signal alone).
//!
//! The check is flag-free, as the instruction must leave the flags untouched
//! when it faults: the divisor is copied into ecx (saved in r11) and tested with
//! `jrcxz`. A divisor in memory, and the other #DE (a quotient too large), still
//! arrive as a host SIGFPE, which the engine turns into #DE as before.

use super::{ident, Builder, Flow};
use crate::emit::EmitError;
use crate::CalloutKind;
use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

/// Emits the zero-divisor check for `b.ins` if it divides by a register, then the
/// division itself.
pub(super) fn translate(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    if let Some(load) = divisor_load(&b.ins) {
        b.a.mov_rr(Register::R11, Register::RCX)?;
        b.a.ins(&load)?;
        b.a.bytes(&[0xe3, 0x00]); // jrcxz: a zero divisor
        let zero = b.a.pos() - 1;
        b.a.mov_rr(Register::RCX, Register::R11)?;
        b.a.bytes(&[0xeb, 0x00]); // jmp: divide
        let divide = b.a.pos() - 1;
        b.a.patch_rel8_here(zero);
        b.a.mov_rr(Register::RCX, Register::R11)?;
        b.callout(CalloutKind::RaiseDe)?;
        b.a.patch_rel8_here(divide);
    }
    ident::translate(b)
}

/// `ecx = divisor` (zero-extended) for a division by a register.
fn divisor_load(ins: &Instruction) -> Option<Instruction> {
    if !matches!(ins.mnemonic(), Mnemonic::Div | Mnemonic::Idiv) || ins.op0_kind() != OpKind::Register {
        return None;
    }
    let r = ins.op0_register();
    let host = super::stack::host_reg(r);
    let code = match r.size() {
        4 => Code::Mov_r32_rm32,
        2 => Code::Movzx_r32_rm16,
        1 => Code::Movzx_r32_rm8,
        _ => return None,
    };
    Instruction::with2(code, Register::ECX, host).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};

    fn load(bytes: &[u8]) -> Option<String> {
        let ins = Decoder::with_ip(32, bytes, 0, DecoderOptions::NONE).decode();
        divisor_load(&ins).map(|i| format!("{i}"))
    }

    #[test]
    fn divisor_loads_by_size_and_register() {
        assert_eq!(load(&[0xf7, 0xf1]).as_deref(), Some("mov %ecx,%ecx")); // div %ecx
        assert_eq!(load(&[0xf7, 0xfc]).as_deref(), Some("mov %r8d,%ecx")); // idiv %esp
        assert_eq!(load(&[0x66, 0xf7, 0xf3]).as_deref(), Some("movzwl %bx,%ecx")); // div %bx
        assert_eq!(load(&[0x66, 0xf7, 0xf4]).as_deref(), Some("movzwl %r8w,%ecx")); // div %sp
        assert_eq!(load(&[0xf6, 0xf4]).as_deref(), Some("movzbl %ah,%ecx")); // div %ah
        assert_eq!(load(&[0xf7, 0x33]), None, "a divisor in memory keeps the signal path");
        assert_eq!(load(&[0xf7, 0xe1]), None, "mul");
    }
}
