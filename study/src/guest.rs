//! The study's guest: one small guest kernel at CPL 0 with a known state — its own GDT
//! (with a TSS and an LDT), IDT, CR0, CR3, EFLAGS (IF, IOPL) and TSC — and the memory
//! image every engine runs.
//!
//! Memory (all inside the 64 KiB region the deprivileged runner maps):
//!
//! | address | what |
//! |---|---|
//! | `PROLOGUE` 0x100000 | the guest kernel's start-up: lgdt, lidt, far jump to its code selector, data selectors, lldt, ltr, CR0, CR3, the TSC, EFLAGS; then a jump to `BODY` |
//! | `BODY` 0x100400 | the snippet under study, ending in `hlt` (the terminator) |
//! | `HANDLERS` 0x101000 | exception stubs (vectors 0-31: record vector, error code and EIP in `FAULT`, halt) and the `int $0x30` handler |
//! | `RESULT` 0x108000 | where the snippet stores what it observed (32-bit slots) |
//! | `FAULT` 0x108080 | vector (0xffffffff: none), error code, EIP of a guest exception |
//! | `GDT_BASE` 0x109000, `GDT2_BASE` 0x109400 | the GDT, and a copy for `lgdt` |
//! | `IDT_BASE` 0x109800 | the IDT: interrupt gates for vectors 0-0x30 |
//! | `TSS_BASE` 0x10a000, `LDT_BASE` 0x10a100 | the TSS and the LDT |
//! | `DTR_IMAGES` 0x10a800 | the GDTR, IDTR and second GDTR images that lgdt/lidt load |
//! | `STACK_TOP` 0x10f000 | the initial stack pointer |
//!
//! Under bt and KVM the guest runs from `PROLOGUE`, so its own instructions establish its
//! state. Under the deprivileged engine the VMM would hold that state in its virtual CPU
//! and enter the guest directly at `BODY` (the prologue's instructions would all trap and
//! be emulated); what the CPU itself holds then is the host's state.
//!
//! The GDT's layout is chosen to be as kind as possible to the deprivileged engine: the
//! guest's kernel code and data descriptors sit at indices 4 and 5, where Linux's GDT (which
//! the deprivileged guest runs under) has its flat 32-bit user code and data descriptors —
//! the same segments with DPL 3, exactly the shadow descriptors a trap-and-emulate VMM would
//! build for a guest kernel it runs at ring 3. So whatever still goes wrong deprivileged is
//! the architecture's doing, not a careless shadow GDT.

use crate::arch::{self, Descriptor};
use crate::asm::{Asm, AsmError, Reg, Sreg};

pub const PROLOGUE: u32 = 0x0010_0000;
pub const BODY: u32 = 0x0010_0400;
pub const HANDLERS: u32 = 0x0010_1000;
pub const RESULT: u32 = 0x0010_8000;
/// Bytes of `RESULT` the engines read back (the slots and the fault record).
pub const RESULT_SIZE: u32 = 0x100;
pub const FAULT: u32 = RESULT + 0x80;
pub const FAULT_VECTOR: u32 = FAULT;
pub const FAULT_ERROR: u32 = FAULT + 4;
pub const FAULT_EIP: u32 = FAULT + 8;
/// `FAULT_VECTOR` before any exception.
pub const NO_FAULT: u32 = 0xffff_ffff;
pub const GDT_BASE: u32 = 0x0010_9000;
pub const GDT2_BASE: u32 = 0x0010_9400;
pub const IDT_BASE: u32 = 0x0010_9800;
pub const TSS_BASE: u32 = 0x0010_a000;
pub const LDT_BASE: u32 = 0x0010_a100;
pub const DTR_IMAGES: u32 = 0x0010_a800;
pub const GDTR_IMAGE: u32 = DTR_IMAGES;
pub const IDTR_IMAGE: u32 = DTR_IMAGES + 8;
pub const GDTR2_IMAGE: u32 = DTR_IMAGES + 16;
pub const STACK_TOP: u32 = 0x0010_f000;
/// End of guest RAM for bt and KVM (the end of the region).
pub const RAM_END: u32 = 0x0011_0000;
/// The vector the `int n` row raises (its gate and handler are the guest's).
pub const INT_VECTOR: u8 = 0x30;
/// The MSR the guest writes to set its TSC.
pub const MSR_TSC: u32 = 0x10;

/// Address of observation slot `i` (32 bits each).
pub const fn slot(i: u32) -> u32 {
    RESULT + 4 * i
}

pub use bt86_runtime::cpu::{cr0, eflags};

