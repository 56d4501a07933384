//! The native half of the differential oracle on its own: sanity of the compatibility-mode
//! runner, its fault conventions, and of the generators (their code decodes as intended and
//! runs natively without stray faults).

use std::time::{Duration, Instant};

use bt86_runtime::snippet::{Snippet, SnippetFault, CODE_ADDR, DATA_ADDR, REGION_SIZE, STACK_TOP};
use bt86_tests::oracle::flags::{AF, ARITH, CF, DF, OF, PF, SF, ZF};
use bt86_tests::oracle::native::{run_native, run_native_detailed};
use bt86_tests::oracle::{describe_input, gen};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, TestRunner};

fn snip(code: &[u8]) -> Snippet {
    Snippet {
        code: code.to_vec(),
        data: vec![0; 64],
        ..Default::default()
    }
}

fn fault(vector: u8, offset: u32) -> Option<SnippetFault> {
    Some(SnippetFault {
        vector,
        eip: CODE_ADDR + offset,
    })
}

#[test]
fn mov_add() {
    // mov $5,%eax; add $3,%eax
    let r = run_native(&snip(&[0xb8, 5, 0, 0, 0, 0x83, 0xc0, 3])).unwrap();
    assert_eq!(r.regs[0], 8);
    assert_eq!(r.fault, None);
    assert_eq!(r.eflags & (CF | ZF | SF | OF), 0);
}

#[test]
fn xor_sets_zf_pf() {
    // xor %eax,%eax with every flag set beforehand
    let mut s = snip(&[0x31, 0xc0]);
    s.regs[0] = 0x1234_5678;
    s.eflags = ARITH & !DF;
    let r = run_native(&s).unwrap();
    assert_eq!(r.regs[0], 0);
    assert_eq!(r.eflags & (ZF | PF), ZF | PF);
    assert_eq!(r.eflags & (CF | OF | SF), 0);
    assert_eq!(r.fault, None);
}

#[test]
fn registers_and_flags_round_trip() {
    for f in 0..128u32 {
        // Spread the 7 bits over CF PF AF ZF SF DF OF.
        let bits = [CF, PF, AF, ZF, SF, DF, OF];
        let fl = bits
            .iter()
            .enumerate()
            .filter(|(i, _)| f & (1 << i) != 0)
            .fold(0, |a, (_, b)| a | b);
        let s = Snippet {
            code: vec![0x90],
            regs: [
                0x1111_1111,
                0x2222_2222,
                0x3333_3333,
                0x4444_4444,
                0x0010_e000,
                0x6666_6666,
                0x7777_7777,
                0x8888_8888,
            ],
            eflags: fl,
            data: vec![],
        };
        let r = run_native(&s).unwrap();
        assert_eq!(r.regs, s.regs);
        assert_eq!(r.eflags, fl, "flags {fl:#x}");
    }
}

#[test]
fn default_esp_is_stack_top() {
    // push %eax; pop %ecx; mov %esp,%edx
    let mut s = snip(&[0x50, 0x59, 0x89, 0xe2]);
    s.regs[0] = 0xdead_beef;
    let r = run_native(&s).unwrap();
    assert_eq!(r.regs[4], STACK_TOP);
    assert_eq!(r.regs[2], STACK_TOP);
    assert_eq!(r.regs[1], 0xdead_beef);
}

#[test]
fn data_block_writes_come_back() {
    // mov $0x12345678, 0x108004 ; movb $0xaa, 0x10803f ; mov 0x108010,%ebx
    let mut code = vec![0xc7, 0x05];
    code.extend((DATA_ADDR + 4).to_le_bytes());
    code.extend(0x1234_5678u32.to_le_bytes());
    code.extend([0xc6, 0x05]);
    code.extend((DATA_ADDR + 0x3f).to_le_bytes());
    code.push(0xaa);
    code.extend([0x8b, 0x1d]);
    code.extend((DATA_ADDR + 0x10).to_le_bytes());
    let mut s = snip(&code);
    s.data[0x10..0x14].copy_from_slice(&0xcafe_f00du32.to_le_bytes());
    let r = run_native(&s).unwrap();
    assert_eq!(r.fault, None);
    assert_eq!(&r.data[4..8], &[0x78, 0x56, 0x34, 0x12]);
    assert_eq!(r.data[0x3f], 0xaa);
    assert_eq!(r.regs[3], 0xcafe_f00d);
    assert_eq!(r.data.len(), 64);
}

#[test]
fn divide_by_zero_is_de_at_the_div() {
    // mov $7,%eax; xor %ecx,%ecx; div %ecx; mov $1,%eax
    let r = run_native(&snip(&[
        0xb8, 7, 0, 0, 0, 0x31, 0xc9, 0xf7, 0xf1, 0xb8, 1, 0, 0, 0,
    ]))
    .unwrap();
    assert_eq!(r.fault, fault(0, 7));
    assert_eq!(r.regs[0], 7, "state before the div");
}

