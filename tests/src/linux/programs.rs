//! Small Linux i386 programs for the Linux tests, from assembly source: `escape`
//! (user code that far-jumps to the host's 64-bit selector 0x33 and makes x86-64
//! system calls) and `spin` (a compute loop, no system calls). Assembled when a test
//! runs, with the same `gcc -m32` and GNU ld the guest kit needs.

use std::path::Path;
use std::process::Command;

/// `escape.S`: `escape DIR` tries `mkdir(DIR)` on the host after the far jump.
pub const ESCAPE: (&str, &str) = ("escape", include_str!("programs/escape.S"));
/// `spin.S`: `spin N` sums N rounds of xorshift32 and prints the sum in hex (`spin N
/// reload` reloads %ds and %es with Linux's 0x7b first: for guests only).
pub const SPIN: (&str, &str) = ("spin", include_str!("programs/spin.S"));

/// What `spin N` prints (without the newline).
pub fn spin_result(rounds: u32) -> String {
    let (mut x, mut sum) = (0x1234_5678u32, 0u32);
    for _ in 0..rounds {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        sum = sum.wrapping_add(x);
    }
    format!("{sum:08x}")
}

/// Assembles and links `program` (name, source) as a static i386 ELF in `dir`;
/// returns the executable's bytes.
pub fn build(program: (&str, &str), dir: &Path) -> Result<Vec<u8>, String> {
    let (name, source) = program;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (src, obj, exe) = (dir.join(format!("{name}.S")), dir.join(format!("{name}.o")), dir.join(name));
    std::fs::write(&src, source).map_err(|e| format!("{}: {e}", src.display()))?;
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))
        }
    };
    run(Command::new("gcc").arg("-m32").arg("-c").arg(&src).arg("-o").arg(&obj))?;
    run(Command::new("ld").args(["-m", "elf_i386", "-static", "-o"]).arg(&exe).arg(&obj))?;
    std::fs::read(&exe).map_err(|e| format!("{}: {e}", exe.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn spin_result_is_the_xorshift_sum() {
        assert_eq!(super::spin_result(0), "00000000");
        // One round: 0x12345678 through xorshift32 (13, 17, 5).
        assert_eq!(super::spin_result(1), "87985aa5");
    }
}
