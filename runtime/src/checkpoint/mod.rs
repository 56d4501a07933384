//! Checkpoints: a running VM saved to a file and continued later, in another
//! process, from the same instruction.
//!
//! The whole machine is the VMM's data, so a checkpoint is that data at an
//! instruction boundary: the VM is stopped the ordinary way (a [`crate::StopHandle`];
//! `Vm::run` returns `RunOutcome::Stopped`), then [`Checkpoint::capture`] reads
//!
//! - guest RAM, only the pages that are not zero, LZ4-compressed ([`ram`]);
//! - the vCPU ([`VcpuState`]): general registers, eip, EFLAGS, the segment
//!   registers with their descriptor caches, GDTR/IDTR/LDTR/TR, CR0–4, DR0–7, the
//!   SYSENTER MSRs and the MSRs that hold values, the x87/SSE state as an FXSAVE
//!   image ([`fpu`]), the interrupt shadow (an `sti` whose next instruction has not
//!   run, or a `hlt` the guest is waiting in), and the CPUID the guest was shown;
//! - every device ([`crate::devices::PlatformState`]): PIC, PIT (with the phase
//!   of each counter: its time line is the VM's virtual time), RTC and CMOS, UART
//!   registers and receive FIFO, i8042 and keyboard queue, VGA registers, the PCI,
//!   POST and port-A latches, the IRQ lines, and console input queued but not yet
//!   taken (pending interrupts are the PIC's IRR/ISR and the PIT's backlog);
//! - virtual time and the guest's TSC, and the run options the caller wants kept.
//!
//! Not saved: translations, the code cache, shadow page mappings and tracing (a
//! restored VM starts with them empty, as after a flush, and rebuilds them on
//! demand), and statistics.
//!
//! Time: [`Checkpoint::restore`] gives the new VM a clock that resumes at the saved
//! virtual time, and a TSC offset that makes the guest's TSC resume at the saved
//! value, both from one host TSC reading: the guest's timers and its TSC go on as if
//! no time had passed. Only the CMOS clock (wall time) shows the time the file
//! waited on disk.
//!
//! The file format is in [`format`]. The engine that took a checkpoint is in its
//! header; the state is the same for both engines, so either can continue it.

pub(crate) mod bytes;
mod format;
mod fpu;
mod ram;

pub use format::{FORMAT_VERSION, HEADER_LEN, MAGIC};
pub use fpu::FxImage;

use crate::cpu::{eflags, Cpu, Segment, TableReg};
use crate::cpu_model::CpuModel;
use crate::devices::clock::{host_tsc, HostClock};
use crate::emulate::MsrFile;
use crate::vm::{Vm, VmConfig, VmError};
use bt86_translator::abi::ARITH_FLAGS;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// The engine a checkpoint was taken under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Binary translation (code 1 in the header).
    Bt,
    /// The host's KVM (code 2).
    Kvm,
}

impl Engine {
    /// The header's code.
    pub fn code(self) -> u32 {
        match self {
            Engine::Bt => 1,
            Engine::Kvm => 2,
        }
    }

    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Engine::Bt),
            2 => Some(Engine::Kvm),
            _ => None,
        }
    }

    /// `bt` or `kvm`, as `--engine` names it.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Bt => "bt",
            Engine::Kvm => "kvm",
        }
    }
}

/// Why a checkpoint could not be written or read back.
#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the checkpoint to {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a bt86 checkpoint (it does not start with \"BT86CKPT\")")]
    NotACheckpoint,
    #[error("truncated: {found} bytes, where its header says {expected}")]
    Truncated { expected: u64, found: u64 },
    #[error("corrupt: {0}")]
    Corrupt(String),
    #[error("checkpoint format version {found}; this bt86 reads version {supported} only")]
    Version { found: u32, supported: u32 },
    #[error("made by engine {0}, which this bt86 does not have (1 = bt, 2 = kvm)")]
    Engine(u32),
    #[error("the guest was saved on a CPU with {} and this host lacks it", .missing.join(", "))]
    Cpu { missing: Vec<String> },
    #[error("cannot create the virtual machine: {0}")]
    Vm(#[from] VmError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl CheckpointError {
    /// Whether the error is the file's or the path's fault (bad input), rather than
    /// bt86's.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Self::Vm(_) | Self::Internal(_))
    }
}

/// EFLAGS bits other than IF and the arithmetic ones that the vCPU keeps.
const SYS_FLAGS: u32 = eflags::TF | eflags::IOPL | eflags::NT | eflags::RF | eflags::AC | eflags::ID;

