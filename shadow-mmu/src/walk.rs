//! The guest's page-table walk: 2-level 32-bit paging (CR4.PAE = 0) exactly as
//! the hardware performs it (Intel SDM vol. 3, §4.3 32-bit paging, §4.6 access
//! rights, §4.7 page-fault error code, §4.8 accessed and dirty flags).
//!
//! # The walk
//! 1. The PDE is at `(CR3 & 0xffff_f000) + (linear >> 22) * 4`. The low bits of
//!    CR3 (PWT, PCD, ignored bits) take no part in the address.
//! 2. PDE.P = 0 → #PF with P = 0 in the error code.
//! 3. If CR4.PSE = 1 and PDE.PS = 1 the PDE maps a 4 MiB page at `PDE & 0xffc0_0000`.
//!    With CR4.PSE = 0 the PS bit is ignored and the PDE always points to a page table.
//! 4. Otherwise the PTE is at `(PDE & 0xffff_f000) + ((linear >> 12) & 0x3ff) * 4`;
//!    PTE.P = 0 → #PF with P = 0 (a not-present entry wins over any permission
//!    problem of the PDE above it).
//! 5. Access rights combine both levels (§4.6, no SMEP/SMAP/NX on this CPU):
//!    - a user access (CPL 3) needs U/S = 1 in the PDE and the PTE;
//!    - a user write needs R/W = 1 at both levels;
//!    - a supervisor write needs R/W = 1 at both levels only when CR0.WP = 1; with
//!      WP = 0 supervisor writes ignore R/W (user pages included);
//!    - supervisor accesses may read/write/fetch user pages (no SMEP/SMAP);
//!    - instruction fetches are checked as reads (no NX with 32-bit paging).
//!
//!    A violation is #PF with P = 1.
//! 6. On success, A is set in the PDE and then in the PTE, and on a write D is set
//!    in the final entry (the PTE, or the PDE of a 4 MiB page). Like hardware, an
//!    entry is only written when a bit actually changes, and the whole dword is
//!    written back with the bit(s) set. A and D of the final entry go out in one
//!    write. A PDE that points to a page table has no D bit (bit 6 is ignored
//!    there and never touched).
//!
//! # Reserved bits (RSVD, error-code bit 3)
//! With 32-bit paging there are reserved bits only when CR4.PSE = 1 (SDM §4.3).
//! They depend on CPUID; bt86's virtual CPU (`runtime/src/emulate/cpuid.rs`)
//! advertises PSE but neither PSE-36 nor PAT, so per the SDM:
//! - a present 4 MiB PDE with any of bits 21:13 set ("if the PSE-36 mechanism
//!   is not supported, bits 21:13 are reserved") or bit 12 set (PAT bit, reserved
//!   when PAT is not supported) faults: [`PDE_4M_RESERVED`];
//! - a present PTE with bit 7 set (PAT bit, reserved without PAT) faults:
//!   [`PTE_RESERVED`].
//!
//! A reserved-bit fault has P = 1 and RSVD = 1 (plus W/R and U/S of the access).
//! It takes precedence over access rights, and a PDE with reserved bits is not
//! used at all (its page is not walked further). If the virtual CPU ever
//! advertises PSE-36 or PAT, these masks must shrink accordingly. With CR4.PSE = 0
//! nothing is reserved: the PS bit and the PTE's bit 7 are ignored.
//!
//! # Choices where the SDM leaves freedom
//! - A faulting walk sets no A or D bit anywhere (the SDM allows a processor to
//!   set A in upper-level entries of a walk that later faults; we never do, so a
//!   guest sees A only on entries of translations that succeeded).
//! - The error code's I/D bit (4) is never set: it exists only with NX or SMEP,
//!   which this CPU does not have. PK/SS/SGX bits are likewise always 0.
//! - [`Translation::global`] is the G bit of the final entry *and* CR4.PGE, so a
//!   caller can use it directly to decide whether a mapping survives a CR3 write.
//!   G in a PDE that points to a page table is ignored (bit 8 there is ignored).
//! - A page-directory or page-table entry outside guest RAM is reported as
//!   [`WalkError::NoRam`] with the physical address of the entry, for the caller
//!   to decide (real hardware would read whatever the bus returns). The final
//!   page itself is not touched, so it may lie outside RAM (MMIO) without error.

/// Guest-physical memory as the page walker sees it.
pub trait PhysMem {
    /// Reads the little-endian dword at `phys` (4-byte aligned for page-table
    /// entries). `None`: no RAM there.
    fn read_u32(&mut self, phys: u32) -> Option<u32>;
    /// Writes the dword at `phys`. `false`: no RAM there.
    fn write_u32(&mut self, phys: u32, v: u32) -> bool;
}

