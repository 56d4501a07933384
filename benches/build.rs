//! Builds the CPU benchmark in two flavours from the same workload object:
//!
//! * `bench-native`    — a static i386 Linux program (no libc), run directly on the host;
//! * `bench-guest.elf` — a multiboot v1 kernel (UART console, isa-debug-exit), run under
//!   bt86 or QEMU.
//!
//! Both land in OUT_DIR; their paths are exported as `BT86_BENCH_NATIVE` and
//! `BT86_BENCH_GUEST` (read them with `env!`). A third program, `nano-guest.elf`
//! (`guest/nano.c` with the same guest platform layer: the nanobenchmarks), is
//! exported as `BT86_NANO_GUEST`.  Tools: `gcc` and `ld` (override with
//! `BT86_BENCH_CC` / `BT86_BENCH_LD`).  No libgcc and no 32-bit libc are needed.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Flags shared by every object (the workload object is compiled once, linked twice).
const CFLAGS: &[&str] = &[
    "-O2",
    "-m32",
    "-ffreestanding",
    "-fno-pic",
    "-fno-pie",
    "-nostdlib",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-mno-sse",
    "-mno-mmx",
    "-Wall",
    "-Wextra",
];

fn run(cmd: &mut Command) {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("bt86-benches build: cannot run {shown}: {e}"));
    if !out.status.success() {
        panic!(
            "bt86-benches build: {shown} failed ({})\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        println!("cargo:warning={line}");
    }
}

fn compile(cc: &str, guest: &Path, out: &Path, src: &str, extra: &[&str]) -> PathBuf {
    let obj = out.join(format!("{}.o", src.replace('.', "_")));
    run(Command::new(cc)
        .args(CFLAGS)
        .args(extra)
        .arg("-I")
        .arg(guest)
        .arg("-c")
        .arg(guest.join(src))
        .arg("-o")
        .arg(&obj));
    obj
}

/// The multiboot v1 header must be 4-byte aligned within the first 8 KiB of the file.
fn check_multiboot(elf: &Path) {
    let bytes = std::fs::read(elf).expect("read guest ELF");
    let window = &bytes[..bytes.len().min(8192)];
    let found = window.chunks_exact(4).enumerate().any(|(i, w)| {
        let magic = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        if magic != 0x1BAD_B002 || window.len() < i * 4 + 12 {
            return false;
        }
        let word = |k: usize| {
            let o = i * 4 + k * 4;
            u32::from_le_bytes([window[o], window[o + 1], window[o + 2], window[o + 3]])
        };
        magic.wrapping_add(word(1)).wrapping_add(word(2)) == 0
    });
    assert!(
        found,
        "bt86-benches build: no valid multiboot header in the first 8 KiB of {}",
        elf.display()
    );
}

/// The interpreter loop is there to exercise indirect jumps: warn if the compiler
/// stopped emitting a jump table for its switch.
fn check_jump_table(obj: &Path) {
    let Ok(out) = Command::new("objdump").arg("-d").arg(obj).output() else {
        return; // objdump is optional
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let has_indirect = text
        .lines()
        .any(|l| l.contains("jmp ") && l.contains("*0x") && l.contains(",4)"));
    if !has_indirect {
        println!(
            "cargo:warning=workload.o: no `jmp *table(,%reg,4)` found; the bytecode \
             interpreter no longer dispatches through a jump table"
        );
    }
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let guest = manifest.join("guest");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let cc = env::var("BT86_BENCH_CC").unwrap_or_else(|_| "gcc".into());
    let ld = env::var("BT86_BENCH_LD").unwrap_or_else(|_| "ld".into());

    println!("cargo:rerun-if-changed=build.rs");
    for f in [
        "bench.h",
        "workload.c",
        "plat_native.c",
        "start_native.S",
        "plat_guest.c",
        "start.S",
        "link.ld",
        "nano.c",
    ] {
        println!("cargo:rerun-if-changed={}", guest.join(f).display());
    }
    println!("cargo:rerun-if-env-changed=BT86_BENCH_CC");
    println!("cargo:rerun-if-env-changed=BT86_BENCH_LD");

    // One workload object, linked into both programs.
    let workload = compile(&cc, &guest, &out, "workload.c", &[]);
    check_jump_table(&workload);

    // Native: static i386 Linux ELF, _start -> bench_main -> exit(2) via int $0x80.
    let native_start = compile(&cc, &guest, &out, "start_native.S", &[]);
    let native_plat = compile(&cc, &guest, &out, "plat_native.c", &[]);
    let native = out.join("bench-native");
    run(Command::new(&ld)
        .args([
            "-m",
            "elf_i386",
            "-static",
            "-z",
            "noexecstack",
            "--build-id=none",
        ])
        .args(["-e", "_start", "-o"])
        .arg(&native)
        .arg(&native_start)
        .arg(&native_plat)
        .arg(&workload));

    // Guest: multiboot v1 kernel at 1 MiB, UART console, isa-debug-exit.
    let guest_start = compile(&cc, &guest, &out, "start.S", &[]);
    let guest_plat = compile(&cc, &guest, &out, "plat_guest.c", &[]);
    let kernel = out.join("bench-guest.elf");
    run(Command::new(&ld)
        .args([
            "-m",
            "elf_i386",
            "-z",
            "noexecstack",
            "--build-id=none",
            "-T",
        ])
        .arg(guest.join("link.ld"))
        .arg("-o")
        .arg(&kernel)
        .arg(&guest_start)
        .arg(&guest_plat)
        .arg(&workload));
    check_multiboot(&kernel);

    // Nanobenchmarks: the same platform layer, a different main (nano.c).
    let nano_obj = compile(&cc, &guest, &out, "nano.c", &[]);
    let nano = out.join("nano-guest.elf");
    run(Command::new(&ld)
        .args([
            "-m",
            "elf_i386",
            "-z",
            "noexecstack",
            "--build-id=none",
            "-T",
        ])
        .arg(guest.join("link.ld"))
        .arg("-o")
        .arg(&nano)
        .arg(&guest_start)
        .arg(&guest_plat)
        .arg(&nano_obj));
    check_multiboot(&nano);

    println!("cargo:rustc-env=BT86_BENCH_NATIVE={}", native.display());
    println!("cargo:rustc-env=BT86_BENCH_GUEST={}", kernel.display());
    println!("cargo:rustc-env=BT86_NANO_GUEST={}", nano.display());
}
