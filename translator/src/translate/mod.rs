//! The unit-building loop: decode guest instructions from one eip until a control
//! transfer, a page end or the size limit, and emit host code for each through the
//! instruction families below (QEMU's translator loop, in small).
//!
//! Every guest instruction gets a side-table entry at the host offset where its code
//! starts, so a fault inside it maps back to its guest EIP. Sequences are written
//! "fault first": every host instruction that may fault comes before the first one
//! that changes guest-visible state, so the host registers at a fault are the guest
//! registers before the instruction (where that is impossible a `Fixup` says how to
//! undo the difference).

mod branch;
mod cpuid;
mod divide;
mod fpu;
mod ident;
mod length;
mod segreg;
mod special;
mod stack;
mod string;
mod vflags;

use crate::abi::off;
use crate::emit::{Asm, EmitError};
use crate::isa::Isa;
use crate::world::Stubs;
use crate::{CalloutKind, Mode};

use iced_x86::{Decoder, Instruction, Mnemonic};

/// Most guest instructions in one unit.
pub const MAX_UNIT_INSNS: usize = 64;
/// A unit stops taking instructions once its host code passes this many bytes.
/// With the largest single expansion (`enter` with nesting 31, about 700 bytes)
/// and an exit stub for every instruction, a unit stays below `MAX_UNIT_BYTES`
/// in the cache, whatever the guest code is.
pub const UNIT_HOST_BUDGET: usize = 8 * 1024;

/// How to recover the guest state when a host fault lands inside a guest
/// instruction's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fixup {
    /// The host registers are the guest registers before the instruction.
    None,
    /// Host register number `reg` (a guest register) was spilled to scratch slot 0.
    SpilledLegacy(u8),
    /// A string instruction runs with esi/edi biased by the view base (host
    /// register numbers in the mask: bit 6 = rsi, bit 7 = rdi); progress so far is
    /// architectural, as on hardware. The second field is the id of a site (never
    /// called) that holds the instruction as translated, for the VMM to emulate it
    /// from where it stopped even if it has overwritten its own bytes since.
    StringBias(u8, u32),
}

/// One side-table row: the code of the guest instruction at `eip` starts at host
/// offset `host_off` within its unit.
#[derive(Clone, Copy, Debug)]
pub struct SideEntry {
    pub host_off: u32,
    pub eip: u32,
    pub fixup: Fixup,
}

/// A direct branch exit: a rel32 field that chaining can point at another unit.
#[derive(Clone, Copy, Debug)]
pub struct PendingSlot {
    /// Offset of the rel32 field within the unit.
    pub patch_off: u32,
    /// Offset of the slot's exit stub within the unit.
    pub stub_off: u32,
    pub target: u32,
}

/// A callout site as the VMM sees it: which guest instruction to emulate.
#[derive(Clone, Debug)]
pub struct CalloutSite {
    pub eip: u32,
    pub len: u8,
    pub ins: Instruction,
    pub kind: CalloutKind,
}

/// Where a unit's guest code came from.
pub trait GuestCode {
    /// Copies guest code bytes at linear address `linear` into `buf`, stopping at
    /// the first byte that cannot be fetched; returns the count copied.
    fn fetch(&mut self, linear: u32, buf: &mut [u8]) -> usize;
}

/// The result of building one unit, before it is placed in the cache.
pub struct BuiltUnit {
    pub code: Vec<u8>,
    /// Offset of the unchecked entry (after the page check, if any).
    pub body_off: u32,
    /// The page check covers the second page too (a first instruction that
    /// runs onto the next page).
    pub checks_tail: bool,
    pub side: Vec<SideEntry>,
    pub slots: Vec<PendingSlot>,
    pub sites: Vec<CalloutSite>,
    pub guest_start: u32,
    pub guest_len: u32,
    pub guest_insns: usize,
    pub host_insns: usize,
}

/// Why a unit could not be built at all.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot fetch guest code at {0:#010x}")]
    Fetch(u32),
    #[error(transparent)]
    Emit(#[from] EmitError),
}

/// Whether the unit continues after an instruction.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Next,
    End,
}

