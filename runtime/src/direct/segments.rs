//! Guest selectors in the runner: the guest's segment caches mirrored into the
//! runner's LDT, and what the runner's selectors mean when it comes back.
//!
//! The host GDT is Linux's and cannot change, and its DPL-3 entries mean other
//! things than a guest's: 0x23/0x2b are flat 32-bit code/data, 0x33 is the 64-bit
//! code segment, 0x63-0x73 the per-thread TLS slots, 0x7b the CPUNODE segment.
//! So the guest never runs with its own GDT selectors. Each loaded guest segment
//! (its descriptor *cache*, which is what hardware uses) goes into the runner's LDT
//! at the guest selector's index: a guest LDT selector keeps its value, a guest
//! GDT selector `s` becomes `s | 4` (the same index, TI set). A guest that uses
//! GDT index k and LDT index k at once with different descriptors cannot be
//! mirrored and runs translated.
//!
//! What the guest sees: its LDT selectors exactly; for GDT selectors, reading a
//! segment register in user code (`mov %ds, %eax`, `push %cs`) shows TI set
//! (0x73 → 0x77). Every value the guest kernel sees (exception frames, system
//! calls) is translated back.
//!
//! Coming back, each selector the runner reports is one of:
//! - the one installed for that register: unchanged;
//! - another installed LDT selector (the guest copied a segment register): the
//!   guest selector it stands for, with that descriptor;
//! - zero: a null selector;
//! - a host GDT selector that loaded on the host (0x23, 0x2b, 0x33 as data,
//!   0x7b): the guest loaded that value itself, and it must be given its guest
//!   meaning (`Reported::Load`) — the load succeeded on the host with another
//!   base and limit, so the access that trapped is retried;
//! - 0x33 in CS: the guest far-jumped into 64-bit mode: an escape.

use crate::cpu::Segment;
use hashbrown::HashMap;

/// A host LDT descriptor as `modify_ldt` takes it (`struct user_desc`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UserDesc {
    pub entry_number: u32,
    pub base_addr: u32,
    pub limit: u32,
    pub flags: u32,
}

impl UserDesc {
    /// An empty entry (clears a slot).
    pub fn empty(index: u32) -> Self {
        // read_exec_only and seg_not_present set, everything else zero: Linux
        // treats this as "clear the entry" (LDT_empty).
        Self { entry_number: index, base_addr: 0, limit: 0, flags: (1 << 3) | (1 << 5) }
    }

    /// The LDT entry for a guest segment cache, if the host can hold it.
    pub fn from_cache(index: u32, seg: &Segment) -> Option<Self> {
        let attrs = seg.attrs;
        let present = attrs & 0x80 != 0;
        let system = attrs & 0x10 == 0;
        if !present || system {
            return None;
        }
        let ty = attrs & 0xf;
        let code = ty & 0x8 != 0;
        let (contents, read_exec_only) = if code {
            (if ty & 0x4 != 0 { 3 } else { 2 }, ty & 0x2 == 0)
        } else {
            (u32::from(ty & 0x4 != 0), ty & 0x2 == 0)
        };
        let (limit, pages) = if seg.limit > 0xf_ffff {
            if seg.limit & 0xfff != 0xfff {
                return None;
            }
            (seg.limit >> 12, true)
        } else {
            (seg.limit, false)
        };
        let seg_32bit = attrs & 0x4000 != 0;
        let useable = attrs & 0x1000 != 0;
        let flags = u32::from(seg_32bit)
            | (contents << 1)
            | (u32::from(read_exec_only) << 3)
            | (u32::from(pages) << 4)
            | (u32::from(useable) << 6);
        Some(Self { entry_number: index, base_addr: seg.base, limit, flags })
    }
}

/// Host LDT selector for guest selector `sel` (RPL kept).
pub fn host_selector(sel: u16) -> u16 {
    if sel & !3 == 0 {
        sel
    } else {
        sel | 4
    }
}

/// What the runner's LDT holds, and the guest selector each entry stands for.
#[derive(Debug, Default)]
pub struct LdtMirror {
    /// Host LDT index → (descriptor, guest selector without RPL, the guest cache).
    installed: HashMap<u32, (UserDesc, u16, Segment)>,
}

/// Why guest segments cannot be mirrored (the context runs translated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmirrorable {
    /// A descriptor the host cannot hold (system, not present, odd limit).
    Descriptor(u16),
    /// Two loaded selectors need one LDT slot with different descriptors.
    Clash(u16),
}

/// A selector the runner reported, in guest terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reported {
    /// What was installed for this register: nothing changed.
    Same,
    /// The guest now holds this segment (selector and cache).
    Now(Segment),
    /// The guest loaded this selector itself and the host gave it its own
    /// meaning: load it with the guest's.
    Load(u16),
}

