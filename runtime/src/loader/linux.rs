//! The Linux x86 boot protocol (2.06 to 2.15), 32-bit entry: what a boot loader
//! does for a bzImage when there is no BIOS and no real-mode setup code runs.
//!
//! - A zeroed 4 KiB `boot_params` ("zero page") gets the image's setup header,
//!   `type_of_loader` 0xff, the command line pointer, the initrd, and an e820 map
//!   of guest RAM. Everything else stays zero (no screen: "colour dummy device").
//! - The protected-mode part of the image (after the `setup_sects` sectors of
//!   real-mode setup) goes to 1 MiB; it decompresses the kernel to
//!   `pref_address` (16 MiB for Debian's) and needs `init_size` bytes there.
//! - The initrd goes at the top of RAM (below `initrd_addr_max`), above all that.
//! - Entry: paging and interrupts off, flat segments (CS 0x10, DS/ES/SS 0x18) from
//!   the loaders' GDT, ESI = the zero page, EBX = EBP = EDI = 0.
//!
//! Guest-physical layout below 64 KiB:
//!
//! | range             | contents                                  |
//! |-------------------|-------------------------------------------|
//! | `0x1000..0x1020`  | GDT (shared with the multiboot loader)    |
//! | `0x2000..0x3000`  | boot_params                               |
//! | `0x4000..0x7000`  | stack, `initial_esp = 0x7000`             |
//! | `0x8000..0x10000` | command line                              |

use super::{cmdline_bytes, memory_map, write_gdt, LoadError, CODE_SELECTOR, DATA_SELECTOR, GDT, GDT_ADDR, LOADER_AREA_END};
use crate::memory::GuestRam;

const BOOT_PARAMS: u32 = 0x2000;
const INITIAL_ESP: u32 = 0x7000;
const CMDLINE_ADDR: u32 = 0x8000;
const CMDLINE_AREA: usize = (LOADER_AREA_END - CMDLINE_ADDR) as usize;
/// Where the protected-mode code is loaded (the protocol's `code32_start`).
const KERNEL_ADDR: u32 = 0x10_0000;

/// Oldest and newest protocol versions supported.
const MIN_VERSION: u16 = 0x0206;
const MAX_VERSION: u16 = 0x020f;

/// Offsets of the setup header fields (in the image and in boot_params alike).
mod hdr {
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const BOOT_FLAG: usize = 0x1fe;
    pub const HEADER_LEN: usize = 0x201;
    pub const MAGIC: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const CODE32_START: usize = 0x214;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    /// The setup header runs from 0x1f1 to 0x202 + the byte at 0x201; never past this.
    pub const END_MAX: usize = 0x290;
}

/// boot_params fields outside the setup header.
const E820_ENTRIES: usize = 0x1e8;
const E820_TABLE: usize = 0x2d0;
const E820_MAX: usize = 128;
const LOADED_HIGH: u8 = 1 << 0;

/// A loaded bzImage and how to start it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxBoot {
    pub entry: u32,
    /// Guest-physical address of boot_params (ESI at entry).
    pub boot_params: u32,
    pub gdt_base: u32,
    pub gdt_limit: u16,
    pub code_selector: u16,
    pub data_selector: u16,
    pub initial_esp: u32,
    /// The boot protocol version (0x020f = 2.15).
    pub protocol: u16,
    /// Where the initrd was put: [start, end).
    pub initrd: Option<(u32, u32)>,
}

/// Whether `image` carries a Linux boot header (boot flag and "HdrS").
pub fn is_bzimage(image: &[u8]) -> bool {
    u16_at(image, hdr::BOOT_FLAG) == Some(0xaa55) && image.get(hdr::MAGIC..hdr::MAGIC + 4) == Some(b"HdrS")
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn mib_up(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1 << 20)).unwrap_or(u32::MAX)
}

/// What the header says, validated.
struct Plan {
    version: u16,
    /// The protected-mode code (file range).
    kernel: std::ops::Range<usize>,
    /// The setup header (file range 0x1f1..end).
    header: std::ops::Range<usize>,
    cmdline_max: usize,
    initrd_at: Option<u32>,
}