/// Per-unit translation state shared by the instruction families.
pub(crate) struct Builder<'a> {
    pub a: Asm,
    pub stubs: &'a Stubs,
    pub mode: &'a Mode,
    pub slots: Vec<(usize, u32)>,
    pub sites: Vec<CalloutSite>,
    pub side: Vec<SideEntry>,
    pub first_site_id: u32,
    /// The instruction being translated.
    pub ins: Instruction,
    pub adaptive: &'a hashbrown::HashSet<u32>,
    pub probed: &'a hashbrown::HashSet<u32>,
    /// The guest's instruction set (what may run IDENT).
    pub isa: &'a Isa,
}

impl Builder<'_> {
    pub fn next_eip(&self) -> u32 {
        // Guest eips are 32-bit; wrap like the hardware would.
        #[allow(clippy::cast_possible_truncation)]
        let n = self.ins.next_ip32();
        n
    }

    pub fn eip(&self) -> u32 {
        self.ins.ip32()
    }

    /// Marks the current instruction's side-table entry with a fixup from here on.
    pub fn fixup_from_here(&mut self, fixup: Fixup) {
        let host_off = u32::try_from(self.a.pos()).expect("unit size");
        self.side.push(SideEntry { host_off, eip: self.eip(), fixup });
    }

    /// Ends the fixup region started by `fixup_from_here`.
    pub fn fixup_end(&mut self) {
        self.fixup_from_here(Fixup::None);
    }

    /// `jmp` to a chainable exit for guest `target`.
    pub fn jmp_slot(&mut self, target: u32) {
        let at = self.a.jmp(self.a.here());
        self.slots.push((at, target));
    }

    /// `jcc` to a chainable exit for guest `target`.
    pub fn jcc_slot(&mut self, cc: iced_x86::ConditionCode, target: u32) {
        let at = self.a.jcc(cc, self.a.here());
        self.slots.push((at, target));
    }

    /// Exits to the VMM to emulate the current instruction; on `Continue` the VMM
    /// resumes right after this sequence.
    pub fn callout(&mut self, kind: CalloutKind) -> Result<(), EmitError> {
        let id = self.first_site_id + u32::try_from(self.sites.len()).expect("sites");
        let len = u8::try_from(self.ins.len()).expect("instruction length");
        self.sites.push(CalloutSite { eip: self.eip(), len, ins: self.ins, kind });
        self.a.store_ctx_imm32(off::EXIT_ARG, id)?;
        // The resume address goes to the context, not on the host stack: a
        // `call` here pushed a return-stack entry that the world switch's `ret`
        // never consumed, so every return the VMM made after the exit was
        // mispredicted. lea r11, [rip + resume] (r11 is scratch: nothing in it
        // survives an exit anyway).
        self.a.bytes(&[0x4c, 0x8d, 0x1d]);
        let disp = self.a.pos();
        self.a.bytes(&[0; 4]);
        self.a.store_ctx64(off::RESUME, iced_x86::Register::R11)?;
        self.a.jmp(self.stubs.exit_callout);
        let resume = self.a.here();
        self.a.patch_rel32(disp, resume);
        Ok(())
    }

    /// Records the current instruction as a site of `kind` without calling it
    /// (for the VMM to find the instruction later); returns its id.
    pub fn record_site(&mut self, kind: CalloutKind) -> u32 {
        let id = self.first_site_id + u32::try_from(self.sites.len()).expect("sites");
        let len = u8::try_from(self.ins.len()).expect("instruction length");
        self.sites.push(CalloutSite { eip: self.eip(), len, ins: self.ins, kind });
        id
    }

    /// Continues at the guest eip in r9d through the inline lookup.
    pub fn jmp_lookup(&mut self) -> Result<(), EmitError> {
        crate::world::emit_lookup(&mut self.a, self.stubs.lookup_miss)
    }
}

/// Where a unit's code goes and how its exits are numbered.
pub struct UnitPlacement<'a> {
    pub stubs: &'a Stubs,
    /// Host address of the unit's first byte.
    pub host_base: u64,
    /// Ids of the unit's first branch slot and first callout site (stubs embed them).
    pub first_slot_id: u32,
    pub first_site_id: u32,
    pub max_insns: usize,
    /// Guest eips whose stores go through the VMM (adaptive translation).
    pub adaptive: &'a hashbrown::HashSet<u32>,
    /// Guest eips whose memory accesses the VMM checks first (`PageProbe`).
    pub probed: &'a hashbrown::HashSet<u32>,
    /// The guest's instruction set.
    pub isa: &'a Isa,
    /// The frame the unit's page maps, and the frame the next page maps: the unit
    /// gets a checked entry that verifies the current space still maps them
    /// there (the next page only if the first instruction runs onto it; None:
    /// no check).
    pub entry_frames: Option<(u32, Option<u32>)>,
    /// A stop (a debugger's breakpoint) after the unit's first instruction: the
    /// unit ends before the instruction at or past this eip, which then starts a
    /// unit of its own.
    pub stop_before: Option<u32>,
}

