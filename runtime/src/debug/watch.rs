//! Watchpoints: the memory a guest instruction is about to access, worked out
//! from its decoded form and the registers before it runs (iced-x86's
//! instruction info), and the watched range such an access touches.

use iced_x86::{Instruction, InstructionInfoFactory, OpAccess, OpKind, Register};

/// What a watchpoint reacts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WatchKind {
    Write,
    Read,
    /// Reads and writes.
    Access,
}

/// A watched range of guest linear addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watchpoint {
    pub addr: u32,
    pub len: u32,
    pub kind: WatchKind,
}

/// One memory access of an instruction: `len` bytes from linear `addr` (a
/// repeated string instruction covers all its iterations, hence u64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MemAccess {
    pub addr: u32,
    pub len: u64,
    pub read: bool,
    pub write: bool,
}

/// A watchpoint an instruction triggered: the first watched byte it accessed,
/// and the watchpoint's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchHit {
    pub addr: u32,
    pub kind: WatchKind,
}

/// The accesses `ins` makes with the register values `reg` gives (for a segment
/// register: its base). `down`: EFLAGS.DF is set (string instructions go down).
pub(crate) fn accesses(ins: &Instruction, down: bool, reg: impl Fn(Register) -> u64) -> Vec<MemAccess> {
    thread_local! {
        // One per thread: a new factory allocates, and page probes ask often.
        static FACTORY: std::cell::RefCell<InstructionInfoFactory> = std::cell::RefCell::new(InstructionInfoFactory::new());
    }
    FACTORY.with_borrow_mut(|factory| accesses_with(factory, ins, down, reg))
}

fn accesses_with(
    factory: &mut InstructionInfoFactory,
    ins: &Instruction,
    down: bool,
    reg: impl Fn(Register) -> u64,
) -> Vec<MemAccess> {
    let info = factory.info(ins);
    let repeats = repeat_count(ins, &reg);
    info.used_memory()
        .iter()
        .filter_map(|m| {
            let (read, write) = match m.access() {
                OpAccess::Read | OpAccess::CondRead => (true, false),
                OpAccess::Write | OpAccess::CondWrite => (false, true),
                OpAccess::ReadWrite | OpAccess::ReadCondWrite => (true, true),
                _ => return None,
            };
            let first = m.virtual_address(0, |r, _, _| Some(reg(r)))?;
            // iced gives a repeated string instruction's accesses no size: its
            // element size is the instruction's.
            let size = match repeats {
                Some(_) => ins.memory_size().size(),
                None => m.memory_size().size(),
            };
            let size = (size as u64).max(1);
            let (start, len) = match repeats {
                // A repeated string instruction walks its pointers ecx times.
                Some(0) => return None,
                Some(n) if down => (first.wrapping_sub((n - 1) * size), n * size),
                Some(n) => (first, n * size),
                None => (first, size),
            };
            #[allow(clippy::cast_possible_truncation)]
            let addr = start as u32;
            Some(MemAccess { addr, len, read, write })
        })
        .collect()
}

/// How many times a `rep`-prefixed string instruction runs (ecx, or cx with a
/// 16-bit address size); None for any other instruction.
fn repeat_count(ins: &Instruction, reg: &impl Fn(Register) -> u64) -> Option<u64> {
    if !ins.is_string_instruction() || !(ins.has_rep_prefix() || ins.has_repne_prefix()) {
        return None;
    }
    let count = reg(Register::ECX);
    Some(if addresses_16_bit(ins) { count & 0xffff } else { count & 0xffff_ffff })
}

/// A string instruction with the address-size prefix: si/di and cx.
fn addresses_16_bit(ins: &Instruction) -> bool {
    (0..ins.op_count()).any(|i| matches!(ins.op_kind(i), OpKind::MemorySegSI | OpKind::MemorySegDI | OpKind::MemoryESDI))
}

