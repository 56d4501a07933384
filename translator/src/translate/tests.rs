//! Unit tests of the unit builder: shapes of translations, and the confinement
//! property (no host memory access escapes the view) over arbitrary guest bytes.

use super::*;
use crate::world::{emit_stubs, Stubs};
use iced_x86::{Decoder, DecoderOptions, GasFormatter, Formatter, InstructionInfoFactory, OpAccess, Register};
use proptest::prelude::*;

struct Bytes(Vec<u8>, u32);

impl GuestCode for Bytes {
    fn fetch(&mut self, linear: u32, buf: &mut [u8]) -> usize {
        let off = linear.wrapping_sub(self.1) as usize;
        let avail = self.0.len().saturating_sub(off);
        let n = buf.len().min(avail);
        buf[..n].copy_from_slice(&self.0[off..off + n]);
        n
    }
}

const HOST: u64 = 0x7000_0000_0000;

fn stubs() -> Stubs {
    let mut a = crate::emit::Asm::new(HOST);
    emit_stubs(&mut a).expect("stubs")
}

pub(super) fn build(code: &[u8], mode: Mode) -> BuiltUnit {
    build_with(code, mode, MAX_UNIT_INSNS, &crate::Isa::default())
}

pub(super) fn build_with(code: &[u8], mode: Mode, max_insns: usize, isa: &crate::Isa) -> BuiltUnit {
    build_placed(code, mode, max_insns, isa, None)
}

fn build_placed(code: &[u8], mode: Mode, max_insns: usize, isa: &crate::Isa, stop_before: Option<u32>) -> BuiltUnit {
    build_probed(code, mode, max_insns, isa, stop_before, &hashbrown::HashSet::new())
}

fn build_probed(
    code: &[u8],
    mode: Mode,
    max_insns: usize,
    isa: &crate::Isa,
    stop_before: Option<u32>,
    probed: &hashbrown::HashSet<u32>,
) -> BuiltUnit {
    let s = stubs();
    let adaptive = hashbrown::HashSet::new();
    let place = UnitPlacement {
        stubs: &s,
        host_base: HOST + 0x10000,
        first_slot_id: 0,
        first_site_id: 0,
        max_insns,
        adaptive: &adaptive,
        probed,
        isa,
        entry_frames: None,
        stop_before,
    };
    build_unit(&mut Bytes(code.to_vec(), 0x1000), 0x1000, &mode, &place).expect("build")
}

pub(super) fn host_listing(u: &BuiltUnit) -> Vec<Instruction> {
    let mut d = Decoder::with_ip(64, &u.code, HOST + 0x10000, DecoderOptions::NONE);
    d.iter().collect()
}

pub(super) fn text(i: &Instruction) -> String {
    let mut s = String::new();
    GasFormatter::new().format(i, &mut s);
    s
}

#[test]
fn a_unit_ends_before_a_stop() {
    // nop; nop; nop; ret at 0x1000, a debugger's breakpoint at 0x1002
    let u = build_placed(&[0x90, 0x90, 0x90, 0xc3], Mode::default(), MAX_UNIT_INSNS, &crate::Isa::default(), Some(0x1002));
    assert_eq!(u.guest_insns, 2);
    assert_eq!(u.slots.iter().map(|s| s.target).collect::<Vec<_>>(), [0x1002], "falls through to the stop");
}

#[test]
fn esp_relative_load_uses_r8_and_gs() {
    let u = build(&[0x8b, 0x44, 0x24, 0x04, 0xc3], Mode::default()); // mov 4(%esp),%eax; ret
    let l: Vec<String> = host_listing(&u).iter().map(text).collect();
    assert!(l.iter().any(|s| s == "mov %gs:4(%r8d),%eax"), "{l:#?}");
}

#[test]
fn inc_short_form_is_re_encoded() {
    let u = build(&[0x40, 0x4b, 0xc3], Mode::default()); // inc %eax; dec %ebx; ret
    let l: Vec<String> = host_listing(&u).iter().map(text).collect();
    assert!(l.contains(&"inc %eax".to_string()) && l.contains(&"dec %ebx".to_string()), "{l:#?}");
}

