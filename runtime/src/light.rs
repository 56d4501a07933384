//! Light exits: the callouts the VMM answers from a few registers — `cpuid` from
//! the CPU model's table, `in`/`out` with an imm8 or `dx` port when CPL ≤ IOPL —
//! handled right after translated code exits, without the general exit path (no
//! site clone, no emulation view of memory, no mode recomputation), and resumed at
//! once while the next exit is light too.
//!
//! Devices are polled only when the port touched one whose state can raise an
//! interrupt or move the next timer event (see `Platform::take_touched`); the
//! general path then runs the instruction boundary as usual.

use crate::devices::IoEffect;
use crate::emulate::{EventSource, Outcome, Stop};
use crate::engine::Next;
use crate::vm::{Vm, VmError};
use bt86_translator::abi::ExitReason;
use bt86_translator::CalloutKind;
use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

/// An exit the light path can take, decoded from its callout site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LightOp {
    Cpuid,
    /// `in`: port (None: dx), size in bytes.
    In(Option<u8>, u8),
    /// `out`: port (None: dx), size in bytes.
    Out(Option<u8>, u8),
    /// `invlpg` at CPL 0 with paging on, of this linear address (0 until
    /// `light_site` reads the operand).
    Invlpg(u32),
}

/// What the light path made of an exit.
pub(crate) enum Light {
    /// Not a light exit: nothing was done, take the general path.
    No,
    /// Done; continue with this (through the instruction boundary).
    Done(Next),
}

fn light_op(ins: &Instruction) -> Option<LightOp> {
    let port = |op: u32| match ins.op_kind(op) {
        OpKind::Immediate8 => Some(Some(ins.immediate8())),
        OpKind::Register if ins.op_register(op) == Register::DX => Some(None),
        _ => None,
    };
    let size = |r: Register| match r {
        Register::AL => Some(1),
        Register::AX => Some(2),
        Register::EAX => Some(4),
        _ => None,
    };
    match ins.mnemonic() {
        Mnemonic::Cpuid if ins.code() == Code::Cpuid => Some(LightOp::Cpuid),
        Mnemonic::In => Some(LightOp::In(port(1)?, size(ins.op_register(0))?)),
        Mnemonic::Out => Some(LightOp::Out(port(0)?, size(ins.op_register(1))?)),
        Mnemonic::Invlpg => Some(LightOp::Invlpg(0)),
        _ => None,
    }
}

/// Writes the low `size` bytes of `v` into eax, keeping the rest (al/ax/eax).
fn merge_accumulator(eax: u32, v: u32, size: u8) -> u32 {
    match size {
        1 => (eax & !0xff) | (v & 0xff),
        2 => (eax & !0xffff) | (v & 0xffff),
        _ => v,
    }
}

impl Vm {
    /// Takes the exit just made by translated code if it is light. A light exit
    /// that needs nothing at the boundary resumes translated code at once and the
    /// next exit is looked at the same way.
    pub(crate) fn light_exit(&mut self) -> Result<Light, VmError> {
        if self.debug.is_some() || self.guest_step.is_some() {
            // A debugger or the guest's TF wants every instruction boundary.
            return Ok(Light::No);
        }
        // Anything may have changed the shadow since the last stay in this loop.
        self.light_tlb.flush();
        loop {
            if let Some(next) = self.light_traced_write()? {
                self.light_tlb.flush();
                let host = match next {
                    Next::Resume(host) => Some(host),
                    Next::Dispatch(eip) => self.dispatch_hit(eip, false),
                    _ => None,
                };
                match host {
                    Some(host) if !self.bus.touched() && !self.stop_requested() => {
                        self.run_translated(host)?;
                        self.stats.guest_exits += 1;
                        continue;
                    }
                    _ => return Ok(Light::Done(next)),
                }
            }
            if let Some(next) = self.light_cpu()? {
                match next {
                    // Into the guest kernel (a system call, an exception) or back to
                    // user code that runs translated: no boundary to keep.
                    Next::Dispatch(eip) if self.dispatch_stays_light() && self.run_dispatched(eip)? => continue,
                    _ => return Ok(Light::Done(next)),
                }
            }
            if let Some(next) = self.light_page_probe()? {
                self.light_tlb.flush();
                match next {
                    Next::Resume(host) if !self.bus.touched() && !self.stop_requested() => {
                        self.run_translated(host)?;
                        self.stats.guest_exits += 1;
                        continue;
                    }
                    // The guest's #PF handler.
                    Next::Dispatch(eip) if self.dispatch_stays_light() && self.run_dispatched(eip)? => continue,
                    _ => return Ok(Light::Done(next)),
                }
            }
            let Some((op, next_eip)) = self.light_site() else { return Ok(Light::No) };
            self.stats.exits_callout += 1;
            self.stats.light_exits += 1;
            let resume = self.tr.ctx().resume;
            let ctx = self.tr.ctx_mut();
            ctx.eip = next_eip;
            // The instruction after an inline sti has now run.
            ctx.shadow_eip = u32::MAX;
            if let LightOp::Invlpg(linear) = op {
                self.light_tlb.flush();
                self.shadow.invlpgs += 1;
                let drops = self.tr.drops();
                self.remap_retargeted(linear)?;
                if self.tr.drops() != drops {
                    return Ok(Light::Done(Next::Dispatch(next_eip)));
                }
            } else if let Some(stop) = self.light_op(op) {
                return Ok(Light::Done(stop.into()));
            }
            let calibrating = self.bus.calibrating();
            if calibrating != self.cpu.tsc_calibrating {
                // Port B started or ended the TSC calibration: rdtsc is translated
                // differently from here on (see `Mode::native_tsc`).
                self.cpu.tsc_calibrating = calibrating;
                return Ok(Light::Done(Next::Dispatch(next_eip)));
            }
            if self.bus.touched() || self.stop_requested() {
                // Device state may have changed: the boundary polls and delivers.
                return Ok(Light::Done(Next::Resume(resume)));
            }
            self.run_translated(resume)?;
            self.stats.guest_exits += 1;
        }
    }