/// The kind of access being translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// The access writes.
    pub write: bool,
    /// The access is made at CPL 3 (a user-mode access).
    pub user: bool,
    /// The access is an instruction fetch (checked as a read; no NX here).
    pub fetch: bool,
}

impl Access {
    /// A supervisor (CPL 0–2) data read.
    pub const KERNEL_READ: Access = Access {
        write: false,
        user: false,
        fetch: false,
    };
    /// A supervisor data write.
    pub const KERNEL_WRITE: Access = Access {
        write: true,
        user: false,
        fetch: false,
    };
    /// A supervisor instruction fetch.
    pub const KERNEL_FETCH: Access = Access {
        write: false,
        user: false,
        fetch: true,
    };
    /// A user (CPL 3) data read.
    pub const USER_READ: Access = Access {
        write: false,
        user: true,
        fetch: false,
    };
    /// A user data write.
    pub const USER_WRITE: Access = Access {
        write: true,
        user: true,
        fetch: false,
    };
    /// A user instruction fetch.
    pub const USER_FETCH: Access = Access {
        write: false,
        user: true,
        fetch: true,
    };
}

/// The control-register state that governs the walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagingMode {
    /// CR3 (its low 12 bits are ignored by the walk).
    pub cr3: u32,
    /// CR0.WP: supervisor writes honour R/W.
    pub wp: bool,
    /// CR4.PSE: PDE.PS selects 4 MiB pages.
    pub pse: bool,
    /// CR4.PGE: G bits are honoured.
    pub pge: bool,
}

/// The outcome of a successful walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Physical address of the 4 KiB page (for a 4 MiB page: of the 4 KiB piece
    /// containing the linear address).
    pub phys_page: u32,
    /// `Some(physical base of the 4 MiB page)` for PSE pages.
    pub large: Option<u32>,
    /// Whether a write by an access of the same privilege would be allowed
    /// (R/W of both levels, U/S, CR0.WP).
    pub writable: bool,
    /// User-accessible (U/S set at both levels).
    pub user: bool,
    /// D bit of the final entry, after this walk's update.
    pub dirty: bool,
    /// G bit of the final entry, and CR4.PGE set (otherwise `false`).
    pub global: bool,
    /// Physical address of the PDE used.
    pub pde_addr: u32,
    /// Physical address of the PTE used (`None` for a 4 MiB page).
    pub pte_addr: Option<u32>,
}

/// Why a walk did not produce a translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// The guest takes #PF with this error code (CR2 = the linear address).
    PageFault {
        /// The #PF error code (see [`error_code`]).
        error_code: u32,
    },
    /// A paging-structure entry lies at a guest-physical address with no RAM.
    NoRam {
        /// Physical address of the entry.
        phys: u32,
    },
}

/// Entry bit: present.
pub const PTE_P: u32 = 1 << 0;
/// Entry bit: read/write.
pub const PTE_RW: u32 = 1 << 1;
/// Entry bit: user/supervisor.
pub const PTE_US: u32 = 1 << 2;
/// Entry bit: page-level write-through.
pub const PTE_PWT: u32 = 1 << 3;
/// Entry bit: page-level cache disable.
pub const PTE_PCD: u32 = 1 << 4;
/// Entry bit: accessed.
pub const PTE_A: u32 = 1 << 5;
/// Entry bit: dirty (final entries only).
pub const PTE_D: u32 = 1 << 6;
/// PDE bit: page size (4 MiB page when CR4.PSE = 1).
pub const PDE_PS: u32 = 1 << 7;
/// Entry bit: global (final entries only, with CR4.PGE).
pub const PTE_G: u32 = 1 << 8;
/// Address bits of an entry that points to a 4 KiB frame or page table.
pub const FRAME_MASK: u32 = 0xffff_f000;
/// Address bits of a 4 MiB PDE.
pub const LARGE_MASK: u32 = 0xffc0_0000;
/// Reserved bits of a present 4 MiB PDE with CR4.PSE = 1 on a CPU without
/// PSE-36 (bits 21:13) and without PAT (bit 12).
pub const PDE_4M_RESERVED: u32 = 0x003f_f000;
/// Reserved bits of a present PTE with CR4.PSE = 1 on a CPU without PAT (bit 7).
pub const PTE_RESERVED: u32 = 1 << 7;

