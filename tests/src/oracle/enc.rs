//! A small hand-written encoder for the 32-bit x86 instruction forms the oracle's
//! generators produce (32-bit code segment: operand and address size 32 by default, 0x66
//! selects 16-bit operands, 0x67 16-bit addressing). The generators' tests check every
//! encoding against iced-x86's decoder.

/// 32-bit register numbers (also the 16-bit ones; for 8-bit operands 0..7 are
/// al cl dl bl ah ch dh bh).
pub const EAX: u8 = 0;
pub const ECX: u8 = 1;
pub const EDX: u8 = 2;
pub const EBX: u8 = 3;
pub const ESP: u8 = 4;
pub const EBP: u8 = 5;
pub const ESI: u8 = 6;
pub const EDI: u8 = 7;
pub const AL: u8 = 0;
pub const CL: u8 = 1;
pub const AH: u8 = 4;

/// Operand size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Size {
    B,
    W,
    D,
}

impl Size {
    pub fn bits(self) -> u32 {
        match self {
            Size::B => 8,
            Size::W => 16,
            Size::D => 32,
        }
    }
    pub fn bytes(self) -> u32 {
        self.bits() / 8
    }
    fn prefix(self, out: &mut Vec<u8>) {
        if self == Size::W {
            out.push(0x66);
        }
    }
    /// The "w" bit of the classic opcodes (0 for byte operands).
    fn w(self) -> u8 {
        u8::from(self != Size::B)
    }
    fn imm(self, out: &mut Vec<u8>, v: u32) {
        match self {
            Size::B => out.push(v as u8),
            Size::W => out.extend_from_slice(&(v as u16).to_le_bytes()),
            Size::D => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

/// A 32-bit memory operand: `[base + index*scale + disp]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mem {
    pub base: Option<u8>,
    /// (register, scale 1/2/4/8); the register must not be esp.
    pub index: Option<(u8, u8)>,
    pub disp: i32,
}

impl Mem {
    pub fn abs(addr: u32) -> Mem {
        Mem {
            base: None,
            index: None,
            disp: addr as i32,
        }
    }
    pub fn based(base: u8, disp: i32) -> Mem {
        Mem {
            base: Some(base),
            index: None,
            disp,
        }
    }
}

/// A register-or-memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rm {
    R(u8),
    M(Mem),
}

fn scale_bits(s: u8) -> u8 {
    match s {
        1 => 0,
        2 => 1,
        4 => 2,
        8 => 3,
        _ => panic!("bad scale {s}"),
    }
}

fn disp_mode(base_is_ebp: bool, d: i32) -> u8 {
    if d == 0 && !base_is_ebp {
        0
    } else if (-128..128).contains(&d) {
        1
    } else {
        2
    }
}

fn push_disp(out: &mut Vec<u8>, md: u8, d: i32) {
    match md {
        1 => out.push(d as i8 as u8),
        2 => out.extend_from_slice(&d.to_le_bytes()),
        _ => {}
    }
}

/// Appends a ModRM byte (plus SIB and displacement) with `reg` in the reg field.
pub fn modrm(out: &mut Vec<u8>, reg: u8, rm: Rm) {
    let reg = (reg & 7) << 3;
    let m = match rm {
        Rm::R(r) => {
            out.push(0xc0 | reg | (r & 7));
            return;
        }
        Rm::M(m) => m,
    };
    match (m.base, m.index) {
        (None, None) => {
            out.push(0x05 | reg);
            out.extend_from_slice(&m.disp.to_le_bytes());
        }
        (Some(b), None) if b != ESP => {
            let md = disp_mode(b == EBP, m.disp);
            out.push((md << 6) | reg | b);
            push_disp(out, md, m.disp);
        }
        (base, index) => {
            let (ix, ss) = match index {
                Some((i, s)) => {
                    assert!(i != ESP, "esp cannot be an index");
                    (i, scale_bits(s))
                }
                None => (4, 0),
            };
            match base {
                None => {
                    out.push(0x04 | reg);
                    out.push((ss << 6) | (ix << 3) | 5);
                    out.extend_from_slice(&m.disp.to_le_bytes());
                }
                Some(b) => {
                    let md = disp_mode(b == EBP, m.disp);
                    out.push((md << 6) | reg | 4);
                    out.push((ss << 6) | (ix << 3) | b);
                    push_disp(out, md, m.disp);
                }
            }
        }
    }
}

fn with(sz: Size, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut o = Vec::with_capacity(12);
    sz.prefix(&mut o);
    f(&mut o);
    o
}

// ---- ALU ----

/// Group-1 operation numbers.
pub const ADD: u8 = 0;
pub const OR: u8 = 1;
pub const ADC: u8 = 2;
pub const SBB: u8 = 3;
pub const AND: u8 = 4;
pub const SUB: u8 = 5;
pub const XOR: u8 = 6;
pub const CMP: u8 = 7;
pub const ALU_NAMES: [&str; 8] = ["add", "or", "adc", "sbb", "and", "sub", "xor", "cmp"];

/// `op rm, r` (00/01 ...).
pub fn alu_rm_r(op: u8, sz: Size, rm: Rm, r: u8) -> Vec<u8> {
    with(sz, |o| {
        o.push((op << 3) | sz.w());
        modrm(o, r, rm);
    })
}

/// `op r, rm` (02/03 ...).
pub fn alu_r_rm(op: u8, sz: Size, r: u8, rm: Rm) -> Vec<u8> {
    with(sz, |o| {
        o.push((op << 3) | 2 | sz.w());
        modrm(o, r, rm);
    })
}

/// How an ALU immediate is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImmForm {
    /// 80 ib / 81 iw/id.
    Full,
    /// 83 ib, sign-extended (16/32-bit only).
    Short,
    /// 82 ib: the 32-bit-only alias of 80 (invalid in 64-bit mode; 8-bit only).
    Alias82,
}

