//! Light exits for instructions that change only CPU state and guest memory:
//! `int n` and the exceptions translated code raises itself (#DE), `iret`,
//! `sysenter`/`sysexit`, segment-register loads, `verr`/`verw`/`lar`/`lsl`.
//!
//! They run the general emulation (`emulate`, `delivery`), so they mean exactly
//! what the general path means, but on [`CachedMemory`]: guest memory reached
//! through the translations the shadow MMU keeps for the current space, with no
//! page walk, no emulation view, no invalidation bookkeeping. An access the
//! shadow cannot serve that way (a page it has not mapped, a write to a page
//! table or to translated code, a write the guest's D bit does not allow yet)
//! fails with `MemFault::NotCached`, and the instruction is taken again by the
//! general path. That is safe because the emulation checks everything before
//! it changes a register: what a failed attempt leaves behind is at most some
//! stack or descriptor bytes that the general path writes again, identically.
//!
//! A kernel's descriptor tables and TSS are read by the CPU, not by its code,
//! so the shadow has often not mapped them: a miss maps the page as a hidden
//! fault would (`paging_fault`, a read) and the attempt starts over.

use crate::emulate::delivery::{deliver, EventSource};
use crate::emulate::{self, GuestMemory, Machine, MemFault, Outcome};
use crate::engine::Next;
use crate::memory::GuestRam;
use crate::mmu::{address_space_key, FaultAction};
use bt86_shadow_mmu::Shadow;
use crate::vm::{Vm, VmError};
use bt86_translator::abi::ExitReason;
use bt86_translator::{CalloutKind, CalloutSite};
use iced_x86::{Instruction, Mnemonic, Register};
use std::collections::BTreeSet;

/// Misses mapped before an attempt gives up (an `int` from user mode reads the
/// IDT, GDT and TSS pages and writes the kernel stack).
const MAX_MISSES: usize = 4;

/// Guest memory as far as the shadow MMU has it mapped in the current space.
pub(crate) struct CachedMemory<'a> {
    ram: &'a GuestRam,
    shadow: &'a Shadow,
    /// Frames holding translated code (writes go through the general path).
    protected: &'a BTreeSet<u32>,
    paging: bool,
    /// The first access with no translation at all: (linear, user).
    missed: Option<(u32, bool)>,
    tlb: &'a mut LightTlb,
}

/// The pages light instructions used, kept across the exits of one stay in the
/// light loop (`Vm::light_exit`): a system call and its `iret` touch the same
/// IDT, GDT, TSS and stack pages every time, and looking each up in the
/// shadow's maps was a tenth of their cost. Valid only while nothing has
/// changed the shadow: it is flushed when the loop is entered (anything may
/// have happened on the general path) and after every light exit that can map,
/// unmap or trace a page (an adaptive store, `invlpg`, a miss, a CR3 change,
/// a mapped #PF return). Translated code cannot change the shadow without an
/// exit that leaves the loop (a trace or SMC fault, a host signal).
#[derive(Clone, Copy)]
pub(crate) struct LightTlb {
    pages: [RecentPage; 8],
    used: usize,
}

impl Default for LightTlb {
    fn default() -> Self {
        Self { pages: [RecentPage { key: u32::MAX, frame: 0, guest_writable: false, may_write: None }; 8], used: 0 }
    }
}

impl LightTlb {
    pub(crate) fn flush(&mut self) {
        *self = Self::default();
    }
}

/// One page a light instruction has used.
#[derive(Clone, Copy)]
struct RecentPage {
    /// Linear page | user (u32::MAX: empty; no page key has bits 1..12 set).
    key: u32,
    frame: u32,
    guest_writable: bool,
    /// Whether a write may go there (None: not asked yet).
    may_write: Option<bool>,
}

impl<'a> CachedMemory<'a> {
    fn new(ram: &'a GuestRam, shadow: &'a Shadow, protected: &'a BTreeSet<u32>, paging: bool, tlb: &'a mut LightTlb) -> Self {
        Self { ram, shadow, protected, paging, missed: None, tlb }
    }

