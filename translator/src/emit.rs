//! A small assembler over iced-x86's encoder: instructions are encoded one at a
//! time at their final host address, with raw bytes and rel32 fields for the
//! patchable jumps that chaining rewrites.

use iced_x86::{Code, ConditionCode, Encoder, Instruction, MemoryOperand, Register};
use thiserror::Error;

/// Encoding failures: a translator bug or a guest instruction form the host cannot
/// express (the caller turns the latter into a fallback).
#[derive(Debug, Error)]
#[error("cannot encode host instruction: {0}")]
pub struct EmitError(pub String);

/// Host code under construction for one unit or stub.
pub struct Asm {
    enc: Encoder,
    base: u64,
    buf: Vec<u8>,
    /// Host instructions emitted (for statistics).
    pub count: usize,
}

impl Asm {
    /// Starts a buffer whose first byte will live at host address `base`.
    pub fn new(base: u64) -> Self {
        Self { enc: Encoder::new(64), base, buf: Vec::with_capacity(512), count: 0 }
    }

    /// Current offset from `base`.
    pub fn pos(&self) -> usize {
        self.buf.len()
    }

    /// Host address of the next byte.
    pub fn here(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// Encodes one instruction at the current position.
    pub fn ins(&mut self, i: &Instruction) -> Result<(), EmitError> {
        let ip = self.here();
        let result = self.enc.encode(i, ip);
        // Take the buffer either way: a failed encode can leave partial bytes in it,
        // which must not leak into the next instruction.
        let bytes = self.enc.take_buffer();
        result.map_err(|e| EmitError(e.to_string()))?;
        self.buf.extend_from_slice(&bytes);
        self.count += 1;
        Ok(())
    }

    /// Drops everything emitted after offset `pos` (a failed translation attempt).
    pub fn truncate(&mut self, pos: usize) {
        self.buf.truncate(pos);
    }

    /// Appends raw bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// `jmp rel32` to `target`; returns the offset of the rel32 field.
    pub fn jmp(&mut self, target: u64) -> usize {
        self.buf.push(0xe9);
        self.rel32(target)
    }

    /// `jcc rel32` to `target`; returns the offset of the rel32 field.
    pub fn jcc(&mut self, cc: ConditionCode, target: u64) -> usize {
        self.buf.extend_from_slice(&[0x0f, 0x80 | cc_nibble(cc)]);
        self.rel32(target)
    }

    fn rel32(&mut self, target: u64) -> usize {
        let at = self.buf.len();
        let rel = rel32_for(self.base + at as u64, target);
        self.buf.extend_from_slice(&rel.to_le_bytes());
        self.count += 1;
        at
    }

    /// Rewrites the rel32 field at offset `at` to reach `target`.
    pub fn patch_rel32(&mut self, at: usize, target: u64) {
        let rel = rel32_for(self.base + at as u64, target);
        self.buf[at..at + 4].copy_from_slice(&rel.to_le_bytes());
    }

    /// Rewrites the rel8 field at offset `at` to reach the current position.
    pub fn patch_rel8_here(&mut self, at: usize) {
        let rel = self.buf.len() - (at + 1);
        let rel = i8::try_from(rel).expect("short branch out of range");
        self.buf[at] = rel.to_le_bytes()[0];
    }

    /// The finished bytes.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    // ---- glue helpers ----

    /// `mov dword [r15+off], imm32`.
    pub fn store_ctx_imm32(&mut self, off: i32, v: u32) -> Result<(), EmitError> {
        self.ins(&ins2i(Code::Mov_rm32_imm32, ctx(off), v))
    }

    /// `mov dword [r15+off], r32`.
    pub fn store_ctx32(&mut self, off: i32, r: Register) -> Result<(), EmitError> {
        self.ins(&ins2m(Code::Mov_rm32_r32, ctx(off), r))
    }

    /// `mov r32, dword [r15+off]`.
    pub fn load_ctx32(&mut self, r: Register, off: i32) -> Result<(), EmitError> {
        self.ins(&ins2rm(Code::Mov_r32_rm32, r, ctx(off)))
    }

    /// `mov qword [r15+off], r64`.
    pub fn store_ctx64(&mut self, off: i32, r: Register) -> Result<(), EmitError> {
        self.ins(&ins2m(Code::Mov_rm64_r64, ctx(off), r))
    }

    /// `mov r64, qword [r15+off]`.
    pub fn load_ctx64(&mut self, r: Register, off: i32) -> Result<(), EmitError> {
        self.ins(&ins2rm(Code::Mov_r64_rm64, r, ctx(off)))
    }

    /// `lea dst32, [base64 + disp]` — 32-bit result, flags untouched.
    pub fn lea32(&mut self, dst: Register, base: Register, disp: i64) -> Result<(), EmitError> {
        self.ins(&ins2rm(Code::Lea_r32_m, dst, MemoryOperand::with_base_displ(base, disp)))
    }

    /// `mov dst, src` for two registers of the same size (16, 32 or 64 bit).
    pub fn mov_rr_sized(&mut self, dst: Register, src: Register) -> Result<(), EmitError> {
        let code = match dst.size() {
            8 => Code::Mov_r64_rm64,
            2 => Code::Mov_r16_rm16,
            1 => Code::Mov_r8_rm8,
            _ => Code::Mov_r32_rm32,
        };
        self.ins(&Instruction::with2(code, dst, src).map_err(ice)?)
    }

    /// `mov dst, src` for two registers of the same size (32 or 64 bit).
    pub fn mov_rr(&mut self, dst: Register, src: Register) -> Result<(), EmitError> {
        let code = if dst.size() == 8 { Code::Mov_r64_rm64 } else { Code::Mov_r32_rm32 };
        self.ins(&Instruction::with2(code, dst, src).map_err(ice)?)
    }
}

fn rel32_for(field: u64, target: u64) -> i32 {
    let next = field.wrapping_add(4);
    let rel = target.wrapping_sub(next) as i64;
    i32::try_from(rel).expect("code cache branch beyond rel32 range")
}

/// The low nibble of `0f 8x` for a condition code.
pub fn cc_nibble(cc: ConditionCode) -> u8 {
    match cc {
        ConditionCode::o => 0x0,
        ConditionCode::no => 0x1,
        ConditionCode::b => 0x2,
        ConditionCode::ae => 0x3,
        ConditionCode::e => 0x4,
        ConditionCode::ne => 0x5,
        ConditionCode::be => 0x6,
        ConditionCode::a => 0x7,
        ConditionCode::s => 0x8,
        ConditionCode::ns => 0x9,
        ConditionCode::p => 0xa,
        ConditionCode::np => 0xb,
        ConditionCode::l => 0xc,
        ConditionCode::ge => 0xd,
        ConditionCode::le => 0xe,
        ConditionCode::g => 0xf,
        ConditionCode::None => unreachable!("jcc without condition"),
    }
}

/// `[r15 + off]`: a field of the vCPU context.
pub fn ctx(off: i32) -> MemoryOperand {
    MemoryOperand::with_base_displ(Register::R15, i64::from(off))
}

/// `%gs:[base32 + disp]`: guest memory through the current view.
pub fn gmem(base: Register, disp: i64) -> MemoryOperand {
    let mut m = MemoryOperand::with_base_displ(base, disp);
    m.segment_prefix = Register::GS;
    m
}

pub(crate) fn ice(e: iced_x86::IcedError) -> EmitError {
    EmitError(e.to_string())
}

/// Builds `op reg, mem`.
pub fn ins2rm(code: Code, r: Register, m: MemoryOperand) -> Instruction {
    Instruction::with2(code, r, m).expect("valid operands")
}

/// Builds `op mem, reg`.
pub fn ins2m(code: Code, m: MemoryOperand, r: Register) -> Instruction {
    Instruction::with2(code, m, r).expect("valid operands")
}

/// Builds `op mem, imm32`.
pub fn ins2i(code: Code, m: MemoryOperand, v: u32) -> Instruction {
    Instruction::with2(code, m, v).expect("valid operands")
}