/// `op rm, imm`.
pub fn alu_rm_imm(op: u8, sz: Size, rm: Rm, imm: u32, form: ImmForm) -> Vec<u8> {
    with(sz, |o| match (sz, form) {
        (Size::B, ImmForm::Alias82) => {
            o.push(0x82);
            modrm(o, op, rm);
            o.push(imm as u8);
        }
        (Size::B, _) => {
            o.push(0x80);
            modrm(o, op, rm);
            o.push(imm as u8);
        }
        (_, ImmForm::Short) => {
            o.push(0x83);
            modrm(o, op, rm);
            o.push(imm as u8);
        }
        _ => {
            o.push(0x81);
            modrm(o, op, rm);
            sz.imm(o, imm);
        }
    })
}

/// `op al/ax/eax, imm` (04/05 ...).
pub fn alu_acc_imm(op: u8, sz: Size, imm: u32) -> Vec<u8> {
    with(sz, |o| {
        o.push((op << 3) | 4 | sz.w());
        sz.imm(o, imm);
    })
}

/// `test rm, r`.
pub fn test_rm_r(sz: Size, rm: Rm, r: u8) -> Vec<u8> {
    with(sz, |o| {
        o.push(0x84 | sz.w());
        modrm(o, r, rm);
    })
}

/// `test rm, imm`.
pub fn test_rm_imm(sz: Size, rm: Rm, imm: u32) -> Vec<u8> {
    with(sz, |o| {
        o.push(0xf6 | sz.w());
        modrm(o, 0, rm);
        sz.imm(o, imm);
    })
}

/// `test al/ax/eax, imm`.
pub fn test_acc_imm(sz: Size, imm: u32) -> Vec<u8> {
    with(sz, |o| {
        o.push(0xa8 | sz.w());
        sz.imm(o, imm);
    })
}

/// Group-3 extensions.
pub const NOT: u8 = 2;
pub const NEG: u8 = 3;
pub const MUL: u8 = 4;
pub const IMUL: u8 = 5;
pub const DIV: u8 = 6;
pub const IDIV: u8 = 7;

/// f6/f7 /ext rm: not neg mul imul div idiv.
pub fn grp3(ext: u8, sz: Size, rm: Rm) -> Vec<u8> {
    with(sz, |o| {
        o.push(0xf6 | sz.w());
        modrm(o, ext, rm);
    })
}

/// fe/ff /0 /1: inc/dec rm.
pub fn incdec(dec: bool, sz: Size, rm: Rm) -> Vec<u8> {
    with(sz, |o| {
        o.push(0xfe | sz.w());
        modrm(o, u8::from(dec), rm);
    })
}

/// 40+r / 48+r: inc/dec r16/r32 (REX prefixes in 64-bit mode).
pub fn incdec_short(dec: bool, sz: Size, r: u8) -> Vec<u8> {
    assert!(sz != Size::B);
    with(sz, |o| o.push(0x40 | (u8::from(dec) << 3) | r))
}