/// Builds one unit starting at `eip`.
pub fn build_unit(
    mem: &mut dyn GuestCode,
    eip: u32,
    mode: &Mode,
    place: &UnitPlacement<'_>,
) -> Result<BuiltUnit, BuildError> {
    let UnitPlacement {
        stubs,
        host_base,
        first_slot_id,
        first_site_id,
        max_insns,
        adaptive,
        probed,
        isa,
        entry_frames,
        stop_before,
    } = *place;
    let window = fetch_window(mem, eip);
    if window.is_empty() {
        return Err(BuildError::Fetch(eip));
    }
    let mut b = Builder {
        a: Asm::new(host_base),
        stubs,
        mode,
        slots: Vec::new(),
        sites: Vec::new(),
        side: Vec::new(),
        first_site_id,
        ins: Instruction::default(),
        adaptive,
        probed,
        isa,
    };
    let page_end = (u64::from(eip) & !0xfff) + 0x1000;
    let mut checks_tail = false;
    if let Some((frame, next)) = entry_frames {
        emit_page_check(&mut b, eip, eip, frame)?;
        let first = Decoder::with_ip(32, &window, u64::from(eip), isa.decoder_options()).decode();
        if let (Some(next), true) = (next, first.next_ip() > page_end) {
            emit_page_check(&mut b, eip, eip.wrapping_add(0x1000), next)?;
            checks_tail = true;
        }
    }
    let body_off = u32::try_from(b.a.pos()).expect("unit size");
    // The poll: a load from the poll page, which the VMM revokes to stop us here.
    b.a.bytes(&[0x45, 0x8a, 0x4d, 0x00]); // mov r9b, [r13+0]
    let mut dec = Decoder::with_ip(32, &window, u64::from(eip), isa.decoder_options());
    let mut count = 0;
    let mut guest_len = 0u32;
    loop {
        let at = dec.position();
        let ins = dec.decode();
        let complete = !(ins.is_invalid() && dec.last_error() == iced_x86::DecoderError::NoMoreBytes);
        // An instruction that runs onto the next page starts a unit of its own:
        // the other units then lie on one page, which their entry check covers.
        let straddles = ins.next_ip() > page_end;
        let at_stop = stop_before.is_some_and(|s| ins.ip32() >= s);
        if (!complete || straddles || at_stop) && count > 0 {
            b.jmp_slot(eip.wrapping_add(guest_len));
            break;
        }
        b.ins = ins;
        let host_off = u32::try_from(b.a.pos()).expect("unit size");
        b.side.push(SideEntry { host_off: if count == 0 { 0 } else { host_off }, eip: ins.ip32(), fixup: Fixup::None });
        count += 1;
        guest_len += u32::try_from(ins.len()).expect("len");
        let flow = if !complete {
            special::fetch_fault(&mut b)?
        } else if ins.is_invalid() && length::too_long(&window[at..], isa.decoder_options()) {
            special::raise_gp(&mut b)?
        } else {
            translate_or_refuse(&mut b)?
        };
        if flow == Flow::End {
            break;
        }
        if count >= max_insns || ins.next_ip() >= page_end || b.a.pos() >= UNIT_HOST_BUDGET {
            b.jmp_slot(ins.next_ip32());
            break;
        }
    }
    let mut unit = finish(b, eip, guest_len, count, first_slot_id, body_off);
    unit.checks_tail = checks_tail;
    Ok(unit)
}

