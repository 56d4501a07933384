//! A writer of the "newc" cpio format (the SVR4 portable format without checksums),
//! the one Linux unpacks an initramfs from (`Documentation/driver-api/early-userspace/
//! buffer-format.rst`), so no `cpio` binary is needed.
//!
//! Each entry is a 110-byte ASCII header (`070701` and 13 fields of 8 hex digits), the
//! NUL-terminated name, padding to a multiple of 4, the data, padding to a multiple of 4.
//! The archive ends with an entry named `TRAILER!!!`. The kernel creates the entries in
//! order, so a directory must come before what it holds.

/// File type bits of `st_mode` (`S_IFDIR` ...), as the kernel reads them.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// An archive being built in memory (an initramfs is a few MiB).
#[derive(Default)]
pub struct NewcWriter {
    out: Vec<u8>,
    next_ino: u32,
}

/// What one entry is; the permission bits are given with it.
enum Kind<'a> {
    Dir,
    File(&'a [u8]),
    /// The link's target, stored as its data.
    Symlink(&'a str),
    CharDevice { major: u32, minor: u32 },
}

impl NewcWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn dir(&mut self, path: &str, perm: u32) {
        self.entry(path, perm, Kind::Dir);
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.entry(path, perm, Kind::File(data));
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, 0o777, Kind::Symlink(target));
    }

    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.entry(path, perm, Kind::CharDevice { major, minor });
    }

    /// The archive, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 1, 0, (0, 0));
        self.out
    }

    fn entry(&mut self, path: &str, perm: u32, kind: Kind) {
        // Names are relative to the root, as `find . | cpio -o` writes them without "./".
        let name = path.trim_start_matches('/');
        let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match kind {
            Kind::Dir => (S_IFDIR | perm, 2, &[], (0, 0)),
            Kind::File(data) => (S_IFREG | perm, 1, data, (0, 0)),
            Kind::Symlink(target) => (S_IFLNK | perm, 1, target.as_bytes(), (0, 0)),
            Kind::CharDevice { major, minor } => (S_IFCHR | perm, 1, &[], (major, minor)),
        };
        self.header(name, mode, nlink, data.len(), rdev);
        self.out.extend_from_slice(data);
        self.pad();
    }

    /// Writes a header and the name (uid, gid and mtime 0: the archive is reproducible).
    fn header(&mut self, name: &str, mode: u32, nlink: u32, size: usize, (rmajor, rminor): (u32, u32)) {
        self.next_ino += 1;
        let size = u32::try_from(size).expect("an initramfs member over 4 GiB");
        let namesize = u32::try_from(name.len() + 1).expect("a short name");
        let fields = [self.next_ino, mode, 0, 0, nlink, 0, size, 0, 0, rmajor, rminor, namesize, 0];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        self.out.resize(self.out.len().next_multiple_of(4), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of the header at `at`, parsed back.
    fn fields(archive: &[u8], at: usize) -> Vec<u32> {
        assert_eq!(&archive[at..at + 6], b"070701");
        (0..13)
            .map(|i| {
                let s = std::str::from_utf8(&archive[at + 6 + 8 * i..at + 14 + 8 * i]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            })
            .collect()
    }

    #[test]
    fn entries_are_aligned_and_end_with_the_trailer() {
        let mut w = NewcWriter::new();
        w.dir("/bin", 0o755);
        w.file("bin/hello", 0o755, b"hello");
        w.symlink("/bin/sh", "busybox");
        w.char_device("/dev/console", 0o600, 5, 1);
        let a = w.finish();
        assert_eq!(a.len() % 4, 0);
        // "bin": 110 + 4 bytes of name -> 114, padded to 116; no data.
        let f = fields(&a, 0);
        assert_eq!((f[1], f[4], f[6], f[11]), (0o040_755, 2, 0, 4));
        assert_eq!(&a[110..114], b"bin\0");
        // "bin/hello": header at 116, name 10 bytes -> 236, data "hello" -> 241, pad 244.
        let f = fields(&a, 116);
        assert_eq!((f[1], f[6], f[11]), (0o100_755, 5, 10));
        assert_eq!(&a[236..241], b"hello");
        let f = fields(&a, 244);
        assert_eq!((f[1], f[6]), (0o120_777, 7), "a symlink's data is its target");
        assert_eq!(&a[244 + 110..244 + 118], b"bin/sh\0\0");
        assert_eq!(&a[364..371], b"busybox");
        let f = fields(&a, 372);
        assert_eq!((f[1], f[9], f[10]), (0o020_600, 5, 1));
        assert!(a.windows(11).any(|w| w == b"TRAILER!!!\0"));
        let inodes: Vec<u32> = [0, 116, 244, 372].iter().map(|&at| fields(&a, at)[0]).collect();
        assert_eq!(inodes, [1, 2, 3, 4], "every entry has an inode of its own");
    }
}
