//! `--trace` events, in the spirit of QEMU's `-d in_asm,out_asm`: one `tracing` event
//! per translation unit built, with a dedicated target per category, so a subscriber
//! can route them (the CLI writes them to a file). The text is only built when the
//! category was switched on with [`enable`]: building units is hot, and
//! `tracing::enabled!` cannot rule an event out cheaply under per-layer filters.
//!
//! | target | what |
//! |---|---|
//! | [`IN_ASM`] | the guest instructions of a unit (32-bit, AT&T syntax), with their addresses |
//! | [`OUT_ASM`] | the host code emitted for it (64-bit), with host addresses |
//!
//! Exceptions and interrupts delivered are traced by the runtime under
//! `bt86::trace::int`.

use iced_x86::{Decoder, DecoderOptions, Formatter, GasFormatter, Instruction};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

static IN_ASM_ON: AtomicBool = AtomicBool::new(false);
static OUT_ASM_ON: AtomicBool = AtomicBool::new(false);

/// Switches the unit events on: guest code (`in_asm`) and host code (`out_asm`).
pub fn enable(in_asm: bool, out_asm: bool) {
    IN_ASM_ON.store(in_asm, Ordering::Relaxed);
    OUT_ASM_ON.store(out_asm, Ordering::Relaxed);
}

/// Target of the guest-code events.
pub const IN_ASM: &str = "bt86::trace::in_asm";
/// Target of the host-code events.
pub const OUT_ASM: &str = "bt86::trace::out_asm";

/// Disassembles `bytes` at `ip` (`bitness` 32 or 64), one instruction a line.
pub fn disassemble(bytes: &[u8], ip: u64, bitness: u32) -> String {
    let mut d = Decoder::with_ip(bitness, bytes, ip, DecoderOptions::NONE);
    let mut f = GasFormatter::new();
    let mut out = String::new();
    let mut insn = Instruction::default();
    while d.can_decode() {
        d.decode_out(&mut insn);
        let mut text = String::new();
        f.format(&insn, &mut text);
        let _ = writeln!(out, "  0x{:08x}:  {text}", insn.ip());
    }
    out
}

/// Emits the events for a unit built from guest `[guest_start, +guest_len)` (fetched
/// through `mem`) into host code `code` at `host`.
pub(crate) fn unit_built(mem: &mut dyn crate::GuestCode, guest_start: u32, guest_len: u32, host: u64, code: &[u8]) {
    if IN_ASM_ON.load(Ordering::Relaxed) {
        let mut bytes = vec![0u8; guest_len as usize];
        let n = mem.fetch(guest_start, &mut bytes);
        bytes.truncate(n);
        let text = disassemble(&bytes, u64::from(guest_start), 32);
        tracing::trace!(target: IN_ASM, "IN: guest 0x{guest_start:08x}, {guest_len} bytes\n{text}");
    }
    if OUT_ASM_ON.load(Ordering::Relaxed) {
        let text = disassemble(code, host, 64);
        tracing::trace!(target: OUT_ASM, "OUT: guest 0x{guest_start:08x} -> host 0x{host:x}, {} bytes\n{text}", code.len());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn disassembles_both_modes() {
        // push %ebp; mov %esp,%ebp (32-bit), and the same bytes as 64-bit code.
        let t = super::disassemble(&[0x55, 0x89, 0xe5], 0x10_0000, 32);
        assert!(t.contains("0x00100000:  push %ebp") && t.contains("mov %esp,%ebp"), "{t}");
        let t = super::disassemble(&[0x55], 0x7000_0000, 64);
        assert!(t.contains("push %rbp"), "{t}");
    }
}
