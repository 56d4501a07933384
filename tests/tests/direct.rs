//! Direct execution of guest user code: the `usertask` guest's user task (compute,
//! system calls, demand paging, protection faults, exceptions, a TLS segment,
//! x87/SSE state, self-modifying code, timer interrupts, a runaway loop) gives the
//! same results run directly in the runner as translated.

use bt86_runtime::{RunOutcome, UserCode};
use bt86_tests::guests::{self, run_guest_user_code, GuestRun};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// The console without the lines that may differ between runs (`~`).
fn stable(r: &GuestRun) -> String {
    r.console.lines().filter(|l| !l.starts_with('~')).collect::<Vec<_>>().join("\n")
}

/// Whether direct execution ran; false only where the host kernel refused a step of
/// the runner's set-up (no Syscall User Dispatch, seccomp or pidfd): any other
/// reason for it to be off is a failure.
fn direct_runs(r: &GuestRun) -> bool {
    let d = r.stats.direct.as_ref().expect("direct stats");
    match &d.disabled {
        None => true,
        Some(why) if why.contains("set-up failed") => {
            eprintln!("skipped: direct execution is not available on this host: {why}");
            false
        }
        Some(why) => panic!("direct execution failed: {why}"),
    }
}

#[test]
fn user_task_runs_directly_with_the_results_of_translation() {
    let t = run_guest_user_code(guests::USERTASK, "", UserCode::Translate, LIMIT);
    t.assert_passed();
    assert_eq!(t.outcome, RunOutcome::GuestExit(0), "{}", t.quoted_console());
    let d = run_guest_user_code(guests::USERTASK, "", UserCode::Direct, LIMIT);
    if !direct_runs(&d) {
        return;
    }
    d.assert_passed();
    assert_eq!(stable(&d), stable(&t), "direct and translated user code disagree");
    let s = d.stats.direct.as_ref().expect("direct stats");
    assert_eq!(s.escapes, 0, "{s:?}");
    assert!(s.entries > 2000 && s.seconds > 0.0, "{s:?}");
    let exits = |k: &str| s.exits.get(k).copied().unwrap_or(0);
    // 2,000 + 50 system calls and a few reports; 64 demand faults and 2 protection
    // faults reach the guest; the timer took the task back.
    assert!(exits("syscall") >= 2050, "{s:?}");
    assert!(exits("page_fault_guest") >= 66, "{s:?}");
    // Each demand fault's page, made present by the guest kernel, is mapped before
    // the instruction is entered again: no second exit for it.
    assert!(s.prefaults >= 64 && exits("page_fault_hidden") < 32, "{s:?}");
    assert!(exits("kick") >= 5, "{s:?}");
    // int3 and into exit to be run translated; a timer interrupt pending at that
    // boundary is taken first, and its handler returns to the instruction, which
    // then runs directly again (the guest still sees one #BP and one #OF: the
    // comparison above checks that). So once, or twice when the timer came first.
    let once_or_twice = |k: &str| (1..=2).contains(&exits(k));
    assert!(exits("exception") >= 1 && once_or_twice("int3") && once_or_twice("into"), "{s:?}");
    assert!(t.stats.direct.as_ref().is_some_and(|s| s.entries == 0));
}

#[test]
fn a_runaway_user_loop_does_not_stop_the_machine() {
    // The runaway task spins at CPL 3 with no system call or fault: only the
    // host timer's kick brings the VMM back for the guest's timer interrupt,
    // whose handler ends the task. Without it the run would time out.
    let d = run_guest_user_code(guests::USERTASK, "compute=1000", UserCode::Direct, LIMIT);
    if !direct_runs(&d) {
        return;
    }
    d.assert_passed();
    assert!(d.console.contains("runaway task ended by the timer with 0x77"), "{}", d.quoted_console());
}

#[test]
fn a_far_jump_to_the_hosts_64_bit_segment_reaches_neither_host_nor_guest_kernel() {
    // escape=1: ljmp to 0x33, then a 64-bit `syscall` (Syscall User Dispatch
    // stops it); escape=2: the 64-bit code first tries to clear the runner's dispatch
    // selector byte (read-only: a fault; were it writable, the seccomp filter would
    // stop the call); escape=3: an mmap of guest RAM no user page maps, through a
    // `syscall; ret` of the runner's own code (the VMM refuses it). The syscall never
    // runs (the code after it would set a flag in guest memory), the runner is
    // killed, and the guest kernel gets #GP and carries on, as on hardware where
    // its GDT has no such segment.
    for kind in [1, 2, 3] {
        let cmdline = format!("escape={kind} compute=1000");
        let t = run_guest_user_code(guests::USERTASK, &cmdline, UserCode::Translate, LIMIT);
        t.assert_passed();
        let d = run_guest_user_code(guests::USERTASK, &cmdline, UserCode::Direct, LIMIT);
        if !direct_runs(&d) {
            return;
        }
        d.assert_passed();
        for line in ["user: escape_caught = 0x00000001", "user: escape_flag = 0x00000000"] {
            assert!(d.console.contains(line), "escape={kind}: {}", d.quoted_console());
        }
        assert_eq!(stable(&d), stable(&t), "escape={kind}");
        let s = d.stats.direct.as_ref().expect("direct stats");
        assert_eq!(s.escapes, 1, "escape={kind}: {s:?}");
        assert!(s.runners_started >= 2, "a new runner after the escape: {s:?}");
    }
}

