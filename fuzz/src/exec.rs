//! Running one case in this process and judging it: the oracles.
//!
//! - Every run must end in a guest-level outcome; a `VmError` is an internal error
//!   and a panic is caught here (a crash, a hang or runaway memory is caught by the
//!   supervisor, which runs cases in a child process: `supervise`).
//! - After a guest run, guest RAM must hold no host address: no 64-bit value that
//!   falls in a mapping of this process (code cache, stacks, heap, the binary, the
//!   views), read from `/proc/self/maps` once the VM exists.
//! - Probe areas (see [`Probe`]): after an `fxsave`, bytes 288..512 still hold what
//!   the guest put there (judged only when the probe item's code is as generated:
//!   a self-modifying store may have rewritten its fill loop); the x87 environment names no host code selector (0x33)
//!   and no host code address; an `xsave` must not have run (the guest CPU has no
//!   XSAVE).
//! - Oracle snippets go through the differential oracle (`bt86_tests::oracle`).
//! - Loader cases: `Vm::load_kernel` returns a load or an error with a message.

use crate::case::{Body, Case, Failure, GuestCase, LoaderCase, OracleCase, Probe, ProbeKind, Verdict};
use crate::harness::{self as h, rec};
use bt86_runtime::vm::run_with_timeout;
use bt86_runtime::{RunOutcome, Vm, VmConfig};
use std::panic::AssertUnwindSafe;
use std::time::Duration;

/// Code cache of a fuzzed VM: small, so it fills (and is flushed) now and then.
const CODE_CACHE_BYTES: usize = 8 << 20;

/// Runs `case` and judges it. Panics are caught and become failures.
pub fn run_case(case: &Case) -> Verdict {
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| match &case.body {
        Body::Guest(g) => run_guest(g),
        Body::Oracle(o) => run_oracle(o),
        Body::Loader(l) => run_loader(l),
    }));
    result.unwrap_or_else(|p| {
        let class = if matches!(case.body, Body::Loader(_)) { "loader-panic" } else { "panic" };
        let msg = crate::panic_message(p.as_ref());
        Verdict { kind: class.into(), detail: msg.clone(), instructions: 0, failure: Some(Failure::new(class, msg)) }
    })
}

fn failure(kind: &str, class: &str, msg: String) -> Verdict {
    Verdict { kind: kind.into(), detail: msg.clone(), instructions: 0, failure: Some(Failure::new(class, msg)) }
}

/// Builds the VM for a guest case: RAM, chunks, flat CPL 0 at the entry.
pub fn guest_vm(g: &GuestCase) -> Result<Vm, String> {
    let cfg = VmConfig {
        mem_bytes: u64::from(g.mem_mib) << 20,
        code_cache_bytes: g.code_cache_mib.map_or(CODE_CACHE_BYTES, |m| (m as usize) << 20),
        ..VmConfig::new(g.mem_mib, Box::new(std::io::sink()))
    };
    let vm = Vm::new(cfg).map_err(|e| format!("cannot create the VM: {e}"))?;
    for c in &g.chunks {
        vm.ram().write(c.addr, &c.bytes.0).map_err(|e| format!("chunk at {:#x}: {e}", c.addr))?;
    }
    Ok(vm)
}

/// One event the harness's handler logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub vector: u32,
    pub eip: u32,
    pub error: u32,
    pub cs: u32,
}

/// A guest run in detail: how it ended, the events logged (the last 32 at most,
/// oldest first), guest RAM afterwards, and the host's mappings during the run.
pub struct GuestRun {
    pub outcome: Result<RunOutcome, String>,
    /// Whether guest user code ran directly on the CPU at some point (`auto`).
    pub went_direct: bool,
    pub events: Vec<Event>,
    pub ram: Vec<u8>,
    pub host: HostRanges,
}

/// Runs a guest case in this thread.
pub fn run_guest_detailed(g: &GuestCase) -> Result<GuestRun, String> {
    let mut vm = guest_vm(g)?;
    let mut regs = [0u32; 8];
    regs[4] = h::KSTACK_TOP;
    vm.set_flat_state(g.entry, regs, 0);
    let host = HostRanges::now();
    let outcome = run_with_timeout(&mut vm, Duration::from_millis(u64::from(g.timeout_ms))).map_err(|e| e.to_string());
    let ram = read_ram(&vm);
    let events = events_in(&ram);
    let went_direct = vm.stats().direct.is_some_and(|d| d.entries > 0);
    Ok(GuestRun { outcome, went_direct, events, ram, host })
}

