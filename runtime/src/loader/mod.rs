//! Kernel loaders: multiboot (v1) ELF kernels and Linux bzImages (the 32-bit boot
//! protocol). The image type is detected from its contents.
//!
//! Images are hostile input: every offset, size and address from them is checked
//! with overflow-safe arithmetic, and nothing is written to guest RAM until the
//! whole image (and initrd) has been validated.
//!
//! Both loaders use the low 64 KiB for their own structures and enter the kernel
//! with the same flat GDT at 0x1000 (0x10 code, 0x18 data), paging and interrupts off.

pub mod linux;
pub mod multiboot;

use crate::memory::{GuestRam, MemoryError};

pub use linux::LinuxBoot;
pub use multiboot::{BootInfo, MULTIBOOT_BOOTLOADER_MAGIC, MULTIBOOT_HEADER_MAGIC};

/// End of the low area reserved for the loader's own structures.
pub const LOADER_AREA_END: u32 = 0x1_0000;
pub(crate) const GDT_ADDR: u32 = 0x1000;
/// The flat GDT: null, then flat 4 GiB ring-0 descriptors. Type 0x9B = present code
/// exec/read accessed, 0x93 = present data read/write accessed (accessed already set so the
/// CPU never writes the table); 0xCF = 4 KiB granularity, 32-bit, limit 19:16 = 0xf.
pub(crate) const GDT: [u64; 4] = [
    0,
    0x00CF_9B00_0000_FFFF, // 0x08: code, for kernels that assume GRUB's layout
    0x00CF_9B00_0000_FFFF, // 0x10: code (code_selector)
    0x00CF_9300_0000_FFFF, // 0x18: data (data_selector)
];
pub(crate) const CODE_SELECTOR: u16 = 0x10;
pub(crate) const DATA_SELECTOR: u16 = 0x18;

/// Memory map types (multiboot and e820 share them).
pub(crate) const MMAP_AVAILABLE: u32 = 1;
pub(crate) const MMAP_RESERVED: u32 = 2;

/// A loaded kernel and how to start it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Multiboot(BootInfo),
    Linux(LinuxBoot),
}

/// Why a kernel image (or its initrd) could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not an ELF file (and no multiboot address fields to load it otherwise)")]
    NotElf,
    #[error("64-bit ELF: bt86 runs 32-bit kernels")]
    Elf64,
    #[error("ELF machine {machine} is not i386 (3)")]
    NotI386 { machine: u16 },
    #[error("ELF type {e_type} is not an executable (ET_EXEC)")]
    NotExecutable { e_type: u16 },
    #[error("not a kernel bt86 can boot: no multiboot header in the first 8 KiB and no Linux boot header (\"HdrS\" at 0x202)")]
    NoMultibootHeader,
    #[error("multiboot header checksum is wrong (magic + flags + checksum must be 0)")]
    BadChecksum,
    #[error("multiboot header requests unsupported features (flags {flags:#x}, unsupported bits {unsupported:#x}; bt86 supports page-aligned modules, memory info, and ignores video mode)")]
    UnsupportedFlags { flags: u32, unsupported: u32 },
    #[error("segment at physical {paddr:#x} of {memsz:#x} bytes lies outside guest RAM ({ram_size:#x} bytes)")]
    SegmentOutsideRam { paddr: u64, memsz: u64, ram_size: u32 },
    #[error(
        "segment at physical {paddr:#x} of {memsz:#x} bytes overlaps the loader area below {:#x}",
        LOADER_AREA_END
    )]
    SegmentInLoaderArea { paddr: u64, memsz: u64 },
    #[error("segment file size {filesz:#x} exceeds its memory size {memsz:#x}")]
    FileSizeExceedsMemSize { filesz: u64, memsz: u64 },
    #[error("image truncated: {what} needs bytes {offset:#x}..+{len:#x}, file has {file_len:#x}")]
    Truncated { what: &'static str, offset: u64, len: u64, file_len: usize },
    #[error("bad multiboot address fields: {0}")]
    BadAddressFields(&'static str),
    #[error("malformed ELF: {0}")]
    Elf(String),
    #[error("ELF has no loadable segments")]
    NoLoadableSegments,
    #[error("Linux boot protocol {major}.{minor:02} is too old: bt86 needs 2.06 or later (a bzImage with the 32-bit entry)")]
    LinuxProtocolTooOld { major: u8, minor: u8 },
    #[error("Linux boot protocol {major}.{minor:02} is newer than bt86 knows (up to 2.15)")]
    LinuxProtocolTooNew { major: u8, minor: u8 },
    #[error("not a bzImage: the kernel does not load high (loadflags bit 0 clear); zImages are not supported")]
    NotBzImage,
    #[error("Linux kernel: {0}")]
    BadLinuxHeader(&'static str),
    #[error("the kernel needs {need_mib} MiB of guest RAM to decompress and run (it has {have_mib} MiB); give more with --mem")]
    KernelNeedsMoreRam { need_mib: u32, have_mib: u32 },
    #[error("the initrd ({size_mib} MiB) does not fit in guest RAM above the kernel ({room_mib} MiB free there); give more with --mem")]
    InitrdTooLarge { size_mib: u32, room_mib: u32 },
    #[error("writing the kernel into guest RAM: {0}")]
    Memory(#[from] MemoryError),
}

/// Loads `image` (a multiboot ELF or a Linux bzImage, told apart by content) with
/// `cmdline` and an optional `initrd` (a multiboot kernel gets it as module 0).
pub fn load(ram: &GuestRam, image: &[u8], cmdline: &str, initrd: Option<&[u8]>) -> Result<Kernel, LoadError> {
    if linux::is_bzimage(image) {
        linux::load(ram, image, cmdline, initrd).map(Kernel::Linux)
    } else {
        multiboot::load_multiboot(ram, image, cmdline, initrd).map(Kernel::Multiboot)
    }
}

pub(crate) fn write_gdt(ram: &GuestRam) -> Result<(), MemoryError> {
    let bytes: Vec<u8> = GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
    ram.write(GDT_ADDR, &bytes)
}

/// The memory map entries (base, length, type) for a RAM of `ram_size` bytes: what
/// a PC BIOS reports (conventional memory up to the EBDA, the BIOS area reserved,
/// everything from 1 MiB up).
pub(crate) fn memory_map(ram_size: u32) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, 0x9_fc00, MMAP_AVAILABLE),
        (0x9_fc00, 0x400, MMAP_RESERVED),    // EBDA
        (0xf_0000, 0x1_0000, MMAP_RESERVED), // BIOS ROM
    ];
    let high = u64::from(ram_size).saturating_sub(0x10_0000);
    if high > 0 {
        map.push((0x10_0000, high, MMAP_AVAILABLE));
    }
    map
}

/// The command line as the guest sees it: cut at an embedded NUL and at `max`
/// bytes (with the terminating NUL), then NUL-terminated.
pub(crate) fn cmdline_bytes(cmdline: &str, max: usize) -> Vec<u8> {
    let raw = cmdline.as_bytes();
    let mut s = raw.split(|&b| b == 0).next().unwrap_or_default().to_vec();
    if s.len() < raw.len() {
        tracing::warn!("kernel command line contains a NUL byte; cut there");
    }
    if s.len() >= max {
        tracing::warn!(len = s.len(), "kernel command line truncated to {} bytes", max - 1);
        s.truncate(max - 1);
    }
    s.push(0);
    s
}
