//! The study end to end on this machine: the JSON's shape, the outcomes the architecture
//! dictates (popf deprivileged is `wrong` with IF unchanged and no trap; `mov %cr0`
//! deprivileged is a `trap`; every row is `correct` under bt), and the renderings.

use std::sync::OnceLock;

use bt86_runtime::kvm::KvmOptions;
use bt86_study::catalogue::{catalogue, Case, Want};
use bt86_study::engines::{self, Bt86Cpu, End, Engine, HostContext};
use bt86_study::guest::eflags;
use bt86_study::{Options, Outcome, Study};

/// One study for all the tests (it takes a fraction of a second, but once is enough).
fn study() -> &'static Study {
    static STUDY: OnceLock<Study> = OnceLock::new();
    STUDY.get_or_init(|| bt86_study::run(&Options::default()).expect("the study runs"))
}

fn case(name: &str) -> Case {
    catalogue().unwrap().into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no case {name}"))
}

fn row(name: &str) -> &'static bt86_study::Row {
    study().rows.iter().find(|r| r.instruction == name).unwrap_or_else(|| panic!("no row {name}"))
}

const ROBIN_IRVINE: [&str; 17] = [
    "sgdt", "sidt", "sldt", "smsw", "str", "pushf", "popf", "lar", "lsl", "verr", "verw", "push %cs", "pop %ss",
    "mov %ss,%eax", "lcall", "ljmp", "lret",
];