/// #PF error-code bit: the fault was a protection (or reserved-bit) violation on
/// a present page.
pub const PF_P: u32 = 1 << 0;
/// #PF error-code bit: the access was a write.
pub const PF_W: u32 = 1 << 1;
/// #PF error-code bit: the access was made at CPL 3.
pub const PF_U: u32 = 1 << 2;
/// #PF error-code bit: a reserved bit was set in a paging-structure entry.
pub const PF_RSVD: u32 = 1 << 3;

/// The #PF error code for an access: P = `present` (a protection violation on a
/// present page rather than a not-present page), W/R = `access.write`,
/// U/S = `access.user`. RSVD and I/D are 0 (I/D is never reported without NX).
pub fn error_code(present: bool, access: Access) -> u32 {
    let mut code = 0;
    if present {
        code |= PF_P;
    }
    if access.write {
        code |= PF_W;
    }
    if access.user {
        code |= PF_U;
    }
    code
}

fn fault(present: bool, access: Access) -> WalkError {
    WalkError::PageFault {
        error_code: error_code(present, access),
    }
}

fn reserved_fault(access: Access) -> WalkError {
    WalkError::PageFault {
        error_code: error_code(true, access) | PF_RSVD,
    }
}

fn read(mem: &mut dyn PhysMem, phys: u32) -> Result<u32, WalkError> {
    mem.read_u32(phys).ok_or(WalkError::NoRam { phys })
}

/// Sets `bits` in the entry at `phys` (whose current value is `value`), writing
/// only if one of them is clear. Returns the new value.
fn set_bits(mem: &mut dyn PhysMem, phys: u32, value: u32, bits: u32) -> Result<u32, WalkError> {
    let new = value | bits;
    if new != value && !mem.write_u32(phys, new) {
        return Err(WalkError::NoRam { phys });
    }
    Ok(new)
}

/// Whether access rights `rw`/`us` (combined over the levels) allow `access`.
fn allowed(rw: bool, us: bool, wp: bool, access: Access) -> bool {
    if access.user && !us {
        return false;
    }
    if access.write && (access.user || wp) && !rw {
        return false;
    }
    true
}

