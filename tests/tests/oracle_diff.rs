//! Differential tests: the same snippet natively and translated by bt86 must end in the
//! same registers, flags, data block and fault. Fixed cases per instruction family, then
//! property tests over generated sequences (see `bt86_tests::oracle::gen`).

use bt86_runtime::snippet::{Snippet, CODE_ADDR, DATA_ADDR, REGION_SIZE};
use bt86_tests::oracle::enc::{
    self, Count, ImmForm, Mem, Rep, Rm, Size, AH, AL, CL, EAX, EBP, EBX, ECX, EDI, EDX, ESI, ESP,
};
use bt86_tests::oracle::flags::{AF, ARITH, CF, DF, OF, PF, SF, ZF};
use bt86_tests::oracle::{compare, compare_case, compare_masked, gen};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const D: Size = Size::D;
const W: Size = Size::W;
const B: Size = Size::B;

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn snippet(code: Vec<u8>, regs: [u32; 8], eflags: u32) -> Snippet {
    let data = gen::fill_data(0x5eed, 0, 256);
    Snippet {
        code,
        regs,
        eflags,
        data,
    }
}

fn same(s: Snippet) {
    if let Err(e) = compare(&s) {
        panic!("{e}");
    }
}

fn same_masked(s: Snippet, flags: u32) {
    if let Err(e) = compare_masked(&s, flags) {
        panic!("{e}");
    }
}

fn mov(r: u8, v: u32) -> Vec<u8> {
    enc::mov_r_imm(D, r, v)
}

fn reg(r: u8) -> Rm {
    Rm::R(r)
}

fn at(off: u32) -> Rm {
    Rm::M(Mem::abs(DATA_ADDR + off))
}

const REGS: [u32; 8] = [
    0x8000_0001,
    0x0000_00ff,
    0xffff_ffff,
    0x7fff_ffff,
    0,
    0x1234_5678,
    DATA_ADDR + 0x40,
    DATA_ADDR + 0x80,
];

// ---- ALU ----

#[test]
fn alu_add_overflow_and_carry() {
    for (a, b) in [
        (0x7fff_ffffu32, 1u32),
        (0xffff_ffff, 1),
        (0x8000_0000, 0x8000_0000),
        (0x0f, 1),
        (0, 0),
    ] {
        same(snippet(
            cat(&[
                mov(EAX, a),
                mov(EBX, b),
                enc::alu_rm_r(enc::ADD, D, reg(EAX), EBX),
            ]),
            REGS,
            0,
        ));
    }
}

#[test]
fn alu_adc_sbb_chains() {
    for cf in [0, CF] {
        same(snippet(
            cat(&[
                enc::alu_rm_r(enc::ADC, D, reg(EAX), EDX),
                enc::alu_rm_r(enc::ADC, W, reg(EBX), ECX),
                enc::alu_rm_imm(enc::SBB, B, reg(AH), 0x80, ImmForm::Full),
                enc::alu_rm_r(enc::SBB, D, reg(EBP), EAX),
            ]),
            REGS,
            cf,
        ));
    }
}

#[test]
fn alu_all_ops_all_sizes_reg_and_mem() {
    for op in 0..8 {
        for sz in [B, W, D] {
            same_masked(
                snippet(
                    cat(&[
                        enc::alu_rm_r(op, sz, reg(EDX), EBX),
                        enc::alu_r_rm(op, sz, ECX, at(0x10)),
                        enc::alu_rm_r(op, sz, Rm::M(Mem::based(ESI, 3)), EAX),
                        enc::alu_rm_imm(
                            op,
                            sz,
                            Rm::M(Mem::based(EDI, -5)),
                            0x8765_4321,
                            ImmForm::Full,
                        ),
                        enc::alu_acc_imm(op, sz, 0x7f),
                    ]),
                    REGS,
                    CF | ZF,
                ),
                if matches!(op, enc::OR | enc::AND | enc::XOR) {
                    ARITH & !AF
                } else {
                    ARITH
                },
            );
        }
    }
}