/// The events the harness's handler logged in guest RAM (the last 32 at most,
/// oldest first).
pub fn events_in(ram: &[u8]) -> Vec<Event> {
    let n = le32(ram, h::RECORD + rec::EVENTS);
    (n.saturating_sub(rec::LOG_ENTRIES - 1).max(1)..=n.min(h::EVENT_LIMIT))
        .map(|k| {
            let e = h::RECORD + rec::LOG + 16 * (k % rec::LOG_ENTRIES);
            Event { vector: le32(ram, e), eip: le32(ram, e + 4), error: le32(ram, e + 8), cs: le32(ram, e + 12) }
        })
        .collect()
}

fn run_guest(g: &GuestCase) -> Verdict {
    let run = match run_guest_detailed(g) {
        Ok(r) => r,
        Err(e) => return failure("internal-error", "internal-error", e),
    };
    let mut v = match &run.outcome {
        Err(e) => failure("internal-error", "internal-error", e.clone()),
        Ok(o) => classify(o),
    };
    v.instructions = estimate_instructions(g, &run.ram, &v);
    if v.failure.is_none() {
        if let Some(f) = scan_for_host_addresses(&run.ram, &run.host).or_else(|| check_probes(g, &run.ram, &run.host, run.went_direct)) {
            v.failure = Some(f);
        }
    }
    v
}

/// The guest-level outcome of a run.
pub fn classify(o: &RunOutcome) -> Verdict {
    let (kind, failure) = match o {
        RunOutcome::GuestExit(v) if v & 0xffff_0000 == h::EXIT_BASE => (
            match v & 0xffff {
                h::EXIT_DONE => "done",
                h::EXIT_EVENTS => "event-limit",
                h::EXIT_WILD => "wild-eip",
                h::EXIT_DOUBLE_FAULT => "double-fault",
                h::EXIT_TASK => "task-exit",
                _ => "exit",
            },
            None,
        ),
        RunOutcome::GuestExit(_) => ("exit", None),
        RunOutcome::Halted { .. } => ("halt", None),
        RunOutcome::GuestException { .. } => ("exception", None),
        RunOutcome::TripleFault { .. } => ("triple-fault", None),
        RunOutcome::Stopped { .. } => ("timeout", None),
        RunOutcome::Reset => ("reset", None),
        RunOutcome::Unbacked { .. } => ("unbacked", None),
        // Guest code stopped the VM where a CPU would have gone on.
        RunOutcome::Unsupported { what, .. } => ("unsupported", Some(Failure::new("unsupported", what.clone()))),
    };
    Verdict { kind: kind.into(), detail: format!("{o:?}"), instructions: 0, failure }
}

fn read_ram(vm: &Vm) -> Vec<u8> {
    let mut ram = vec![0u8; vm.ram().size() as usize];
    vm.ram().read_or_ones(0, &mut ram);
    ram
}