/// The known state the snippet starts in (after the prologue).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestState {
    pub gdt_base: u32,
    /// The GDT as it is after the prologue (`ltr` has marked the TSS busy).
    pub gdt: Vec<u64>,
    pub ldt: Vec<u64>,
    pub idt_base: u32,
    pub idt_limit: u16,
    pub code_sel: u16,
    pub data_sel: u16,
    pub tss_sel: u16,
    pub ldt_sel: u16,
    pub cr0: u32,
    pub cr3: u32,
    pub eflags: u32,
    pub tsc: u64,
}

impl GuestState {
    /// The base state: a guest kernel with interrupts disabled (as a multiboot loader
    /// leaves it), IOPL 0, protection on, paging off.
    pub fn base() -> Self {
        let flat = |access: u8| Descriptor { base: 0, limit: 0xf_ffff, access, flags: 0xc };
        let mut gdt = vec![0u64; 10];
        gdt[4] = flat(0x9b).encode(); // 0x20: code, DPL 0, execute/read, accessed, 32-bit, 4 GiB
        gdt[5] = flat(0x93).encode(); // 0x28: data, DPL 0, read/write, accessed, 4 GiB
        gdt[7] = Descriptor { base: TSS_BASE, limit: 0x67, access: 0x8b, flags: 0 }.encode(); // 0x38: 32-bit TSS, busy
        gdt[9] = Descriptor { base: LDT_BASE, limit: 0xf, access: 0x82, flags: 0 }.encode(); // 0x48: LDT, 2 entries
        let ldt = vec![0, flat(0x93).encode()];
        Self {
            gdt_base: GDT_BASE,
            gdt,
            ldt,
            idt_base: IDT_BASE,
            idt_limit: (u16::from(INT_VECTOR) + 1) * 8 - 1,
            code_sel: 0x20,
            data_sel: 0x28,
            tss_sel: 0x38,
            ldt_sel: 0x48,
            cr0: cr0::PE | cr0::ET | cr0::NE,
            cr3: 0x0010_b000,
            eflags: eflags::FIXED,
            tsc: 0x1000_0000_0000_0000,
        }
    }

    /// The same state with IF set or clear.
    pub fn with_if(mut self, on: bool) -> Self {
        self.eflags = if on { self.eflags | eflags::IF } else { self.eflags & !eflags::IF };
        self
    }

    /// The current privilege level (the RPL of CS).
    pub fn cpl(&self) -> u8 {
        (self.code_sel & 3) as u8
    }

    /// IF as 0 or 1.
    pub fn interrupt_flag(&self) -> u32 {
        u32::from(self.eflags & eflags::IF != 0)
    }

    /// IOPL.
    pub fn iopl(&self) -> u32 {
        (self.eflags & eflags::IOPL) >> eflags::IOPL.trailing_zeros()
    }

    /// GDTR: (limit, base).
    pub fn gdtr(&self) -> (u16, u32) {
        (table_limit(self.gdt.len()), self.gdt_base)
    }

    /// IDTR: (limit, base).
    pub fn idtr(&self) -> (u16, u32) {
        (self.idt_limit, self.idt_base)
    }

    /// The descriptor a selector names (GDT or LDT), if it is inside its table and not the
    /// null selector.
    pub fn descriptor(&self, sel: u16) -> Option<Descriptor> {
        let index = usize::from(sel >> 3);
        let table = if sel & 4 != 0 { &self.ldt } else { &self.gdt };
        if sel & 4 == 0 && index == 0 {
            return None;
        }
        table.get(index).map(|&raw| Descriptor::decode(raw))
    }

    /// What `lar` gives for `sel` at this state's CPL (None: ZF=0).
    pub fn lar(&self, sel: u16) -> Option<u32> {
        arch::lar(self.descriptor(sel)?, self.cpl(), rpl(sel))
    }

    /// What `lsl` gives for `sel` (None: ZF=0).
    pub fn lsl(&self, sel: u16) -> Option<u32> {
        arch::lsl(self.descriptor(sel)?, self.cpl(), rpl(sel))
    }

    /// What `verr` says for `sel` (ZF).
    pub fn verr(&self, sel: u16) -> bool {
        self.descriptor(sel).is_some_and(|d| arch::verr(d, self.cpl(), rpl(sel)))
    }

    /// What `verw` says for `sel` (ZF).
    pub fn verw(&self, sel: u16) -> bool {
        self.descriptor(sel).is_some_and(|d| arch::verw(d, self.cpl(), rpl(sel)))
    }

    /// The state in one line, for reports.
    pub fn describe(&self) -> String {
        let (gl, gb) = self.gdtr();
        let (il, ib) = self.idtr();
        format!(
            "CPL {}, CS {:#06x}, SS/DS {:#06x}, GDT {gb:#010x}/{gl:#06x}, IDT {ib:#010x}/{il:#06x}, LDTR {:#06x}, TR {:#06x}, CR0 {:#010x}, CR3 {:#010x}, IF {}, IOPL {}, TSC {:#x}",
            self.cpl(),
            self.code_sel,
            self.data_sel,
            self.ldt_sel,
            self.tss_sel,
            self.cr0,
            self.cr3,
            self.interrupt_flag(),
            self.iopl(),
            self.tsc
        )
    }
}