#[test]
fn conditional_branch_is_a_side_exit() {
    // xor; je +2; nop; nop; ret
    let u = build(&[0x31, 0xc0, 0x74, 0x02, 0x90, 0x90, 0xc3], Mode::default());
    assert_eq!(u.guest_insns, 5, "translation goes on along the fall-through path");
    assert_eq!(u.slots.len(), 1);
    assert_eq!(u.slots[0].target, 0x1006);
}

#[test]
fn sensitive_instructions_become_callouts() {
    // pushf; cli; sgdt (%eax); in $0x60,%al; hlt: pushf and cli stay inline at CPL 0.
    let code = [0x9c, 0xfa, 0x0f, 0x01, 0x00, 0xe4, 0x60, 0xf4];
    let u = build(&code, Mode::default());
    let kinds: Vec<_> = u.sites.iter().map(|s| s.ins.mnemonic()).collect();
    assert_eq!(kinds, vec![iced_x86::Mnemonic::Sgdt, iced_x86::Mnemonic::In, iced_x86::Mnemonic::Hlt]);
    // At CPL 3 cli needs the IOPL check: a callout.
    let u = build(&code, Mode { cpl: 3, ..Mode::default() });
    assert_eq!(u.sites[0].ins.mnemonic(), iced_x86::Mnemonic::Cli);
}

#[test]
fn segment_base_is_added_from_the_context() {
    let mode = Mode { seg_based: 1 << 4, ..Mode::default() }; // fs has a base
    let u = build(&[0x64, 0x8b, 0x03, 0xc3], mode); // mov %fs:(%ebx),%eax
    let l: Vec<String> = host_listing(&u).iter().map(text).collect();
    let fs_base = format!("mov {:#x}(%r15),%r11d", crate::abi::off::SEG_BASE + 16);
    assert!(l.contains(&fs_base), "{l:#?}");
    assert!(l.iter().any(|s| s == "lea (%r9,%r11),%r9d"), "{l:#?}");
    assert!(l.iter().any(|s| s == "mov %gs:(%r9d),%eax"), "{l:#?}");
}

#[test]
fn accesses_through_an_unusable_segment_raise_gp() {
    let kinds = |code: &[u8], unusable: u8| -> Vec<(iced_x86::Mnemonic, CalloutKind)> {
        build(code, Mode { seg_unusable: unusable, ..Mode::default() }).sites.iter().map(|s| (s.ins.mnemonic(), s.kind)).collect()
    };
    use iced_x86::Mnemonic::*;
    let fs_load = [0x64, 0x8b, 0x03, 0xc3]; // mov %fs:(%ebx),%eax
    assert_eq!(kinds(&fs_load, 1 << 4), vec![(Mov, CalloutKind::RaiseGp)]);
    assert_eq!(kinds(&fs_load, 1 << 5), vec![], "gs unusable, fs fine");
    // stosb writes through es; lea and a hint nop access nothing.
    assert_eq!(kinds(&[0xaa, 0xc3], 1), vec![(Stosb, CalloutKind::RaiseGp)]);
    assert_eq!(kinds(&[0x8d, 0x03, 0x0f, 0x1f, 0x00, 0xc3], 0b11_1001), vec![]);
    // Through ds by default; not through ss.
    assert_eq!(kinds(&[0x8b, 0x03, 0xc3], 1 << 3), vec![(Mov, CalloutKind::RaiseGp)]);
    assert_eq!(kinds(&[0x8b, 0x45, 0x00, 0xc3], 1 << 3), vec![], "(%ebp) is ss");
}

#[test]
fn a_probed_instruction_gets_a_page_probe_then_runs_translated() {
    // mov (%ebx),%eax; mov %eax,4(%ebx); ret: the second is probed.
    let code = [0x8b, 0x03, 0x89, 0x43, 0x04, 0xc3];
    let probed: hashbrown::HashSet<u32> = [0x1002].into_iter().collect();
    let u = build_probed(&code, Mode::default(), MAX_UNIT_INSNS, &crate::Isa::default(), None, &probed);
    let sites: Vec<_> = u.sites.iter().map(|s| (s.ins.mnemonic(), s.kind, s.eip)).collect();
    assert_eq!(sites, vec![(iced_x86::Mnemonic::Mov, CalloutKind::PageProbe, 0x1002)]);
    let l: Vec<String> = host_listing(&u).iter().map(text).collect();
    assert!(l.iter().any(|s| s.starts_with("mov %eax,%gs:")), "the store is still translated: {l:#?}");
}

