//! Segment descriptors in the guest's GDT and LDT.

use super::addressing::{read_linear_as, write_linear_as};
use super::{Fault, Machine};
use crate::cpu::Segment;

/// System descriptor types (S = 0).
pub(crate) mod sys {
    pub const TSS16_AVAIL: u8 = 1;
    pub const LDT: u8 = 2;
    pub const TSS16_BUSY: u8 = 3;
    pub const CALL_GATE16: u8 = 4;
    pub const TASK_GATE: u8 = 5;
    pub const TSS32_AVAIL: u8 = 9;
    pub const TSS32_BUSY: u8 = 0xb;
    pub const CALL_GATE32: u8 = 0xc;
}

/// An 8-byte descriptor as two little-endian dwords.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Descriptor {
    pub lo: u32,
    pub hi: u32,
}

impl Descriptor {
    pub fn base(&self) -> u32 {
        (self.lo >> 16) | ((self.hi & 0xff) << 16) | (self.hi & 0xff00_0000)
    }

    /// The limit in bytes (granularity applied).
    pub fn limit(&self) -> u32 {
        let raw = (self.lo & 0xffff) | (self.hi & 0x000f_0000);
        if self.hi & (1 << 23) != 0 {
            (raw << 12) | 0xfff
        } else {
            raw
        }
    }

    /// `Segment::attrs`: bits 8..23 of the high dword without the limit bits.
    pub fn attrs(&self) -> u16 {
        ((self.hi >> 8) & 0xf0ff) as u16
    }

    /// The 4-bit type field.
    pub fn typ(&self) -> u8 {
        ((self.hi >> 8) & 0xf) as u8
    }

    pub fn is_system(&self) -> bool {
        self.hi & (1 << 12) == 0
    }

    pub fn dpl(&self) -> u8 {
        ((self.hi >> 13) & 3) as u8
    }

    pub fn present(&self) -> bool {
        self.hi & (1 << 15) != 0
    }

    pub fn is_code(&self) -> bool {
        !self.is_system() && self.typ() & 8 != 0
    }

    pub fn is_data(&self) -> bool {
        !self.is_system() && self.typ() & 8 == 0
    }

    pub fn conforming(&self) -> bool {
        self.is_code() && self.typ() & 4 != 0
    }

    /// Code: readable; data: always.
    pub fn readable(&self) -> bool {
        self.is_data() || (self.is_code() && self.typ() & 2 != 0)
    }

    /// Writable data.
    pub fn writable(&self) -> bool {
        self.is_data() && self.typ() & 2 != 0
    }

    /// D/B: a 32-bit code segment or stack.
    pub fn big(&self) -> bool {
        self.hi & (1 << 22) != 0
    }

    /// The descriptor cache for a load with `selector`.
    pub fn to_segment(self, selector: u16) -> Segment {
        Segment {
            selector,
            base: self.base(),
            limit: self.limit(),
            attrs: self.attrs(),
        }
    }
}

/// A descriptor read from a table, with its linear address (for write-backs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub desc: Descriptor,
    pub addr: u32,
}

/// Whether the selector is null (index 0 in the GDT, any RPL).
pub(crate) fn is_null(sel: u16) -> bool {
    sel & 0xfffc == 0
}

/// Reads the descriptor `sel` names. `Ok(None)` when it lies beyond the table's
/// limit (or names the LDT while none is loaded); the callers turn that into their
/// own fault or flag. A null selector reads GDT entry 0.
pub(crate) fn fetch(m: &mut Machine<'_>, sel: u16) -> Result<Option<Entry>, Fault> {
    let (base, limit) = if sel & 4 != 0 {
        let ldt = m.cpu.ldtr;
        if is_null(ldt.selector) || ldt.attrs & 0x80 == 0 {
            return Ok(None);
        }
        (ldt.base, ldt.limit)
    } else {
        (m.cpu.gdtr.base, u32::from(m.cpu.gdtr.limit))
    };
    let offset = u32::from(sel & 0xfff8);
    if u64::from(offset) + 7 > u64::from(limit) {
        return Ok(None);
    }
    let addr = base.wrapping_add(offset);
    let mut b = [0u8; 8];
    // Descriptor tables are read as supervisor accesses at any CPL.
    read_linear_as(m, addr, &mut b, false)?;
    let lo = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let hi = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    Ok(Some(Entry {
        desc: Descriptor { lo, hi },
        addr,
    }))
}

/// Sets `bits` in the descriptor's type field in memory (accessed, busy) if they are
/// not set yet, and returns the updated descriptor.
pub(crate) fn set_type_bits(m: &mut Machine<'_>, e: Entry, bits: u8) -> Result<Descriptor, Fault> {
    let mut d = e.desc;
    if d.typ() & bits == bits {
        return Ok(d);
    }
    d.hi |= u32::from(bits) << 8;
    let byte = (d.hi >> 8) as u8;
    write_linear_as(m, e.addr.wrapping_add(5), &[byte], false)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::cpu::{Segment, TableReg};

    #[test]
    fn decode_fields() {
        let raw = desc(0x1234_5678, 0xabcde, 0x9a, 0xc);
        let d = Descriptor {
            lo: raw as u32,
            hi: (raw >> 32) as u32,
        };
        assert_eq!(d.base(), 0x1234_5678);
        assert_eq!(d.limit(), 0xabcd_efff);
        assert_eq!(d.attrs(), 0xc09a);
        assert!(d.is_code() && d.readable() && !d.conforming() && d.present() && d.big());
        assert_eq!(d.dpl(), 0);
        let raw = desc(0, 0x67, 0x89, 0);
        let d = Descriptor {
            lo: raw as u32,
            hi: (raw >> 32) as u32,
        };
        assert!(d.is_system());
        assert_eq!(d.typ(), sys::TSS32_AVAIL);
        assert_eq!(d.limit(), 0x67);
    }

    #[test]
    fn fetch_checks_table_limits() {
        let mut t = TestMachine::new();
        t.cpu.gdtr = TableReg {
            base: GDT_BASE,
            limit: 0x17,
        };
        let mut m = super::super::Machine {
            cpu: &mut t.cpu,
            ctx: &mut t.ctx,
            mem: &mut t.mem,
            io: &mut t.io,
        };
        assert!(fetch(&mut m, 0x10).unwrap().is_some());
        assert!(fetch(&mut m, 0x18).unwrap().is_none());
        // No LDT loaded.
        assert!(fetch(&mut m, 0x0c).unwrap().is_none());
        m.cpu.ldtr = Segment {
            selector: 0x28,
            base: 0x3000,
            limit: 0xf,
            attrs: 0x82,
        };
        assert_eq!(fetch(&mut m, 0x0f).unwrap().unwrap().addr, 0x3008);
        assert!(fetch(&mut m, 0x14).unwrap().is_none());
    }
}