/// The vCPU in a checkpoint (engine-neutral: what the guest sees).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct VcpuState {
    /// eax, ecx, edx, ebx, esp, ebp, esi, edi.
    gpr: [u32; 8],
    eip: u32,
    /// EFLAGS as `pushf` would store it.
    eflags: u32,
    /// es, cs, ss, ds, fs, gs with their descriptor caches.
    seg: [Segment; 6],
    gdtr: TableReg,
    idtr: TableReg,
    ldtr: Segment,
    tr: Segment,
    cr0: u32,
    cr2: u32,
    cr3: u32,
    cr4: u32,
    dr: [u32; 8],
    sysenter_cs: u32,
    sysenter_esp: u32,
    sysenter_eip: u32,
    /// MSRs that hold what the guest wrote (performance counters, ...).
    msrs: MsrFile,
    fpu: FxImage,
    /// An `sti` set IF just before the stop: the next instruction runs before any
    /// interrupt.
    sti_pending: bool,
    /// The eip at which an interrupt waits one instruction (after an inline `sti`,
    /// or the `hlt` the guest is waiting in); `u32::MAX`: none.
    shadow_eip: u32,
    /// The CPUID table the guest was shown.
    cpuid: CpuModel,
}

/// A checkpoint in memory: taken from a VM, or read from a file.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    engine: Engine,
    body: format::Body,
}

/// What writing a checkpoint produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// File size in bytes.
    pub bytes: u64,
    /// Guest pages stored (the non-zero ones).
    pub pages: u64,
}

impl Checkpoint {
    /// Takes a checkpoint of `vm`, stopped at an instruction boundary (after `run`
    /// or `run_kvm` returned), on the thread that ran it (the guest's x87 registers
    /// are that thread's). `options` are kept for the restore, opaque here.
    pub fn capture(vm: &mut Vm, engine: Engine, options: Vec<(String, String)>) -> Result<Self, CheckpointError> {
        let (virtual_ns, host) = (vm.bus.now(), host_tsc());
        #[allow(clippy::cast_sign_loss)]
        let guest_tsc = host.wrapping_add(vm.cpu.tsc_offset as u64);
        let ctx = vm.tr.ctx();
        let fpu = match &vm.fpu {
            Some(img) => **img,
            None => FxImage::capture(ctx),
        };
        #[allow(clippy::cast_possible_truncation)]
        let arith = ctx.rflags as u32 & ARITH_FLAGS;
        let vif = if ctx.vif != 0 { eflags::IF } else { 0 };
        let c = &vm.cpu;
        let cpu = VcpuState {
            gpr: ctx.gpr,
            eip: ctx.eip,
            eflags: arith | vif | (ctx.sys_flags & SYS_FLAGS) | eflags::FIXED,
            seg: c.seg,
            gdtr: c.gdtr,
            idtr: c.idtr,
            ldtr: c.ldtr,
            tr: c.tr,
            cr0: c.cr0,
            cr2: c.cr2,
            cr3: c.cr3,
            cr4: c.cr4,
            dr: c.dr,
            sysenter_cs: c.sysenter_cs,
            sysenter_esp: c.sysenter_esp,
            sysenter_eip: c.sysenter_eip,
            msrs: c.msrs.clone(),
            fpu,
            sti_pending: vm.interrupt_shadow,
            shadow_eip: ctx.shadow_eip,
            cpuid: c.model.clone(),
        };
        let devices = vm.bus.save();
        let ram = ram::capture(&vm.ram)?;
        let saved_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let body = format::Body {
            writer: format!("bt86 {}", env!("CARGO_PKG_VERSION")),
            saved_at,
            options,
            time: format::TimeState { virtual_ns, guest_tsc },
            cpu,
            devices,
            ram,
        };
        Ok(Self { engine, body })
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CheckpointError> {
        format::encode(self.engine, &self.body)
    }

    /// A checkpoint from a file's bytes, or why they are refused (not a
    /// checkpoint, truncated, corrupt, another format version, an unknown engine).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CheckpointError> {
        let (engine, body) = format::decode(bytes)?;
        Ok(Self { engine, body })
    }

    /// Writes the checkpoint to `path`, replacing the file whole (a new file
    /// renamed over it): an interrupted write never leaves half a checkpoint.
    pub fn write_to(&self, path: &Path) -> Result<Written, CheckpointError> {
        let bytes = self.to_bytes()?;
        let err = |source| CheckpointError::Write { path: path.to_path_buf(), source };
        let tmp = temp_path(path);
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        Ok(Written { bytes: bytes.len() as u64, pages: self.body.ram.pages() })
    }

