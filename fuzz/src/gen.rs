//! Generators: guest bodies (items of random and structured code), oracle snippets
//! and kernel images. Each case is a pure function of (seed, index).
//!
//! The item families: random bytes; random *valid* instructions (random bytes
//! decoded, the first instruction kept); system instructions with random operands
//! (descriptor tables, task and LDT registers, control and debug registers, segment
//! loads); far jumps, calls and returns and `iret` with crafted frames; `int n`;
//! port I/O; MSRs; `cpuid`; `sysenter`/`sysexit`; string instructions with huge
//! counts and either direction; self-modifying stores; accesses that wrap around
//! 4 GiB or 0; page-table and descriptor writes; x87/SSE state saves and loads
//! (probed: see [`crate::case::Probe`]); flags (TF, AC, NT, IOPL, VM ...);
//! branches; instructions the host has but the guest CPU lacks; over-long
//! instructions.

use crate::case::{Body, Bytes, Case, ImageKind, LoaderCase, OracleCase, Probe, ProbeKind};
use crate::harness::{self as h, sel, BodyItem, Harness};
use crate::rng::Rng;
use iced_x86::code_asm as x;
#[cfg(test)]
use iced_x86::code_asm::CodeAssembler;
use iced_x86::{Decoder, DecoderOptions};

/// Per-case generation state.
pub struct Gen<'a> {
    pub r: &'a mut Rng,
    pub cpl: u8,
    pub paging: bool,
    pub probes: Vec<Probe>,
}

/// How a family is called in reproducers and statistics, and its weight.
type Family = (&'static str, u32, fn(&mut Gen<'_>) -> BodyItem);

/// Every item family with its weight.
pub const FAMILIES: &[Family] = &[
    ("random-bytes", 6, random_bytes),
    ("random-insn", 20, random_insn),
    ("system", 14, system),
    ("far", 8, far_transfer),
    ("int", 5, int_n),
    ("io", 6, port_io),
    ("msr", 4, msr),
    ("cpuid", 2, cpuid),
    ("sysenter", 2, sysenter),
    ("rep-string", 6, rep_string),
    ("smc", 5, self_modifying),
    ("wrap", 5, wrap_around),
    ("page-table", 5, page_table),
    ("descriptor", 4, descriptor),
    ("fpu-state", 8, fpu_state),
    ("flags", 5, flags),
    ("branch", 4, branch),
    ("debug-reg", 3, debug_regs),
    ("host-only", 5, host_only),
    ("long-insn", 2, long_insn),
];

/// One item from the weighted families.
pub fn item(g: &mut Gen<'_>) -> BodyItem {
    let weights: Vec<u32> = FAMILIES.iter().map(|f| f.1).collect();
    let (_, _, f) = FAMILIES[g.r.weighted(&weights)];
    f(g)
}

/// Case `index` of the guest-code campaign with `seed`.
pub fn guest_case(seed: u64, index: u64) -> Case {
    let mut r = Rng::for_case(seed, index);
    let cpl = if r.chance(1, 2) { 3 } else { 0 };
    let paging = r.chance(1, 2);
    let timer = r.chance(1, 3);
    let mut harness = Harness::random(&mut r, cpl, paging, timer);
    let n = r.range(8, 100);
    let mut g = Gen { r: &mut r, cpl, paging, probes: Vec::new() };
    let items: Vec<BodyItem> = (0..n).map(|_| item(&mut g)).collect();
    harness.probes = g.probes;
    let timeout = if timer { 300 } else { 200 };
    Case { seed, index, generator: "guest".into(), body: Body::Guest(harness.build(&items, timeout)) }
}

// --------------------------------------------------------------------------------
// operand helpers

/// A selector: one of the harness's, a random one, with a random RPL or TI now
/// and then.
fn selector(r: &mut Rng) -> u16 {
    let known = [
        0u16,
        sel::KCODE,
        sel::KDATA,
        sel::UCODE,
        sel::UDATA,
        sel::LDT,
        sel::CONFORMING,
        sel::BASED_DATA,
        sel::EXPAND_DOWN,
        sel::CODE16,
        sel::BASED_CODE,
        sel::READ_ONLY,
        sel::EXEC_ONLY,
        sel::DATA16,
        0x0c | 3,
        0x14 | 3,
        0x1c | 3,
    ];
    // Gates and TSSs seldom: bt86 stops at a far transfer through them today, which
    // would end a fifth of the runs early.
    let gates = [sel::TSS, sel::TSS2, sel::CALL_GATE, sel::CALL_GATE_PARAMS, sel::TASK_GATE];
    let s = match r.below(40) {
        0..=5 => r.u16(),
        6..=11 => sel::RANDOM + 8 * r.below(12) as u16,
        12 => r.pick(&gates),
        _ => r.pick(&known),
    };
    if r.chance(1, 4) {
        (s & !3) | r.below(4) as u16
    } else {
        s
    }
}

/// An address: mostly in the data area, sometimes anywhere interesting.
fn address(r: &mut Rng) -> u32 {
    match r.below(10) {
        0 => r.u32(),
        1 => 0u32.wrapping_sub(r.below(16)),
        2 => r.below(16),
        3 => h::BODY + r.below(0x2000),
        4 => r.pick(&[h::GDT, h::IDT, h::TSS, h::PD, h::PT_LOW, h::RECORD, h::KSTACK_TOP - 0x40]) + r.below(0x100),
        _ => h::DATA + r.below(h::DATA_LEN),
    }
}

fn gpr(r: &mut Rng) -> x::AsmRegister32 {
    use x::*;
    r.pick(&[eax, ecx, edx, ebx, ebp, esi, edi])
}

/// Raw bytes assembled through `db`.
fn raw(kind: &str, bytes: Vec<u8>) -> BodyItem {
    BodyItem::raw(kind, bytes)
}

// --------------------------------------------------------------------------------
// families

