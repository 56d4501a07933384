//! proptest strategies that generate 32-bit instruction sequences for the oracle.
//!
//! A generated [`Case`] is a [`Snippet`] plus, for the flags comparison, which arithmetic
//! flags are architecturally defined at the end and at each instruction start (where a
//! fault could stop the snippet). The generator tracks the flags that the instructions
//! leave undefined (e.g. AF after `and`, SF ZF AF PF after `mul`, OF after `daa`); when an
//! instruction would *read* a flag that is undefined at that point (adc after mul, setcc,
//! cmovcc, jcc, lahf, salc, daa ...), a `cmp %ecx,%eax` is inserted before it so that no
//! undefined value flows into registers or memory.
//!
//! Memory operands always address the data block: every memory-using instruction comes
//! with its own setup (a `mov $addr, %base`, or a data-dependent `movzbl %r8,%base; lea
//! disp(,%base,scale),%base`, or an absolute address, or `[esp+disp8]`), so registers may
//! hold anything between instructions. The data block is [`DATA_LEN`] bytes (two pages; some
//! accesses straddle the page boundary). The initial esp is either `STACK_TOP` or
//! [`DATA_STACK`] (so that pushes land in the compared data block).

use std::fmt;

use bt86_runtime::snippet::{Snippet, SnippetFault, CODE_ADDR, DATA_ADDR};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

use super::enc::{
    self, Count, ImmForm, Mem, Rep, Rm, Size, AH, AL, CL, EAX, EBP, EBX, ECX, EDI, EDX, ESI, ESP,
};
use super::flags::{AF, ALL6, CF, OF, PF, SF, ZF};

/// Size of the data block of generated cases.
pub const DATA_LEN: u32 = 0x2000;
/// Initial esp of cases whose stack lives in the data block.
pub const DATA_STACK: u32 = DATA_ADDR + 0x1000;

/// One instruction and its effect on the arithmetic flags: after it, the set of undefined
/// flags is `(undef & !writes) | undefs`; `reads` are the flags it consumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Insn {
    pub bytes: Vec<u8>,
    pub reads: u32,
    pub writes: u32,
    pub undefs: u32,
}

impl Insn {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Insn {
        Insn {
            bytes: bytes.into(),
            reads: 0,
            writes: 0,
            undefs: 0,
        }
    }
    /// Flags this instruction reads.
    pub fn r(mut self, f: u32) -> Insn {
        self.reads |= f;
        self
    }
    /// Flags this instruction sets to defined values.
    pub fn w(mut self, f: u32) -> Insn {
        self.writes |= f;
        self
    }
    /// Flags this instruction leaves undefined.
    pub fn u(mut self, f: u32) -> Insn {
        self.writes |= f;
        self.undefs |= f;
        self
    }
    fn fx(self, (r, w, u): (u32, u32, u32)) -> Insn {
        self.r(r).w(w).u(u)
    }
}

/// A unit of generated code: straight-line instructions or a small control structure
/// whose bodies are straight-line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unit {
    Seq(Vec<Insn>),
    /// `jcc L` (or `jmp L` when `cc` is None: the body is dead code); body; `L:`.
    Skip {
        cc: Option<u8>,
        body: Vec<Insn>,
    },
    /// `call L1; jmp L2; L1: body; ret; L2:`.
    Call {
        body: Vec<Insn>,
    },
    /// `mov $count,%ecx; L: body; loop/loope/loopne L` (the body never writes ecx).
    Loop {
        opcode: u8,
        count: u32,
        body: Vec<Insn>,
    },
    /// [`mov $v,%ecx`]; `jecxz L`; body; `L:`.
    Jecxz {
        ecx: Option<u32>,
        body: Vec<Insn>,
    },
    /// An indirect jump over a dead body: 0 `mov $L,%r; jmp *%r`, 1 `push $L; ret`,
    /// 2 `mov $L,%r; mov %r,(slot); jmp *(slot)` with the slot in the data block.
    Indirect {
        kind: u8,
        reg: u8,
        slot: u32,
        body: Vec<Insn>,
    },
}

/// Initial machine state of a case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Init {
    pub regs: [u32; 8],
    pub esp_in_data: bool,
    pub eflags: u32,
    pub data_seed: u64,
    /// 0 random bytes, 1 zeros, 2 small bytes (0..16), 3 all 0xff.
    pub data_kind: u8,
}

/// A generated snippet with the flags to compare.
#[derive(Clone)]
pub struct Case {
    pub snippet: Snippet,
    /// Flags (within 0x0cd5) that are defined when the snippet completes.
    pub final_flags: u32,
    /// (eip, flags defined there) for every instruction start.
    pub flags_at: Vec<(u32, u32)>,
    pub init: Init,
}

impl Case {
    /// The flags to compare for a run that ended with `fault`.
    pub fn compared_flags(&self, fault: Option<SnippetFault>) -> u32 {
        match fault {
            None => self.final_flags,
            Some(f) => match self.flags_at.iter().find(|(eip, _)| *eip == f.eip) {
                Some(&(_, m)) => m,
                None => self
                    .flags_at
                    .iter()
                    .fold(self.final_flags, |m, &(_, f)| m & f),
            },
        }
    }
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Case {{")?;
        write!(f, "{}", super::describe_input(&self.snippet))?;
        writeln!(
            f,
            "  data: seed {:#x} kind {} ({} bytes); compared flags at the end: {}",
            self.init.data_seed,
            self.init.data_kind,
            self.snippet.data.len(),
            super::flag_names(self.final_flags)
        )?;
        write!(f, "}}")
    }
}

// ---------------------------------------------------------------------------------------
// flag effects

/// Flags read by condition code `cc` (jcc/setcc/cmovcc low nibble).
pub fn cc_reads(cc: u8) -> u32 {
    match cc >> 1 {
        0 => OF,
        1 => CF,
        2 => ZF,
        3 => CF | ZF,
        4 => SF,
        5 => PF,
        6 => SF | OF,
        _ => ZF | SF | OF,
    }
}

type Fx = (u32, u32, u32);

fn alu_fx(op: u8) -> Fx {
    match op {
        enc::ADC | enc::SBB => (CF, ALL6, 0),
        enc::OR | enc::AND | enc::XOR => (0, ALL6, AF),
        _ => (0, ALL6, 0),
    }
}

const TEST_FX: Fx = (0, ALL6, AF);
const INCDEC_FX: Fx = (0, ALL6 & !CF, 0);
const MUL_FX: Fx = (0, ALL6, SF | ZF | AF | PF);
const DIV_FX: Fx = (0, ALL6, ALL6);
const BT_FX: Fx = (0, CF | OF | SF | AF | PF, OF | SF | AF | PF);
const BSX_FX: Fx = (0, ALL6, ALL6 & !ZF);

/// Flag effect of a group-2 shift/rotate of an `n`-bit operand by `count` (None: unknown).
pub fn shift_fx(ext: u8, n: u32, count: Option<u8>) -> Fx {
    let Some(c) = count else {
        return match ext {
            enc::ROL | enc::ROR => (0, 0, OF),
            enc::RCL | enc::RCR => (CF, 0, OF),
            _ => (0, 0, OF | AF | CF),
        };
    };
    let m = u32::from(c & 31);
    if m == 0 {
        return (0, 0, 0);
    }
    let of = if m == 1 { 0 } else { OF };
    match ext {
        enc::ROL | enc::ROR => (0, CF | OF, of),
        enc::RCL | enc::RCR => {
            if m % (n + 1) == 0 {
                (0, OF, OF)
            } else {
                (CF, CF | OF, of)
            }
        }
        _ => {
            let cf = if m >= n { CF } else { 0 };
            (0, ALL6, AF | of | cf)
        }
    }
}

/// Flag effect of shld/shrd by `count` (None: unknown; 32-bit only).
pub fn shxd_fx(count: Option<u8>) -> Fx {
    match count {
        None => (0, 0, AF | OF),
        Some(c) if c & 31 == 0 => (0, 0, 0),
        Some(c) => (0, ALL6, AF | if c & 31 == 1 { 0 } else { OF }),
    }
}

/// `cmp %ecx,%eax`: defines all six arithmetic flags.
fn fixup() -> Insn {
    Insn::new(enc::alu_rm_r(enc::CMP, Size::D, Rm::R(EAX), ECX)).w(ALL6)
}

// ---------------------------------------------------------------------------------------
// assembling

struct Asm {
    code: Vec<u8>,
    undef: u32,
    at: Vec<(u32, u32)>,
}

impl Asm {
    fn new(undef: u32) -> Asm {
        Asm {
            code: Vec::new(),
            undef,
            at: Vec::new(),
        }
    }