#[test]
fn accesses_through_a_checked_segment_get_a_check_first() {
    let mode = Mode { seg_checked: 1 << 4, ..Mode::default() }; // fs has a limit
    let u = build(&[0x64, 0x8b, 0x03, 0x8b, 0x03, 0xc3], mode); // mov %fs:(%ebx),%eax; mov (%ebx),%eax
    let sites: Vec<_> = u.sites.iter().map(|s| (s.ins.mnemonic(), s.kind, s.eip)).collect();
    assert_eq!(sites, vec![(iced_x86::Mnemonic::Mov, CalloutKind::SegmentCheck, 0x1000)]);
    // The load itself is still translated, after the check.
    let l: Vec<String> = host_listing(&u).iter().map(text).collect();
    assert!(l.iter().any(|s| s.starts_with("mov %gs:(") && s.ends_with(",%eax")), "{l:#?}");
}

#[test]
fn masked_stores_go_through_the_view() {
    // maskmovq %mm1,%mm0 writes to ds:(%edi) implicitly: it gets the %gs override.
    let mode = Mode { fpu: crate::fpu_mode::OSFXSR, ..Mode::default() };
    let u = build(&[0x0f, 0xf7, 0xc1, 0xc3], mode);
    assert!(u.sites.is_empty());
    let l: Vec<String> = host_listing(&u).iter().map(text).collect();
    assert!(l.iter().any(|s| s.contains("maskmovq") && s.contains("gs") && s.contains("addr32")), "{l:#?}");
    assert_confined(&u);
}