    /// The physical address of `linear` for this access, or `NotCached`.
    fn phys(&mut self, linear: u32, write: bool, user: bool) -> Result<u32, MemFault> {
        let key = (linear & !0xfff) | u32::from(user);
        let slot = match self.tlb.pages.iter().position(|r| r.key == key) {
            Some(i) => i,
            None => {
                let (frame, guest_writable) = self.frame(linear, user)?;
                let i = self.tlb.used % self.tlb.pages.len();
                self.tlb.used += 1;
                self.tlb.pages[i] = RecentPage { key, frame, guest_writable, may_write: None };
                i
            }
        };
        let page = self.tlb.pages[slot];
        if write {
            let allowed = page.may_write.unwrap_or_else(|| page.guest_writable && self.holds_neither(page.frame));
            self.tlb.pages[slot].may_write = Some(allowed);
            if !allowed {
                return Err(MemFault::NotCached);
            }
        }
        Ok((page.frame << 12) | (linear & 0xfff))
    }

    /// The frame behind `linear`, in RAM, and whether the guest allows writes
    /// through its translation (R/W, U/S, WP and a set D bit).
    fn frame(&mut self, linear: u32, user: bool) -> Result<(u32, bool), MemFault> {
        let found = if self.paging {
            match self.shadow.cached_frame(linear, user) {
                Some(found) => found,
                None => {
                    self.missed.get_or_insert((linear, user));
                    return Err(MemFault::NotCached);
                }
            }
        } else {
            (linear >> 12, true)
        };
        if !self.ram.contains(found.0 << 12, 0x1000) {
            return Err(MemFault::NotCached);
        }
        Ok(found)
    }

    /// Whether `frame` holds neither translated code nor (paging on) a page
    /// table: a write there must go through the general path's bookkeeping.
    fn holds_neither(&self, frame: u32) -> bool {
        !(self.protected.contains(&frame) || (self.paging && self.shadow.is_traced(frame)))
    }
}

impl GuestMemory for CachedMemory<'_> {
    fn read(&mut self, linear: u32, buf: &mut [u8], user: bool) -> Result<(), MemFault> {
        // Descriptors, gate entries and stack frames nearly always lie in one page.
        if within_page(linear, buf.len()) {
            let phys = self.phys(linear, false, user)?;
            return self.ram.read(phys, buf).map_err(|_| MemFault::NotCached);
        }
        for (at, off, n) in crate::engine::page_pieces(linear, buf.len()) {
            let phys = self.phys(at, false, user)?;
            self.ram.read(phys, &mut buf[off..off + n]).map_err(|_| MemFault::NotCached)?;
        }
        Ok(())
    }

    fn write(&mut self, linear: u32, data: &[u8], user: bool) -> Result<(), MemFault> {
        if within_page(linear, data.len()) {
            let phys = self.phys(linear, true, user)?;
            return self.ram.write(phys, data).map_err(|_| MemFault::NotCached);
        }
        for (at, _, _) in crate::engine::page_pieces(linear, data.len()) {
            self.phys(at, true, user)?;
        }
        for (at, off, n) in crate::engine::page_pieces(linear, data.len()) {
            let phys = self.phys(at, true, user)?;
            self.ram.write(phys, &data[off..off + n]).map_err(|_| MemFault::NotCached)?;
        }
        Ok(())
    }
}

/// Whether `len` bytes at `linear` lie in one page.
fn within_page(linear: u32, len: usize) -> bool {
    (linear & 0xfff) as usize + len <= 0x1000
}

/// Whether the instruction at an `Emulate` callout changes only CPU state and
/// memory, so the light path may run it. Loads of SS stay general (the
/// interrupt shadow after them is the engine's).
fn cpu_only(ins: &Instruction) -> bool {
    use Mnemonic::*;
    let sreg_load = || {
        let op0 = ins.op0_register();
        matches!(op0, Register::DS | Register::ES | Register::FS | Register::GS)
    };
    match ins.mnemonic() {
        Int | Int3 | Into | Iret | Iretd | Sysenter | Sysexit | Verr | Verw | Lar | Lsl => true,
        Mov | Pop => sreg_load(),
        Lds | Les | Lfs | Lgs => true,
        _ => false,
    }
}