    fn put(&mut self, i: &Insn) {
        self.at.push((self.code.len() as u32, self.undef));
        self.code.extend_from_slice(&i.bytes);
        self.undef = (self.undef & !i.writes) | i.undefs;
    }

    fn insn(&mut self, i: &Insn) {
        if i.reads & self.undef != 0 {
            self.put(&fixup());
        }
        self.put(i);
    }

    fn body(entry: u32, body: &[Insn]) -> Asm {
        let mut a = Asm::new(entry);
        for i in body {
            a.insn(i);
        }
        a
    }

    /// Appends `a` (assembled at offset 0) and takes its exit state.
    fn append(&mut self, a: Asm) {
        let base = self.code.len() as u32;
        self.at.extend(a.at.iter().map(|&(o, u)| (o + base, u)));
        self.code.extend_from_slice(&a.code);
        self.undef = a.undef;
    }

    fn unit(&mut self, u: &Unit) {
        match u {
            Unit::Seq(v) => {
                for i in v {
                    self.insn(i);
                }
            }
            Unit::Skip { cc, body } => {
                let reads = cc.map(cc_reads).unwrap_or(0);
                if reads & self.undef != 0 {
                    self.put(&fixup());
                }
                let entry = self.undef;
                let b = Asm::body(entry, body);
                let len = b.code.len();
                let j = match (cc, len <= 127) {
                    (Some(cc), true) => enc::jcc8(*cc, len as i8),
                    (Some(cc), false) => enc::jcc32(*cc, len as i32),
                    (None, true) => enc::jmp8(len as i8),
                    (None, false) => enc::jmp32(len as i32),
                };
                self.put(&Insn::new(j).r(reads));
                let exit = b.undef;
                self.append(b);
                self.undef = if cc.is_some() { entry | exit } else { entry };
            }
            Unit::Call { body } => {
                let mut b = Asm::body(self.undef, body);
                b.put(&Insn::new([enc::RET]));
                let len = b.code.len();
                if len <= 127 {
                    self.put(&Insn::new(enc::call32(2)));
                    self.put(&Insn::new(enc::jmp8(len as i8)));
                } else {
                    self.put(&Insn::new(enc::call32(5)));
                    self.put(&Insn::new(enc::jmp32(len as i32)));
                }
                self.append(b);
            }
            Unit::Loop {
                opcode,
                count,
                body,
            } => {
                self.put(&Insn::new(enc::mov_r_imm(Size::D, ECX, *count)));
                let lreads = if *opcode == 0xe2 { 0 } else { ZF };
                let outside = self.undef;
                let mut entry = outside;
                let mut b = loop {
                    let mut b = Asm::body(entry, body);
                    if lreads & b.undef != 0 {
                        b.put(&fixup());
                    }
                    let next = entry | b.undef | outside;
                    if next == entry {
                        break b;
                    }
                    entry = next;
                };
                let rel = -(b.code.len() as i32 + 2);
                assert!(rel >= -128, "loop body too long");
                b.put(&Insn::new(enc::loopx(*opcode, rel as i8)).r(lreads));
                self.append(b);
            }
            Unit::Jecxz { ecx, body } => {
                if let Some(v) = ecx {
                    self.put(&Insn::new(enc::mov_r_imm(Size::D, ECX, *v)));
                }
                let entry = self.undef;
                let b = Asm::body(entry, body);
                let len = b.code.len();
                assert!(len <= 127, "jecxz body too long");
                self.put(&Insn::new(enc::jecxz(len as i8)));
                let exit = b.undef;
                self.append(b);
                self.undef = entry | exit;
            }
            Unit::Indirect {
                kind,
                reg,
                slot,
                body,
            } => {
                let entry = self.undef;
                let b = Asm::body(entry, body);
                let here = CODE_ADDR + self.code.len() as u32;
                let slot_mem = Rm::M(Mem::abs(DATA_ADDR + slot));
                // Prelude lengths are fixed: 5 + 2, 5 + 1, 5 + 6 + 6.
                let prelude_len = match kind {
                    0 => 7,
                    1 => 6,
                    _ => 17,
                };
                let target = here + prelude_len + b.code.len() as u32;
                match kind {
                    0 => {
                        self.put(&Insn::new(enc::mov_r_imm(Size::D, *reg, target)));
                        self.put(&Insn::new(enc::jmp_rm(Rm::R(*reg))));
                    }
                    1 => {
                        self.put(&Insn::new(enc::push_imm(Size::D, target, false)));
                        self.put(&Insn::new([enc::RET]));
                    }
                    _ => {
                        self.put(&Insn::new(enc::mov_r_imm(Size::D, *reg, target)));
                        self.put(&Insn::new(enc::mov_rm_r(Size::D, slot_mem, *reg)));
                        self.put(&Insn::new(enc::jmp_rm(slot_mem)));
                    }
                }
                debug_assert_eq!(
                    CODE_ADDR + self.code.len() as u32 + b.code.len() as u32,
                    target
                );
                self.append(b);
                self.undef = entry;
            }
        }
    }
}

/// Fills a data block deterministically from a seed.
pub fn fill_data(seed: u64, kind: u8, len: usize) -> Vec<u8> {
    let mut x = seed;
    let mut next = move || {
        // splitmix64
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..len)
        .map(|_| match kind {
            1 => 0,
            2 => (next() % 16) as u8,
            3 => 0xff,
            _ => next() as u8,
        })
        .collect()
}

/// Builds a case from units and an initial state.
pub fn assemble(units: &[Unit], init: &Init) -> Case {
    let mut a = Asm::new(0);
    for u in units {
        a.unit(u);
    }
    let mut regs = init.regs;
    regs[4] = if init.esp_in_data { DATA_STACK } else { 0 };
    let snippet = Snippet {
        code: a.code,
        regs,
        eflags: init.eflags & super::flags::ARITH,
        data: fill_data(init.data_seed, init.data_kind, DATA_LEN as usize),
    };
    Case {
        snippet,
        final_flags: super::flags::ARITH & !a.undef,
        flags_at: a
            .at
            .iter()
            .map(|&(o, u)| (CODE_ADDR + o, super::flags::ARITH & !u))
            .collect(),
        init: init.clone(),
    }
}

// ---------------------------------------------------------------------------------------
// basic strategies

/// Register values with a bias towards edge cases.
pub fn value() -> impl Strategy<Value = u32> + Clone {
    prop_oneof![
        4 => any::<u32>(),
        2 => select(vec![
            0u32, 1, 2, 7, 9, 0x0f, 0x10, 0x1f, 0x20, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000,
            0xffff, 0x1_0000, 0x7fff_ffff, 0x8000_0000, 0x8000_0001, 0xffff_fffe, 0xffff_ffff,
        ]),
        1 => 0u32..0x100,
        1 => (any::<u16>(), any::<bool>()).prop_map(|(v, neg)| if neg { (v as i16 as i32) as u32 } else { u32::from(v) }),
    ]
}

pub fn init() -> impl Strategy<Value = Init> {
    (
        [
            value(),
            value(),
            value(),
            value(),
            value(),
            value(),
            value(),
            value(),
        ],
        any::<bool>(),
        any::<u32>(),
        any::<u64>(),
        prop_oneof![6 => Just(0u8), 1 => Just(1u8), 2 => Just(2u8), 1 => Just(3u8)],
    )
        .prop_map(|(regs, esp_in_data, eflags, data_seed, data_kind)| Init {
            regs,
            esp_in_data,
            eflags: eflags & super::flags::ARITH,
            data_seed,
            data_kind,
        })
}

fn size() -> impl Strategy<Value = Size> + Clone {
    select(vec![Size::B, Size::W, Size::D])
}

fn wd() -> impl Strategy<Value = Size> + Clone {
    select(vec![Size::W, Size::D])
}

/// Where generated code may put memory operands and which registers it must keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ctx {
    /// `[esp+disp8]` operands allowed.
    pub esp_mem: bool,
    /// No writes to ecx/cx/cl/ch (loop bodies).
    pub avoid_ecx: bool,
    /// Memory operands stay below `DATA_ADDR + mem_end`. Bodies of calls keep below the
    /// stack (which may live in the data block) so that they cannot overwrite their own
    /// return address.
    pub mem_end: u32,
}

