//! Guest physical RAM: one memfd, plus one host mapping of all of it (the *alias*).
//!
//! Frame N of guest physical memory is memfd offset N*4096. Address-space views (see the
//! shadow MMU) map pages of the same memfd elsewhere in the host; loaders and devices use
//! the alias through the copying accessors below.
//!
//! Physical addresses past the end of RAM are an empty bus, as on a PC: reads give
//! all ones, writes go nowhere. The memfd holds one page more than RAM, the *void
//! page*, filled with 0xff; views map it (privately) wherever the guest reaches for
//! memory that does not exist.
//!
//! The memory behind the alias is shared with guest code that writes it through other
//! mappings, so Rust code never holds a reference (`&[u8]`) into it: every access copies,
//! in one small unsafe helper ([`GuestRam::transfer`]).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::{self, NonNull};

use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

/// Guest pages are 4 KiB; RAM is a whole number of them.
pub const PAGE_SIZE: u32 = 4096;
/// Smallest RAM bt86 accepts: the loader and the BIOS-era layout need the first MiB.
pub const MIN_RAM: u32 = 1 << 20;
/// Largest RAM: leaves the top GiB of the 32-bit physical space for devices.
pub const MAX_RAM: u32 = 3 << 30;

/// Errors from creating or accessing guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot create the guest RAM memfd: {0}")]
    Create(#[source] std::io::Error),
    #[error("cannot map guest RAM: {0}")]
    Map(#[source] std::io::Error),
    #[error("guest physical access out of range: {len} bytes at {addr:#x}")]
    OutOfRange { addr: u32, len: usize },
    #[error(
        "bad guest RAM size {bytes} bytes: must be a multiple of 4 KiB, at least 1 MiB and at most 3 GiB"
    )]
    BadSize { bytes: u32 },
}

/// Reads guest RAM from any thread (see [`GuestRam::reader`]).
#[derive(Debug)]
pub struct RamReader {
    fd: OwnedFd,
    size: u32,
}