fn plan(image: &[u8], ram_size: u32, initrd_len: Option<usize>) -> Result<Plan, LoadError> {
    let truncated = |what, offset: usize, len: usize| LoadError::Truncated {
        what,
        offset: offset as u64,
        len: len as u64,
        file_len: image.len(),
    };
    let version = u16_at(image, hdr::VERSION).ok_or_else(|| truncated("the setup header", hdr::VERSION, 2))?;
    let [minor, major] = version.to_le_bytes();
    if version < MIN_VERSION {
        return Err(LoadError::LinuxProtocolTooOld { major, minor });
    }
    if version > MAX_VERSION {
        return Err(LoadError::LinuxProtocolTooNew { major, minor });
    }
    // 2.06 headers end after cmdline_size; pref_address and init_size come with 2.10.
    let header_end = (hdr::MAGIC + usize::from(image[hdr::HEADER_LEN])).clamp(hdr::CMDLINE_SIZE + 4, hdr::END_MAX);
    if image.len() < header_end {
        return Err(truncated("the setup header", hdr::SETUP_SECTS, header_end - hdr::SETUP_SECTS));
    }
    let field = |at| u32_at(image, at).unwrap_or(0);
    if image[hdr::LOADFLAGS] & LOADED_HIGH == 0 {
        return Err(LoadError::NotBzImage);
    }
    let setup_sects = match image[hdr::SETUP_SECTS] {
        0 => 4,
        n => usize::from(n),
    };
    let kernel_off = (setup_sects + 1) * 512;
    if image.len() <= kernel_off {
        return Err(truncated("the protected-mode kernel", kernel_off, 1));
    }
    let kernel_len = image.len() - kernel_off;
    let kernel_end = u64::from(KERNEL_ADDR) + kernel_len as u64;
    // The decompressed kernel lives at pref_address and needs init_size bytes there.
    let (pref, init_size) = if version >= 0x020a && header_end >= hdr::INIT_SIZE + 4 {
        (u64_at(image, hdr::PREF_ADDRESS).unwrap_or(0), u64::from(field(hdr::INIT_SIZE)))
    } else {
        (0, 0)
    };
    let run_end = kernel_end.max(pref.saturating_add(init_size));
    if run_end > u64::from(ram_size) {
        return Err(LoadError::KernelNeedsMoreRam { need_mib: mib_up(run_end), have_mib: ram_size >> 20 });
    }
    let initrd_at = initrd_len
        .map(|len| {
            let top = u64::from(ram_size).min(u64::from(field(hdr::INITRD_ADDR_MAX)) + 1);
            let at = top.checked_sub(len as u64).map(|a| a & !0xfff);
            match at {
                Some(at) if at >= run_end => Ok(at as u32),
                _ => Err(LoadError::InitrdTooLarge { size_mib: mib_up(len as u64), room_mib: (top.saturating_sub(run_end) >> 20) as u32 }),
            }
        })
        .transpose()?;
    let cmdline_max = (field(hdr::CMDLINE_SIZE) as usize).saturating_add(1).min(CMDLINE_AREA);
    Ok(Plan { version, kernel: kernel_off..image.len(), header: hdr::SETUP_SECTS..header_end, cmdline_max, initrd_at })
}