#[test]
fn alu_inc_dec_keep_cf_neg_not() {
    for cf in [0, CF] {
        same(snippet(
            cat(&[
                enc::incdec(false, D, reg(EBX)),
                enc::incdec(true, B, reg(CL)),
                enc::incdec(false, W, at(0x20)),
                enc::grp3(enc::NEG, D, reg(ESP + 1)),
                enc::grp3(enc::NOT, W, reg(EDX)),
                enc::grp3(enc::NEG, B, at(0x21)),
            ]),
            REGS,
            cf,
        ));
    }
    // neg 0 clears CF; neg 0x80000000 sets OF
    same(snippet(
        cat(&[
            mov(EAX, 0),
            enc::grp3(enc::NEG, D, reg(EAX)),
            mov(EBX, 0x8000_0000),
            enc::grp3(enc::NEG, D, reg(EBX)),
        ]),
        REGS,
        CF,
    ));
}

#[test]
fn alu_test_cmp_lahf_sahf() {
    same_masked(
        snippet(
            cat(&[
                enc::test_rm_r(D, reg(EAX), EDX),
                vec![enc::LAHF],
                enc::alu_rm_r(enc::CMP, B, reg(AH), AL),
                vec![enc::LAHF],
                mov(EBX, 0xd5),
                enc::mov_rm_r(B, reg(AH), EBX),
                vec![enc::SAHF],
            ]),
            REGS,
            0,
        ),
        ARITH,
    );
}

// ---- shifts ----

#[test]
fn shift_by_zero_keeps_flags() {
    for ext in [
        enc::ROL,
        enc::ROR,
        enc::RCL,
        enc::RCR,
        enc::SHL,
        enc::SHR,
        enc::SAR,
    ] {
        same(snippet(
            cat(&[
                enc::shift(ext, D, reg(EAX), Count::Imm(0)),
                enc::shift(ext, B, reg(EBX), Count::Imm(32)),
            ]),
            REGS,
            ARITH & !DF,
        ));
        same(snippet(
            cat(&[mov(ECX, 0x20), enc::shift(ext, W, reg(EDX), Count::Cl)]),
            REGS,
            CF | OF | AF,
        ));
    }
}

#[test]
fn shift_by_one_and_by_cl() {
    for ext in [
        enc::ROL,
        enc::ROR,
        enc::RCL,
        enc::RCR,
        enc::SHL,
        enc::SHR,
        enc::SAL6,
        enc::SAR,
    ] {
        for sz in [B, W, D] {
            same_masked(
                snippet(enc::shift(ext, sz, reg(EAX), Count::One), REGS, CF),
                ARITH & !AF,
            );
            for c in [1u8, 7, 8, 9, 15, 16, 17, 31, 33, 255] {
                let s = snippet(
                    cat(&[
                        enc::mov_r_imm(B, CL, u32::from(c)),
                        enc::shift(ext, sz, Rm::M(Mem::based(ESI, 1)), Count::Cl),
                    ]),
                    REGS,
                    CF,
                );
                let (_, _, undef) = gen::shift_fx(ext, sz.bits(), Some(c));
                same_masked(s, ARITH & !undef);
            }
        }
    }
}

#[test]
fn shld_shrd() {
    for right in [false, true] {
        for c in [0u8, 1, 4, 15, 16, 31, 32] {
            let (_, _, undef) = gen::shxd_fx(Some(c));
            same_masked(
                snippet(enc::shxd(right, D, reg(EAX), EDX, Count::Imm(c)), REGS, 0),
                ARITH & !undef,
            );
            if c <= 16 {
                same_masked(
                    snippet(
                        cat(&[
                            enc::mov_r_imm(B, CL, u32::from(c)),
                            enc::shxd(right, W, at(2), EBX, Count::Cl),
                        ]),
                        REGS,
                        CF,
                    ),
                    ARITH & !undef,
                );
            }
        }
    }
}