fn random_bytes(g: &mut Gen<'_>) -> BodyItem {
    let n = g.r.range(1, 13) as usize;
    let mut b = g.r.bytes(n);
    if g.r.chance(1, 2) {
        b.insert(0, 0x0f);
    }
    raw("random-bytes", b)
}

/// Random bytes decoded as 32-bit code; the first instruction is kept (valid or not).
fn random_insn(g: &mut Gen<'_>) -> BodyItem {
    let r = &mut *g.r;
    let mut b = Vec::new();
    for _ in 0..r.below(3) {
        b.push(r.pick(&[0x66, 0x67, 0xf2, 0xf3, 0xf0, 0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65]));
    }
    match r.below(6) {
        0 | 1 => {}
        2 | 3 => b.push(0x0f),
        4 => b.extend_from_slice(&[0x0f, r.pick(&[0x38, 0x3a, 0x01, 0x00, 0xae, 0xc7])]),
        _ => b.push(r.pick(&[0xc4, 0xc5, 0x62, 0x8f, 0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf])),
    }
    b.extend(r.bytes(15));
    let ins = Decoder::with_ip(32, &b, 0, DecoderOptions::NONE).decode();
    let len = ins.len().clamp(1, 15);
    b.truncate(len);
    raw("random-insn", b)
}

fn system(g: &mut Gen<'_>) -> BodyItem {
    use x::*;
    let r = &mut *g.r;
    let s = selector(r);
    let reg = gpr(r);
    let value = r.edgy_u32();
    let slot = h::DATA + r.below(0x1000) * 8;
    let limit = { let z0 = r.u16(); r.pick(&[0u16, 7, 0xff, 0x7ff, 0xffff, z0]) };
    let base = { let z0 = r.u32(); r.pick(&[h::GDT, h::IDT, h::DATA, 0, 0xffff_fff0, z0]) };
    let restore = r.chance(3, 4);
    let bit = 1u32 << r.below(32);
    let which = r.below(13);
    let cr = r.pick(&[0u8, 0, 2, 3, 4, 4, 8]);
    let kind = format!("system-{which}");
    BodyItem::new(kind, move |a, _| match which {
        0 | 1 => {
            // lgdt/lidt of a crafted pseudo-descriptor, then maybe the harness's again.
            a.mov(word_ptr(u64::from(slot)), u32::from(limit))?;
            a.mov(dword_ptr(u64::from(slot + 2)), base)?;
            if which == 0 {
                a.lgdt(ptr(u64::from(slot)))?;
            } else {
                a.lidt(ptr(u64::from(slot)))?;
            }
            if restore {
                a.lgdt(ptr(u64::from(h::GDTR)))?;
                a.lidt(ptr(u64::from(h::IDTR)))?;
            }
            Ok(())
        }
        2 => {
            a.mov(reg, u32::from(s))?;
            a.ltr(reg)
        }
        3 => {
            a.mov(reg, u32::from(s))?;
            a.lldt(reg)
        }
        4 | 5 => {
            // A control register: one bit flipped, or a random value.
            let crn = match cr {
                0 => cr0,
                2 => cr2,
                3 => cr3,
                4 => cr4,
                _ => cr8,
            };
            if cr == 8 {
                // lock mov %eax,%cr0: AMD's encoding of mov %eax,%cr8.
                return a.db(&[0xf0, 0x0f, 0x22, 0xc0]);
            }
            a.mov(reg, crn)?;
            if which == 4 {
                a.xor(reg, bit)?;
            } else {
                a.mov(reg, value)?;
            }
            a.mov(crn, reg)
        }
        6 => {
            // Segment register loads.
            a.mov(eax, u32::from(s))?;
            match value % 6 {
                0 => a.mov(ds, ax),
                1 => a.mov(es, ax),
                2 => a.mov(fs, ax),
                3 => a.mov(gs, ax),
                4 => a.mov(ss, ax),
                _ => {
                    a.push(eax)?;
                    a.pop(fs)
                }
            }
        }
        7 => {
            // lds/les/lfs/lgs/lss from a far pointer in memory.
            a.mov(dword_ptr(u64::from(slot)), value)?;
            a.mov(word_ptr(u64::from(slot + 4)), u32::from(s))?;
            let m = fword_ptr(u64::from(slot));
            match bit % 5 {
                0 => a.lds(reg, m),
                1 => a.les(reg, m),
                2 => a.lfs(reg, m),
                3 => a.lgs(reg, m),
                _ => a.lss(reg, m),
            }
        }
        8 => {
            // Descriptor queries and sensitive reads.
            a.mov(reg, u32::from(s))?;
            a.lar(eax, reg)?;
            a.lsl(ecx, reg)?;
            a.verr(reg)?;
            a.verw(reg)?;
            a.sgdt(ptr(u64::from(slot)))?;
            a.sidt(ptr(u64::from(slot + 8)))?;
            a.sldt(eax)?;
            a.str(eax)?;
            a.smsw(eax)
        }
        9 => {
            a.mov(eax, value)?;
            a.lmsw(ax)?;
            a.clts()
        }
        10 => {
            a.invlpg(ptr(u64::from(base)))?;
            a.wbinvd()?;
            a.invd()
        }
        11 => {
            a.mov(ax, u32::from(s))?;
            a.arpl(word_ptr(u64::from(slot)), ax)
        }
        _ => {
            // Stack segment with a crafted esp, then a push through it.
            a.mov(ebp, esp)?;
            a.mov(eax, u32::from(s))?;
            a.mov(ss, ax)?;
            a.mov(esp, value)?;
            a.push(eax)?;
            a.mov(esp, ebp)
        }
    })
}

