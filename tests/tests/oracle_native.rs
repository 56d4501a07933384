use bt86_runtime::snippet::Snippet;
use bt86_tests::oracle::native::run_native_detailed;

fn run(code: &[u8], regs: [u32; 8], fl: u32) {
    let s = Snippet { code: code.to_vec(), regs, eflags: fl, data: vec![0; 32] };
    let t = std::time::Instant::now();
    let r = run_native_detailed(&s);
    match r {
        Ok(r) => eprintln!("{:02x?}: {:x?} fault {:x?} sig {} trap {} err {:#x} cr2 {:#x} data {:02x?} ({:?})", code, r.result.regs, r.result.fault, r.signal, r.trapno, r.error_code, r.cr2, &r.result.data[..], t.elapsed()),
        Err(e) => eprintln!("{:02x?}: ERR {e} ({:?})", code, t.elapsed()),
    }
}

#[test]
fn explore() {
    let z = [0u32; 8];
    run(&[0x31, 0xc0], z, 0);
    run(&[0xf7, 0xf1], z, 0); // div ecx
    run(&[0x90, 0xcc, 0x90], z, 0);
    run(&[0x90, 0xcd, 0x03, 0x90], z, 0);
    run(&[0x90, 0xce], z, 0x800);
    run(&[0x90, 0xce], z, 0);
    run(&[0x0f, 0x0b], z, 0);
    run(&[0xfa], z, 0);
    run(&[0xf1], z, 0);
    run(&[0xcd, 0x10], z, 0);
    run(&[0xeb, 0xfe], z, 0);
    run(&[0x9c, 0x58], z, 0xcd5);
    run(&[0xa3, 0, 0, 0x11, 0], [0x12345678, 0, 0, 0, 0, 0, 0, 0], 0);
    // rep movsb from 0x108000 to 0x10fff8, 16 bytes
    let mut r = z; r[0] = 0x11111111; r[1] = 16; r[6] = 0x108000; r[7] = 0x10fff8;
    run(&[0xf3, 0xa4], r, 0);
    run(&[0xf3, 0xa5], r, 0);
    // rep movsd reading past end: esi=0x10fff8
    let mut r2 = z; r2[1] = 16; r2[6] = 0x10fff8; r2[7] = 0x108000;
    run(&[0xf3, 0xa5], r2, 0);
    // rep stosd to 0x10fff0 count 8
    let mut r3 = z; r3[0] = 0xaabbccdd; r3[1] = 8; r3[7] = 0x10fff0;
    run(&[0xf3, 0xab], r3, 0);
    // bound eax, [ebx] with bounds 0..0 and eax=5
    let mut r4 = z; r4[0] = 5; r4[3] = 0x108000;
    run(&[0x62, 0x03], r4, 0);
    run(&[0xd4, 0x00], z, 0); // aam 0
    run(&[0x8e, 0xd8], z, 0); // mov ds, eax (null)
    run(&[0x8b, 0x05, 0, 0, 0, 0], z, 0);
    run(&[0xcd, 0x80], [1,0,0,0,0,0,0,0], 0);
    run(&[0x0f, 0x05], z, 0);
}