// ---- multiply and divide ----

#[test]
fn mul_imul_forms() {
    let mul_undef = SF | ZF | AF | PF;
    for sz in [B, W, D] {
        same_masked(
            snippet(enc::grp3(enc::MUL, sz, reg(EDX)), REGS, 0),
            ARITH & !mul_undef,
        );
        same_masked(
            snippet(enc::grp3(enc::IMUL, sz, at(8)), REGS, 0),
            ARITH & !mul_undef,
        );
    }
    same_masked(
        snippet(enc::imul_r_rm(D, EBX, reg(EAX)), REGS, 0),
        ARITH & !mul_undef,
    );
    same_masked(
        snippet(enc::imul_r_rm_imm(W, EBP, at(4), 0xfff0, false), REGS, 0),
        ARITH & !mul_undef,
    );
    same_masked(
        snippet(enc::imul_r_rm_imm(D, EDI, reg(EDX), 0x80, true), REGS, 0),
        ARITH & !mul_undef,
    );
}

#[test]
fn div_idiv_results() {
    // 8-bit: ax / bl; 16-bit: dx:ax / cx; 32-bit: edx:eax / esi; signed with sign extension
    let ok = [
        cat(&[
            enc::mov_r_imm(W, EAX, 1000),
            enc::mov_r_imm(B, EBX, 7),
            enc::grp3(enc::DIV, B, reg(EBX)),
        ]),
        cat(&[
            mov(EAX, 0x1234),
            mov(EDX, 3),
            mov(ECX, 0x10),
            enc::grp3(enc::DIV, W, reg(ECX)),
        ]),
        cat(&[
            mov(EAX, 0xdead_beef),
            mov(EDX, 0x1234),
            mov(ESI, 0x12345),
            enc::grp3(enc::DIV, D, reg(ESI)),
        ]),
        cat(&[
            mov(EAX, (-1000i32) as u32),
            enc::CDQ.to_vec(),
            mov(ECX, 7),
            enc::grp3(enc::IDIV, D, reg(ECX)),
        ]),
        cat(&[
            enc::mov_r_imm(B, AL, 0x81),
            enc::CBW.to_vec(),
            enc::mov_r_imm(B, CL, 0xfd),
            enc::grp3(enc::IDIV, B, reg(CL)),
        ]),
    ];
    for code in ok {
        same_masked(snippet(code, REGS, 0), DF);
    }
}

#[test]
fn divide_errors_fault_alike() {
    // div by zero, quotient overflow (unsigned and signed), aam 0: #DE at the instruction
    // with the state before it.
    let faults = [
        cat(&[
            mov(EAX, 5),
            mov(ECX, 0),
            enc::grp3(enc::DIV, D, reg(ECX)),
            mov(EAX, 1),
        ]),
        cat(&[mov(EDX, 1), mov(ECX, 1), enc::grp3(enc::DIV, D, reg(ECX))]),
        cat(&[
            mov(EAX, 0x8000_0000),
            enc::CDQ.to_vec(),
            mov(EBX, 0xffff_ffff),
            enc::grp3(enc::IDIV, D, reg(EBX)),
        ]),
        cat(&[
            enc::mov_r_imm(W, EAX, 0x8000),
            enc::CWD.to_vec(),
            enc::mov_r_imm(W, EBX, 0xffff),
            enc::grp3(enc::IDIV, W, reg(EBX)),
        ]),
        cat(&[
            enc::mov_r_imm(W, EAX, 0x1000),
            enc::grp3(enc::DIV, B, Rm::M(Mem::abs(DATA_ADDR + 200))),
        ]),
        cat(&[vec![0x90], enc::aam(0)]),
    ];
    for code in faults {
        let mut s = snippet(code, REGS, CF | ZF);
        s.data[200] = 0;
        same(s);
    }
}

// ---- bit operations ----

