//! The checks of the last system call and of its return, remembered.
//!
//! A system call from user mode (`int $0x80`, or an exception such as #DE)
//! reads the IDT gate, the handler's code descriptor, the TSS's ring-0 stack
//! and that stack's descriptor, checks them all, and sets accessed bits; the
//! `iret` back reads and checks the user code and stack descriptors. A kernel
//! makes the same checks with the same bytes millions of times. Here the
//! outcome of one full delivery (or `iret`) is kept with every byte and
//! register it depended on; the next one whose inputs read back identical is
//! committed at once, by the same commit code as the full path
//! (`delivery::commit_gate`, `commit_iret`).
//!
//! Nothing is invalidated: every input is read again each time (through the
//! current translations, so a remapped IDT or GDT is seen too), and a single
//! difference falls back to the full path, which then records anew. What is
//! skipped is only the decoding and checking of bytes that did not change, and
//! the accessed-bit writes, which are already set in what was read.

use super::addressing::read_linear_as;
use super::delivery::{commit_gate, commit_iret, write_frame, EventSource, GateTarget, IretFrame};
use super::flags::read_eflags;
use super::Machine;
use crate::cpu::{eflags, sreg, Segment, TableReg};

/// The last delivery and the last `iret` the full path made that can be kept.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct GateCache {
    entry: Option<Entry>,
    exit: Option<Exit>,
}

/// A delivery through a 32-bit interrupt or trap gate to ring 0, from ring 0
/// or (with a stack switch) from CPL 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    vector: u8,
    source: EventSource,
    from_cpl: u8,
    idtr: TableReg,
    gdtr: TableReg,
    tr: Segment,
    /// The IDT entry and the handler's code descriptor as read after the
    /// delivery (accessed bit set).
    gate: u64,
    cs_desc: u64,
    /// From CPL 3: the ring-0 stack's descriptor, as read after the delivery.
    ss_desc: Option<u64>,
    target: GateTarget,
}

/// An `iretd` from ring 0, to ring 0 or to CPL 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Exit {
    gdtr: TableReg,
    cs: Segment,
    cs_desc: u64,
    /// To CPL 3: the stack segment and its descriptor.
    outer: Option<(Segment, u64)>,
}

/// The 8 bytes at `linear`, read as the CPU reads its tables (supervisor).
fn raw(m: &mut Machine<'_>, linear: u32) -> Option<u64> {
    let mut b = [0u8; 8];
    read_linear_as(m, linear, &mut b, false).ok()?;
    Some(u64::from_le_bytes(b))
}

/// The GDT descriptor `selector` names, raw (None: an LDT selector).
fn gdt_raw(m: &mut Machine<'_>, selector: u16) -> Option<u64> {
    if selector & 4 != 0 {
        return None;
    }
    raw(m, m.cpu.gdtr.base.wrapping_add(u32::from(selector & 0xfff8)))
}

