use super::*;
use crate::devices::SharedBuffer;
use crate::vm::{run_with_timeout, RunOutcome};
use std::time::Duration;

/// Counts in ecx until the dword at 0x3000 is not zero (the test sets it).
const COUNT_UNTIL_FLAG: [u8; 15] = [
    0xb9, 0, 0, 0, 0, /* mov $0,%ecx */
    0x41, /* loop: inc %ecx */
    0x83, 0x3d, 0x00, 0x30, 0, 0, 0, /* cmpl $0,0x3000 */
    0x74, 0xf6, /* je loop */
];

/// 'k' on COM1, then exit 7.
const K_THEN_EXIT_7: [u8; 17] = [
    0x66, 0xba, 0xf8, 0x03, /* mov $0x3f8,%dx */
    0xb0, b'k', /* mov $'k',%al */
    0xee, /* out %al,(%dx) */
    0x66, 0xba, 0xf4, 0x00, /* mov $0xf4,%dx */
    0xb8, 7, 0, 0, 0, /* mov $7,%eax */
    0xef, /* out %eax,(%dx) */
];

/// Flat protected mode, code at 0x1000: x87 and xmm3 loaded, the counting loop,
/// then the x87 sum and xmm3 stored at 0x2000 / 0x2008, 'k' on COM1 and exit 7.
fn looping_vm() -> (Vm, SharedBuffer) {
    let prologue = [
        0xd9, 0xeb, /* fldpi */
        0xd9, 0xe8, /* fld1 */
        0xb8, 0x78, 0x56, 0x34, 0x12, /* mov $0x12345678,%eax */
        0x66, 0x0f, 0x6e, 0xd8, /* movd %eax,%xmm3 */
    ];
    let epilogue = [
        0xde, 0xc1, /* faddp */
        0xdd, 0x1d, 0x00, 0x20, 0, 0, /* fstpl 0x2000 */
        0x66, 0x0f, 0x7e, 0x1d, 0x08, 0x20, 0, 0, /* movd %xmm3,0x2008 */
    ];
    let (mut vm, out) = vm_with(&[&prologue[..], &COUNT_UNTIL_FLAG, &epilogue, &K_THEN_EXIT_7].concat());
    vm.cpu.cr4 |= 1 << 9; // OSFXSR: SSE allowed
    (vm, out)
}

/// A 2 MiB VM in flat protected mode at `code` (loaded at 0x1000), COM1 captured.
fn vm_with(code: &[u8]) -> (Vm, SharedBuffer) {
    let out = SharedBuffer::new();
    let mut vm = Vm::new(VmConfig::new(2, Box::new(out.clone()))).unwrap();
    vm.ram.write(0x1000, code).unwrap();
    vm.set_flat_state(0x1000, [0, 0, 0, 0, 0x8000, 0, 0, 0], 0);
    (vm, out)
}

fn check_finished(vm: &Vm, out: &SharedBuffer, outcome: &RunOutcome) {
    assert_eq!(*outcome, RunOutcome::GuestExit(7));
    assert_eq!(out.to_string_lossy(), "k");
    assert!(vm.registers().0[1] > 1000, "counted on");
    let mut sum = [0u8; 8];
    vm.ram.read(0x2000, &mut sum).unwrap();
    assert_eq!(f64::from_le_bytes(sum), std::f64::consts::PI + 1.0, "the x87 stack came through");
    assert_eq!(vm.ram.read_u32(0x2008).unwrap(), 0x1234_5678, "xmm3 came through");
}