pub const TOP: Ctx = Ctx {
    esp_mem: true,
    avoid_ecx: false,
    mem_end: DATA_LEN,
};
const BODY: Ctx = Ctx {
    esp_mem: false,
    avoid_ecx: false,
    mem_end: 0xc00,
};
const LOOP_BODY: Ctx = Ctx {
    esp_mem: false,
    avoid_ecx: true,
    mem_end: 0xc00,
};

/// A destination register for size `sz` that respects `ctx` (never esp/sp).
fn fix_dst(ctx: Ctx, sz: Size, r: u8) -> u8 {
    let mut r = r & 7;
    if sz != Size::B && r == ESP {
        r = EBP;
    }
    if ctx.avoid_ecx {
        if sz == Size::B && (r == 1 || r == 5) {
            r += 2;
        } else if sz != Size::B && r == ECX {
            r = EBX;
        }
    }
    r
}

/// A memory operand in the data block and the instructions that set up its registers.
#[derive(Clone, Debug)]
pub struct MemOp {
    pub setup: Vec<Insn>,
    pub mem: Mem,
}

impl MemOp {
    /// Whether the operand's setup writes register `r` (its base or index).
    pub fn uses(&self, r: u8) -> bool {
        self.mem.base == Some(r) || self.mem.index.map(|(i, _)| i) == Some(r)
    }
}

const PTR_REGS: [u8; 7] = [EAX, ECX, EDX, EBX, EBP, ESI, EDI];

fn mov_imm(r: u8, v: u32) -> Insn {
    Insn::new(enc::mov_r_imm(Size::D, r, v))
}

/// An offset in the data block below `end` where a 4-byte access fits; some straddle the
/// page boundary in the middle of the block.
fn addr_off(end: u32) -> BoxedStrategy<u32> {
    if end > 0x1000 {
        prop_oneof![8 => 0..=end - 4, 1 => 0xff9u32..0x1000].boxed()
    } else {
        (0..=end - 4).boxed()
    }
}

fn mem_operand(ctx: Ctx) -> BoxedStrategy<MemOp> {
    let regs: Vec<u8> = PTR_REGS
        .iter()
        .copied()
        .filter(|&r| !(ctx.avoid_ecx && r == ECX))
        .collect();
    let base = select(regs.clone());
    let scale = select(vec![1u8, 2, 4, 8]);
    let end = ctx.mem_end;
    let fresh = (base.clone(), addr_off(ctx.mem_end), -128i32..128).prop_map(|(b, a, d)| MemOp {
        setup: vec![mov_imm(b, (DATA_ADDR + a).wrapping_sub(d as u32))],
        mem: Mem::based(b, d),
    });
    let far = (base.clone(), addr_off(ctx.mem_end), 0u32..0x20_0000).prop_map(|(b, a, x)| MemOp {
        setup: vec![mov_imm(b, x)],
        mem: Mem::based(b, (DATA_ADDR + a).wrapping_sub(x) as i32),
    });
    let abs = addr_off(ctx.mem_end).prop_map(|a| MemOp {
        setup: vec![],
        mem: Mem::abs(DATA_ADDR + a),
    });
    // Data-dependent: base = DATA + k + scale * (low byte of some register).
    let dep = (
        base.clone(),
        0u8..8,
        scale.clone(),
        any::<u32>(),
        -128i32..128,
    )
        .prop_map(move |(b, src8, s, k, d)| {
            let room = end - 255 * u32::from(s) - 4 - 256;
            let k = 128 + k % room;
            MemOp {
                setup: vec![
                    Insn::new(enc::movx(false, Size::B, b, Rm::R(src8))),
                    Insn::new(enc::lea(
                        b,
                        Mem {
                            base: None,
                            index: Some((b, s)),
                            disp: (DATA_ADDR + k) as i32,
                        },
                    )),
                ],
                mem: Mem::based(b, d),
            }
        });
    // base + index*scale + disp, the index data-dependent.
    let sib = (
        0usize..regs.len(),
        1usize..regs.len(),
        0u8..8,
        scale,
        any::<u32>(),
        -128i32..128,
    )
        .prop_map(move |(bi, step, src8, s, k, d)| {
            let b = regs[bi];
            let ix = regs[(bi + step) % regs.len()];
            let room = end - 255 * u32::from(s) - 4 - 256;
            let k = 128 + k % room;
            MemOp {
                setup: vec![
                    mov_imm(b, DATA_ADDR + k),
                    Insn::new(enc::movx(false, Size::B, ix, Rm::R(src8))),
                ],
                mem: Mem {
                    base: Some(b),
                    index: Some((ix, s)),
                    disp: d,
                },
            }
        });
    if ctx.esp_mem {
        let esp = (-64i32..64).prop_map(|d| MemOp {
            setup: vec![],
            mem: Mem::based(ESP, d),
        });
        prop_oneof![4 => fresh, 1 => far, 2 => abs, 2 => dep, 2 => sib, 1 => esp].boxed()
    } else {
        prop_oneof![4 => fresh, 1 => far, 2 => abs, 2 => dep, 2 => sib].boxed()
    }
}

