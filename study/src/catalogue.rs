//! The catalogue: one guest-kernel snippet per instruction under study, what it stores,
//! and what the guest's own state says it should see.
//!
//! Three groups:
//! - Robin & Irvine's sensitive-but-unprivileged instructions of the Pentium (USENIX
//!   Security 2000): they read or depend on privileged state, yet do not trap at CPL 3, so
//!   a trap-and-emulate VMM never gets the chance to emulate them;
//! - privileged instructions, for contrast: they trap at CPL 3, so a trap-and-emulate VMM
//!   can emulate them (Popek and Goldberg's condition holds for them);
//! - instructions that are not privileged and reveal the host: `cpuid`, `rdtsc`.
//!
//! Each snippet marks its studied instruction with the label `insn`, stores what the guest
//! observed in the `RESULT` slots, and ends with `hlt` (the terminator). The expected values
//! come from [`GuestState`] (and the architectural rules in [`crate::arch`]); the observed
//! values come from running the snippet.

use crate::asm::{Asm, AsmError, Reg, Sreg};
use crate::guest::{self, cr0, eflags, slot, GuestState};

/// Which family an instruction belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Sensitive but not privileged (Robin & Irvine's list).
    RobinIrvine,
    /// Privileged: traps outside ring 0.
    Privileged,
    /// Not privileged, and answers from the host.
    HostLeak,
}

impl Group {
    pub fn sensitive(self) -> bool {
        true
    }

    pub fn privileged(self) -> bool {
        self == Group::Privileged
    }

    pub fn label(self) -> &'static str {
        match self {
            Group::RobinIrvine => "robin-irvine",
            Group::Privileged => "privileged",
            Group::HostLeak => "host-leak",
        }
    }
}

/// A value the snippet stores: `bytes` little-endian bytes at `addr`. A selector the
/// snippet stores with a 32-bit operand is read as 2 bytes: the upper half is not the same
/// on every CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub addr: u32,
    pub bytes: u8,
}

impl Field {
    const fn new(name: &'static str, slot_index: u32, bytes: u8) -> Self {
        Self { name, addr: slot(slot_index), bytes }
    }

    /// The value in a copy of `RESULT`.
    pub fn read(&self, result: &[u8]) -> Option<u64> {
        let start = usize::try_from(self.addr.checked_sub(guest::RESULT)?).ok()?;
        let bytes = result.get(start..start + usize::from(self.bytes))?;
        Some(bytes.iter().rev().fold(0u64, |v, b| (v << 8) | u64::from(*b)))
    }
}

/// What the guest should see in a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Eq(u64),
    /// Equal in the bits of `mask` (the others are undefined).
    Masked { value: u64, mask: u64 },
    /// `lo <= v < hi`.
    Range { lo: u64, hi: u64 },
    /// Register `reg` (0 eax .. 3 edx) of CPUID `leaf` in the VM's CPU model, which the
    /// engine knows; `mask` leaves out bits that follow the guest's CR4.
    VmCpuid { leaf: u32, reg: usize, mask: u32 },
}

/// How the snippet should end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// At the terminator, with nothing else in between.
    Completed,
    /// Halted at this address (and stays halted: IF is 0).
    HaltedAt(u32),
}

/// One row of the study: an instruction, its snippet and its expectations.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    pub group: Group,
    /// Covered by UMIP (CR4.UMIP makes it fault at CPL > 0).
    pub umip: bool,
    /// What the row shows, for the reader.
    pub about: &'static str,
    /// The state the snippet starts in.
    pub state: GuestState,
    /// The snippet, assembled at `guest::BODY`.
    pub body: Vec<u8>,
    /// Address of the studied instruction.
    pub insn: u32,
    /// Address of the final `hlt`.
    pub terminator: u32,
    pub checks: Vec<(Field, Want)>,
    pub ending: Ending,
}

impl Case {
    /// The memory image for this case.
    pub fn image(&self) -> Result<Vec<guest::Chunk>, AsmError> {
        guest::image(&self.state, &self.body)
    }
}