#[test]
fn a_stopped_vm_continues_from_its_checkpoint() {
    let (mut vm, _) = looping_vm();
    let stopped = run_with_timeout(&mut vm, Duration::from_millis(30)).unwrap();
    let RunOutcome::Stopped { eip } = stopped else { panic!("the loop ended before the stop: {stopped:?}") };
    let ecx = vm.registers().0[1];
    assert!((0x1012..0x101c).contains(&eip), "stopped inside the loop ({eip:#x})");
    let taken = Checkpoint::capture(&mut vm, Engine::Bt, vec![("display".into(), "none".into())]).unwrap();
    let time_before = vm.bus.now();
    drop(vm);

    let bytes = taken.to_bytes().unwrap();
    assert!(bytes.len() < 64 * 1024, "a 2 MiB guest that touched 3 pages: {} bytes", bytes.len());
    let back = Checkpoint::from_bytes(&bytes).unwrap();
    assert_eq!((back.engine(), back.eip(), back.mem_bytes()), (Engine::Bt, eip, 2 << 20));
    assert_eq!(back.option("display"), Some("none"));
    let saved = back.virtual_ns();
    assert!(saved <= time_before && saved > 0);

    // On another thread, as in a new process: its x87 registers are not the guest's.
    std::thread::spawn(move || {
        let out = SharedBuffer::new();
        let mut vm = back.restore(Box::new(out.clone()), false).unwrap();
        assert_eq!(vm.registers().0[1], ecx);
        vm.ram.write_u32(0x3000, 1).unwrap();
        // From the saved time on (not from zero, not the host's clock). Not compared
        // with `time_before`: on a busy host the capture can take longer than the
        // restore, and this test failed now and then.
        let now = vm.bus.now();
        assert!(now >= saved && now < saved + 10_000_000_000, "virtual time goes on: {now} after {saved}");
        let outcome = run_with_timeout(&mut vm, Duration::from_secs(20)).unwrap();
        check_finished(&vm, &out, &outcome);
    })
    .join()
    .expect("the restored VM finished");
}

#[test]
fn a_vm_continues_after_a_checkpoint_in_the_same_process() {
    let (mut vm, out) = looping_vm();
    assert!(matches!(run_with_timeout(&mut vm, Duration::from_millis(20)).unwrap(), RunOutcome::Stopped { .. }));
    let _ = Checkpoint::capture(&mut vm, Engine::Bt, Vec::new()).unwrap();
    vm.clear_stop();
    vm.ram.write_u32(0x3000, 1).unwrap();
    let outcome = run_with_timeout(&mut vm, Duration::from_secs(20)).unwrap();
    check_finished(&vm, &out, &outcome);
}

#[test]
fn the_guest_tsc_resumes_at_its_saved_value() {
    let (mut vm, _) = looping_vm();
    let _ = run_with_timeout(&mut vm, Duration::from_millis(5)).unwrap();
    vm.cpu.tsc_offset = -1_000_000_000_000;
    let taken = Checkpoint::capture(&mut vm, Engine::Bt, Vec::new()).unwrap();
    let saved = taken.body.time.guest_tsc;
    std::thread::sleep(Duration::from_millis(200));
    let vm = taken.restore(Box::new(std::io::sink()), false).unwrap();
    #[allow(clippy::cast_sign_loss)]
    let now = host_tsc().wrapping_add(vm.cpu.tsc_offset as u64);
    let hz = crate::devices::clock::tsc_hz();
    assert!(now >= saved && now - saved < hz / 10, "guest TSC {now} after saving {saved}: no jump by the 200 ms on disk");
    assert!(vm.cpu.mode().native_tsc.eq(&false), "rdtsc goes through the offset");
}

fn sample() -> Vec<u8> {
    let (mut vm, _) = looping_vm();
    Checkpoint::capture(&mut vm, Engine::Bt, Vec::new()).unwrap().to_bytes().unwrap()
}

