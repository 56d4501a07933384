//! The engine's debugger support (what the gdb stub drives), in-process on the
//! kit's guests: whole guests single-stepped and run under a watchpoint (so
//! every instruction crosses a boundary the debugger sees) still pass, steps
//! move by one instruction, breakpoints and watchpoints fire where they must,
//! and the debugger's memory view follows the guest's page tables. gdb itself
//! as the client: cli/tests/gdb.rs.

use bt86_runtime::debug::{DebugEvent, DebugStop, Resume, WatchKind, Watchpoint};
use bt86_runtime::devices::SharedBuffer;
use bt86_runtime::{RunOutcome, Vm, VmConfig};
use bt86_tests::guests;
use iced_x86::{Decoder, DecoderOptions, FlowControl};

fn vm_for(path: &str, cmdline: &str) -> (Vm, SharedBuffer) {
    let image = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read guest {path}: {e}"));
    let console = SharedBuffer::new();
    let mut vm = Vm::new(VmConfig::new(32, Box::new(console.clone()))).expect("create VM");
    vm.load_multiboot(&image, cmdline).expect("load guest");
    (vm, console)
}

fn assert_passed(outcome: &RunOutcome, console: &SharedBuffer) {
    let text = console.to_string_lossy();
    assert!(
        *outcome == RunOutcome::GuestExit(0) && text.contains(" 0 failed") && !text.contains("FAIL"),
        "{outcome:?}\n{}",
        text.lines().map(|l| format!("guest| {l}\n")).collect::<String>()
    );
}

/// The address of `symbol` in the guest ELF at `path`.
fn symbol(path: &str, name: &str) -> u32 {
    let image = std::fs::read(path).expect("read guest");
    let elf = goblin::elf::Elf::parse(&image).expect("an ELF");
    let sym = elf.syms.iter().find(|s| elf.strtab.get_at(s.st_name) == Some(name));
    u32::try_from(sym.unwrap_or_else(|| panic!("no symbol {name} in {path}")).st_value).expect("32-bit")
}

/// The instruction at `eip`, as the guest sees it.
fn instruction_at(vm: &Vm, eip: u32) -> iced_x86::Instruction {
    let mut bytes = [0u8; 15];
    let n = vm.debug_read(eip, &mut bytes);
    Decoder::with_ip(32, &bytes[..n], u64::from(eip), DecoderOptions::NONE).decode()
}

fn exceptions_so_far(vm: &Vm) -> u64 {
    vm.stats().exceptions.values().sum()
}

/// Steps `path` from its first instruction to its end: every step that does not
/// branch or raise an exception moves to the next instruction.
fn step_to_the_end(path: &str) -> (u64, RunOutcome, SharedBuffer) {
    let (mut vm, console) = vm_for(path, "");
    let mut steps = 0u64;
    loop {
        let eip = vm.debug_registers().eip;
        let ins = instruction_at(&vm, eip);
        let exceptions = exceptions_so_far(&vm);
        match vm.debug_run(Resume::Step).expect("VMM error") {
            DebugStop::Paused(DebugEvent::Step { eip: after }) => {
                steps += 1;
                assert_eq!(after, vm.debug_registers().eip);
                if ins.flow_control() == FlowControl::Next && exceptions_so_far(&vm) == exceptions {
                    assert_eq!(u64::from(after), ins.next_ip(), "step {steps} at {eip:#x} ({ins}) went to {after:#x}");
                }
            }
            DebugStop::Ended(outcome) => return (steps, outcome, console),
            other => panic!("unexpected stop {other:?} at step {steps}"),
        }
    }
}

#[test]
fn self_modifying_code_passes_one_instruction_at_a_time() {
    let (steps, outcome, console) = step_to_the_end(guests::SMC);
    assert_passed(&outcome, &console);
    assert!(steps > 10_000, "{steps} steps");
}

#[test]
fn paging_passes_one_instruction_at_a_time() {
    // Hidden faults, traced page tables and #PF handlers, all inside steps.
    let (steps, outcome, console) = step_to_the_end(guests::PAGING);
    assert_passed(&outcome, &console);
    assert!(steps > 100_000, "{steps} steps");
}

