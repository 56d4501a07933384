//! Software interrupts (int n, int3, int1, into) and iret.
//!
//! The software interrupts become trap-style exceptions for the engine to deliver
//! (saved eip = the next instruction). TODO(protected-mode issue): at CPL > 0 the
//! gate's DPL must be checked (#GP(vector*8+2) when DPL < CPL), and iret needs the
//! interrupt-delivery machine.

use super::{vector, EmuResult, Fault, Machine, Outcome};
use bt86_translator::CalloutSite;
use iced_x86::Mnemonic;

/// OF in the host rflags image.
const OF: u64 = 1 << 11;

pub(crate) fn emulate(m: &mut Machine<'_>, site: &CalloutSite) -> EmuResult {
    let ins = &site.ins;
    let vector = match ins.mnemonic() {
        Mnemonic::Int => ins.immediate8(),
        Mnemonic::Int3 => vector::BP,
        Mnemonic::Int1 => vector::DB,
        Mnemonic::Into => {
            // Translated code calls out only with OF set; check anyway.
            if m.ctx.rflags & OF == 0 {
                return Ok(Outcome::Continue);
            }
            vector::OF
        }
        Mnemonic::Iret | Mnemonic::Iretd => {
            return Err(Fault::unsupported(
                "iret: interrupt delivery comes with the protected-mode machine",
            ))
        }
        _ => return Err(Fault::ud()),
    };
    Ok(Outcome::Exception {
        vector,
        error: None,
        trap: true,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::Stop;
    use super::*;

    fn trap(vector: u8) -> Outcome {
        Outcome::Exception {
            vector,
            error: None,
            trap: true,
        }
    }

    #[test]
    fn software_interrupts() {
        let mut t = TestMachine::new();
        assert_eq!(t.run(&[0xcd, 0x80]), trap(0x80));
        assert_eq!(t.run(&[0xcc]), trap(3));
        assert_eq!(t.run(&[0xf1]), trap(1));
        assert_eq!(t.run(&[0xce]), Outcome::Continue, "OF clear");
        t.ctx.rflags |= OF;
        assert_eq!(t.run(&[0xce]), trap(4));
        assert_eq!(t.ctx.eip, EIP, "eip left to the engine");
    }

    #[test]
    fn iret_is_unsupported() {
        let mut t = TestMachine::new();
        for code in [&[0xcf][..], &[0x66, 0xcf][..]] {
            match t.run(code) {
                Outcome::Stop(Stop::Unsupported { eip, what }) => {
                    assert_eq!(eip, EIP);
                    assert!(what.starts_with("iret"));
                }
                o => panic!("{o:?}"),
            }
        }
    }
}