#[test]
fn bt_family_reg_and_mem() {
    let undef = OF | SF | AF | PF;
    for op in 0..4 {
        for sz in [W, D] {
            same_masked(
                snippet(enc::bt_rm_r(op, sz, reg(EAX), ECX), REGS, ZF),
                ARITH & !undef,
            );
            same_masked(
                snippet(enc::bt_rm_imm(op, sz, reg(EDX), 45), REGS, 0),
                ARITH & !undef,
            );
            same_masked(
                snippet(enc::bt_rm_imm(op, sz, at(16), 13), REGS, 0),
                ARITH & !undef,
            );
            // Big bit offsets, both signs, relative to the middle of the data block.
            for off in [-1000i32, -1, 0, 77, 1000] {
                same_masked(
                    snippet(
                        cat(&[
                            mov(EBX, DATA_ADDR + 128),
                            mov(EDX, off as u32),
                            enc::bt_rm_r(op, sz, Rm::M(Mem::based(EBX, 0)), EDX),
                        ]),
                        REGS,
                        0,
                    ),
                    ARITH & !undef,
                );
            }
        }
    }
}

#[test]
fn bsf_bsr_bswap() {
    for src in [0u32, 1, 0x8000_0000, 0x0001_0100, 0xffff_ffff] {
        for rev in [false, true] {
            same_masked(
                snippet(
                    cat(&[
                        mov(EAX, src),
                        enc::bsx(rev, D, EBX, reg(EAX)),
                        enc::bsx(rev, W, EDX, reg(EAX)),
                    ]),
                    REGS,
                    0,
                ),
                ZF | DF,
            );
        }
    }
    same(snippet(
        cat(&[enc::bswap(EAX), enc::bswap(EDI), enc::bswap(EBP)]),
        REGS,
        0,
    ));
}

#[test]
fn setcc_cmovcc_all_conditions() {
    for (a, b) in [
        (1u32, 2u32),
        (2, 1),
        (5, 5),
        (0x8000_0000, 1),
        (0x7fff_ffff, 0xffff_ffff),
    ] {
        let mut code = vec![
            mov(EAX, a),
            mov(EBX, b),
            enc::alu_rm_r(enc::CMP, D, reg(EAX), EBX),
        ];
        for cc in 0..16u8 {
            code.push(enc::setcc(cc, Rm::M(Mem::abs(DATA_ADDR + u32::from(cc)))));
        }
        for cc in 0..16u8 {
            code.push(enc::cmovcc(
                cc,
                if cc % 2 == 0 { D } else { W },
                ECX + (cc % 3),
                at(32 + 4 * u32::from(cc)),
            ));
        }
        same(snippet(cat(&code), REGS, 0));
    }
}

// ---- string instructions ----

#[test]
fn rep_movs_forward_backward_overlapping() {
    for (op, sz) in [(enc::MOVS, B), (enc::MOVS, W), (enc::MOVS, D)] {
        for (df, src, dst) in [
            (false, 0x10u32, 0x80u32),
            (true, 0x60, 0x90),
            (false, 0x10, 0x11),
            (true, 0x20, 0x1f),
        ] {
            let code = cat(&[
                vec![if df { enc::STD } else { enc::CLD }],
                mov(ESI, DATA_ADDR + src),
                mov(EDI, DATA_ADDR + dst),
                mov(ECX, 9),
                enc::string(Rep::Rep, op, sz),
            ]);
            same(snippet(code, REGS, 0));
        }
    }
}

#[test]
fn stos_lods_single_and_rep_zero_count() {
    for sz in [B, W, D] {
        same(snippet(
            cat(&[
                mov(EDI, DATA_ADDR + 5),
                enc::string(Rep::None, enc::STOS, sz),
                enc::string(Rep::None, enc::STOS, sz),
            ]),
            REGS,
            0,
        ));
        same(snippet(
            cat(&[
                mov(ESI, DATA_ADDR + 7),
                enc::string(Rep::Rep, enc::LODS, sz),
            ]),
            [0, 3, 0, 0, 0, 0, 0, 0],
            DF,
        ));
        same(snippet(
            cat(&[
                mov(ECX, 0),
                mov(EDI, DATA_ADDR),
                enc::string(Rep::Rep, enc::STOS, sz),
            ]),
            REGS,
            0,
        ));
    }
}