fn rpl(sel: u16) -> u8 {
    (sel & 3) as u8
}

/// The limit of a descriptor table of `entries` 8-byte entries.
fn table_limit(entries: usize) -> u16 {
    u16::try_from(entries * 8 - 1).unwrap_or(u16::MAX)
}

/// A piece of the memory image.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub addr: u32,
    pub bytes: Vec<u8>,
}

/// A snippet's body being assembled at `BODY`; the studied instruction is marked with
/// the label `insn`.
pub fn body() -> Asm {
    Asm::new(BODY)
}

/// The full image for `state` and an assembled `body` (which must end with the terminator).
pub fn image(state: &GuestState, body: &[u8]) -> Result<Vec<Chunk>, AsmError> {
    let (handlers, vectors) = handlers()?;
    let mut idt = Vec::with_capacity(vectors.len() * 8);
    for addr in &vectors {
        idt.extend_from_slice(&arch::interrupt_gate(state.code_sel, *addr).to_le_bytes());
    }
    // The GDT as memory holds it before the prologue: the TSS not yet busy.
    let gdt: Vec<u8> = state
        .gdt
        .iter()
        .enumerate()
        .flat_map(|(i, &raw)| {
            let raw = if i == usize::from(state.tss_sel >> 3) { arch::tss_available(raw) } else { raw };
            raw.to_le_bytes()
        })
        .collect();
    let ldt: Vec<u8> = state.ldt.iter().flat_map(|d| d.to_le_bytes()).collect();
    let dtr = |limit: u16, base: u32| {
        let mut v = limit.to_le_bytes().to_vec();
        v.extend_from_slice(&base.to_le_bytes());
        v.extend_from_slice(&[0, 0]);
        v
    };
    let (gdt_limit, _) = state.gdtr();
    let mut dtrs = dtr(gdt_limit, state.gdt_base);
    dtrs.extend(dtr(state.idt_limit, state.idt_base));
    dtrs.extend(dtr(gdt_limit, GDT2_BASE));
    let mut result = vec![0u8; RESULT_SIZE as usize];
    result[(FAULT_VECTOR - RESULT) as usize..][..4].copy_from_slice(&NO_FAULT.to_le_bytes());
    let mut tss = vec![0u8; 0x68];
    tss[4..8].copy_from_slice(&STACK_TOP.to_le_bytes()); // esp0
    tss[8..10].copy_from_slice(&state.data_sel.to_le_bytes()); // ss0
    tss[0x66..0x68].copy_from_slice(&0x68u16.to_le_bytes()); // no I/O bitmap
    Ok(vec![
        Chunk { addr: PROLOGUE, bytes: prologue(state)? },
        Chunk { addr: BODY, bytes: body.to_vec() },
        Chunk { addr: HANDLERS, bytes: handlers },
        Chunk { addr: RESULT, bytes: result },
        Chunk { addr: GDT_BASE, bytes: gdt.clone() },
        Chunk { addr: GDT2_BASE, bytes: gdt },
        Chunk { addr: IDT_BASE, bytes: idt },
        Chunk { addr: TSS_BASE, bytes: tss },
        Chunk { addr: LDT_BASE, bytes: ldt },
        Chunk { addr: DTR_IMAGES, bytes: dtrs },
    ])
}

/// The guest kernel's start-up: establishes `state` with its own instructions.
fn prologue(state: &GuestState) -> Result<Vec<u8>, AsmError> {
    let mut a = Asm::new(PROLOGUE);
    a.lgdt(GDTR_IMAGE).lidt(IDTR_IMAGE).ljmp(state.code_sel, "reload").label("reload");
    a.mov_imm(Reg::Eax, state.data_sel);
    for s in [Sreg::Ds, Sreg::Es, Sreg::Fs, Sreg::Gs, Sreg::Ss] {
        a.mov_to_sreg(s, Reg::Eax);
    }
    a.mov_imm(Reg::Esp, STACK_TOP);
    a.mov_imm(Reg::Eax, state.ldt_sel).lldt(Reg::Eax);
    a.mov_imm(Reg::Eax, state.tss_sel).ltr(Reg::Eax);
    a.mov_imm(Reg::Eax, state.cr0).mov_to_cr(0, Reg::Eax);
    a.mov_imm(Reg::Eax, state.cr3).mov_to_cr(3, Reg::Eax);
    #[allow(clippy::cast_possible_truncation)]
    let (lo, hi) = (state.tsc as u32, (state.tsc >> 32) as u32);
    a.mov_imm(Reg::Ecx, MSR_TSC).mov_imm(Reg::Eax, lo).mov_imm(Reg::Edx, hi).wrmsr();
    for r in [Reg::Eax, Reg::Ecx, Reg::Edx, Reg::Ebx, Reg::Ebp, Reg::Esi, Reg::Edi] {
        a.zero(r);
    }
    a.push_imm(state.eflags).popf().jmp_to(BODY);
    Ok(a.finish()?.0)
}

