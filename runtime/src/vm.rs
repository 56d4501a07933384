//! A virtual machine: guest RAM, the kernel view, the vCPU, the port devices and
//! the binary-translation engine, plus what it counts.

use crate::cpu::{Cpu, TableReg};
use crate::alarm::Alarm;
use crate::devices::{Platform, PlatformConfig, PlatformWaker};
use crate::emulate::Stop;
use crate::loader::{self, LoadError};
use crate::memory::{GuestRam, MemoryError};
use crate::stats::Stats;
use bt86_shadow_mmu::{Shadow, ShadowError, View, ViewError};
use bt86_translator::{Translator, TranslatorError};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use thiserror::Error;

/// IDTR limit at kernel entry: the real-mode interrupt vector table (base 0), which is
/// what QEMU's multiboot and Linux loaders leave; a kernel must load its own IDT.
pub const BOOT_IDTR_LIMIT: u16 = 0x3ff;

/// Default guest RAM in MiB.
pub const DEFAULT_MEM_MIB: u32 = 128;
const CODE_CACHE_BYTES: usize = 64 << 20;

/// Errors that stop the VMM itself (not the guest).
#[derive(Debug, Error)]
pub enum VmError {
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    View(#[from] ViewError),
    #[error(transparent)]
    Shadow(#[from] ShadowError),
    #[error("translator: {0}")]
    Translator(#[from] TranslatorError),
    #[error("cannot load the kernel: {0}")]
    Load(#[from] LoadError),
    #[error("guest memory size {} is out of range (1 to 3072 MiB, a multiple of 4 KiB)", describe_size(*.0))]
    MemSize(u64),
    #[error("internal error: {0}")]
    Internal(String),
}

/// A RAM size as given: whole MiB, or bytes.
fn describe_size(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// How a run ended, from the guest's point of view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// The guest asked to exit with this value (isa-debug-exit).
    GuestExit(u32),
    /// hlt with nothing that could wake the guest.
    Halted { eip: u32 },
    /// A guest exception the guest cannot handle (no IDT yet).
    GuestException { vector: u8, error: Option<u32>, eip: u32 },
    /// Something bt86 does not support yet.
    Unsupported { eip: u32, what: String },
    /// Guest access to memory that does not exist.
    Unbacked { eip: u32, linear: u32 },
    /// Stopped from outside (`StopHandle`).
    Stopped { eip: u32 },
    /// A fault while delivering a double fault: the vectors in the order raised.
    TripleFault { faults: Vec<u8>, eip: u32 },
    /// The guest asked for a reset (keyboard controller, triple fault on purpose).
    Reset,
}

impl From<Stop> for RunOutcome {
    fn from(s: Stop) -> Self {
        match s {
            Stop::GuestExit(v) => Self::GuestExit(v),
            Stop::Halted { eip } => Self::Halted { eip },
            Stop::Unsupported { eip, what } => Self::Unsupported { eip, what },
            Stop::Unbacked { eip, linear } => Self::Unbacked { eip, linear },
            Stop::Reset => Self::Reset,
        }
    }
}

/// Asks a running VM to stop (from another thread).
#[derive(Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    poll: bt86_translator::exec_mem::PollHandle,
    waker: PlatformWaker,
}

impl StopHandle {
    /// The VM stops at its next unit boundary.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.poll.request_exit();
        self.waker.wake();
    }
}

/// Settings for a new VM.
pub struct VmConfig {
    /// Guest RAM in bytes (a multiple of 4 KiB, at least 1 MiB, at most 3 GiB).
    pub mem_bytes: u64,
    pub console: Box<dyn Write + Send>,
    /// Size of the code cache (it is flushed whole when full).
    pub code_cache_bytes: usize,
    /// Feed the host's standard input to the guest's serial port.
    pub stdin_input: bool,
    /// Virtual time (None: the host clock from 0; a restored checkpoint's clock goes
    /// on from where it stopped).
    pub clock: Option<Arc<dyn crate::devices::Clock>>,
}

impl VmConfig {
    /// `mem_mib` MiB of RAM, the default code cache, output to `console`.
    pub fn new(mem_mib: u32, console: Box<dyn Write + Send>) -> Self {
        Self { mem_bytes: u64::from(mem_mib) << 20, console, code_cache_bytes: CODE_CACHE_BYTES, stdin_input: false, clock: None }
    }
}

/// One virtual machine with one vCPU.
pub struct Vm {
    pub(crate) ram: GuestRam,
    /// The shadow MMU: the current space's kernel and user views, and the
    /// cached spaces.
    pub(crate) shadow: Shadow,
    pub(crate) cpu: Cpu,
    pub(crate) bus: Platform,
    /// Declared before `tr`: it must stop before the poll page it revokes is gone.
    pub(crate) alarm: Alarm,
    pub(crate) tr: Translator,
    /// sti just set IF: the next instruction runs before any interrupt.
    pub(crate) interrupt_shadow: bool,
    /// The instruction now running alone because the guest single-steps (TF) or
    /// has data breakpoints set (DR7): after it, a #DB trap may follow.
    pub(crate) guest_step: Option<crate::engine::GuestStep>,
    /// Exceptions and interrupts raised so far (`Vm::raise`).
    pub(crate) events_raised: u64,
    /// Frames write-protected in the view because they hold translated code
    /// (ordered: the shadow MMU asks for those inside a large page).
    pub(crate) protected: std::collections::BTreeSet<u32>,
    /// Pages the light path used in its current stay (see `light_cpu::LightTlb`).
    pub(crate) light_tlb: crate::light_cpu::LightTlb,
    /// Accesses that keep taking true page faults (`page_probe`).
    pub(crate) page_probes: crate::page_probe::PageProbes,
    /// The checks of the last system call and its return (`emulate::gate_cache`).
    pub(crate) gate_cache: crate::emulate::gate_cache::GateCache,
    pub(crate) stats: Stats,
    pub(crate) stop_flag: Arc<AtomicBool>,
    /// A code frame unprotected for one data write, to protect again after it.
    pub(crate) reprotect: Option<u32>,
    /// The alarm made translated code exit: poll the devices at the boundary.
    pub(crate) poll_due: bool,
    /// Breakpoints, watchpoints and a single step in progress, while a debugger
    /// has any (`debug`).
    pub(crate) debug: Option<Box<crate::debug::DebugState>>,
    /// Set by a debugger's interrupt (`DebugInterrupt`): stop like `stop_flag`, but
    /// to pause, not to end.
    pub(crate) debug_break: Arc<AtomicBool>,
    /// The guest's x87/SSE state while it is not in the vCPU thread's registers (a
    /// restored checkpoint, or the KVM engine's last run); `run` loads it first.
    pub(crate) fpu: Option<Box<crate::checkpoint::FxImage>>,
    /// Direct execution of guest user code (runners, policy, counters).
    pub(crate) direct: crate::direct::Direct,
}

impl Vm {
    /// Creates a VM with empty RAM.
    pub fn new(cfg: VmConfig) -> Result<Self, VmError> {
        let mem_bytes = match u32::try_from(cfg.mem_bytes) {
            Ok(b) if (crate::memory::MIN_RAM..=crate::memory::MAX_RAM).contains(&b) && b.is_multiple_of(4096) => b,
            _ => return Err(VmError::MemSize(cfg.mem_bytes)),
        };
        let ram = GuestRam::new(mem_bytes)?;
        let mut view = View::reserve()?;
        view.map_identity(ram.fd(), ram.size())?;
        let mut tr = Translator::new(cfg.code_cache_bytes, crate::cpu_model::CpuModel::host().isa())?;
        tr.ctx_mut().gs_base = view.base();
        tr.ctx_mut().cpuid = crate::cpu_model::CpuModel::host().cpuid_table();
        let mut platform_cfg = PlatformConfig::new(cfg.console, mem_bytes);
        platform_cfg.stdin_input = cfg.stdin_input;
        if let Some(clock) = cfg.clock {
            platform_cfg.clock = clock;
        }
        let bus = Platform::new(platform_cfg);
        let poll = tr.poll_handle();
        // Console input arriving while translated code runs must make it exit.
        bus.set_input_notify(Some(Arc::new(move || poll.request_exit())));
        let alarm = Alarm::new(tr.poll_handle(), bus.clock().clone());
        let user_view = View::reserve()?;
        Ok(Self {
            ram,
            shadow: Shadow::new(view, user_view),
            cpu: Cpu::default(),
            bus,
            alarm,
            tr,
            interrupt_shadow: false,
            guest_step: None,
            events_raised: 0,
            protected: std::collections::BTreeSet::new(),
            light_tlb: Default::default(),
            page_probes: Default::default(),
            gate_cache: Default::default(),
            stats: Stats::default(),
            stop_flag: Arc::new(AtomicBool::new(false)),
            reprotect: None,
            poll_due: true,
            debug: None,
            debug_break: Arc::new(AtomicBool::new(false)),
            fpu: None,
            direct: crate::direct::Direct::default(),
        })
    }

    /// Loads a multiboot kernel (without an initrd); see [`Vm::load_kernel`].
    pub fn load_multiboot(&mut self, image: &[u8], cmdline: &str) -> Result<loader::Kernel, VmError> {
        self.load_kernel(image, cmdline, None)
    }

    /// Loads a kernel (multiboot ELF or Linux bzImage, told apart by content) with
    /// its command line and an optional initrd, and sets the vCPU up the way the
    /// boot protocol leaves it: flat 32-bit protected mode, paging and interrupts
    /// off; multiboot: EAX = 0x2BADB002, EBX = the information; Linux: ESI = the
    /// zero page.
    pub fn load_kernel(&mut self, image: &[u8], cmdline: &str, initrd: Option<&[u8]>) -> Result<loader::Kernel, VmError> {
        let kernel = loader::load(&self.ram, image, cmdline, initrd)?;
        let (entry, gdt, (code, data), esp, mut regs) = match kernel {
            loader::Kernel::Multiboot(b) => {
                let mut regs = [0; 8];
                regs[0] = loader::MULTIBOOT_BOOTLOADER_MAGIC;
                regs[3] = b.mbi_addr;
                (b.entry, (b.gdt_base, b.gdt_limit), (b.code_selector, b.data_selector), b.initial_esp, regs)
            }
            loader::Kernel::Linux(b) => {
                let mut regs = [0; 8];
                regs[6] = b.boot_params;
                (b.entry, (b.gdt_base, b.gdt_limit), (b.code_selector, b.data_selector), b.initial_esp, regs)
            }
        };
        regs[4] = esp;
        self.cpu = Cpu::flat(code, data);
        self.cpu.gdtr = TableReg { base: gdt.0, limit: gdt.1 };
        // The real-mode vector table's IDTR, as QEMU's loaders leave it.
        self.cpu.idtr = TableReg { base: 0, limit: BOOT_IDTR_LIMIT };
        // The text screen as a BIOS leaves it: blank, grey on black.
        crate::devices::vga::clear_text_buffer(&self.ram)?;
        let ctx = self.tr.ctx_mut();
        ctx.gpr = regs;
        ctx.eip = entry;
        ctx.rflags = 0x2;
        ctx.vif = 0;
        Ok(kernel)
    }

    /// Sets flat segments and registers directly (for snippets and tests).
    pub fn set_flat_state(&mut self, eip: u32, regs: [u32; 8], arith_flags: u32) {
        self.cpu = Cpu::flat(0x10, 0x18);
        let ctx = self.tr.ctx_mut();
        ctx.gpr = regs;
        ctx.eip = eip;
        ctx.rflags = u64::from(arith_flags & bt86_translator::abi::ARITH_FLAGS) | 0x2;
        ctx.vif = 0;
    }

    /// Guest RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The devices.
    pub fn platform(&self) -> &Platform {
        &self.bus
    }

    /// The devices, to configure them before the run (keyboard, console escapes).
    pub fn platform_mut(&mut self) -> &mut Platform {
        &mut self.bus
    }

    /// The guest's IDTR now: (base, limit).
    pub fn idtr(&self) -> (u32, u16) {
        (self.cpu.idtr.base, self.cpu.idtr.limit)
    }

    /// Whether the guest's interrupt flag is set.
    pub fn interrupts_enabled(&self) -> bool {
        self.tr.ctx().vif != 0
    }

    /// The guest's eip (where a stopped guest continues).
    pub fn eip(&self) -> u32 {
        self.tr.ctx().eip
    }

    /// Guest general registers (eax..edi) and the arithmetic flags.
    pub fn registers(&self) -> ([u32; 8], u32) {
        let ctx = self.tr.ctx();
        #[allow(clippy::cast_possible_truncation)]
        let flags = ctx.rflags as u32 & bt86_translator::abi::ARITH_FLAGS;
        (ctx.gpr, flags)
    }

    /// A handle to stop this VM from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle { flag: self.stop_flag.clone(), poll: self.tr.poll_handle(), waker: self.bus.waker() }
    }

    /// Withdraws a stop request that has been served (the run returned `Stopped`), so
    /// that the next `run` continues the guest (after a checkpoint that continues).
    pub fn clear_stop(&self) {
        self.stop_flag.store(false, Ordering::SeqCst);
    }

    /// Limits translation units to `n` guest instructions (testing aid).
    pub fn set_max_unit_insns(&mut self, n: usize) {
        self.tr.set_max_unit_insns(n);
    }

    /// Statistics so far.
    pub fn stats(&self) -> crate::stats::StatsReport {
        let mut r = self.stats.report(&self.tr);
        r.devices = Some(self.bus.stats());
        r.direct = Some(self.direct.report());
        let calls = self.shadow.idle_view_calls();
        r.paging = crate::stats::PagingReport {
            hidden_faults: self.shadow.hidden_faults,
            true_faults: self.shadow.true_faults,
            trace_faults: self.shadow.trace_faults,
            adaptive_writes: self.shadow.adaptive_writes,
            adaptive_retranslations: self.tr.stats().adaptive_retranslations,
            cr3_switches: self.shadow.cr3_switches,
            cr3_cache_hits: self.shadow.space_hits,
            space_evictions: self.shadow.space_evictions,
            spaces_cached: self.shadow.spaces_cached() as u64,
            prefetched_pages: self.shadow.prefetched,
            mapped_on_present: self.shadow.mapped_on_present,
            mapped_at_invlpg: self.shadow.mapped_at_invlpg,
            mapped_at_store: self.shadow.mapped_at_store,
            large_pages_mapped: self.shadow.large_maps,
            kernel_view_handovers: self.shadow.kernel_handovers,
            kernel_view_reclaims: self.shadow.kernel_reclaims,
            host_maps: calls.maps + self.shadow.view.calls.maps + self.shadow.user_view.calls.maps,
            host_unmaps: calls.unmaps + self.shadow.view.calls.unmaps + self.shadow.user_view.calls.unmaps,
            host_protects: calls.protects + self.shadow.view.calls.protects + self.shadow.user_view.calls.protects,
            untraced_frames: self.shadow.untraced_frames,
            plain_retranslations: self.tr.stats().plain_retranslations,
            view_flushes: self.shadow.view_flushes,
            invlpgs: self.shadow.invlpgs,
            space_drops: self.shadow.space_drops,
            mappings_live: self.shadow.mappings_live() as u64,
        };
        r
    }

    /// Feeds the guest's serial port from `reader` (read to its end on a thread).
    pub fn attach_console_input<R: std::io::Read + Send + 'static>(&mut self, reader: R) -> Result<(), VmError> {
        self.bus.attach_input(reader).map_err(|e| VmError::Internal(format!("console input: {e}")))
    }

