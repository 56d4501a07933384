//! The architecture's rules for what a guest at a given CPL sees, from its own descriptor
//! tables: descriptors, and the protection checks of `lar`, `lsl`, `verr` and `verw`
//! (Intel SDM vol. 2). The study computes every expected value from the guest's state with
//! these, never from a constant written per row.

/// A segment or system descriptor, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub base: u32,
    /// The 20-bit limit field (before granularity).
    pub limit: u32,
    /// Byte 5: P, DPL, S, type.
    pub access: u8,
    /// The high nibble of byte 6: G, D/B, L, AVL.
    pub flags: u8,
}

impl Descriptor {
    /// The 8 bytes of the descriptor, as a little-endian u64.
    pub fn encode(&self) -> u64 {
        let base = u64::from(self.base);
        let limit = u64::from(self.limit & 0xf_ffff);
        (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (u64::from(self.access) << 40)
            | ((limit >> 16) << 48)
            | (u64::from(self.flags & 0xf) << 52)
            | ((base >> 24) << 56)
    }

    pub fn decode(raw: u64) -> Self {
        #[allow(clippy::cast_possible_truncation)]
        let field = |shift: u32, mask: u64| ((raw >> shift) & mask) as u32;
        #[allow(clippy::cast_possible_truncation)]
        Self {
            base: field(16, 0xff_ffff) | (field(56, 0xff) << 24),
            limit: field(0, 0xffff) | (field(48, 0xf) << 16),
            access: field(40, 0xff) as u8,
            flags: field(52, 0xf) as u8,
        }
    }

    pub fn dpl(&self) -> u8 {
        (self.access >> 5) & 3
    }

    /// S = 1: a code or data segment (S = 0: a system descriptor).
    pub fn is_segment(&self) -> bool {
        self.access & 0x10 != 0
    }

    /// The 4-bit type field.
    pub fn kind(&self) -> u8 {
        self.access & 0xf
    }

    pub fn is_code(&self) -> bool {
        self.is_segment() && self.kind() & 8 != 0
    }

    pub fn is_conforming_code(&self) -> bool {
        self.is_code() && self.kind() & 4 != 0
    }

    /// The limit in bytes (granularity applied).
    pub fn byte_limit(&self) -> u32 {
        if self.flags & 8 != 0 {
            (self.limit << 12) | 0xfff
        } else {
            self.limit
        }
    }
}

/// The privilege check of lar/lsl/verr/verw: DPL ≥ max(CPL, RPL), except for conforming code.
fn reachable(d: Descriptor, cpl: u8, rpl: u8) -> bool {
    d.is_conforming_code() || d.dpl() >= cpl.max(rpl)
}

/// `lar`: the access rights (bits 8-23 of the descriptor's high dword; bits 16-19 are
/// undefined by Intel, CPUs return the limit's high nibble) or None (ZF=0).
pub fn lar(d: Descriptor, cpl: u8, rpl: u8) -> Option<u32> {
    // System types lar accepts: 16-bit TSS (available/busy), LDT, call gate, task gate,
    // 32-bit TSS (available/busy), 32-bit call gate.
    let valid = d.is_segment() || matches!(d.kind(), 1 | 2 | 3 | 4 | 5 | 9 | 0xb | 0xc);
    #[allow(clippy::cast_possible_truncation)]
    let high = (d.encode() >> 32) as u32;
    (valid && reachable(d, cpl, rpl)).then_some(high & 0x00ff_ff00)
}

/// `lsl`: the byte limit or None (ZF=0).
pub fn lsl(d: Descriptor, cpl: u8, rpl: u8) -> Option<u32> {
    // System types lsl accepts: TSS (16/32-bit, available/busy) and LDT.
    let valid = d.is_segment() || matches!(d.kind(), 1 | 2 | 3 | 9 | 0xb);
    (valid && reachable(d, cpl, rpl)).then_some(d.byte_limit())
}

/// `verr`: is the segment readable at this privilege?
pub fn verr(d: Descriptor, cpl: u8, rpl: u8) -> bool {
    let readable = if d.is_code() { d.kind() & 2 != 0 } else { true };
    d.is_segment() && readable && reachable(d, cpl, rpl)
}

/// `verw`: is the segment writable at this privilege?
pub fn verw(d: Descriptor, cpl: u8, rpl: u8) -> bool {
    d.is_segment() && !d.is_code() && d.kind() & 2 != 0 && reachable(d, cpl, rpl)
}

/// A 32-bit interrupt gate, DPL 0, present, to `sel:offset`.
pub fn interrupt_gate(sel: u16, offset: u32) -> u64 {
    let off = u64::from(offset);
    (off & 0xffff) | (u64::from(sel) << 16) | (0x8eu64 << 40) | ((off >> 16) << 48)
}

/// A TSS descriptor with its busy bit cleared (what `ltr` expects to find).
pub fn tss_available(raw: u64) -> u64 {
    raw & !(0x2u64 << 40)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_round_trip() {
        let d = Descriptor { base: 0x1234_5678, limit: 0xa_bcde, access: 0x9b, flags: 0xc };
        assert_eq!(Descriptor::decode(d.encode()), d);
        // Linux's flat 32-bit user code segment, as `lar` reads it on this kind of machine.
        let user32 = Descriptor { base: 0, limit: 0xf_ffff, access: 0xfb, flags: 0xc };
        assert_eq!(user32.encode(), 0x00cf_fb00_0000_ffff);
        assert_eq!(lar(user32, 3, 3), Some(0x00cf_fb00));
    }

    #[test]
    fn privilege_checks() {
        let kcode = Descriptor { base: 0, limit: 0xf_ffff, access: 0x9b, flags: 0xc };
        let kdata = Descriptor { access: 0x93, ..kcode };
        assert!(verr(kcode, 0, 0) && !verr(kcode, 0, 3) && !verr(kcode, 3, 0));
        assert!(verw(kdata, 0, 0) && !verw(kdata, 0, 3) && !verw(kcode, 0, 0));
        assert_eq!(lsl(kdata, 3, 3), None);
        let conforming = Descriptor { access: 0x9f, ..kcode };
        assert!(verr(conforming, 3, 3));
        let execute_only = Descriptor { access: 0x99, ..kcode };
        assert!(!verr(execute_only, 0, 0));
        let interrupt_gate_desc = Descriptor::decode(interrupt_gate(0x20, 0x1000));
        assert_eq!(lsl(interrupt_gate_desc, 0, 0), None);
        assert_eq!(lar(interrupt_gate_desc, 0, 0), None);
        assert_eq!(lar(Descriptor::decode(0), 0, 0), None);
    }
}
