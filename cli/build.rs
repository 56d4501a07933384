//! Builds the demo guest (cli/demo-guest/demo.c) with the bt86 guest kit into
//! `$OUT_DIR/demo.elf`, for `include_bytes!(concat!(env!("OUT_DIR"), "/demo.elf"))`.

use std::path::PathBuf;

fn main() {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let demo_dir = manifest_dir.join("demo-guest");
    println!("cargo:rerun-if-changed={}", demo_dir.display());
    let sources = vec![demo_dir.join("demo.c")];
    if let Err(e) = bt86_guest_kit::build_guest("demo", &sources, &out_dir) {
        eprintln!(
            "error: building the demo guest failed (needs gcc with -m32 support and GNU ld)\n{e}"
        );
        std::process::exit(1);
    }
}