/// The ring-0 stack the TSS names: (SS selector, ESP).
fn ring0_stack(m: &mut Machine<'_>) -> Option<(u16, u32)> {
    let mut b = [0u8; 6];
    read_linear_as(m, m.cpu.tr.base.wrapping_add(4), &mut b, false).ok()?;
    Some((u16::from_le_bytes([b[4], b[5]]), u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
}

/// Whether the machine is in a state a kept event may leave from or return
/// to: protected mode, ring 0 or 3, no virtual-8086 mode, no nested task.
fn plain_mode(m: &Machine<'_>) -> bool {
    m.cpu.cr0 & crate::cpu::cr0::PE != 0
        && matches!(m.cpu.cpl(), 0 | 3)
        && m.ctx.sys_flags & (eflags::VM | eflags::NT) == 0
}

impl GateCache {
    /// Delivers `vector` (an event without an error code) as the recorded
    /// delivery did, if everything it read is unchanged; false: nothing was
    /// done (or only stack bytes written that the full path writes again).
    pub(crate) fn deliver(&self, m: &mut Machine<'_>, vector: u8, source: EventSource, return_eip: u32) -> bool {
        let Some(e) = self.entry else { return false };
        let cpu = &m.cpu;
        if e.vector != vector || e.source != source || e.from_cpl != cpu.cpl() || e.idtr != cpu.idtr || e.gdtr != cpu.gdtr {
            return false;
        }
        if !plain_mode(m)
            || raw(m, e.idtr.base.wrapping_add(u32::from(vector) * 8)) != Some(e.gate)
            || gdt_raw(m, e.target.cs.selector) != Some(e.cs_desc)
        {
            return false;
        }
        let (ss_base, esp) = match (e.target.ss, e.ss_desc) {
            (Some(ss), Some(ss_desc)) => {
                if e.tr != m.cpu.tr {
                    return false;
                }
                let Some((ss_sel, esp0)) = ring0_stack(m) else { return false };
                if ss_sel != ss.selector || gdt_raw(m, ss.selector) != Some(ss_desc) {
                    return false;
                }
                (ss.base, esp0)
            }
            _ => (m.cpu.seg[sreg::SS].base, m.ctx.gpr[4]),
        };
        let mut frame = [0u32; 5];
        frame[..2].copy_from_slice(&[u32::from(m.cpu.seg[sreg::SS].selector), m.ctx.gpr[4]]);
        frame[2..].copy_from_slice(&[read_eflags(m), u32::from(m.cpu.seg[sreg::CS].selector), return_eip]);
        // The same-ring frame has no SS:ESP (and a handler at CPL 3 pushes as user).
        let words = if e.target.ss.is_some() { &frame[..] } else { &frame[2..] };
        let Ok(new_esp) = write_frame(m, ss_base, esp, words, 4, e.from_cpl == 3 && e.target.ss.is_none()) else {
            return false;
        };
        commit_gate(m, e.target, new_esp);
        true
    }

    /// Keeps the delivery of `vector` the full path just made from `from_cpl`,
    /// if it went through a 32-bit gate to ring 0 with GDT selectors.
    pub(crate) fn record_delivery(&mut self, m: &mut Machine<'_>, vector: u8, source: EventSource, from_cpl: u8) {
        self.entry = None;
        let (cs, ss) = (m.cpu.seg[sreg::CS], m.cpu.seg[sreg::SS]);
        if !matches!(from_cpl, 0 | 3) || !plain_mode(m) || m.cpu.cpl() != 0 || cs.attrs & 0x4000 == 0 {
            return;
        }
        let Some(gate) = raw(m, m.cpu.idtr.base.wrapping_add(u32::from(vector) * 8)) else { return };
        let gate_type = (gate >> 40) & 0x1f;
        if !matches!(gate_type, 0xe | 0xf) {
            return;
        }
        let Some(cs_desc) = gdt_raw(m, cs.selector) else { return };
        let inner = from_cpl != 0;
        let ss_desc = if inner {
            let Some(d) = gdt_raw(m, ss.selector) else { return };
            Some(d)
        } else {
            None
        };
        let target = GateTarget { offset: m.ctx.eip, cs, ss: inner.then_some(ss), interrupt_gate: gate_type == 0xe };
        let cpu = &m.cpu;
        let (idtr, gdtr, tr) = (cpu.idtr, cpu.gdtr, cpu.tr);
        self.entry = Some(Entry { vector, source, from_cpl, idtr, gdtr, tr, gate, cs_desc, ss_desc, target });
    }

    /// Returns with `iretd` as the recorded return did, if the frame names the
    /// same selectors and their descriptors are unchanged; false: nothing was
    /// done.
    pub(crate) fn iret(&self, m: &mut Machine<'_>) -> bool {
        let Some(x) = self.exit else { return false };
        if !plain_mode(m) || m.cpu.cpl() != 0 || m.cpu.gdtr != x.gdtr {
            return false;
        }
        let esp = m.ctx.gpr[4];
        let at = m.cpu.seg[sreg::SS].base.wrapping_add(esp);
        let mut b = [0u8; 20];
        let len = if x.outer.is_some() { 20 } else { 12 };
        if at & 0xfff > 0x1000 - len || read_linear_as(m, at, &mut b[..len as usize], false).is_err() {
            return false;
        }
        let word = |k: usize| u32::from_le_bytes([b[4 * k], b[4 * k + 1], b[4 * k + 2], b[4 * k + 3]]);
        let (eip, cs_sel, flags) = (word(0), word(1), word(2));
        if cs_sel != u32::from(x.cs.selector) || flags & eflags::VM != 0 || eip > x.cs.limit {
            return false;
        }
        let outer = match x.outer {
            Some((ss, ss_desc)) => {
                if word(4) != u32::from(ss.selector) || gdt_raw(m, ss.selector) != Some(ss_desc) {
                    return false;
                }
                Some((ss, word(3)))
            }
            None => None,
        };
        if gdt_raw(m, x.cs.selector) != Some(x.cs_desc) {
            return false;
        }
        commit_iret(m, 4, &IretFrame { eip, cs: x.cs, flags, outer }, esp.wrapping_add(12));
        true
    }

    /// Keeps the `iretd` the full path just made, if it went from ring 0
    /// (`from_cpl`) to ring 0 or CPL 3 with GDT selectors.
    pub(crate) fn record_iret(&mut self, m: &mut Machine<'_>, from_cpl: u8) {
        self.exit = None;
        let (cs, ss) = (m.cpu.seg[sreg::CS], m.cpu.seg[sreg::SS]);
        if from_cpl != 0 || !plain_mode(m) {
            return;
        }
        let Some(cs_desc) = gdt_raw(m, cs.selector) else { return };
        let outer = if m.cpu.cpl() == 0 {
            None
        } else {
            let Some(ss_desc) = gdt_raw(m, ss.selector) else { return };
            Some((ss, ss_desc))
        };
        self.exit = Some(Exit { gdtr: m.cpu.gdtr, cs, cs_desc, outer });
    }
}

#[cfg(test)]
mod tests {
    use super::super::delivery::{deliver, iret};
    use super::super::testutil::gates::*;
    use super::super::testutil::*;
    use super::*;
    use crate::cpu::Cpu;

    /// What a delivery or return may change: the CPU, the registers, the stacks.
    type State = (Cpu, [u32; 8], u32, u32, u8, u64, Vec<u8>, Vec<u8>);

    fn state(t: &TestMachine) -> State {
        let c = &t.ctx;
        let stacks = (t.read(KSTACK - 32, 32), t.read(STACK_TOP - 32, 32));
        (t.cpu.clone(), c.gpr, c.eip, c.sys_flags, c.vif, c.rflags, stacks.0, stacks.1)
    }

    fn with<R>(t: &mut TestMachine, f: impl FnOnce(&mut Machine<'_>) -> R) -> R {
        f(&mut Machine { cpu: &mut t.cpu, ctx: &mut t.ctx, mem: &mut t.mem, io: &mut t.io })
    }

    /// A copy of what delivery and iret use of `t`.
    fn clone_machine(t: &TestMachine) -> TestMachine {
        let mut c = TestMachine::new();
        c.cpu = t.cpu.clone();
        c.mem.0.copy_from_slice(&t.mem.0);
        (c.ctx.gpr, c.ctx.eip, c.ctx.sys_flags, c.ctx.vif, c.ctx.rflags) =
            (t.ctx.gpr, t.ctx.eip, t.ctx.sys_flags, t.ctx.vif, t.ctx.rflags);
        c
    }

    /// A user machine about to make system call 0x80 (a trap gate) from esp 0x7000.
    fn user_machine() -> TestMachine {
        let mut t = machine();
        t.set_cpl(3);
        t.ctx.vif = 1;
        t.ctx.gpr[4] = 0x7000;
        t.ctx.rflags = 0x8d5;
        t
    }

    /// Records a full delivery of 0x80 from `t`, and returns the state it left.
    fn record(cache: &mut GateCache, t: &mut TestMachine, source: EventSource) -> State {
        let from = t.cpu.cpl();
        with(t, |m| {
            deliver(m, 0x80, None, source, 0x1234).unwrap();
            cache.record_delivery(m, 0x80, source, from);
        });
        state(t)
    }

    #[test]
    fn a_kept_system_call_and_return_equal_the_full_ones() {
        let mut cache = GateCache::default();
        let mut t = user_machine();
        let full = record(&mut cache, &mut t, EventSource::Software);
        let mut t = user_machine();
        assert!(with(&mut t, |m| cache.deliver(m, 0x80, EventSource::Software, 0x1234)));
        assert_eq!(state(&t), full, "kept delivery");
        assert!(!with(&mut t, |m| cache.deliver(m, 0x81, EventSource::Software, 0x1234)), "another vector");

        // The handler returns: full, then kept.
        t.write_u32(KSTACK - 12, 0x246 | eflags::AC | eflags::IOPL); // what the handler left to pop
        let mut after_full = clone_machine(&t);
        let site = after_full.site(&[0xcf]);
        with(&mut after_full, |m| {
            iret(m, &site).unwrap();
            cache.record_iret(m, 0);
        });
        assert!(with(&mut t, |m| cache.iret(m)));
        assert_eq!(state(&t), state(&after_full), "kept iret");
        assert_eq!((t.cpu.cpl(), t.ctx.gpr[4], t.ctx.eip), (3, 0x7000, 0x1234));
    }

    /// A changed gate, handler descriptor, ring-0 stack or user descriptor is not
    /// taken from the cache; the full path then sees the change.
    #[test]
    fn a_changed_input_is_not_kept() {
        type Change = (&'static str, fn(&mut TestMachine));
        let changes: [Change; 5] = [
            ("gate DPL 0", |t| gate(t, 0x80, 0x8f)),
            ("gate offset", |t| t.write_u16(IDT + 0x80 * 8, 0x5010)),
            ("handler not present", |t| t.set_gdt(1, desc(0, 0xfffff, 0x1b, 0xc))),
            ("another ring-0 SS", |t| t.write_u32(TSS + 8, 0x18)),
            ("another IDT base", |t| t.cpu.idtr.base += 8),
        ];
        for (what, change) in changes {
            let mut cache = GateCache::default();
            record(&mut cache, &mut user_machine(), EventSource::Software);
            let mut t = user_machine();
            change(&mut t);
            let before = state(&t);
            assert!(!with(&mut t, |m| cache.deliver(m, 0x80, EventSource::Software, 0x1234)), "{what}");
            assert_eq!(state(&t).0, before.0, "{what}: nothing changed");
        }
        // An exception through the same gate is another event (no DPL check).
        let mut cache = GateCache::default();
        record(&mut cache, &mut user_machine(), EventSource::Software);
        assert!(!with(&mut user_machine(), |m| cache.deliver(m, 0x80, EventSource::Exception, 0x1234)));
    }

    #[test]
    fn a_return_to_other_selectors_or_a_changed_descriptor_is_not_kept() {
        let mut cache = GateCache::default();
        let mut t = user_machine();
        record(&mut cache, &mut t, EventSource::Software);
        let kernel = clone_machine(&t);
        let site = t.site(&[0xcf]);
        with(&mut t, |m| {
            iret(m, &site).unwrap();
            cache.record_iret(m, 0);
        });
        let mut t = clone_machine(&kernel);
        t.set_gdt(3, desc(0, 0xfffff, 0x7b, 0xc)); // user code not present
        assert!(!with(&mut t, |m| cache.iret(m)), "changed user code descriptor");
        let mut t = clone_machine(&kernel);
        t.write_u32(KSTACK - 16, 0x1b | 0x100); // another code selector in the frame
        assert!(!with(&mut t, |m| cache.iret(m)), "another selector");
        let mut t = clone_machine(&kernel);
        t.write_u32(KSTACK - 12, 0x2 | eflags::VM); // to virtual-8086 mode
        assert!(!with(&mut t, |m| cache.iret(m)), "VM set");
        let mut t = clone_machine(&kernel);
        assert!(with(&mut t, |m| cache.iret(m)), "unchanged");
    }
}
