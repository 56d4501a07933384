//! A guest must never crash, hang or escape the VMM, whatever it executes: random
//! bytes run as ring-0 code (with random registers, and pointers into RAM) must end
//! in some outcome — never a panic, a host signal, or a hang past the watchdog.

use bt86_runtime::vm::run_with_timeout;
use bt86_runtime::{Vm, VmConfig};
use proptest::prelude::*;
use std::time::Duration;

const CODE: u32 = 0x10_0000;

fn run(code: &[u8], regs: [u32; 8]) {
    let mut vm = Vm::new(VmConfig::new(4, Box::new(std::io::sink()))).expect("vm");
    vm.ram().write(CODE, code).expect("code");
    vm.set_flat_state(CODE, regs, 0);
    // Any outcome is fine; an Err is a VMM-internal error, which must not happen.
    let outcome = run_with_timeout(&mut vm, Duration::from_secs(1));
    assert!(outcome.is_ok(), "VMM error {outcome:?} on code {code:02x?}");
}

fn regs() -> impl Strategy<Value = [u32; 8]> {
    // Mostly pointers into RAM (so memory operands hit memory), sometimes anything.
    let reg = prop_oneof![3 => 0x10_0000u32..0x30_0000, 1 => any::<u32>()];
    proptest::array::uniform8(reg).prop_map(|mut r| {
        r[4] = 0x20_0000; // a usable stack
        r
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(250))]
    #[test]
    fn random_ring0_code_never_breaks_the_vmm(code in proptest::collection::vec(any::<u8>(), 1..96), regs in regs()) {
        run(&code, regs);
    }
}

#[test]
fn wild_descriptor_tables_and_control_registers() {
    // lgdt/lidt from garbage, then a far jump, an int, a mov to cr0 with PG, an iret.
    let code = [
        0x0f, 0x01, 0x15, 0x00, 0x00, 0x20, 0x00, // lgdt 0x200000
        0x0f, 0x01, 0x1d, 0x00, 0x00, 0x20, 0x00, // lidt 0x200000
        0xcd, 0x80, // int $0x80
        0xea, 0x00, 0x00, 0x10, 0x00, 0x08, 0x00, // ljmp $0x08,$0x100000
    ];
    run(&code, [0; 8].map(|_| 0x20_0000));
}

#[test]
fn code_segment_with_a_base_stops_clearly() {
    // A GDT whose selector 0x08 is a code segment based at 0x1000, then a far jump
    // into it: bt86 fetches code at linear = eip, so it must refuse, not run the
    // wrong bytes.
    let mut vm = Vm::new(VmConfig::new(4, Box::new(std::io::sink()))).expect("vm");
    let code = [
        0x0f, 0x01, 0x15, 0x00, 0x08, 0x10, 0x00, // lgdt 0x100800
        0xea, 0x00, 0x00, 0x10, 0x00, 0x08, 0x00, // ljmp $0x08,$0x100000
    ];
    vm.ram().write(CODE, &code).expect("code");
    vm.ram().write(0x10_0800, &[0x0f, 0x00, 0x10, 0x08, 0x10, 0x00]).expect("gdtr");
    // null descriptor, then base 0x1000, limit 4 GiB, type 0x9b, G+D.
    vm.ram().write(0x10_0810, &[0; 8]).expect("gdt");
    vm.ram().write(0x10_0818, &[0xff, 0xff, 0x00, 0x10, 0x00, 0x9b, 0xcf, 0x00]).expect("gdt");
    vm.set_flat_state(CODE, [0, 0, 0, 0, 0x20_0000, 0, 0, 0], 0);
    let outcome = run_with_timeout(&mut vm, Duration::from_secs(5)).expect("run");
    assert!(
        matches!(&outcome, bt86_runtime::RunOutcome::Unsupported { what, .. } if what.contains("non-zero base")),
        "{outcome:?}"
    );
}
