//! The 15-byte limit: an instruction longer than 15 bytes (only redundant prefixes
//! make one) raises #GP(0), not #UD. iced decodes at most 15 bytes and calls an
//! instruction that needs more "invalid" with length 15, like an invalid
//! instruction that happens to end at byte 15, and the length it gives an invalid
//! opcode is no guide either (it may count a ModRM byte the CPU never fetches).
//! So the prefixes are reduced to the ones that decide the instruction (the last
//! copy of each prefix byte, in their order: a repeated prefix has the effect of
//! its last copy, and the last of f2/f3 wins) and the rest is decoded again: a
//! valid instruction then has its true length, plus the prefixes removed. An
//! instruction still invalid is #UD where the CPU finds its opcode invalid, so it
//! is too long only if its prefixes and opcode bytes (the bytes the CPU fetches
//! before it knows, as QEMU counts them) pass 15.

use iced_x86::{Decoder, DecoderError};

/// The architectural limit.
const MAX_LEN: usize = 15;

/// Whether `bytes` (all the bytes there are from the instruction on, which iced
/// found invalid but complete) start with an instruction longer than 15 bytes, for
/// a 32-bit decoder with `options`.
pub(crate) fn too_long(bytes: &[u8], options: u32) -> bool {
    let prefixes = bytes.iter().take_while(|&&b| is_prefix(b)).count();
    if prefixes >= MAX_LEN {
        return true; // the 16th byte would still be a prefix or the opcode
    }
    let kept: Vec<u8> =
        (0..prefixes).filter(|&i| !bytes[i + 1..prefixes].contains(&bytes[i])).map(|i| bytes[i]).collect();
    let removed = prefixes - kept.len();
    let mut reduced = kept;
    reduced.extend_from_slice(&bytes[prefixes..]);
    let mut d = Decoder::new(32, &reduced, options);
    let ins = d.decode();
    if d.last_error() == DecoderError::NoMoreBytes {
        // It runs past the bytes there are: too long if those are 15 already.
        return bytes.len() >= MAX_LEN;
    }
    if !ins.is_invalid() {
        return removed + ins.len() > MAX_LEN;
    }
    prefixes + opcode_len(&bytes[prefixes..]) > MAX_LEN
}

/// Legacy prefixes (groups 1 to 4).
fn is_prefix(b: u8) -> bool {
    matches!(b, 0xf0 | 0xf2 | 0xf3 | 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67)
}

/// The opcode bytes at the start of `body` (the prefixes already skipped).
fn opcode_len(body: &[u8]) -> usize {
    match body {
        [0x0f, 0x38 | 0x3a, ..] => 3,
        [0x0f, ..] => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_prefixes(n: usize, tail: &[u8]) -> Vec<u8> {
        let mut b = vec![0x3e; n];
        b.extend_from_slice(tail);
        b.resize(b.len().max(MAX_LEN + 4), 0x90);
        b
    }

    #[test]
    fn sixteen_bytes_are_too_long_fifteen_are_not() {
        let load = [0x8b, 0x80, 0x00, 0x00, 0x20, 0x00]; // mov 0x200000(%eax),%eax: 6 bytes
        assert!(!too_long(&with_prefixes(9, &load), 0));
        assert!(too_long(&with_prefixes(10, &load), 0));
        assert!(too_long(&with_prefixes(15, &[0x90]), 0));
        assert!(!too_long(&with_prefixes(14, &[0x90]), 0));
    }

    #[test]
    fn an_invalid_instruction_ending_at_byte_15_is_not_too_long() {
        // 13 prefixes + 0f 04 (invalid): 15 bytes, #UD on a CPU.
        assert!(!too_long(&with_prefixes(13, &[0x0f, 0x04]), 0));
        // 14 prefixes + 0f 04: 16 bytes.
        assert!(too_long(&with_prefixes(14, &[0x0f, 0x04]), 0));
    }

    #[test]
    fn length_changing_prefixes_are_kept() {
        // 66 prefixes repeated: the last one keeps the 16-bit immediate.
        let mut b = vec![0x66; 11];
        b.extend_from_slice(&[0xb8, 0x34, 0x12]); // mov $0x1234,%ax: 14 bytes
        b.resize(20, 0x90);
        assert!(!too_long(&b, 0));
        let mut b = vec![0x66; 13];
        b.extend_from_slice(&[0xb8, 0x34, 0x12]); // 16 bytes
        b.resize(20, 0x90);
        assert!(too_long(&b, 0));
        // Mixed prefixes: 67 makes the displacement 16 bits.
        let mut b = vec![0x67, 0x3e, 0x66, 0x67, 0x3e, 0x26, 0x67, 0x3e, 0x66, 0x26, 0x3e, 0x67];
        b.extend_from_slice(&[0x8b, 0x87, 0x34, 0x12]); // mov 0x1234(%bx),%ax: 16 bytes
        b.resize(20, 0x90);
        assert!(too_long(&b, 0));
        b.remove(0);
        assert!(!too_long(&b, 0));
    }

    #[test]
    fn short_windows_are_not_judged() {
        assert!(!too_long(&[0x3e, 0x3e, 0x8b, 0x80, 0x00], 0));
    }
}