/// The checked entry: continue only if the current space's code map says the
/// page of `linear` maps `frame`; otherwise leave as an indirect-branch miss on
/// the unit's `eip` (the VMM walks and finds the right unit). Flag-free
/// (`lea`/`jrcxz`).
fn emit_page_check(b: &mut Builder<'_>, eip: u32, linear: u32, frame: u32) -> Result<(), EmitError> {
    use crate::emit::{ice, ins2rm};
    use iced_x86::{Code, MemoryOperand, Register::*};
    // Two loads, like a page walk: the region's leaf, then the page's entry
    // (see `bt86_shadow_mmu::code_map`).
    b.a.load_ctx64(R9, off::CODE_MAP)?;
    let leaf = MemoryOperand::with_base_displ(R9, i64::from((linear >> 22) * 8));
    b.a.ins(&ins2rm(Code::Mov_r64_rm64, R9, leaf))?;
    let entry = MemoryOperand::with_base_displ(R9, i64::from(((linear >> 12) & 0x3ff) * 4));
    b.a.ins(&ins2rm(Code::Mov_r32_rm32, R9D, entry))?;
    b.a.mov_rr(R10, RCX)?;
    b.a.ins(&ins2rm(Code::Lea_r64_m, RCX, MemoryOperand::with_base_displ(R9, -i64::from(frame + 1))))?;
    b.a.bytes(&[0xe3, 0x00]); // jrcxz: the page maps the frame
    let at = b.a.pos() - 1;
    b.a.mov_rr(RCX, R10)?;
    b.a.ins(&Instruction::with2(Code::Mov_r32_imm32, R9D, eip).map_err(ice)?)?;
    b.a.jmp(b.stubs.lookup_miss);
    b.a.patch_rel8_here(at);
    b.a.mov_rr(RCX, R10)
}

fn fetch_window(mem: &mut dyn GuestCode, eip: u32) -> Vec<u8> {
    // The rest of this page plus enough of the next for one straddling instruction.
    let to_page_end = 0x1000 - (eip & 0xfff) as usize;
    let mut buf = vec![0u8; to_page_end + 15];
    let n = mem.fetch(eip, &mut buf);
    buf.truncate(n);
    buf
}

fn finish(mut b: Builder<'_>, eip: u32, guest_len: u32, guest_insns: usize, first_slot_id: u32, body_off: u32) -> BuiltUnit {
    let mut slots = Vec::new();
    let exits = core::mem::take(&mut b.slots);
    for (n, (patch_at, target)) in exits.into_iter().enumerate() {
        let stub_off = b.a.pos();
        let id = first_slot_id + u32::try_from(n).expect("slots");
        let stub = (|| -> Result<(), EmitError> {
            b.a.store_ctx_imm32(off::EIP, target)?;
            b.a.store_ctx_imm32(off::EXIT_ARG, id)?;
            b.a.store_ctx_imm32(off::EXIT_REASON, crate::abi::ExitReason::Branch as u32)?;
            b.a.jmp(b.stubs.exit_common);
            Ok(())
        })();
        stub.expect("exit stubs always encode");
        let stub_addr = b.a.here() - (b.a.pos() - stub_off) as u64;
        b.a.patch_rel32(patch_at, stub_addr);
        slots.push(PendingSlot {
            patch_off: u32::try_from(patch_at).expect("unit size"),
            stub_off: u32::try_from(stub_off).expect("unit size"),
            target,
        });
    }
    let host_insns = b.a.count;
    BuiltUnit {
        code: b.a.finish(),
        body_off,
        checks_tail: false,
        side: b.side,
        slots,
        sites: b.sites,
        guest_start: eip,
        guest_len,
        guest_insns,
        host_insns,
    }
}

/// The stores adaptive translation may turn into `TracedWrite` callouts: `mov`
/// and `xchg` to memory, and the read-modify-write forms kernels use on
/// page-table entries (`and`/`or`/... with a register or an immediate, `inc`,
/// `dec`, `not`, `neg`, `bts`/`btr`/`btc` with an immediate, `cmpxchg`).
pub fn is_adaptive_store(ins: &Instruction) -> bool {
    use iced_x86::Code::*;
    use iced_x86::OpKind::*;
    if ins.op0_kind() != Memory {
        return false;
    }
    let plain = matches!(
        ins.code(),
        Mov_rm32_r32 | Mov_rm16_r16 | Mov_rm8_r8 | Mov_rm32_imm32 | Mov_rm16_imm16 | Mov_rm8_imm8
            | Mov_moffs32_EAX | Mov_moffs16_AX | Mov_moffs8_AL | Xchg_rm32_r32 | Xchg_rm16_r16 | Xchg_rm8_r8
    );
    let size = ins.memory_size().size();
    let source = if ins.op_count() == 1 { None } else { Some(ins.op1_kind()) };
    let imm = matches!(source, Some(Immediate8 | Immediate16 | Immediate32 | Immediate8to16 | Immediate8to32));
    let rmw = match ins.mnemonic() {
        Mnemonic::And | Mnemonic::Or | Mnemonic::Xor | Mnemonic::Add | Mnemonic::Sub | Mnemonic::Adc | Mnemonic::Sbb => {
            imm || source == Some(Register)
        }
        Mnemonic::Inc | Mnemonic::Dec | Mnemonic::Not | Mnemonic::Neg => source.is_none(),
        Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc => source == Some(Immediate8),
        Mnemonic::Cmpxchg => source == Some(Register),
        _ => false,
    };
    (plain || rmw) && matches!(size, 1 | 2 | 4)
}