fn le32(ram: &[u8], at: u32) -> u32 {
    ram.get(at as usize..at as usize + 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Guest instructions executed, approximately: setup, each handler call, and the
/// body's instructions up to the furthest point reached (loops and `rep`
/// iterations counted once).
fn estimate_instructions(g: &GuestCase, ram: &[u8], v: &Verdict) -> u64 {
    // The guest may have overwritten the record: no more than the handler could
    // have counted.
    let events = u64::from(le32(ram, h::RECORD + rec::EVENTS).min(h::EVENT_LIMIT + 1));
    let max_irqs = g.setup.timer.map_or(0, |d| u64::from(g.timeout_ms) * 1_193_182 / 1000 / u64::from(d.max(1)) + 1);
    let irqs = u64::from(le32(ram, h::RECORD + rec::IRQS)).min(max_irqs);
    let reached = if v.kind == "done" { u32::MAX } else { le32(ram, h::RECORD + rec::MAX_EIP) };
    let body: u64 = g
        .items
        .iter()
        .filter(|it| it.addr <= reached)
        .map(|it| count_instructions(&ram[it.addr as usize..(it.addr + it.len) as usize]))
        .sum();
    h::SETUP_INSNS + h::HANDLER_INSNS * (events + irqs) + body
}

/// Instructions in `code` decoded one after the other.
fn count_instructions(code: &[u8]) -> u64 {
    let mut d = iced_x86::Decoder::new(32, code, iced_x86::DecoderOptions::NONE);
    let mut n = 0;
    while d.can_decode() {
        let _ = d.decode();
        n += 1;
    }
    n
}

/// Largest host mapping the leak scan looks for addresses in.
pub const MAX_RANGE: u64 = 64 << 20;

/// The host's mappings (this process), sorted.
pub struct HostRanges {
    ranges: Vec<(u64, u64, bool)>,
    hi_min: u32,
    hi_max: u32,
}

impl HostRanges {
    /// From `/proc/self/maps`: (start, end, executable) of the accessible mappings
    /// (not the `PROT_NONE` reservations of the views and guards) up to
    /// [`MAX_RANGE`] each. A 64-bit value whose upper half is small (two guest page
    /// table entries side by side look like that) would too often fall in a range
    /// of gigabytes by chance.
    pub fn now() -> Self {
        let text = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let mut ranges: Vec<(u64, u64, bool)> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let (a, b) = f.next()?.split_once('-')?;
                let perms = f.next()?;
                let (a, b) = (u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?);
                (!perms.starts_with("---") && b - a <= MAX_RANGE).then_some((a, b, perms.contains('x')))
            })
            .filter(|&(a, _, _)| a >= 1 << 32)
            .collect();
        ranges.sort_unstable();
        let hi_min = ranges.first().map_or(u32::MAX, |r| (r.0 >> 32) as u32);
        let hi_max = ranges.iter().map(|r| ((r.1 - 1) >> 32) as u32).max().unwrap_or(0);
        Self { ranges, hi_min, hi_max }
    }

    /// Whether `v` is an address inside one of the mappings.
    pub fn contains(&self, v: u64) -> bool {
        let hi = (v >> 32) as u32;
        if hi < self.hi_min || hi > self.hi_max {
            return false;
        }
        let i = self.ranges.partition_point(|r| r.0 <= v);
        i > 0 && v < self.ranges[i - 1].1
    }

    /// Whether a 32-bit value equals the low half of an address in executable host
    /// code (a truncated host instruction pointer).
    pub fn low_half_of_code(&self, v: u32) -> bool {
        self.ranges.iter().filter(|r| r.2).any(|&(a, b, _)| {
            let lo = a as u32;
            let len = b - a;
            u64::from(v.wrapping_sub(lo)) < len
        })
    }
}

/// The first 8-byte value (at any 4-byte boundary) in `ram` that is a host
/// address.
pub fn scan_for_host_addresses(ram: &[u8], host: &HostRanges) -> Option<Failure> {
    let words: Vec<u32> = ram.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    for (i, w) in words.windows(2).enumerate() {
        let hi = w[1];
        if hi == 0 || hi < host.hi_min || hi > host.hi_max {
            continue;
        }
        let v = u64::from(hi) << 32 | u64::from(w[0]);
        if host.contains(v) {
            return Some(Failure::new(
                "host-leak",
                format!("guest memory at physical {:#x} holds host address {v:#x}", i * 4),
            ));
        }
    }
    None
}

/// The probe areas after the run.
fn check_probes(g: &GuestCase, ram: &[u8], host: &HostRanges, went_direct: bool) -> Option<Failure> {
    for p in &g.probes {
        if went_direct && p.kind == ProbeKind::Xsave {
            // User code run directly executes the XSAVE family natively: a
            // deviation the README documents (XCR0 is the host's), as for AVX.
            // Seen as seed 2032 case 4208, once in about 16 runs (when the
            // policy took the loop direct): XCOMP_BV named the host's AVX-512.
            continue;
        }
        let area = &ram[p.addr as usize..(p.addr + h::PROBE_SIZE) as usize];
        if let Some(f) = judge_probe(p, area, host, probe_code_intact(g, p, ram)) {
            return Some(f);
        }
    }
    None
}