/// What one attempt came to.
enum Attempt {
    Done(Next),
    /// No translation for (linear, user): map it and try again.
    Miss(u32, bool),
    /// Take the general path.
    General,
}

impl Vm {
    /// Takes the exit just made by translated code on the light path if it is
    /// one of the instructions above (or a #DE raised by a divide check). Where
    /// to go next, or None: take the general path.
    pub(crate) fn light_cpu(&mut self) -> Result<Option<Next>, VmError> {
        let ctx = self.tr.ctx();
        if ExitReason::from_raw(ctx.exit_reason) != Some(ExitReason::Callout) {
            return Ok(None);
        }
        let Some(site) = self.tr.site(ctx.exit_arg).cloned() else { return Ok(None) };
        let eligible = match site.kind {
            CalloutKind::Emulate => cpu_only(&site.ins),
            CalloutKind::RaiseDe => true,
            _ => false,
        };
        if !eligible || ctx.sys_flags & crate::cpu::eflags::NT != 0 {
            // NT: iret is a task return.
            return Ok(None);
        }
        let space_before = address_space_key(&self.cpu);
        let Some(next) = self.retry_misses(|vm| vm.attempt_light_cpu(&site))? else { return Ok(None) };
        let space_after = address_space_key(&self.cpu);
        if space_after != space_before {
            // A task gate switched tasks, and with them perhaps CR3.
            self.light_tlb.flush();
            self.paging_controls_changed(space_before, space_after)?;
        } else if matches!(site.ins.mnemonic(), Mnemonic::Iret | Mnemonic::Iretd) && self.paging() {
            // A #PF handler returning to the access that faulted (as on the
            // general path).
            if self.shadow.awaits_present() {
                self.light_tlb.flush();
                self.map_awaited()?;
            }
        }
        self.stats.exits_callout += 1;
        self.stats.light_exits += 1;
        if site.kind == CalloutKind::Emulate {
            self.stats.callouts.add(site.ins.mnemonic());
        }
        Ok(Some(next))
    }

