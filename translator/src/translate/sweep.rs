//! The opcode sweep: every opcode of every map, with and without the 66/F2/F3
//! prefixes, in register and memory forms, at CPL 0 and 3. Each guest
//! instruction must become exactly one of: IDENT code that the guest CPU's
//! instruction set allows and whose every memory access stays in the view; a
//! callout the VMM emulates; or #UD (#NM where CR0 says so). Nothing may stop the
//! VM as "unsupported", and no host instruction of a unit may need a CPU feature
//! the guest lacks (beyond the x86-64 glue the translator itself uses). A new host
//! CPU's instructions therefore cannot slip through: they are not on the list.

use super::tests::{assert_confined, build_with, host_listing, text};
use super::BuiltUnit;
use crate::{CalloutKind, Isa, Mode};
use iced_x86::{CpuidFeature, Decoder, Instruction};

/// ModRM bytes tried for each opcode: every reg field with register operands
/// (rm = eax, esp) and memory operands ((%eax), disp32, SIB, disp8, disp32(%ebp)).
fn modrms() -> Vec<u8> {
    let mut v = Vec::new();
    for reg in 0..8u8 {
        for (md, rm) in [(3u8, 0u8), (3, 4), (0, 0), (0, 5), (0, 4), (1, 3), (2, 5)] {
            v.push(md << 6 | reg << 3 | rm);
        }
    }
    v
}

/// No prefix, the mandatory-prefix bytes, 16-bit addressing and segment
/// overrides, alone and combined.
const PREFIXES: [&[u8]; 10] =
    [&[], &[0x66], &[0xf2], &[0xf3], &[0x67], &[0x64], &[0x26], &[0x65, 0x66], &[0xf3, 0x67], &[0xf3, 0x64]];
const LEGACY_PREFIX: [u8; 11] = [0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65, 0x66, 0x67, 0xf0, 0xf2, 0xf3];

/// Every byte sequence of the sweep: prefix, map escape, opcode, ModRM, and
/// filler for displacements and immediates.
fn encodings() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let filler = [0x04, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00];
    for prefix in PREFIXES {
        for map in [&[][..], &[0x0f], &[0x0f, 0x38], &[0x0f, 0x3a]] {
            for op in 0..=255u8 {
                if map.is_empty() && (LEGACY_PREFIX.contains(&op) || op == 0x0f) {
                    continue;
                }
                if map == [0x0f] && (op == 0x38 || op == 0x3a) {
                    continue;
                }
                let all_modrm = map == [0x0f] && op == 0x01;
                let rms: Vec<u8> = if all_modrm { (0..=255).collect() } else { modrms() };
                for modrm in rms {
                    let mut b = [prefix, map, &[op, modrm], &filler].concat();
                    b.truncate(15.min(b.len()));
                    out.push(b);
                }
            }
        }
    }
    out
}

/// Host features the translator's own glue uses (x86-64 itself, `cmov` for salc,
/// SSE2 moves through xmm8 and `fxsave` for the scrubbed state saves; BMI2's
/// flag-free `rorx`/`shrx` in the indirect lookup's hash and the inline `cpuid`,
/// emitted only where the host has BMI2: `lookup::mixes_high_half`,
/// `cpuid::inline_possible`).
fn glue_allows(f: CpuidFeature) -> bool {
    matches!(f, CpuidFeature::X64 | CpuidFeature::CMOV | CpuidFeature::SSE2 | CpuidFeature::FXSR)
        || (f == CpuidFeature::BMI2 && crate::lookup::mixes_high_half())
}

#[derive(Debug)]
struct Finding {
    bytes: Vec<u8>,
    text: String,
    what: String,
}

fn check(bytes: &[u8], mode: Mode, isa: &Isa) -> Option<Finding> {
    let guest = Decoder::with_ip(32, bytes, 0x1000, isa.decoder_options()).decode();
    let u: BuiltUnit = build_with(bytes, mode, 1, isa);
    assert_confined(&u);
    let finding = |what: String| Some(Finding { bytes: bytes.to_vec(), text: text(&guest), what });
    let first_site = u.sites.first().map(|s| (s.eip, s.kind));
    if let Some((0x1000, kind)) = first_site {
        return match kind {
            CalloutKind::Unsupported | CalloutKind::FetchFault => finding(format!("{kind:?}")),
            CalloutKind::RaiseUd | CalloutKind::RaiseDe | CalloutKind::RaiseGp => None,
            _ if guest.is_invalid() || !isa.allows(&guest) => finding(format!("{kind:?} for an instruction the CPU lacks")),
            _ => None,
        };
    }
    if guest.is_invalid() || (!isa.allows(&guest) && !is_prefetch(&guest)) {
        return finding("ran code for an instruction the CPU lacks".into());
    }
    for h in host_listing(&u) {
        if let Some(f) = h.cpuid_features().iter().find(|&&f| !isa.has(f) && !glue_allows(f)) {
            return finding(format!("host code `{}` needs {f:?}", text(&h)));
        }
    }
    None
}

/// Prefetch hints are nops on a CPU without SSE (they fetch nothing).
fn is_prefetch(i: &Instruction) -> bool {
    use iced_x86::Mnemonic::*;
    matches!(i.mnemonic(), Prefetchnta | Prefetcht0 | Prefetcht1 | Prefetcht2)
}