/// A register or memory operand choice, resolved once the size is known.
#[derive(Clone, Debug)]
struct RmGen {
    reg: u8,
    mem: MemOp,
    use_mem: bool,
}

impl RmGen {
    /// As a destination (register fixed by [`fix_dst`]).
    fn dst(self, ctx: Ctx, sz: Size) -> (Vec<Insn>, Rm) {
        if self.use_mem {
            (self.mem.setup, Rm::M(self.mem.mem))
        } else {
            (vec![], Rm::R(fix_dst(ctx, sz, self.reg)))
        }
    }
    /// As a source.
    fn src(self) -> (Vec<Insn>, Rm) {
        if self.use_mem {
            (self.mem.setup, Rm::M(self.mem.mem))
        } else {
            (vec![], Rm::R(self.reg))
        }
    }
}

fn rm_gen(ctx: Ctx, mem_weight: f64) -> impl Strategy<Value = RmGen> + Clone {
    (0u8..8, mem_operand(ctx), prop::bool::weighted(mem_weight))
        .prop_map(|(reg, mem, use_mem)| RmGen { reg, mem, use_mem })
}

fn seq(mut setup: Vec<Insn>, i: Insn) -> Vec<Insn> {
    setup.push(i);
    setup
}

fn mask(sz: Size, v: u32) -> u32 {
    match sz {
        Size::B => v & 0xff,
        Size::W => v & 0xffff,
        Size::D => v,
    }
}

// ---------------------------------------------------------------------------------------
// instruction families (each strategy yields the instructions of one unit)

/// Flag-setting ALU: add adc sub sbb and or xor cmp test inc dec neg not, 8/16/32-bit,
/// reg-reg (both encodings), reg-imm (80/81/83 and the accumulator forms), reg-mem,
/// mem-reg, mem-imm; also clc stc cmc lahf sahf, mov/movzx/movsx, xadd, cmpxchg,
/// cmpxchg8b and lock-prefixed memory operations.
pub fn alu_insns(ctx: Ctx) -> BoxedStrategy<Vec<Insn>> {
    let op = 0u8..8;
    let reg_reg =
        (op.clone(), size(), 0u8..8, 0u8..8, any::<bool>()).prop_map(move |(op, sz, d, s, dir)| {
            let d = if op == enc::CMP {
                d
            } else {
                fix_dst(ctx, sz, d)
            };
            let bytes = if dir {
                enc::alu_rm_r(op, sz, Rm::R(d), s)
            } else {
                enc::alu_r_rm(op, sz, d, Rm::R(s))
            };
            vec![Insn::new(bytes).fx(alu_fx(op))]
        });
    let imm_form = select(vec![ImmForm::Full, ImmForm::Short]);
    let reg_imm = (
        op.clone(),
        size(),
        rm_gen(ctx, 0.35),
        value(),
        imm_form.clone(),
    )
        .prop_map(move |(op, sz, rm, imm, form)| {
            let (setup, rm) = if op == enc::CMP {
                rm.src()
            } else {
                rm.dst(ctx, sz)
            };
            seq(
                setup,
                Insn::new(enc::alu_rm_imm(op, sz, rm, imm, form)).fx(alu_fx(op)),
            )
        });
    let acc_imm = (op.clone(), size(), value())
        .prop_map(|(op, sz, imm)| vec![Insn::new(enc::alu_acc_imm(op, sz, imm)).fx(alu_fx(op))]);
    let reg_mem = (op.clone(), size(), 0u8..8, mem_operand(ctx)).prop_map(move |(op, sz, d, m)| {
        let d = if op == enc::CMP {
            d
        } else {
            fix_dst(ctx, sz, d)
        };
        seq(
            m.setup,
            Insn::new(enc::alu_r_rm(op, sz, d, Rm::M(m.mem))).fx(alu_fx(op)),
        )
    });
    let mem_reg = (op, size(), 0u8..8, mem_operand(ctx)).prop_map(move |(op, sz, s, m)| {
        seq(
            m.setup,
            Insn::new(enc::alu_rm_r(op, sz, Rm::M(m.mem), s)).fx(alu_fx(op)),
        )
    });
    let test =
        (size(), rm_gen(ctx, 0.3), 0u8..8, value(), 0u8..3).prop_map(|(sz, rm, s, imm, form)| {
            let (setup, rm) = rm.src();
            let bytes = match form {
                0 => enc::test_rm_r(sz, rm, s),
                1 => enc::test_rm_imm(sz, rm, imm),
                _ => enc::test_acc_imm(sz, imm),
            };
            seq(setup, Insn::new(bytes).fx(TEST_FX))
        });
    let unary = (size(), rm_gen(ctx, 0.3), 0u8..5).prop_map(move |(sz, rm, kind)| {
        let (setup, rm) = rm.dst(ctx, sz);
        let i = match kind {
            0 => Insn::new(enc::incdec(false, sz, rm)).fx(INCDEC_FX),
            1 => Insn::new(enc::incdec(true, sz, rm)).fx(INCDEC_FX),
            2 => Insn::new(enc::grp3(enc::NEG, sz, rm)).w(ALL6),
            3 => Insn::new(enc::grp3(enc::NOT, sz, rm)),
            _ => match (sz, rm) {
                (Size::B, _) | (_, Rm::M(_)) => Insn::new(enc::grp3(enc::NEG, sz, rm)).w(ALL6),
                (_, Rm::R(r)) => Insn::new(enc::incdec_short(r & 1 == 0, sz, r)).fx(INCDEC_FX),
            },
        };
        seq(setup, i)
    });
    let flagops = select(vec![0u8, 1, 2, 3, 4]).prop_map(move |k| {
        vec![match k {
            0 => Insn::new([enc::CLC]).w(CF),
            1 => Insn::new([enc::STC]).w(CF),
            2 => Insn::new([enc::CMC]).r(CF).w(CF),
            // lahf writes ah: fine everywhere (ah is never a pointer or the loop counter).
            3 => Insn::new([enc::LAHF]).r(SF | ZF | AF | PF | CF),
            _ => Insn::new([enc::SAHF]).w(SF | ZF | AF | PF | CF),
        }]
    });
    // Data movement: mov in all directions, movzx, movsx.
    let moves = (size(), 0u8..8, rm_gen(ctx, 0.4), 0u8..4, any::<bool>()).prop_map(
        move |(sz, r, rm, kind, signed)| match kind {
            0 => {
                let (setup, rm) = rm.src();
                seq(setup, Insn::new(enc::mov_r_rm(sz, fix_dst(ctx, sz, r), rm)))
            }
            1 => {
                let (setup, rm) = rm.dst(ctx, sz);
                seq(setup, Insn::new(enc::mov_rm_r(sz, rm, r)))
            }
            _ => {
                let (setup, rm) = rm.src();
                let src = if kind == 2 { Size::B } else { Size::W };
                seq(
                    setup,
                    Insn::new(enc::movx(signed, src, fix_dst(ctx, Size::D, r), rm)),
                )
            }
        },
    );
    // xadd, cmpxchg (reg and memory, locked or not), locked memory ALU, cmpxchg8b.
    let atomics = (
        size(),
        0u8..8,
        mem_operand(ctx),
        0u8..5,
        any::<bool>(),
        0u8..7,
        value(),
        0u32..ctx.mem_end - 8,
    )
        .prop_map(move |(sz, r, m, kind, locked, op, imm, a8)| {
            let r = fix_dst(ctx, sz, r);
            let lk = |b: Vec<u8>| if locked { enc::lock(b) } else { b };
            match kind {
                0 => vec![Insn::new(enc::xadd(sz, Rm::R(fix_dst(ctx, sz, op)), r)).w(ALL6)],
                1 => seq(
                    m.setup,
                    Insn::new(lk(enc::xadd(sz, Rm::M(m.mem), r))).w(ALL6),
                ),
                2 => {
                    if locked {
                        seq(
                            m.setup,
                            Insn::new(lk(enc::cmpxchg(sz, Rm::M(m.mem), r))).w(ALL6),
                        )
                    } else {
                        vec![Insn::new(enc::cmpxchg(sz, Rm::R(fix_dst(ctx, sz, op)), r)).w(ALL6)]
                    }
                }
                3 => seq(
                    m.setup,
                    Insn::new(enc::lock(enc::alu_rm_imm(
                        op,
                        sz,
                        Rm::M(m.mem),
                        imm,
                        ImmForm::Full,
                    )))
                    .fx(alu_fx(op)),
                ),
                _ => {
                    let b = if ctx.avoid_ecx {
                        EDI
                    } else {
                        [EBP, ESI, EDI][(op % 3) as usize]
                    };
                    vec![
                        mov_imm(b, DATA_ADDR + a8),
                        Insn::new(lk(enc::cmpxchg8b(Mem::based(b, 0)))).w(ZF),
                    ]
                }
            }
        });
    prop_oneof![
        6 => reg_reg,
        5 => reg_imm,
        2 => moves,
        2 => atomics,
        2 => acc_imm,
        3 => reg_mem,
        3 => mem_reg,
        2 => test,
        3 => unary,
        1 => flagops,
    ]
    .boxed()
}

