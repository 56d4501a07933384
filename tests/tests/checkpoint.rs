//! Checkpoints of a running guest, in-process: the `ticker` guest (computing with
//! x87, SSE and memory while its timer ticks; with `paging`, in four address spaces)
//! is stopped at several points, each time saved to bytes, and restored in a new VM
//! on a new thread (as a new process would: its x87 registers are not the guest's).
//! Its whole output must equal an uninterrupted run's, byte for byte.

use bt86_runtime::checkpoint::{Checkpoint, Engine};
use bt86_runtime::devices::SharedBuffer;
use bt86_runtime::vm::run_with_timeout;
use bt86_runtime::{RunOutcome, Vm, VmConfig};
use bt86_tests::guests;
use std::time::Duration;

const FINISH: Duration = Duration::from_secs(60);

fn ticker(cmdline: &str, out: &SharedBuffer) -> Vm {
    let image = std::fs::read(guests::TICKER).expect("the ticker guest");
    let mut vm = Vm::new(VmConfig::new(32, Box::new(out.clone()))).expect("create VM");
    vm.load_multiboot(&image, cmdline).expect("load guest");
    vm
}

fn uninterrupted(cmdline: &str) -> String {
    let out = SharedBuffer::new();
    let mut vm = ticker(cmdline, &out);
    assert_eq!(run_with_timeout(&mut vm, FINISH).unwrap(), RunOutcome::GuestExit(0), "{}", out.to_string_lossy());
    vm.flush_devices();
    out.to_string_lossy()
}

/// Runs the guest in pieces of `stops` (then to its end), checkpointing between
/// them; the output and the checkpoints' sizes.
fn checkpointed(cmdline: &'static str, stops: &[u64]) -> (String, Vec<usize>) {
    let out = SharedBuffer::new();
    let mut saved: Option<Vec<u8>> = None;
    let mut sizes = Vec::new();
    for limit in stops.iter().map(|&ms| Duration::from_millis(ms)).chain([FINISH]) {
        let (from, out2) = (saved.take(), out.clone());
        let piece = std::thread::spawn(move || {
            let mut vm = match from {
                None => ticker(cmdline, &out2),
                Some(bytes) => Checkpoint::from_bytes(&bytes).expect("read back").restore(Box::new(out2.clone()), false).expect("restore"),
            };
            match run_with_timeout(&mut vm, limit).expect("run") {
                RunOutcome::Stopped { .. } => Some(Checkpoint::capture(&mut vm, Engine::Bt, Vec::new()).unwrap().to_bytes().unwrap()),
                RunOutcome::GuestExit(0) => None,
                other => panic!("{other:?}\n{}", out2.to_string_lossy()),
            }
        });
        saved = piece.join().expect("a piece of the run");
        match &saved {
            Some(bytes) => sizes.push(bytes.len()),
            None => break,
        }
    }
    assert!(saved.is_none(), "the guest ran to its end");
    (out.to_string_lossy(), sizes)
}

fn same_output(cmdline: &'static str, stops: &[u64]) {
    let whole = uninterrupted(cmdline);
    assert!(whole.contains("RESULT: 3 passed, 0 failed"), "{whole}");
    let (pieces, sizes) = checkpointed(cmdline, stops);
    assert!(sizes.len() >= 2, "checkpointed {} times: the guest ended too soon", sizes.len());
    if pieces != whole {
        let at = pieces.lines().zip(whole.lines()).position(|(a, b)| a != b);
        panic!("outputs differ (first at line {at:?}):\n--- checkpointed\n{pieces}\n--- uninterrupted\n{whole}");
    }
    // 32 MiB of RAM of which the guest touched about 1.1 MiB (its buffer is random).
    assert!(sizes.iter().all(|&s| s < 2 << 20), "checkpoint sizes {sizes:?}");
}

#[test]
fn a_ticking_guest_checkpointed_at_several_points_prints_what_it_prints_uninterrupted() {
    same_output("steps=250", &[40, 90, 70, 130]);
}

#[test]
fn a_paging_guest_in_four_address_spaces_survives_checkpoints() {
    same_output("steps=250 paging", &[60, 110, 50, 90]);
}