/// The guest's memory image as generated (the chunks, later ones over earlier
/// ones) at `addr..addr+len`; None where a byte of it is in no chunk.
fn generated_bytes(g: &GuestCase, addr: u32, len: u32) -> Option<Vec<u8>> {
    let mut out = vec![None; len as usize];
    for c in &g.chunks {
        for (k, b) in out.iter_mut().enumerate() {
            let at = u64::from(addr) + k as u64;
            if let Some(i) = at.checked_sub(u64::from(c.addr)).filter(|&i| i < c.bytes.0.len() as u64) {
                *b = Some(c.bytes.0[i as usize]);
            }
        }
    }
    out.into_iter().collect()
}

/// Whether the code of the item that fills and checks probe `p` (found by the
/// address its `mov $area+288,%edi` names) is in RAM as generated at the end of
/// the run. Self-modifying stores (the `smc` items, and any random store) may
/// have rewritten it, and then what it left in the area says nothing about the
/// save: in `fuzz/corpus/fxsave-area-after-smc` a store turned `mov $0xe0,%ecx;
/// mov $0x85,%al; rep stosb` into `mov $0xa1b937e0,%ecx; pop %ebx; test %esi,%ebx;
/// stosb`, so the guest itself stored AL at byte 288 (QEMU leaves the same byte).
fn probe_code_intact(g: &GuestCase, p: &Probe, ram: &[u8]) -> bool {
    let key = (p.addr + h::probe::UPPER.start).to_le_bytes();
    g.items.iter().all(|it| {
        let Some(code) = generated_bytes(g, it.addr, it.len) else { return true };
        if !code.windows(4).any(|w| w == key) {
            return true;
        }
        ram.get(it.addr as usize..).and_then(|r| r.get(..code.len())) == Some(&code[..])
    })
}

/// Bytes of an FXSAVE area that no FXSAVE writes (64-bit ones included).
const NEVER_SAVED: core::ops::Range<usize> = 416..512;

/// One probe area: see the module documentation. The probe item filled the bytes
/// past the image, saved, then compared them with the fill and copied the pointer
/// fields out (see `harness::probe`); nothing is known unless its marker is there
/// and the area itself shows the save (random jumps may land past the save, on the
/// code that writes the marker).
pub fn check_probe(p: &Probe, area: &[u8], host: &HostRanges) -> Option<Failure> {
    judge_probe(p, area, host, true)
}