#[test]
fn repe_repne_cmps_scas() {
    let mut s = snippet(vec![], REGS, 0);
    s.data[..16].copy_from_slice(b"abcdefgh_bcdXfgh");
    for rep in [Rep::None, Rep::Rep, Rep::Repne] {
        for n in [0u32, 1, 8] {
            s.code = cat(&[
                vec![enc::CLD],
                mov(ESI, DATA_ADDR),
                mov(EDI, DATA_ADDR + 8),
                mov(ECX, n),
                enc::string(rep, enc::CMPS, B),
            ]);
            same(s.clone());
            s.code = cat(&[
                vec![enc::CLD],
                enc::mov_r_imm(B, AL, u32::from(b'd')),
                mov(EDI, DATA_ADDR),
                mov(ECX, n),
                enc::string(rep, enc::SCAS, B),
            ]);
            same(s.clone());
        }
    }
}

#[test]
fn rep_movs_faulting_mid_way() {
    // The destination runs off the end of the region after 8 of 16 iterations: #PF at the
    // rep instruction, with ecx/esi/edi of the completed iterations.
    let code = cat(&[
        vec![enc::CLD],
        mov(ESI, DATA_ADDR),
        mov(EDI, CODE_ADDR + REGION_SIZE - 8),
        mov(ECX, 16),
        enc::string(Rep::Rep, enc::MOVS, B),
    ]);
    same(snippet(code, REGS, 0));
    // rep movsd whose source runs off the end of the region after two dwords, into the
    // data block.
    let code = cat(&[
        enc::mov_rm_imm(D, Rm::M(Mem::abs(CODE_ADDR + REGION_SIZE - 8)), 0x1122_3344),
        enc::mov_rm_imm(D, Rm::M(Mem::abs(CODE_ADDR + REGION_SIZE - 4)), 0x5566_7788),
        mov(ESI, CODE_ADDR + REGION_SIZE - 8),
        mov(EDI, DATA_ADDR + 0x10),
        mov(ECX, 8),
        enc::string(Rep::Rep, enc::MOVS, D),
    ]);
    same(snippet(code, REGS, 0));
}

// ---- BCD ----

#[test]
fn bcd_adjustments() {
    // (ax, flags) inputs for each of daa das aaa aas aam aad
    let inputs = [
        (0x0019u16, 0u32),
        (0x0041, AF),
        (0x009a, 0),
        (0x00ff, CF | AF),
        (0x0f0f, 0),
        (0x0109, AF),
        (0x0000, CF),
    ];
    let ops: [(Vec<u8>, u32); 7] = [
        (vec![enc::DAA], OF),
        (vec![enc::DAS], OF),
        (vec![enc::AAA], OF | SF | ZF | PF),
        (vec![enc::AAS], OF | SF | ZF | PF),
        (enc::aam(10), OF | AF | CF),
        (enc::aad(10), OF | AF | CF),
        (enc::aam(16), OF | AF | CF),
    ];
    for (ax, fl) in inputs {
        for (op, undef) in &ops {
            same_masked(
                snippet(
                    cat(&[enc::mov_r_imm(W, EAX, u32::from(ax)), op.clone()]),
                    REGS,
                    fl,
                ),
                ARITH & !undef,
            );
        }
    }
    // classic packed BCD addition and subtraction
    same_masked(
        snippet(
            cat(&[
                enc::mov_r_imm(B, AL, 0x19),
                enc::alu_acc_imm(enc::ADD, B, 0x28),
                vec![enc::DAA],
            ]),
            REGS,
            0,
        ),
        ARITH & !OF,
    );
    same_masked(
        snippet(
            cat(&[
                enc::mov_r_imm(B, AL, 0x21),
                enc::alu_acc_imm(enc::SUB, B, 0x39),
                vec![enc::DAS],
            ]),
            REGS,
            0,
        ),
        ARITH & !OF,
    );
    same(snippet(enc::aam(0), REGS, 0));
}

