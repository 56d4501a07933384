//! The bt86 guest kit: builds small 32-bit multiboot guest kernels from C and
//! assembly at build time (used as a build-dependency by `tests/` and `cli/`).
//!
//! A guest is one or more `.c` / `.S` files with an
//! `int kmain(uint32_t magic, uint32_t mbi)` entry, compiled together with the
//! kit's own sources (`kit/start.S`, `kit/serial.c`, `kit/printf.c`,
//! `kit/lib.c`) and linked at 1 MiB with `kit/link.ld` into an ELF32 i386
//! multiboot kernel.
//!
//! The toolchain is the host `gcc` (with `-m32`, no 32-bit libc or libgcc
//! needed) and GNU `ld`; the environment variables `BT86_GUEST_CC` and
//! `BT86_GUEST_LD` override them.
//!
//! A source file may add compiler flags for itself with a line
//! `// kit-cflags: <flags...>` in its first 30 lines (for example
//! `// kit-cflags: -msse -msse2` for a guest that wants compiler-generated SSE).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The compiler flags every guest source is compiled with (before `-I<kit>`
/// and any per-source `kit-cflags`).
pub const CFLAGS: &[&str] = &[
    "-m32",
    "-ffreestanding",
    "-fno-pic",
    "-fno-pie",
    "-nostdlib",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fcf-protection=none",
    "-mno-sse",
    "-mno-mmx",
    "-O2",
    "-g",
    "-Wall",
];

/// The kit's own sources, relative to [`kit_dir`], linked into every guest.
pub const KIT_SOURCES: &[&str] = &["start.S", "serial.c", "printf.c", "lib.c"];

/// Kit files that are not compiled on their own but that every build depends on.
const KIT_DEPS: &[&str] = &["kit.h", "link.ld"];

/// The multiboot v1 header magic (in the image).
pub const MULTIBOOT_HEADER_MAGIC: u32 = 0x1BAD_B002;
/// The magic a multiboot loader passes in EAX.
pub const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;

/// The directory holding the kit's C and assembly sources (`kit.h`,
/// `start.S`, `link.ld`, ...).
pub fn kit_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kit")
}

/// Builds the guest `name` from `sources` (plus the kit) into
/// `<out_dir>/<name>.elf` and returns that path.
///
/// Prints `cargo:rerun-if-changed` for every source and kit file. On failure
/// the error names the command and carries the tool's stderr.
pub fn build_guest(name: &str, sources: &[PathBuf], out_dir: &Path) -> Result<PathBuf, String> {
    build_guest_with(name, sources, out_dir, &[])
}