#[test]
fn a_user_loop_run_directly_stops_at_the_time_limit() {
    // `compute=4000000000` keeps the user task in its loop for far longer than the
    // limit: the run must stop (the kick), not hang in the runner.
    let started = std::time::Instant::now();
    let d = run_guest_user_code(guests::USERTASK, "only-compute compute=4000000000", UserCode::Direct, Duration::from_secs(2));
    if !direct_runs(&d) {
        return;
    }
    assert!(matches!(d.outcome, RunOutcome::Stopped { .. }), "{:?}", d.outcome);
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    assert!(d.stats.direct.as_ref().is_some_and(|s| s.seconds > 1.0), "{:?}", d.stats.direct);
}

#[test]
fn a_user_task_run_directly_survives_a_checkpoint() {
    use bt86_runtime::checkpoint::{Checkpoint, Engine};
    use bt86_runtime::devices::SharedBuffer;
    use bt86_runtime::vm::run_with_timeout;
    use bt86_runtime::{Vm, VmConfig};
    // Stopped in its compute loop, saved, restored in a new VM on a new thread, and
    // run directly to its end: the restored guest's TSC has an offset, so rdtsc
    // traps in the runner and runs translated (user and kernel TSC stay one clock).
    let cmdline = "compute=200000000";
    let t = run_guest_user_code(guests::USERTASK, cmdline, UserCode::Translate, LIMIT);
    t.assert_passed();
    let out = SharedBuffer::new();
    let out1 = out.clone();
    let bytes = std::thread::spawn(move || {
        let image = std::fs::read(guests::USERTASK).expect("guest");
        let mut vm = Vm::new(VmConfig::new(32, Box::new(out1))).expect("create VM");
        vm.load_multiboot(&image, cmdline).expect("load guest");
        vm.set_user_code(UserCode::Direct);
        let stopped = run_with_timeout(&mut vm, Duration::from_millis(150)).expect("run");
        assert!(matches!(stopped, RunOutcome::Stopped { .. }), "{stopped:?}");
        Checkpoint::capture(&mut vm, Engine::Bt, Vec::new()).expect("capture").to_bytes().expect("bytes")
    })
    .join()
    .expect("first piece");
    let out2 = out.clone();
    let (outcome, stats) = std::thread::spawn(move || {
        let mut vm = Checkpoint::from_bytes(&bytes).expect("read back").restore(Box::new(out2), false).expect("restore");
        vm.set_user_code(UserCode::Direct);
        let outcome = run_with_timeout(&mut vm, LIMIT).expect("run");
        vm.flush_devices();
        (outcome, vm.stats())
    })
    .join()
    .expect("second piece");
    let console = out.to_string_lossy();
    assert_eq!(outcome, RunOutcome::GuestExit(0), "{console}");
    let stable = |c: &str| c.lines().filter(|l| !l.starts_with('~')).collect::<Vec<_>>().join("\n");
    assert_eq!(stable(&console), stable(&t.console));
    let s = stats.direct.expect("direct stats");
    if s.disabled.as_deref().is_some_and(|w| w.contains("set-up failed")) {
        return;
    }
    assert!(s.disabled.is_none() && s.entries > 2000 && s.escapes == 0, "{s:?}");
}