fn sweep(mode: Mode, isa: &Isa) -> Vec<Finding> {
    encodings().iter().filter_map(|b| check(b, mode, isa)).collect()
}

/// One line per kind of finding (mnemonic and what went wrong), with an example.
fn report(findings: &[Finding]) -> String {
    let mut seen = std::collections::BTreeMap::new();
    for f in findings {
        let mnemonic = f.text.split_whitespace().next().unwrap_or("").to_string();
        let what = f.what.split('`').next().unwrap_or("").to_string();
        seen.entry((mnemonic, what)).or_insert(f);
    }
    let mut s = format!("{} encodings, {} kinds:\n", findings.len(), seen.len());
    for f in seen.values() {
        let hex: Vec<String> = f.bytes.iter().map(|b| format!("{b:02x}")).collect();
        s += &format!("  {:<36} {:<36} {}\n", hex.join(" "), f.text, f.what);
    }
    s
}

#[test]
fn every_opcode_is_ident_emulated_or_ud() {
    let isa = Isa::default();
    let flat = Mode { fpu: crate::fpu_mode::OSFXSR, ..Mode::default() };
    // Segment bases (es, cs, ss, ds, fs, gs) as Linux has them: %fs per-CPU data.
    let based = Mode { seg_based: 0b11_1001, ..flat };
    for (what, mode) in [("segment bases", based), ("CPL 0", flat), ("CPL 3", Mode { cpl: 3, ..flat })] {
        let findings = sweep(mode, &isa);
        assert!(findings.is_empty(), "{what}: {}", report(&findings));
    }
}

#[test]
fn a_base_cpu_runs_no_extension() {
    // With the bare 486 set, every MMX/SSE/CMOV/... encoding must be #UD.
    let isa = Isa::base();
    let mode = Mode { fpu: crate::fpu_mode::OSFXSR, ..Mode::default() };
    let findings: Vec<Finding> = sweep(mode, &isa).into_iter().filter(|f| !f.what.starts_with("Unsupported")).collect();
    assert!(findings.is_empty(), "{}", report(&findings));
}

#[test]
fn known_host_only_instructions_are_ud() {
    // clzero, xsave, xsaveopt, xrstor, xgetbv, rdtscp, rdpid, rdpru, serialize,
    // clac, xbegin, wrfsbase (64-bit only: invalid), monitorx.
    let cases: [&[u8]; 12] = [
        &[0x0f, 0x01, 0xfc],
        &[0x0f, 0xae, 0x20],
        &[0x0f, 0xae, 0x30],
        &[0x0f, 0xae, 0x28],
        &[0x0f, 0x01, 0xd0],
        &[0x0f, 0x01, 0xf9],
        &[0xf3, 0x0f, 0xc7, 0xf8],
        &[0x0f, 0x01, 0xfd],
        &[0x0f, 0x01, 0xe8],
        &[0x0f, 0x01, 0xca],
        &[0xc7, 0xf8, 0, 0, 0, 0],
        &[0x0f, 0x01, 0xfa],
    ];
    for c in cases {
        let u = build_with(c, Mode::default(), 1, &Isa::default());
        let kind = u.sites.first().map(|s| s.kind);
        assert_eq!(kind, Some(CalloutKind::RaiseUd), "{c:02x?}");
    }
}

#[test]
fn state_saves_never_show_host_registers() {
    // fxsave (%eax): no native fxsave onto guest memory; the copy stops at 288.
    let mode = Mode { fpu: crate::fpu_mode::OSFXSR, ..Mode::default() };
    for bytes in [&[0x0f, 0xae, 0x00][..], &[0xd9, 0x30], &[0xdd, 0x30], &[0x9b, 0xdd, 0x30], &[0x66, 0xd9, 0x30]] {
        let u = build_with(bytes, mode, 1, &Isa::default());
        assert!(u.sites.is_empty(), "{bytes:02x?} is inline");
        let listing: Vec<Instruction> = host_listing(&u);
        for h in &listing {
            let t = text(h);
            if ["fxsave", "fnsave", "fsave", "fnstenv", "fstenv"].iter().any(|m| t.starts_with(m)) {
                assert!(t.contains("(%r15)"), "saves into the context only: {t}");
            }
            if t.contains("%gs:") && t.contains("(%r9d)") && h.memory_displacement64() >= 288 {
                panic!("writes past byte 287: {t}");
            }
        }
    }
}

/// The segment set-ups user code can make itself (through its LDT: a based or
/// 16-bit stack, segments with limits, null %fs/%gs) at CPL 3: still nothing stops
/// the VM as unsupported, nothing unconfined.
#[test]
fn user_segment_modes_are_ident_emulated_or_ud() {
    let isa = Isa::default();
    let user = Mode { fpu: crate::fpu_mode::OSFXSR, cpl: 3, ..Mode::default() };
    for (what, mode) in [
        ("a based stack, every data segment based", Mode { seg_based: 0b11_1101, irregular_stack: true, ..user }),
        ("every data segment checked", Mode { seg_checked: 0b11_1101, ..user }),
        ("null fs and gs", Mode { seg_unusable: 0b11_0000, seg_based: 0b00_1001, ..user }),
    ] {
        let findings = sweep(mode, &isa);
        assert!(findings.is_empty(), "{what}: {}", report(&findings));
    }
}