/// A shift-count choice.
#[derive(Clone, Copy, Debug)]
enum CountGen {
    One,
    Imm(u8),
    /// `mov $c,%cl` first.
    ClKnown(u8),
    /// Whatever cl holds.
    ClUnknown,
}

fn count_gen(allow_cl: bool) -> BoxedStrategy<CountGen> {
    let imm = prop_oneof![4 => 0u8..=32, 1 => any::<u8>()];
    if allow_cl {
        prop_oneof![
            2 => Just(CountGen::One),
            4 => imm.prop_map(CountGen::Imm),
            4 => any::<u8>().prop_map(CountGen::ClKnown),
            1 => Just(CountGen::ClUnknown),
        ]
        .boxed()
    } else {
        prop_oneof![1 => Just(CountGen::One), 3 => imm.prop_map(CountGen::Imm)].boxed()
    }
}

/// Shifts and rotates: rol ror rcl rcr shl shr sal(/6) sar by 1, by imm8 and by cl
/// (cl set to any 0..255 first, or left as it is), 8/16/32-bit, register or memory.
pub fn shift_insns(ctx: Ctx) -> BoxedStrategy<Vec<Insn>> {
    let ext = prop_oneof![12 => select(vec![0u8, 1, 2, 3, 4, 5, 7]), 1 => Just(enc::SAL6)];
    (ext, size(), rm_gen(ctx, 0.3), count_gen(!ctx.avoid_ecx))
        .prop_map(move |(ext, sz, rm, cnt)| {
            let (mut setup, rm) = rm.dst(ctx, sz);
            let (count, known) = match cnt {
                CountGen::One => (Count::One, Some(1)),
                CountGen::Imm(c) => (Count::Imm(c), Some(c)),
                CountGen::ClKnown(c) => {
                    setup.push(Insn::new(enc::mov_r_imm(Size::B, CL, u32::from(c))));
                    (Count::Cl, Some(c))
                }
                CountGen::ClUnknown => (Count::Cl, None),
            };
            seq(
                setup,
                Insn::new(enc::shift(ext, sz, rm, count)).fx(shift_fx(ext, sz.bits(), known)),
            )
        })
        .boxed()
}

/// shld/shrd by imm8 and by cl, 16-bit (masked counts 0..16 only: larger ones leave the
/// result undefined) and 32-bit.
pub fn shxd_insns(ctx: Ctx) -> BoxedStrategy<Vec<Insn>> {
    (
        any::<bool>(),
        wd(),
        rm_gen(ctx, 0.3),
        0u8..8,
        any::<u8>(),
        0u8..3,
        0u8..8,
    )
        .prop_map(move |(right, sz, rm, src, c, form, hi)| {
            let (mut setup, rm) = rm.dst(ctx, sz);
            let c = if sz == Size::W {
                (c % 17) | (hi << 5)
            } else {
                c
            };
            let form = if ctx.avoid_ecx { 0 } else { form };
            let (count, known) = match form {
                0 => (Count::Imm(c), Some(c)),
                1 => {
                    setup.push(Insn::new(enc::mov_r_imm(Size::B, CL, u32::from(c))));
                    (Count::Cl, Some(c))
                }
                _ if sz == Size::D => (Count::Cl, None),
                _ => (Count::Imm(c), Some(c)),
            };
            seq(
                setup,
                Insn::new(enc::shxd(right, sz, rm, src, count)).fx(shxd_fx(known)),
            )
        })
        .boxed()
}