impl LdtMirror {
    /// The `modify_ldt` descriptors that make the runner's LDT hold exactly the
    /// guest's loaded segments `segs` (es cs ss ds fs gs): new or changed entries,
    /// and empty ones for entries no longer used.
    pub fn update(&mut self, segs: &[Segment; 6]) -> Result<Vec<UserDesc>, Unmirrorable> {
        let mut want: HashMap<u32, (UserDesc, u16, Segment)> = HashMap::new();
        for s in segs {
            if s.selector & !3 == 0 {
                continue;
            }
            let index = u32::from(s.selector >> 3);
            let d = UserDesc::from_cache(index, s).ok_or(Unmirrorable::Descriptor(s.selector))?;
            let key_sel = s.selector & !3;
            match want.get(&index) {
                Some((old, sel, _)) if *old != d || *sel != key_sel => return Err(Unmirrorable::Clash(s.selector)),
                _ => {
                    want.insert(index, (d, key_sel, *s));
                }
            }
        }
        let mut out = Vec::new();
        for (&i, (d, _, _)) in &want {
            if self.installed.get(&i).map(|e| e.0) != Some(*d) {
                out.push(*d);
            }
        }
        for &i in self.installed.keys() {
            if !want.contains_key(&i) {
                out.push(UserDesc::empty(i));
            }
        }
        self.installed = want;
        Ok(out)
    }

    /// The runner's LDT is empty again (a new runner).
    pub fn forget(&mut self) {
        self.installed.clear();
    }

    /// Interprets selector `host` reported for a register that was given the
    /// guest segment `was`.
    pub fn reported(&self, was: &Segment, host: u16) -> Reported {
        if host == host_selector(was.selector) {
            return Reported::Same;
        }
        if host & !3 == 0 {
            return Reported::Now(Segment { selector: host, ..Segment::default() });
        }
        if host & 4 != 0 {
            if let Some((_, guest, cache)) = self.installed.get(&u32::from(host >> 3)) {
                let guest_sel = (guest & !3) | (host & 3);
                return Reported::Now(Segment { selector: guest_sel, ..*cache });
            }
        }
        // A host GDT selector (or an LDT one the runner was never given): the
        // guest's own load of that value.
        Reported::Load(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(selector: u16, ty: u8) -> Segment {
        let mut s = Segment::flat(selector, ty);
        s.attrs |= 0x60;
        s
    }

    #[test]
    fn linux_user_segments_become_ldt_entries() {
        let mut tls = flat(0x33, 0xf3);
        tls.base = 0x0804_c000;
        tls.limit = 0xfffff;
        tls.attrs &= !0x8000;
        let segs = [flat(0x7b, 0xf3), flat(0x73, 0xfb), flat(0x7b, 0xf3), flat(0x7b, 0xf3), Segment::default(), tls];
        let mut m = LdtMirror::default();
        let descs = m.update(&segs).expect("mirrorable");
        assert_eq!(descs.len(), 3);
        let code = descs.iter().find(|d| d.entry_number == 14).expect("code");
        assert_eq!((code.base_addr, code.limit, code.flags), (0, 0xfffff, 1 | (2 << 1) | (1 << 4)));
        let gs = descs.iter().find(|d| d.entry_number == 6).expect("tls");
        assert_eq!((gs.base_addr, gs.limit, gs.flags & (1 << 4)), (0x0804_c000, 0xfffff, 0));
        assert_eq!(host_selector(0x73), 0x77);
        assert_eq!(host_selector(0x0f), 0x0f);
        assert_eq!(host_selector(0), 0);
        // Nothing changes: nothing to install.
        assert!(m.update(&segs).expect("same").is_empty());
        // Reports.
        assert_eq!(m.reported(&segs[3], 0x7f), Reported::Same);
        assert_eq!(m.reported(&segs[3], 0), Reported::Now(Segment::default()));
        assert_eq!(m.reported(&segs[4], 0x37), Reported::Now(tls));
        assert_eq!(m.reported(&segs[5], 0x33), Reported::Load(0x33));
        assert_eq!(m.reported(&segs[3], 0x7b), Reported::Load(0x7b));
        // GS unloaded: its entry is emptied.
        let mut segs2 = segs;
        segs2[5] = Segment::default();
        assert_eq!(m.update(&segs2).expect("mirrorable"), vec![UserDesc::empty(6)]);
    }

    #[test]
    fn clashes_and_odd_descriptors_are_refused() {
        let mut m = LdtMirror::default();
        let mut other = flat(0x7f, 0xf3);
        other.base = 0x1000;
        let segs = [flat(0x7b, 0xf3), flat(0x73, 0xfb), flat(0x7b, 0xf3), other, Segment::default(), Segment::default()];
        assert_eq!(m.update(&segs), Err(Unmirrorable::Clash(0x7f)));
        let mut odd = flat(0x7b, 0xf3);
        odd.limit = 0x12_3456;
        let segs = [odd, flat(0x73, 0xfb), flat(0x7b, 0xf3), flat(0x7b, 0xf3), Segment::default(), Segment::default()];
        assert!(matches!(m.update(&segs), Err(Unmirrorable::Descriptor(_)) | Err(Unmirrorable::Clash(_))));
    }
}