    /// Runs translated code from `eip` after a light ring change or event,
    /// without the general loop's boundary; false if no unit is entered there
    /// through the lookup table (the general path dispatches then).
    #[inline]
    fn run_dispatched(&mut self, eip: u32) -> Result<bool, VmError> {
        self.note_translated_cpl();
        // The instruction after an inline sti (if it was one) has run.
        self.tr.ctx_mut().shadow_eip = u32::MAX;
        let Some(host) = self.dispatch_hit(eip, false) else { return Ok(false) };
        self.sync_ctx_for_run();
        self.run_translated(host)?;
        self.stats.guest_exits += 1;
        Ok(true)
    }

    /// Whether translated code may go on at a dispatch after a light CPU
    /// instruction without the general loop's instruction boundary: at CPL 0,
    /// or at CPL 3 where direct execution does not take over, with no trap
    /// flag, no guest breakpoints, no device touched, no interrupt the guest
    /// would take now and no stop asked for.
    fn dispatch_stays_light(&self) -> bool {
        let ctx = self.tr.ctx();
        matches!(self.cpu.cpl(), 0 | 3)
            && self.cpu.seg[crate::cpu::sreg::CS].base == 0
            && ctx.sys_flags & crate::cpu::eflags::TF == 0
            && self.cpu.dr[7] & 0xff == 0
            && !(ctx.vif == 1 && self.bus.interrupt_pending())
            && !self.bus.touched()
            && !self.stop_requested()
            && self.fpu.is_none()
            && self.shadow.pending_trace.is_none()
            && !(self.cpu.cpl() == 3 && self.direct_wanted())
    }

    /// An adaptive store's callout (`CalloutKind::TracedWrite`: a store that
    /// writes guest page tables, emulated so the shadow MMU sees it), taken
    /// without the general exit path: a store changes neither the mode nor the
    /// address space nor any device, so none of that is looked at. Where to go
    /// next, or None if the exit is not one.
    fn light_traced_write(&mut self) -> Result<Option<Next>, VmError> {
        let ctx = self.tr.ctx();
        if ExitReason::from_raw(ctx.exit_reason) != Some(ExitReason::Callout) {
            return Ok(None);
        }
        let Some(site) = self.tr.site(ctx.exit_arg).filter(|s| s.kind == CalloutKind::TracedWrite).cloned() else {
            return Ok(None);
        };
        self.stats.exits_callout += 1;
        self.stats.light_exits += 1;
        let (resume, drops, hits) = (ctx.resume, self.tr.drops(), self.shadow.table_write_hits);
        self.tr.ctx_mut().eip = site.eip;
        let (outcome, wrote) = self.with_machine(|m| crate::emulate::emulate(m, &site))?;
        self.shadow.adaptive_writes += 1;
        self.adaptive_outcome(site.eip, self.shadow.table_write_hits != hits)?;
        let next_eip = site.eip.wrapping_add(u32::from(site.len));
        let next = match outcome {
            Outcome::Continue => {
                self.tr.ctx_mut().eip = next_eip;
                // Tables written: the rest of the unit may be mapped otherwise now.
                if wrote || self.tr.drops() != drops {
                    Next::Dispatch(next_eip)
                } else {
                    Next::Resume(resume)
                }
            }
            Outcome::Jump => Next::Dispatch(self.tr.ctx().eip),
            Outcome::Exception { vector, error, trap } => {
                let eip = if trap { next_eip } else { site.eip };
                self.raise(vector, error, eip, EventSource::Exception)?
            }
            Outcome::SoftwareInterrupt { .. } | Outcome::Stop(Stop::Halted { .. }) => {
                return Err(VmError::Internal(format!("an adaptive store at {:#010x} ended in {outcome:?}", site.eip)))
            }
            Outcome::Stop(s) => Next::Done(s.into()),
        };
        Ok(Some(next))
    }