/// The first watchpoint in `watchpoints` that one of `accesses` triggers.
pub(crate) fn hit(watchpoints: &[Watchpoint], accesses: &[MemAccess]) -> Option<WatchHit> {
    accesses.iter().find_map(|a| {
        watchpoints.iter().find_map(|w| {
            let reacts = match w.kind {
                WatchKind::Write => a.write,
                WatchKind::Read => a.read,
                WatchKind::Access => a.read || a.write,
            };
            let start = u64::from(a.addr).max(u64::from(w.addr));
            let end = (u64::from(a.addr) + a.len).min(u64::from(w.addr) + u64::from(w.len));
            #[allow(clippy::cast_possible_truncation)]
            (reacts && start < end).then_some(WatchHit { addr: start as u32, kind: w.kind })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};

    fn decode(bytes: &[u8]) -> Instruction {
        Decoder::with_ip(32, bytes, 0x1000, DecoderOptions::NONE).decode()
    }

    /// eax = 0x100, ecx = 3, esp = 0x8000, esi = 0x2000, edi = 0x3000; segment bases 0.
    fn regs(r: Register) -> u64 {
        match r {
            Register::EAX => 0x100,
            Register::ECX => 3,
            Register::ESP => 0x8000,
            Register::ESI => 0x2000,
            Register::EDI => 0x3000,
            _ => 0,
        }
    }

    #[test]
    fn a_store_writes_its_operand() {
        // mov %ecx, 0x10(%eax)
        let a = accesses(&decode(&[0x89, 0x48, 0x10]), false, regs);
        assert_eq!(a, vec![MemAccess { addr: 0x110, len: 4, read: false, write: true }]);
    }

    #[test]
    fn push_writes_below_the_stack_pointer() {
        // push %eax
        let a = accesses(&decode(&[0x50]), false, regs);
        assert_eq!(a, vec![MemAccess { addr: 0x7ffc, len: 4, read: false, write: true }]);
    }

    #[test]
    fn repeated_strings_cover_every_iteration() {
        // rep movsl: 3 dwords from esi to edi
        let a = accesses(&decode(&[0xf3, 0xa5]), false, regs);
        assert!(a.contains(&MemAccess { addr: 0x2000, len: 12, read: true, write: false }), "{a:?}");
        assert!(a.contains(&MemAccess { addr: 0x3000, len: 12, read: false, write: true }), "{a:?}");
        // the same with DF set: down from edi
        let a = accesses(&decode(&[0xf3, 0xa5]), true, regs);
        assert!(a.contains(&MemAccess { addr: 0x2ff8, len: 12, read: false, write: true }), "{a:?}");
    }

    #[test]
    fn lea_touches_no_memory() {
        // lea 0x10(%eax), %ecx
        assert!(accesses(&decode(&[0x8d, 0x48, 0x10]), false, regs).is_empty());
    }

    #[test]
    fn hits_need_an_overlap_and_a_matching_kind() {
        let w = [Watchpoint { addr: 0x112, len: 4, kind: WatchKind::Write }];
        let store = MemAccess { addr: 0x110, len: 4, read: false, write: true };
        assert_eq!(hit(&w, &[store]), Some(WatchHit { addr: 0x112, kind: WatchKind::Write }));
        let load = MemAccess { write: false, read: true, ..store };
        assert_eq!(hit(&w, &[load]), None, "a read does not trigger a write watchpoint");
        let beside = MemAccess { addr: 0x10e, ..store };
        assert_eq!(hit(&w, &[beside]), None, "0x10e..0x112 ends where the watch starts");
        let r = [Watchpoint { kind: WatchKind::Access, ..w[0] }];
        assert_eq!(hit(&r, &[load]).map(|h| h.kind), Some(WatchKind::Access));
    }
}

/// The guest's own data breakpoints: DR0-DR3 enabled in DR7 (L or G bit) for
/// writes (R/W 01) or for reads and writes (11), each `len` bytes (LEN 00, 01, 11,
/// and 10 taken as 8) at its address rounded down to that size. Instruction and
/// I/O breakpoints (R/W 00, 10) are not here.
pub(crate) fn guest_breakpoints(dr: &[u32; 8]) -> Vec<(u32, Watchpoint)> {
    let dr7 = dr[7];
    (0..4u32)
        .filter(|n| dr7 & (3 << (2 * n)) != 0)
        .filter_map(|n| {
            let kind = match (dr7 >> (16 + 4 * n)) & 3 {
                1 => WatchKind::Write,
                3 => WatchKind::Access,
                _ => return None,
            };
            let len = match (dr7 >> (18 + 4 * n)) & 3 {
                0 => 1,
                1 => 2,
                2 => 8,
                _ => 4,
            };
            Some((n, Watchpoint { addr: dr[n as usize] & !(len - 1), len, kind }))
        })
        .collect()
}

/// The DR6 bits (B0-B3) of the guest breakpoints `accesses` hit.
pub(crate) fn guest_hits(breakpoints: &[(u32, Watchpoint)], accesses: &[MemAccess]) -> u32 {
    breakpoints.iter().filter(|(_, w)| hit(std::slice::from_ref(w), accesses).is_some()).fold(0, |bits, (n, _)| bits | 1 << n)
}

#[cfg(test)]
mod guest_tests {
    use super::*;

    #[test]
    fn dr7_decodes_to_data_breakpoints() {
        let mut dr = [0x1003, 0x2000, 0x3000, 0x4000, 0, 0, 0, 0];
        // DR0: L0, write, 4 bytes; DR1: G1, read/write, 1 byte; DR2: L2, execute
        // (left out); DR3: disabled.
        dr[7] = 0b01 | 0b1000 | 0b1_0000 | (0b1101 << 16) | (0b0011 << 20) | (0b1101 << 28); // DR2's R/W, LEN: 00
        let bps = guest_breakpoints(&dr);
        assert_eq!(bps, vec![(0, Watchpoint { addr: 0x1000, len: 4, kind: WatchKind::Write }), (1, Watchpoint { addr: 0x2000, len: 1, kind: WatchKind::Access })]);
        let store = MemAccess { addr: 0x1002, len: 4, read: false, write: true };
        let load = MemAccess { addr: 0x1ffe, len: 4, read: true, write: false };
        assert_eq!(guest_hits(&bps, &[store]), 0b01);
        assert_eq!(guest_hits(&bps, &[load]), 0b10, "a read does not hit a write breakpoint");
        assert_eq!(guest_hits(&bps, &[store, load]), 0b11);
    }
}