    /// Runs `attempt` until it is done, mapping each page it missed (as a
    /// hidden fault would, a read) before the next try, at most `MAX_MISSES`
    /// times; None: the general path takes it.
    #[inline(always)]
    fn retry_misses(&mut self, mut attempt: impl FnMut(&mut Vm) -> Attempt) -> Result<Option<Next>, VmError> {
        for _ in 0..MAX_MISSES {
            match attempt(self) {
                Attempt::Done(next) => return Ok(Some(next)),
                Attempt::Miss(linear, user) => {
                    self.light_tlb.flush();
                    if !self.paging() || !matches!(self.paging_fault(linear, false, user)?, FaultAction::Retry) {
                        return Ok(None);
                    }
                }
                Attempt::General => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Runs `site` once on cached memory.
    fn attempt_light_cpu(&mut self, site: &CalloutSite) -> Attempt {
        let resume = self.tr.ctx().resume;
        let cpl_before = self.cpu.cpl();
        self.tr.ctx_mut().eip = site.eip;
        let next_eip = site.eip.wrapping_add(u32::from(site.len));
        let paging = self.cpu.cr0 & crate::cpu::cr0::PG != 0;
        let mut mem = CachedMemory::new(&self.ram, &self.shadow, &self.protected, paging, &mut self.light_tlb);
        let mut m = Machine { cpu: &mut self.cpu, ctx: self.tr.ctx_mut(), mem: &mut mem, io: &mut self.bus };
        let iretd = site.kind == CalloutKind::Emulate && site.ins.mnemonic() == Mnemonic::Iretd;
        if iretd && self.gate_cache.iret(&mut m) {
            self.stats.kept_gate_checks += 1;
            let eip = m.ctx.eip;
            return self.light_cpu_done(Next::Dispatch(eip), cpl_before);
        }
        let event = match site.kind {
            CalloutKind::RaiseDe => Some((emulate::vector::DE, EventSource::Exception, site.eip)),
            CalloutKind::Emulate if site.ins.mnemonic() == Mnemonic::Int => {
                Some((site.ins.immediate8(), EventSource::Software, next_eip))
            }
            _ => match emulate::emulate(&mut m, site) {
                Outcome::SoftwareInterrupt { vector } => Some((vector, EventSource::Software, next_eip)),
                Outcome::Continue => {
                    m.ctx.eip = next_eip;
                    return self.light_cpu_done(Next::Resume(resume), cpl_before);
                }
                Outcome::Jump => {
                    if iretd {
                        self.gate_cache.record_iret(&mut m, cpl_before);
                    }
                    let eip = m.ctx.eip;
                    return self.light_cpu_done(Next::Dispatch(eip), cpl_before);
                }
                _ => None,
            },
        };
        let Some((vector, source, return_eip)) = event else {
            return match mem.missed {
                Some((linear, user)) => Attempt::Miss(linear, user),
                None => Attempt::General,
            };
        };
        let mut m = Machine { cpu: &mut self.cpu, ctx: self.tr.ctx_mut(), mem: &mut mem, io: &mut self.bus };
        let delivered = if self.gate_cache.deliver(&mut m, vector, source, return_eip) {
            self.stats.kept_gate_checks += 1;
            Ok(())
        } else {
            let r = deliver(&mut m, vector, None, source, return_eip);
            if r.is_ok() {
                self.gate_cache.record_delivery(&mut m, vector, source, cpl_before);
            }
            r
        };
        match delivered {
            Ok(()) => {
                *self.stats.exceptions.entry(vector).or_default() += 1;
                self.events_raised += 1;
                let eip = self.tr.ctx().eip;
                self.light_cpu_done(Next::Dispatch(eip), cpl_before)
            }
            Err(_) => match mem.missed {
                Some((linear, user)) => Attempt::Miss(linear, user),
                None => Attempt::General,
            },
        }
    }

    /// Delivers exception `vector` with `error` once on cached memory. (System
    /// calls take `attempt_light_cpu`, whose constant error code and gate cache
    /// made it measurably faster than a path shared with this one.)
    fn attempt_exception(&mut self, vector: u8, error: Option<u32>, eip: u32) -> Attempt {
        let cpl_before = self.cpu.cpl();
        let paging = self.cpu.cr0 & crate::cpu::cr0::PG != 0;
        let mut mem = CachedMemory::new(&self.ram, &self.shadow, &self.protected, paging, &mut self.light_tlb);
        let mut m = Machine { cpu: &mut self.cpu, ctx: self.tr.ctx_mut(), mem: &mut mem, io: &mut self.bus };
        if deliver(&mut m, vector, error, EventSource::Exception, eip).is_err() {
            return mem.missed.map_or(Attempt::General, |(linear, user)| Attempt::Miss(linear, user));
        }
        *self.stats.exceptions.entry(vector).or_default() += 1;
        self.events_raised += 1;
        let next = self.tr.ctx().eip;
        self.light_cpu_done(Next::Dispatch(next), cpl_before)
    }

    /// Raises exception `vector` (with `error`) at `eip` on the light path, as
    /// `Vm::raise` would: where to go next, or None if it needs the general
    /// path (which has changed nothing then).
    pub(crate) fn light_raise(&mut self, vector: u8, error: Option<u32>, eip: u32) -> Result<Option<Next>, VmError> {
        if self.tr.ctx().sys_flags & crate::cpu::eflags::VM != 0 || self.cpu.cr0 & crate::cpu::cr0::PE == 0 {
            return Ok(None);
        }
        self.retry_misses(|vm| vm.attempt_exception(vector, error, eip))
    }

    /// Book-keeping after a light instruction that completed.
    fn light_cpu_done(&mut self, next: Next, cpl_before: u8) -> Attempt {
        if self.cpu.cpl() != cpl_before {
            self.stats.ring_transitions += 1;
        }
        Attempt::Done(next)
    }
}

#[cfg(test)]
mod tests {
    use crate::emulate::testutil::desc;
    use crate::vm::{RunOutcome, Vm, VmConfig};

    const GDT: u32 = 0x2000;
    const TSS: u32 = 0x3000;
    const IDT: u32 = 0x4000;
    const KSTACK: u32 = 0x9000;
    const USER: u32 = 0x6000;
    const PD: u32 = 0x1_0000;
    const PT: u32 = 0x1_1000;

    fn gate(offset: u32, dpl: u8) -> u64 {
        let lo = (0x08 << 16) | (offset & 0xffff);
        let hi = (offset & 0xffff_0000) | 0x8e00 | (u32::from(dpl) << 13);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    /// The kernel's start at 0x1000: load GDT, IDT and TR, perhaps turn paging
    /// on (identity, every page user-accessible, no A bits set), and iret to
    /// the user code at CPL 3.
    fn kernel_start(paging: bool) -> Vec<u8> {
        let mut c = vec![0x0f, 0x01, 0x15, 0x00, 0x1f, 0, 0, 0x0f, 0x01, 0x1d, 0x08, 0x1f, 0, 0];
        let next = 0x1000 + c.len() as u32 + 7;
        c.push(0xea);
        c.extend(next.to_le_bytes());
        c.extend([0x08, 0x00]);
        // mov $0x10,%ax; mov %ax,%ds; mov %ax,%es; mov %ax,%ss; mov $KSTACK,%esp
        c.extend([0x66, 0xb8, 0x10, 0x00, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0xbc]);
        c.extend(KSTACK.to_le_bytes());
        // mov $0x28,%ax; ltr %ax
        c.extend([0x66, 0xb8, 0x28, 0x00, 0x0f, 0x00, 0xd8]);
        if paging {
            // mov $PD,%eax; mov %eax,%cr3; mov %cr0,%eax; or $PG,%eax; mov %eax,%cr0; jmp .+2
            c.push(0xb8);
            c.extend(PD.to_le_bytes());
            c.extend([0x0f, 0x22, 0xd8, 0x0f, 0x20, 0xc0, 0x0d, 0, 0, 0, 0x80, 0x0f, 0x22, 0xc0, 0xeb, 0x00]);
        }
        // push $0x23; push $0x8000; push $2; push $0x1b; push $USER; iret
        c.extend([0x6a, 0x23, 0x68, 0x00, 0x80, 0, 0, 0x6a, 0x02, 0x6a, 0x1b, 0x68]);
        c.extend(USER.to_le_bytes());
        c.push(0xcf);
        c
    }

    /// A guest whose user code makes ten `int $0x80` system calls and one #DE,
    /// then asks its kernel (int $0x81) to end the run with the call count.
    fn syscall_guest(paging: bool) -> Vm {
        let mut vm = Vm::new(VmConfig::new(8, Box::new(std::io::sink()))).unwrap();
        let ram = vm.ram();
        let gdt = [
            0,
            desc(0, 0xfffff, 0x9a, 0xc),
            desc(0, 0xfffff, 0x92, 0xc),
            desc(0, 0xfffff, 0xfa, 0xc),
            desc(0, 0xfffff, 0xf2, 0xc),
            desc(TSS, 0x67, 0x89, 0),
        ];
        for (i, d) in gdt.iter().enumerate() {
            ram.write(GDT + 8 * i as u32, &d.to_le_bytes()).unwrap();
        }
        ram.write(0x1f00, &[0x2f, 0, 0x00, 0x20, 0, 0]).unwrap();
        ram.write(0x1f08, &[0xff, 0x07, 0x00, 0x40, 0, 0]).unwrap();
        ram.write(TSS + 4, &KSTACK.to_le_bytes()).unwrap();
        ram.write(TSS + 8, &0x10u32.to_le_bytes()).unwrap();
        for (vector, offset, dpl) in [(0x80u32, 0x5000, 3), (0, 0x5100, 0), (0x81, 0x5200, 3)] {
            ram.write(IDT + 8 * vector, &gate(offset, dpl).to_le_bytes()).unwrap();
        }
        // int $0x80: inc %ebx; iret
        ram.write(0x5000, &[0x43, 0xcf]).unwrap();
        // #DE: addl $2,(%esp) (past the 2-byte div); inc %edi; iret
        ram.write(0x5100, &[0x83, 0x04, 0x24, 0x02, 0x47, 0xcf]).unwrap();
        // int $0x81: mov $0xf4,%dx; mov %ebx,%eax; out %eax,(%dx)
        ram.write(0x5200, &[0x66, 0xba, 0xf4, 0x00, 0x89, 0xd8, 0xef]).unwrap();
        // mov $10,%ecx; 1: int $0x80; loop 1b; xor %edx,%edx; mov $1,%eax;
        // xor %esi,%esi; div %esi; int $0x81
        let user = [
            0xb9, 10, 0, 0, 0, 0xcd, 0x80, 0xe2, 0xfc, 0x31, 0xd2, 0xb8, 1, 0, 0, 0, 0x31, 0xf6, 0xf7, 0xf6, 0xcd, 0x81,
        ];
        ram.write(USER, &user).unwrap();
        ram.write(0x1000, &kernel_start(paging)).unwrap();
        ram.write(PD, &(PT | 7).to_le_bytes()).unwrap();
        for page in 0..1024u32 {
            ram.write(PT + 4 * page, &((page << 12) | 7).to_le_bytes()).unwrap();
        }
        vm.set_flat_state(0x1000, [0; 8], 0);
        vm
    }

    /// System calls, a #DE and their irets from user mode take the light path,
    /// with the frames and registers the general path gives; with paging on,
    /// the IDT, GDT and TSS pages (never touched by the guest's own code) are
    /// mapped on the first miss.
    #[test]
    fn system_calls_and_de_run_light() {
        for paging in [false, true] {
            let mut vm = syscall_guest(paging);
            assert_eq!(vm.run().unwrap(), RunOutcome::GuestExit(10), "paging {paging}");
            let (regs, _) = vm.registers();
            assert_eq!(regs[7], 1, "the #DE handler ran once (paging {paging})");
            let mut frame = [0u8; 20];
            vm.ram().read(KSTACK - 20, &mut frame).unwrap();
            let word = |i: usize| u32::from_le_bytes(frame[4 * i..4 * i + 4].try_into().unwrap());
            assert_eq!(
                (word(0), word(1), word(3), word(4)),
                (USER + 22, 0x1b, 0x8000, 0x23),
                "int $0x81's frame (paging {paging})"
            );
            assert_eq!(vm.stats.exceptions.get(&0x80), Some(&10));
            assert_eq!(vm.stats.exceptions.get(&0), Some(&1));
            // 10 int + 10 iret + #DE + its iret, and the final int $0x81.
            assert!(vm.stats.light_exits >= 23, "light exits {} (paging {paging})", vm.stats.light_exits);
            assert!(vm.stats.ring_transitions >= 24, "ring transitions {}", vm.stats.ring_transitions);
            // The first call and its iret check everything; the next nine of each reuse it.
            assert!(vm.stats.kept_gate_checks >= 18, "kept gate checks {}", vm.stats.kept_gate_checks);
        }
    }

    /// A kernel stack on a page that holds a page table: the light path may not
    /// write there (the shadow must see the write), so the general path
    /// delivers, and the run gives the same result.
    #[test]
    fn stack_on_a_page_table_takes_the_general_path() {
        let mut vm = syscall_guest(true);
        // The kernel stack top at the end of the page table's frame (PT maps
        // 0-4 MiB; its last entries, for 0x3ff000.., are not used by the guest).
        let top = PT + 0x1000;
        vm.ram().write(TSS + 4, &top.to_le_bytes()).unwrap();
        assert_eq!(vm.run().unwrap(), RunOutcome::GuestExit(10));
        let mut eip = [0u8; 4];
        vm.ram().read(top - 20, &mut eip).unwrap();
        assert_eq!(u32::from_le_bytes(eip), USER + 22, "int $0x81's frame on the page-table page");
        let general = vm.stats.exits_callout - vm.stats.light_exits;
        assert!(general >= 12, "deliveries went general: {general} general callouts");
    }
}