    /// The light operation of the exit just taken and the eip after it, counted
    /// in the callout statistics; None if the exit is not a light one.
    fn light_site(&mut self) -> Option<(LightOp, u32)> {
        let ctx = self.tr.ctx();
        if ExitReason::from_raw(ctx.exit_reason) != Some(ExitReason::Callout) {
            return None;
        }
        let site = self.tr.site(ctx.exit_arg)?;
        if site.kind != CalloutKind::Emulate {
            return None;
        }
        let mut op = light_op(&site.ins)?;
        let iopl = (ctx.sys_flags & crate::cpu::eflags::IOPL) >> 12;
        if matches!(op, LightOp::In(..) | LightOp::Out(..)) && u32::from(self.cpu.cpl()) > iopl {
            // The I/O permission bitmap is read from the TSS: general path.
            return None;
        }
        if op == LightOp::Invlpg(0) {
            if self.cpu.cpl() != 0 || !self.paging() {
                // #GP, or nothing to map: general path.
                return None;
            }
            let r = crate::emulate::addressing::effective(ctx, &site.ins)?;
            op = LightOp::Invlpg(self.cpu.seg.get(r.seg)?.base.wrapping_add(r.offset));
        }
        let next_eip = site.eip.wrapping_add(u32::from(site.len));
        self.stats.callouts.add(site.ins.mnemonic());
        Some((op, next_eip))
    }