#[test]
fn divide_overflow_is_de() {
    // mov $0x80000000,%eax; cdq; mov $-1,%ecx; idiv %ecx
    let r = run_native(&snip(&[
        0xb8, 0, 0, 0, 0x80, 0x99, 0xb9, 0xff, 0xff, 0xff, 0xff, 0xf7, 0xf9,
    ]))
    .unwrap();
    assert_eq!(r.fault, fault(0, 11));
}

#[test]
fn aam_zero_is_de() {
    let r = run_native(&snip(&[0x90, 0xd4, 0x00])).unwrap();
    assert_eq!(r.fault, fault(0, 1));
}

#[test]
fn infinite_loop_times_out() {
    let t = Instant::now();
    let r = run_native(&snip(&[0xeb, 0xfe]));
    let e = r.expect_err("jmp . must time out");
    assert!(e.contains("timed out"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn int3_reports_the_next_instruction() {
    // nop; int3; nop — #BP is a trap: eip is after the int3.
    let r = run_native(&snip(&[0x90, 0xcc, 0x90])).unwrap();
    assert_eq!(r.fault, fault(3, 2));
    // int $3 (cd 03) likewise reports the address after its two bytes.
    let r = run_native(&snip(&[0x90, 0xcd, 0x03, 0x90])).unwrap();
    assert_eq!(r.fault, fault(3, 3));
}

#[test]
fn into_traps_only_with_of() {
    let mut s = snip(&[0x90, 0xce, 0x90]);
    s.eflags = OF;
    assert_eq!(run_native(&s).unwrap().fault, fault(4, 2));
    s.eflags = 0;
    assert_eq!(run_native(&s).unwrap().fault, None);
}

#[test]
fn ud2_and_privileged_instructions() {
    assert_eq!(
        run_native(&snip(&[0x90, 0x0f, 0x0b])).unwrap().fault,
        fault(6, 1)
    );
    // cli at CPL 3: #GP
    assert_eq!(
        run_native(&snip(&[0x90, 0xfa])).unwrap().fault,
        fault(13, 1)
    );
    // a hlt that is not the terminator
    assert_eq!(
        run_native(&snip(&[0xf4, 0x90])).unwrap().fault,
        fault(13, 0)
    );
    // int $0x10 through a DPL-0 gate: #GP
    let n = run_native_detailed(&snip(&[0xcd, 0x10])).unwrap();
    assert_eq!(n.result.fault, fault(13, 0));
    assert_eq!(n.error_code, 0x10 * 8 + 2);
}

#[test]
fn bound_is_br() {
    // bound %eax,(%ebx) with bounds [0,0] and eax=5
    let mut s = snip(&[0x62, 0x03]);
    s.regs[0] = 5;
    s.regs[3] = DATA_ADDR;
    assert_eq!(run_native(&s).unwrap().fault, fault(5, 0));
}

#[test]
fn access_outside_the_region_is_pf() {
    // mov %eax, 0x110000 (just past the region)
    let mut code = vec![0x90, 0xa3];
    code.extend((CODE_ADDR + REGION_SIZE).to_le_bytes());
    let n = run_native_detailed(&snip(&code)).unwrap();
    assert_eq!(n.result.fault, fault(14, 1));
    assert_eq!(n.cr2, CODE_ADDR + REGION_SIZE);
    assert_eq!(n.error_code & 2, 2, "write");
    // below the region too
    let mut code = vec![0xa1];
    code.extend((CODE_ADDR - 4).to_le_bytes());
    assert_eq!(run_native(&snip(&code)).unwrap().fault, fault(14, 0));
}

#[test]
fn rep_movs_fault_reports_partial_progress() {
    // rep movsb from the data block to 8 bytes below the end of the region, 16 bytes:
    // the 9th store faults; 8 iterations are done.
    let mut s = snip(&[0x90, 0xf3, 0xa4]);
    s.regs[1] = 16;
    s.regs[6] = DATA_ADDR;
    s.regs[7] = CODE_ADDR + REGION_SIZE - 8;
    let r = run_native(&s).unwrap();
    assert_eq!(r.fault, fault(14, 1), "eip of the rep prefix");
    assert_eq!(r.regs[1], 8);
    assert_eq!(r.regs[6], DATA_ADDR + 8);
    assert_eq!(r.regs[7], CODE_ADDR + REGION_SIZE);
    // rep movsd whose source runs off the end of the region: two dwords reach the data
    // block, the third read faults.
    let mut code = vec![0xc7, 0x05];
    code.extend((CODE_ADDR + REGION_SIZE - 8).to_le_bytes());
    code.extend(0x1122_3344u32.to_le_bytes());
    code.extend([0xc7, 0x05]);
    code.extend((CODE_ADDR + REGION_SIZE - 4).to_le_bytes());
    code.extend(0x5566_7788u32.to_le_bytes());
    let rep_at = code.len() as u32;
    code.extend([0xf3, 0xa5]);
    let mut s = Snippet {
        code,
        data: vec![0xee; 0x40],
        ..Default::default()
    };
    s.regs[1] = 8;
    s.regs[6] = CODE_ADDR + REGION_SIZE - 8;
    s.regs[7] = DATA_ADDR + 0x10;
    let r = run_native(&s).unwrap();
    assert_eq!(r.fault, fault(14, rep_at));
    assert_eq!(r.regs[1], 6);
    assert_eq!(r.regs[6], CODE_ADDR + REGION_SIZE);
    assert_eq!(r.regs[7], DATA_ADDR + 0x18);
    assert_eq!(
        &r.data[0x0c..0x1c],
        &[
            0xee, 0xee, 0xee, 0xee, 0x44, 0x33, 0x22, 0x11, 0x88, 0x77, 0x66, 0x55, 0xee, 0xee,
            0xee, 0xee
        ]
    );
}

#[test]
fn system_calls_are_refused() {
    // syscall in compatibility mode is #UD on Intel; int $0x80 would be a real system call,
    // which seccomp strict mode refuses (or, for exit, lets through): either way no result.
    let r = run_native(&snip(&[0x0f, 0x05]));
    match r {
        Ok(r) => assert_eq!(r.fault.map(|f| f.eip), Some(CODE_ADDR)),
        Err(e) => assert!(e.contains("native child"), "{e}"),
    }
    let mut s = snip(&[0xcd, 0x80]);
    s.regs[0] = 20; // getpid: not allowed in strict mode
    assert!(run_native(&s).is_err());
}

#[test]
fn parallel_runs() {
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..40u32 {
                    // mov $t,%eax; add $i,%eax
                    let mut code = vec![0xb8];
                    code.extend(t.to_le_bytes());
                    code.push(0x05);
                    code.extend(i.to_le_bytes());
                    let r = run_native(&snip(&code)).unwrap();
                    assert_eq!(r.regs[0], t + i);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn rejects_oversized_input() {
    assert!(run_native(&Snippet {
        code: vec![0x90; 0x8000],
        ..Default::default()
    })
    .is_err());
    assert!(run_native(&Snippet {
        data: vec![0; bt86_tests::oracle::native::MAX_DATA + 1],
        ..Default::default()
    })
    .is_err());
}

/// Every generated case decodes (in 32-bit mode) into valid instructions whose starts
/// include every recorded instruction start, and runs natively to the end or to a divide
/// error — never another fault (pointers stay in the data block) and never a timeout.
#[test]
fn generated_cases_decode_and_run_natively() {
    use iced_x86::{Code, Decoder, DecoderOptions};
    let per_family = 60;
    for (name, strategy) in gen::families() {
        let mut runner = TestRunner::new(Config {
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x0b86),
            ..Config::default()
        });
        let mut faults = 0;
        for _ in 0..per_family {
            let case = strategy.new_tree(&mut runner).unwrap().current();
            let code = &case.snippet.code;
            let mut starts = std::collections::HashSet::new();
            let mut dec = Decoder::with_ip(32, code, u64::from(CODE_ADDR), DecoderOptions::NONE);
            for ins in &mut dec {
                assert_ne!(
                    ins.code(),
                    Code::INVALID,
                    "{name}: invalid instruction at {:#x}\n{case:?}",
                    ins.ip()
                );
                starts.insert(ins.ip() as u32);
            }
            for &(eip, _) in &case.flags_at {
                assert!(
                    starts.contains(&eip),
                    "{name}: {eip:#x} is not an instruction start\n{case:?}"
                );
            }
            let r = run_native(&case.snippet).unwrap_or_else(|e| panic!("{name}: {e}\n{case:?}"));
            if let Some(f) = r.fault {
                assert_eq!(
                    f.vector,
                    0,
                    "{name}: unexpected fault {f:?}\n{}",
                    describe_input(&case.snippet)
                );
                faults += 1;
            }
            assert_eq!(r.data.len(), gen::DATA_LEN as usize);
            // Native runs are deterministic (else the oracle would report false differences).
            let again = run_native(&case.snippet).unwrap();
            assert_eq!(r, again, "{name}: two native runs differ\n{case:?}");
        }
        eprintln!("{name}: {per_family} cases, {faults} ended in #DE");
    }
}