fn far_transfer(g: &mut Gen<'_>) -> BodyItem {
    use x::*;
    let r = &mut *g.r;
    let s = selector(r);
    // Task switches (5) only now and then: bt86 stops on them today.
    let which = if r.chance(1, 12) { 5 } else { r.below(5) };
    let flag_bits = [0x100u32, 0x200, 0x3000, 0x1000, 0x4000, 0x1_0000, 0x2_0000, 0x4_0000, 0x20_0000, 0x400, 0x80];
    let mut eflags = 0x2;
    for _ in 0..r.below(4) {
        eflags |= r.pick(&flag_bits);
    }
    let stack_sel = if r.chance(3, 4) { sel::UDATA } else { selector(r) };
    let esp_value = if r.chance(3, 4) { h::USTACK_TOP - 0x100 - r.below(0x100) * 4 } else { r.edgy_u32() };
    let to_user = r.chance(1, 2);
    let off_random = r.chance(1, 16);
    let random_off = r.u32();
    BodyItem::new(format!("far-{which}"), move |a, at| {
        let target = if off_random { random_off } else { at.next };
        match which {
            0 => a.jmp_far(s, target),
            1 => a.call_far(s, target),
            2 | 3 => {
                // lret / iret with a crafted frame (to ring 3 or the same level).
                if to_user || which == 3 {
                    a.push(u32::from(stack_sel))?;
                    a.push(esp_value)?;
                }
                if which == 3 {
                    a.push(eflags)?;
                }
                a.push(u32::from(s))?;
                a.push(target)?;
                if which == 2 {
                    a.retf()
                } else {
                    a.iretd()
                }
            }
            4 => {
                // A far jump through a pointer in memory (16:32 or 16:16).
                a.mov(dword_ptr(u64::from(h::DATA + 0x10)), target)?;
                a.mov(word_ptr(u64::from(h::DATA + 0x14)), u32::from(s))?;
                a.jmp(fword_ptr(u64::from(h::DATA + 0x10)))
            }
            _ => {
                // A task switch: through the TSS or the task gate.
                a.call_far(if to_user { sel::TSS2 } else { sel::TASK_GATE }, 0)
            }
        }
    })
}

fn int_n(g: &mut Gen<'_>) -> BodyItem {
    let r = &mut *g.r;
    let b = match r.below(8) {
        0 => vec![0xcc],
        1 => vec![0xce],                            // into
        2 => vec![0xb0, 0x7f, 0x04, 0x7f, 0xce],    // mov $0x7f,%al; add $0x7f,%al; into (OF set)
        3 => vec![0xf1],                            // int1
        4 => vec![0x0f, 0x0b],                      // ud2
        5 => vec![0x62, 0x05, 0x00, 0x00, 0x20, 0x00], // bound (DATA)
        _ => vec![0xcd, r.u8()],
    };
    raw("int", b)
}

/// Device ports, biased; the exit and reset ports only rarely.
fn port(r: &mut Rng) -> u16 {
    if r.chance(1, 60) {
        return r.pick(&[0xf4, 0x64, 0xcf9, 0x92]);
    }
    r.pick(&[0x20u16, 0x21, 0xa0, 0xa1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x70, 0x71, 0x3f8, 0x3f9, 0x3fa, 0x3fb, 0x3fc, 0x3fd, 0x60, 0x80, 0xcf8, 0xcfc, 0x3d4, 0x3d5, 0x3c0, 0x4d0, 0x4d1])
        .wrapping_add(if r.chance(1, 5) { r.u16() } else { 0 })
}

fn port_io(g: &mut Gen<'_>) -> BodyItem {
    use x::*;
    let r = &mut *g.r;
    let p = port(r);
    let value = r.u32();
    let which = r.below(8);
    let count = { let z0 = r.u32(); r.pick(&[0u32, 1, 2, 16, 0x1000, 0xffff_ffff, z0]) };
    let ptr_v = address(r);
    let std = r.chance(1, 3);
    BodyItem::new(format!("io-{which}"), move |a, _| {
        a.mov(edx, u32::from(p))?;
        a.mov(eax, value)?;
        match which {
            0 => a.out(dx, al),
            1 => a.out(dx, ax),
            2 => a.out(dx, eax),
            3 => a.in_(al, dx),
            4 => a.in_(eax, dx),
            5 => {
                a.out(u32::from(p as u8), al)?;
                a.in_(ax, u32::from(p as u8))
            }
            _ => {
                a.mov(ecx, count)?;
                a.mov(edi, ptr_v)?;
                a.mov(esi, ptr_v)?;
                if std {
                    a.std()?;
                }
                if which == 6 {
                    a.rep().insb()?;
                } else {
                    a.rep().outsd()?;
                }
                a.cld()
            }
        }
    })
}

fn msr(g: &mut Gen<'_>) -> BodyItem {
    use x::*;
    let r = &mut *g.r;
    let index = { let z0 = r.u32(); let z1 = r.u32(); r.pick(&[
        0x10, 0x1b, 0x3a, 0x8b, 0xc1, 0x174, 0x175, 0x176, 0x179, 0x17a, 0x186, 0x1a0, 0x1d9, 0x200, 0x277, 0x2ff, 0x400,
        0xc000_0080, 0xc000_0081, 0xc000_0100, 0xc000_0101, 0xc000_0102, 0xc001_0000, 0xc001_0004, 0xc001_0007,
        0xc001_0015, 0x4b56_4d00, z0, z1 & 0xfff,
    ]) };
    let (lo, hi) = (r.edgy_u32(), r.edgy_u32());
    let write = r.chance(1, 2);
    BodyItem::new(if write { "wrmsr" } else { "rdmsr" }, move |a, _| {
        a.mov(ecx, index)?;
        if write {
            a.mov(eax, lo)?;
            a.mov(edx, hi)?;
            a.wrmsr()
        } else {
            a.rdmsr()
        }
    })
}

fn cpuid(g: &mut Gen<'_>) -> BodyItem {
    use x::*;
    let r = &mut *g.r;
    let leaf = { let z0 = r.u32(); r.pick(&[0, 1, 2, 4, 6, 7, 0xa, 0xb, 0xd, 0x14, 0x4000_0000, 0x8000_0000, 0x8000_0001, 0x8000_0008, z0]) };
    let sub = { let z0 = r.u32(); r.pick(&[0, 1, z0]) };
    BodyItem::new("cpuid", move |a, _| {
        a.mov(eax, leaf)?;
        a.mov(ecx, sub)?;
        a.cpuid()
    })
}

