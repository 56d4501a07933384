//! `Vm::run_kvm`: the KVM engine's setup, entry state and exit loop.

use super::sys::{self, Watchdog};
use super::{host, KvmOptions, KvmRunError, KvmStats};
use crate::cpu::{cr0, eflags, sreg, Cpu, Segment, TableReg};
use crate::devices::IoEffect;
use crate::vm::{RunOutcome, Vm};
use bt86_translator::abi::ARITH_FLAGS;
use iced_x86::{Decoder, DecoderOptions, Formatter, GasFormatter};
use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment, kvm_sregs, KVM_INTERNAL_ERROR_EMULATION, KVM_MAX_CPUID_ENTRIES, KVM_SYSTEM_EVENT_RESET};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use std::time::Instant;

/// Where KVM may put the TSS pages it needs for real-mode emulation on VT-x: just
/// below 4 GiB, above any RAM bt86 gives a guest (at most 3 GiB).
const KVM_TSS_ADDR: usize = 0xfffb_d000;

/// Longest x86 instruction.
const MAX_INSN: usize = 15;

/// An exit, decoded into owned data so the vCPU is free again.
enum Exit {
    Io,
    Hlt,
    Shutdown,
    Internal,
    FailEntry(u64),
    Mmio { addr: u64, write: bool, len: usize },
    Intr,
    SystemEvent(u32),
    Other(String),
}

impl Exit {
    /// The `exits` key in `KvmStats`.
    fn key(&self) -> &'static str {
        match self {
            Exit::Io => "io",
            Exit::Hlt => "hlt",
            Exit::Shutdown => "shutdown",
            Exit::Internal => "internal_error",
            Exit::FailEntry(_) => "fail_entry",
            Exit::Mmio { .. } => "mmio",
            Exit::Intr => "intr",
            Exit::SystemEvent(_) => "system_event",
            Exit::Other(_) => "other",
        }
    }
}

