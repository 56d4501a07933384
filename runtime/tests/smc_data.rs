//! Self-modifying-code protection and data that shares a page with code: writes
//! that miss every translated byte keep the translations (and stay correct).

use bt86_runtime::vm::run_with_timeout;
use bt86_runtime::{RunOutcome, Vm, VmConfig};
use std::time::Duration;

#[test]
fn counter_on_the_code_page_keeps_translations() {
    let mut vm = Vm::new(VmConfig::new(2, Box::new(std::io::sink()))).expect("vm");
    let code = [
        0xb9, 0xe8, 0x03, 0x00, 0x00, // mov $1000,%ecx
        0xff, 0x05, 0x00, 0x08, 0x10, 0x00, // L: incl 0x100800 (same page as the code)
        0x49, // dec %ecx
        0x75, 0xf7, // jnz L
        0xf4, // hlt
    ];
    vm.ram().write(0x10_0000, &code).expect("write code");
    vm.set_flat_state(0x10_0000, [0, 0, 0, 0, 0x10_f000, 0, 0, 0], 0);
    let outcome = run_with_timeout(&mut vm, Duration::from_secs(20)).expect("run");
    assert_eq!(outcome, RunOutcome::Halted { eip: 0x10_000e });
    assert_eq!(vm.ram().read_u32(0x10_0800).expect("read"), 1000);
    let stats = vm.stats();
    assert_eq!(stats.smc_data_writes, 1000, "{stats:?}");
    assert!(stats.units_invalidated == 0, "{stats:?}");
}

#[test]
fn write_over_translated_code_still_invalidates() {
    let mut vm = Vm::new(VmConfig::new(2, Box::new(std::io::sink()))).expect("vm");
    let code = [
        0xc6, 0x05, 0x0d, 0x00, 0x10, 0x00, 0x40, // movb $0x40 (inc %eax),0x10000d
        0x31, 0xc0, // xor %eax,%eax
        0x90, 0x90, 0x90, 0x90, // nops; the one at 0x10000d becomes inc %eax
        0x90, 0xf4, // nop; hlt
    ];
    vm.ram().write(0x10_0000, &code).expect("write code");
    // Translate and run once so the page holds code, then patch and run again.
    vm.set_flat_state(0x10_0007, [0, 0, 0, 0, 0x10_f000, 0, 0, 0], 0);
    assert_eq!(run_with_timeout(&mut vm, Duration::from_secs(20)).expect("run"), RunOutcome::Halted { eip: 0x10_000e });
    vm.set_flat_state(0x10_0000, [0, 0, 0, 0, 0x10_f000, 0, 0, 0], 0);
    assert_eq!(run_with_timeout(&mut vm, Duration::from_secs(20)).expect("run"), RunOutcome::Halted { eip: 0x10_000e });
    assert_eq!(vm.registers().0[0], 1, "the patched instruction ran");
    assert!(vm.stats().units_invalidated > 0);
}