/// Every memory access the host code makes is `%gs:` with 32-bit addressing, a
/// VMM structure (r13 poll page, r14 lookup table, r15 context), or a string
/// instruction on biased rsi/rdi.
pub(super) fn assert_confined(u: &BuiltUnit) {
    let mut f = InstructionInfoFactory::new();
    for i in host_listing(u) {
        let info = f.info(&i);
        for m in info.used_memory() {
            if m.access() == OpAccess::NoMemAccess {
                continue;
            }
            let vmm = matches!(m.base(), Register::R13 | Register::R14 | Register::R15) && m.segment() != Register::GS;
            let gs32 = m.segment() == Register::GS
                && (m.base() == Register::None || m.base().size() == 4)
                && (m.index() == Register::None || m.index().size() == 4 || m.index() == Register::AL);
            let string = matches!(m.base(), Register::RSI | Register::RDI) && m.index() == Register::None && m.displacement() == 0;
            let stack = m.base() == Register::RSP; // pushfq/popfq of the host's flags
            assert!(vmm || gs32 || string || stack, "unconfined access in `{}`: {m:?}", text(&i));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]
    #[test]
    fn arbitrary_guest_code_is_confined(code in proptest::collection::vec(any::<u8>(), 1..64)) {
        let u = build(&code, Mode::default());
        assert_confined(&u);
    }

    #[test]
    fn arbitrary_guest_code_with_segment_bases_is_confined(code in proptest::collection::vec(any::<u8>(), 1..64), base in any::<u32>()) {
        let based = if base != 0 { 0b11_0101 } else { 0 };
        let mode = Mode { seg_based: based, fpu: crate::fpu_mode::OSFXSR, irregular_stack: base != 0, ..Mode::default() };
        let u = build(&code, mode);
        assert_confined(&u);
    }
}

#[test]
fn high_byte_register_with_esp_memory_borrows_a_legacy_register() {
    let u = build(&[0x02, 0x2c, 0x24, 0xc3], Mode::default()); // add (%esp),%ch
    let l: Vec<String> = host_listing(&u).iter().map(text).collect();
    assert!(l.iter().any(|s| s == "add %gs:(%ebx),%ch"), "{l:#?}");
    // Regression: a failed first encoding attempt must leave no bytes behind.
    assert!(!l.iter().any(|s| s.contains("%bpl") || s.contains("%r8d),%ch")), "{l:#?}");
}

#[test]
fn sixteen_bit_addressing_is_computed_into_a_register() {
    for code in [&[0x67, 0x8d, 0x78, 0xf0, 0xc3][..], &[0x67, 0x8d, 0x3e, 0xf0, 0xff, 0xc3], &[0x67, 0x8b, 0x40, 0x01, 0xc3]] {
        let u = build(code, Mode::default());
        assert!(u.sites.is_empty(), "{code:02x?} not translated: {:#?}", host_listing(&u).iter().map(text).collect::<Vec<_>>());
    }
}

#[test]
fn fpu_and_sse_availability_follows_cr0_and_cr4() {
    use crate::fpu_mode::{OSFXSR, TS};
    let paddd = [0x66, 0x0f, 0xfe, 0xc1, 0xc3]; // paddd %xmm1,%xmm0
    let fld1 = [0xd9, 0xe8, 0xc3];
    let kind = |code: &[u8], fpu: u8| build(code, Mode { fpu, ..Mode::default() }).sites.first().map(|s| s.kind);
    assert_eq!(kind(&paddd, 0), Some(crate::CalloutKind::RaiseUd), "SSE without CR4.OSFXSR is #UD");
    assert_eq!(kind(&paddd, OSFXSR), None, "SSE with OSFXSR runs natively");
    assert_eq!(kind(&paddd, OSFXSR | TS), Some(crate::CalloutKind::RaiseNm));
    assert_eq!(kind(&fld1, 0), None);
    assert_eq!(kind(&fld1, TS), Some(crate::CalloutKind::RaiseNm));
}

#[test]
fn huge_expansions_stay_within_the_unit_budget() {
    // Regression: 64 x `enter $0,$31` made one unit outgrow the cache reserve.
    let code: Vec<u8> = (0..64).flat_map(|_| [0xc8, 0x00, 0x00, 0x1f]).chain([0xc3]).collect();
    let u = build(&code, Mode::default());
    assert!(u.code.len() <= 16 * 1024, "{} bytes", u.code.len());
    assert!(u.guest_insns < 64, "the unit stopped early: {}", u.guest_insns);
}

#[test]
fn lea_ignores_segment_bases() {
    // Regression: lea with a based DS (or an override) added the base.
    let mode = Mode { seg_based: 0b01_1000, ..Mode::default() };
    for code in [&[0x8d, 0x0b, 0xc3][..], &[0x64, 0x8d, 0x0b, 0xc3]] {
        let l: Vec<String> = host_listing(&build(code, mode)).iter().map(text).collect();
        assert!(!l.iter().any(|s| s.contains("0x1000") || s.contains("0x2000")), "{l:#?}");
    }
}

#[test]
fn implicit_stack_use_with_an_irregular_stack_is_emulated() {
    let mode = Mode { irregular_stack: true, ..Mode::default() };
    for code in [&[0x50, 0xc3][..], &[0xc3], &[0xe8, 0, 0, 0, 0], &[0x60, 0xc9, 0xc3]] {
        let u = build(code, mode);
        assert_eq!(u.sites.first().map(|s| s.kind), Some(crate::CalloutKind::Emulate), "{code:02x?}");
    }
    // A push is emulated in place: the unit goes on to the ret.
    let u = build(&[0x50, 0xc3], mode);
    assert_eq!(u.sites.iter().map(|s| s.ins.mnemonic()).collect::<Vec<_>>(), vec![iced_x86::Mnemonic::Push, iced_x86::Mnemonic::Ret]);
}

#[test]
fn hidden_privileged_features_raise_ud() {
    // invpcid (%eax),%ecx; vmcall
    for code in [&[0x66, 0x0f, 0x38, 0x82, 0x08, 0xc3][..], &[0x0f, 0x01, 0xc1, 0xc3]] {
        let u = build(code, Mode::default());
        assert_eq!(u.sites.first().map(|s| s.kind), Some(crate::CalloutKind::RaiseUd), "{code:02x?}");
    }
}

#[test]
fn adaptive_stores_include_the_moffs_and_read_modify_write_forms() {
    let decode = |bytes: &[u8]| iced_x86::Decoder::with_ip(32, bytes, 0x1000, iced_x86::DecoderOptions::NONE).decode();
    let stores: [&[u8]; 10] = [
        &[0xa3, 0x00, 0xb0, 0x10, 0x00],
        &[0xa2, 0, 0, 0, 0],
        &[0x89, 0x08],
        &[0xc7, 0x00, 1, 0, 0, 0],
        &[0x87, 0x08],
        &[0x01, 0x08],             // add %ecx,(%eax)
        &[0x80, 0x26, 0xfd],       // andb $0xfd,(%esi): Linux's ptep_set_wrprotect
        &[0x0f, 0xba, 0x30, 0x01], // btr $1,(%eax)
        &[0x0f, 0xb1, 0x08],       // cmpxchg %ecx,(%eax)
        &[0xff, 0x00],             // incl (%eax)
    ];
    for bytes in stores {
        assert!(is_adaptive_store(&decode(bytes)), "{bytes:02x?}");
    }
    for bytes in [&[0xa1, 0, 0, 0, 0][..], &[0x03, 0x08], &[0x8b, 0x08], &[0x89, 0xc8], &[0x0f, 0xab, 0x08], &[0x0f, 0xa3, 0x08]] {
        assert!(!is_adaptive_store(&decode(bytes)), "{bytes:02x?}");
    }
}

#[test]
fn pushf_is_inline_and_flag_free() {
    let u = build(&[0x9c, 0x66, 0x9c, 0xc3], Mode::default()); // pushfd; pushfw; ret
    assert!(u.sites.is_empty(), "{:?}", u.sites.iter().map(|s| s.kind).collect::<Vec<_>>());
    let l: Vec<String> = host_listing(&u).iter().map(text).collect();
    assert!(!l.iter().any(|s| s.starts_with("popf")), "{l:#?}");
}

/// `mov %cr2, r32` at CPL 0 (a page-fault handler's first instruction) is a load
/// from the context, into the host register holding the guest's; at CPL 3 (#GP),
/// with a lock prefix (CR8 on AMD) and for other control registers it is a callout.
#[test]
fn a_cr2_read_at_cpl0_is_inline() {
    let kernel = Mode::default();
    let u = build(&[0x0f, 0x20, 0xd4, 0xc3], kernel); // mov %cr2,%esp; ret
    assert!(u.sites.iter().all(|s| s.eip != 0x1000), "no callout for the read");
    let load = host_listing(&u).into_iter().find(|i| i.memory_displacement64() == off::CR2 as u64 && i.memory_base() == Register::R15);
    assert_eq!(load.map(|i| (i.code(), i.op0_register())), Some((iced_x86::Code::Mov_r32_rm32, Register::R8D)), "guest esp is r8d");

    let user = Mode { cpl: 3, ..Mode::default() };
    let lock = [0xf0, 0x0f, 0x20, 0xd0, 0xc3]; // lock mov %cr2,%eax: mov %cr8,%eax on AMD
    let cr3 = [0x0f, 0x20, 0xd8, 0xc3]; // mov %cr3,%eax
    for (code, mode) in [(&[0x0f, 0x20, 0xd0, 0xc3][..], user), (&lock, kernel), (&cr3, kernel)] {
        let u = build(code, mode);
        assert!(u.sites.iter().any(|s| s.eip == 0x1000), "{code:02x?} at CPL {}: a callout", mode.cpl);
    }
}

/// A callout stores its resume address in the context and jumps to the exit
/// stub: a `call` left a return-stack entry the world switch's `ret` never
/// consumed, so every return the VMM made after an exit was mispredicted (a
/// system call and its `iret`: 822 → 633 cycles when it went).
#[test]
fn a_callout_exits_without_a_call() {
    let u = build(&[0xf4, 0xc3], Mode::default()); // hlt; ret
    assert!(!u.sites.is_empty());
    let l = host_listing(&u);
    assert!(!l.iter().any(|i| i.mnemonic() == iced_x86::Mnemonic::Call), "{:#?}", l.iter().map(text).collect::<Vec<_>>());
    let lea = l.iter().position(|i| i.mnemonic() == iced_x86::Mnemonic::Lea && i.memory_base() == Register::RIP).expect("lea of the resume address");
    let (store, jmp) = (&l[lea + 1], &l[lea + 2]);
    assert_eq!((store.memory_base(), store.memory_displacement64()), (Register::R15, off::RESUME as u64), "stored as the resume point");
    assert_eq!(jmp.near_branch_target(), stubs().exit_callout, "to the exit stub");
    assert_eq!(l[lea].ip_rel_memory_address(), jmp.next_ip(), "resuming right after the jump");
}