fn sysenter(g: &mut Gen<'_>) -> BodyItem {
    use x::*;
    let r = &mut *g.r;
    let which = r.below(3);
    let stack = if r.chance(3, 4) { h::USTACK_TOP - 0x200 } else { r.u32() };
    BodyItem::new(format!("sysenter-{which}"), move |a, at| {
        a.mov(ecx, stack)?;
        a.mov(edx, at.next)?;
        match which {
            0 => a.sysenter(),
            1 => a.sysexit(),
            _ => a.db(&[0x0f, 0x05]), // syscall
        }
    })
}

fn rep_string(g: &mut Gen<'_>) -> BodyItem {
    use x::*;
    let r = &mut *g.r;
    let count = { let z0 = r.u32(); r.pick(&[0u32, 1, 7, 0x100, 0x1_0000, 0x10_0000, 0x8000_0000, 0xffff_ffff, z0]) };
    let near = |r: &mut Rng| match r.below(6) {
        0 => r.below(0x20),
        1 => 0u32.wrapping_sub(r.below(0x20)),
        2 => h::BODY + r.below(0x1000),
        3 => h::PT_LOW + r.below(0x1000),
        _ => h::DATA + r.below(h::DATA_LEN),
    };
    let (src, dst) = (near(r), near(r));
    let std = r.chance(1, 2);
    let op = r.below(15);
    let prefix = r.pick(&[0xf3u8, 0xf3, 0xf2]);
    let addr16 = r.chance(1, 10);
    BodyItem::new(format!("rep-string-{op}"), move |a, _| {
        a.mov(ecx, count)?;
        a.mov(esi, src)?;
        a.mov(edi, dst)?;
        a.mov(eax, src)?;
        if std {
            a.std()?;
        }
        let mut b = vec![prefix];
        if addr16 {
            b.insert(0, 0x67);
        }
        // movs, stos, lods, cmps, scas in byte, word, dword sizes.
        let (opcode, word) = match op {
            0..=2 => (0xa4, op),
            3..=5 => (0xaa, op - 3),
            6..=8 => (0xac, op - 6),
            9..=11 => (0xa6, op - 9),
            _ => (0xae, op - 12),
        };
        if word == 1 {
            b.push(0x66);
        }
        b.push(if word == 0 { opcode } else { opcode + 1 });
        a.db(&b)?;
        a.cld()
    })
}

fn self_modifying(g: &mut Gen<'_>) -> BodyItem {
    use x::*;
    let r = &mut *g.r;
    let which = r.below(4);
    let off = r.below(24);
    let value = r.u32();
    let byte = { let z0 = r.u8(); r.pick(&[0x90u8, 0xcc, 0xf4, 0xc3, 0x0b, z0]) };
    let back = r.below(0x400);
    BodyItem::new(format!("smc-{which}"), move |a, at| match which {
        // A byte ahead in this item (the instruction after the store).
        0 => {
            a.mov(byte_ptr(u64::from(at.at + 10)), u32::from(byte))?;
            a.nop()?;
            a.nop()?;
            a.nop()
        }
        1 => a.mov(dword_ptr(u64::from(at.next + off)), value),
        // Code already run (behind), and a whole run of the next item.
        2 => a.mov(byte_ptr(u64::from(at.at.saturating_sub(back).max(h::BODY))), u32::from(byte)),
        _ => {
            a.mov(edi, at.next)?;
            a.mov(esi, h::DATA)?;
            a.mov(ecx, 16 + off)?;
            a.rep().movsb()
        }
    })
}

fn wrap_around(g: &mut Gen<'_>) -> BodyItem {
    use x::*;
    let r = &mut *g.r;
    let addr = r.pick(&[0xffff_ffffu32, 0xffff_fffe, 0xffff_fffd, 0xffff_fffc, 0xffff_fff0, 0xffff_f000, 0, 1, 2, 0xfff, 0xffc]);
    let which = r.below(7);
    let disp = r.below(16);
    let esp_value = r.pick(&[0u32, 1, 2, 4, 0xffff_fffe]);
    BodyItem::new(format!("wrap-{which}"), move |a, _| match which {
        0 => a.mov(eax, dword_ptr(u64::from(addr))),
        1 => a.mov(dword_ptr(u64::from(addr)), eax),
        2 => a.mov(word_ptr(u64::from(addr)), 0x1234u32),
        3 => {
            // A base register with a displacement that wraps.
            a.mov(ebx, addr)?;
            a.mov(eax, dword_ptr(ebx + disp))?;
            a.add(dword_ptr(ebx - 4), eax)
        }
        4 => {
            // A push and a pop with esp at the edge.
            a.mov(ebp, esp)?;
            a.mov(esp, esp_value)?;
            a.push(eax)?;
            a.pop(ecx)?;
            a.mov(esp, ebp)
        }
        5 => a.movdqu(xmm0, xmmword_ptr(u64::from(addr))),
        _ => a.fld(qword_ptr(u64::from(addr))),
    })
}