    /// Flushes device output (the console).
    pub fn flush_devices(&mut self) {
        self.bus.flush();
    }
}

/// Runs `vm`, stopping it if it runs longer than `limit` (a guest must never hang
/// a test). The watchdog is cancelled and joined before returning, so it never
/// touches a VM that is gone.
pub fn run_with_timeout(vm: &mut Vm, limit: std::time::Duration) -> Result<RunOutcome, VmError> {
    let stop = vm.stop_handle();
    let (cancel, cancelled) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if cancelled.recv_timeout(limit).is_err() {
            stop.stop();
        }
    });
    let outcome = vm.run();
    let _ = cancel.send(());
    let _ = watchdog.join();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12 item 11: sizes past 4 GiB were reported as "4095 MiB".
    #[test]
    fn memory_size_errors_name_the_size_given() {
        for (mib, want) in [(4096, "4096 MiB"), (70_000, "70000 MiB"), (0, "0 MiB")] {
            let e = Vm::new(VmConfig::new(mib, Box::new(std::io::sink()))).err().expect("refused");
            assert!(e.to_string().contains(want), "{e}");
        }
        let cfg = VmConfig { mem_bytes: (2 << 20) + 1, ..VmConfig::new(2, Box::new(std::io::sink())) };
        assert!(Vm::new(cfg).err().expect("refused").to_string().contains("2097153 bytes"));
    }
}