/// [`check_probe`], where `fill_trusted` says whether the probe item's code ran as
/// generated (see [`probe_code_intact`]): if not, the bytes past the image are not
/// judged (the pointer fields and an `xsave` still are).
fn judge_probe(p: &Probe, area: &[u8], host: &HostRanges, fill_trusted: bool) -> Option<Failure> {
    let at = |off: u32| le32(area, off);
    // A save writes most of the image's first bytes (control and status words,
    // MXCSR, zeroed pointers; the fill byte is odd, so never one of them); a stray
    // store from misdecoded code writes a few.
    let (head, need) = match p.kind {
        ProbeKind::Fxsave | ProbeKind::Xsave => (32, 16),
        ProbeKind::Fnsave | ProbeKind::Fnstenv => (28, 10),
    };
    let written = area[..head].iter().filter(|&&b| b != p.fill).count();
    if at(h::probe::MARKER) != h::probe::MAGIC || written < need {
        return None;
    }
    // An FXSAVE or XSAVE image holds MXCSR at 24..28, whose bits 16..31 are
    // reserved and always 0: other bytes there mean another store wrote the head
    // (a `rep stos` over the area) and a jump into the middle of the probe item
    // wrote the marker, not a save (`fuzz/corpus/xsave-probe-overwritten`).
    if matches!(p.kind, ProbeKind::Fxsave | ProbeKind::Xsave) && (at(24) >> 16) != 0 {
        return None;
    }
    // It also holds a non-zero MXCSR_MASK at 28..32 (the MXCSR bits the CPU
    // supports; only CPUs older than any 64-bit host stored 0, SDM vol. 1
    // 11.6.6): a head of zeros is memory no save wrote, as when the fill
    // went through a based ES and a jump landed on the code that writes the
    // marker (`fuzz/corpus/xsave-area-never-written`).
    if matches!(p.kind, ProbeKind::Fxsave | ProbeKind::Xsave) && at(28) == 0 {
        return None;
    }
    if p.kind == ProbeKind::Xsave {
        return Some(Failure::new("host-leak", format!("xsave ran at {:#x} (the guest CPU has no XSAVE)", p.addr)));
    }
    let left = at(h::probe::LEFT);
    let upper = h::probe::UPPER;
    // No FXSAVE, in any mode, writes bytes 416..512 (reserved and software's):
    // if they do not hold the fill, the item's fill loop did not run before this
    // save's check (a jump past it, onto the `repz scas`, with other stores over
    // the area: `fuzz/corpus/fxsave-area-jump-past-fill`), and the area says
    // nothing about the save.
    let filled = area[NEVER_SAVED].iter().all(|&b| b == p.fill);
    if p.kind == ProbeKind::Fxsave && fill_trusted && filled && left != 0 && left < upper.len() as u32 {
        let first = upper.end - left - 1;
        if area[first as usize] != p.fill {
            return Some(Failure::new(
                "fxsave-area",
                format!("fxsave at {:#x} wrote byte {first} (a 32-bit CPU leaves 288..512 alone)", p.addr),
            ));
        }
    }
    let (fip, fcs) = (at(h::probe::FIP), at(h::probe::FCS) & 0xffff);
    // The probe item copies the image's pointer fields; copies that differ from
    // the image were stored by something else: a jump into the middle of the
    // item whose misdecoded bytes ran its copy stores with other values
    // (`fuzz/corpus/probe-copy-reentered`: the guest's `smsw` result, CR0 = 0x33).
    let (fip_at, fcs_at) = if p.kind == ProbeKind::Fxsave { (8, 12) } else { (12, 16) };
    if (at(fip_at), at(fcs_at)) != (at(h::probe::FIP), at(h::probe::FCS)) {
        return None;
    }
    if fcs == 0x33 || (host.low_half_of_code(fip) && !(h::BODY..h::BODY + h::BODY_MAX).contains(&fip)) {
        return Some(Failure::new(
            "host-leak",
            format!("{:?} at {:#x} reports the last x87 instruction at {fcs:#x}:{fip:#x} (host code)", p.kind, p.addr),
        ));
    }
    None
}

fn run_oracle(o: &OracleCase) -> Verdict {
    let snippet = bt86_runtime::snippet::Snippet { code: o.code.0.clone(), regs: o.regs, eflags: o.eflags, data: o.data.0.clone() };
    let flags_for = |fault: Option<bt86_runtime::snippet::SnippetFault>| match fault {
        None => o.flags_at_end,
        Some(f) => o
            .flags_at
            .iter()
            .find(|(eip, _)| *eip == f.eip)
            .map_or_else(|| o.flags_at.iter().fold(o.flags_at_end, |m, &(_, f)| m & f), |&(_, m)| m),
    };
    let instructions = count_instructions(&o.code.0);
    match bt86_tests::oracle::compare_with(&snippet, &flags_for) {
        Ok(()) => Verdict { kind: "agree".into(), detail: String::new(), instructions, failure: None },
        Err(report) if report.contains("native run failed") => {
            Verdict { kind: "native-failed".into(), detail: report, instructions, failure: None }
        }
        Err(report) => {
            // The signature: the first line of the differences.
            let first = report.split("differences:").nth(1).and_then(|d| d.lines().find(|l| !l.trim().is_empty())).unwrap_or("").trim();
            let class = if report.contains("translated run failed") { "oracle-translated" } else { "oracle-diff" };
            let mut f = Failure::new(class, report.clone());
            f.signature = format!("{class}: {}", crate::case::blank_numbers(first));
            Verdict { kind: class.into(), detail: report, instructions, failure: Some(f) }
        }
    }
}

