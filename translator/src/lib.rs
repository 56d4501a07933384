//! The bt86 binary translator: 32-bit guest x86 code in, x86-64 host code out.
//!
//! Guest instructions are decoded with iced-x86 into *units* (a run of guest
//! instructions ending at a control transfer, a page end or a size limit) and
//! emitted as host code into an executable code cache. Units run natively:
//! guest registers live in host registers, guest memory is reached through
//! `%gs`-relative 32-bit addresses inside a view, and guest arithmetic flags live in
//! host rflags. Direct branches between units are chained (patched to jump straight
//! to their target); indirect branches go through a lookup table. Sensitive
//! instructions exit to the VMM as *callouts*.
//!
//! Code map:
//! - `abi`: the vCPU context block, host register roles, exit reasons.
//! - `world`: the world switch (enter/exit stubs) and the indirect-branch lookup stub.
//! - `translate`: the unit-building loop and one module per instruction family.
//! - `cache`: units, slots (chaining), invalidation, side tables.
//! - `lookup`: the indirect-branch lookup tables, one per (address space, mode).
//! - `exec_mem`: the W^X code cache memory and the poll page.
//! - `isa`: the guest CPU's instruction set, the allowlist of what may run IDENT.
//! - `emit`: a small assembler over iced's encoder.
//! - `semantics`: pure guest semantics for the instructions the VMM emulates
//!   (BCD adjustments, arpl), shared with the runtime.

pub mod abi;
pub mod cache;
pub mod emit;
pub mod exec_mem;
pub mod isa;
pub mod lookup;
pub mod semantics;
pub mod trace;
pub mod translate;
pub mod world;

pub use isa::Isa;
pub use cache::{Translated, Translator, TranslatorError, TranslatorStats, UnitKey};
pub use translate::{CalloutSite, Fixup, GuestCode};

use iced_x86::Register;

/// What a callout asks the VMM to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CalloutKind {
    /// Emulate the instruction (sensitive, or absent from 64-bit mode).
    Emulate,
    /// Raise #UD at the instruction.
    RaiseUd,
    /// Raise #DE at the instruction (a division by a zero register).
    RaiseDe,
    /// Check the segment limits and types of the instruction's memory accesses
    /// (raising #GP/#SS if one fails); the instruction's own code follows the
    /// callout, which leaves the guest state as it was.
    SegmentCheck,
    /// Raise #GP(0) at the instruction (one longer than 15 bytes, or one that
    /// accesses memory through an unusable segment).
    RaiseGp,
    /// A store to guest page tables, performed by the VMM (adaptive translation of
    /// an instruction that kept faulting on traced pages).
    TracedWrite,
    /// Raise #NM (device not available) at the instruction: x87/MMX/SSE use while
    /// CR0.TS or CR0.EM says so.
    RaiseNm,
    /// The instruction straddles the end of fetchable guest memory.
    FetchFault,
    /// A form bt86 does not translate: stop with a clear message.
    Unsupported,
    /// Nothing to emulate: an instruction boundary (after the site's
    /// instruction) where the VMM delivers a pending interrupt.
    Boundary,
    /// Check that the pages the instruction accesses are mapped for it in the
    /// current view, mapping them or raising the guest's #PF as a host fault
    /// would; the instruction's own code follows the callout, which leaves the
    /// guest state as it was (adaptive translation of an access that kept
    /// taking true page faults: a callout costs a fraction of a host signal).
    PageProbe,
}

/// The translation-relevant part of the vCPU mode: what translated code bakes in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Mode {
    /// Which segments (bit i: es, cs, ss, ds, fs, gs) have a non-zero base. The
    /// bases themselves are read from the context at run time (`VcpuCtx::seg_base`),
    /// so code using a segment serves every base it takes (Linux's per-process
    /// TLS in %gs, the per-CPU %fs), and only flat versus based is baked in.
    pub seg_based: u8,
    /// Current privilege level.
    pub cpl: u8,
    /// FPU/SSE availability as CR0 and CR4 set it (`fpu_mode` bits).
    pub fpu: u8,
    /// SS has a non-zero base or is a 16-bit stack: translated code addresses the
    /// stack as flat 32-bit `%gs:(r8d)`, so implicit stack accesses are emulated
    /// by the VMM instead.
    pub irregular_stack: bool,
    /// `rdtsc` may run natively: the guest's TSC is the host's (no offset) and
    /// CR4.TSD does not forbid it here.
    pub native_tsc: bool,
    /// Which data segments (bit i as in `seg_based`: es, ds, fs, gs) are unusable
    /// (loaded with a null selector): a memory access through one is #GP(0).
    pub seg_unusable: u8,
    /// Which segments (bit i as in `seg_based`) need their limit or type checked
    /// on a memory access (not writable data expanding up to 4 GiB): the
    /// instructions that access memory through one get a `SegmentCheck` first.
    pub seg_checked: u8,
}

/// Bits of `Mode::fpu`.
pub mod fpu_mode {
    /// CR0.EM: x87 emulation requested (x87 → #NM, MMX/SSE → #UD).
    pub const EM: u8 = 1 << 0;
    /// CR0.TS: task switched (FPU/SSE use → #NM).
    pub const TS: u8 = 1 << 1;
    /// CR0.MP: wait/fwait honours TS.
    pub const MP: u8 = 1 << 2;
    /// CR4.OSFXSR: SSE enabled by the OS (otherwise SSE → #UD).
    pub const OSFXSR: u8 = 1 << 3;
}

impl Mode {
    /// The index (es = 0 .. gs = 5) of segment register `r`.
    pub fn seg_index(r: Register) -> Option<usize> {
        match r {
            Register::ES => Some(0),
            Register::CS => Some(1),
            Register::SS => Some(2),
            Register::DS => Some(3),
            Register::FS => Some(4),
            Register::GS => Some(5),
            _ => None,
        }
    }

    /// Whether accesses through segment register `r` need a limit check.
    pub fn is_checked(&self, r: Register) -> bool {
        Self::seg_index(r).is_some_and(|i| self.seg_checked & (1 << i) != 0)
    }

    /// Whether segment register `r` is unusable (null).
    pub fn is_unusable(&self, r: Register) -> bool {
        Self::seg_index(r).is_some_and(|i| self.seg_unusable & (1 << i) != 0)
    }

    /// Whether segment register `r` has a non-zero base.
    pub fn has_base(&self, r: Register) -> bool {
        Self::seg_index(r).is_some_and(|i| self.seg_based & (1 << i) != 0)
    }
}
