//! Guest paging through the shadow MMU: hidden faults fill the view, true faults
//! become #PF.

use bt86_runtime::vm::run_with_timeout;
use bt86_runtime::{RunOutcome, Vm, VmConfig};
use std::time::Duration;

fn vm_with_page_tables() -> Vm {
    let vm = Vm::new(VmConfig::new(8, Box::new(std::io::sink()))).expect("vm");
    let ram = vm.ram();
    // Page directory at 2 MiB: PDE 0 → identity page table, PDE 1 → a table that
    // maps linear 0x400000 to physical 0x300000 (0x401000 not present).
    for i in 0..1024u32 {
        ram.write_u32(0x20_1000 + 4 * i, (i << 12) | 0x3).expect("pte");
    }
    ram.write_u32(0x20_0000, 0x20_1000 | 0x3).expect("pde0");
    ram.write_u32(0x20_0004, 0x20_2000 | 0x3).expect("pde1");
    ram.write_u32(0x20_2000, 0x30_0000 | 0x3).expect("pte");
    vm
}

#[test]
fn mapped_write_lands_in_the_right_frame_and_not_present_faults() {
    let mut vm = vm_with_page_tables();
    let code = [
        0xb8, 0x00, 0x00, 0x20, 0x00, // mov $0x200000,%eax
        0x0f, 0x22, 0xd8, // mov %eax,%cr3
        0x0f, 0x20, 0xc0, // mov %cr0,%eax
        0x0d, 0x00, 0x00, 0x00, 0x80, // or $0x80000000,%eax
        0x0f, 0x22, 0xc0, // mov %eax,%cr0
        0xc7, 0x05, 0x00, 0x00, 0x40, 0x00, 0x34, 0x12, 0x00, 0x00, // movl $0x1234,0x400000
        0x8b, 0x1d, 0x00, 0x00, 0x30, 0x00, // mov 0x300000,%ebx (identity: the same frame)
        0x8b, 0x0d, 0x00, 0x10, 0x40, 0x00, // mov 0x401000,%ecx: not present
        0xf4,
    ];
    vm.ram().write(0x10_0000, &code).expect("code");
    vm.set_flat_state(0x10_0000, [0, 0, 0, 0, 0x10_f000, 0, 0, 0], 0);
    let outcome = run_with_timeout(&mut vm, Duration::from_secs(10)).expect("run");
    assert_eq!(outcome, RunOutcome::GuestException { vector: 14, error: Some(0), eip: 0x10_0023 });
    assert_eq!(vm.registers().0[3], 0x1234, "the write through 0x400000 reached frame 0x300");
    // A and D were set in the PTE for 0x400000.
    let pte = vm.ram().read_u32(0x20_2000).expect("pte");
    assert_eq!(pte & 0x60, 0x60, "A and D set: {pte:#x}");
    let s = vm.stats().paging;
    assert!(s.hidden_faults > 0 && s.true_faults == 1, "{s:?}");
}
