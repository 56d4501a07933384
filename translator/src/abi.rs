//! The contract between translated code and the VMM: the vCPU context block that
//! translated code addresses through `r15`, the host register roles, and the exit
//! reasons.
//!
//! Host register roles while translated code runs (64-bit mode):
//!
//! | host | holds |
//! |---|---|
//! | rax, rcx, rdx, rbx, rbp, rsi, rdi | guest eax, ecx, edx, ebx, ebp, esi, edi (upper halves zero) |
//! | r8  | guest esp (the host rsp stays a real host stack) |
//! | r9–r12 | scratch for translation sequences |
//! | r13 | the poll page: every unit starts with a load from it; the VMM revokes it to make translated code exit (interrupts, a stop request) without any flag-changing check |
//! | r14 | the indirect-branch lookup table |
//! | r15 | this `VcpuCtx` |
//! | rflags | guest arithmetic flags and DF (IF, IOPL, AC, TF live in `VcpuCtx`) |
//!
//! Guest memory operands are `%gs:`-relative with 32-bit address size; the host GS
//! base is the base of the current view, so a guest address can never leave it.

use core::mem::offset_of;

/// Why translated code returned to the VMM.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// A direct branch whose target is not chained yet. `exit_arg` = slot id, `eip` = target.
    Branch = 1,
    /// An indirect branch missed the lookup table. `eip` = target.
    Indirect = 2,
    /// A callout: `exit_arg` = site id; `resume` = host address to continue at.
    Callout = 3,
    /// A host signal inside translated code; `fault` describes it.
    Fault = 4,
}

impl ExitReason {
    /// Decodes the raw value stored by translated code.
    pub fn from_raw(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Branch),
            2 => Some(Self::Indirect),
            3 => Some(Self::Callout),
            4 => Some(Self::Fault),
            _ => None,
        }
    }
}

/// What the signal handler saw when a host signal hit translated code.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultRecord {
    /// Host instruction pointer of the faulting instruction.
    pub host_rip: u64,
    /// Faulting address (`si_addr`) for SIGSEGV/SIGBUS.
    pub addr: u64,
    /// Signal number.
    pub signo: u32,
    /// `si_code`.
    pub code: i32,
    /// Hardware trap number from the ucontext (13 = #GP, 14 = #PF, ...).
    pub trapno: u32,
    /// Page-fault error code from the ucontext.
    pub err: u32,
    /// Host rcx, rsi, rdi at the fault: string instructions keep biased pointers there.
    pub rcx: u64,
}

/// The block translated code works on. One per vCPU, at a stable address.
#[repr(C, align(64))]
pub struct VcpuCtx {
    /// Guest general registers, indexed by x86 register number (esp = 4).
    pub gpr: [u32; 8],
    /// Guest instruction pointer at the last exit (for branch exits: the target).
    pub eip: u32,
    /// Raw `ExitReason`.
    pub exit_reason: u32,
    /// Slot or site id for branch and callout exits.
    pub exit_arg: u32,
    /// Virtual interrupt flag (0 or 1): cli/sti write it inline.
    pub vif: u8,
    /// 1 while the VMM knows of an interrupt the guest would take with IF set:
    /// translated sti/popf that set IF leave for it.
    pub irq_pending: u8,
    _pad0: [u8; 2],
    /// System flags other than IF and the arithmetic flags: TF, IOPL, NT, RF, AC,
    /// ID (they never reach host rflags: the host would act on them).
    pub sys_flags: u32,
    /// The eip after the last inline `sti`: an interrupt noticed at a unit entry
    /// there waits one instruction (the sti shadow). u32::MAX: none.
    pub shadow_eip: u32,
    /// Host rflags image: the guest's arithmetic flags and DF.
    pub rflags: u64,
    /// Host address to continue at after a callout.
    pub resume: u64,
    /// Host rsp inside `enter`, restored on every exit.
    pub host_rsp: u64,
    /// Host GS base: the base of the view the guest runs against.
    pub gs_base: u64,
    /// `-gs_base`: string instructions bias esi/edi by the view base and back.
    pub neg_gs_base: u64,
    /// Address of the poll page (loaded into r13).
    pub poll_page: u64,
    /// Address of the indirect lookup table (loaded into r14).
    pub lookup_table: u64,
    /// Host MXCSR saved while the guest runs.
    pub host_mxcsr: u32,
    /// Guest MXCSR saved while the VMM runs.
    pub guest_mxcsr: u32,
    /// Spill slots for translation sequences that need a legacy register.
    pub scratch: [u64; 4],
    /// Guest xmm0–xmm7 while the VMM runs (Rust code clobbers xmm registers).
    pub xmm: [[u64; 2]; 8],
    /// Written by the signal handler.
    pub fault: FaultRecord,
    /// The current address space's code map, for the current privilege: 1024
    /// leaf addresses, one per 4 MiB region; entry `(linear >> 12) & 0x3ff` of a
    /// leaf holds the frame number + 1 that page maps, for pages the VMM has
    /// checked (0: unknown). The checked entry of a unit compares its own page's
    /// entry with its frame (`bt86_shadow_mmu::code_map`).
    pub code_map: u64,
    /// Segment bases es, cs, ss, ds, fs, gs (copied from the vCPU before entry).
    pub seg_base: [u32; 6],
    /// Their selectors (copied before entry): translated `push`/`mov` from a
    /// segment register read them.
    pub seg_sel: [u16; 6],
    /// When loading a segment register needs no VMM (`translate::segreg`).
    pub seg_reload: SegReload,
    /// Where translated `fxsave`/`fnsave`/`fnstenv` store the host's image before
    /// a scrubbed copy goes to the guest (`translate::fpu`).
    pub fpu_image: FpuImage,
    /// The guest's CPUID answers that translated `cpuid` reads inline
    /// (`translate::cpuid`): one row per leaf 0–15 and 0x8000_0000–0x8000_000f.
    pub cpuid: CpuidTable,
    /// The guest's CR2 (copied before entry): translated `mov %cr2, r32` at CPL 0
    /// reads it (`translate::special`). Only the VMM writes CR2 (a #PF it
    /// delivers, a guest `mov` to CR2 through a callout).
    pub cr2: u32,
}