/// Loads the bzImage `image` with `cmdline` and `initrd` into `ram`.
pub fn load(ram: &GuestRam, image: &[u8], cmdline: &str, initrd: Option<&[u8]>) -> Result<LinuxBoot, LoadError> {
    if !is_bzimage(image) {
        return Err(LoadError::BadLinuxHeader("no \"HdrS\" boot header"));
    }
    let p = plan(image, ram.size(), initrd.map(<[u8]>::len))?;
    // Validation is complete: from here on only guest RAM writes can fail.
    ram.fill(0, LOADER_AREA_END as usize, 0)?;
    write_gdt(ram)?;
    ram.write(KERNEL_ADDR, &image[p.kernel.clone()])?;
    let initrd_range = match (initrd, p.initrd_at) {
        (Some(data), Some(at)) => {
            ram.write(at, data)?;
            Some((at, at + data.len() as u32))
        }
        _ => None,
    };
    let cmdline = cmdline_bytes(cmdline, p.cmdline_max);
    ram.write(CMDLINE_ADDR, &cmdline)?;
    ram.write(BOOT_PARAMS, &boot_params(image, &p, ram.size(), initrd_range))?;
    let boot = LinuxBoot {
        entry: KERNEL_ADDR,
        boot_params: BOOT_PARAMS,
        gdt_base: GDT_ADDR,
        gdt_limit: (GDT.len() * 8 - 1) as u16,
        code_selector: CODE_SELECTOR,
        data_selector: DATA_SELECTOR,
        initial_esp: INITIAL_ESP,
        protocol: p.version,
        initrd: initrd_range,
    };
    tracing::debug!(?boot, "Linux kernel loaded");
    Ok(boot)
}