// ---- encodings that are invalid or different in 64-bit mode ----

#[test]
fn legacy_inc_dec_push_pop() {
    let mut code = Vec::new();
    for r in 0..8u8 {
        if r != ESP {
            code.push(enc::incdec_short(false, D, r));
            code.push(enc::incdec_short(true, W, r));
        }
    }
    for r in 0..8u8 {
        code.push(enc::push_r(D, r));
    }
    code.push(enc::push_r(W, EAX));
    code.push(enc::pop_r(W, EBX));
    for r in [EDI, ESI, EBP, EBX, EDX, ECX, EAX] {
        code.push(enc::pop_r(D, r));
    }
    same(snippet(cat(&code), REGS, CF));
}

#[test]
fn legacy_pusha_popa_with_stack_in_data() {
    let mut regs = REGS;
    regs[4] = DATA_ADDR + 0x80;
    same(snippet(
        cat(&[
            enc::pusha(D),
            enc::pusha(W),
            mov(EAX, 0),
            enc::popa(W),
            enc::alu_rm_imm(enc::ADD, D, reg(ESP), 4, ImmForm::Short),
            enc::popa(D),
        ]),
        regs,
        0,
    ));
}

#[test]
fn legacy_misc() {
    for cf in [0, CF] {
        same(snippet(
            cat(&[
                vec![enc::SALC],
                enc::CBW.to_vec(),
                enc::CWDE.to_vec(),
                enc::CDQ.to_vec(),
                enc::CWD.to_vec(),
            ]),
            REGS,
            cf,
        ));
    }
    same(snippet(
        cat(&[
            enc::xchg_acc(D, EBX),
            enc::xchg_acc(W, ECX),
            enc::xchg_rm_r(B, reg(AH), EDX),
            enc::xchg_rm_r(D, at(12), ESI),
        ]),
        REGS,
        0,
    ));
    // 0x82 alias, arpl (0x63: movsxd in 64-bit mode)
    same(snippet(
        cat(&[
            enc::alu_rm_imm(enc::SUB, B, reg(EBX), 0x80, ImmForm::Alias82),
            enc::alu_rm_imm(enc::XOR, B, at(3), 0x5a, ImmForm::Alias82),
        ]),
        REGS,
        0,
    ));
    same(snippet(
        cat(&[mov(EAX, 0x10), mov(EBX, 0x23), vec![0x63, 0xd8]]),
        REGS,
        0,
    ));
}

#[test]
fn legacy_lea_forms() {
    let mut code = vec![
        enc::lea(EAX, Mem::based(ESP, 8)),
        enc::lea(
            EBX,
            Mem {
                base: Some(ESP),
                index: Some((ESI, 4)),
                disp: -0x1000,
            },
        ),
        enc::lea(
            ECX,
            Mem {
                base: None,
                index: Some((EBP, 8)),
                disp: 0x1234_5678,
            },
        ),
        enc::lea(
            EDX,
            Mem {
                base: Some(EBP),
                index: Some((EDI, 2)),
                disp: 0,
            },
        ),
    ];
    for rm16 in 0..8u8 {
        for md in 0..3u8 {
            code.push(enc::lea16(EDI, rm16, md, 0xfff0));
            code.push(enc::alu_rm_r(enc::XOR, D, reg(EDX), EDI));
        }
    }
    same_masked(
        snippet(
            cat(&code),
            [
                0x1111_ffff,
                0x2222_8000,
                3,
                0x4444_7fff,
                0,
                0x6666_0101,
                0x7777_fefe,
                0x8888_0002,
            ],
            0,
        ),
        ARITH & !AF,
    );
}