    /// Carries out one light operation; a stop if the port asked for one.
    fn light_op(&mut self, op: LightOp) -> Option<Stop> {
        let ctx = self.tr.ctx_mut();
        let port_of = |p: Option<u8>, edx: u32| p.map_or(edx as u16, u16::from);
        match op {
            LightOp::Cpuid => {
                let r = self.cpu.model.cpuid(ctx.gpr[0], ctx.gpr[1]);
                (ctx.gpr[0], ctx.gpr[3], ctx.gpr[1], ctx.gpr[2]) = (r[0], r[1], r[2], r[3]);
                None
            }
            LightOp::In(p, size) => {
                let port = port_of(p, ctx.gpr[2]);
                let v = self.bus.read(port, size);
                let ctx = self.tr.ctx_mut();
                ctx.gpr[0] = merge_accumulator(ctx.gpr[0], v, size);
                None
            }
            LightOp::Invlpg(_) => None,
            LightOp::Out(p, size) => {
                let (port, v) = (port_of(p, ctx.gpr[2]), ctx.gpr[0]);
                match self.bus.write(port, size, v) {
                    IoEffect::None => None,
                    IoEffect::Exit(v) => Some(Stop::GuestExit(v)),
                    IoEffect::Reset => Some(Stop::Reset),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};

    fn op(bytes: &[u8]) -> Option<LightOp> {
        let ins = Decoder::with_ip(32, bytes, 0, DecoderOptions::NONE).decode();
        light_op(&ins)
    }

    #[test]
    fn light_ops_decode() {
        assert_eq!(op(&[0x0f, 0xa2]), Some(LightOp::Cpuid));
        assert_eq!(op(&[0xe4, 0x80]), Some(LightOp::In(Some(0x80), 1)));
        assert_eq!(op(&[0x66, 0xed]), Some(LightOp::In(None, 2)));
        assert_eq!(op(&[0xef]), Some(LightOp::Out(None, 4)));
        assert_eq!(op(&[0xe6, 0x43]), Some(LightOp::Out(Some(0x43), 1)));
        assert_eq!(op(&[0x6e]), None, "outsb takes the general path");
        assert_eq!(op(&[0x0f, 0x32]), None, "rdmsr takes the general path");
        assert_eq!(op(&[0x0f, 0x01, 0x38]), Some(LightOp::Invlpg(0)), "invlpg (%eax)");
    }

    /// Port I/O and cpuid in a loop run on the light path with the same results
    /// as the general one: partial accumulators, dx ports, a UART byte, cpuid's
    /// four registers, and the debug-exit port ending the run.
    #[test]
    fn loop_of_light_exits_runs_to_the_guest_exit() {
        // mov $0x11223344,%eax; in $0xed,%al (an unclaimed port: 0xff)
        // mov $0x3f8,%dx; mov $'L',%al; out %al,(%dx)
        // mov $3,%ecx; 1: in $0xed,%ax; loop 1b            (stays light)
        // mov %eax,%esi; xor %eax,%eax; cpuid; mov %ebx,%edi (vendor word)
        // mov $0xf4,%dx; mov $5,%eax; out %eax,(%dx)
        let code = [
            0xb8, 0x44, 0x33, 0x22, 0x11, 0xe4, 0xed, 0x66, 0xba, 0xf8, 0x03, 0xb0, b'L', 0xee, 0xb9, 3, 0, 0, 0, 0x66,
            0xe5, 0xed, 0xe2, 0xfb, 0x89, 0xc6, 0x31, 0xc0, 0x0f, 0xa2, 0x89, 0xdf, 0x66, 0xba, 0xf4, 0x00, 0xb8, 5, 0,
            0, 0, 0xef,
        ];
        let out = crate::devices::SharedBuffer::new();
        let mut vm = Vm::new(crate::vm::VmConfig::new(2, Box::new(out.clone()))).unwrap();
        vm.ram.write(0x1000, &code).unwrap();
        vm.set_flat_state(0x1000, [0, 0, 0, 0, 0x8000, 0, 0, 0], 0);
        assert_eq!(vm.run().unwrap(), crate::vm::RunOutcome::GuestExit(5));
        assert_eq!(out.to_string_lossy(), "L");
        let regs = vm.registers().0;
        let post = u32::from(vm.bus.read(0xed, 1) as u8);
        assert_eq!(regs[6] >> 16, 0x1122, "in %ax keeps the upper half");
        assert_eq!(regs[6] & 0xffff, post | post << 8, "two port bytes in ax");
        assert_eq!(regs[7], vm.cpu.model.cpuid(0, 0)[1], "cpuid's ebx");
        assert!(vm.stats.light_exits >= 6, "light exits: {}", vm.stats.light_exits);
    }

    /// The POST port at CPL 0 is translated inline: reads float high in al, ax
    /// and eax as the device's do, writes vanish, and only the debug-exit port
    /// leaves translated code.
    #[test]
    fn post_port_at_cpl0_never_exits() {
        // mov $0x11223344,%eax; in $0x80,%al; mov %eax,%ebx
        // mov $0x11223344,%eax; in $0x80,%ax; mov %eax,%ecx
        // in $0x80,%eax; mov %eax,%esi; out %al,$0x80; out %eax,$0x80
        // mov $0xf4,%dx; mov $5,%eax; out %eax,(%dx)
        let code = [
            0xb8, 0x44, 0x33, 0x22, 0x11, 0xe4, 0x80, 0x89, 0xc3, 0xb8, 0x44, 0x33, 0x22, 0x11, 0x66, 0xe5, 0x80, 0x89,
            0xc1, 0xe5, 0x80, 0x89, 0xc6, 0xe6, 0x80, 0xe7, 0x80, 0x66, 0xba, 0xf4, 0x00, 0xb8, 0x05, 0x00, 0x00, 0x00,
            0xef,
        ];
        let mut vm = Vm::new(crate::vm::VmConfig::new(2, Box::new(std::io::sink()))).unwrap();
        vm.ram.write(0x1000, &code).unwrap();
        vm.set_flat_state(0x1000, [0, 0, 0, 0, 0x8000, 0, 0, 0], 0);
        assert_eq!(vm.run().unwrap(), crate::vm::RunOutcome::GuestExit(5));
        let regs = vm.registers().0;
        let mut device = |size| vm.bus.read(0x80, size);
        assert_eq!(regs[3], 0x1122_3300 | device(1), "in %al");
        assert_eq!(regs[1], 0x1122_0000 | device(2), "in %ax");
        assert_eq!(regs[6], device(4), "in %eax");
        assert_eq!(vm.stats.light_exits, 1, "only the exit port leaves");
    }

    #[test]
    fn accumulator_merge_keeps_upper_bytes() {
        assert_eq!(merge_accumulator(0x1234_5678, 0xab, 1), 0x1234_56ab);
        assert_eq!(merge_accumulator(0x1234_5678, 0xffff_abcd, 2), 0x1234_abcd);
        assert_eq!(merge_accumulator(0x1234_5678, 0xabcd_ef01, 4), 0xabcd_ef01);
    }
}