/// Rows of `VcpuCtx::cpuid`: leaf `l` (basic or extended, low nibble `n`) is row
/// `2n + (l >> 31)`, 32 bytes each: eax, ebx, ecx, edx, then a word that is
/// non-zero when the row answers the leaf whatever ecx holds (0: the VMM answers,
/// for leaves with subleaves).
#[repr(C, align(32))]
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuidTable(pub [[u32; 8]; 32]);

impl CpuidTable {
    /// The row holding `leaf`, if the table has one.
    pub fn row(leaf: u32) -> Option<usize> {
        (leaf & 0x7fff_fff0 == 0).then(|| (leaf & 0xf) as usize * 2 + (leaf >> 31) as usize)
    }

    /// A table answering from `cpuid(leaf)` (subleaf 0), leaving the leaves in
    /// `by_subleaf` to the VMM.
    pub fn build(cpuid: impl Fn(u32) -> [u32; 4], by_subleaf: &[u32]) -> Self {
        let mut t = Self::default();
        for leaf in (0..16).chain(0x8000_0000..0x8000_0010) {
            let row = Self::row(leaf).expect("in the table");
            let [a, b, c, d] = cpuid(leaf);
            t.0[row] = [a, b, c, d, u32::from(!by_subleaf.contains(&leaf)), 0, 0, 0];
        }
        t
    }
}

/// What a translated `mov`/`pop` to DS, ES, FS or GS at CPL 0 checks to load a
/// selector without the VMM (`translate::segreg`): the register holds a flat
/// data segment now, and the new selector is one the VMM has loaded before as a
/// flat data segment a CPL-0 load accepts, whose GDT descriptor still reads as
/// it did then (accessed bit set). The translation mode then stays the same;
/// the new selector goes into `seg_sel`, and the VMM rebuilds the register's
/// cache from the same descriptor after the exit. Negated values keep the
/// comparisons flag-free (`lea`, `jrcxz`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SegReload {
    /// Per segment register: 0 when it holds a flat data segment (base 0, limit
    /// 4 GiB, writable, expand-up, present), else 1.
    pub not_flat: [u64; 6],
    /// Known flat selectors, by the selector's low byte.
    pub known: [KnownSelector; 256],
    /// The GDTR (base << 16 | limit) they were read through: the VMM forgets
    /// them when it changes.
    pub gdtr: u64,
}

/// A flat data selector and the descriptor it was loaded from.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KnownSelector {
    /// `-selector`, or `SegReload::NONE`.
    pub neg_sel: u64,
    /// `-descriptor` (its 8 bytes as a little-endian u64, accessed bit set).
    pub neg_desc: u64,
    /// Linear address of the descriptor in the GDT.
    pub desc_addr: u32,
    _pad: u32,
}

// Translated code scales the selector's low byte by 24 (`translate::segreg`).
const _: () = assert!(core::mem::size_of::<KnownSelector>() == 24);

impl KnownSelector {
    pub fn new(selector: u16, desc: u64, desc_addr: u32) -> Self {
        Self { neg_sel: u64::from(selector).wrapping_neg(), neg_desc: desc.wrapping_neg(), desc_addr, _pad: 0 }
    }

    /// The descriptor, if this entry is `selector`'s.
    pub fn descriptor_of(&self, selector: u16) -> Option<u64> {
        (self.neg_sel == u64::from(selector).wrapping_neg()).then(|| self.neg_desc.wrapping_neg())
    }
}

impl SegReload {
    /// A `neg_sel` no 16-bit selector cancels.
    pub const NONE: u64 = 1 << 40;

    /// Forgets every known selector (the GDT moved).
    pub fn forget(&mut self) {
        self.known = Self::default().known;
    }
}