/// Builds a case: `build` emits the snippet (marking `insn`) and returns its checks; the
/// terminator is appended.
fn case(
    name: &'static str,
    group: Group,
    about: &'static str,
    state: GuestState,
    build: impl FnOnce(&mut Asm, &GuestState) -> Vec<(Field, Want)>,
) -> Result<Case, AsmError> {
    let mut a = guest::body();
    let checks = build(&mut a, &state);
    let terminator = a.here();
    a.hlt();
    let (body, labels) = a.finish()?;
    let insn = labels.get("insn").copied().unwrap_or(guest::BODY);
    let umip = matches!(name, "sgdt" | "sidt" | "sldt" | "smsw" | "str");
    Ok(Case { name, group, umip, about, state, body, insn, terminator, checks, ending: Ending::Completed })
}

fn eq(v: impl Into<u64>) -> Want {
    Want::Eq(v.into())
}

/// `lar`/`lsl` (`op`, from %ecx into %eax) on `sel`: stores the result and ZF; the guest
/// should see `value` (under `mask`) and ZF=1, or ZF=0 and %eax unchanged (zero).
fn load_query(a: &mut Asm, sel: u16, op: impl FnOnce(&mut Asm), name: &'static str, value: Option<u32>, mask: u64) -> Vec<(Field, Want)> {
    a.mov_imm(Reg::Ecx, sel).zero(Reg::Eax).zero(Reg::Ebx).label("insn");
    op(a);
    a.setz(Reg::Ebx).store(slot(0), Reg::Eax).store(slot(1), Reg::Ebx);
    let (v, zf) = match value {
        Some(v) => (Want::Masked { value: u64::from(v), mask }, 1u32),
        None => (eq(0u32), 0),
    };
    vec![(Field::new(name, 0, 4), v), (Field::new("zf", 1, 1), eq(zf))]
}

/// `verr`/`verw` (`op`, on %cx) of `sel`: stores ZF; the guest should see `ok`.
fn verify(a: &mut Asm, sel: u16, op: impl FnOnce(&mut Asm), ok: bool) -> Vec<(Field, Want)> {
    a.mov_imm(Reg::Ecx, sel).zero(Reg::Ebx).label("insn");
    op(a);
    a.setz(Reg::Ebx).store(slot(0), Reg::Ebx);
    vec![(Field::new("zf", 0, 1), eq(u32::from(ok)))]
}

/// A GDTR/IDTR image stored at slot 0 (16-bit limit, 32-bit base) and what it should hold.
fn table_register(limit: u16, base: u32) -> Vec<(Field, Want)> {
    vec![(Field::new("limit", 0, 2), eq(limit)), (Field { name: "base", addr: slot(0) + 2, bytes: 4 }, eq(base))]
}

/// `pushf; pop %eax; mov %eax, slot 0`: the flags as the guest sees them next.
fn store_flags(a: &mut Asm) {
    a.pushf().pop(Reg::Eax).store(slot(0), Reg::Eax);
}

const EFLAGS_FIELD: Field = Field::new("eflags", 0, 4);