fn run_loader(l: &LoaderCase) -> Verdict {
    let cfg = VmConfig::new(l.mem_mib, Box::new(std::io::sink()));
    let mut vm = match Vm::new(cfg) {
        Ok(vm) => vm,
        Err(e) => return failure("internal-error", "internal-error", format!("cannot create the VM: {e}")),
    };
    match vm.load_kernel(&l.image.0, &l.cmdline, l.initrd.as_ref().map(|b| b.0.as_slice())) {
        Ok(k) => Verdict { kind: "loaded".into(), detail: format!("{k:?}"), instructions: 0, failure: None },
        Err(e) => {
            let msg = e.to_string();
            if msg.trim().is_empty() {
                return failure("load-error", "loader-error", "a load error without a message".into());
            }
            Verdict { kind: "load-error".into(), detail: msg, instructions: 0, failure: None }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ranges_know_this_stack_and_code() {
        let host = HostRanges::now();
        let local = 0u64;
        assert!(host.contains(std::ptr::addr_of!(local) as u64));
        assert!(host.contains(host_ranges_know_this_stack_and_code as fn() as usize as u64));
        assert!(!host.contains(0x1234_5678));
        let mut ram = vec![0u8; 64];
        ram[20..28].copy_from_slice(&(std::ptr::addr_of!(local) as u64).to_le_bytes());
        assert!(scan_for_host_addresses(&ram, &host).is_some());
        assert!(scan_for_host_addresses(&[0u8; 64], &host).is_none());
    }

    #[test]
    fn probes_are_judged_by_what_the_guest_recorded() {
        let host = HostRanges::now();
        let p = Probe { addr: 0, kind: ProbeKind::Fxsave, fill: 0xa5 };
        let mut area = vec![0xa5u8; 1024];
        area[h::probe::LEFT as usize..][..12].fill(0);
        area[h::probe::LEFT as usize] = 211;
        area[300] = 0;
        assert!(check_probe(&p, &area, &host).is_none(), "no marker: the save did not run");
        area[h::probe::MARKER as usize..][..4].copy_from_slice(&h::probe::MAGIC.to_le_bytes());
        assert!(check_probe(&p, &area, &host).is_none(), "marker without an image: jumped past the save");
        area[..288].fill(0);
        area[h::probe::MARKER as usize..][..4].copy_from_slice(&h::probe::MAGIC.to_le_bytes());
        assert!(check_probe(&p, &area, &host).is_none(), "no MXCSR_MASK: no save wrote the head");
        area[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
        assert_eq!(check_probe(&p, &area, &host).expect("clobbered").class, "fxsave-area");
        area[450] = 0x11;
        assert_eq!(check_probe(&p, &area, &host), None, "bytes no fxsave writes lack the fill: it never ran");
        area[450] = 0xa5;
        area[h::probe::LEFT as usize] = 0;
        assert_eq!(check_probe(&p, &area, &host), None, "upper area kept");
        area[h::probe::FCS as usize] = 0x33;
        let env = Probe { kind: ProbeKind::Fnstenv, ..p };
        assert_eq!(check_probe(&env, &area, &host), None, "a copy the image does not hold");
        area[16] = 0x33; // fnstenv's FCS
        assert_eq!(check_probe(&env, &area, &host).expect("host cs").class, "host-leak");
        let xsave = Probe { kind: ProbeKind::Xsave, ..p };
        assert_eq!(check_probe(&xsave, &area, &host).expect("xsave ran").class, "host-leak");
        // A head no save writes (MXCSR with reserved bits: a rep stos over it).
        area[..32].fill(0xe1);
        assert_eq!(check_probe(&xsave, &area, &host), None, "not an image");
    }

    /// An xsave image is a leak when user code ran translated, and the
    /// documented deviation of direct execution when it ran directly.
    #[test]
    fn xsave_after_direct_execution_is_the_documented_deviation() {
        let host = HostRanges::now();
        let xsave = Probe { addr: 0x1000, kind: ProbeKind::Xsave, fill: 0xcb };
        let mut ram = vec![0u8; 0x2000];
        let area = &mut ram[0x1000..0x1000 + h::PROBE_SIZE as usize];
        area.fill(0xcb);
        area[..32].fill(0);
        area[28..32].copy_from_slice(&0xffffu32.to_le_bytes()); // MXCSR_MASK
        area[h::probe::MARKER as usize..][..4].copy_from_slice(&h::probe::MAGIC.to_le_bytes());
        let g = GuestCase {
            mem_mib: 1,
            code_cache_mib: None,
            timeout_ms: 0,
            entry: 0,
            chunks: Vec::new(),
            items: Vec::new(),
            probes: vec![xsave],
            setup: crate::case::Setup::default(),
        };
        assert_eq!(check_probes(&g, &ram, &host, false).expect("xsave ran").class, "host-leak");
        assert_eq!(check_probes(&g, &ram, &host, true), None);
    }
}