/// Walks the guest page tables for `linear` as the hardware would for `access`,
/// updating A/D bits on success. See the module documentation for the details.
pub fn walk(
    mem: &mut dyn PhysMem,
    mode: &PagingMode,
    linear: u32,
    access: Access,
) -> Result<Translation, WalkError> {
    let pde_addr = (mode.cr3 & FRAME_MASK) | ((linear >> 22) << 2);
    let pde = read(mem, pde_addr)?;
    if pde & PTE_P == 0 {
        return Err(fault(false, access));
    }

    if mode.pse && pde & PDE_PS != 0 {
        if pde & PDE_4M_RESERVED != 0 {
            return Err(reserved_fault(access));
        }
        let rw = pde & PTE_RW != 0;
        let us = pde & PTE_US != 0;
        if !allowed(rw, us, mode.wp, access) {
            return Err(fault(true, access));
        }
        let bits = PTE_A | if access.write { PTE_D } else { 0 };
        let pde = set_bits(mem, pde_addr, pde, bits)?;
        let base = pde & LARGE_MASK;
        return Ok(Translation {
            phys_page: base | (linear & 0x003f_f000),
            large: Some(base),
            writable: allowed(
                rw,
                us,
                mode.wp,
                Access {
                    write: true,
                    ..access
                },
            ),
            user: us,
            dirty: pde & PTE_D != 0,
            global: mode.pge && pde & PTE_G != 0,
            pde_addr,
            pte_addr: None,
        });
    }

    let pte_addr = (pde & FRAME_MASK) | (((linear >> 12) & 0x3ff) << 2);
    let pte = read(mem, pte_addr)?;
    if pte & PTE_P == 0 {
        return Err(fault(false, access));
    }
    if mode.pse && pte & PTE_RESERVED != 0 {
        return Err(reserved_fault(access));
    }
    let rw = pde & PTE_RW != 0 && pte & PTE_RW != 0;
    let us = pde & PTE_US != 0 && pte & PTE_US != 0;
    if !allowed(rw, us, mode.wp, access) {
        return Err(fault(true, access));
    }
    set_bits(mem, pde_addr, pde, PTE_A)?;
    let bits = PTE_A | if access.write { PTE_D } else { 0 };
    let pte = set_bits(mem, pte_addr, pte, bits)?;
    Ok(Translation {
        phys_page: pte & FRAME_MASK,
        large: None,
        writable: allowed(
            rw,
            us,
            mode.wp,
            Access {
                write: true,
                ..access
            },
        ),
        user: us,
        dirty: pte & PTE_D != 0,
        global: mode.pge && pte & PTE_G != 0,
        pde_addr,
        pte_addr: Some(pte_addr),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Sparse RAM: dwords present only below `limit`; records every write.
    struct Mem {
        words: HashMap<u32, u32>,
        limit: u32,
        writes: Vec<(u32, u32)>,
    }

    impl Mem {
        fn new(limit: u32) -> Self {
            Mem {
                words: HashMap::new(),
                limit,
                writes: Vec::new(),
            }
        }
        fn set(&mut self, phys: u32, v: u32) {
            self.words.insert(phys, v);
        }
        fn get(&self, phys: u32) -> u32 {
            self.words.get(&phys).copied().unwrap_or(0)
        }
    }

    impl PhysMem for Mem {
        fn read_u32(&mut self, phys: u32) -> Option<u32> {
            (phys < self.limit).then(|| self.get(phys))
        }
        fn write_u32(&mut self, phys: u32, v: u32) -> bool {
            if phys >= self.limit {
                return false;
            }
            self.writes.push((phys, v));
            self.words.insert(phys, v);
            true
        }
    }

    const RAM: u32 = 0x0100_0000; // 16 MiB
    const PD: u32 = 0x1000;
    const PT: u32 = 0x2000;

    fn mode(wp: bool, pse: bool, pge: bool) -> PagingMode {
        PagingMode {
            cr3: PD,
            wp,
            pse,
            pge,
        }
    }

    fn pde_addr(linear: u32) -> u32 {
        PD + (linear >> 22) * 4
    }
    fn pte_addr(linear: u32) -> u32 {
        PT + ((linear >> 12) & 0x3ff) * 4
    }

    /// Maps `linear` to `frame` with a 4 KiB page through PT.
    fn map4k(mem: &mut Mem, linear: u32, frame: u32, pde_flags: u32, pte_flags: u32) {
        mem.set(pde_addr(linear), PT | pde_flags);
        mem.set(pte_addr(linear), frame | pte_flags);
    }

    const ALL_ACCESSES: [Access; 6] = [
        Access::KERNEL_READ,
        Access::KERNEL_WRITE,
        Access::KERNEL_FETCH,
        Access::USER_READ,
        Access::USER_WRITE,
        Access::USER_FETCH,
    ];

    fn pf(code: u32) -> Result<Translation, WalkError> {
        Err(WalkError::PageFault { error_code: code })
    }

    #[test]
    fn error_codes() {
        assert_eq!(error_code(false, Access::KERNEL_READ), 0);
        assert_eq!(error_code(false, Access::KERNEL_FETCH), 0);
        assert_eq!(error_code(false, Access::KERNEL_WRITE), 2);
        assert_eq!(error_code(false, Access::USER_READ), 4);
        assert_eq!(error_code(false, Access::USER_FETCH), 4);
        assert_eq!(error_code(false, Access::USER_WRITE), 6);
        assert_eq!(error_code(true, Access::KERNEL_READ), 1);
        assert_eq!(error_code(true, Access::KERNEL_WRITE), 3);
        assert_eq!(error_code(true, Access::USER_READ), 5);
        assert_eq!(error_code(true, Access::USER_WRITE), 7);
    }

    #[test]
    fn four_kib_page() {
        let mut mem = Mem::new(RAM);
        let lin = 0x0804_8123;
        map4k(
            &mut mem,
            lin,
            0x0053_7000,
            PTE_P | PTE_RW | PTE_US,
            PTE_P | PTE_RW | PTE_US,
        );
        let t = walk(&mut mem, &mode(true, true, true), lin, Access::USER_READ).unwrap();
        assert_eq!(
            t,
            Translation {
                phys_page: 0x0053_7000,
                large: None,
                writable: true,
                user: true,
                dirty: false,
                global: false,
                pde_addr: pde_addr(lin),
                pte_addr: Some(pte_addr(lin)),
            }
        );
        assert_eq!(pde_addr(lin), 0x1000 + 0x20 * 4);
        assert_eq!(pte_addr(lin), 0x2000 + 0x48 * 4);
    }

    #[test]
    fn four_mib_page() {
        let mut mem = Mem::new(RAM);
        let lin = 0xc012_3456;
        mem.set(pde_addr(lin), 0x0040_0000 | PTE_P | PTE_RW | PDE_PS | PTE_G);
        let t = walk(&mut mem, &mode(true, true, true), lin, Access::KERNEL_READ).unwrap();
        assert_eq!(
            t,
            Translation {
                phys_page: 0x0052_3000,
                large: Some(0x0040_0000),
                writable: true,
                user: false,
                dirty: false,
                global: true,
                pde_addr: pde_addr(lin),
                pte_addr: None,
            }
        );
        assert_eq!(
            mem.get(pde_addr(lin)),
            0x0040_0000 | PTE_P | PTE_RW | PDE_PS | PTE_G | PTE_A
        );
        // Without PGE, G is not reported.
        let t = walk(&mut mem, &mode(true, true, false), lin, Access::KERNEL_READ).unwrap();
        assert!(!t.global);
        // A write sets D in the 4 MiB PDE.
        let t = walk(&mut mem, &mode(true, true, true), lin, Access::KERNEL_WRITE).unwrap();
        assert!(t.dirty);
        assert_eq!(
            mem.get(pde_addr(lin)),
            0x0040_0000 | PTE_P | PTE_RW | PDE_PS | PTE_G | PTE_A | PTE_D
        );
    }

    #[test]
    fn four_mib_reserved_bits() {
        for bit in 12..=21 {
            let mut mem = Mem::new(RAM);
            let lin = 0x0080_0000;
            let pde = 0x0080_0000 | PTE_P | PTE_RW | PTE_US | PDE_PS | (1 << bit);
            mem.set(pde_addr(lin), pde);
            for access in ALL_ACCESSES {
                let code = error_code(true, access) | PF_RSVD;
                assert_eq!(
                    walk(&mut mem, &mode(true, true, false), lin, access),
                    pf(code)
                );
            }
            assert!(mem.writes.is_empty());
            assert_eq!(mem.get(pde_addr(lin)), pde);
        }
        // Bits 22..31 are address bits, not reserved.
        let mut mem = Mem::new(RAM);
        mem.set(pde_addr(0), 0xffc0_0000 | PTE_P | PDE_PS);
        let t = walk(
            &mut mem,
            &mode(true, true, false),
            0x3f_f123,
            Access::KERNEL_READ,
        )
        .unwrap();
        assert_eq!(t.phys_page, 0xffff_f000);
        assert_eq!(t.large, Some(0xffc0_0000));
    }

    #[test]
    fn pte_pat_bit_reserved_only_with_pse() {
        let mut mem = Mem::new(RAM);
        let lin = 0x1000;
        map4k(
            &mut mem,
            lin,
            0x5000,
            PTE_P | PTE_RW | PTE_US,
            PTE_P | PTE_RW | PTE_US | PTE_RESERVED,
        );
        assert_eq!(
            walk(&mut mem, &mode(false, true, false), lin, Access::USER_WRITE),
            pf(PF_RSVD | PF_P | PF_W | PF_U)
        );
        assert!(mem.writes.is_empty());
        // Without PSE there are no reserved bits.
        let t = walk(
            &mut mem,
            &mode(false, false, false),
            lin,
            Access::USER_WRITE,
        )
        .unwrap();
        assert_eq!(t.phys_page, 0x5000);
        // A not-present PTE with the bit set is just not present.
        mem.set(pte_addr(lin), 0x5000 | PTE_RESERVED);
        assert_eq!(
            walk(&mut mem, &mode(false, true, false), lin, Access::USER_READ),
            pf(PF_U)
        );
    }

    #[test]
    fn not_present_pde_and_pte() {
        let mut mem = Mem::new(RAM);
        let lin = 0x0040_5000;
        // PDE not present (even with other bits set).
        mem.set(pde_addr(lin), PT | PTE_RW | PTE_US | PTE_A);
        for access in ALL_ACCESSES {
            for m in [mode(false, false, false), mode(true, true, true)] {
                assert_eq!(
                    walk(&mut mem, &m, lin, access),
                    pf(error_code(false, access))
                );
            }
        }
        // PDE present (even supervisor-only and read-only), PTE not present.
        mem.set(pde_addr(lin), PT | PTE_P);
        mem.set(pte_addr(lin), 0x0030_0000 | PTE_RW | PTE_US);
        for access in ALL_ACCESSES {
            for m in [mode(false, false, false), mode(true, true, true)] {
                assert_eq!(
                    walk(&mut mem, &m, lin, access),
                    pf(error_code(false, access))
                );
            }
        }
        assert_eq!(
            walk(&mut mem, &mode(true, true, true), lin, Access::KERNEL_READ),
            pf(0)
        );
        assert_eq!(
            walk(&mut mem, &mode(true, true, true), lin, Access::KERNEL_WRITE),
            pf(2)
        );
        assert_eq!(
            walk(&mut mem, &mode(true, true, true), lin, Access::USER_READ),
            pf(4)
        );
        assert_eq!(
            walk(&mut mem, &mode(true, true, true), lin, Access::USER_WRITE),
            pf(6)
        );
        assert_eq!(
            walk(&mut mem, &mode(true, true, true), lin, Access::USER_FETCH),
            pf(4)
        );
        assert!(mem.writes.is_empty());
    }

    /// Reference for the permission table: straight from SDM §4.6.
    fn reference(
        pde: (bool, bool),
        pte: (bool, bool),
        wp: bool,
        access: Access,
    ) -> Result<(), u32> {
        let user_ok = pde.1 && pte.1;
        let rw_ok = pde.0 && pte.0;
        let code = 1 | (access.write as u32) << 1 | (access.user as u32) << 2;
        if access.user {
            if !user_ok || (access.write && !rw_ok) {
                return Err(code);
            }
        } else if access.write && wp && !rw_ok {
            return Err(code);
        }
        Ok(())
    }

    #[test]
    fn permission_table() {
        let mut combos = 0;
        for bits in 0..16u32 {
            let pde_rw = bits & 1 != 0;
            let pde_us = bits & 2 != 0;
            let pte_rw = bits & 4 != 0;
            let pte_us = bits & 8 != 0;
            for wp in [false, true] {
                for large in [false, true] {
                    if large && bits & 12 != 0 {
                        continue; // a 4 MiB page has one level: PTE bits unused
                    }
                    let (pte_rw, pte_us) = if large {
                        (true, true)
                    } else {
                        (pte_rw, pte_us)
                    };
                    for access in ALL_ACCESSES {
                        combos += 1;
                        let mut mem = Mem::new(RAM);
                        let lin = 0x8765_4321;
                        let f = |rw: bool, us: bool| {
                            PTE_P | if rw { PTE_RW } else { 0 } | if us { PTE_US } else { 0 }
                        };
                        let pde0;
                        if large {
                            pde0 = 0x00c0_0000 | f(pde_rw, pde_us) | PDE_PS;
                            mem.set(pde_addr(lin), pde0);
                        } else {
                            pde0 = PT | f(pde_rw, pde_us);
                            map4k(
                                &mut mem,
                                lin,
                                0x0077_7000,
                                f(pde_rw, pde_us),
                                f(pte_rw, pte_us),
                            );
                        }
                        let pte0 = mem.get(pte_addr(lin));
                        let m = mode(wp, true, false);
                        let expect = reference((pde_rw, pde_us), (pte_rw, pte_us), wp, access);
                        let got = walk(&mut mem, &m, lin, access);
                        let ctx = format!(
                            "pde rw={pde_rw} us={pde_us} pte rw={pte_rw} us={pte_us} wp={wp} large={large} {access:?}"
                        );
                        match expect {
                            Err(code) => {
                                assert_eq!(got, pf(code), "{ctx}");
                                assert!(mem.writes.is_empty(), "{ctx}");
                                assert_eq!(mem.get(pde_addr(lin)), pde0, "{ctx}");
                                assert_eq!(mem.get(pte_addr(lin)), pte0, "{ctx}");
                            }
                            Ok(()) => {
                                let t = got.unwrap_or_else(|e| panic!("{ctx}: {e:?}"));
                                let as_write = Access {
                                    write: true,
                                    ..access
                                };
                                let writable =
                                    reference((pde_rw, pde_us), (pte_rw, pte_us), wp, as_write)
                                        .is_ok();
                                assert_eq!(t.writable, writable, "{ctx}");
                                assert_eq!(t.user, pde_us && pte_us, "{ctx}");
                                assert_eq!(t.dirty, access.write, "{ctx}");
                                let d = if access.write { PTE_D } else { 0 };
                                if large {
                                    assert_eq!(t.phys_page, 0x00c0_0000 | 0x0025_4000, "{ctx}");
                                    assert_eq!(mem.get(pde_addr(lin)), pde0 | PTE_A | d, "{ctx}");
                                } else {
                                    assert_eq!(t.phys_page, 0x0077_7000, "{ctx}");
                                    assert_eq!(mem.get(pde_addr(lin)), pde0 | PTE_A, "{ctx}");
                                    assert_eq!(mem.get(pte_addr(lin)), pte0 | PTE_A | d, "{ctx}");
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(combos, (16 * 2 + 4 * 2) * 6);
    }

    #[test]
    fn accessed_and_dirty_bits() {
        let mut mem = Mem::new(RAM);
        let lin = 0x0000_3000;
        let flags = PTE_P | PTE_RW | PTE_US;
        map4k(&mut mem, lin, 0x9000, flags, flags);
        let m = mode(true, true, false);

        // A read sets A at both levels, not D.
        let t = walk(&mut mem, &m, lin, Access::USER_READ).unwrap();
        assert!(!t.dirty);
        assert_eq!(mem.get(pde_addr(lin)), PT | flags | PTE_A);
        assert_eq!(mem.get(pte_addr(lin)), 0x9000 | flags | PTE_A);
        assert_eq!(mem.writes.len(), 2);

        // A fetch is a read too; nothing left to write.
        walk(&mut mem, &m, lin, Access::KERNEL_FETCH).unwrap();
        assert_eq!(mem.writes.len(), 2);

        // A write sets D in the PTE only (one write: A was already set).
        let t = walk(&mut mem, &m, lin, Access::USER_WRITE).unwrap();
        assert!(t.dirty);
        assert_eq!(
            mem.writes,
            vec![
                (pde_addr(lin), PT | flags | PTE_A),
                (pte_addr(lin), 0x9000 | flags | PTE_A),
                (pte_addr(lin), 0x9000 | flags | PTE_A | PTE_D),
            ]
        );
        assert_eq!(mem.get(pde_addr(lin)) & PTE_D, 0);

        // Already dirty: nothing more written, dirty reported on reads too.
        let t = walk(&mut mem, &m, lin, Access::KERNEL_READ).unwrap();
        assert!(t.dirty);
        assert_eq!(mem.writes.len(), 3);

        // A first write on a fresh page sets A and D in a single write.
        let lin2 = 0x0000_4000;
        mem.set(pte_addr(lin2), 0xa000 | flags);
        walk(&mut mem, &m, lin2, Access::KERNEL_WRITE).unwrap();
        assert_eq!(mem.writes.len(), 4);
        assert_eq!(
            mem.writes[3],
            (pte_addr(lin2), 0xa000 | flags | PTE_A | PTE_D)
        );

        // A supervisor write to a read-only page with WP=0 succeeds and sets D.
        let lin3 = 0x0000_5000;
        mem.set(pte_addr(lin3), 0xb000 | PTE_P);
        let t = walk(
            &mut mem,
            &mode(false, true, false),
            lin3,
            Access::KERNEL_WRITE,
        )
        .unwrap();
        assert!(t.dirty && t.writable && !t.user);
        assert_eq!(mem.get(pte_addr(lin3)), 0xb000 | PTE_P | PTE_A | PTE_D);
    }

    #[test]
    fn faulting_walk_sets_no_bits() {
        let mut mem = Mem::new(RAM);
        let lin = 0x0000_6000;
        // Read-only user page: a user write faults after a full walk.
        map4k(&mut mem, lin, 0xc000, PTE_P | PTE_US, PTE_P | PTE_US);
        assert_eq!(
            walk(&mut mem, &mode(false, true, false), lin, Access::USER_WRITE),
            pf(7)
        );
        // Supervisor-only PDE: a user read faults.
        mem.set(pde_addr(lin), PT | PTE_P | PTE_RW);
        assert_eq!(
            walk(&mut mem, &mode(false, true, false), lin, Access::USER_READ),
            pf(5)
        );
        // Not-present PTE under a present PDE.
        mem.set(pde_addr(lin), PT | PTE_P | PTE_RW | PTE_US);
        mem.set(pte_addr(lin), 0);
        assert_eq!(
            walk(
                &mut mem,
                &mode(false, true, false),
                lin,
                Access::KERNEL_WRITE
            ),
            pf(2)
        );
        assert!(mem.writes.is_empty());
    }

    #[test]
    fn pse_disabled_ignores_ps() {
        let mut mem = Mem::new(RAM);
        let lin = 0x0040_1000;
        // PDE with PS set, pointing (as a page table) at PT.
        let flags = PTE_P | PTE_RW | PTE_US;
        mem.set(pde_addr(lin), PT | flags | PDE_PS | PTE_D);
        mem.set(pte_addr(lin), 0x000d_e000 | flags);
        let t = walk(&mut mem, &mode(true, false, false), lin, Access::USER_WRITE).unwrap();
        assert_eq!(t.large, None);
        assert_eq!(t.phys_page, 0x000d_e000);
        assert_eq!(t.pte_addr, Some(pte_addr(lin)));
        // The PDE gets A only; its PS and bit 6 stay as they were.
        assert_eq!(mem.get(pde_addr(lin)), PT | flags | PDE_PS | PTE_D | PTE_A);
        // With PSE, the same PDE is a 4 MiB PDE whose bit 13 (from PT = 0x2000)
        // is reserved.
        assert_eq!(
            walk(&mut mem, &mode(true, true, false), lin, Access::USER_READ),
            pf(PF_RSVD | PF_P | PF_U)
        );
        // A page table at a 4 MiB-aligned address: with PSE off it is a table,
        // with PSE on the PDE maps the 4 MiB page there.
        let table = 0x0040_0000;
        mem.set(pde_addr(lin), table | flags | PDE_PS);
        mem.set(table + ((lin >> 12) & 0x3ff) * 4, 0x000f_0000 | flags);
        let t = walk(&mut mem, &mode(true, false, false), lin, Access::USER_READ).unwrap();
        assert_eq!((t.large, t.phys_page), (None, 0x000f_0000));
        let t = walk(&mut mem, &mode(true, true, false), lin, Access::USER_READ).unwrap();
        assert_eq!((t.large, t.phys_page), (Some(table), 0x0040_1000));
    }

    #[test]
    fn top_of_address_space() {
        let mut mem = Mem::new(RAM);
        let lin = 0xffff_ffff;
        let flags = PTE_P | PTE_RW;
        map4k(&mut mem, lin, 0x00ab_c000, flags, flags | PTE_G);
        assert_eq!(pde_addr(lin), PD + 0xffc);
        assert_eq!(pte_addr(lin), PT + 0xffc);
        let t = walk(&mut mem, &mode(true, true, true), lin, Access::KERNEL_WRITE).unwrap();
        assert_eq!(t.phys_page, 0x00ab_c000);
        assert_eq!(t.pde_addr, PD + 0xffc);
        assert_eq!(t.pte_addr, Some(PT + 0xffc));
        assert!(t.global && t.dirty);
        // And as a 4 MiB page.
        mem.set(pde_addr(lin), 0x00c0_0000 | flags | PDE_PS);
        let t = walk(&mut mem, &mode(true, true, true), lin, Access::KERNEL_READ).unwrap();
        assert_eq!(t.phys_page, 0x00ff_f000);
        assert_eq!(t.large, Some(0x00c0_0000));
    }

    #[test]
    fn cr3_low_bits_ignored() {
        let mut mem = Mem::new(RAM);
        let lin = 0x0000_7000;
        let flags = PTE_P | PTE_RW | PTE_US;
        map4k(&mut mem, lin, 0xe000, flags, flags);
        let m = PagingMode {
            cr3: PD | 0xfff,
            wp: true,
            pse: true,
            pge: false,
        };
        let t = walk(&mut mem, &m, lin, Access::USER_READ).unwrap();
        assert_eq!(t.pde_addr, PD);
        assert_eq!(t.phys_page, 0xe000);
        // PDE/PTE low bits (PWT, PCD, available bits) don't disturb the addresses.
        mem.set(pde_addr(lin), PT | flags | PTE_PWT | PTE_PCD | 0xe00);
        mem.set(pte_addr(lin), 0xe000 | flags | 0xe00);
        let t = walk(&mut mem, &m, lin, Access::USER_READ).unwrap();
        assert_eq!(t.pte_addr, Some(pte_addr(lin)));
        assert_eq!(t.phys_page, 0xe000);
    }

    #[test]
    fn tables_outside_ram() {
        // Page directory outside RAM.
        let mut mem = Mem::new(RAM);
        let m = PagingMode {
            cr3: 0x4000_0000,
            wp: true,
            pse: true,
            pge: false,
        };
        assert_eq!(
            walk(&mut mem, &m, 0x0040_0000, Access::KERNEL_READ),
            Err(WalkError::NoRam { phys: 0x4000_0004 })
        );
        // Page table outside RAM.
        let lin = 0x0000_8000;
        mem.set(pde_addr(lin), 0x8000_0000 | PTE_P | PTE_RW);
        assert_eq!(
            walk(&mut mem, &mode(true, true, false), lin, Access::KERNEL_READ),
            Err(WalkError::NoRam {
                phys: 0x8000_0000 + 8 * 4
            })
        );
        assert!(mem.writes.is_empty());
        // The final page may lie outside RAM (MMIO): the walk doesn't touch it.
        mem.set(pde_addr(lin), PT | PTE_P | PTE_RW);
        mem.set(pte_addr(lin), 0xfee0_0000 | PTE_P | PTE_RW);
        let t = walk(
            &mut mem,
            &mode(true, true, false),
            lin,
            Access::KERNEL_WRITE,
        )
        .unwrap();
        assert_eq!(t.phys_page, 0xfee0_0000);
    }
}