/// Every case, in the order of the report.
pub fn catalogue() -> Result<Vec<Case>, AsmError> {
    use Group::*;
    use Reg::*;
    let base = GuestState::base;
    let mut rows = vec![
        case("sgdt", RobinIrvine, "Stores GDTR. Deprivileged, the CPU's GDTR is the host's: the guest learns where the host keeps its GDT (or, with UMIP, the host kernel's dummy).", base(), |a, s| {
            a.label("insn").sgdt(slot(0));
            let (limit, base) = s.gdtr();
            table_register(limit, base)
        })?,
        case("sidt", RobinIrvine, "Stores IDTR: the same leak for the interrupt table.", base(), |a, s| {
            a.label("insn").sidt(slot(0));
            let (limit, base) = s.idtr();
            table_register(limit, base)
        })?,
        case("sldt", RobinIrvine, "Stores the LDT selector: the host's, not the guest's.", base(), |a, s| {
            a.label("insn").sldt(slot(0));
            vec![(Field::new("ldtr", 0, 2), eq(s.ldt_sel))]
        })?,
        case("smsw", RobinIrvine, "Stores CR0's low 16 bits (PE, MP, EM, TS, ET, NE): the host's CR0, not the guest's.", base(), |a, s| {
            a.label("insn").smsw(slot(0));
            vec![(Field::new("msw", 0, 2), eq(s.cr0 & 0xffff))]
        })?,
        case("str", RobinIrvine, "Stores the task register's selector: the host's TSS.", base(), |a, s| {
            a.label("insn").str(slot(0));
            vec![(Field::new("tr", 0, 2), eq(s.tss_sel))]
        })?,
        case("pushf", RobinIrvine, "Pushes EFLAGS. The guest disabled interrupts (IF=0), but deprivileged the real IF is 1 and IOPL the host's.", base(), |a, s| {
            a.label("insn");
            store_flags(a);
            vec![(EFLAGS_FIELD, eq(s.eflags))]
        })?,
        case("popf", RobinIrvine, "Pops EFLAGS with IF=0 to disable interrupts. At CPL 3 popf silently ignores IF: no trap, interrupts stay enabled.", base().with_if(true), |a, s| {
            let image = s.eflags & !eflags::IF;
            a.push_imm(image).label("insn").popf();
            store_flags(a);
            vec![(EFLAGS_FIELD, eq(image))]
        })?,
        case("lar", RobinIrvine, "Reads the access rights of the guest's kernel code selector. Deprivileged it finds the shadow descriptor: DPL 3 instead of 0.", base(), |a, s| {
            // Bits 19:16 are undefined (CPUs return the limit's high nibble).
            load_query(a, s.code_sel, |a| { a.lar(Eax, Ecx); }, "rights", s.lar(s.code_sel), 0xfff0_ffff)
        })?,
        case("lsl", RobinIrvine, "Reads the limit of the guest's TSS selector (0x67). The host's GDT has no such descriptor there: ZF=0.", base(), |a, s| {
            load_query(a, s.tss_sel, |a| { a.lsl(Eax, Ecx); }, "limit", s.lsl(s.tss_sel), 0xffff_ffff)
        })?,
        case("verr", RobinIrvine, "Asks whether a user (RPL 3) may read the kernel code segment: no for the guest (DPL 0), yes for the DPL-3 shadow.", base(), |a, s| {
            let sel = s.code_sel | 3;
            verify(a, sel, |a| { a.verr(Ecx); }, s.verr(sel))
        })?,
        case("verw", RobinIrvine, "Asks whether a user (RPL 3) may write the kernel data segment: no for the guest, yes for the shadow.", base(), |a, s| {
            let sel = s.data_sel | 3;
            verify(a, sel, |a| { a.verw(Ecx); }, s.verw(sel))
        })?,
        case("push %cs", RobinIrvine, "Pushes CS, whose RPL is the CPL: deprivileged the guest kernel sees RPL 3.", base(), |a, s| {
            a.label("insn").push_sreg(Sreg::Cs).pop(Eax).store(slot(0), Eax);
            vec![(Field::new("cs", 0, 2), eq(s.code_sel))]
        })?,
        case("pop %ss", RobinIrvine, "Pops the guest's kernel stack selector (RPL 0) into SS: at CPL 3 the RPL must equal the CPL, so it faults.", base(), |a, s| {
            a.push_imm(s.data_sel).label("insn").pop_sreg(Sreg::Ss).mov_from_sreg(Eax, Sreg::Ss).store(slot(0), Eax);
            vec![(Field::new("ss", 0, 2), eq(s.data_sel))]
        })?,
        case("mov %ss,%eax", RobinIrvine, "Reads SS, whose RPL is the CPL: 3 instead of 0.", base(), |a, s| {
            a.label("insn").mov_from_sreg(Eax, Sreg::Ss).store(slot(0), Eax);
            vec![(Field::new("ss", 0, 2), eq(s.data_sel))]
        })?,
        case("mov %eax,%ds", RobinIrvine, "Loads the guest's kernel data selector into DS and reads it back. The DPL-3 shadow descriptor accepts it.", base(), |a, s| {
            a.mov_imm(Eax, s.data_sel).label("insn").mov_to_sreg(Sreg::Ds, Eax).mov_from_sreg(Ebx, Sreg::Ds).store(slot(0), Ebx);
            vec![(Field::new("ds", 0, 2), eq(s.data_sel))]
        })?,
        case("lcall", RobinIrvine, "Far call to the guest's own code selector. The callee finds the CS the CPU pushed: RPL 3 deprivileged.", base(), |a, s| {
            a.label("insn").lcall(s.code_sel, "callee");
            let ret = a.here();
            a.jmp("done").label("callee");
            a.load_stack(Eax, 0).store(slot(0), Eax).load_stack(Eax, 4).store(slot(1), Eax).lret();
            a.label("done");
            vec![(Field::new("ret_eip", 0, 4), eq(ret)), (Field::new("ret_cs", 1, 2), eq(s.code_sel))]
        })?,
        case("ljmp", RobinIrvine, "Far jump to the guest's own code selector (RPL 0). At CPL 3 the CPU quietly makes it RPL 3.", base(), |a, s| {
            a.label("insn").ljmp(s.code_sel, "next").label("next").mov_from_sreg(Eax, Sreg::Cs).store(slot(0), Eax);
            vec![(Field::new("cs", 0, 2), eq(s.code_sel))]
        })?,
        case("lret", RobinIrvine, "Far return to the guest's own code selector (RPL 0): a return to a more privileged level, which faults at CPL 3.", base(), |a, s| {
            a.push_imm(s.code_sel).push_imm("next").label("insn").lret();
            a.label("next").mov_from_sreg(Eax, Sreg::Cs).store(slot(0), Eax);
            vec![(Field::new("cs", 0, 2), eq(s.code_sel))]
        })?,
        case("int $0x30", RobinIrvine, "Software interrupt through the guest's IDT to its handler, which records the frame. Deprivileged, the host's IDT answers.", base(), |a, s| {
            a.label("insn").int(guest::INT_VECTOR);
            let ret = a.here();
            vec![
                (Field::new("eip", 0, 4), eq(ret)),
                (Field::new("cs", 1, 2), eq(s.code_sel)),
                (Field::new("eflags", 2, 4), eq(s.eflags)),
            ]
        })?,
        case("iret", RobinIrvine, "Returns through a same-level frame whose EFLAGS has IF=0. Like popf, iret at CPL 3 keeps IF: no trap.", base().with_if(true), |a, s| {
            let image = s.eflags & !eflags::IF;
            a.push_imm(image).push_sreg(Sreg::Cs).push_imm("next").label("insn").iret().label("next");
            store_flags(a);
            vec![(EFLAGS_FIELD, eq(image))]
        })?,
        case("cli", Privileged, "Clears IF: privileged (IOPL 0), so it traps deprivileged and the VMM can clear the virtual IF.", base().with_if(true), |a, s| {
            a.label("insn").cli();
            store_flags(a);
            vec![(EFLAGS_FIELD, eq(s.eflags & !eflags::IF))]
        })?,
        case("sti", Privileged, "Sets IF: traps deprivileged.", base(), |a, s| {
            a.label("insn").sti().nop();
            store_flags(a);
            vec![(EFLAGS_FIELD, eq(s.eflags | eflags::IF))]
        })?,
        case("hlt", Privileged, "Halts until an interrupt (here none can come: IF=0). Traps deprivileged.", base(), |a, _| {
            a.label("insn").hlt();
            vec![]
        })?,
        case("mov %cr0,%eax", Privileged, "Reads CR0: traps deprivileged; the VMM supplies the guest's value.", base(), |a, s| {
            a.label("insn").mov_from_cr(Eax, 0).store(slot(0), Eax);
            vec![(Field::new("cr0", 0, 4), eq(s.cr0))]
        })?,
        case("mov %eax,%cr0", Privileged, "Writes CR0 (sets MP) and reads it back.", base(), |a, s| {
            let v = s.cr0 | cr0::MP;
            a.mov_imm(Eax, v).label("insn").mov_to_cr(0, Eax).mov_from_cr(Ebx, 0).store(slot(0), Ebx);
            vec![(Field::new("cr0", 0, 4), eq(v))]
        })?,
        case("mov %cr3,%eax", Privileged, "Reads CR3 (the page-directory base).", base(), |a, s| {
            a.label("insn").mov_from_cr(Eax, 3).store(slot(0), Eax);
            vec![(Field::new("cr3", 0, 4), eq(s.cr3))]
        })?,
        case("mov %eax,%cr3", Privileged, "Writes CR3 and reads it back.", base(), |a, s| {
            let v = s.cr3 + 0x1000;
            a.mov_imm(Eax, v).label("insn").mov_to_cr(3, Eax).mov_from_cr(Ebx, 3).store(slot(0), Ebx);
            vec![(Field::new("cr3", 0, 4), eq(v))]
        })?,
        case("out/in", Privileged, "Writes the 16550 UART's scratch register (port 0x3ff) and reads it back: I/O at IOPL 0 traps deprivileged.", base(), |a, _| {
            let value = 0xa5u32;
            a.mov_imm(Edx, 0x3ffu32).mov_imm(Eax, value).label("insn").out_dx_al().zero(Eax).in_al_dx().store(slot(0), Eax);
            vec![(Field::new("scratch", 0, 4), eq(value))]
        })?,
        case("lgdt", Privileged, "Loads GDTR with a second copy of the GDT and stores it back with sgdt.", base(), |a, s| {
            a.label("insn").lgdt(guest::GDTR2_IMAGE).sgdt(slot(0));
            let (limit, _) = s.gdtr();
            table_register(limit, guest::GDT2_BASE)
        })?,
        case("wrmsr", Privileged, "Writes IA32_SYSENTER_CS and reads it back with rdmsr.", base(), |a, s| {
            a.mov_imm(Ecx, 0x174u32).mov_imm(Eax, s.code_sel).zero(Edx).label("insn").wrmsr();
            a.zero(Eax).rdmsr().store(slot(0), Eax);
            vec![(Field::new("sysenter_cs", 0, 4), eq(s.code_sel))]
        })?,
        case("cpuid", HostLeak, "Leaf 1 feature flags. Not privileged: deprivileged the guest sees the host CPU's features, not the VM's.", base(), |a, _| {
            a.mov_imm(Eax, 1u32).zero(Ecx).label("insn").cpuid().store(slot(0), Ecx).store(slot(1), Edx);
            // OSXSAVE (ECX bit 27) follows the guest's CR4.OSXSAVE; APIC (EDX bit 9) the
            // APIC's enable bit on KVM.
            vec![
                (Field::new("ecx", 0, 4), Want::VmCpuid { leaf: 1, reg: 2, mask: !(1 << 27) }),
                (Field::new("edx", 1, 4), Want::VmCpuid { leaf: 1, reg: 3, mask: !(1 << 9) }),
            ]
        })?,
        case("rdtsc", HostLeak, "Reads the time-stamp counter, which the guest set with wrmsr in its start-up. Deprivileged it reads the host's.", base(), |a, s| {
            a.label("insn").rdtsc().store(slot(0), Eax).store(slot(1), Edx);
            // A few seconds' worth of cycles since the guest set it.
            vec![(Field::new("tsc", 0, 8), Want::Range { lo: s.tsc, hi: s.tsc + (1 << 36) })]
        })?,
    ];
    if let Some(hlt) = rows.iter_mut().find(|c| c.name == "hlt") {
        hlt.ending = Ending::HaltedAt(hlt.insn);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asm::disassemble;

    #[test]
    fn every_case_marks_its_instruction_and_ends_in_hlt() {
        let cases = catalogue().unwrap();
        assert!(cases.iter().filter(|c| c.group == Group::RobinIrvine).count() >= 17);
        for c in &cases {
            assert!(c.insn >= guest::BODY && c.insn < c.terminator, "{}", c.name);
            let end = usize::try_from(c.terminator - guest::BODY).unwrap();
            assert_eq!(c.body[end], 0xf4, "{}", c.name);
            assert_eq!(c.body.len(), end + 1, "{}", c.name);
            let at = usize::try_from(c.insn - guest::BODY).unwrap();
            let first = disassemble(&c.body[at..], c.insn).remove(0);
            let mnemonic = c.name.split([' ', '/', '%']).next().unwrap();
            assert!(first.starts_with(mnemonic), "{}: the studied instruction is `{first}`", c.name);
            c.image().unwrap();
        }
    }

    #[test]
    fn fields_read_little_endian() {
        let f = Field { name: "x", addr: guest::RESULT + 2, bytes: 4 };
        assert_eq!(f.read(&[0, 0, 0x78, 0x56, 0x34, 0x12]), Some(0x1234_5678));
        assert_eq!(f.read(&[0, 0, 1]), None);
    }
}
