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
    let outcome = run_with_timeout(&mut vm, Duration::from_millis(300));
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

/// Random page directories and tables (entries pointing anywhere, any flags), a
/// random CR3, paging switched on, then random code: the shadow MMU must never
/// break the VMM whatever the guest's page tables say.
fn run_paged(code: &[u8], tables: &[u32], cr3: u32, regs: [u32; 8]) {
    let mut vm = Vm::new(VmConfig::new(4, Box::new(std::io::sink()))).expect("vm");
    // Identity-map the first 4 MiB so the prologue keeps running after PG=1;
    // the rest of the directory and a second table are random.
    let pd = 0x20_0000;
    for i in 0..1024u32 {
        vm.ram().write_u32(0x20_1000 + 4 * i, (i << 12) | 0x7).expect("pte");
    }
    // Random PTEs for linear 4–8 MiB: frames inside RAM, any flags (P, R/W, U/S, A,
    // D, PS/PAT bit 7, G, ...); some point at the page tables themselves.
    for (i, e) in tables.iter().enumerate() {
        let entry = if e & 0x100 != 0 { 0x20_1000 | (e & 0xfff) } else { e & 0x003f_ffff };
        vm.ram().write_u32(0x20_2000 + 4 * i as u32, entry).expect("random entries");
    }
    vm.ram().write_u32(pd, 0x20_1000 | 0x7).expect("pde0");
    vm.ram().write_u32(pd + 4, 0x20_2000 | (cr3 & 0x7) | 1).expect("pde1");
    let prologue = [
        0xb8, 0x00, 0x00, 0x20, 0x00, // mov $0x200000,%eax
        0x0f, 0x22, 0xd8, // mov %eax,%cr3
        0x0f, 0x20, 0xc0, // mov %cr0,%eax
        0x0d, 0x00, 0x00, 0x01, 0x80, // or $0x80010000,%eax (PG|WP)
        0x0f, 0x22, 0xc0, // mov %eax,%cr0
    ];
    let mut all = prologue.to_vec();
    // A few more directory entries: random, as tables or 4 MiB pages.
    for k in 2..6u32 {
        let e = tables.get(k as usize).copied().unwrap_or(0) & 0x003f_ffff;
        vm.ram().write_u32(pd + 4 * k, e).expect("pde");
    }
    all.extend_from_slice(code);
    vm.ram().write(CODE, &all).expect("code");
    vm.set_flat_state(CODE, regs, 0);
    let outcome = run_with_timeout(&mut vm, Duration::from_millis(300));
    assert!(outcome.is_ok(), "VMM error {outcome:?} on code {code:02x?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]
    #[test]
    fn random_page_tables_never_break_the_vmm(
        code in proptest::collection::vec(any::<u8>(), 1..64),
        tables in proptest::collection::vec(any::<u32>(), 16..64),
        cr3 in any::<u32>(),
        regs in proptest::array::uniform8(prop_oneof![0x40_0000u32..0x40_4000, 0x40_0000u32..0x180_0000, 0x10_0000u32..0x30_0000]),
    ) {
        let mut regs = regs;
        regs[4] = 0x20_0000;
        run_paged(&code, &tables, cr3, regs);
    }
}
