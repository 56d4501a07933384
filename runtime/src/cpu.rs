//! The virtual CPU state that lives outside translated code: segment registers with
//! their descriptor caches, descriptor-table registers, control and debug
//! registers, the system flags, MSRs. The general registers, eip, the arithmetic
//! flags and the virtual IF live in the translator's `VcpuCtx`.

use crate::cpu_model::CpuModel;
use crate::emulate::MsrFile;
use bt86_translator::Mode;

/// Segment register indices, in x86 encoding order.
pub mod sreg {
    pub const ES: usize = 0;
    pub const CS: usize = 1;
    pub const SS: usize = 2;
    pub const DS: usize = 3;
    pub const FS: usize = 4;
    pub const GS: usize = 5;
}

/// A segment register: the visible selector and the hidden descriptor cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    pub selector: u16,
    pub base: u32,
    /// Limit in bytes (granularity already applied).
    pub limit: u32,
    /// Bits 8..24 of the descriptor's high dword (type, S, DPL, P, AVL, L, D/B, G)
    /// shifted down by 8: `attrs & 0xf` = type, bit 4 = S, bits 5-6 = DPL, bit 7 = P,
    /// bit 14 = D/B, bit 15 = G.
    pub attrs: u16,
}

impl Segment {
    /// A flat 4 GiB segment with the given selector and type (0x9b code, 0x93 data).
    pub fn flat(selector: u16, type_byte: u8) -> Self {
        Self { selector, base: 0, limit: 0xffff_ffff, attrs: u16::from(type_byte) | 0xc000 }
    }
}

/// GDTR/IDTR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableReg {
    pub base: u32,
    pub limit: u16,
}

/// EFLAGS bits kept outside host rflags.
pub mod eflags {
    pub const TF: u32 = 1 << 8;
    pub const IF: u32 = 1 << 9;
    pub const DF: u32 = 1 << 10;
    pub const IOPL: u32 = 3 << 12;
    pub const NT: u32 = 1 << 14;
    pub const RF: u32 = 1 << 16;
    pub const VM: u32 = 1 << 17;
    pub const AC: u32 = 1 << 18;
    pub const ID: u32 = 1 << 21;
    /// Bit 1 always reads as one.
    pub const FIXED: u32 = 1 << 1;
}

/// CR4.TSD: rdtsc only at CPL 0.
const CR4_TSD: u32 = 1 << 2;

/// CR0 bits.
pub mod cr0 {
    pub const PE: u32 = 1 << 0;
    pub const MP: u32 = 1 << 1;
    pub const EM: u32 = 1 << 2;
    pub const TS: u32 = 1 << 3;
    pub const ET: u32 = 1 << 4;
    pub const NE: u32 = 1 << 5;
    pub const WP: u32 = 1 << 16;
    pub const AM: u32 = 1 << 18;
    pub const NW: u32 = 1 << 29;
    pub const CD: u32 = 1 << 30;
    pub const PG: u32 = 1 << 31;
}

/// The system state of the virtual CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cpu {
    /// es, cs, ss, ds, fs, gs (see `sreg`).
    pub seg: [Segment; 6],
    pub gdtr: TableReg,
    pub idtr: TableReg,
    pub ldtr: Segment,
    pub tr: Segment,
    pub cr0: u32,
    pub cr2: u32,
    pub cr3: u32,
    pub cr4: u32,
    pub dr: [u32; 8],
    pub sysenter_cs: u32,
    pub sysenter_esp: u32,
    pub sysenter_eip: u32,
    /// Added to the host TSC for the guest's view (set by a TSC MSR write).
    pub tsc_offset: i64,
    /// The guest is calibrating its TSC and the platform's time runs clipped:
    /// `rdtsc` is emulated to follow it (`GuestClock`).
    pub tsc_calibrating: bool,
    /// What the CPU reports itself to be (CPUID) and the instructions it has.
    pub model: &'static CpuModel,
    /// MSRs that hold what the guest wrote to them.
    pub msrs: MsrFile,
}

impl Default for Cpu {
    fn default() -> Self {
        Self {
            seg: [Segment::default(); 6],
            gdtr: TableReg::default(),
            idtr: TableReg::default(),
            ldtr: Segment::default(),
            tr: Segment::default(),
            cr0: cr0::PE | cr0::ET,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            dr: [0, 0, 0, 0, 0, 0, 0xffff_0ff0, 0x400],
            sysenter_cs: 0,
            sysenter_esp: 0,
            sysenter_eip: 0,
            tsc_offset: 0,
            tsc_calibrating: false,
            model: CpuModel::host(),
            msrs: MsrFile::default(),
        }
    }
}