// ---- shifts ----

pub const ROL: u8 = 0;
pub const ROR: u8 = 1;
pub const RCL: u8 = 2;
pub const RCR: u8 = 3;
pub const SHL: u8 = 4;
pub const SHR: u8 = 5;
/// The undocumented /6 alias of shl.
pub const SAL6: u8 = 6;
pub const SAR: u8 = 7;

/// Shift count operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    One,
    Cl,
    Imm(u8),
}

/// d0/d1 (by 1), d2/d3 (by cl), c0/c1 ib.
pub fn shift(ext: u8, sz: Size, rm: Rm, count: Count) -> Vec<u8> {
    with(sz, |o| match count {
        Count::One => {
            o.push(0xd0 | sz.w());
            modrm(o, ext, rm);
        }
        Count::Cl => {
            o.push(0xd2 | sz.w());
            modrm(o, ext, rm);
        }
        Count::Imm(c) => {
            o.push(0xc0 | sz.w());
            modrm(o, ext, rm);
            o.push(c);
        }
    })
}

/// shld (0f a4 ib / 0f a5) or shrd (0f ac ib / 0f ad) rm, r, count.
pub fn shxd(right: bool, sz: Size, rm: Rm, r: u8, count: Count) -> Vec<u8> {
    assert!(sz != Size::B);
    with(sz, |o| {
        let base = if right { 0xac } else { 0xa4 };
        o.push(0x0f);
        match count {
            Count::Cl => {
                o.push(base + 1);
                modrm(o, r, rm);
            }
            Count::Imm(c) => {
                o.push(base);
                modrm(o, r, rm);
                o.push(c);
            }
            Count::One => {
                o.push(base);
                modrm(o, r, rm);
                o.push(1);
            }
        }
    })
}

// ---- multiply ----

/// 0f af: imul r, rm.
pub fn imul_r_rm(sz: Size, r: u8, rm: Rm) -> Vec<u8> {
    assert!(sz != Size::B);
    with(sz, |o| {
        o.extend_from_slice(&[0x0f, 0xaf]);
        modrm(o, r, rm);
    })
}

/// 6b ib (short) / 69 iw/id: imul r, rm, imm.
pub fn imul_r_rm_imm(sz: Size, r: u8, rm: Rm, imm: u32, short: bool) -> Vec<u8> {
    assert!(sz != Size::B);
    with(sz, |o| {
        o.push(if short { 0x6b } else { 0x69 });
        modrm(o, r, rm);
        if short {
            o.push(imm as u8);
        } else {
            sz.imm(o, imm);
        }
    })
}

// ---- bits ----

pub const BT: u8 = 0;
pub const BTS: u8 = 1;
pub const BTR: u8 = 2;
pub const BTC: u8 = 3;

/// bt/bts/btr/btc rm, r (0f a3 / ab / b3 / bb).
pub fn bt_rm_r(op: u8, sz: Size, rm: Rm, r: u8) -> Vec<u8> {
    assert!(sz != Size::B);
    with(sz, |o| {
        o.extend_from_slice(&[0x0f, [0xa3, 0xab, 0xb3, 0xbb][op as usize]]);
        modrm(o, r, rm);
    })
}

/// bt/bts/btr/btc rm, imm8 (0f ba /4..7).
pub fn bt_rm_imm(op: u8, sz: Size, rm: Rm, imm: u8) -> Vec<u8> {
    assert!(sz != Size::B);
    with(sz, |o| {
        o.extend_from_slice(&[0x0f, 0xba]);
        modrm(o, 4 + op, rm);
        o.push(imm);
    })
}

/// bsf (0f bc) / bsr (0f bd) r, rm.
pub fn bsx(reverse: bool, sz: Size, r: u8, rm: Rm) -> Vec<u8> {
    assert!(sz != Size::B);
    with(sz, |o| {
        o.extend_from_slice(&[0x0f, if reverse { 0xbd } else { 0xbc }]);
        modrm(o, r, rm);
    })
}

/// 0f c8+r: bswap r32.
pub fn bswap(r: u8) -> Vec<u8> {
    vec![0x0f, 0xc8 + r]
}

/// 0f 90+cc /0: setcc rm8.
pub fn setcc(cc: u8, rm: Rm) -> Vec<u8> {
    let mut o = vec![0x0f, 0x90 + cc];
    modrm(&mut o, 0, rm);
    o
}