/// Rewrites the header's checksum after a change to it.
fn reseal(bytes: &mut [u8]) {
    let crc = crc32fast::hash(&bytes[..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn damaged_files_are_refused_with_the_reason() {
    let good = sample();
    let refuse = |bytes: &[u8]| Checkpoint::from_bytes(bytes).expect_err("refused");

    assert!(matches!(refuse(b"#!/bin/sh\necho hello\n"), CheckpointError::NotACheckpoint));
    assert!(matches!(refuse(&[]), CheckpointError::NotACheckpoint));
    assert!(matches!(refuse(&good[..20]), CheckpointError::Truncated { .. }));
    let cut = refuse(&good[..good.len() - 100]);
    assert!(matches!(cut, CheckpointError::Truncated { found, expected } if expected == good.len() as u64 && found + 100 == expected), "{cut}");

    let mut flipped = good.clone();
    let at = flipped.len() - 7;
    flipped[at] ^= 0x40;
    let e = refuse(&flipped);
    assert!(matches!(e, CheckpointError::Corrupt(_)) && e.to_string().contains("checksum"), "{e}");
    let mut header = good.clone();
    header[17] ^= 1;
    assert!(matches!(refuse(&header), CheckpointError::Corrupt(_)));
    let mut longer = good.clone();
    longer.push(0);
    assert!(matches!(refuse(&longer), CheckpointError::Corrupt(_)));

    let mut newer = good.clone();
    newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    reseal(&mut newer);
    let e = refuse(&newer);
    assert!(matches!(e, CheckpointError::Version { found, supported: FORMAT_VERSION } if found == FORMAT_VERSION + 1), "{e}");

    let mut alien = good.clone();
    alien[12..16].copy_from_slice(&9u32.to_le_bytes());
    reseal(&mut alien);
    assert!(matches!(refuse(&alien), CheckpointError::Engine(9)));

    let mut kvm = good.clone();
    kvm[12..16].copy_from_slice(&Engine::Kvm.code().to_le_bytes());
    reseal(&mut kvm);
    assert_eq!(Checkpoint::from_bytes(&kvm).unwrap().engine(), Engine::Kvm);

    // A body whose checksum matches but that does not decode.
    let mut garbage = good[..HEADER_LEN].to_vec();
    garbage.extend_from_slice(&[0xff; 40]);
    garbage[16..24].copy_from_slice(&40u64.to_le_bytes());
    garbage[24..28].copy_from_slice(&crc32fast::hash(&[0xff; 40]).to_le_bytes());
    reseal(&mut garbage);
    assert!(matches!(refuse(&garbage), CheckpointError::Corrupt(_)));
    assert!(refuse(&garbage).is_bad_input());
}

#[test]
fn files_are_written_whole_and_read_back() {
    let dir = std::env::temp_dir().join(format!("bt86-ckpt-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("a.bt86");
    let (mut vm, _) = looping_vm();
    let taken = Checkpoint::capture(&mut vm, Engine::Bt, Vec::new()).unwrap();
    check_writable(&path).unwrap();
    assert!(!path.exists(), "checking does not create the file");
    let written = taken.write_to(&path).unwrap();
    assert_eq!(written.bytes, std::fs::metadata(&path).unwrap().len());
    assert_eq!(Checkpoint::read_from(&path).unwrap().eip(), 0x1000);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
    let e = taken.write_to(&dir.join("no/such/dir/x")).err().unwrap();
    assert!(matches!(e, CheckpointError::Write { .. }) && e.is_bad_input());
    assert!(matches!(Checkpoint::read_from(&dir.join("missing")), Err(CheckpointError::Read { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_checkpoint_from_a_cpu_with_more_features_is_refused() {
    let (mut vm, _) = looping_vm();
    let mut taken = Checkpoint::capture(&mut vm, Engine::Bt, Vec::new()).unwrap();
    taken.body.cpu.cpuid = CpuModel::from_host(|leaf, _| match leaf {
        0 => [7, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
        _ => [u32::MAX; 4],
    });
    let mine = CpuModel::host();
    let e = taken.clone().restore(Box::new(std::io::sink()), false).err();
    if mine.features_missing_on(&taken.body.cpu.cpuid).is_empty() && !taken.body.cpu.cpuid.features_missing_on(mine).is_empty() {
        let e = e.expect("refused");
        assert!(matches!(e, CheckpointError::Cpu { .. }) && e.is_bad_input(), "{e}");
    }
    // A model with fewer features is shown to the guest as it was.
    taken.body.cpu.cpuid = CpuModel::from_host(|leaf, _| if leaf == 0 { [1, 0, 0, 0] } else { [0; 4] });
    let vm = taken.restore(Box::new(std::io::sink()), false).unwrap();
    assert_eq!(vm.cpu.model.cpuid(0, 0), [1, 0, 0, 0]);
}

/// Integer only (a software KVM emulates no x87 here): the counting loop, then 'k'
/// on COM1 and exit 7.
fn counting_vm() -> (Vm, SharedBuffer) {
    let (mut vm, out) = vm_with(&[&COUNT_UNTIL_FLAG[..], &K_THEN_EXIT_7].concat());
    vm.cpu.sysenter_eip = 0xc010_1234;
    vm.cpu.dr[0] = 0x0040_0000;
    (vm, out)
}

/// Whether this host runs the KVM engine at all (a software KVM counts).
fn kvm_usable() -> bool {
    match crate::kvm::check_host() {
        Ok(_) => true,
        Err(e) => e.software_host().is_some(),
    }
}

#[test]
fn checkpoints_cross_between_the_bt_and_kvm_engines() {
    use crate::kvm::KvmOptions;
    if !kvm_usable() {
        eprintln!("skipped: no usable /dev/kvm");
        return;
    }
    let kvm = |limit| KvmOptions { allow_software: true, timeout: Some(limit) };

    // BT → KVM.
    let (mut vm, _) = counting_vm();
    assert!(matches!(run_with_timeout(&mut vm, Duration::from_millis(20)).unwrap(), RunOutcome::Stopped { .. }));
    let ecx = vm.registers().0[1];
    let bytes = Checkpoint::capture(&mut vm, Engine::Bt, Vec::new()).unwrap().to_bytes().unwrap();
    let out = SharedBuffer::new();
    let mut vm = Checkpoint::from_bytes(&bytes).unwrap().restore(Box::new(out.clone()), false).unwrap();
    vm.ram.write_u32(0x3000, 1).unwrap();
    let (outcome, _) = vm.run_kvm(kvm(Duration::from_secs(30))).unwrap();
    assert_eq!(outcome, RunOutcome::GuestExit(7));
    assert_eq!(out.to_string_lossy(), "k");
    assert!(vm.registers().0[1] > ecx, "counted on from {ecx}");
    assert_eq!((vm.cpu.sysenter_eip, vm.cpu.dr[0]), (0xc010_1234, 0x0040_0000), "MSRs and debug registers through KVM");

    // KVM → BT.
    let (mut vm, _) = counting_vm();
    let (outcome, _) = vm.run_kvm(kvm(Duration::from_millis(300))).unwrap();
    assert!(matches!(outcome, RunOutcome::Stopped { .. }), "{outcome:?}");
    let ecx = vm.registers().0[1];
    let taken = Checkpoint::capture(&mut vm, Engine::Kvm, Vec::new()).unwrap();
    let back = Checkpoint::from_bytes(&taken.to_bytes().unwrap()).unwrap();
    assert_eq!(back.engine(), Engine::Kvm);
    let out = SharedBuffer::new();
    let mut vm = back.restore(Box::new(out.clone()), false).unwrap();
    assert_eq!((vm.cpu.sysenter_eip, vm.cpu.dr[0]), (0xc010_1234, 0x0040_0000));
    vm.ram.write_u32(0x3000, 1).unwrap();
    let outcome = run_with_timeout(&mut vm, Duration::from_secs(20)).unwrap();
    assert_eq!(outcome, RunOutcome::GuestExit(7));
    assert_eq!(out.to_string_lossy(), "k");
    assert!(vm.registers().0[1] >= ecx);
}

/// Measures a large checkpoint: 1 GiB of RAM with 256 MiB touched (half random, half
/// a compressible pattern). `cargo test --release -p bt86-runtime -- --ignored
/// --nocapture large_checkpoint`.
#[test]
#[ignore = "a measurement: slow, prints its numbers"]
fn large_checkpoint_sizes_and_times() {
    use std::time::Instant;
    let mut vm = Vm::new(VmConfig::new(1024, Box::new(std::io::sink()))).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut page = vec![0u8; 4096];
    for frame in 0..(256u32 << 8) {
        for (i, chunk) in page.chunks_exact_mut(8).enumerate() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = if frame % 2 == 0 { x } else { (i as u64 % 7) * 0x0101_0101 };
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        vm.ram.write(frame * 4096 * 3, &page).unwrap();
    }
    let t = Instant::now();
    let taken = Checkpoint::capture(&mut vm, Engine::Bt, Vec::new()).unwrap();
    let captured = t.elapsed();
    let bytes = taken.to_bytes().unwrap();
    let encoded = t.elapsed();
    drop(vm);
    let t = Instant::now();
    let vm = Checkpoint::from_bytes(&bytes).unwrap().restore(Box::new(std::io::sink()), false).unwrap();
    let restored = t.elapsed();
    eprintln!(
        "1 GiB RAM, 256 MiB touched: {} MiB file, capture {captured:?}, capture+encode {encoded:?}, decode+restore {restored:?}",
        bytes.len() >> 20
    );
    assert_eq!(vm.ram().read_u8(3 * 4096).unwrap(), 0);
}