fn page_table(g: &mut Gen<'_>) -> BodyItem {
    use x::*;
    let r = &mut *g.r;
    let entry = h::random_pte(r);
    let which = r.below(6);
    let index = if r.chance(1, 2) { (h::DATA >> 12) + r.below(h::DATA_LEN >> 12) } else { r.below(1024) };
    let pde = r.below(1024);
    let bit = r.pick(&[h::CR0_WP, h::CR0_PG, h::CR4_PSE, h::CR4_PGE]);
    BodyItem::new(format!("page-table-{which}"), move |a, _| match which {
        0 => {
            a.mov(dword_ptr(u64::from(h::PT_LOW + 4 * index)), entry)?;
            a.invlpg(ptr(u64::from(index << 12)))?;
            a.mov(eax, dword_ptr(u64::from(index << 12)))
        }
        1 => {
            a.mov(dword_ptr(u64::from(h::PD + 4 * pde)), entry)?;
            a.mov(eax, cr3)?;
            a.mov(cr3, eax)
        }
        2 => {
            // To the other directory and back.
            a.mov(eax, h::PD_ALT)?;
            a.mov(cr3, eax)?;
            a.mov(ecx, dword_ptr(u64::from(h::DATA)))?;
            a.mov(eax, h::PD)?;
            a.mov(cr3, eax)
        }
        3 => {
            // CR0.WP / CR0.PG off and on again.
            a.mov(eax, cr0)?;
            a.xor(eax, if bit == h::CR4_PGE { h::CR0_WP } else { bit })?;
            a.mov(cr0, eax)?;
            a.mov(ecx, dword_ptr(u64::from(h::DATA + 8)))?;
            a.xor(eax, if bit == h::CR4_PGE { h::CR0_WP } else { bit })?;
            a.mov(cr0, eax)
        }
        4 => {
            a.mov(eax, cr4)?;
            a.xor(eax, h::CR4_PGE | h::CR4_PSE)?;
            a.mov(cr4, eax)
        }
        _ => {
            // A random table entry, then a store through it.
            a.mov(dword_ptr(u64::from(h::PT_RANDOM + 4 * index)), entry)?;
            a.mov(dword_ptr(u64::from(0x40_0000 + (index << 12))), 0x5a5a_5a5au32)
        }
    })
}

fn descriptor(g: &mut Gen<'_>) -> BodyItem {
    use x::*;
    let r = &mut *g.r;
    // The harness's own descriptors (the handler needs them) only now and then.
    let index = if r.chance(1, 8) { r.range(1, h::GDT_ENTRIES) } else { r.range(u32::from(sel::RANDOM / 8), h::GDT_ENTRIES) };
    let d = match r.below(3) {
        0 => r.next_u64(),
        1 => h::seg_desc(r.edgy_u32(), r.u32() & 0xf_ffff, r.u8() | 0x90, r.u8()),
        _ => h::gate_desc({ let z0 = r.u16(); r.pick(&[sel::KCODE, sel::UCODE, z0]) }, r.u32(), { let z0 = r.u8(); r.pick(&[0xec, 0x8e, 0xe5, z0]) }, r.u8()),
    };
    let in_ldt = r.chance(1, 4);
    let load = r.below(4);
    BodyItem::new(format!("descriptor-{load}"), move |a, at| {
        let base = if in_ldt { h::LDT + 8 * (index % h::LDT_ENTRIES) } else { h::GDT + 8 * index };
        let s = if in_ldt { ((index % h::LDT_ENTRIES) << 3 | 4 | 3) as u16 } else { (index << 3) as u16 };
        a.mov(dword_ptr(u64::from(base)), d as u32)?;
        a.mov(dword_ptr(u64::from(base + 4)), (d >> 32) as u32)?;
        a.mov(eax, u32::from(s))?;
        match load {
            0 => a.mov(ds, ax),
            1 => a.mov(fs, ax),
            2 => a.call_far(s, at.next),
            _ => a.lar(ecx, eax),
        }
    })
}

/// x87/SSE state: a save into a probe area (checked after the run), or loads of
/// random state, ldmxcsr with random values.
fn fpu_state(g: &mut Gen<'_>) -> BodyItem {
    use x::*;
    let which = g.r.below(12);
    let kind = match which {
        0 | 1 => Some(ProbeKind::Fxsave),
        2 => Some(ProbeKind::Fnsave),
        3 => Some(ProbeKind::Fnstenv),
        4 | 5 => Some(ProbeKind::Xsave),
        _ => None,
    };
    let probe = match kind {
        Some(kind) if g.probes.len() < 64 => {
            let addr = h::PROBES + h::PROBE_SIZE * g.probes.len() as u32;
            let p = Probe { addr, kind, fill: g.r.u8() | 1 };
            g.probes.push(p);
            Some(p)
        }
        _ => None,
    };
    let r = &mut *g.r;
    let area = probe.map_or(h::DATA + (r.below(0x1000) << 4), |p| p.addr);
    let mxcsr = { let z0 = r.u32(); let z1 = r.u32(); r.pick(&[0x1f80u32, 0xffff, 0x1_0000, 0xffff_ffff, z0, z1 & 0xffff]) };
    let mask = (r.edgy_u32(), r.edgy_u32());
    let xsave_op = r.below(3);
    BodyItem::new(format!("fpu-state-{which}"), move |a, _| {
        // Some x87 work first so the last-instruction pointers are set.
        a.fld1()?;
        a.fldpi()?;
        a.fdiv_2(st0, st1)?;
        a.movd(xmm1, eax)?;
        let m = ptr(u64::from(area));
        let d = |off: u32| dword_ptr(u64::from(area + off));
        if let Some(p) = probe {
            // The guest's own bytes past the image, just before the save (upwards:
            // an earlier item may have left DF set).
            a.cld()?;
            a.mov(edi, area + h::probe::UPPER.start)?;
            a.mov(ecx, h::probe::UPPER.len() as u32)?;
            a.mov(al, u32::from(p.fill))?;
            a.rep().stosb()?;
            // And the image's head, which tells a save that ran from one that
            // did not (see `exec::check_probe`), whatever stores came before.
            a.mov(edi, area)?;
            a.mov(ecx, 32u32)?;
            a.rep().stosb()?;
            match p.kind {
                ProbeKind::Fxsave => a.fxsave(m)?,
                ProbeKind::Fnsave => a.fnsave(m)?,
                ProbeKind::Fnstenv => a.fnstenv(m)?,
                ProbeKind::Xsave => {
                    a.mov(eax, mask.0)?;
                    a.mov(edx, mask.1)?;
                    match xsave_op {
                        0 => a.xsave(m)?,
                        1 => a.xsaveopt(m)?,
                        _ => a.xsavec(m)?,
                    }
                }
            }
            // Reached only if the save ran: what it left, kept where nothing else
            // writes, then the marker.
            a.mov(edi, area + h::probe::UPPER.start)?;
            a.mov(ecx, h::probe::UPPER.len() as u32)?;
            a.mov(al, u32::from(p.fill))?;
            a.repe().scasb()?;
            a.mov(d(h::probe::LEFT), ecx)?;
            let (fip, fcs) = if p.kind == ProbeKind::Fxsave { (8, 12) } else { (12, 16) };
            a.mov(eax, d(fip))?;
            a.mov(d(h::probe::FIP), eax)?;
            a.mov(eax, d(fcs))?;
            a.mov(d(h::probe::FCS), eax)?;
            return a.mov(d(h::probe::MARKER), h::probe::MAGIC);
        }
        match which {
            6 => {
                a.mov(dword_ptr(u64::from(h::DATA + 0x40)), mxcsr)?;
                a.ldmxcsr(dword_ptr(u64::from(h::DATA + 0x40)))?;
                a.addps(xmm0, xmm1)?;
                a.stmxcsr(dword_ptr(u64::from(h::DATA + 0x44)))
            }
            7 => a.fxrstor(m),
            8 => a.frstor(m),
            9 => a.fldenv(m),
            10 => {
                a.fninit()?;
                a.emms()?;
                a.wait()
            }
            4 | 5 => {
                a.mov(eax, mask.0)?;
                a.mov(edx, mask.1)?;
                a.xrstor(m)
            }
            _ => {
                a.movaps(xmm2, xmmword_ptr(u64::from(area)))?;
                a.movaps(xmmword_ptr(u64::from(area + 16)), xmm2)
            }
        }
    })
}