/// Translates one instruction; a form the host encoder rejects becomes an
/// "unsupported instruction" stop instead of failing the whole unit.
fn translate_or_refuse(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    let (pos, slots, sites, side) = (b.a.pos(), b.slots.len(), b.sites.len(), b.side.len());
    match translate_one(b) {
        Ok(flow) => Ok(flow),
        Err(e) => {
            tracing::debug!(eip = b.eip(), error = %e, "cannot translate; stopping there");
            b.a.truncate(pos);
            b.slots.truncate(slots);
            b.sites.truncate(sites);
            b.side.truncate(side);
            b.callout(CalloutKind::Unsupported)?;
            b.jmp_slot(b.next_eip());
            Ok(Flow::End)
        }
    }
}

/// A prefetch hint on a CPU that has the long-nop space but not SSE: a nop there.
fn prefetch_as_nop(b: &Builder<'_>) -> bool {
    use Mnemonic::*;
    matches!(b.ins.mnemonic(), Prefetchnta | Prefetcht0 | Prefetcht1 | Prefetcht2)
        && b.isa.has(iced_x86::CpuidFeature::MULTIBYTENOP)
}

/// Translates the instruction in `b.ins` by family.
fn translate_one(b: &mut Builder<'_>) -> Result<Flow, EmitError> {
    use Mnemonic::*;
    let m = b.ins.mnemonic();
    if b.adaptive.contains(&b.ins.ip32()) && is_adaptive_store(&b.ins) {
        b.callout(CalloutKind::TracedWrite)?;
        return Ok(Flow::Next);
    }
    if !b.ins.is_invalid() && !b.isa.allows(&b.ins) && !prefetch_as_nop(b) {
        // An instruction of an extension the guest CPU does not have.
        return special::raise_ud(b);
    }
    if let Some(flow) = special::translate(b)? {
        return Ok(flow);
    }
    if special::uses_checked_segment(&b.ins, b.mode) {
        // Limits and types are checked by the VMM; the instruction runs after.
        b.callout(CalloutKind::SegmentCheck)?;
    }
    if b.probed.contains(&b.ins.ip32()) {
        // Its accesses kept taking true page faults: the VMM checks that their
        // pages are mapped first (after the segment checks, as the CPU does).
        b.callout(CalloutKind::PageProbe)?;
    }
    let implicit_stack = matches!(m, Push | Pop | Pushad | Pusha | Popad | Popa | Enter | Leave | Call | Ret);
    if implicit_stack && b.mode.irregular_stack {
        // Translated code addresses the stack flat and 32-bit: the VMM emulates
        // these against SS (its base, limit and B bit).
        if matches!(m, Call | Ret) {
            return special::end(b, CalloutKind::Emulate);
        }
        b.callout(CalloutKind::Emulate)?;
        return Ok(Flow::Next);
    }
    match m {
        Push | Pop | Pushad | Pusha | Popad | Popa | Enter | Leave => stack::translate(b),
        Jmp | Call | Ret | Loop | Loope | Loopne | Jecxz | Jcxz => branch::translate(b),
        _ if b.ins.is_jcc_short_or_near() => branch::translate(b),
        Movsb | Movsw | Movsd | Stosb | Stosw | Stosd | Lodsb | Lodsw | Lodsd | Cmpsb | Cmpsw | Cmpsd
        | Scasb | Scasw | Scasd
            if string::is_string(&b.ins) =>
        {
            string::translate(b)
        }
        Div | Idiv => divide::translate(b),
        _ => ident::translate(b),
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod sweep;