impl Cpu {
    /// Flat 32-bit protected mode at CPL 0 with the given code and data selectors,
    /// as a multiboot loader leaves the machine.
    pub fn flat(code_selector: u16, data_selector: u16) -> Self {
        let mut seg = [Segment::flat(data_selector, 0x93); 6];
        seg[sreg::CS] = Segment::flat(code_selector, 0x9b);
        Self { seg, ..Self::default() }
    }

    /// Current privilege level: the RPL of CS in protected mode.
    pub fn cpl(&self) -> u8 {
        (self.seg[sreg::CS].selector & 3) as u8
    }

    /// The segment bases, es..gs, as translated code reads them from the context.
    pub fn seg_bases(&self) -> [u32; 6] {
        self.seg.map(|s| s.base)
    }

    /// The state [`Cpu::mode`] is computed from: equal inputs, equal modes (a
    /// cheap test before the computation, for callouts that seldom change it).
    pub fn mode_inputs(&self) -> ModeInputs {
        ModeInputs {
            seg: self.seg,
            cr0: self.cr0,
            cr4: self.cr4,
            tsc_offset: self.tsc_offset,
            tsc_calibrating: self.tsc_calibrating,
        }
    }

    /// What translated code depends on.
    pub fn mode(&self) -> Mode {
        // From the fields themselves: copying them into `ModeInputs` first cost
        // as much as the computation, on every dispatch.
        mode_of(&self.seg, self.cr0, self.cr4, self.tsc_offset, self.tsc_calibrating)
    }
}

/// What [`Cpu::mode`] depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeInputs {
    seg: [Segment; 6],
    cr0: u32,
    cr4: u32,
    tsc_offset: i64,
    tsc_calibrating: bool,
}

impl ModeInputs {
    /// The translation mode of a CPU in this state.
    pub fn mode(&self) -> Mode {
        mode_of(&self.seg, self.cr0, self.cr4, self.tsc_offset, self.tsc_calibrating)
    }
}

/// The translation mode of a CPU with these segments, control registers and
/// TSC settings.
fn mode_of(seg: &[Segment; 6], cr0: u32, cr4: u32, tsc_offset: i64, tsc_calibrating: bool) -> Mode {
    let cpl = (seg[sreg::CS].selector & 3) as u8;
    let mut seg_based = 0;
    for (i, s) in seg.iter().enumerate() {
        if s.base != 0 {
            seg_based |= 1 << i;
        }
    }
    use bt86_translator::fpu_mode;
    let mut fpu = 0;
    for (bit, on) in [
        (fpu_mode::EM, cr0 & cr0::EM != 0),
        (fpu_mode::TS, cr0 & cr0::TS != 0),
        (fpu_mode::MP, cr0 & cr0::MP != 0),
        (fpu_mode::OSFXSR, cr4 & (1 << 9) != 0),
    ] {
        if on {
            fpu |= bit;
        }
    }
    // Checked: usable segments other than writable data expanding up to 4 GiB
    // (limits, expand-down, read-only data, code read through a prefix).
    let mut seg_checked = 0;
    for (i, s) in seg.iter().enumerate() {
        let flat_data = s.attrs & 0x1e == 0x12 && s.limit == 0xffff_ffff;
        if s.attrs & 0x80 != 0 && !flat_data && i != sreg::CS {
            seg_checked |= 1 << i;
        }
    }
    if seg[sreg::CS].limit != 0xffff_ffff || seg[sreg::CS].attrs & 0x2 == 0 {
        // Data read through cs: needs a readable code segment within its limit.
        seg_checked |= 1 << sreg::CS;
    }
    let ss = seg[sreg::SS];
    let irregular_stack = ss.base != 0 || ss.attrs & (1 << 14) == 0 || seg_checked & (1 << sreg::SS) != 0;
    let tsd = cr4 & CR4_TSD != 0 && cpl > 0;
    let native_tsc = tsc_offset == 0 && !tsd && !tsc_calibrating;
    let mut seg_unusable = 0;
    for r in [sreg::ES, sreg::DS, sreg::FS, sreg::GS] {
        if seg[r].attrs & 0x80 == 0 {
            seg_unusable |= 1 << r;
        }
    }
    Mode { seg_based, cpl, fpu, irregular_stack, native_tsc, seg_unusable, seg_checked }
}