/// mul/imul (one-, two- and three-operand), div/idiv: mostly with the dividend and divisor
/// set up so that the quotient fits, rarely with whatever the registers hold (usually a
/// divide error) or dividing by zero. A divide error ends the snippet with #DE (so these
/// are kept rare: about one sequence in seven ends in one).
pub fn muldiv_insns(ctx: Ctx) -> BoxedStrategy<Vec<Insn>> {
    let mul1 = (any::<bool>(), size(), rm_gen(ctx, 0.3)).prop_map(|(signed, sz, rm)| {
        let (setup, rm) = rm.src();
        seq(
            setup,
            Insn::new(enc::grp3(if signed { enc::IMUL } else { enc::MUL }, sz, rm)).fx(MUL_FX),
        )
    });
    let imul2 = (wd(), 0u8..8, rm_gen(ctx, 0.3)).prop_map(move |(sz, d, rm)| {
        let (setup, rm) = rm.src();
        seq(
            setup,
            Insn::new(enc::imul_r_rm(sz, fix_dst(ctx, sz, d), rm)).fx(MUL_FX),
        )
    });
    let imul3 = (wd(), 0u8..8, rm_gen(ctx, 0.3), value(), any::<bool>()).prop_map(
        move |(sz, d, rm, imm, short)| {
            let (setup, rm) = rm.src();
            seq(
                setup,
                Insn::new(enc::imul_r_rm_imm(sz, fix_dst(ctx, sz, d), rm, imm, short)).fx(MUL_FX),
            )
        },
    );
    // Divisor registers that are neither part of the dividend nor esp.
    let div_safe = (
        any::<bool>(),
        size(),
        select(vec![ECX, EBX, EBP, ESI, EDI]),
        mem_operand(ctx),
        any::<bool>(),
        value(),
        any::<u32>(),
    )
        .prop_map(move |(signed, sz, r, m, use_mem, d, h)| {
            let r = if sz == Size::B {
                [1u8, 3, 5, 7, 2, 6][(r as usize) % 6]
            } else {
                r
            };
            let r = if ctx.avoid_ecx && (r == 1 || r == 5) {
                r + 2
            } else {
                r
            };
            let mut d = mask(sz, d);
            if d == 0 {
                d = 3;
            }
            if signed {
                let minus_one = mask(sz, u32::MAX);
                if d == minus_one {
                    d = mask(sz, (-7i32) as u32);
                }
            }
            let mut v = Vec::new();
            // The dividend registers must survive the memory operand's setup.
            let use_mem = use_mem && !m.uses(EAX) && !m.uses(EDX);
            let rm = if use_mem {
                v.extend(m.setup);
                v.push(Insn::new(enc::mov_rm_imm(sz, Rm::M(m.mem), d)));
                Rm::M(m.mem)
            } else {
                v.push(Insn::new(enc::mov_r_imm(sz, r, d)));
                Rm::R(r)
            };
            if signed {
                v.push(Insn::new(match sz {
                    Size::B => enc::CBW.to_vec(),
                    Size::W => enc::CWD.to_vec(),
                    Size::D => enc::CDQ.to_vec(),
                }));
            } else {
                let high = mask(sz, h) % d;
                v.push(Insn::new(match sz {
                    Size::B => enc::mov_r_imm(Size::B, AH, high),
                    _ => enc::mov_r_imm(sz, EDX, high),
                }));
            }
            v.push(
                Insn::new(enc::grp3(if signed { enc::IDIV } else { enc::DIV }, sz, rm)).fx(DIV_FX),
            );
            v
        });
    let div_any = (any::<bool>(), size(), rm_gen(ctx, 0.3)).prop_map(|(signed, sz, rm)| {
        let (setup, rm) = rm.src();
        seq(
            setup,
            Insn::new(enc::grp3(if signed { enc::IDIV } else { enc::DIV }, sz, rm)).fx(DIV_FX),
        )
    });
    let div_zero = (any::<bool>(), size()).prop_map(move |(signed, sz)| {
        let r = if ctx.avoid_ecx { EBX } else { ECX };
        vec![
            Insn::new(enc::mov_r_imm(sz, r, 0)),
            Insn::new(enc::grp3(
                if signed { enc::IDIV } else { enc::DIV },
                sz,
                Rm::R(r),
            ))
            .fx(DIV_FX),
        ]
    });
    prop_oneof![40 => mul1, 30 => imul2, 30 => imul3, 60 => div_safe, 2 => div_any, 1 => div_zero]
        .boxed()
}

/// bt bts btr btc (register and memory operands, imm8 and register bit offsets, big
/// offsets into memory that stay inside the data block), bsf bsr, bswap, setcc, cmovcc.
pub fn bit_insns(ctx: Ctx) -> BoxedStrategy<Vec<Insn>> {
    let bt_reg = (0u8..4, wd(), 0u8..8, 0u8..8, any::<u8>(), any::<bool>()).prop_map(
        move |(op, sz, d, s, imm, by_imm)| {
            let d = if op == enc::BT {
                d
            } else {
                fix_dst(ctx, sz, d)
            };
            let bytes = if by_imm {
                enc::bt_rm_imm(op, sz, Rm::R(d), imm)
            } else {
                enc::bt_rm_r(op, sz, Rm::R(d), s)
            };
            vec![Insn::new(bytes).fx(BT_FX)]
        },
    );
    let bt_mem_imm = (0u8..4, wd(), mem_operand(ctx), any::<u8>()).prop_map(|(op, sz, m, imm)| {
        seq(
            m.setup,
            Insn::new(enc::bt_rm_imm(op, sz, Rm::M(m.mem), imm)).fx(BT_FX),
        )
    });
    let regs: Vec<u8> = PTR_REGS
        .iter()
        .copied()
        .filter(|&r| !(ctx.avoid_ecx && r == ECX))
        .collect();
    let n = regs.len();
    // Bit offsets up to +-(mem_end/2 - 0x100) bytes around the middle of the allowed range.
    let half = ctx.mem_end / 2;
    let span = ((half - 0x100) * 8) as i32;
    let bt_mem_big = (0u8..4, wd(), 0..n, 1..n, any::<i32>(), -64i32..64).prop_map(
        move |(op, sz, bi, step, off, disp)| {
            let b = regs[bi];
            let o = regs[(bi + step) % n];
            let off = off % span;
            vec![
                mov_imm(b, DATA_ADDR + half),
                mov_imm(o, off as u32),
                Insn::new(enc::bt_rm_r(op, sz, Rm::M(Mem::based(b, disp)), o)).fx(BT_FX),
            ]
        },
    );
    let bsx = (any::<bool>(), wd(), 0u8..8, rm_gen(ctx, 0.3)).prop_map(move |(rev, sz, d, rm)| {
        let (setup, rm) = rm.src();
        seq(
            setup,
            Insn::new(enc::bsx(rev, sz, fix_dst(ctx, sz, d), rm)).fx(BSX_FX),
        )
    });
    let bswap = (0u8..8).prop_map(move |r| vec![Insn::new(enc::bswap(fix_dst(ctx, Size::D, r)))]);
    let setcc = (0u8..16, rm_gen(ctx, 0.3)).prop_map(move |(cc, rm)| {
        let (setup, rm) = rm.dst(ctx, Size::B);
        seq(setup, Insn::new(enc::setcc(cc, rm)).r(cc_reads(cc)))
    });
    let cmov = (0u8..16, wd(), 0u8..8, rm_gen(ctx, 0.3)).prop_map(move |(cc, sz, d, rm)| {
        let (setup, rm) = rm.src();
        seq(
            setup,
            Insn::new(enc::cmovcc(cc, sz, fix_dst(ctx, sz, d), rm)).r(cc_reads(cc)),
        )
    });
    prop_oneof![3 => bt_reg, 2 => bt_mem_imm, 3 => bt_mem_big, 3 => bsx, 1 => bswap, 3 => setcc, 3 => cmov].boxed()
}