fn flags(g: &mut Gen<'_>) -> BodyItem {
    use x::*;
    let r = &mut *g.r;
    let bits = [0x100u32, 0x200, 0x400, 0x1000, 0x3000, 0x4000, 0x1_0000, 0x2_0000, 0x4_0000, 0x20_0000, 0x8_0000, 0x10_0000];
    let mut v = 0x2 | (r.u32() & 0x8d5);
    for _ in 0..r.below(3) {
        v |= r.pick(&bits);
    }
    let which = r.below(6);
    BodyItem::new(format!("flags-{which}"), move |a, _| match which {
        0 | 1 => {
            a.push(v)?;
            a.popfd()?;
            a.nop()?;
            a.pushfd()?;
            a.pop(eax)
        }
        2 => {
            a.cli()?;
            a.nop()?;
            a.sti()?;
            a.nop()
        }
        3 => {
            a.sti()?;
            a.hlt()
        }
        4 => {
            a.push(v & 0xffff)?;
            a.db(&[0x66, 0x9d]) // popfw
        }
        _ => {
            a.pushfd()?;
            a.or(dword_ptr(esp), v)?;
            a.popfd()
        }
    })
}

fn branch(g: &mut Gen<'_>) -> BodyItem {
    use x::*;
    let r = &mut *g.r;
    let which = r.below(6);
    let target = match r.below(10) {
        0 => r.u32(),
        1 => h::BODY + r.below(0x2000),
        _ => 0, // the next item
    };
    let count = r.pick(&[0u32, 1, 0x10000, 0xffff_ffff]);
    BodyItem::new(format!("branch-{which}"), move |a, at| {
        let t = if target == 0 { at.next } else { target };
        match which {
            0 => {
                a.mov(eax, t)?;
                a.jmp(eax)
            }
            1 => {
                a.push(t)?;
                a.ret()
            }
            2 => {
                a.mov(eax, t)?;
                a.call(eax)
            }
            3 => {
                // jcxz / jecxz / loop with a 16-bit count.
                a.mov(ecx, count)?;
                a.db(&[0x67, 0xe3, 0x00, 0x67, 0xe2, 0xfe, 0xe3, 0x00])
            }
            4 => {
                a.mov(dword_ptr(u64::from(h::DATA + 0x20)), t)?;
                a.jmp(dword_ptr(u64::from(h::DATA + 0x20)))
            }
            _ => {
                a.mov(ecx, count & 0xffff)?;
                let mut top = a.create_label();
                a.set_label(&mut top)?;
                a.loop_(top)
            }
        }
    })
}

fn debug_regs(g: &mut Gen<'_>) -> BodyItem {
    use x::*;
    let r = &mut *g.r;
    let which = r.below(8);
    let addr = if r.chance(1, 2) { h::DATA + r.below(0x100) } else { h::BODY + r.below(0x1000) };
    let dr7_value = { let z0 = r.u32(); r.pick(&[0x1u32, 0x3, 0xf0001, 0x10001, 0x30001, 0x400, 0xffff_ffff, z0]) };
    BodyItem::new(format!("debug-reg-{which}"), move |a, _| {
        a.mov(eax, addr)?;
        match which {
            0..=3 => {
                let d = [dr0, dr1, dr2, dr3][which as usize];
                a.mov(d, eax)?;
                a.mov(eax, dr7_value)?;
                a.mov(eax, dr7_value)?;
                a.mov(dr7, eax)?;
                a.mov(ecx, dword_ptr(u64::from(addr)))
            }
            4 => {
                a.mov(eax, dr6)?;
                a.mov(dr6, eax)
            }
            5 => a.db(&[0x0f, 0x21, 0xe0]), // mov %dr4,%eax
            6 => a.db(&[0x0f, 0x23, 0xe8]), // mov %eax,%dr5
            _ => {
                a.mov(eax, dr7)?;
                a.mov(dr7, eax)
            }
        }
    })
}