/// Like [`build_guest`], with extra compiler flags for this guest's own
/// sources (not for the kit's).
pub fn build_guest_with(
    name: &str,
    sources: &[PathBuf],
    out_dir: &Path,
    extra_cflags: &[&str],
) -> Result<PathBuf, String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "guest name {name:?} must be non-empty [A-Za-z0-9_-]"
        ));
    }
    if sources.is_empty() {
        return Err(format!("guest {name}: no sources"));
    }
    let kit = kit_dir();
    let cc = tool_from_env("BT86_GUEST_CC", "gcc");
    let ld = tool_from_env("BT86_GUEST_LD", "ld");

    for dep in KIT_DEPS {
        rerun_if_changed(&kit.join(dep));
    }

    let obj_dir = out_dir.join(format!("{name}.objs"));
    fs::create_dir_all(&obj_dir)
        .map_err(|e| format!("guest {name}: creating {}: {e}", obj_dir.display()))?;

    let mut objects = Vec::new();
    let kit_sources: Vec<PathBuf> = KIT_SOURCES.iter().map(|s| kit.join(s)).collect();
    let all = kit_sources
        .iter()
        .map(|p| (p, true))
        .chain(sources.iter().map(|p| (p, false)));
    for (index, (src, is_kit)) in all.enumerate() {
        rerun_if_changed(src);
        let ext = src.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "c" | "S") {
            return Err(format!(
                "guest {name}: {}: only .c and .S sources are supported",
                src.display()
            ));
        }
        let stem = src.file_stem().and_then(|s| s.to_str()).unwrap_or("src");
        let obj = obj_dir.join(format!(
            "{index:02}-{}{stem}.o",
            if is_kit { "kit-" } else { "" }
        ));
        let mut cmd = Command::new(&cc);
        cmd.args(CFLAGS).arg(format!("-I{}", kit.display()));
        if !is_kit {
            cmd.args(extra_cflags);
            cmd.args(source_cflags(src)?);
        }
        if ext == "S" {
            cmd.arg("-D__ASSEMBLY__");
        }
        cmd.arg("-c").arg(src).arg("-o").arg(&obj);
        run(
            &mut cmd,
            &format!("guest {name}: compiling {}", src.display()),
        )?;
        objects.push(obj);
    }

    let elf = out_dir.join(format!("{name}.elf"));
    let mut cmd = Command::new(&ld);
    cmd.args([
        "-m",
        "elf_i386",
        "-nostdlib",
        "--build-id=none",
        "-z",
        "max-page-size=0x1000",
        "-z",
        "noexecstack",
    ])
    .arg("-T")
    .arg(kit.join("link.ld"))
    .arg("-o")
    .arg(&elf)
    .args(&objects);
    run(
        &mut cmd,
        &format!("guest {name}: linking {}", elf.display()),
    )?;
    check_multiboot_elf(&elf).map_err(|e| format!("guest {name}: {}: {e}", elf.display()))?;
    Ok(elf)
}

/// Finds the guests in `dir`: every `<name>.c` is a guest `<name>`, together
/// with `<name>.S` and any `<name>-*.c` / `<name>-*.S` next to it; every
/// subdirectory `<name>/` is a guest made of all the `.c` and `.S` files in
/// it. Sorted by name. Prints `cargo:rerun-if-changed` for `dir` (and the
/// subdirectories) so that added guests are picked up.
pub fn discover_guests(dir: &Path) -> Result<Vec<(String, Vec<PathBuf>)>, String> {
    rerun_if_changed(dir);
    let mut files = Vec::new();
    let mut guests = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("reading {}: {e}", dir.display()))?
            .path();
        if path.is_dir() {
            rerun_if_changed(&path);
            let name = file_name(&path);
            let mut sources = sources_in(&path)?;
            sources.sort();
            if !sources.is_empty() {
                guests.push((name, sources));
            }
        } else if is_source(&path) {
            files.push(path);
        }
    }
    files.sort();
    let mains: Vec<String> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .map(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("")
                .to_string()
        })
        .filter(|stem| !is_companion_stem(stem, &files))
        .collect();
    for main in &mains {
        let sources: Vec<PathBuf> = files
            .iter()
            .filter(|p| {
                let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                stem == main
                    || stem
                        .strip_prefix(main.as_str())
                        .is_some_and(|rest| rest.starts_with('-'))
            })
            .cloned()
            .collect();
        guests.push((main.clone(), sources));
    }
    guests.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(guests)
}

/// `true` if `stem` is `<other>-<something>` for another `.c` main `<other>`.
fn is_companion_stem(stem: &str, files: &[PathBuf]) -> bool {
    files.iter().any(|p| {
        p.extension().is_some_and(|e| e == "c")
            && p.file_stem().and_then(|s| s.to_str()).is_some_and(|other| {
                other != stem
                    && stem
                        .strip_prefix(other)
                        .is_some_and(|rest| rest.starts_with('-'))
            })
    })
}

fn sources_in(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))? {
        let path = entry
            .map_err(|e| format!("reading {}: {e}", dir.display()))?
            .path();
        if is_source(&path) {
            out.push(path);
        }
    }
    Ok(out)
}

fn is_source(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|e| e == "c" || e == "S")
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("")
        .to_string()
}

