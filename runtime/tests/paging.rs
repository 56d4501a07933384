//! Guest paging through the shadow MMU: hidden faults fill the view, true faults
//! become #PF.

use bt86_runtime::vm::run_with_timeout;
use bt86_runtime::{RunOutcome, Vm, VmConfig};
use std::time::Duration;

/// Loads the GDT and IDT `descriptor_tables` writes, points CR3 at the page
/// directory of `vm_with_page_tables` and sets `cr0_bits` (PG, perhaps WP) in CR0.
fn paging_on(cr0_bits: u32) -> Vec<u8> {
    let mut c = vec![
        0x0f, 0x01, 0x15, 0x00, 0x11, 0x00, 0x00, // lgdtl 0x1100
        0x0f, 0x01, 0x1d, 0x08, 0x11, 0x00, 0x00, // lidtl 0x1108
        0xb8, 0x00, 0x00, 0x20, 0x00, // mov $0x200000,%eax
        0x0f, 0x22, 0xd8, // mov %eax,%cr3
        0x0f, 0x20, 0xc0, // mov %cr0,%eax
        0x0d, // or $cr0_bits,%eax
    ];
    c.extend(cr0_bits.to_le_bytes());
    c.extend([0x0f, 0x22, 0xc0]); // mov %eax,%cr0
    c
}

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

/// A GDT (flat code 0x10, flat data 0x18) and an IDT with #PF → 0x10:0x101000, for
/// `lgdt 0x1100` and `lidt 0x1108`.
fn descriptor_tables(vm: &Vm) {
    let ram = vm.ram();
    ram.write(0x1010, &0x00cf_9a00_0000_ffffu64.to_le_bytes()).expect("gdt");
    ram.write(0x1018, &0x00cf_9200_0000_ffffu64.to_le_bytes()).expect("gdt");
    ram.write(0x1100, &[0x1f, 0, 0x00, 0x10, 0, 0]).expect("gdtr");
    ram.write(0x1108, &[0xff, 0x07, 0x00, 0x20, 0, 0]).expect("idtr");
    ram.write(0x2000 + 14 * 8, &[0x00, 0x10, 0x10, 0x00, 0x00, 0x8e, 0x10, 0x00]).expect("gate");
}

/// A #PF handler that makes the entry present (without the A bit, as a guest may)
/// has the page mapped when its store is seen (a traced table) or at its iret (an
/// untraced one), so the retried access takes no second fault; the A bit is set
/// as the retried read would, D stays clear until the first write, which sets it.
/// Making the entry not present parks the page; present again, the same frame is
/// back. A store that retargets a mapped entry, then invlpg: the page is mapped
/// again at the invlpg, through the new frame; the next time at the store.
#[test]
fn pages_made_present_or_retargeted_are_mapped_before_the_access() {
    for traced in [false, true] {
        let mut vm = vm_with_page_tables();
        let body: &[u8] = &[
            0x85, 0xed, // test %ebp,%ebp
            0x74, 0x06, // je 1f
            0x8b, 0x15, 0x00, 0x00, 0x40, 0x00, // mov 0x400000,%edx (traces the table)
            0x8b, 0x1d, 0x00, 0x10, 0x40, 0x00, // 1: mov 0x401000,%ebx (#PF, retried)
            0x8b, 0x0d, 0x04, 0x20, 0x20, 0x00, // mov 0x202004,%ecx (the PTE)
            0xc7, 0x05, 0x00, 0x10, 0x40, 0x00, 0x78, 0x56, 0x00, 0x00, // movl $0x5678,0x401000
            0x8b, 0x35, 0x04, 0x20, 0x20, 0x00, // mov 0x202004,%esi (the PTE)
            0xc7, 0x05, 0x04, 0x20, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, // movl $0,0x202004
            0x0f, 0x01, 0x3d, 0x00, 0x10, 0x40, 0x00, // invlpg 0x401000
            0x8b, 0x15, 0x00, 0x10, 0x40, 0x00, // mov 0x401000,%edx (#PF again, retried)
            0x01, 0xd3, // add %edx,%ebx
            0xa1, 0x00, 0x20, 0x40, 0x00, // mov 0x402000,%eax (frame 0x306)
            0xc7, 0x05, 0x08, 0x20, 0x20, 0x00, 0x03, 0x70, 0x30, 0x00, // movl $0x307003,0x202008
            0x0f, 0x01, 0x3d, 0x00, 0x20, 0x40, 0x00, // invlpg 0x402000
            0x8b, 0x3d, 0x00, 0x20, 0x40, 0x00, // mov 0x402000,%edi (frame 0x307)
            // Again: now mapped at the store itself.
            0xc7, 0x05, 0x08, 0x20, 0x20, 0x00, 0x03, 0x60, 0x30, 0x00, // movl $0x306003,0x202008
            0x0f, 0x01, 0x3d, 0x00, 0x20, 0x40, 0x00, // invlpg 0x402000
            0xa1, 0x00, 0x20, 0x40, 0x00, // mov 0x402000,%eax (frame 0x306)
            // Two stores, no invlpg between: only the first is mapped at once.
            0xc7, 0x05, 0x08, 0x20, 0x20, 0x00, 0x03, 0x70, 0x30, 0x00, // movl $0x307003,0x202008
            0xc7, 0x05, 0x08, 0x20, 0x20, 0x00, 0x03, 0x60, 0x30, 0x00, // movl $0x306003,0x202008
            0x8b, 0x2d, 0x00, 0x20, 0x40, 0x00, // mov 0x402000,%ebp (frame 0x306)
            0xf4, // hlt
        ];
        let code = [paging_on(0x8000_0000).as_slice(), body].concat();
        let handler = [
            0x83, 0xc4, 0x04, // add $4,%esp (the error code)
            0xff, 0x05, 0x00, 0x80, 0x10, 0x00, // incl 0x108000
            0xc7, 0x05, 0x04, 0x20, 0x20, 0x00, 0x03, 0x50, 0x30, 0x00, // movl $0x305003,0x202004
            0xcf, // iret
        ];
        let ram = vm.ram();
        ram.write(0x10_0000, &code).expect("code");
        ram.write(0x10_1000, &handler).expect("handler");
        descriptor_tables(&vm);
        let ram = vm.ram();
        ram.write_u32(0x30_5000, 0xcafe_babe).expect("data");
        ram.write_u32(0x30_6000, 0x1111).expect("data");
        ram.write_u32(0x30_7000, 0x2222).expect("data");
        ram.write_u32(0x20_2004, 0).expect("pte");
        ram.write_u32(0x20_2008, 0x30_6023).expect("pte");
        vm.set_flat_state(0x10_0000, [0, 0, 0, 0, 0x10_f000, u32::from(traced), 0, 0], 0);
        let outcome = run_with_timeout(&mut vm, Duration::from_secs(10)).expect("run");
        assert!(matches!(outcome, RunOutcome::Halted { .. }), "{outcome:?}");
        let regs = vm.registers().0;
        let s = vm.stats().paging;
        let what = format!("traced table: {traced}; {s:?}");
        assert_eq!(vm.ram().read_u32(0x10_8000).expect("count"), 2, "the handler ran twice ({what})");
        assert_eq!(regs[1], 0x30_5023, "after the read: A set, D clear ({what})");
        assert_eq!(regs[6], 0x30_5063, "after the write: A and D set ({what})");
        assert_eq!(vm.ram().read_u32(0x30_5000).expect("data"), 0x5678, "the write reached the frame ({what})");
        assert_eq!(regs[3], 0xcafe_babeu32.wrapping_add(0x5678), "both reads saw the frame ({what})");
        assert_eq!(regs[7], 0x2222, "the read after invlpg saw the new frame ({what})");
        assert_eq!((regs[0], regs[5]), (0x1111, 0x1111), "reads after retargeting back ({what})");
        assert_eq!(vm.ram().read_u32(0x20_2008).expect("pte"), 0x30_6023, "the retargeted PTE's A bit ({what})");
        assert_eq!((s.true_faults, s.mapped_on_present, s.mapped_at_invlpg, s.mapped_at_store), (2, 2, 1, 2), "{what}");
    }
}