/// Instructions of newer CPUs (or of no 32-bit CPU) that the guest CPU lacks.
fn host_only(g: &mut Gen<'_>) -> BodyItem {
    let list: &[&[u8]] = &[
        &[0x0f, 0x01, 0xfc],             // clzero
        &[0x0f, 0xae, 0x20],             // xsave (%eax)
        &[0x0f, 0xae, 0x28],             // xrstor (%eax)
        &[0x0f, 0xae, 0x30],             // xsaveopt (%eax)
        &[0x0f, 0xc7, 0x20],             // xsavec (%eax)
        &[0x0f, 0x01, 0xf9],             // rdtscp
        &[0xf3, 0x0f, 0xc7, 0xf8],       // rdpid
        &[0x0f, 0x33],                   // rdpmc
        &[0x0f, 0x01, 0xd0],             // xgetbv
        &[0x0f, 0x01, 0xd1],             // xsetbv
        &[0xc7, 0xf8, 0, 0, 0, 0],       // xbegin
        &[0x0f, 0x01, 0xd5],             // xend
        &[0x0f, 0x01, 0xd6],             // xtest
        &[0x0f, 0x01, 0xe8],             // serialize
        &[0x0f, 0x01, 0xca],             // clac
        &[0x0f, 0x01, 0xcb],             // stac
        &[0x0f, 0x01, 0xc8],             // monitor
        &[0x0f, 0x01, 0xc9],             // mwait
        &[0x0f, 0xc7, 0xf0],             // rdrand
        &[0x0f, 0xc7, 0xf8],             // rdseed
        &[0x0f, 0x01, 0xc1],             // vmcall
        &[0x0f, 0x01, 0xd9],             // vmmcall
        &[0x0f, 0x01, 0xf8],             // swapgs
        &[0x0f, 0x01, 0xfd],             // rdpru
        &[0x0f, 0x01, 0xfa],             // monitorx
        &[0xf3, 0x0f, 0xae, 0xc0],       // rdfsbase
        &[0x66, 0x0f, 0xae, 0x38],       // clflushopt
        &[0x66, 0x0f, 0x38, 0x82, 0x00], // invpcid
        &[0x0f, 0x05],                   // syscall
        &[0x0f, 0x07],                   // sysret
        &[0x0f, 0x37],                   // getsec
        &[0x0f, 0x01, 0xcf],             // encls
        &[0xf3, 0x0f, 0x09],             // wbnoinvd
        &[0xc5, 0xf8, 0x77],             // vzeroupper
        &[0xc5, 0xfc, 0x28, 0x00],       // vmovaps (%eax),%ymm0
        &[0x62, 0xf1, 0x7c, 0x48, 0x28, 0x00], // vmovaps (%eax),%zmm0
        &[0x0f, 0xff, 0x00],             // ud0
        &[0x0f, 0xb9, 0x00],             // ud1
        &[0x0f, 0x0d, 0x08],             // prefetchw
        &[0xf3, 0x0f, 0xae, 0xf0],       // umonitor
        &[0x66, 0x0f, 0x38, 0xf8, 0x00], // movdir64b
        &[0x0f, 0x01, 0xee],             // rdpkru
    ];
    let b = g.r.pick(list).to_vec();
    let mut item = vec![0xb8];
    item.extend_from_slice(&(h::DATA + 0x1000).to_le_bytes()); // mov $DATA+0x1000,%eax
    item.extend(b);
    raw("host-only", item)
}

/// Instructions of 14 to 17 bytes (prefixes repeated): 16 and more is #GP.
fn long_insn(g: &mut Gen<'_>) -> BodyItem {
    let r = &mut *g.r;
    let total = r.range(14, 18) as usize;
    // mov 0x200000(%eax),%eax with a segment override: 7 bytes of instruction.
    let tail = [0x8b, 0x80, 0x00, 0x00, 0x20, 0x00];
    let mut b = vec![r.pick(&[0x3e, 0x26, 0x66, 0xf3]); total - tail.len()];
    b.extend_from_slice(&tail);
    raw("long-insn", b)
}

// --------------------------------------------------------------------------------
// oracle snippets

/// Case `index` for the differential oracle: a snippet from one of its families.
pub fn oracle_case(seed: u64, index: u64) -> Case {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut r = Rng::for_case(seed, index);
    let mut key = [0u8; 32];
    for chunk in key.chunks_mut(8) {
        chunk.copy_from_slice(&r.next_u64().to_le_bytes());
    }
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    let families = bt86_tests::oracle::gen::families();
    let (name, strategy) = &families[r.below(families.len() as u32) as usize];
    let c = strategy.new_tree(&mut runner).map(|t| t.current());
    let body = match c {
        Ok(c) => Body::Oracle(OracleCase {
            family: (*name).into(),
            regs: c.snippet.regs,
            eflags: c.snippet.eflags,
            code: Bytes(c.snippet.code.clone()),
            data: Bytes(c.snippet.data.clone()),
            flags_at_end: c.final_flags,
            flags_at: c.flags_at.clone(),
        }),
        // A strategy that rejects everything: an empty snippet.
        Err(_) => Body::Oracle(OracleCase {
            family: (*name).into(),
            regs: [0; 8],
            eflags: 0,
            code: Bytes(vec![0x90]),
            data: Bytes(vec![]),
            flags_at_end: 0,
            flags_at: vec![],
        }),
    };
    Case { seed, index, generator: "oracle".into(), body }
}

// --------------------------------------------------------------------------------
// kernel images

/// A multiboot kernel without ELF: the header's address fields (flag 16) say where
/// to load it.
pub fn multiboot_kludge(code: &[u8]) -> Vec<u8> {
    const LOAD: u32 = 0x10_0000;
    let mut img = vec![0u8; 48];
    let flags = 1u32 << 16;
    let magic = 0x1bad_b002u32;
    put32(&mut img, 0, magic);
    put32(&mut img, 4, flags);
    put32(&mut img, 8, magic.wrapping_add(flags).wrapping_neg());
    put32(&mut img, 12, LOAD); // header_addr
    put32(&mut img, 16, LOAD); // load_addr
    put32(&mut img, 20, 0); // load_end_addr: the whole file
    put32(&mut img, 24, 0); // bss_end_addr
    put32(&mut img, 28, LOAD + 48); // entry_addr
    img.extend_from_slice(code);
    img
}