#[test]
fn legacy_push_pop_memory() {
    let mut regs = REGS;
    regs[4] = DATA_ADDR + 0x40;
    same(snippet(
        cat(&[
            enc::push_rm(D, at(0x80)),
            enc::push_rm(W, Rm::M(Mem::based(ESP, 2))),
            enc::pop_rm(D, at(0x90)),
            // pop with an esp-relative destination: the address uses esp after the pop
            enc::pop_rm(D, Rm::M(Mem::based(ESP, 4))),
            enc::push_rm(D, Rm::M(Mem::based(ESP, 0))),
            enc::pop_rm(W, Rm::M(Mem::based(ESP, -2))),
            enc::push_imm(D, 0xffff_ff80, true),
            enc::push_imm(W, 0x1234, false),
        ]),
        regs,
        0,
    ));
}

// ---- control transfer, traps and faults ----

#[test]
fn jcc_loop_call_indirect() {
    // cmp; jl over an add; loop 3 times; call a subroutine; jmp *%eax to the end
    let body = enc::alu_rm_imm(enc::ADD, D, reg(EBX), 0x100, ImmForm::Full);
    let mut code = cat(&[
        enc::alu_rm_r(enc::CMP, D, reg(EAX), EDX),
        enc::jcc8(0xc, body.len() as i8),
        body,
    ]);
    let lbody = enc::alu_rm_imm(enc::ADD, D, reg(EDI), 3, ImmForm::Short);
    code.extend(cat(&[
        mov(ECX, 3),
        lbody.clone(),
        enc::loopx(0xe2, -(lbody.len() as i8) - 2),
    ]));
    let sub = cat(&[enc::incdec(false, D, reg(ESI)), vec![enc::RET]]);
    code.extend(cat(&[enc::call32(2), enc::jmp8(sub.len() as i8), sub]));
    let target = CODE_ADDR + code.len() as u32 + 5 + 2 + 1;
    code.extend(cat(&[mov(EAX, target), enc::jmp_rm(reg(EAX)), vec![0xf4]]));
    code.extend(enc::jecxz(1));
    code.push(0xf4);
    same_masked(snippet(code, REGS, 0), ARITH);
}

// Traps report the eip after the instruction, faults the instruction itself; the snippet
// runs at CPL 3 natively, so privileged instructions and a non-terminator hlt are #GP.

#[test]
fn trap_int3() {
    same(snippet(vec![0x90, 0xcc, 0x40], REGS, OF));
}

#[test]
fn trap_into_with_of() {
    same(snippet(vec![0x90, 0xce, 0x40], REGS, OF));
    same(snippet(vec![0x90, 0xce, 0x40], REGS, 0));
}

#[test]
fn fault_ud2() {
    same(snippet(vec![0x40, 0x0f, 0x0b], REGS, 0));
}

// hlt, cli and int n are not compared here: the native run is a CPL-3 process, where
// they fault, while bt86 runs snippets as a ring-0 guest, where they must not. Their
// ring-0 behaviour is checked by the guests (tests/guests/sensitive.c).

#[test]
fn fault_outside_the_region() {
    // Only above the region: below it the snippet machine has RAM (paging is off, so
    // nothing can make a hole there), while the native process has none.
    for addr in [CODE_ADDR + REGION_SIZE, CODE_ADDR + REGION_SIZE + 0x1000] {
        let mut load = vec![0x40, 0xa1];
        load.extend(addr.to_le_bytes());
        same(snippet(load, REGS, 0));
    }
}

#[test]
fn self_modifying_code() {
    // Overwrite the next instruction (a nop) with inc %eax before executing it.
    let patch_at = CODE_ADDR + 7;
    let mut code = vec![0xc6, 0x05];
    code.extend(patch_at.to_le_bytes());
    code.push(0x40);
    assert_eq!(code.len(), 7);
    code.extend([0x90, 0x90]);
    same(snippet(code, REGS, 0));
}

