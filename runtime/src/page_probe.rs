//! Adaptive translation of accesses that keep taking true page faults.
//!
//! A true page fault in translated code costs a host signal: about 7 µs here,
//! 17,000 cycles, ten times what QEMU TCG pays for the whole guest #PF. An
//! instruction that takes several (a kernel touching a page it has just made
//! not present, a loop over memory paged in on demand) is retranslated with a
//! `PageProbe` callout before it: on the light path, the VMM checks that the
//! pages it is about to access are mapped for it in the current view, maps
//! them (a hidden fault without the signal) or raises the guest's #PF, and
//! the instruction then runs natively. A probe that keeps finding everything
//! mapped costs more than the faults it saves (a light exit each time): after
//! `PLAIN_AFTER` passes in a row the instruction is translated plainly again,
//! as adaptive stores that stop hitting page tables are.

use crate::emulate::EventSource;
use crate::engine::Next;
use crate::mmu::FaultAction;
use crate::vm::{Vm, VmError};
use bt86_translator::abi::ExitReason;
use bt86_translator::CalloutKind;
use hashbrown::HashMap;

/// True page faults at one instruction before it is probed.
const PROBE_AFTER: u32 = 4;
/// Probes in a row that found every page mapped before it is plain again.
const PLAIN_AFTER: u32 = 16;
/// Instructions counted at most (a guest faulting at ever new eips must not
/// grow the counts without bound).
const MAX_COUNTED: usize = 4096;
/// Accesses longer than this (repeated string instructions) are not probed:
/// their pages are found by faults as before.
const MAX_PROBED_LEN: u64 = 16;

/// Per-instruction counts: true faults of plain instructions, passes in a row
/// of probed ones.
#[derive(Debug, Default)]
pub(crate) struct PageProbes {
    faults: HashMap<u32, u32>,
    passes: HashMap<u32, u32>,
}

/// Counts `map[key]` up; whether it reached `limit` (then it starts over).
fn count(map: &mut HashMap<u32, u32>, key: u32, limit: u32) -> bool {
    if map.len() >= MAX_COUNTED && !map.contains_key(&key) {
        map.clear();
    }
    let n = map.entry(key).or_insert(0);
    *n += 1;
    if *n < limit {
        return false;
    }
    map.remove(&key);
    true
}

impl Vm {
    /// A true page fault taken by translated code at `eip`: one that keeps
    /// faulting gets a probe.
    pub(crate) fn note_true_fault(&mut self, eip: u32) -> Result<(), VmError> {
        if count(&mut self.page_probes.faults, eip, PROBE_AFTER) {
            self.tr.set_probed(eip, true)?;
            self.stats.probes_made += 1;
        }
        Ok(())
    }

    /// A `PageProbe` callout just taken, on the light path: where to go next,
    /// or None if the exit is not one.
    pub(crate) fn light_page_probe(&mut self) -> Result<Option<Next>, VmError> {
        let ctx = self.tr.ctx();
        if ExitReason::from_raw(ctx.exit_reason) != Some(ExitReason::Callout) {
            return Ok(None);
        }
        let Some(site) = self.tr.site(ctx.exit_arg).filter(|s| s.kind == CalloutKind::PageProbe).cloned() else {
            return Ok(None);
        };
        self.stats.exits_callout += 1;
        self.stats.light_exits += 1;
        self.stats.page_probes += 1;
        let (resume, drops) = (ctx.resume, self.tr.drops());
        self.tr.ctx_mut().eip = site.eip;
        if let Some(code) = self.probe_pages(&site.ins, site.eip)? {
            self.page_probes.passes.remove(&site.eip);
            self.light_tlb.flush();
            let next = match self.light_raise(14, Some(code), site.eip)? {
                Some(next) => next,
                None => self.raise(14, Some(code), site.eip, EventSource::Exception)?,
            };
            return Ok(Some(next));
        }
        if count(&mut self.page_probes.passes, site.eip, PLAIN_AFTER) {
            self.tr.set_probed(site.eip, false)?;
        }
        // The unit may be gone (made plain, or dropped by what was mapped).
        Ok(Some(if self.tr.drops() == drops { Next::Resume(resume) } else { Next::Dispatch(site.eip) }))
    }

    /// Maps what the instruction at `eip` is about to access where a hidden
    /// fault would; the #PF error code if the guest does not allow an access.
    /// Anything else (no paging, a write to a traced page, memory that does
    /// not exist) is left to the instruction's own host fault.
    fn probe_pages(&mut self, ins: &iced_x86::Instruction, eip: u32) -> Result<Option<u32>, VmError> {
        if !self.paging() {
            return Ok(None);
        }
        let user = self.cpu.cpl() == 3;
        let ctx = self.tr.ctx();
        let down = ctx.rflags & u64::from(crate::cpu::eflags::DF) != 0;
        let gpr = ctx.gpr;
        let accesses = crate::debug::watch::accesses(ins, down, |r| crate::debug::register_value(r, &gpr, &self.cpu, eip));
        for a in accesses.iter().filter(|a| a.len <= MAX_PROBED_LEN && a.len > 0) {
            let last = a.addr.wrapping_add(u32::try_from(a.len - 1).unwrap_or(0));
            for page in [a.addr & !0xfff, last & !0xfff] {
                let mapped = self.shadow.cached_frame(page, user).is_some_and(|(_, writable)| writable || !a.write);
                if mapped {
                    continue;
                }
                match self.paging_fault(page | (a.addr & 0xfff), a.write, user)? {
                    FaultAction::Retry => {}
                    FaultAction::PageFault(code) => return Ok(Some(code)),
                    FaultAction::WriteThrough { .. } | FaultAction::NoRam => return Ok(None),
                }
            }
        }
        Ok(None)
    }
}