#[test]
fn json_has_the_documented_shape() {
    let v: serde_json::Value = serde_json::from_str(&study().to_json()).expect("valid JSON");
    let rows = v.as_array().expect("an array of rows");
    assert!(rows.len() >= 17 + 10 + 2, "{} rows", rows.len());
    let outcomes = ["trap", "wrong", "correct", "not-run", "error"];
    for r in rows {
        assert!(r["instruction"].is_string(), "{r}");
        assert!(r["sensitive"].is_boolean() && r["privileged"].is_boolean(), "{r}");
        for engine in ["deprivileged", "bt", "kvm"] {
            let e = &r["engines"][engine];
            assert!(outcomes.contains(&e["outcome"].as_str().unwrap_or("?")), "{engine}: {e}");
            for key in ["observed", "expected", "note"] {
                assert!(e[key].is_string(), "{engine}.{key}: {e}");
            }
        }
    }
    let names: Vec<&str> = rows.iter().map(|r| r["instruction"].as_str().unwrap()).collect();
    for name in ROBIN_IRVINE.iter().chain(&["mov %eax,%ds", "int $0x30", "iret"]) {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
    for name in ["cli", "sti", "hlt", "mov %cr0,%eax", "mov %eax,%cr0", "mov %cr3,%eax", "mov %eax,%cr3", "out/in", "lgdt", "wrmsr", "cpuid", "rdtsc"] {
        assert!(names.contains(&name), "{name} missing");
    }
    let sgdt = rows.iter().find(|r| r["instruction"] == "sgdt").unwrap();
    assert_eq!(sgdt["sensitive"], true);
    assert_eq!(sgdt["privileged"], false);
    assert_eq!(rows.iter().find(|r| r["instruction"] == "cli").unwrap()["privileged"], true);
}

#[test]
fn every_row_is_correct_under_bt() {
    for r in &study().rows {
        let bt = &r.engines.bt;
        assert_eq!(bt.outcome, Outcome::Correct, "{}: {bt:?}", r.instruction);
        if !bt.expected.contains(['?', '<']) {
            assert_eq!(bt.observed, bt.expected, "{}", r.instruction);
        }
    }
    assert!(study().bt_all_correct());
}

#[test]
fn popf_deprivileged_is_wrong_no_trap_and_if_unchanged() {
    let r = &row("popf").engines.deprivileged;
    assert_eq!(r.outcome, Outcome::Wrong, "{r:?}");
    // The same, from the run itself: it reached its end (no trap), and the flags the guest
    // saw after popping IF=0 still have IF=1, as they had before.
    let c = case("popf");
    assert_ne!(c.state.eflags & eflags::IF, 0, "the guest starts with interrupts enabled");
    let run = engines::run(Engine::Deprivileged, &c, &KvmOptions::default()).unwrap();
    assert_eq!(run.end, End::Completed);
    let (field, want) = c.checks[0];
    let seen = field.read(&run.result).unwrap();
    assert_ne!(seen & u64::from(eflags::IF), 0, "IF unchanged: {seen:#x}");
    assert_eq!(want, Want::Eq(u64::from(c.state.eflags & !eflags::IF)));
}

#[test]
fn mov_to_and_from_cr0_trap_deprivileged() {
    for name in ["mov %cr0,%eax", "mov %eax,%cr0"] {
        let r = &row(name).engines.deprivileged;
        assert_eq!(r.outcome, Outcome::Trap, "{name}: {r:?}");
        let c = case(name);
        let run = engines::run(Engine::Deprivileged, &c, &KvmOptions::default()).unwrap();
        match run.end {
            End::Exception { vector: 13, eip, signal: Some(libc::SIGSEGV), .. } => assert_eq!(eip, c.insn, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn robin_irvine_rows_do_not_all_behave_deprivileged() {
    // The point of the study: these instructions do not simply work at CPL 3.
    for name in ["sgdt", "sidt", "smsw", "pushf", "popf", "push %cs", "lar"] {
        let r = &row(name).engines.deprivileged;
        assert_eq!(r.outcome, Outcome::Wrong, "{name}: {r:?}");
        assert_ne!(r.observed, r.expected, "{name}");
    }
    for name in ["cli", "sti", "hlt", "lgdt", "wrmsr", "out/in"] {
        assert_eq!(row(name).engines.deprivileged.outcome, Outcome::Trap, "{name}");
    }
}

#[test]
fn umip_emulation_is_reported_with_its_value() {
    if !study().host.umip {
        eprintln!("skipped: UMIP is off on this host");
        return;
    }
    let r = &row("sgdt").engines.deprivileged;
    assert!(r.note.contains("UMIP") && r.note.contains(&r.observed), "{r:?}");
}

#[test]
fn a_wrong_value_under_bt_is_caught() {
    // The comparison is not vacuous: the bt run of sgdt judged against a guest that says its
    // GDT is elsewhere is `wrong`.
    let mut c = case("sgdt");
    let run = engines::run(Engine::Bt, &c, &KvmOptions::default()).unwrap();
    let ok = engines::evaluate(Engine::Bt, &c, &run, &Bt86Cpu, &HostContext::default(), &Default::default());
    assert_eq!(ok.outcome, Outcome::Correct);
    c.checks[1].1 = Want::Eq(u64::from(c.state.gdt_base + 8));
    let bad = engines::evaluate(Engine::Bt, &c, &run, &Bt86Cpu, &HostContext::default(), &Default::default());
    assert_eq!(bad.outcome, Outcome::Wrong);
    assert!(bad.note.contains("differs: base"), "{bad:?}");
}

#[test]
fn kvm_is_not_run_without_a_hardware_backed_kvm() {
    match bt86_runtime::kvm::check_host() {
        Err(reason) => {
            for r in &study().rows {
                assert_eq!(r.engines.kvm.outcome, Outcome::NotRun, "{}", r.instruction);
                assert_eq!(r.engines.kvm.note, reason.to_string());
            }
            assert!(!study().host.kvm_ran);
        }
        // A hardware-backed KVM runs every row (what it shows is its own business).
        Ok(_) => {
            for r in &study().rows {
                assert_ne!(r.engines.kvm.outcome, Outcome::NotRun, "{}", r.instruction);
            }
        }
    }
}

#[test]
fn the_table_fits_100_columns() {
    let text = bt86_study::render::text::render(study());
    for line in text.lines() {
        assert!(line.chars().count() <= 100, "{} columns: {line}", line.chars().count());
    }
    for name in ROBIN_IRVINE {
        assert!(text.lines().any(|l| l.starts_with(name)), "{name} missing");
    }
}

#[test]
fn the_page_is_self_contained_and_has_the_figure() {
    let html = bt86_study::render::html::render(study());
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    assert!(html.contains("<svg") && html.contains("</svg>"));
    assert!(html.contains("Popek") && html.contains("Robin"));
    for o in Outcome::ALL {
        assert!(html.contains(&bt86_study::render::html::esc(o.explain())), "{o:?} is not explained");
    }
    // Nothing is fetched: no scripts, links, images or external URLs (the SVG namespace
    // is a name, not a fetch).
    for bad in ["<script", "<link", "<img", "src=", "url("] {
        assert!(!html.contains(bad), "{bad}");
    }
    assert_eq!(html.matches("http").count(), html.matches("http://www.w3.org/2000/svg").count());
    // One figure cell per row and engine, coloured by its outcome.
    let cells = html.matches("<rect x=").count();
    assert!(cells >= study().rows.len() * 3, "{cells} rects");
}