impl Default for SegReload {
    fn default() -> Self {
        let none = KnownSelector { neg_sel: Self::NONE, neg_desc: 0, desc_addr: 0, _pad: 0 };
        Self { not_flat: [1; 6], known: [none; 256], gdtr: 0 }
    }
}

/// A 512-byte, 16-byte-aligned buffer for an `fxsave` image.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug)]
pub struct FpuImage(pub [u8; 512]);

impl Default for VcpuCtx {
    fn default() -> Self {
        Self {
            gpr: [0; 8],
            eip: 0,
            exit_reason: 0,
            exit_arg: 0,
            vif: 0,
            irq_pending: 0,
            _pad0: [0; 2],
            sys_flags: 0,
            shadow_eip: u32::MAX,
            rflags: 0x2,
            resume: 0,
            host_rsp: 0,
            gs_base: 0,
            neg_gs_base: 0,
            poll_page: 0,
            lookup_table: 0,
            host_mxcsr: 0x1f80,
            guest_mxcsr: 0x1f80,
            scratch: [0; 4],
            xmm: [[0; 2]; 8],
            fault: FaultRecord::default(),
            code_map: 0,
            seg_base: [0; 6],
            seg_sel: [0; 6],
            seg_reload: SegReload::default(),
            fpu_image: FpuImage([0; 512]),
            cpuid: CpuidTable::default(),
            cr2: 0,
        }
    }
}

/// Byte offsets into `VcpuCtx`, as translated code addresses them.
pub mod off {
    use super::*;
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    const fn o(x: usize) -> i32 {
        x as i32
    }
    pub const GPR: i32 = o(offset_of!(VcpuCtx, gpr));
    pub const EIP: i32 = o(offset_of!(VcpuCtx, eip));
    pub const EXIT_REASON: i32 = o(offset_of!(VcpuCtx, exit_reason));
    pub const EXIT_ARG: i32 = o(offset_of!(VcpuCtx, exit_arg));
    pub const VIF: i32 = o(offset_of!(VcpuCtx, vif));
    pub const IRQ_PENDING: i32 = o(offset_of!(VcpuCtx, irq_pending));
    pub const SYS_FLAGS: i32 = o(offset_of!(VcpuCtx, sys_flags));
    pub const SHADOW_EIP: i32 = o(offset_of!(VcpuCtx, shadow_eip));
    pub const RFLAGS: i32 = o(offset_of!(VcpuCtx, rflags));
    pub const RESUME: i32 = o(offset_of!(VcpuCtx, resume));
    pub const HOST_RSP: i32 = o(offset_of!(VcpuCtx, host_rsp));
    pub const GS_BASE: i32 = o(offset_of!(VcpuCtx, gs_base));
    pub const NEG_GS_BASE: i32 = o(offset_of!(VcpuCtx, neg_gs_base));
    pub const POLL_PAGE: i32 = o(offset_of!(VcpuCtx, poll_page));
    pub const LOOKUP_TABLE: i32 = o(offset_of!(VcpuCtx, lookup_table));
    pub const HOST_MXCSR: i32 = o(offset_of!(VcpuCtx, host_mxcsr));
    pub const GUEST_MXCSR: i32 = o(offset_of!(VcpuCtx, guest_mxcsr));
    pub const SCRATCH: i32 = o(offset_of!(VcpuCtx, scratch));
    pub const XMM: i32 = o(offset_of!(VcpuCtx, xmm));
    pub const FPU_IMAGE: i32 = o(offset_of!(VcpuCtx, fpu_image));
    pub const SEG_BASE: i32 = o(offset_of!(VcpuCtx, seg_base));
    pub const SEG_SEL: i32 = o(offset_of!(VcpuCtx, seg_sel));
    pub const SEG_NOT_FLAT: i32 = o(offset_of!(VcpuCtx, seg_reload) + offset_of!(SegReload, not_flat));
    const KNOWN: usize = offset_of!(VcpuCtx, seg_reload) + offset_of!(SegReload, known);
    pub const KNOWN_NEG_SEL: i32 = o(KNOWN + offset_of!(KnownSelector, neg_sel));
    pub const KNOWN_NEG_DESC: i32 = o(KNOWN + offset_of!(KnownSelector, neg_desc));
    pub const KNOWN_DESC_ADDR: i32 = o(KNOWN + offset_of!(KnownSelector, desc_addr));
    pub const CODE_MAP: i32 = o(offset_of!(VcpuCtx, code_map));
    pub const CPUID: i32 = o(offset_of!(VcpuCtx, cpuid));
    pub const CR2: i32 = o(offset_of!(VcpuCtx, cr2));
}

/// Guest arithmetic flags kept in host rflags: CF PF AF ZF SF DF OF.
pub const ARITH_FLAGS: u32 = 0x0cd5;
/// EFLAGS.IF.
pub const FLAG_IF: u32 = 1 << 9;