/// String instructions: movs stos lods cmps scas, 8/16/32-bit, without prefix, with rep
/// (repe) and repne where meaningful, ecx 0..16, both directions; pointers set inside the
/// data block (sometimes overlapping for movs).
pub fn string_insns() -> BoxedStrategy<Vec<Insn>> {
    (
        select(vec![enc::MOVS, enc::STOS, enc::LODS, enc::CMPS, enc::SCAS]),
        size(),
        0u8..3,
        any::<bool>(),
        0u32..=16,
        0x80u32..DATA_LEN - 0x80,
        0x80u32..DATA_LEN - 0x80,
        prop_oneof![3 => Just(None), 1 => (-9i32..=9).prop_map(Some)],
    )
        .prop_map(|(op, sz, rep, down, n, s, d, overlap)| {
            let compare = op == enc::CMPS || op == enc::SCAS;
            let rep = match (rep, compare) {
                (0, _) => Rep::None,
                (1, _) | (_, false) => Rep::Rep,
                _ => Rep::Repne,
            };
            let d = match overlap {
                Some(delta) => (s as i32 + delta) as u32,
                None => d,
            };
            let mut v = vec![
                Insn::new([if down { enc::STD } else { enc::CLD }]),
                mov_imm(ESI, DATA_ADDR + s),
                mov_imm(EDI, DATA_ADDR + d),
            ];
            if rep != Rep::None {
                v.push(mov_imm(ECX, n));
            }
            let mut i = Insn::new(enc::string(rep, op, sz));
            if compare && (rep == Rep::None || n > 0) {
                i = i.w(ALL6);
            }
            v.push(i);
            v
        })
        .boxed()
}

/// BCD adjustments: daa das aaa aas aam aad, with AL/AH and flags set explicitly (sahf),
/// after an 8-bit add/adc/sub/sbb, or on whatever the registers hold. aam with an
/// immediate 0 raises #DE.
pub fn bcd_insns() -> BoxedStrategy<Vec<Insn>> {
    let op = (
        0u8..6,
        prop_oneof![4 => Just(10u8), 3 => 1u8..=255, 1 => Just(0u8), 1 => Just(16u8)],
    )
        .prop_map(|(k, imm)| match k {
            0 => Insn::new([enc::DAA]).fx((AF | CF, ALL6, OF)),
            1 => Insn::new([enc::DAS]).fx((AF | CF, ALL6, OF)),
            2 => Insn::new([enc::AAA]).fx((AF, ALL6, OF | SF | ZF | PF)),
            3 => Insn::new([enc::AAS]).fx((AF, ALL6, OF | SF | ZF | PF)),
            4 => Insn::new(enc::aam(if imm == 0 { 10 } else { imm })).fx((0, ALL6, OF | AF | CF)),
            _ => Insn::new(enc::aad(imm)).fx((0, ALL6, OF | AF | CF)),
        });
    let explicit = (op.clone(), any::<u8>(), any::<u16>()).prop_map(|(i, f, ax)| {
        vec![
            Insn::new(enc::mov_r_imm(Size::B, AH, u32::from(f))),
            Insn::new([enc::SAHF]).w(SF | ZF | AF | PF | CF),
            Insn::new(enc::mov_r_imm(Size::W, EAX, u32::from(ax))),
            i,
        ]
    });
    let after_alu = (
        op.clone(),
        select(vec![enc::ADD, enc::ADC, enc::SUB, enc::SBB]),
        any::<u8>(),
        0u8..8,
        any::<bool>(),
    )
        .prop_map(|(i, aop, imm, r, by_imm)| {
            let a = if by_imm {
                enc::alu_acc_imm(aop, Size::B, u32::from(imm))
            } else {
                enc::alu_rm_r(aop, Size::B, Rm::R(AL), r)
            };
            vec![Insn::new(a).fx(alu_fx(aop)), i]
        });
    let plain = op.prop_map(|i| vec![i]);
    let aam0 = Just(vec![Insn::new(enc::aam(0)).fx((0, ALL6, OF | AF | CF))]);
    prop_oneof![40 => explicit, 30 => after_alu, 20 => plain, 1 => aam0].boxed()
}

/// Encodings that are invalid or different in 64-bit mode: inc/dec 40-4f, push/pop r16/r32,
/// pusha/popa, salc, cbw/cwde/cwd/cdq, xchg, lea (esp base, 16-bit addressing), push/pop
/// of memory (including esp-relative), push imm, and the 0x82 ALU alias.
pub fn legacy_insns(ctx: Ctx) -> BoxedStrategy<Vec<Insn>> {
    let incdec = (any::<bool>(), wd(), 0u8..8).prop_map(move |(dec, sz, r)| {
        vec![Insn::new(enc::incdec_short(dec, sz, fix_dst(ctx, sz, r))).fx(INCDEC_FX)]
    });
    let pushpop = (wd(), 0u8..8, 0u8..8, any::<bool>()).prop_map(move |(sz, a, b, both)| {
        let mut v = vec![Insn::new(enc::push_r(sz, a))];
        if both {
            v.push(Insn::new(enc::pop_r(sz, fix_dst(ctx, sz, b))));
        }
        v
    });
    let pop = (wd(), 0u8..8)
        .prop_map(move |(sz, r)| vec![Insn::new(enc::pop_r(sz, fix_dst(ctx, sz, r)))]);
    let pusha = (wd(), any::<bool>()).prop_map(|(sz, pop)| {
        if pop {
            vec![Insn::new(enc::popa(sz))]
        } else {
            vec![Insn::new(enc::pusha(sz))]
        }
    });
    let misc = select(vec![0u8, 1, 2, 3, 4]).prop_map(|k| {
        vec![match k {
            0 => Insn::new([enc::SALC]).r(CF),
            1 => Insn::new(enc::CBW),
            2 => Insn::new(enc::CWDE),
            3 => Insn::new(enc::CWD),
            _ => Insn::new(enc::CDQ),
        }]
    });
    let xchg =
        (size(), rm_gen(ctx, 0.3), 0u8..8, any::<bool>()).prop_map(move |(sz, rm, r, short)| {
            let r = fix_dst(ctx, sz, r);
            if short && sz != Size::B {
                return vec![Insn::new(enc::xchg_acc(sz, r))];
            }
            let (setup, rm) = rm.dst(ctx, sz);
            seq(setup, Insn::new(enc::xchg_rm_r(sz, rm, r)))
        });
    let lea_esp = (
        0u8..8,
        any::<i32>(),
        any::<i8>(),
        prop::option::of((0u8..8, select(vec![1u8, 2, 4, 8]))),
    )
        .prop_map(move |(d, big, small, index)| {
            let disp = if big % 3 == 0 { big } else { i32::from(small) };
            let index = index.filter(|&(i, _)| i != ESP);
            vec![Insn::new(enc::lea(
                fix_dst(ctx, Size::D, d),
                Mem {
                    base: Some(ESP),
                    index,
                    disp,
                },
            ))]
        });
    let lea_any = (
        0u8..8,
        prop::option::of(0u8..8),
        prop::option::of((0u8..8, select(vec![1u8, 2, 4, 8]))),
        any::<i32>(),
    )
        .prop_map(move |(d, base, index, disp)| {
            let index = index.filter(|&(i, _)| i != ESP);
            vec![Insn::new(enc::lea(
                fix_dst(ctx, Size::D, d),
                Mem { base, index, disp },
            ))]
        });
    let lea16 = (0u8..8, 0u8..8, 0u8..3, any::<u16>(), any::<bool>()).prop_map(
        move |(d, rm16, md, disp, w)| {
            let d = fix_dst(ctx, Size::D, d);
            let mut b = enc::lea16(d, rm16, md, disp);
            if w {
                // 66 67 8d: a 16-bit destination.
                b.insert(0, 0x66);
            }
            vec![Insn::new(b)]
        },
    );
    let push_mem = (mem_operand(ctx), wd())
        .prop_map(|(m, sz)| seq(m.setup, Insn::new(enc::push_rm(sz, Rm::M(m.mem)))));
    let pop_mem = (mem_operand(ctx), wd())
        .prop_map(|(m, sz)| seq(m.setup, Insn::new(enc::pop_rm(sz, Rm::M(m.mem)))));
    let push_imm = (wd(), value(), any::<bool>())
        .prop_map(|(sz, v, short)| vec![Insn::new(enc::push_imm(sz, v, short))]);
    let alias82 = (0u8..8, rm_gen(ctx, 0.3), any::<u8>()).prop_map(move |(op, rm, imm)| {
        let (setup, rm) = if op == enc::CMP {
            rm.src()
        } else {
            rm.dst(ctx, Size::B)
        };
        seq(
            setup,
            Insn::new(enc::alu_rm_imm(
                op,
                Size::B,
                rm,
                u32::from(imm),
                ImmForm::Alias82,
            ))
            .fx(alu_fx(op)),
        )
    });
    prop_oneof![
        3 => incdec,
        3 => pushpop,
        1 => pop,
        2 => pusha,
        2 => misc,
        2 => xchg,
        2 => lea_esp,
        1 => lea_any,
        2 => lea16,
        2 => push_mem,
        2 => pop_mem,
        1 => push_imm,
        2 => alias82,
    ]
    .boxed()
}

