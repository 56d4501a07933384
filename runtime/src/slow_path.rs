//! Instructions the engine emulates in the VMM after a host fault in translated
//! code, where running them natively again cannot work.
//!
//! A string instruction runs with esi/edi biased by the view base in 64-bit
//! registers, so a backward one that crosses linear 0 (or a forward one that runs
//! past the view's wrap alias) leaves the view and faults in its guard instead of
//! wrapping at 4 GiB as the CPU does. The VMM then emulates the instruction from
//! where it stopped (the fault left its progress in ecx/esi/edi): the emulator wraps
//! its addresses, checks the guest's page tables (a refusal is the guest's #PF at
//! the wrapped address) and runs at most a chunk of iterations, after which the
//! translated code takes over again, far from the edge.

use crate::emulate::{self, EventSource, Outcome};
use crate::engine::{CodeFetch, Next};
use crate::vm::{Vm, VmError};
use bt86_translator::{CalloutKind, CalloutSite, GuestCode};

impl Vm {
    /// The linear address a host fault address in a guard around a view means
    /// (wrapped at 4 GiB), if it lies in one.
    pub(crate) fn guard_linear(&self, addr: u64) -> Option<u32> {
        self.shadow.view.wrapped_linear_of(addr).or_else(|| self.shadow.user_view.wrapped_linear_of(addr))
    }

    /// Emulates the instruction at `eip` once, in place of its translation: `site`
    /// as it was translated (a string instruction may have overwritten its own
    /// bytes by now), or else as its bytes decode now.
    pub(crate) fn emulate_in_place(&mut self, eip: u32, site: Option<CalloutSite>) -> Result<Next, VmError> {
        let Some(site) = site.filter(|s| s.eip == eip).or_else(|| self.site_at(eip)) else {
            return Ok(Next::Done(crate::vm::RunOutcome::Unbacked { eip, linear: eip }));
        };
        let (outcome, _) = self.with_machine(|m| emulate::emulate(m, &site))?;
        let next_eip = site.eip.wrapping_add(u32::from(site.len));
        match outcome {
            Outcome::Continue => Ok(Next::Dispatch(next_eip)),
            Outcome::Jump => Ok(Next::Dispatch(self.tr.ctx().eip)),
            Outcome::Exception { vector, error, trap } => {
                self.raise(vector, error, if trap { next_eip } else { eip }, EventSource::Exception)
            }
            Outcome::SoftwareInterrupt { vector } => self.raise(vector, None, next_eip, EventSource::Software),
            Outcome::Stop(s) => Ok(Next::Done(s.into())),
        }
    }

    /// The instruction at `eip` as an emulation site (None: its bytes cannot be
    /// fetched any more).
    fn site_at(&self, eip: u32) -> Option<CalloutSite> {
        let mut bytes = [0u8; 16];
        let paging = self.paging().then(|| self.paging_mode());
        let linear = self.cpu.seg[crate::cpu::sreg::CS].base.wrapping_add(eip);
        let n = CodeFetch { ram: &self.ram, paging, user: self.cpu.cpl() == 3 }.fetch(linear, &mut bytes);
        let ins = iced_x86::Decoder::with_ip(32, &bytes[..n], u64::from(eip), self.tr.isa().decoder_options()).decode();
        let len = u8::try_from(ins.len()).ok().filter(|&l| l > 0)?;
        Some(CalloutSite { eip, len, ins, kind: CalloutKind::Emulate })
    }
}
