//! Builds the demo guest (cli/demo-guest/demo.c) with the bt86 guest kit into
//! `$OUT_DIR/demo.elf`, for `include_bytes!(concat!(env!("OUT_DIR"), "/demo.elf"))`,
//! and sets `BT86_GIT_COMMIT` (for `--version`) from `git rev-parse`: "commit
//! <hash>", or "commit unknown" without git or outside a repository.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs git in `dir`; its trimmed output if it succeeded.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn git_commit(dir: &Path) {
    let commit = git(dir, &["rev-parse", "--short=12", "HEAD"]);
    println!("cargo:rustc-env=BT86_GIT_COMMIT=commit {}", commit.as_deref().unwrap_or("unknown"));
    // Build again when HEAD moves (a commit, a checkout): HEAD itself, and the log of
    // HEAD, which every move appends to (in a worktree both are the worktree's own).
    for file in ["HEAD", "logs/HEAD"] {
        if let Some(p) = git(dir, &["rev-parse", "--git-path", file]) {
            let p = dir.join(p);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
}

fn main() {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    git_commit(&manifest_dir);
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
