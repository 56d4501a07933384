//! A busybox initramfs: the directories a shell script needs, busybox with a symlink per
//! applet the scripts use, `/dev/console`, and the script as `/init`, in a gzip newc
//! archive.

use super::newc::NewcWriter;
use flate2::write::GzEncoder;
use std::io::Write;

/// The applets linked into `/bin` (busybox runs the one its argv[0] names). `sh` runs
/// `/init` (its `#!/bin/sh`); the rest are what the tests' and the benchmark's scripts
/// and a person at the shell use. The shell finds them on PATH (`/bin`).
pub const APPLETS: &[&str] = &[
    "sh", "[", "awk", "basename", "cat", "chmod", "cmp", "cp", "cut", "cttyhack", "date", "dd", "df",
    "dmesg", "echo", "env", "expr", "false", "free", "grep", "head", "hostname", "id", "kill", "ln", "ls",
    "md5sum", "mkdir", "mount", "mv", "poweroff", "printf", "ps", "pwd", "reboot", "rm", "sed", "seq",
    "setsid", "sha256sum", "sleep", "sort", "stat", "sync", "tail", "tee", "test", "touch", "tr", "true",
    "umount", "uname", "uniq", "uptime", "wc", "yes",
];

/// The directories made, before anything in them. `/proc`, `/sys`, `/dev` and `/tmp`
/// are mount points.
const DIRS: &[&str] = &["bin", "dev", "proc", "sys", "tmp", "root", "etc"];

/// The initramfs, gzip-compressed, whose `/init` is `init` (a script for busybox sh:
/// start it with `#!/bin/sh`).
pub fn busybox_initramfs(busybox: &[u8], init: &str) -> Vec<u8> {
    busybox_initramfs_with(busybox, init, &[])
}

/// `busybox_initramfs` with `programs` (name, executable) in `/bin` too.
pub fn busybox_initramfs_with(busybox: &[u8], init: &str, programs: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = NewcWriter::new();
    for d in DIRS {
        w.dir(d, 0o755);
    }
    w.file("bin/busybox", 0o755, busybox);
    for applet in APPLETS {
        w.symlink(&format!("bin/{applet}"), "busybox");
    }
    for (name, exe) in programs {
        w.file(&format!("bin/{name}"), 0o755, exe);
    }
    // The kernel opens /dev/console for init's standard streams before /dev is
    // mounted; without this node init would run with none.
    w.char_device("dev/console", 0o600, 5, 1);
    w.file("init", 0o755, init.as_bytes());
    gzip(&w.finish())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).expect("writing to memory");
    gz.finish().expect("writing to memory")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_archive_holds_busybox_its_links_the_console_and_init() {
        let gz = busybox_initramfs(b"\x7fELF busybox", "#!/bin/sh\necho hi\n");
        let mut cpio = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut cpio).unwrap();
        let text = String::from_utf8_lossy(&cpio);
        for name in ["bin\0", "bin/busybox\0", "bin/sh\0", "bin/cttyhack\0", "dev/console\0", "init\0", "TRAILER!!!\0"] {
            assert!(text.contains(name), "{name:?} missing");
        }
        assert!(text.contains("#!/bin/sh\necho hi\n") && text.contains("\x7fELF busybox"));
        // Directories come before what they hold, as the kernel creates them in order.
        assert!(text.find("bin\0").unwrap() < text.find("bin/busybox\0").unwrap());
    }
}