#[test]
fn pmode_user_code_run_directly_differs_from_translation_only_where_the_readme_says() {
    // The pmode guest's user-mode checks run directly: everything agrees with
    // translation but the README's limits of direct execution, and exactly those
    // checks: selectors read from GDT-selector segment registers show TI (0x1b reads
    // as 0x1f), and sgdt/sidt/str answer with the host kernel's UMIP dummies. Any other
    // difference (a check that passes translated and fails directly) fails this test.
    const KNOWN: [&str; 8] = [
        "FAIL pmode.c:519 user: cs & 0xffff == UCODE ",
        "FAIL pmode.c:522 user: ss & 0xffff == UDATA ",
        "FAIL pmode.c:523 user: ds & 0xffff == UDATA ",
        "FAIL pmode.c:576 user: g.limit == 0x37 ",
        "FAIL pmode.c:577 user: g.base == (uint32_t)gdt ",
        "FAIL pmode.c:578 user: i.limit == 0x7ff ",
        "FAIL pmode.c:579 user: i.base == (uint32_t)idt ",
        "FAIL pmode.c:582 user: v & 0xffff == TSS_SEL ",
    ];
    let t = run_guest_user_code(guests::PMODE, "", UserCode::Translate, LIMIT);
    t.assert_passed();
    let d = run_guest_user_code(guests::PMODE, "", UserCode::Direct, LIMIT);
    if !direct_runs(&d) {
        return;
    }
    assert!(d.stats.direct.as_ref().is_some_and(|s| s.entries > 50 && s.escapes == 0), "{:?}", d.stats.direct);
    let (tl, dl): (Vec<&str>, Vec<&str>) = (t.console.lines().filter(|l| !l.starts_with('~')).collect(), d.console.lines().filter(|l| !l.starts_with('~')).collect());
    assert_eq!(tl.len(), dl.len(), "{}", d.quoted_console());
    let mut failed = 0;
    for (a, b) in tl.iter().zip(&dl) {
        if a == b {
            continue;
        }
        if a.starts_with("RESULT:") {
            continue;
        }
        assert!(KNOWN.iter().any(|k| b.starts_with(k)), "translated: {a}\ndirect:     {b}");
        failed += 1;
    }
    let total: u32 = t
        .console
        .lines()
        .find_map(|l| l.strip_prefix("RESULT: ")?.split(' ').next()?.parse().ok())
        .expect("translated RESULT line");
    assert!(d.console.contains(&format!("RESULT: {} passed, {failed} failed", total - failed)), "{}", d.quoted_console());
}

/// The differential oracle's generated cases as user code (CPL 3, paging, no IDT): run
/// directly in the runner and translated, registers, flags, data and the fault must
/// agree. (The oracle's other half compares translated code with native execution in a
/// confined child; this one compares bt86's two ways of running user code.)
mod oracle {
    use bt86_runtime::snippet::run_snippet_user;
    use bt86_runtime::UserCode;
    use bt86_tests::oracle::{diff, gen, listing};
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;
    use std::sync::OnceLock;

    /// A plain snippet run directly: whether the runner runs on this host at all.
    fn plain() -> &'static bt86_runtime::snippet::UserSnippetResult {
        static PLAIN: OnceLock<bt86_runtime::snippet::UserSnippetResult> = OnceLock::new();
        PLAIN.get_or_init(|| {
            let s = bt86_runtime::snippet::Snippet { code: vec![0x40, 0x01, 0xc3], regs: [1, 2, 3, 4, 0, 6, 7, 8], eflags: 0, data: vec![0; 16] };
            run_snippet_user(&s, UserCode::Direct).expect("direct run")
        })
    }

    fn check(c: &gen::Case) -> Result<(), TestCaseError> {
        let t = run_snippet_user(&c.snippet, UserCode::Translate).map_err(TestCaseError::fail)?;
        let d = run_snippet_user(&c.snippet, UserCode::Direct).map_err(TestCaseError::fail)?;
        assert_eq!(t.direct_entries, 0);
        // Every case starts at CPL 3 with interrupts on: its first instruction is
        // entered directly (where the host runs the runner at all).
        if plain().direct_entries > 0 && d.direct_entries == 0 {
            return Err(TestCaseError::fail(format!("not run directly:\n{}", listing(&c.snippet.code))));
        }
        let mask = c.compared_flags(t.result.fault);
        let differences = diff(&t.result, &d.result, mask, &c.snippet);
        if differences.is_empty() {
            Ok(())
        } else {
            // `diff` names its sides native/translated: here they are translated/direct.
            Err(TestCaseError::fail(format!(
                "translated (\"native\") and direct (\"translated\") user code disagree:\n{}\n{}",
                differences.join("\n"),
                listing(&c.snippet.code)
            )))
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, max_shrink_iters: 256, ..ProptestConfig::default() })]

        #[test]
        fn generated_user_code_runs_directly_as_translated(c in gen::mixed()) {
            check(&c)?;
        }

        #[test]
        fn generated_string_code_runs_directly_as_translated(c in gen::strings()) {
            check(&c)?;
        }

        #[test]
        fn generated_legacy_code_runs_directly_as_translated(c in gen::legacy()) {
            check(&c)?;
        }

        #[test]
        fn generated_control_code_runs_directly_as_translated(c in gen::control()) {
            check(&c)?;
        }

        #[test]
        fn generated_muldiv_code_runs_directly_as_translated(c in gen::muldiv()) {
            check(&c)?;
        }
    }

    #[test]
    fn the_oracle_runs_user_code_directly() {
        // inc %eax; add %eax, %ebx: run directly, then the hlt's #GP ends it.
        let d = plain();
        if d.direct_entries == 0 {
            eprintln!("skipped: direct execution did not run (not available on this host?)");
            return;
        }
        assert_eq!((d.result.regs[0], d.result.regs[3]), (2, 6), "{d:?}");
        assert_eq!(d.result.fault, None, "{d:?}");
    }
}