/// After a write fault, the page is mapped at once only if the write it returns
/// to is allowed: a handler that makes the entry present but read-only (CR0.WP
/// set) gets no A bit and no mapping, and the write faults again; made writable,
/// the page is mapped read-only with A set, and the retried write sets D.
#[test]
fn a_write_fault_maps_its_page_only_when_the_write_is_allowed() {
    let mut vm = vm_with_page_tables();
    let body: &[u8] = &[
        0xc7, 0x05, 0x00, 0x10, 0x40, 0x00, 0x78, 0x56, 0x00, 0x00, // movl $0x5678,0x401000 (#PF twice)
        0xf4, // hlt
    ];
    let code = [paging_on(0x8001_0000).as_slice(), body].concat();
    let handler = [
        0x83, 0xc4, 0x04, // add $4,%esp (the error code)
        0xff, 0x05, 0x00, 0x80, 0x10, 0x00, // incl 0x108000
        0x83, 0x3d, 0x00, 0x80, 0x10, 0x00, 0x01, // cmpl $1,0x108000
        0x75, 0x0b, // jne 1f
        0xc7, 0x05, 0x04, 0x20, 0x20, 0x00, 0x01, 0x50, 0x30, 0x00, // movl $0x305001,0x202004 (read-only)
        0xcf, // iret
        0x8b, 0x1d, 0x04, 0x20, 0x20, 0x00, // 1: mov 0x202004,%ebx
        0xc7, 0x05, 0x04, 0x20, 0x20, 0x00, 0x03, 0x50, 0x30, 0x00, // movl $0x305003,0x202004 (writable)
        0xcf, // iret
    ];
    let ram = vm.ram();
    ram.write(0x10_0000, &code).expect("code");
    ram.write(0x10_1000, &handler).expect("handler");
    ram.write_u32(0x20_2004, 0).expect("pte");
    descriptor_tables(&vm);
    vm.set_flat_state(0x10_0000, [0, 0, 0, 0, 0x10_f000, 0, 0, 0], 0);
    let outcome = run_with_timeout(&mut vm, Duration::from_secs(10)).expect("run");
    assert!(matches!(outcome, RunOutcome::Halted { .. }), "{outcome:?}");
    let s = vm.stats().paging;
    assert_eq!(vm.ram().read_u32(0x10_8000).expect("count"), 2, "{s:?}");
    assert_eq!(vm.registers().0[3], 0x30_5001, "the read-only entry got no A bit ({s:?})");
    assert_eq!(vm.ram().read_u32(0x20_2004).expect("pte"), 0x30_5063, "A and D set by the write ({s:?})");
    assert_eq!(vm.ram().read_u32(0x30_5000).expect("data"), 0x5678, "{s:?}");
    assert_eq!((s.true_faults, s.mapped_on_present), (2, 1), "{s:?}");
}