fn setup(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmRunError {
    move |source| KvmRunError::Setup { what, source }
}

fn running(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmRunError {
    move |source| KvmRunError::Run { what, source }
}

impl Vm {
    /// Runs the guest under KVM from the state `load_multiboot` (or `set_flat_state`,
    /// or a restored checkpoint) left, with this VM's RAM and port devices, until it stops. Checks the host
    /// first: a missing/inaccessible /dev/kvm is an error, and so is a software-backed
    /// one unless `opts.allow_software`. On return the VM's registers, segments and
    /// control registers hold the guest's final state.
    pub fn run_kvm(&mut self, opts: KvmOptions) -> Result<(RunOutcome, KvmStats), KvmRunError> {
        let host = host::check_host_allowing(opts.allow_software)?;
        let kvm = Kvm::new().map_err(setup("open /dev/kvm"))?;
        let mmap_size = kvm.get_vcpu_mmap_size().map_err(setup("get the vCPU mapping size"))?;
        let vm_fd = kvm.create_vm().map_err(setup("create a VM"))?;
        sys::register_ram(&vm_fd, &self.ram).map_err(setup("register guest RAM as a memory slot"))?;
        if let Err(e) = vm_fd.set_tss_address(KVM_TSS_ADDR) {
            // Only VT-x without unrestricted guest needs it, and only for real mode.
            tracing::debug!(error = %e, "KVM_SET_TSS_ADDR failed; continuing");
        }
        let mut vcpu = vm_fd.create_vcpu(0).map_err(setup("create the vCPU"))?;
        match kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES) {
            Ok(cpuid) => {
                if let Err(e) = vcpu.set_cpuid2(&cpuid) {
                    tracing::warn!(error = %e, "KVM_SET_CPUID2 failed; the guest sees KVM's default CPUID");
                }
            }
            Err(e) => tracing::warn!(error = %e, "KVM_GET_SUPPORTED_CPUID failed; the guest sees KVM's default CPUID"),
        }
        let mut sregs = vcpu.get_sregs().map_err(setup("read the vCPU's system registers"))?;
        load_sregs(&mut sregs, &self.cpu);
        vcpu.set_sregs(&sregs).map_err(setup("set the vCPU's system registers"))?;
        vcpu.set_regs(&self.entry_regs()).map_err(setup("set the vCPU's registers"))?;
        super::state::load(&vcpu, self).map_err(setup("set the vCPU's x87/SSE state, MSRs and debug registers"))?;
        let watchdog = Watchdog::arm(opts.timeout).map_err(KvmRunError::Watchdog)?;

        let mut stats = KvmStats { engine: "kvm", kvm_backing: host.describe(), ..KvmStats::default() };
        let started = Instant::now();
        let result = self.kvm_loop(&mut vcpu, mmap_size, &watchdog, &host, &mut stats);
        stats.run_seconds = started.elapsed().as_secs_f64();
        drop(watchdog);
        self.bus.flush();
        if let (Ok(regs), Ok(sregs)) = (vcpu.get_regs(), vcpu.get_sregs()) {
            self.save_state(&regs, &sregs);
        }
        if let Err(e) = super::state::store(&vcpu, self) {
            tracing::warn!(error = %e, "cannot read the vCPU's x87/SSE state, MSRs and debug registers back from KVM");
        }
        result.map(|outcome| (outcome, stats))
    }

    /// The general registers, eip and eflags the guest enters with.
    fn entry_regs(&self) -> kvm_regs {
        let ctx = self.tr.ctx();
        let g = |i: usize| u64::from(ctx.gpr[i]);
        #[allow(clippy::cast_possible_truncation)]
        let arith = ctx.rflags as u32 & ARITH_FLAGS;
        let vif = if ctx.vif != 0 { eflags::IF } else { 0 };
        // Virtual-8086 mode is not a state bt86 enters.
        let sys_flags = ctx.sys_flags & !eflags::VM;
        kvm_regs {
            rax: g(0),
            rcx: g(1),
            rdx: g(2),
            rbx: g(3),
            rsp: g(4),
            rbp: g(5),
            rsi: g(6),
            rdi: g(7),
            rip: u64::from(ctx.eip),
            rflags: u64::from(arith | vif | sys_flags | eflags::FIXED),
            ..kvm_regs::default()
        }
    }

    /// Copies the guest's final state back into the VM.
    fn save_state(&mut self, regs: &kvm_regs, sregs: &kvm_sregs) {
        #[allow(clippy::cast_possible_truncation)]
        let low = |v: u64| v as u32;
        let ctx = self.tr.ctx_mut();
        ctx.gpr = [
            low(regs.rax),
            low(regs.rcx),
            low(regs.rdx),
            low(regs.rbx),
            low(regs.rsp),
            low(regs.rbp),
            low(regs.rsi),
            low(regs.rdi),
        ];
        ctx.eip = low(regs.rip);
        let fl = low(regs.rflags);
        ctx.rflags = u64::from(fl & ARITH_FLAGS | eflags::FIXED);
        ctx.vif = u8::from(fl & eflags::IF != 0);
        ctx.sys_flags = fl & (eflags::TF | eflags::IOPL | eflags::NT | eflags::AC | eflags::ID);
        store_sregs(&mut self.cpu, sregs);
    }

    fn kvm_loop(
        &mut self,
        vcpu: &mut VcpuFd,
        mmap_size: usize,
        watchdog: &Watchdog,
        host: &host::KvmHost,
        stats: &mut KvmStats,
    ) -> Result<RunOutcome, KvmRunError> {
        let mut mmio_logged = false;
        loop {
            if watchdog.expired() {
                return Ok(RunOutcome::Stopped { eip: eip_of(vcpu)? });
            }
            let exit = match vcpu.run() {
                Ok(VcpuExit::IoIn(..) | VcpuExit::IoOut(..)) => Exit::Io,
                Ok(VcpuExit::Hlt) => Exit::Hlt,
                Ok(VcpuExit::Shutdown) => Exit::Shutdown,
                Ok(VcpuExit::InternalError) => Exit::Internal,
                Ok(VcpuExit::FailEntry(reason, _cpu)) => Exit::FailEntry(reason),
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    // No MMIO devices yet: reads see an empty bus.
                    data.fill(0xff);
                    Exit::Mmio { addr, write: false, len: data.len() }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => Exit::Mmio { addr, write: true, len: data.len() },
                Ok(VcpuExit::Intr) => Exit::Intr,
                Ok(VcpuExit::SystemEvent(kind, _)) => Exit::SystemEvent(kind),
                Ok(other) => Exit::Other(format!("{other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Intr,
                Err(e) => return Err(running("KVM_RUN")(e)),
            };
            stats.count(exit.key());
            let outcome = match exit {
                Exit::Io => self.kvm_port_io(vcpu, mmap_size, stats)?,
                Exit::Hlt => {
                    // TODO(PIC/PIT issue): with IF set and an interrupt source, wait for
                    // the next interrupt instead of stopping (as the BT engine will).
                    // KVM has completed the hlt (rip is past it, where the guest would
                    // resume); like the BT engine, report the hlt's own address.
                    Some(RunOutcome::Halted { eip: eip_of(vcpu)?.wrapping_sub(1) })
                }
                // KVM does not say which faults led there: `faults` stays empty.
                Exit::Shutdown => Some(RunOutcome::TripleFault { faults: Vec::new(), eip: eip_of(vcpu)? }),
                Exit::Internal => Some(self.kvm_internal_error(vcpu, host)?),
                Exit::FailEntry(reason) => Some(RunOutcome::Unsupported {
                    eip: eip_of(vcpu)?,
                    what: format!("KVM could not enter the guest (hardware entry failure reason {reason:#x})"),
                }),
                Exit::Mmio { addr, write, len } => {
                    if !mmio_logged {
                        mmio_logged = true;
                        tracing::warn!(
                            addr = format_args!("{addr:#x}"),
                            write,
                            len,
                            "guest access to memory outside RAM (no MMIO devices): reads return all ones, writes are ignored; further ones are not logged"
                        );
                    }
                    None
                }
                Exit::Intr => None,
                Exit::SystemEvent(KVM_SYSTEM_EVENT_RESET) => Some(RunOutcome::Reset),
                Exit::SystemEvent(kind) => Some(RunOutcome::Unsupported {
                    eip: eip_of(vcpu)?,
                    what: format!("KVM system event {kind} (a shutdown or crash request)"),
                }),
                Exit::Other(what) => Some(RunOutcome::Unsupported {
                    eip: eip_of(vcpu)?,
                    what: format!("unexpected KVM exit: {what}"),
                }),
            };
            if let Some(outcome) = outcome {
                return Ok(outcome);
            }
        }
    }

    /// A port-I/O exit: every element of (string) I/O goes to the port bus. Returns an
    /// outcome if a device ended the run.
    fn kvm_port_io(
        &mut self,
        vcpu: &mut VcpuFd,
        mmap_size: usize,
        stats: &mut KvmStats,
    ) -> Result<Option<RunOutcome>, KvmRunError> {
        let mut stop: Option<Result<u32, String>> = None;
        match sys::io_exit(vcpu, mmap_size) {
            None => stop = Some(Err("a malformed port-I/O exit from KVM".to_string())),
            Some(io) if !matches!(io.size, 1 | 2 | 4) => {
                stop = Some(Err(format!("port I/O of {} bytes at port {:#x}", io.size, io.port)));
            }
            Some(io) => {
                let size = usize::from(io.size);
                for chunk in io.data.chunks_exact_mut(size) {
                    stats.port_accesses += 1;
                    if io.input {
                        let v = self.bus.read(io.port, io.size);
                        chunk.copy_from_slice(&v.to_le_bytes()[..size]);
                        continue;
                    }
                    let mut le = [0u8; 4];
                    le[..size].copy_from_slice(chunk);
                    #[allow(unreachable_patterns)]
                    match self.bus.write(io.port, io.size, u32::from_le_bytes(le)) {
                        IoEffect::None => {}
                        IoEffect::Exit(v) => {
                            stop = Some(Ok(v));
                            break;
                        }
                        // Effects added after this engine (a reset, ...) stop the run
                        // clearly rather than being ignored.
                        other => {
                            stop = Some(Err(format!(
                                "device effect {other:?} from a write to port {:#x}, which the KVM engine does not handle yet",
                                io.port
                            )));
                            break;
                        }
                    }
                }
            }
        }
        Ok(match stop {
            None => None,
            Some(Ok(v)) => Some(RunOutcome::GuestExit(v)),
            Some(Err(what)) => Some(RunOutcome::Unsupported { eip: eip_of(vcpu)?, what }),
        })
    }

    /// KVM_EXIT_INTERNAL_ERROR: for an emulation failure, names the instruction.
    fn kvm_internal_error(&self, vcpu: &mut VcpuFd, host: &host::KvmHost) -> Result<RunOutcome, KvmRunError> {
        let (suberror, data) = sys::internal_error(vcpu).unwrap_or((0, Vec::new()));
        let regs = vcpu.get_regs().map_err(running("KVM_GET_REGS"))?;
        let sregs = vcpu.get_sregs().map_err(running("KVM_GET_SREGS"))?;
        #[allow(clippy::cast_possible_truncation)]
        let eip = regs.rip as u32;
        if suberror != KVM_INTERNAL_ERROR_EMULATION {
            let words: Vec<String> = data.iter().map(|w| format!("{w:#x}")).collect();
            return Ok(RunOutcome::Unsupported {
                eip,
                what: format!(
                    "KVM internal error ({}, suberror {suberror}; data {})",
                    internal_error_name(suberror),
                    if words.is_empty() { "none".to_string() } else { words.join(" ") }
                ),
            });
        }
        #[allow(clippy::cast_possible_truncation)]
        let linear = (sregs.cs.base as u32).wrapping_add(eip);
        let bytes = self.fetch_insn(vcpu, linear, sregs.cr0);
        let why = match &host.backing {
            host::Backing::Software { module: Some(m) } => format!("the host's software KVM ({m}) lacks it"),
            host::Backing::Software { module: None } => "the host's software KVM lacks it".to_string(),
            host::Backing::Hardware { .. } => "KVM's instruction emulator cannot handle it here".to_string(),
        };
        let what = if bytes.is_empty() {
            format!("KVM emulation failure at linear {linear:#010x}, which is not in guest RAM ({why})")
        } else {
            let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("KVM emulation failure on instruction bytes {}{} ({why})", hex.join(" "), disassemble(&bytes, eip))
        };
        Ok(RunOutcome::Unsupported { eip, what })
    }

    /// The bytes of the instruction at `linear` (paging through KVM if the guest has it
    /// on), trimmed to its decoded length; empty if it is not in RAM.
    fn fetch_insn(&self, vcpu: &VcpuFd, linear: u32, guest_cr0: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_INSN);
        for i in 0..MAX_INSN as u32 {
            let lin = linear.wrapping_add(i);
            let phys = if guest_cr0 & u64::from(cr0::PG) != 0 {
                match vcpu.translate_gva(u64::from(lin)) {
                    Ok(t) if t.valid != 0 => u32::try_from(t.physical_address).ok(),
                    _ => None,
                }
            } else {
                Some(lin)
            };
            match phys.and_then(|p| self.ram.read_u8(p).ok()) {
                Some(b) => out.push(b),
                None => break,
            }
        }
        let mut decoder = Decoder::with_ip(32, &out, u64::from(linear), DecoderOptions::NONE);
        let ins = decoder.decode();
        if !ins.is_invalid() {
            out.truncate(ins.len());
        }
        out
    }
}

/// ` (lar %eax,%ecx)`, or nothing if the bytes do not decode.
fn disassemble(bytes: &[u8], eip: u32) -> String {
    let mut decoder = Decoder::with_ip(32, bytes, u64::from(eip), DecoderOptions::NONE);
    let ins = decoder.decode();
    if ins.is_invalid() {
        return String::new();
    }
    let mut text = String::new();
    GasFormatter::new().format(&ins, &mut text);
    format!(" (`{text}`)")
}

fn internal_error_name(suberror: u32) -> &'static str {
    match suberror {
        1 => "emulation failure",
        2 => "exception while emulating",
        3 => "event delivery failed",
        4 => "unexpected exit reason",
        _ => "unknown",
    }
}

/// The guest's current eip.
fn eip_of(vcpu: &VcpuFd) -> Result<u32, KvmRunError> {
    let regs = vcpu.get_regs().map_err(running("KVM_GET_REGS"))?;
    #[allow(clippy::cast_possible_truncation)]
    Ok(regs.rip as u32)
}

/// A bt86 segment register as KVM's segment (same hidden-cache fields).
pub(crate) fn to_kvm_segment(s: &Segment) -> kvm_segment {
    let a = s.attrs;
    let bit = |n: u16| u8::from(a >> n & 1 != 0);
    let present = bit(7);
    kvm_segment {
        base: u64::from(s.base),
        limit: s.limit,
        selector: s.selector,
        #[allow(clippy::cast_possible_truncation)]
        type_: (a & 0xf) as u8,
        present,
        #[allow(clippy::cast_possible_truncation)]
        dpl: (a >> 5 & 3) as u8,
        db: bit(14),
        s: bit(4),
        l: bit(13),
        g: bit(15),
        avl: bit(12),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The inverse of [`to_kvm_segment`].
pub(crate) fn from_kvm_segment(k: &kvm_segment) -> Segment {
    let flag = |v: u8, n: u16| if v != 0 { 1u16 << n } else { 0 };
    let present = k.present != 0 && k.unusable == 0;
    let attrs = u16::from(k.type_ & 0xf)
        | flag(k.s, 4)
        | (u16::from(k.dpl & 3) << 5)
        | flag(u8::from(present), 7)
        | flag(k.avl, 12)
        | flag(k.l, 13)
        | flag(k.db, 14)
        | flag(k.g, 15);
    #[allow(clippy::cast_possible_truncation)]
    Segment { selector: k.selector, base: k.base as u32, limit: k.limit, attrs }
}

fn to_dtable(t: &TableReg) -> kvm_dtable {
    kvm_dtable { base: u64::from(t.base), limit: t.limit, padding: [0; 3] }
}

/// Fills KVM's system registers from the virtual CPU. TR and LDTR keep KVM's reset
/// values (a busy 32-bit TSS and an empty LDT, which VT-x requires) unless the guest
/// has loaded its own.
pub(crate) fn load_sregs(s: &mut kvm_sregs, cpu: &Cpu) {
    s.es = to_kvm_segment(&cpu.seg[sreg::ES]);
    s.cs = to_kvm_segment(&cpu.seg[sreg::CS]);
    s.ss = to_kvm_segment(&cpu.seg[sreg::SS]);
    s.ds = to_kvm_segment(&cpu.seg[sreg::DS]);
    s.fs = to_kvm_segment(&cpu.seg[sreg::FS]);
    s.gs = to_kvm_segment(&cpu.seg[sreg::GS]);
    if cpu.tr.attrs & 0x80 != 0 {
        s.tr = to_kvm_segment(&cpu.tr);
    }
    if cpu.ldtr.attrs & 0x80 != 0 {
        s.ldt = to_kvm_segment(&cpu.ldtr);
    }
    s.gdt = to_dtable(&cpu.gdtr);
    s.idt = to_dtable(&cpu.idtr);
    s.cr0 = u64::from(cpu.cr0);
    s.cr2 = u64::from(cpu.cr2);
    s.cr3 = u64::from(cpu.cr3);
    s.cr4 = u64::from(cpu.cr4);
    s.efer = 0;
}

/// Copies KVM's system registers back into the virtual CPU.
pub(crate) fn store_sregs(cpu: &mut Cpu, s: &kvm_sregs) {
    cpu.seg[sreg::ES] = from_kvm_segment(&s.es);
    cpu.seg[sreg::CS] = from_kvm_segment(&s.cs);
    cpu.seg[sreg::SS] = from_kvm_segment(&s.ss);
    cpu.seg[sreg::DS] = from_kvm_segment(&s.ds);
    cpu.seg[sreg::FS] = from_kvm_segment(&s.fs);
    cpu.seg[sreg::GS] = from_kvm_segment(&s.gs);
    cpu.tr = from_kvm_segment(&s.tr);
    cpu.ldtr = from_kvm_segment(&s.ldt);
    #[allow(clippy::cast_possible_truncation)]
    {
        cpu.gdtr = TableReg { base: s.gdt.base as u32, limit: s.gdt.limit };
        cpu.idtr = TableReg { base: s.idt.base as u32, limit: s.idt.limit };
        cpu.cr0 = s.cr0 as u32;
        cpu.cr2 = s.cr2 as u32;
        cpu.cr3 = s.cr3 as u32;
        cpu.cr4 = s.cr4 as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_segments_convert_both_ways() {
        let code = Segment::flat(0x10, 0x9b);
        let k = to_kvm_segment(&code);
        assert_eq!((k.base, k.limit, k.selector), (0, 0xffff_ffff, 0x10));
        assert_eq!((k.type_, k.s, k.dpl, k.present, k.db, k.g, k.l, k.unusable), (0xb, 1, 0, 1, 1, 1, 0, 0));
        assert_eq!(from_kvm_segment(&k), code);
        let data = Segment::flat(0x18, 0x93);
        let k = to_kvm_segment(&data);
        assert_eq!(k.type_, 3);
        assert_eq!(from_kvm_segment(&k), data);
        // A ring-3 segment with a base and a byte-granular limit.
        let user = Segment { selector: 0x2b, base: 0x1234_5000, limit: 0xfffff, attrs: 0x40f3 };
        let k = to_kvm_segment(&user);
        assert_eq!((k.dpl, k.g, k.db, k.base), (3, 0, 1, 0x1234_5000));
        assert_eq!(from_kvm_segment(&k), user);
    }

    #[test]
    fn null_segment_is_unusable() {
        let k = to_kvm_segment(&Segment::default());
        assert_eq!((k.present, k.unusable), (0, 1));
        assert_eq!(from_kvm_segment(&k).attrs & 0x80, 0);
    }

    #[test]
    fn multiboot_state_converts() {
        let mut seg = [Segment::flat(0x18, 0x93); 6];
        seg[sreg::CS] = Segment::flat(0x10, 0x9b);
        let cpu = Cpu { seg, gdtr: TableReg { base: 0x800, limit: 0x1f }, ..Cpu::default() };
        let mut s = kvm_sregs {
            tr: kvm_segment { type_: 11, present: 1, limit: 0xffff, ..kvm_segment::default() },
            ..kvm_sregs::default()
        };
        load_sregs(&mut s, &cpu);
        assert_eq!(s.cr0, u64::from(cr0::PE | cr0::ET));
        assert_eq!((s.gdt.base, s.gdt.limit), (0x800, 0x1f));
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!(s.ss.selector, 0x18);
        // The reset TR stays: the multiboot state has none of its own.
        assert_eq!((s.tr.type_, s.tr.present), (11, 1));
        let mut back = Cpu::default();
        store_sregs(&mut back, &s);
        assert_eq!(back.seg, cpu.seg);
        assert_eq!(back.gdtr, cpu.gdtr);
        assert_eq!(back.cr0, cpu.cr0);
    }

    /// A VM with `code` at 0x1000 in flat protected mode, console to a buffer; `None`
    /// when this host has no usable /dev/kvm (software-backed counts as usable here).
    fn kvm_vm(code: &[u8]) -> Option<(Vm, crate::devices::SharedBuffer)> {
        if let Err(e) = host::check_host() {
            e.software_host()?;
        }
        let out = crate::devices::SharedBuffer::new();
        let mut vm = Vm::new(crate::vm::VmConfig::new(2, Box::new(out.clone()))).unwrap();
        vm.ram.write(0x1000, code).unwrap();
        vm.set_flat_state(0x1000, [0, 0, 0, 0, 0x8000, 0, 0, 0], 0);
        Some((vm, out))
    }

    const ALLOW: KvmOptions = KvmOptions { allow_software: true, timeout: None };

    #[test]
    fn runs_port_io_and_writes_the_state_back() {
        // mov $0x3f8,%dx; mov $'K',%al; out %al,(%dx); mov $0x1234,%ebx; stc;
        // mov $0xf4,%dx; mov $9,%eax; out %eax,(%dx)
        let code = [
            0x66, 0xba, 0xf8, 0x03, 0xb0, b'K', 0xee, 0xbb, 0x34, 0x12, 0, 0, 0xf9, 0x66, 0xba, 0xf4, 0x00, 0xb8, 9, 0,
            0, 0, 0xef,
        ];
        let Some((mut vm, out)) = kvm_vm(&code) else { return };
        let (outcome, stats) = vm.run_kvm(ALLOW).unwrap();
        assert_eq!(outcome, RunOutcome::GuestExit(9));
        assert_eq!(out.to_string_lossy(), "K");
        assert_eq!((stats.guest_exits, stats.exits.get("io").copied(), stats.port_accesses), (2, Some(2), 2));
        let (regs, flags) = vm.registers();
        assert_eq!((regs[0], regs[3], regs[4]), (9, 0x1234, 0x8000));
        assert_eq!(flags & 1, 1, "CF from stc");
        assert_eq!(vm.cpu.seg[sreg::CS], Segment::flat(0x10, 0x9b));
    }

    #[test]
    fn timeout_interrupts_a_spinning_guest() {
        let Some((mut vm, _)) = kvm_vm(&[0xeb, 0xfe]) else { return };
        let started = Instant::now();
        let opts = KvmOptions { allow_software: true, timeout: Some(std::time::Duration::from_millis(200)) };
        let (outcome, stats) = vm.run_kvm(opts).unwrap();
        assert_eq!(outcome, RunOutcome::Stopped { eip: 0x1000 });
        assert!(stats.exits.get("intr").copied().unwrap_or(0) >= 1, "{stats:?}");
        assert!(started.elapsed().as_secs() < 10);
    }

    #[test]
    fn mmio_reads_all_ones_and_hlt_stops() {
        // mov 0xf0000000,%eax; hlt
        let Some((mut vm, _)) = kvm_vm(&[0xa1, 0, 0, 0, 0xf0, 0xf4]) else { return };
        let (outcome, stats) = vm.run_kvm(ALLOW).unwrap();
        assert_eq!(outcome, RunOutcome::Halted { eip: 0x1005 });
        assert_eq!(vm.registers().0[0], 0xffff_ffff);
        assert_eq!(stats.exits.get("mmio").copied(), Some(1));
    }

    #[test]
    fn disassembles_the_failing_instruction() {
        assert_eq!(disassemble(&[0x0f, 0x02, 0xc8], 0x1000), " (`lar %eax,%ecx`)");
        assert_eq!(disassemble(&[0x27], 0x1000), " (`daa`)");
        assert_eq!(disassemble(&[0x0f], 0x1000), "");
    }
}
