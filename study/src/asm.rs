//! A tiny assembler for the study's guest code: the handful of 32-bit instructions the
//! snippets use, absolute addresses for memory operands, and labels (for jumps, far
//! pointers and pushed return addresses). Each method says the AT&T form it emits; the
//! unit tests decode every form with iced-x86 to check the bytes.

use std::collections::BTreeMap;
use thiserror::Error;

/// A 32-bit general register, by encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Eax = 0,
    Ecx = 1,
    Edx = 2,
    Ebx = 3,
    Esp = 4,
    Ebp = 5,
    Esi = 6,
    Edi = 7,
}

/// A segment register, by encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sreg {
    Es = 0,
    Cs = 1,
    Ss = 2,
    Ds = 3,
    Fs = 4,
    Gs = 5,
}

/// An immediate: a value, or the address of a label.
#[derive(Clone, Copy, Debug)]
pub enum Imm {
    Value(u32),
    Label(&'static str),
}

impl From<u32> for Imm {
    fn from(v: u32) -> Self {
        Imm::Value(v)
    }
}

impl From<u16> for Imm {
    fn from(v: u16) -> Self {
        Imm::Value(u32::from(v))
    }
}

impl From<&'static str> for Imm {
    fn from(l: &'static str) -> Self {
        Imm::Label(l)
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AsmError {
    #[error("label `{0}` is used but never defined")]
    Undefined(&'static str),
    #[error("label `{0}` is defined twice")]
    Redefined(&'static str),
    #[error("code at {origin:#x} does not fit in 32-bit addresses")]
    TooLong { origin: u32 },
}

#[derive(Clone, Copy)]
enum FixKind {
    Abs32,
    Rel32,
}

/// Guest code being assembled at a fixed address.
pub struct Asm {
    origin: u32,
    bytes: Vec<u8>,
    labels: BTreeMap<&'static str, u32>,
    fixups: Vec<(usize, &'static str, FixKind)>,
    error: Option<AsmError>,
}

const fn modrm(md: u8, reg: u8, rm: u8) -> u8 {
    (md << 6) | ((reg & 7) << 3) | (rm & 7)
}

impl Asm {
    /// Code that will be placed at `origin`.
    pub fn new(origin: u32) -> Self {
        Self { origin, bytes: Vec::new(), labels: BTreeMap::new(), fixups: Vec::new(), error: None }
    }

    /// The address of the next byte.
    pub fn here(&self) -> u32 {
        match u32::try_from(self.bytes.len()) {
            Ok(n) => self.origin.wrapping_add(n),
            Err(_) => self.origin,
        }
    }

    /// Defines `name` at the current address.
    pub fn label(&mut self, name: &'static str) -> &mut Self {
        let here = self.here();
        if self.labels.insert(name, here).is_some() {
            self.error.get_or_insert(AsmError::Redefined(name));
        }
        self
    }

    /// The address of a label defined so far.
    pub fn address_of(&self, name: &str) -> Option<u32> {
        self.labels.get(name).copied()
    }

    /// The bytes, with every label reference resolved, and the labels.
    pub fn finish(mut self) -> Result<(Vec<u8>, BTreeMap<&'static str, u32>), AsmError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if u32::try_from(self.bytes.len()).map_or(true, |n| self.origin.checked_add(n).is_none()) {
            return Err(AsmError::TooLong { origin: self.origin });
        }
        for &(pos, name, kind) in &self.fixups {
            let target = *self.labels.get(name).ok_or(AsmError::Undefined(name))?;
            let value = match kind {
                FixKind::Abs32 => target,
                // Relative to the end of the 4-byte field (every rel32 here ends its instruction).
                FixKind::Rel32 => {
                    let end = self.origin.wrapping_add(u32::try_from(pos + 4).map_err(|_| AsmError::TooLong { origin: self.origin })?);
                    target.wrapping_sub(end)
                }
            };
            self.bytes[pos..pos + 4].copy_from_slice(&value.to_le_bytes());
        }
        Ok((self.bytes, self.labels))
    }

    fn emit(&mut self, bytes: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    fn imm32(&mut self, imm: Imm, kind: FixKind) -> &mut Self {
        match imm {
            Imm::Value(v) => self.emit(&v.to_le_bytes()),
            Imm::Label(l) => {
                self.fixups.push((self.bytes.len(), l, kind));
                self.emit(&[0; 4])
            }
        }
    }

    /// `opcode` with a `disp32` absolute memory operand and `/digit` in the reg field.
    fn mem_op(&mut self, opcode: &[u8], digit: u8, addr: u32) -> &mut Self {
        self.emit(opcode).emit(&[modrm(0, digit, 5)]).emit(&addr.to_le_bytes())
    }

    /// `opcode` with a register operand and `/digit` (or a register) in the reg field.
    fn reg_op(&mut self, opcode: &[u8], reg: u8, rm: Reg) -> &mut Self {
        self.emit(opcode).emit(&[modrm(3, reg, rm as u8)])
    }

    /// `mov $imm, %r`
    pub fn mov_imm(&mut self, r: Reg, imm: impl Into<Imm>) -> &mut Self {
        self.emit(&[0xb8 + r as u8]).imm32(imm.into(), FixKind::Abs32)
    }

    /// `mov %r, addr`
    pub fn store(&mut self, addr: u32, r: Reg) -> &mut Self {
        self.mem_op(&[0x89], r as u8, addr)
    }

    /// `movl $imm, addr`
    pub fn store_imm(&mut self, addr: u32, imm: impl Into<Imm>) -> &mut Self {
        self.mem_op(&[0xc7], 0, addr).imm32(imm.into(), FixKind::Abs32)
    }

    /// `mov addr, %r`
    pub fn load(&mut self, r: Reg, addr: u32) -> &mut Self {
        self.mem_op(&[0x8b], r as u8, addr)
    }

    /// `mov disp(%esp), %r`
    pub fn load_stack(&mut self, r: Reg, disp: u8) -> &mut Self {
        self.emit(&[0x8b, modrm(1, r as u8, 4), 0x24, disp])
    }

    /// `xor %r, %r`
    pub fn zero(&mut self, r: Reg) -> &mut Self {
        self.reg_op(&[0x31], r as u8, r)
    }

    /// `push $imm`
    pub fn push_imm(&mut self, imm: impl Into<Imm>) -> &mut Self {
        self.emit(&[0x68]).imm32(imm.into(), FixKind::Abs32)
    }

    /// `push %r`
    pub fn push(&mut self, r: Reg) -> &mut Self {
        self.emit(&[0x50 + r as u8])
    }

    /// `pop %r`
    pub fn pop(&mut self, r: Reg) -> &mut Self {
        self.emit(&[0x58 + r as u8])
    }

    /// `popl addr`
    pub fn pop_mem(&mut self, addr: u32) -> &mut Self {
        self.mem_op(&[0x8f], 0, addr)
    }

    /// `pushf`
    pub fn pushf(&mut self) -> &mut Self {
        self.emit(&[0x9c])
    }

    /// `popf`
    pub fn popf(&mut self) -> &mut Self {
        self.emit(&[0x9d])
    }

    /// `push %sreg`
    pub fn push_sreg(&mut self, s: Sreg) -> &mut Self {
        match s {
            Sreg::Fs => self.emit(&[0x0f, 0xa0]),
            Sreg::Gs => self.emit(&[0x0f, 0xa8]),
            _ => self.emit(&[0x06 + ((s as u8) << 3)]),
        }
    }

    /// `pop %sreg` (not %cs: there is no such instruction).
    pub fn pop_sreg(&mut self, s: Sreg) -> &mut Self {
        match s {
            Sreg::Fs => self.emit(&[0x0f, 0xa1]),
            Sreg::Gs => self.emit(&[0x0f, 0xa9]),
            _ => self.emit(&[0x07 + ((s as u8) << 3)]),
        }
    }

    /// `mov %sreg, %r`
    pub fn mov_from_sreg(&mut self, r: Reg, s: Sreg) -> &mut Self {
        self.reg_op(&[0x8c], s as u8, r)
    }

    /// `mov %r, %sreg`
    pub fn mov_to_sreg(&mut self, s: Sreg, r: Reg) -> &mut Self {
        self.reg_op(&[0x8e], s as u8, r)
    }

    /// `sgdt addr`
    pub fn sgdt(&mut self, addr: u32) -> &mut Self {
        self.mem_op(&[0x0f, 0x01], 0, addr)
    }

    /// `sidt addr`
    pub fn sidt(&mut self, addr: u32) -> &mut Self {
        self.mem_op(&[0x0f, 0x01], 1, addr)
    }

    /// `lgdt addr`
    pub fn lgdt(&mut self, addr: u32) -> &mut Self {
        self.mem_op(&[0x0f, 0x01], 2, addr)
    }

    /// `lidt addr`
    pub fn lidt(&mut self, addr: u32) -> &mut Self {
        self.mem_op(&[0x0f, 0x01], 3, addr)
    }

    /// `smsw addr` (16 bits)
    pub fn smsw(&mut self, addr: u32) -> &mut Self {
        self.mem_op(&[0x0f, 0x01], 4, addr)
    }

    /// `sldt addr` (16 bits)
    pub fn sldt(&mut self, addr: u32) -> &mut Self {
        self.mem_op(&[0x0f, 0x00], 0, addr)
    }

    /// `str addr` (16 bits)
    pub fn str(&mut self, addr: u32) -> &mut Self {
        self.mem_op(&[0x0f, 0x00], 1, addr)
    }

    /// `lldt %r16`
    pub fn lldt(&mut self, r: Reg) -> &mut Self {
        self.reg_op(&[0x0f, 0x00], 2, r)
    }

    /// `ltr %r16`
    pub fn ltr(&mut self, r: Reg) -> &mut Self {
        self.reg_op(&[0x0f, 0x00], 3, r)
    }

    /// `verr %r16`
    pub fn verr(&mut self, r: Reg) -> &mut Self {
        self.reg_op(&[0x0f, 0x00], 4, r)
    }

    /// `verw %r16`
    pub fn verw(&mut self, r: Reg) -> &mut Self {
        self.reg_op(&[0x0f, 0x00], 5, r)
    }

    /// `lar %src16, %dst`
    pub fn lar(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.reg_op(&[0x0f, 0x02], dst as u8, src)
    }

    /// `lsl %src16, %dst`
    pub fn lsl(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.reg_op(&[0x0f, 0x03], dst as u8, src)
    }

    /// `setz %r8` for al, cl, dl, bl (the low byte of `r`).
    pub fn setz(&mut self, r: Reg) -> &mut Self {
        self.reg_op(&[0x0f, 0x94], 0, r)
    }

    /// `ljmp $sel, $target`
    pub fn ljmp(&mut self, sel: u16, target: impl Into<Imm>) -> &mut Self {
        self.emit(&[0xea]).imm32(target.into(), FixKind::Abs32).emit(&sel.to_le_bytes())
    }

    /// `lcall $sel, $target`
    pub fn lcall(&mut self, sel: u16, target: impl Into<Imm>) -> &mut Self {
        self.emit(&[0x9a]).imm32(target.into(), FixKind::Abs32).emit(&sel.to_le_bytes())
    }

    /// `jmp target` (rel32)
    pub fn jmp(&mut self, target: &'static str) -> &mut Self {
        self.emit(&[0xe9]).imm32(Imm::Label(target), FixKind::Rel32)
    }

    /// `jmp addr` (rel32 to an absolute address)
    pub fn jmp_to(&mut self, addr: u32) -> &mut Self {
        let end = self.here().wrapping_add(5);
        self.emit(&[0xe9]).emit(&addr.wrapping_sub(end).to_le_bytes())
    }

    /// `lret`
    pub fn lret(&mut self) -> &mut Self {
        self.emit(&[0xcb])
    }

    /// `iret`
    pub fn iret(&mut self) -> &mut Self {
        self.emit(&[0xcf])
    }

    /// `int $n`
    pub fn int(&mut self, n: u8) -> &mut Self {
        self.emit(&[0xcd, n])
    }

    /// `cli`
    pub fn cli(&mut self) -> &mut Self {
        self.emit(&[0xfa])
    }

    /// `sti`
    pub fn sti(&mut self) -> &mut Self {
        self.emit(&[0xfb])
    }

    /// `hlt`
    pub fn hlt(&mut self) -> &mut Self {
        self.emit(&[0xf4])
    }

    /// `nop`
    pub fn nop(&mut self) -> &mut Self {
        self.emit(&[0x90])
    }

    /// `mov %crN, %r`
    pub fn mov_from_cr(&mut self, r: Reg, cr: u8) -> &mut Self {
        self.emit(&[0x0f, 0x20, modrm(3, cr, r as u8)])
    }

    /// `mov %r, %crN`
    pub fn mov_to_cr(&mut self, cr: u8, r: Reg) -> &mut Self {
        self.emit(&[0x0f, 0x22, modrm(3, cr, r as u8)])
    }

    /// `out %al, (%dx)`
    pub fn out_dx_al(&mut self) -> &mut Self {
        self.emit(&[0xee])
    }

    /// `in (%dx), %al`
    pub fn in_al_dx(&mut self) -> &mut Self {
        self.emit(&[0xec])
    }

    /// `wrmsr`
    pub fn wrmsr(&mut self) -> &mut Self {
        self.emit(&[0x0f, 0x30])
    }

    /// `rdtsc`
    pub fn rdtsc(&mut self) -> &mut Self {
        self.emit(&[0x0f, 0x31])
    }

    /// `rdmsr`
    pub fn rdmsr(&mut self) -> &mut Self {
        self.emit(&[0x0f, 0x32])
    }

    /// `cpuid`
    pub fn cpuid(&mut self) -> &mut Self {
        self.emit(&[0x0f, 0xa2])
    }
}

/// AT&T disassembly of 32-bit code at `ip`, one instruction per line.
pub fn disassemble(bytes: &[u8], ip: u32) -> Vec<String> {
    use iced_x86::{Decoder, DecoderOptions, Formatter, GasFormatter, Instruction};
    let mut decoder = Decoder::with_ip(32, bytes, u64::from(ip), DecoderOptions::NONE);
    let mut formatter = GasFormatter::new();
    formatter.options_mut().set_uppercase_hex(false);
    formatter.options_mut().set_gas_space_after_memory_operand_comma(false);
    let mut out = Vec::new();
    let mut insn = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut insn);
        let mut s = String::new();
        formatter.format(&insn, &mut s);
        out.push(s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Asm)) -> String {
        let mut a = Asm::new(0x1000);
        f(&mut a);
        let (bytes, _) = a.finish().unwrap();
        disassemble(&bytes, 0x1000).join("; ")
    }

    #[test]
    fn encodings_decode_as_documented() {
        use Reg::*;
        type Emit = Box<dyn Fn(&mut Asm)>;
        let cases: Vec<(Emit, &str)> = vec![
            (Box::new(|a| { a.mov_imm(Ebx, 0x1234_5678u32); }), "mov $0x12345678,%ebx"),
            (Box::new(|a| { a.store(0x108004, Ecx); }), "mov %ecx,0x108004"),
            (Box::new(|a| { a.store_imm(0x108004, 7u32); }), "movl $7,0x108004"),
            (Box::new(|a| { a.load(Edx, 0x108008); }), "mov 0x108008,%edx"),
            (Box::new(|a| { a.load_stack(Eax, 4); }), "mov 4(%esp),%eax"),
            (Box::new(|a| { a.zero(Esi); }), "xor %esi,%esi"),
            (Box::new(|a| { a.push_imm(0x202u32).push(Ebp).pop(Edi).pop_mem(0x108000); }), "push $0x202; push %ebp; pop %edi; popl 0x108000"),
            (Box::new(|a| { a.pushf().popf(); }), "pushf; popf"),
            (Box::new(|a| { a.push_sreg(Sreg::Cs).push_sreg(Sreg::Gs).pop_sreg(Sreg::Ss).pop_sreg(Sreg::Ds).pop_sreg(Sreg::Fs); }), "push %cs; push %gs; pop %ss; pop %ds; pop %fs"),
            (Box::new(|a| { a.mov_from_sreg(Eax, Sreg::Ss).mov_to_sreg(Sreg::Ds, Ecx); }), "mov %ss,%eax; mov %ecx,%ds"),
            (Box::new(|a| { a.sgdt(0x108000).sidt(0x108010).lgdt(0x10a800).lidt(0x10a808); }), "sgdt 0x108000; sidt 0x108010; lgdt 0x10a800; lidt 0x10a808"),
            (Box::new(|a| { a.smsw(0x108000).sldt(0x108004).str(0x108008); }), "smsw 0x108000; sldt 0x108004; str 0x108008"),
            (Box::new(|a| { a.lldt(Eax).ltr(Ecx).verr(Edx).verw(Ebx); }), "lldt %ax; ltr %cx; verr %dx; verw %bx"),
            (Box::new(|a| { a.lar(Eax, Ecx).lsl(Ebx, Edx).setz(Ebx); }), "lar %ecx,%eax; lsl %edx,%ebx; sete %bl"),
            (Box::new(|a| { a.ljmp(0x20, 0x1000_0000u32).lcall(0x20, 0x2000u32); }), "ljmp $0x0020,$0x10000000; lcall $0x0020,$0x00002000"),
            (Box::new(|a| { a.lret().iret().int(0x30).cli().sti().hlt().nop(); }), "lret; iret; int $0x30; cli; sti; hlt; nop"),
            (Box::new(|a| { a.jmp_to(0x1000); }), "jmp 0x00001000"),
            (Box::new(|a| { a.mov_from_cr(Eax, 0).mov_to_cr(3, Ebx); }), "mov %cr0,%eax; mov %ebx,%cr3"),
            (Box::new(|a| { a.out_dx_al().in_al_dx().wrmsr().rdtsc().rdmsr().cpuid(); }), "out %al,%dx; in %dx,%al; wrmsr; rdtsc; rdmsr; cpuid"),
        ];
        for (f, want) in cases {
            assert_eq!(text(|a| f(a)), want);
        }
    }

    #[test]
    fn labels_resolve_forward_and_back() {
        let mut a = Asm::new(0x1000);
        a.label("top").jmp("end").push_imm("top").ljmp(0x20, "end").label("end").jmp("top");
        let (bytes, labels) = a.finish().unwrap();
        assert_eq!(labels["top"], 0x1000);
        assert_eq!(labels["end"], 0x1000 + 5 + 5 + 7);
        assert_eq!(
            disassemble(&bytes, 0x1000),
            ["jmp 0x00001011", "push $0x1000", "ljmp $0x0020,$0x00001011", "jmp 0x00001000"]
        );
    }

    #[test]
    fn label_errors_are_reported() {
        let mut a = Asm::new(0);
        a.jmp("nowhere");
        assert_eq!(a.finish().unwrap_err(), AsmError::Undefined("nowhere"));
        let mut a = Asm::new(0);
        a.label("x").nop().label("x");
        assert_eq!(a.finish().unwrap_err(), AsmError::Redefined("x"));
    }
}
