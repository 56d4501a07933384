//! End-to-end tests, the guest kit's guests, the Linux guest (Debian's kernel and
//! busybox), a tmux terminal for interactive tests, and the differential oracle.
pub mod guests;
pub mod images;
pub mod linux;
pub mod oracle;
pub mod tmux;

/// Whether QEMU's `qemu-system-i386` is on PATH; says on stderr that the caller's test
/// is skipped when it is not.
pub fn qemu_installed() -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("qemu-system-i386").is_file()));
    if !found {
        eprintln!("skipped: qemu-system-i386 is not installed (apt-get install -y qemu-system-x86)");
    }
    found
}