/// 0f 40+cc: cmovcc r, rm.
pub fn cmovcc(cc: u8, sz: Size, r: u8, rm: Rm) -> Vec<u8> {
    assert!(sz != Size::B);
    with(sz, |o| {
        o.extend_from_slice(&[0x0f, 0x40 + cc]);
        modrm(o, r, rm);
    })
}

// ---- moves ----

/// b0+r ib / b8+r iw/id.
pub fn mov_r_imm(sz: Size, r: u8, imm: u32) -> Vec<u8> {
    with(sz, |o| {
        o.push(if sz == Size::B { 0xb0 } else { 0xb8 } + r);
        sz.imm(o, imm);
    })
}

/// c6/c7 /0: mov rm, imm.
pub fn mov_rm_imm(sz: Size, rm: Rm, imm: u32) -> Vec<u8> {
    with(sz, |o| {
        o.push(0xc6 | sz.w());
        modrm(o, 0, rm);
        sz.imm(o, imm);
    })
}

/// 88/89: mov rm, r.
pub fn mov_rm_r(sz: Size, rm: Rm, r: u8) -> Vec<u8> {
    with(sz, |o| {
        o.push(0x88 | sz.w());
        modrm(o, r, rm);
    })
}

/// 8a/8b: mov r, rm.
pub fn mov_r_rm(sz: Size, r: u8, rm: Rm) -> Vec<u8> {
    with(sz, |o| {
        o.push(0x8a | sz.w());
        modrm(o, r, rm);
    })
}

/// movzx/movsx r32, rm8/rm16 (0f b6/b7/be/bf).
pub fn movx(signed: bool, src: Size, r: u8, rm: Rm) -> Vec<u8> {
    let op = match (signed, src) {
        (false, Size::B) => 0xb6,
        (false, _) => 0xb7,
        (true, Size::B) => 0xbe,
        (true, _) => 0xbf,
    };
    let mut o = vec![0x0f, op];
    modrm(&mut o, r, rm);
    o
}

/// 8d: lea r32, m.
pub fn lea(r: u8, m: Mem) -> Vec<u8> {
    let mut o = vec![0x8d];
    modrm(&mut o, r, Rm::M(m));
    o
}

/// 67 8d: lea r32, m with 16-bit addressing. `rm16` 0..7 is [bx+si] [bx+di] [bp+si]
/// [bp+di] [si] [di] [bp] [bx]; `md` the ModRM mod (0: no displacement, except rm16 6
/// which is then an absolute disp16; 1: disp8; 2: disp16).
pub fn lea16(r: u8, rm16: u8, md: u8, disp: u16) -> Vec<u8> {
    let mut o = vec![0x67, 0x8d, (md << 6) | (r << 3) | rm16];
    match (md, rm16) {
        (0, 6) | (2, _) => o.extend_from_slice(&disp.to_le_bytes()),
        (1, _) => o.push(disp as u8),
        _ => {}
    }
    o
}

// ---- string instructions ----

/// Repeat prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rep {
    None,
    /// f3 (rep / repe).
    Rep,
    /// f2 (repne).
    Repne,
}

pub const MOVS: u8 = 0xa4;
pub const CMPS: u8 = 0xa6;
pub const STOS: u8 = 0xaa;
pub const LODS: u8 = 0xac;
pub const SCAS: u8 = 0xae;

/// [66] [f3/f2] op.
pub fn string(rep: Rep, op: u8, sz: Size) -> Vec<u8> {
    with(sz, |o| {
        match rep {
            Rep::None => {}
            Rep::Rep => o.push(0xf3),
            Rep::Repne => o.push(0xf2),
        }
        o.push(op | sz.w());
    })
}

// ---- stack and legacy ----