/// The zero page: the setup header from the image, the loader's fields, e820.
fn boot_params(image: &[u8], p: &Plan, ram_size: u32, initrd: Option<(u32, u32)>) -> Vec<u8> {
    let mut bp = vec![0u8; 4096];
    bp[p.header.clone()].copy_from_slice(&image[p.header.clone()]);
    let mut put = |at: usize, v: u32| bp[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put(hdr::CODE32_START, KERNEL_ADDR);
    put(hdr::CMD_LINE_PTR, CMDLINE_ADDR);
    if let Some((start, end)) = initrd {
        put(hdr::RAMDISK_IMAGE, start);
        put(hdr::RAMDISK_SIZE, end - start);
    }
    // 0xff: a loader without an assigned id. With 0 the kernel ignores the initrd.
    bp[hdr::TYPE_OF_LOADER] = 0xff;
    let map = memory_map(ram_size);
    bp[E820_ENTRIES] = map.len().min(E820_MAX) as u8;
    for (i, (base, len, ty)) in map.into_iter().take(E820_MAX).enumerate() {
        let at = E820_TABLE + 20 * i;
        bp[at..at + 8].copy_from_slice(&base.to_le_bytes());
        bp[at + 8..at + 16].copy_from_slice(&len.to_le_bytes());
        bp[at + 16..at + 20].copy_from_slice(&ty.to_le_bytes());
    }
    bp
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u32 = 1 << 20;

    /// A minimal bzImage: boot flag, "HdrS", the given protocol, 4 setup sectors,
    /// `kernel` bytes of protected-mode code, init_size 16 MiB at 16 MiB.
    fn image(version: u16, kernel: usize) -> Vec<u8> {
        let mut img = vec![0u8; 5 * 512 + kernel];
        img[hdr::SETUP_SECTS] = 4;
        img[hdr::BOOT_FLAG..hdr::BOOT_FLAG + 2].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[hdr::HEADER_LEN] = 0x6a;
        img[hdr::MAGIC..hdr::MAGIC + 4].copy_from_slice(b"HdrS");
        img[hdr::VERSION..hdr::VERSION + 2].copy_from_slice(&version.to_le_bytes());
        img[hdr::LOADFLAGS] = LOADED_HIGH;
        img[hdr::INITRD_ADDR_MAX..hdr::INITRD_ADDR_MAX + 4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        img[hdr::CMDLINE_SIZE..hdr::CMDLINE_SIZE + 4].copy_from_slice(&2047u32.to_le_bytes());
        img[hdr::PREF_ADDRESS..hdr::PREF_ADDRESS + 8].copy_from_slice(&u64::from(16 * MIB).to_le_bytes());
        img[hdr::INIT_SIZE..hdr::INIT_SIZE + 4].copy_from_slice(&(16 * MIB).to_le_bytes());
        for (i, b) in img[5 * 512..].iter_mut().enumerate() {
            *b = i as u8;
        }
        img
    }

    #[test]
    fn loads_kernel_zero_page_cmdline_and_initrd() {
        let ram = GuestRam::new(64 * MIB).unwrap();
        let img = image(0x020f, 3000);
        let initrd = vec![0x5a; 10_000];
        let boot = load(&ram, &img, "console=ttyS0", Some(&initrd)).unwrap();
        assert_eq!((boot.entry, boot.boot_params, boot.protocol), (KERNEL_ADDR, BOOT_PARAMS, 0x020f));
        let mut k = vec![0u8; 3000];
        ram.read(KERNEL_ADDR, &mut k).unwrap();
        assert_eq!(k, img[5 * 512..]);
        let bp = |at: u32| ram.read_u32(BOOT_PARAMS + at).unwrap();
        assert_eq!(bp(hdr::RAMDISK_SIZE as u32), 10_000);
        let at = bp(hdr::RAMDISK_IMAGE as u32);
        assert_eq!((at, at % 4096), ((64 * MIB - 10_000) & !0xfff, 0));
        assert_eq!(ram.read_u8(at + 9_999).unwrap(), 0x5a);
        assert_eq!(ram.read_u8(BOOT_PARAMS + hdr::TYPE_OF_LOADER as u32).unwrap(), 0xff);
        assert_eq!(bp(hdr::CMD_LINE_PTR as u32), CMDLINE_ADDR);
        let mut cl = [0u8; 14];
        ram.read(CMDLINE_ADDR, &mut cl).unwrap();
        assert_eq!(&cl, b"console=ttyS0\0");
        assert_eq!(ram.read_u8(BOOT_PARAMS + E820_ENTRIES as u32).unwrap(), 4);
        // The last e820 entry: RAM from 1 MiB to the end, usable.
        let last = BOOT_PARAMS + E820_TABLE as u32 + 3 * 20;
        assert_eq!((bp(last - BOOT_PARAMS), bp(last - BOOT_PARAMS + 8), bp(last - BOOT_PARAMS + 16)), (MIB, 63 * MIB, 1));
        assert_eq!(&img[hdr::MAGIC..hdr::MAGIC + 4], {
            let mut m = [0u8; 4];
            ram.read(BOOT_PARAMS + hdr::MAGIC as u32, &mut m).unwrap();
            &m.clone()
        });
    }

    #[test]
    fn refuses_old_new_and_non_bzimage_kernels() {
        let ram = GuestRam::new(64 * MIB).unwrap();
        assert!(matches!(load(&ram, &image(0x0205, 100), "", None), Err(LoadError::LinuxProtocolTooOld { major: 2, minor: 5 })));
        assert!(matches!(load(&ram, &image(0x0210, 100), "", None), Err(LoadError::LinuxProtocolTooNew { major: 2, minor: 16 })));
        let mut zimage = image(0x020f, 100);
        zimage[hdr::LOADFLAGS] = 0;
        assert!(matches!(load(&ram, &zimage, "", None), Err(LoadError::NotBzImage)));
        assert!(matches!(load(&ram, &image(0x020f, 0), "", None), Err(LoadError::Truncated { .. })));
    }

    #[test]
    fn refuses_too_little_ram_and_too_large_initrds() {
        let small = GuestRam::new(16 * MIB).unwrap();
        assert!(matches!(load(&small, &image(0x020f, 100), "", None), Err(LoadError::KernelNeedsMoreRam { need_mib: 32, .. })));
        let ram = GuestRam::new(40 * MIB).unwrap();
        let initrd = vec![0u8; 9 * MIB as usize];
        assert!(matches!(load(&ram, &image(0x020f, 100), "", Some(&initrd)), Err(LoadError::InitrdTooLarge { size_mib: 9, room_mib: 8 })));
        assert!(load(&ram, &image(0x020f, 100), "", Some(&initrd[..7 * MIB as usize])).is_ok());
    }

    #[test]
    fn truncated_and_mutated_headers_never_panic() {
        let ram = GuestRam::new(64 * MIB).unwrap();
        let good = image(0x020f, 600);
        for len in 0..good.len() {
            let _ = load(&ram, &good[..len], "", None);
        }
        for at in 0x1f0..0x270 {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut img = good.clone();
                img[at] = v;
                let _ = load(&ram, &img, "x", Some(&[1, 2, 3]));
            }
        }
    }
}