/// Whether the CPU pushes an error code for `vector`.
pub fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// The exception stubs and the `int n` handler; returns the code and the handler address
/// of every vector 0..=INT_VECTOR (vectors 32..INT_VECTOR share the last stub's halt).
fn handlers() -> Result<(Vec<u8>, Vec<u32>), AsmError> {
    let mut a = Asm::new(HANDLERS);
    let mut vectors = Vec::new();
    for v in 0u8..32 {
        vectors.push(a.here());
        a.store_imm(FAULT_VECTOR, u32::from(v));
        if has_error_code(v) {
            a.pop_mem(FAULT_ERROR);
        }
        a.pop_mem(FAULT_EIP).hlt().hlt();
    }
    let unexpected = a.here();
    a.store_imm(FAULT_VECTOR, 0xffu32).pop_mem(FAULT_EIP).hlt().hlt();
    while vectors.len() < usize::from(INT_VECTOR) {
        vectors.push(unexpected);
    }
    // int $0x30: record the frame (eip, cs, eflags) in slots 0-2 and return.
    vectors.push(a.here());
    for (i, off) in [(0, 0u8), (1, 4), (2, 8)] {
        a.load_stack(Reg::Eax, off).store(slot(i), Reg::Eax);
    }
    a.iret();
    Ok((a.finish()?.0, vectors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asm::disassemble;

    #[test]
    fn state_facts() {
        let s = GuestState::base();
        assert_eq!(s.cpl(), 0);
        assert_eq!(s.gdtr(), (0x4f, GDT_BASE));
        assert_eq!(s.idtr(), (0x187, IDT_BASE));
        assert_eq!(s.interrupt_flag(), 0);
        assert_eq!(s.clone().with_if(true).interrupt_flag(), 1);
        // The kernel code segment: DPL 0, execute/read, accessed, present, 32-bit, 4 KiB
        // granularity.
        assert_eq!(s.lar(s.code_sel), Some(0x00cf_9b00));
        assert_eq!(s.lsl(s.data_sel), Some(0xffff_ffff));
        assert_eq!(s.lsl(s.tss_sel), Some(0x67));
        assert_eq!(s.lar(s.tss_sel), Some(0x0000_8b00));
        assert!(s.verr(s.code_sel) && !s.verw(s.code_sel) && s.verw(s.data_sel));
        // From RPL 3 the DPL-0 segments are out of reach.
        assert!(!s.verr(s.code_sel | 3) && !s.verw(s.data_sel | 3));
        assert_eq!(s.lar(0), None);
        assert_eq!(s.lar(0x30), None); // a null descriptor: not present
        assert!(s.descriptor(0x0c).is_some()); // LDT entry 1
    }

    #[test]
    fn prologue_reads_as_a_kernel_start() {
        let s = GuestState::base();
        let text = disassemble(&prologue(&s).unwrap(), PROLOGUE).join("; ");
        for part in [
            "lgdt 0x10a800",
            "lidt 0x10a808",
            "ljmp $0x0020,$0x00100015",
            "mov %eax,%ss",
            "lldt %ax",
            "ltr %ax",
            "mov %eax,%cr0",
            "mov %eax,%cr3",
            "wrmsr",
            "push $2; popf; jmp 0x00100400",
        ] {
            assert!(text.contains(part), "{part} missing in {text}");
        }
    }

    #[test]
    fn image_fits_and_idt_points_at_handlers() {
        let s = GuestState::base();
        let mut b = body();
        b.hlt();
        let chunks = image(&s, &b.finish().unwrap().0).unwrap();
        for c in &chunks {
            assert!(c.addr >= PROLOGUE && c.addr as usize + c.bytes.len() <= RAM_END as usize);
        }
        let idt = chunks.iter().find(|c| c.addr == IDT_BASE).unwrap();
        assert_eq!(idt.bytes.len(), usize::from(s.idt_limit) + 1);
        let gate = u64::from_le_bytes(idt.bytes[..8].try_into().unwrap());
        assert_eq!(gate & 0xffff, u64::from(HANDLERS & 0xffff));
        assert_eq!((gate >> 16) & 0xffff, u64::from(s.code_sel));
        // The TSS goes in as available (ltr makes it busy).
        let gdt = chunks.iter().find(|c| c.addr == GDT_BASE).unwrap();
        assert_eq!(gdt.bytes[0x38 + 5], 0x89);
    }
}