/// Instructions for control-structure bodies: ALU, shifts by 1/imm, setcc/cmovcc, bit ops.
fn body_insns(ctx: Ctx) -> BoxedStrategy<Vec<Insn>> {
    prop_oneof![4 => alu_insns(ctx), 2 => shift_insns(ctx), 2 => bit_insns(ctx)].boxed()
}

fn body(ctx: Ctx, max_units: usize) -> impl Strategy<Value = Vec<Insn>> {
    vec(body_insns(ctx), 0..=max_units).prop_map(|v| v.into_iter().flatten().collect())
}

/// Control structures: jcc/jmp over a block, call/ret, loop/loope/loopne, jecxz,
/// indirect jumps (register, push+ret, through memory).
pub fn control_units() -> BoxedStrategy<Unit> {
    let skip = (prop::option::weighted(0.85, 0u8..16), body(BODY, 4))
        .prop_map(|(cc, body)| Unit::Skip { cc, body });
    let call = body(BODY, 3).prop_map(|body| Unit::Call { body });
    let lp = (
        select(vec![0xe2u8, 0xe1, 0xe0]),
        1u32..=5,
        body(LOOP_BODY, 3),
    )
        .prop_map(|(opcode, count, body)| Unit::Loop {
            opcode,
            count,
            body,
        });
    let jecxz = (prop::option::weighted(0.7, 0u32..2), body(BODY, 3))
        .prop_map(|(ecx, body)| Unit::Jecxz { ecx, body });
    let indirect = (
        0u8..3,
        select(vec![EAX, ECX, EDX, EBX, EBP, ESI, EDI]),
        0u32..DATA_LEN / 4,
        body(BODY, 2),
    )
        .prop_map(|(kind, reg, slot, body)| Unit::Indirect {
            kind,
            reg,
            slot: slot * 4,
            body,
        });
    prop_oneof![4 => skip, 2 => call, 3 => lp, 2 => jecxz, 2 => indirect].boxed()
}

fn units(s: BoxedStrategy<Vec<Insn>>) -> BoxedStrategy<Unit> {
    s.prop_map(Unit::Seq).boxed()
}

fn cases(u: BoxedStrategy<Unit>) -> BoxedStrategy<Case> {
    (vec(u, 1..=20), init())
        .prop_map(|(us, init)| assemble(&us, &init))
        .boxed()
}

/// Flag-setting ALU sequences.
pub fn alu() -> BoxedStrategy<Case> {
    cases(units(alu_insns(TOP)))
}

/// Shifts, rotates, shld/shrd mixed with some ALU.
pub fn shifts() -> BoxedStrategy<Case> {
    cases(prop_oneof![5 => units(shift_insns(TOP)), 2 => units(shxd_insns(TOP)), 1 => units(alu_insns(TOP))].boxed())
}

/// mul/imul/div/idiv mixed with some ALU.
pub fn muldiv() -> BoxedStrategy<Case> {
    cases(prop_oneof![4 => units(muldiv_insns(TOP)), 1 => units(alu_insns(TOP))].boxed())
}

/// Bit operations, setcc, cmovcc mixed with ALU (which produces the flags they read).
pub fn bits() -> BoxedStrategy<Case> {
    cases(prop_oneof![3 => units(bit_insns(TOP)), 1 => units(alu_insns(TOP))].boxed())
}

/// String instructions mixed with some ALU.
pub fn strings() -> BoxedStrategy<Case> {
    cases(prop_oneof![4 => units(string_insns()), 1 => units(alu_insns(TOP))].boxed())
}

/// BCD adjustments mixed with some ALU.
pub fn bcd() -> BoxedStrategy<Case> {
    cases(prop_oneof![4 => units(bcd_insns()), 1 => units(alu_insns(TOP))].boxed())
}

/// 64-bit-invalid encodings mixed with some ALU.
pub fn legacy() -> BoxedStrategy<Case> {
    cases(prop_oneof![4 => units(legacy_insns(TOP)), 1 => units(alu_insns(TOP))].boxed())
}

/// Control structures mixed with straight-line code.
pub fn control() -> BoxedStrategy<Case> {
    cases(
        prop_oneof![3 => control_units(), 2 => units(alu_insns(TOP)), 1 => units(shift_insns(TOP))]
            .boxed(),
    )
}

/// Everything.
pub fn mixed() -> BoxedStrategy<Case> {
    cases(
        prop_oneof![
            4 => units(alu_insns(TOP)),
            2 => units(shift_insns(TOP)),
            1 => units(shxd_insns(TOP)),
            2 => units(muldiv_insns(TOP)),
            2 => units(bit_insns(TOP)),
            2 => units(string_insns()),
            1 => units(bcd_insns()),
            2 => units(legacy_insns(TOP)),
            2 => control_units(),
        ]
        .boxed(),
    )
}

/// All families by name (for tests that iterate over them).
pub fn families() -> Vec<(&'static str, BoxedStrategy<Case>)> {
    vec![
        ("alu", alu()),
        ("shifts", shifts()),
        ("muldiv", muldiv()),
        ("bits", bits()),
        ("strings", strings()),
        ("bcd", bcd()),
        ("legacy", legacy()),
        ("control", control()),
        ("mixed", mixed()),
    ]
}