impl RamReader {
    /// Copies guest RAM at `phys` into `buf` (all of it inside RAM).
    pub fn read(&self, phys: u32, buf: &mut [u8]) -> std::io::Result<()> {
        let end = u64::from(phys) + buf.len() as u64;
        if end > u64::from(self.size) {
            return Err(std::io::Error::other(format!("{} bytes at {phys:#x} lie outside guest RAM", buf.len())));
        }
        let mut done = 0;
        while done < buf.len() {
            match rustix::io::pread(&self.fd, &mut buf[done..], u64::from(phys) + done as u64) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Direction of a copy between guest RAM and a host buffer.
enum Transfer<'a> {
    /// Guest RAM → host buffer.
    Out(&'a mut [u8]),
    /// Host buffer → guest RAM.
    In(&'a [u8]),
}

/// Guest physical RAM backed by a memfd, with a read-write host alias of all of it.
pub struct GuestRam {
    fd: OwnedFd,
    size: u32,
    alias: NonNull<u8>,
}

// SAFETY: `GuestRam` exclusively owns its memfd and its alias mapping; the raw pointer is
// only a handle to that mapping, valid from any thread, and nothing about it is tied to
// the creating thread. All accesses copy bytes (no references into the mapping escape),
// so moving the owner to another thread cannot invalidate anything. It is deliberately not
// `Sync`: unsynchronized copies from two threads through `&self` could race.
unsafe impl Send for GuestRam {}

impl std::fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestRam")
            .field("size", &self.size)
            .field("alias", &self.alias)
            .finish_non_exhaustive()
    }
}

impl GuestRam {
    /// Creates `size_bytes` of zeroed guest RAM (a multiple of 4 KiB, 1 MiB to 3 GiB).
    pub fn new(size_bytes: u32) -> Result<Self, MemoryError> {
        if size_bytes & (PAGE_SIZE - 1) != 0 || !(MIN_RAM..=MAX_RAM).contains(&size_bytes) {
            return Err(MemoryError::BadSize { bytes: size_bytes });
        }
        let fd = memfd_create("bt86-ram", MemfdFlags::CLOEXEC)
            .map_err(|e| MemoryError::Create(e.into()))?;
        // The memfd is sparse: pages cost host memory only once touched.
        ftruncate(&fd, u64::from(size_bytes) + u64::from(PAGE_SIZE)).map_err(|e| MemoryError::Create(e.into()))?;
        let ones = [0xffu8; PAGE_SIZE as usize];
        rustix::io::pwrite(&fd, &ones, u64::from(size_bytes)).map_err(|e| MemoryError::Create(e.into()))?;
        let alias = map_alias(&fd, size_bytes)?;
        tracing::debug!(size = size_bytes, ?alias, "guest RAM created");
        Ok(Self {
            fd,
            size: size_bytes,
            alias,
        })
    }

    /// RAM size in bytes.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Memfd offset of the void page (all ones: what an empty bus reads).
    pub fn void_offset(&self) -> u32 {
        self.size
    }

    /// Copies guest physical memory at `phys` into `buf`, with all ones where
    /// there is no RAM (as a PC's empty bus reads).
    pub fn read_or_ones(&self, phys: u32, buf: &mut [u8]) {
        let in_ram = u64::from(self.size).saturating_sub(u64::from(phys)).min(buf.len() as u64) as usize;
        if in_ram > 0 && self.read(phys, &mut buf[..in_ram]).is_err() {
            buf[..in_ram].fill(0xff);
        }
        if in_ram < buf.len() {
            buf[in_ram..].fill(0xff);
        }
    }

    /// Writes `data` at `phys`; what falls outside RAM goes nowhere.
    pub fn write_or_drop(&self, phys: u32, data: &[u8]) {
        let in_ram = u64::from(self.size).saturating_sub(u64::from(phys)).min(data.len() as u64) as usize;
        if in_ram > 0 {
            let _ = self.write(phys, &data[..in_ram]);
        }
    }

    /// The memfd, for views that map its pages `MAP_SHARED | MAP_FIXED`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A read-only handle on guest RAM for another thread (a display): it reads the
    /// memfd with `pread` through a descriptor of its own, so it shares nothing with
    /// this `GuestRam` and needs no lock.
    pub fn reader(&self) -> Result<RamReader, MemoryError> {
        let fd = self.fd.try_clone().map_err(MemoryError::Create)?;
        Ok(RamReader { fd, size: self.size })
    }

    /// Base of the host alias. Callers that dereference it must not create references
    /// into it (the guest may write the memory concurrently through other mappings).
    pub fn alias_ptr(&self) -> *mut u8 {
        self.alias.as_ptr()
    }

    /// Whether `[phys, phys + len)` lies inside RAM (no wrap-around at 4 GiB).
    pub fn contains(&self, phys: u32, len: usize) -> bool {
        u64::try_from(len)
            .ok()
            .and_then(|len| u64::from(phys).checked_add(len))
            .is_some_and(|end| end <= u64::from(self.size))
    }

    /// Copies guest RAM at `phys` into `buf`.
    pub fn read(&self, phys: u32, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.transfer(phys, Transfer::Out(buf))
    }

    /// Copies `data` into guest RAM at `phys`.
    pub fn write(&self, phys: u32, data: &[u8]) -> Result<(), MemoryError> {
        self.transfer(phys, Transfer::In(data))
    }

    pub fn read_u8(&self, phys: u32) -> Result<u8, MemoryError> {
        let mut b = [0u8; 1];
        self.read(phys, &mut b)?;
        Ok(b[0])
    }

    pub fn read_u16(&self, phys: u32) -> Result<u16, MemoryError> {
        let mut b = [0u8; 2];
        self.read(phys, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    pub fn read_u32(&self, phys: u32) -> Result<u32, MemoryError> {
        let mut b = [0u8; 4];
        self.read(phys, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn write_u8(&self, phys: u32, v: u8) -> Result<(), MemoryError> {
        self.write(phys, &[v])
    }

    pub fn write_u16(&self, phys: u32, v: u16) -> Result<(), MemoryError> {
        self.write(phys, &v.to_le_bytes())
    }

    pub fn write_u32(&self, phys: u32, v: u32) -> Result<(), MemoryError> {
        self.write(phys, &v.to_le_bytes())
    }

    /// Sets `len` bytes at `phys` to `byte`. Checks the whole range first, so a failed
    /// fill writes nothing.
    pub fn fill(&self, phys: u32, len: usize, byte: u8) -> Result<(), MemoryError> {
        if !self.contains(phys, len) {
            return Err(MemoryError::OutOfRange { addr: phys, len });
        }
        // Chunked through a small buffer so all access goes through the one copy helper.
        let chunk = [byte; PAGE_SIZE as usize];
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(chunk.len());
            // `done < len <= size <= 3 GiB`, so the offset fits in u32 and cannot wrap.
            let at = phys + done as u32;
            self.write(at, &chunk[..n])?;
            done += n;
        }
        Ok(())
    }

    /// The only place that touches the alias: a bounds-checked byte copy.
    fn transfer(&self, phys: u32, dir: Transfer<'_>) -> Result<(), MemoryError> {
        let len = match &dir {
            Transfer::Out(buf) => buf.len(),
            Transfer::In(data) => data.len(),
        };
        if !self.contains(phys, len) {
            return Err(MemoryError::OutOfRange { addr: phys, len });
        }
        let guest = self.alias.as_ptr().wrapping_add(phys as usize);
        let (src, dst) = match dir {
            Transfer::Out(buf) => (guest.cast_const(), buf.as_mut_ptr()),
            Transfer::In(data) => (data.as_ptr(), guest),
        };
        // Constant lengths for the sizes page walks, emulated accesses, descriptors,
        // the TSS stack and interrupt frames use: moves instead of a call to memmove.
        // SAFETY: `[phys, phys+len)` is inside the alias mapping (checked above), which
        // stays mapped read-write for the lifetime of `self`. The host buffer is a Rust
        // slice of exactly `len` bytes, and it cannot lie inside the alias because this
        // type never hands out references into it, so the ranges do not overlap. Guest
        // writes through other mappings happen only while no Rust code runs on this VM.
        unsafe {
            match len {
                4 => ptr::copy_nonoverlapping(src, dst, 4),
                8 => ptr::copy_nonoverlapping(src, dst, 8),
                20 => ptr::copy_nonoverlapping(src, dst, 20),
                12 => ptr::copy_nonoverlapping(src, dst, 12),
                6 => ptr::copy_nonoverlapping(src, dst, 6),
                2 => ptr::copy_nonoverlapping(src, dst, 2),
                1 => ptr::copy_nonoverlapping(src, dst, 1),
                _ => ptr::copy_nonoverlapping(src, dst, len),
            }
        };
        Ok(())
    }
}

/// Maps the whole memfd read-write, shared, at an address the kernel picks.
fn map_alias(fd: &OwnedFd, size: u32) -> Result<NonNull<u8>, MemoryError> {
    // SAFETY: a fresh mapping at a kernel-chosen address (null hint, no MAP_FIXED) cannot
    // replace any existing mapping; the memfd is `size` bytes long, so every mapped page
    // is backed.
    let p = unsafe {
        mmap(
            ptr::null_mut(),
            size as usize,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            0,
        )
    }
    .map_err(|e| MemoryError::Map(e.into()))?;
    NonNull::new(p.cast::<u8>())
        .ok_or_else(|| MemoryError::Map(std::io::Error::other("mmap returned null")))
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: `alias`/`size` describe exactly the mapping made in `new`, owned by
        // `self`; no references into it exist, so unmapping cannot leave any dangling.
        if let Err(e) = unsafe { munmap(self.alias.as_ptr().cast(), self.size as usize) } {
            tracing::warn!(error = %e, "munmap of guest RAM alias failed");
        }
        // The memfd closes when `fd` drops; views hold their own mappings of it.
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn reader_sees_what_the_alias_wrote() {
        let ram = GuestRam::new(MIB).unwrap();
        let r = ram.reader().unwrap();
        ram.write(0xb_8000, b"Hi").unwrap();
        let mut b = [0u8; 2];
        r.read(0xb_8000, &mut b).unwrap();
        assert_eq!(&b, b"Hi");
        let t = std::thread::spawn(move || {
            let mut b = [0u8; 2];
            r.read(MIB - 2, &mut b).map(|()| b)
        });
        assert_eq!(t.join().unwrap().unwrap(), [0, 0]);
        assert!(ram.reader().unwrap().read(MIB - 1, &mut b).is_err(), "past the end");
    }
    use super::*;

    const MIB: u32 = 1 << 20;

    #[test]
    fn rejects_bad_sizes() {
        for bytes in [0, 4096, MIB - 4096, MIB + 1, MAX_RAM + 4096, u32::MAX] {
            assert!(
                matches!(GuestRam::new(bytes), Err(MemoryError::BadSize { bytes: b }) if b == bytes),
                "{bytes:#x}"
            );
        }
    }

    #[test]
    fn fresh_ram_is_zero_and_sized() {
        let ram = GuestRam::new(2 * MIB).unwrap();
        assert_eq!(ram.size(), 2 * MIB);
        let mut buf = [0xaau8; 64];
        ram.read(2 * MIB - 64, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn beyond_ram_reads_ones_and_drops_writes() {
        let ram = GuestRam::new(MIB).unwrap();
        ram.write_u32(MIB - 4, 0x1122_3344).unwrap();
        let mut buf = [0u8; 8];
        ram.read_or_ones(MIB - 4, &mut buf);
        assert_eq!(buf, [0x44, 0x33, 0x22, 0x11, 0xff, 0xff, 0xff, 0xff]);
        ram.write_or_drop(MIB - 2, &[1, 2, 3, 4]);
        ram.read_or_ones(MIB - 4, &mut buf);
        assert_eq!(buf, [0x44, 0x33, 1, 2, 0xff, 0xff, 0xff, 0xff]);
        ram.read_or_ones(u32::MAX - 1, &mut buf[..2]);
        assert_eq!(buf[..2], [0xff, 0xff]);
    }

    #[test]
    fn round_trips() {
        let ram = GuestRam::new(MIB).unwrap();
        ram.write(0x1234, b"hello").unwrap();
        let mut buf = [0u8; 5];
        ram.read(0x1234, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");

        ram.write_u8(0x10, 0xab).unwrap();
        ram.write_u16(0x20, 0xbeef).unwrap();
        ram.write_u32(0x30, 0xdead_beef).unwrap();
        assert_eq!(ram.read_u8(0x10).unwrap(), 0xab);
        assert_eq!(ram.read_u16(0x20).unwrap(), 0xbeef);
        assert_eq!(ram.read_u32(0x30).unwrap(), 0xdead_beef);
        // Little endian.
        assert_eq!(ram.read_u8(0x30).unwrap(), 0xef);
        assert_eq!(ram.read_u8(0x33).unwrap(), 0xde);
        // Last bytes of RAM are reachable.
        ram.write_u32(MIB - 4, 7).unwrap();
        assert_eq!(ram.read_u32(MIB - 4).unwrap(), 7);
    }

    #[test]
    fn fill_sets_exact_range() {
        let ram = GuestRam::new(MIB).unwrap();
        ram.fill(0x1001, 10_000, 0x5a).unwrap();
        assert_eq!(ram.read_u8(0x1000).unwrap(), 0);
        assert_eq!(ram.read_u8(0x1001).unwrap(), 0x5a);
        assert_eq!(ram.read_u8(0x1001 + 9_999).unwrap(), 0x5a);
        assert_eq!(ram.read_u8(0x1001 + 10_000).unwrap(), 0);
        ram.fill(0, MIB as usize, 1).unwrap();
        assert_eq!(ram.read_u8(MIB - 1).unwrap(), 1);
        assert!(matches!(
            ram.fill(1, MIB as usize, 0),
            Err(MemoryError::OutOfRange { .. })
        ));
        assert_eq!(ram.read_u8(1).unwrap(), 1, "failed fill wrote nothing");
    }

    #[test]
    fn out_of_range_errors() {
        let ram = GuestRam::new(MIB).unwrap();
        let mut four = [0u8; 4];
        let oor = |r: Result<(), MemoryError>| matches!(r, Err(MemoryError::OutOfRange { .. }));
        assert!(oor(ram.read(MIB, &mut four)));
        assert!(oor(ram.read(MIB - 3, &mut four)));
        assert!(oor(ram.write(0xffff_fffe, &four)));
        assert!(oor(ram.read(u32::MAX, &mut [0u8; 1])));
        assert!(ram.read_u32(0xffff_fffe).is_err());
        assert!(ram.write_u16(MIB - 1, 0).is_err());
        assert!(ram.fill(0xffff_ffff, 2, 0).is_err());
        assert!(!ram.contains(0xffff_fffe, 4));
        assert!(!ram.contains(0, usize::MAX));
        assert!(ram.contains(MIB - 4, 4));
        assert!(ram.contains(MIB, 0));
        // Zero-length accesses at the very end are fine.
        ram.read(MIB, &mut []).unwrap();
    }

    #[test]
    fn second_mapping_sees_writes() {
        let ram = GuestRam::new(MIB).unwrap();
        let off = 0x5000usize;
        // SAFETY: a fresh shared mapping of the memfd at a kernel-chosen address.
        let view = unsafe {
            mmap(
                ptr::null_mut(),
                MIB as usize,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                ram.fd(),
                0,
            )
        }
        .unwrap()
        .cast::<u8>();
        ram.write_u32(off as u32, 0x1122_3344).unwrap();
        let mut got = [0u8; 4];
        // SAFETY: `view` maps MIB bytes; offset+4 is inside; no Rust references exist.
        unsafe { ptr::copy_nonoverlapping(view.add(off), got.as_mut_ptr(), 4) };
        assert_eq!(u32::from_le_bytes(got), 0x1122_3344);
        // And the other way round: a write through the view shows in the alias.
        // SAFETY: as above.
        unsafe { ptr::copy_nonoverlapping(b"xyz".as_ptr(), view.add(off + 8), 3) };
        let mut back = [0u8; 3];
        ram.read(off as u32 + 8, &mut back).unwrap();
        assert_eq!(&back, b"xyz");
        // SAFETY: unmapping the test's own mapping made above.
        unsafe { munmap(view.cast(), MIB as usize) }.unwrap();
    }

    #[test]
    fn is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<GuestRam>();
    }
}