// ---- generated sequences ----

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 512,
        ..ProptestConfig::default()
    }
}

fn check(c: &gen::Case) -> Result<(), TestCaseError> {
    compare_case(c).map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(config(200))]

    #[test]
    fn prop_alu(c in gen::alu()) { check(&c)?; }

    #[test]
    fn prop_shifts(c in gen::shifts()) { check(&c)?; }

    #[test]
    fn prop_muldiv(c in gen::muldiv()) { check(&c)?; }

    #[test]
    fn prop_bits(c in gen::bits()) { check(&c)?; }

    #[test]
    fn prop_strings(c in gen::strings()) { check(&c)?; }

    #[test]
    fn prop_bcd(c in gen::bcd()) { check(&c)?; }

    #[test]
    fn prop_legacy(c in gen::legacy()) { check(&c)?; }

    #[test]
    fn prop_control(c in gen::control()) { check(&c)?; }

    #[test]
    fn prop_mixed(c in gen::mixed()) { check(&c)?; }
}

// ---- forms translated by hand: counters in cx, enterw, xlat, masked stores ----

/// `body` with `ecx` preset to each of `counts`, `eax` to 0 and 1 (ZF for the
/// loope/loopne cases comes from `test %eax,%eax`): the registers after must agree.
fn counted_cases(body: &[u8], counts: &[u32]) {
    for &ecx in counts {
        for eax in [0u32, 1] {
            let mut regs = REGS;
            regs[1] = ecx;
            regs[0] = eax;
            let code = cat(&[vec![0x85, 0xc0], body.to_vec(), mov(EDX, 0x77)]);
            same(snippet(code, regs, 0));
        }
    }
}

#[test]
fn jcxz_and_loops_count_in_cx() {
    // Each branch skips `mov $1,%ebx` (5 bytes) when taken.
    let skip = [0xbb, 0x01, 0x00, 0x00, 0x00];
    let counts = [0, 1, 2, 0x1_0000, 0x1_0001, 0xffff_0000, 0x1234_ffff];
    for opcode in [0xe3u8, 0xe2, 0xe1, 0xe0] {
        counted_cases(&cat(&[vec![0x67, opcode, 0x05], skip.to_vec()]), &counts);
    }
    // A loop that runs: loopw back to a counter increment, cx = 3 with ecx's upper half set.
    let code = cat(&[mov(ECX, 0xabcd_0003), mov(EAX, 0), vec![0x40, 0x67, 0xe2, 0xfc]]);
    same(snippet(code, REGS, 0));
}

#[test]
fn enterw_builds_a_16_bit_frame() {
    for level in [0u8, 1, 2, 3] {
        let code = cat(&[mov(EBP, 0x0010_f800 + u32::from(level) * 16), vec![0x66, 0xc8, 0x10, 0x00, level]]);
        same(snippet(code, REGS, 0));
    }
}

#[test]
fn xlat_reads_ebx_plus_al() {
    for al in [0u32, 0x7f, 0x80, 0xff] {
        let code = cat(&[mov(EBX, DATA_ADDR + 0x10), mov(EAX, 0x1234_5600 | al), vec![0xd7]]);
        same(snippet(code, REGS, 0));
    }
}

#[test]
fn masked_stores_write_through_edi() {
    // maskmovq %mm1,%mm0 stores the bytes of mm0 whose mask byte in mm1 has bit 7 set.
    let code = cat(&[
        mov(EDI, DATA_ADDR + 0x20),
        mov(EAX, 0x8000_8000),
        vec![0x0f, 0x6e, 0xc8], // movd %eax,%mm1
        mov(EAX, 0x1122_3344),
        vec![0x0f, 0x6e, 0xc0], // movd %eax,%mm0
        vec![0x0f, 0xf7, 0xc1], // maskmovq %mm1,%mm0
        vec![0x0f, 0x77],       // emms
    ]);
    same(snippet(code, REGS, 0));
}