    /// Reads and checks the checkpoint at `path`.
    pub fn read_from(path: &Path) -> Result<Self, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Read { path: path.to_path_buf(), source })?;
        Self::from_bytes(&bytes)
    }

    /// The engine it was taken under.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The run options kept with it.
    pub fn options(&self) -> &[(String, String)] {
        &self.body.options
    }

    /// The value of run option `name`, if kept.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.body.options.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Guest RAM in bytes.
    pub fn mem_bytes(&self) -> u32 {
        self.body.ram.size
    }

    /// Guest pages stored.
    pub fn ram_pages(&self) -> u64 {
        self.body.ram.pages()
    }

    /// Virtual time at the checkpoint, in nanoseconds.
    pub fn virtual_ns(&self) -> u64 {
        self.body.time.virtual_ns
    }

    /// Guest eip at the checkpoint.
    pub fn eip(&self) -> u32 {
        self.body.cpu.eip
    }

    /// A new VM in the checkpoint's state, COM1 writing to `console` (and reading
    /// the host's standard input if `stdin_input`), ready to `run` (or `run_kvm`)
    /// from where the checkpoint was taken. Call on the thread that will run it.
    pub fn restore(self, console: Box<dyn Write + Send>, stdin_input: bool) -> Result<Vm, CheckpointError> {
        let format::Body { cpu: c, devices, ram: image, time, .. } = self.body;
        if !c.fpu.mxcsr_valid() {
            return Err(CheckpointError::Corrupt(format!("its MXCSR {:#x} has reserved bits set", c.fpu.mxcsr())));
        }
        let model = guest_model(c.cpuid)?;
        let at_tsc = host_tsc();
        let mut cfg = VmConfig::new(1, console);
        cfg.mem_bytes = u64::from(image.size);
        cfg.stdin_input = stdin_input;
        cfg.clock = Some(Arc::new(HostClock::resuming(time.virtual_ns, at_tsc)));
        let mut vm = match Vm::new(cfg) {
            Err(e @ VmError::MemSize(_)) => return Err(CheckpointError::Corrupt(e.to_string())),
            other => other?,
        };
        ram::restore(&vm.ram, &image)?;
        vm.cpu = Cpu {
            seg: c.seg,
            gdtr: c.gdtr,
            idtr: c.idtr,
            ldtr: c.ldtr,
            tr: c.tr,
            cr0: c.cr0,
            cr2: c.cr2,
            cr3: c.cr3,
            cr4: c.cr4,
            dr: c.dr,
            sysenter_cs: c.sysenter_cs,
            sysenter_esp: c.sysenter_esp,
            sysenter_eip: c.sysenter_eip,
            #[allow(clippy::cast_possible_wrap)]
            tsc_offset: time.guest_tsc.wrapping_sub(at_tsc) as i64,
            // A calibration in progress is not saved: time is real after a restore.
            tsc_calibrating: false,
            model,
            msrs: c.msrs,
        };
        let ctx = vm.tr.ctx_mut();
        ctx.cpuid = model.cpuid_table();
        ctx.gpr = c.gpr;
        ctx.eip = c.eip;
        ctx.rflags = u64::from(c.eflags & ARITH_FLAGS | eflags::FIXED);
        ctx.vif = u8::from(c.eflags & eflags::IF != 0);
        ctx.sys_flags = c.eflags & SYS_FLAGS;
        ctx.shadow_eip = c.shadow_eip;
        vm.interrupt_shadow = c.sti_pending;
        vm.fpu = Some(Box::new(c.fpu));
        vm.bus.restore(devices);
        // The shadow MMU and the code cache start empty for the restored paging mode.
        vm.shadow_flush()?;
        let pending = vm.bus.interrupt_pending();
        vm.tr.ctx_mut().irq_pending = u8::from(pending);
        Ok(vm)
    }
}

/// Checks that a checkpoint can be written at `path` (its folder exists and takes
/// a new file), without touching `path` itself.
pub fn check_writable(path: &Path) -> Result<(), CheckpointError> {
    let tmp = temp_path(path);
    std::fs::File::create(&tmp).map_err(|source| CheckpointError::Write { path: path.to_path_buf(), source })?;
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

/// A file next to `path` for writing it whole before a rename.
fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// The CPU model a restored guest is shown: the one it was saved with (it must
/// not see its CPUID change under it), provided this host has every instruction
/// set extension that model advertises.
fn guest_model(saved: CpuModel) -> Result<&'static CpuModel, CheckpointError> {
    let host = CpuModel::host();
    if saved == *host {
        return Ok(host);
    }
    let missing = saved.features_missing_on(host);
    if !missing.is_empty() {
        return Err(CheckpointError::Cpu { missing });
    }
    // Once per restore of a checkpoint from another CPU: a model lives as long as
    // the process's VMs may.
    Ok(Box::leak(Box::new(saved)))
}

/// Before a BT run: the x87/SSE state of a restored checkpoint (or of a KVM run)
/// into the vCPU thread's registers and the context.
pub(crate) fn load_guest_fpu(vm: &mut Vm) {
    if let Some(img) = vm.fpu.take() {
        img.load(vm.tr.ctx_mut());
    }
}

/// After a KVM run: the guest's x87/SSE state, which is not the host thread's.
pub(crate) fn set_guest_fpu(vm: &mut Vm, img: FxImage) {
    vm.fpu = Some(Box::new(img));
}

/// The guest's x87/SSE state for an engine that loads it itself (KVM): a pending
/// image, or the BT engine's (the vCPU thread's registers and the context).
pub(crate) fn guest_fpu(vm: &Vm) -> FxImage {
    match &vm.fpu {
        Some(img) => **img,
        None => FxImage::capture(vm.tr.ctx()),
    }
}

#[cfg(test)]
mod tests;
