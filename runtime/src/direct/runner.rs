//! A runner as the engine uses it: one sandboxed process per user view, whose low
//! 4 GiB are kept equal to the view's, entered with a guest state and waited for.
//!
//! Bringing the runner up to date is a list of system calls it makes before it
//! enters the guest: `munmap`s (the filter lets them through below 8 GiB), and
//! `mmap`s of the guest-RAM memfd, each of which stops in the kernel until the VMM
//! has compared it with the one it asked for (a seccomp user notification) —
//! whatever the runner does, it can map only what the guest's page tables gave
//! this view.

use super::comm::{self, Op, Report};
use super::filter;
use super::segments::UserDesc;
use super::sys::{Process, SysError, Waited};
use bt86_shadow_mmu::MirrorOp;
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long a runner may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the VMM waits for a runner that should be answering (a system call
/// it was asked to make, a report after a kick) before it calls it compromised.
pub const WATCHDOG: Duration = Duration::from_secs(2);
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// Why a runner cannot go on.
#[derive(Debug, Error)]
pub enum RunnerError {
    #[error(transparent)]
    Sys(#[from] SysError),
    /// The runner did something it was not asked to (an escaped guest): it is
    /// killed, and the guest gets #GP.
    #[error("direct execution: the runner broke the protocol: {0}")]
    Compromised(String),
    /// The runner exited (killed by the filter, or crashed).
    #[error("direct execution: the runner died")]
    Died,
}

/// One runner process.
pub struct Runner {
    proc: Process,
    /// The view whose copy this runner holds.
    pub view_id: u64,
    /// Nothing mapped yet: the view's mirror must send everything.
    pub fresh: bool,
    /// The listener fd the runner still holds (closed by its first command).
    close_listener: Option<u64>,
    /// Lowest page the runner can map (`vm.mmap_min_addr`).
    min_page: u32,
    seen: u32,
    /// Reports received.
    pub reports: u64,
    /// mmaps the VMM checked and let through.
    pub checked_maps: u64,
    /// The runner did something it was not asked to while the guest ran (its next
    /// report is an escape).
    pub breached: Option<String>,
    /// rdtsc raises SIGSEGV in the runner (`PR_SET_TSC`).
    traps_tsc: bool,
}

/// The lowest page a process may map.
fn min_page() -> u32 {
    let bytes = std::fs::read_to_string("/proc/sys/vm/mmap_min_addr").ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(65536);
    u32::try_from(bytes.div_ceil(4096)).unwrap_or(16).max(1)
}

/// The mmap protection of a mirrored page (guest code must be executable).
fn prot(writable: bool) -> u64 {
    let p = libc::PROT_READ | libc::PROT_EXEC | if writable { libc::PROT_WRITE } else { 0 };
    u64::try_from(p).unwrap_or(0)
}

impl Runner {
    /// Starts a runner for view `view_id` with the guest-RAM memfd `memfd`.
    pub fn spawn(memfd: std::os::fd::RawFd, view_id: u64) -> Result<Self, RunnerError> {
        let proc = Process::spawn(memfd, &filter::program(), START_TIMEOUT)?;
        let seen = proc.report_seq();
        let close_listener = Some(proc.runner_listener_fd);
        Ok(Self { proc, view_id, fresh: true, close_listener, min_page: min_page(), seen, reports: 0, checked_maps: 0, breached: None, traps_tsc: false })
    }

    /// The lowest page the runner can map.
    pub fn min_page(&self) -> u32 {
        self.min_page
    }

    /// Whether the guest's `cpuid` faults in this runner (and so runs translated).
    pub fn cpuid_faulting(&self) -> bool {
        self.proc.cpuid_faulting
    }

    /// The runner's process id (for tests).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The system calls for mirror operations and LDT entries, and the data they
    /// point to.
    fn ops(&mut self, maps: &[MirrorOp], ldt: &[UserDesc], trap_tsc: bool) -> (Vec<Op>, Vec<u8>) {
        let mut ops = Vec::new();
        if let Some(fd) = self.close_listener.take() {
            ops.push(Op { nr: libc::SYS_close as u64, args: [fd, 0, 0, 0, 0, 0] });
        }
        if trap_tsc != self.traps_tsc {
            // rdtsc/rdtscp raise SIGSEGV (and run translated, with the guest's TSC)
            // or run natively.
            let mode = if trap_tsc { libc::PR_TSC_SIGSEGV } else { libc::PR_TSC_ENABLE };
            ops.push(Op { nr: libc::SYS_prctl as u64, args: [libc::PR_SET_TSC as u64, mode as u64, 0, 0, 0, 0] });
            self.traps_tsc = trap_tsc;
        }
        for m in maps {
            let (first, pages) = match *m {
                MirrorOp::Map { first, pages, .. } | MirrorOp::Unmap { first, pages } => (first, pages),
            };
            // Page 0 (below mmap_min_addr) cannot be mapped: accesses there are
            // run translated (`direct::fault`).
            let skip = self.min_page.saturating_sub(first).min(pages);
            let (first, pages) = (first + skip, pages - skip);
            if pages == 0 {
                continue;
            }
            let (addr, len) = (u64::from(first) << 12, u64::from(pages) << 12);
            ops.push(match *m {
                MirrorOp::Map { backing, .. } => {
                    let sharing = if backing.private { libc::MAP_PRIVATE } else { libc::MAP_SHARED };
                    let flags = u64::try_from(sharing | libc::MAP_FIXED).unwrap_or(0);
                    let offset = backing.offset + (u64::from(skip) << 12);
                    Op { nr: libc::SYS_mmap as u64, args: [addr, len, prot(backing.writable), flags, comm::MEMFD, offset] }
                }
                MirrorOp::Unmap { .. } => Op { nr: libc::SYS_munmap as u64, args: [addr, len, 0, 0, 0, 0] },
            });
        }
        let mut data = Vec::new();
        for d in ldt {
            let at = comm::COMM + comm::off::DATA as u64 + data.len() as u64;
            data.extend_from_slice(&d.entry_number.to_le_bytes());
            data.extend_from_slice(&d.base_addr.to_le_bytes());
            data.extend_from_slice(&d.limit.to_le_bytes());
            data.extend_from_slice(&d.flags.to_le_bytes());
            ops.push(Op { nr: libc::SYS_modify_ldt as u64, args: [0x11, at, 16, 0, 0, 0] });
        }
        (ops, data)
    }

    /// Brings the runner's memory and LDT up to date and enters the guest with
    /// `entry` (eax..edi, eip, eflags, cs ss ds es fs gs) and x87/SSE state `fpu`.
    /// Returns a report if the runner stopped before entering (an op failed).
    /// With `trap_tsc`, the guest's rdtsc traps (its TSC is not the host's).
    pub fn enter(&mut self, maps: &[MirrorOp], ldt: &[UserDesc], trap_tsc: bool, entry: &[u32; 16], fpu: &[u8; 512]) -> Result<Option<Report>, RunnerError> {
        let (ops, data) = self.ops(maps, ldt, trap_tsc);
        if data.len() > comm::DATA_BYTES {
            return Err(RunnerError::Compromised("too many LDT entries at once".into()));
        }
        self.fresh = false;
        let mut chunks = ops.chunks(comm::MAX_OPS).peekable();
        if chunks.peek().is_none() {
            self.proc.send(comm::CMD_RUN, &[], &data, entry, fpu);
            return Ok(None);
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            // LDT data is only referenced by the last chunk's ops.
            let cmd = if last { comm::CMD_RUN } else { comm::CMD_OPS };
            self.proc.send(cmd, chunk, &data, entry, fpu);
            if let Some(r) = self.serve_maps(chunk)? {
                if r.kind != comm::KIND_OPS_DONE || last {
                    return Ok(Some(r));
                }
            } else if !last {
                match self.wait(WATCHDOG)? {
                    Some(r) if r.kind == comm::KIND_OPS_DONE => {}
                    Some(r) => return Ok(Some(r)),
                    None => return Err(RunnerError::Compromised("no answer to a batch of mappings".into())),
                }
            }
        }
        Ok(None)
    }

    /// Answers the runner's `mmap` notifications for `ops`, in order: each must be
    /// exactly the call asked for. Returns early with a report if the runner
    /// reports instead (an op failed).
    fn serve_maps(&mut self, ops: &[Op]) -> Result<Option<Report>, RunnerError> {
        let started = Instant::now();
        for op in ops.iter().filter(|o| o.nr == libc::SYS_mmap as u64) {
            loop {
                if self.proc.report_seq() != self.seen {
                    return Ok(self.take_report());
                }
                if self.proc.exited() {
                    return Err(RunnerError::Died);
                }
                if started.elapsed() > WATCHDOG {
                    return Err(RunnerError::Compromised("a mapping asked for was never made".into()));
                }
                let Some(n) = self.proc.next_notification(Duration::from_millis(10))? else { continue };
                let exact = n.pid == self.proc.pid()
                    && i64::from(n.nr) == libc::SYS_mmap
                    && n.arch == AUDIT_ARCH_X86_64
                    && n.args == op.args;
                if !exact {
                    let _ = self.proc.answer(n.id, false)?;
                    return Err(RunnerError::Compromised(format!("an mmap not asked for: {:x?}", n.args)));
                }
                if self.proc.answer(n.id, true)? {
                    self.checked_maps += 1;
                    break;
                }
            }
        }
        Ok(None)
    }

    fn take_report(&mut self) -> Option<Report> {
        let seq = self.proc.report_seq();
        if seq == self.seen {
            return None;
        }
        self.seen = seq;
        self.reports += 1;
        Some(self.proc.report())
    }

    /// Waits up to `slice` for the next report. A notification that arrives while
    /// no mapping was asked for is refused and counts as a breach.
    pub fn wait(&mut self, slice: Duration) -> Result<Option<Report>, RunnerError> {
        if let Some(r) = self.take_report() {
            return Ok(Some(r));
        }
        if self.proc.wait_report(self.seen, Some(slice))? == Waited::Report {
            return Ok(self.take_report());
        }
        if self.proc.exited() {
            return Err(RunnerError::Died);
        }
        if let Some(n) = self.proc.next_notification(Duration::ZERO)? {
            // Refused; the runner is made to report (a kick), so the guest's #GP
            // comes with the registers it had, and the report is an escape.
            let _ = self.proc.answer(n.id, false)?;
            self.breached.get_or_insert_with(|| format!("an mmap not asked for: {:x?}", n.args));
            self.proc.kick();
        }
        Ok(None)
    }

    /// Makes the runner report from wherever the guest is.
    pub fn kick(&self) {
        self.proc.kick();
    }

    /// The guest's x87/SSE image stored with the last report.
    pub fn fpu(&self) -> [u8; 512] {
        self.proc.fpu()
    }
}