#[test]
fn a_watched_run_sees_every_write_and_still_passes() {
    // Every instruction is its own unit while a watchpoint is set.
    let (mut vm, console) = vm_for(guests::DEBUGGEE, "");
    let counter = symbol(guests::DEBUGGEE, "counter");
    vm.add_watchpoint(Watchpoint { addr: counter, len: 4, kind: WatchKind::Write }).unwrap();
    let mut values = Vec::new();
    let outcome = loop {
        match vm.debug_run(Resume::Continue).expect("VMM error") {
            DebugStop::Paused(DebugEvent::Watch { hit, .. }) => {
                assert_eq!(hit.addr, counter);
                let mut v = [0u8; 4];
                assert_eq!(vm.debug_read(counter, &mut v), 4);
                values.push(u32::from_le_bytes(v));
            }
            DebugStop::Ended(outcome) => break outcome,
            other => panic!("unexpected stop {other:?}"),
        }
    };
    assert_passed(&outcome, &console);
    // The kit's start-up zeroes .bss (rep stos, counter included), then bump() adds 1..5.
    assert_eq!(values, [0, 1, 3, 6, 10, 15], "one stop after each write");
}

#[test]
fn a_whole_guest_runs_correctly_with_a_watchpoint_set() {
    let (mut vm, console) = vm_for(guests::PAGING, "");
    // Watch a byte nobody touches: the run is all one-instruction units.
    vm.add_watchpoint(Watchpoint { addr: 0xffff_fff0, len: 4, kind: WatchKind::Access }).unwrap();
    let outcome = match vm.debug_run(Resume::Continue).expect("VMM error") {
        DebugStop::Ended(o) => o,
        other => panic!("unexpected stop {other:?}"),
    };
    assert_passed(&outcome, &console);
}

#[test]
fn breakpoints_fire_on_every_arrival_and_go_away() {
    let (mut vm, console) = vm_for(guests::DEBUGGEE, "");
    let bump = symbol(guests::DEBUGGEE, "bump");
    vm.add_breakpoint(bump).unwrap();
    let mut hits = 0;
    loop {
        match vm.debug_run(Resume::Continue).expect("VMM error") {
            DebugStop::Paused(DebugEvent::Breakpoint { eip }) => {
                assert_eq!((eip, vm.debug_registers().eip), (bump, bump));
                hits += 1;
                if hits == 3 {
                    assert!(vm.remove_breakpoint(bump).unwrap());
                }
            }
            DebugStop::Ended(outcome) => {
                assert_passed(&outcome, &console);
                break;
            }
            other => panic!("unexpected stop {other:?}"),
        }
    }
    assert_eq!(hits, 3, "bump() runs 5 times; the breakpoint went after the third");
}

#[test]
fn an_interrupt_pauses_a_spinning_guest_that_goes_on_after() {
    let (mut vm, console) = vm_for(guests::DEBUGGEE, "spin");
    let interrupt = vm.debug_interrupt_handle();
    let pauser = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        interrupt.interrupt();
    });
    let stop = vm.debug_run(Resume::Continue).expect("VMM error");
    pauser.join().unwrap();
    let DebugStop::Paused(DebugEvent::Interrupted { eip }) = stop else { panic!("not interrupted: {stop:?}") };
    let main = symbol(guests::DEBUGGEE, "main");
    assert!((main..main + 0x200).contains(&eip), "paused in main's loop, not at {eip:#x}");
    assert!(console.to_string_lossy().contains("spinning"));
    let spinning = symbol(guests::DEBUGGEE, "spinning");
    vm.debug_write(spinning, &0u32.to_le_bytes()).unwrap();
    match vm.debug_run(Resume::Continue).expect("VMM error") {
        DebugStop::Ended(outcome) => assert_passed(&outcome, &console),
        other => panic!("unexpected stop {other:?}"),
    }
}

#[test]
fn debugger_memory_is_linear_and_never_crashes_the_vmm() {
    let (vm, _) = vm_for(guests::DEBUGGEE, "");
    let mut buf = [0u8; 8];
    // Past the end of RAM (32 MiB): nothing to read.
    assert_eq!(vm.debug_read(0x0400_0000, &mut buf), 0);
    // A read that runs off the end of RAM stops there.
    assert_eq!(vm.debug_read(0x01ff_fffc, &mut buf), 4);
    let mut vm = vm;
    assert!(vm.debug_write(0xffff_fff0, &[1, 2, 3]).is_err());
    // Writing code drops its translations: the guest runs what was written.
    let main = symbol(guests::DEBUGGEE, "main");
    vm.add_breakpoint(main).unwrap();
    assert!(matches!(vm.debug_run(Resume::Continue).unwrap(), DebugStop::Paused(DebugEvent::Breakpoint { .. })));
    // mov $7, %eax; out %eax, $0xf4 (isa-debug-exit with 7)
    vm.debug_write(main, &[0xb8, 7, 0, 0, 0, 0xe7, 0xf4]).unwrap();
    assert_eq!(vm.debug_run(Resume::Continue).unwrap(), DebugStop::Ended(RunOutcome::GuestExit(7)));
}