pub fn push_r(sz: Size, r: u8) -> Vec<u8> {
    with(sz, |o| o.push(0x50 + r))
}
pub fn pop_r(sz: Size, r: u8) -> Vec<u8> {
    with(sz, |o| o.push(0x58 + r))
}
/// 6a ib (sign-extended) / 68 iw/id.
pub fn push_imm(sz: Size, imm: u32, short: bool) -> Vec<u8> {
    with(sz, |o| {
        if short {
            o.push(0x6a);
            o.push(imm as u8);
        } else {
            o.push(0x68);
            sz.imm(o, imm);
        }
    })
}
/// ff /6: push rm.
pub fn push_rm(sz: Size, rm: Rm) -> Vec<u8> {
    with(sz, |o| {
        o.push(0xff);
        modrm(o, 6, rm);
    })
}
/// 8f /0: pop rm.
pub fn pop_rm(sz: Size, rm: Rm) -> Vec<u8> {
    with(sz, |o| {
        o.push(0x8f);
        modrm(o, 0, rm);
    })
}
pub fn pusha(sz: Size) -> Vec<u8> {
    with(sz, |o| o.push(0x60))
}
pub fn popa(sz: Size) -> Vec<u8> {
    with(sz, |o| o.push(0x61))
}
/// 90+r: xchg ax/eax, r.
pub fn xchg_acc(sz: Size, r: u8) -> Vec<u8> {
    with(sz, |o| o.push(0x90 + r))
}
/// 86/87: xchg rm, r.
pub fn xchg_rm_r(sz: Size, rm: Rm, r: u8) -> Vec<u8> {
    with(sz, |o| {
        o.push(0x86 | sz.w());
        modrm(o, r, rm);
    })
}

pub const CBW: [u8; 2] = [0x66, 0x98];
pub const CWDE: [u8; 1] = [0x98];
pub const CWD: [u8; 2] = [0x66, 0x99];
pub const CDQ: [u8; 1] = [0x99];
pub const SALC: u8 = 0xd6;
pub const LAHF: u8 = 0x9f;
pub const SAHF: u8 = 0x9e;
pub const CLC: u8 = 0xf8;
pub const STC: u8 = 0xf9;
pub const CMC: u8 = 0xf5;
pub const CLD: u8 = 0xfc;
pub const STD: u8 = 0xfd;
pub const DAA: u8 = 0x27;
pub const DAS: u8 = 0x2f;
pub const AAA: u8 = 0x37;
pub const AAS: u8 = 0x3f;
pub fn aam(imm: u8) -> Vec<u8> {
    vec![0xd4, imm]
}
pub fn aad(imm: u8) -> Vec<u8> {
    vec![0xd5, imm]
}

// ---- control transfer ----

pub fn jcc8(cc: u8, rel: i8) -> Vec<u8> {
    vec![0x70 + cc, rel as u8]
}
pub fn jcc32(cc: u8, rel: i32) -> Vec<u8> {
    let mut o = vec![0x0f, 0x80 + cc];
    o.extend_from_slice(&rel.to_le_bytes());
    o
}
pub fn jmp8(rel: i8) -> Vec<u8> {
    vec![0xeb, rel as u8]
}
pub fn jmp32(rel: i32) -> Vec<u8> {
    let mut o = vec![0xe9];
    o.extend_from_slice(&rel.to_le_bytes());
    o
}
pub fn call32(rel: i32) -> Vec<u8> {
    let mut o = vec![0xe8];
    o.extend_from_slice(&rel.to_le_bytes());
    o
}
pub const RET: u8 = 0xc3;
/// e2 loop / e1 loope / e0 loopne.
pub fn loopx(opcode: u8, rel: i8) -> Vec<u8> {
    vec![opcode, rel as u8]
}
pub fn jecxz(rel: i8) -> Vec<u8> {
    vec![0xe3, rel as u8]
}
/// ff /4: jmp rm.
pub fn jmp_rm(rm: Rm) -> Vec<u8> {
    let mut o = vec![0xff];
    modrm(&mut o, 4, rm);
    o
}

// ---- atomics ----

/// The `lock` prefix in front of an encoded instruction.
pub fn lock(mut insn: Vec<u8>) -> Vec<u8> {
    insn.insert(0, 0xf0);
    insn
}

/// 0f c0/c1: xadd rm, r.
pub fn xadd(sz: Size, rm: Rm, r: u8) -> Vec<u8> {
    with(sz, |o| {
        o.extend_from_slice(&[0x0f, 0xc0 | sz.w()]);
        modrm(o, r, rm);
    })
}

/// 0f b0/b1: cmpxchg rm, r (compares with al/ax/eax).
pub fn cmpxchg(sz: Size, rm: Rm, r: u8) -> Vec<u8> {
    with(sz, |o| {
        o.extend_from_slice(&[0x0f, 0xb0 | sz.w()]);
        modrm(o, r, rm);
    })
}

/// 0f c7 /1: cmpxchg8b m64.
pub fn cmpxchg8b(m: Mem) -> Vec<u8> {
    let mut o = vec![0x0f, 0xc7];
    modrm(&mut o, 1, Rm::M(m));
    o
}
