//! Software interrupts (int n, int3, int1, into): the engine delivers them through
//! the IDT (`delivery`), with the saved eip = the next instruction and, for int n,
//! int3 and into, the gate DPL check.

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
        _ => return Err(Fault::ud()),
    };
    if ins.mnemonic() == Mnemonic::Int1 {
        // icebp: a debug trap, not a software interrupt (no DPL check).
        return Ok(Outcome::Exception { vector, error: None, trap: true });
    }
    Ok(Outcome::SoftwareInterrupt { vector })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    fn trap(vector: u8) -> Outcome {
        if vector == 1 {
            return Outcome::Exception { vector, error: None, trap: true };
        }
        Outcome::SoftwareInterrupt { vector }
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

}