/// Extra flags from a `// kit-cflags: ...` line in the first 30 lines of `src`.
fn source_cflags(src: &Path) -> Result<Vec<String>, String> {
    let text = fs::read_to_string(src).map_err(|e| format!("reading {}: {e}", src.display()))?;
    Ok(text
        .lines()
        .take(30)
        .filter_map(|l| l.trim_start().strip_prefix("// kit-cflags:"))
        .flat_map(|rest| {
            rest.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect())
}

fn tool_from_env(var: &str, default: &str) -> String {
    println!("cargo:rerun-if-env-changed={var}");
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn rerun_if_changed(path: &Path) {
    println!("cargo:rerun-if-changed={}", path.display());
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run {shown}: {e}"))?;
    if out.status.success() {
        // Compiler and linker warnings show up in cargo's output.
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            if !line.trim().is_empty() {
                println!("cargo:warning={line}");
            }
        }
        return Ok(());
    }
    Err(format!(
        "{what}: failed ({})\ncommand: {shown}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    ))
}

/// Checks that `elf` is an ELF32 i386 executable with a valid multiboot v1
/// header (4-byte aligned, in the first 8 KiB of the file).
pub fn check_multiboot_elf(elf: &Path) -> Result<(), String> {
    let bytes = fs::read(elf).map_err(|e| format!("reading: {e}"))?;
    if bytes.len() < 52 || &bytes[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if bytes[4] != 1 || bytes[5] != 1 {
        return Err("not a little-endian ELF32 file".into());
    }
    if u16::from_le_bytes([bytes[18], bytes[19]]) != 3 {
        return Err("not an i386 ELF file".into());
    }
    // The header (magic, flags, checksum) must lie wholly in the first 8 KiB.
    let window = &bytes[..bytes.len().min(8192)];
    let word = |at: usize| {
        u32::from_le_bytes([window[at], window[at + 1], window[at + 2], window[at + 3]])
    };
    let found = (0..window.len().saturating_sub(11)).step_by(4).any(|at| {
        word(at) == MULTIBOOT_HEADER_MAGIC
            && word(at)
                .wrapping_add(word(at + 4))
                .wrapping_add(word(at + 8))
                == 0
    });
    if found {
        Ok(())
    } else {
        Err("no multiboot header in the first 8 KiB".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("bt86-guest-kit-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn discovers_single_files_companions_and_directories() {
        let dir = scratch("discover");
        for f in ["a.c", "a-asm.S", "b_c.c", "b_c.S", "notes.md"] {
            fs::write(dir.join(f), "").unwrap();
        }
        fs::create_dir(dir.join("multi")).unwrap();
        fs::write(dir.join("multi/one.c"), "").unwrap();
        fs::write(dir.join("multi/two.S"), "").unwrap();
        let guests = discover_guests(&dir).unwrap();
        let names: Vec<&str> = guests.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b_c", "multi"]);
        assert_eq!(guests[0].1.len(), 2);
        assert_eq!(guests[1].1.len(), 2);
        assert_eq!(guests[2].1.len(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn builds_a_multiboot_elf() {
        let dir = scratch("build");
        let src = dir.join("tiny.c");
        fs::write(
            &src,
            "#include \"kit.h\"\nint kmain(uint32_t m, uint32_t i) { (void)i; CHECK_EQ(m, MULTIBOOT_BOOTLOADER_MAGIC); return kit_finish(); }\n",
        )
        .unwrap();
        let elf = build_guest("tiny", &[src], &dir).unwrap();
        assert_eq!(elf, dir.join("tiny.elf"));
        check_multiboot_elf(&elf).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn compiler_errors_are_reported() {
        let dir = scratch("broken");
        let src = dir.join("broken.c");
        fs::write(&src, "int kmain(void) { return undefined_thing; }\n").unwrap();
        let err = build_guest("broken", &[src], &dir).unwrap_err();
        assert!(err.contains("compiling"), "{err}");
        assert!(err.contains("undefined_thing"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_non_multiboot_files() {
        let dir = scratch("notmb");
        let f = dir.join("x.elf");
        fs::write(&f, b"\x7fELF not really").unwrap();
        assert!(check_multiboot_elf(&f).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