/// A minimal bzImage: boot sector and setup header (protocol 2.15, loads high),
/// one setup sector, then `payload` as the protected-mode kernel.
pub fn bzimage(payload: &[u8]) -> Vec<u8> {
    let setup_sects = 1u8;
    let mut img = vec![0u8; 512 * (1 + usize::from(setup_sects))];
    img[0x1f1] = setup_sects;
    put16(&mut img, 0x1fe, 0xaa55);
    img[0x200] = 0xeb; // jmp over the header
    img[0x201] = 0x6a;
    img[0x202..0x206].copy_from_slice(b"HdrS");
    put16(&mut img, 0x206, 0x020f);
    img[0x211] = 0x01; // LOADED_HIGH
    put32(&mut img, 0x214, 0x10_0000); // code32_start
    put32(&mut img, 0x22c, 0x37ff_ffff); // initrd_addr_max
    put32(&mut img, 0x230, 0x20_0000); // kernel_alignment
    img[0x234] = 1; // relocatable
    put32(&mut img, 0x238, 2047); // cmdline_size
    put32(&mut img, 0x258, 0x100_0000); // pref_address (64-bit field, low half)
    put32(&mut img, 0x260, 0x20_0000); // init_size
    img.extend_from_slice(payload);
    img
}

fn put16(img: &mut [u8], at: usize, v: u16) {
    img[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(img: &mut [u8], at: usize, v: u32) {
    img[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Case `index` of the loader campaign: a valid image mutated.
pub fn loader_case(seed: u64, index: u64) -> Case {
    let mut r = Rng::for_case(seed, index);
    let code = [0xb8, 0, 0, 0, 0, 0xba, 0xf4, 0, 0, 0, 0xef, 0xf4];
    let kind = if r.chance(1, 2) { ImageKind::Linux } else { ImageKind::Multiboot };
    let mut image = match kind {
        ImageKind::Linux => {
            let n = r.below(0x2000) as usize;
            bzimage(&[code.as_slice(), &r.bytes(n)].concat())
        }
        ImageKind::Multiboot if r.chance(1, 3) => multiboot_kludge(&code),
        ImageKind::Multiboot => bt86_tests::images::multiboot_elf(&code, &[]),
    };
    // Interesting offsets: the ELF header and program header, the multiboot header,
    // the Linux setup header.
    let hot: &[usize] = match kind {
        ImageKind::Linux => &[0x1f1, 0x1fe, 0x201, 0x206, 0x207, 0x211, 0x214, 0x218, 0x21c, 0x228, 0x22c, 0x230, 0x234, 0x238, 0x258, 0x260],
        ImageKind::Multiboot => &[4, 5, 16, 18, 24, 28, 32, 40, 42, 44, 46, 52, 56, 60, 64, 68, 72, 76, 80, 96, 100, 104, 0, 12, 20, 28],
    };
    for _ in 0..r.range(1, 6) {
        if image.is_empty() {
            break;
        }
        let at = if r.chance(2, 3) { r.pick(hot) } else { r.below(image.len() as u32) as usize };
        match r.below(7) {
            0 => {
                if let Some(b) = image.get_mut(at) {
                    *b ^= 1 << r.below(8);
                }
            }
            1 | 2 => {
                let v = r.edgy_u32().to_le_bytes();
                for (k, b) in v.iter().enumerate() {
                    if let Some(slot) = image.get_mut(at + k) {
                        *slot = *b;
                    }
                }
            }
            3 => image.truncate(r.below(image.len() as u32 + 1) as usize),
            4 => {
                if let Some(b) = image.get_mut(at) {
                    *b = r.u8();
                }
            }
            5 => {
                let n = r.below(0x4000) as usize;
                image.extend(std::iter::repeat_n(r.u8(), n));
            }
            _ => {
                let v = r.u16().to_le_bytes();
                for (k, b) in v.iter().enumerate() {
                    if let Some(slot) = image.get_mut(at + k) {
                        *slot = *b;
                    }
                }
            }
        }
    }
    let initrd_len = r.below(0x3000) as usize;
    let initrd = r.chance(1, 4).then(|| Bytes(r.bytes(initrd_len)));
    let cmdline = if r.chance(1, 8) { "x".repeat(r.below(5000) as usize) } else { "console=ttyS0".into() };
    let mem_mib = r.pick(&[1, 2, 8, 32]);
    Case { seed, index, generator: "loader".into(), body: Body::Loader(LoaderCase { kind, mem_mib, image: Bytes(image), initrd, cmdline }) }
}

/// Case `index` of a campaign that mixes the three kinds: mostly guest code.
pub fn mixed_case(seed: u64, index: u64) -> Case {
    match Rng::for_case(seed ^ 0x6d69_7865_6400, index).below(20) {
        0..=1 => oracle_case(seed, index),
        2 => loader_case(seed, index),
        _ => guest_case(seed, index),
    }
}

/// Generates a case of `kind` (`mixed`, `guest`, `oracle`, `loader`).
pub fn case_of(kind: &str, seed: u64, index: u64) -> Option<Case> {
    Some(match kind {
        "mixed" => mixed_case(seed, index),
        "guest" => guest_case(seed, index),
        "oracle" => oracle_case(seed, index),
        "loader" => loader_case(seed, index),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_assembles() {
        let mut r = Rng::new(5);
        for (name, _, f) in FAMILIES {
            for _ in 0..200 {
                let mut g = Gen { r: &mut r, cpl: 0, paging: true, probes: Vec::new() };
                let item = f(&mut g);
                let mut a = CodeAssembler::new(32).expect("asm");
                (item.emit)(&mut a, h::ItemAt { at: h::BODY, next: h::BODY + 0x100 }).unwrap_or_else(|e| panic!("{name}: {e}"));
                a.assemble(u64::from(h::BODY)).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }

    #[test]
    fn cases_are_deterministic() {
        for i in 0..20 {
            assert_eq!(mixed_case(3, i), mixed_case(3, i));
        }
        assert_ne!(guest_case(3, 1), guest_case(3, 2));
    }
}
