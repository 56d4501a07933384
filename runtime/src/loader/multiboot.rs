//! Multiboot (version 1) loader for 32-bit ELF kernels, with the a.out kludge as fallback.
//!
//! The image is hostile input: every offset, size and address from it is checked with
//! overflow-safe arithmetic, and nothing is written to guest RAM until the whole image
//! has been validated.
//!
//! Guest-physical layout of what the loader writes itself (all below [`LOADER_AREA_END`];
//! kernel segments may not overlap this first 64 KiB):
//!
//! | range             | contents                                                   |
//! |-------------------|------------------------------------------------------------|
//! | `0x0000..0x1000`  | zeroed (real-mode IVT / BDA area; nothing of ours)          |
//! | `0x1000..0x1020`  | GDT: null, 0x08 code, 0x10 code, 0x18 data (flat, ring 0)   |
//! | `0x2000..0x2078`  | multiboot information structure (`mbi_addr`)               |
//! | `0x2100..0x2105`  | boot loader name, `"bt86\0"`                               |
//! | `0x2200..0x22a0`  | memory map (up to 6 entries of 24 bytes)                   |
//! | `0x2300..0x2310`  | module list (the initrd, if any: one entry)                |
//! | `0x2310..0x2317`  | module string, `"initrd\0"`                                |
//! | `0x3000..0x4000`  | command line, NUL-terminated, at most 4 KiB with the NUL    |
//! | `0x4000..0x7000`  | initial stack, `initial_esp = 0x7000`, growing down        |
//! | `0x7000..0x10000` | zeroed, free                                               |

use super::{cmdline_bytes, memory_map, write_gdt, MMAP_RESERVED, LoadError, CODE_SELECTOR, DATA_SELECTOR, GDT, GDT_ADDR, LOADER_AREA_END};
use crate::memory::{GuestRam, MemoryError};

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::header::{EI_CLASS, ELFCLASS32, ELFCLASS64, ELFMAG, EM_386, ET_EXEC, SELFMAG};
use goblin::elf::program_header::PT_LOAD;
use goblin::elf::{Elf, Header, ProgramHeader};

/// Multiboot header magic, found in the image.
pub const MULTIBOOT_HEADER_MAGIC: u32 = 0x1BAD_B002;
/// Value the boot loader leaves in EAX for the kernel.
pub const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The header must start in the first 8 KiB of the image.
const HEADER_SEARCH_LEN: usize = 8192;

/// Header flag: align modules on pages (trivially met: bt86 loads no modules).
const HF_PAGE_ALIGN: u32 = 1 << 0;
/// Header flag: the kernel wants mem_* and the memory map (always given).
const HF_MEMORY_INFO: u32 = 1 << 1;
/// Header flag: video mode request; ignored (bt86 has a serial console only).
const HF_VIDEO_MODE: u32 = 1 << 2;
/// Header flag: the address fields (a.out kludge) are valid.
const HF_ADDRESS_FIELDS: u32 = 1 << 16;
/// Bits 0..15 are "required": a loader that does not understand one must refuse.
const HF_REQUIRED_MASK: u32 = 0xffff;
const HF_UNDERSTOOD: u32 = HF_PAGE_ALIGN | HF_MEMORY_INFO | HF_VIDEO_MODE;

const MBI_ADDR: u32 = 0x2000;
const MBI_SIZE: usize = 0x78;
const LOADER_NAME_ADDR: u32 = 0x2100;
const LOADER_NAME: &[u8] = b"bt86\0";
const MMAP_ADDR: u32 = 0x2200;
const CMDLINE_ADDR: u32 = 0x3000;
/// Command line area size, including the terminating NUL.
const CMDLINE_MAX: usize = 4096;
const INITIAL_ESP: u32 = 0x7000;

/// Multiboot info flags bt86 provides.
const MBI_MEM: u32 = 1 << 0;
const MBI_CMDLINE: u32 = 1 << 2;
const MBI_MMAP: u32 = 1 << 6;
const MBI_LOADER_NAME: u32 = 1 << 9;
const MBI_MODS: u32 = 1 << 3;
const MODS_ADDR: u32 = 0x2300;
const MOD_STRING_ADDR: u32 = 0x2310;
const MOD_STRING: &[u8] = b"initrd\0";

/// Bytes of one memory map entry after its `size` field.
const MMAP_ENTRY_SIZE: u32 = 20;

/// What the vCPU needs to start the kernel: EIP, EBX (= `mbi_addr`, with EAX =
/// [`MULTIBOOT_BOOTLOADER_MAGIC`]), the GDT and flat selectors, and an initial ESP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInfo {
    pub entry: u32,
    pub mbi_addr: u32,
    pub gdt_base: u32,
    pub gdt_limit: u16,
    pub code_selector: u16,
    pub data_selector: u16,
    pub initial_esp: u32,
    /// First guest-physical byte after the loaded kernel (including bss).
    pub kernel_end: u32,
}

/// The parts of the multiboot header bt86 uses.
#[derive(Debug, Clone, Copy)]
struct MultibootHeader {
    /// File offset of the magic.
    offset: usize,
    /// header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr (if flag 16).
    addrs: Option<[u32; 5]>,
}

/// One validated piece to put in RAM: `file` bytes copied to `paddr`, zeros up to `memsz`.
#[derive(Debug, Clone)]
struct Segment {
    paddr: u32,
    file: std::ops::Range<usize>,
    memsz: u32,
}

/// A fully validated image, ready to be written.
#[derive(Debug)]
struct Plan {
    segments: Vec<Segment>,
    entry: u32,
}

/// Loads a multiboot kernel `image` into `ram`, writes the GDT and multiboot information
/// (with `cmdline`) below 64 KiB, puts `module` (an initrd) page-aligned after the
/// kernel as module 0, and returns where and how to start it.
pub fn load_multiboot(ram: &GuestRam, image: &[u8], cmdline: &str, module: Option<&[u8]>) -> Result<BootInfo, LoadError> {
    let header = find_header(image).map_err(|e| prefer_elf_error(image, e))?;
    let plan = plan_image(image, &header, ram.size())?;
    let kernel_end = plan
        .segments
        .iter()
        .map(|s| s.paddr + s.memsz)
        .max()
        .unwrap_or(0);
    let module_at = module.map(|m| place_module(usable_top(ram.size()), kernel_end, m.len())).transpose()?;
    // Validation is complete: from here on only guest RAM writes can fail.
    write_segments(ram, image, &plan.segments)?;
    ram.fill(0, LOADER_AREA_END as usize, 0)?;
    write_gdt(ram)?;
    let mods = match (module, module_at) {
        (Some(m), Some(at)) => {
            ram.write(at, m)?;
            Some((at, at + m.len() as u32))
        }
        _ => None,
    };
    write_mbi(ram, cmdline, mods)?;
    let info = BootInfo {
        entry: plan.entry,
        mbi_addr: MBI_ADDR,
        gdt_base: GDT_ADDR,
        gdt_limit: (GDT.len() * 8 - 1) as u16,
        code_selector: CODE_SELECTOR,
        data_selector: DATA_SELECTOR,
        initial_esp: INITIAL_ESP,
        kernel_end,
    };
    tracing::debug!(
        ?info,
        segments = plan.segments.len(),
        "multiboot kernel loaded"
    );
    Ok(info)
}

/// A 64-bit or non-x86 ELF has no usable multiboot header either way; saying what kind of
/// file it is helps more than "no header".
fn prefer_elf_error(image: &[u8], header_err: LoadError) -> LoadError {
    match identify_elf(image) {
        Err(e @ (LoadError::Elf64 | LoadError::NotI386 { .. })) => e,
        _ => header_err,
    }
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Finds the first 4-byte aligned multiboot header with a valid checksum.
fn find_header(image: &[u8]) -> Result<MultibootHeader, LoadError> {
    let window = &image[..image.len().min(HEADER_SEARCH_LEN)];
    let mut saw_magic = false;
    for offset in (0..window.len()).step_by(4) {
        if le_u32(window, offset) != Some(MULTIBOOT_HEADER_MAGIC) {
            continue;
        }
        saw_magic = true;
        let (Some(flags), Some(sum)) = (le_u32(window, offset + 4), le_u32(window, offset + 8))
        else {
            continue;
        };
        if MULTIBOOT_HEADER_MAGIC.wrapping_add(flags).wrapping_add(sum) == 0 {
            return parse_header(window, offset, flags);
        }
    }
    Err(if saw_magic {
        LoadError::BadChecksum
    } else {
        LoadError::NoMultibootHeader
    })
}

fn parse_header(window: &[u8], offset: usize, flags: u32) -> Result<MultibootHeader, LoadError> {
    let unsupported = flags & HF_REQUIRED_MASK & !HF_UNDERSTOOD;
    if unsupported != 0 {
        return Err(LoadError::UnsupportedFlags { flags, unsupported });
    }
    if flags & HF_VIDEO_MODE != 0 {
        tracing::debug!("multiboot video mode request ignored");
    }
    let addrs = if flags & HF_ADDRESS_FIELDS != 0 {
        let mut a = [0u32; 5];
        for (i, slot) in a.iter_mut().enumerate() {
            let at = offset + 12 + 4 * i;
            *slot = le_u32(window, at).ok_or(LoadError::Truncated {
                what: "multiboot address fields",
                offset: at as u64,
                len: 4,
                file_len: window.len(),
            })?;
        }
        Some(a)
    } else {
        None
    };
    Ok(MultibootHeader { offset, addrs })
}

/// ELF first; if the image is not a usable ELF, the a.out kludge when the header allows.
fn plan_image(image: &[u8], header: &MultibootHeader, ram_size: u32) -> Result<Plan, LoadError> {
    let elf_err = match identify_elf(image) {
        Ok(h) => return plan_elf(image, &h, ram_size),
        Err(e) => e,
    };
    match header.addrs {
        Some(addrs) => {
            tracing::debug!(reason = %elf_err, "loading with multiboot address fields");
            plan_kludge(image, header.offset, addrs, ram_size)
        }
        None => Err(elf_err),
    }
}

/// Checks that the image is an ELF32 little-endian i386 executable.
fn identify_elf(image: &[u8]) -> Result<Header, LoadError> {
    if image.len() < SELFMAG || &image[..SELFMAG] != ELFMAG {
        return Err(LoadError::NotElf);
    }
    match image.get(EI_CLASS).copied() {
        Some(ELFCLASS32) => {}
        Some(ELFCLASS64) => return Err(LoadError::Elf64),
        _ => return Err(LoadError::Elf("unknown ELF class".into())),
    }
    let h = Elf::parse_header(image).map_err(|e| LoadError::Elf(e.to_string()))?;
    if h.endianness().ok() != Some(Endian::Little) {
        return Err(LoadError::Elf("big-endian ELF".into()));
    }
    if h.e_machine != EM_386 {
        return Err(LoadError::NotI386 {
            machine: h.e_machine,
        });
    }
    if h.e_type != ET_EXEC {
        return Err(LoadError::NotExecutable { e_type: h.e_type });
    }
    Ok(h)
}

fn plan_elf(image: &[u8], h: &Header, ram_size: u32) -> Result<Plan, LoadError> {
    let phoff = usize::try_from(h.e_phoff).map_err(|_| LoadError::Elf("e_phoff".into()))?;
    let ctx = Ctx::new(Container::Little, Endian::Little); // Container::Little = 32-bit
    let phdrs = ProgramHeader::parse(image, phoff, usize::from(h.e_phnum), ctx)
        .map_err(|e| LoadError::Elf(format!("program headers: {e}")))?;
    let mut segments = Vec::new();
    for ph in phdrs
        .iter()
        .filter(|p| p.p_type == PT_LOAD && p.p_memsz != 0)
    {
        segments.push(check_segment(
            image,
            ph.p_paddr,
            ph.p_offset,
            ph.p_filesz,
            ph.p_memsz,
            ram_size,
        )?);
    }
    if segments.is_empty() {
        return Err(LoadError::NoLoadableSegments);
    }
    let entry = elf_entry(h.e_entry, &phdrs);
    Ok(Plan { segments, entry })
}

/// The kernel starts with paging off, so like GRUB, an entry given as a virtual address
/// inside a segment is translated to that segment's physical address.
fn elf_entry(e_entry: u64, phdrs: &[ProgramHeader]) -> u32 {
    let seg = phdrs
        .iter()
        .filter(|p| p.p_type == PT_LOAD)
        .find(|p| e_entry >= p.p_vaddr && e_entry - p.p_vaddr < p.p_memsz);
    let phys = match seg {
        Some(p) => (e_entry - p.p_vaddr).wrapping_add(p.p_paddr),
        None => {
            tracing::warn!(e_entry, "ELF entry point is outside every loadable segment");
            e_entry
        }
    };
    // ELF32 fields are 32 bits wide; the truncation only drops wrap-around from the sum.
    phys as u32
}

/// Validates one segment against the file and against guest RAM.
fn check_segment(
    image: &[u8],
    paddr: u64,
    offset: u64,
    filesz: u64,
    memsz: u64,
    ram_size: u32,
) -> Result<Segment, LoadError> {
    if filesz > memsz {
        return Err(LoadError::FileSizeExceedsMemSize { filesz, memsz });
    }
    let in_ram = paddr
        .checked_add(memsz)
        .is_some_and(|end| end <= u64::from(ram_size));
    if !in_ram {
        return Err(LoadError::SegmentOutsideRam {
            paddr,
            memsz,
            ram_size,
        });
    }
    if paddr < u64::from(LOADER_AREA_END) {
        return Err(LoadError::SegmentInLoaderArea { paddr, memsz });
    }
    let file_end = offset
        .checked_add(filesz)
        .filter(|&end| end <= image.len() as u64);
    let Some(file_end) = file_end else {
        return Err(LoadError::Truncated {
            what: "segment data",
            offset,
            len: filesz,
            file_len: image.len(),
        });
    };
    // All values are now bounded by RAM size (< 4 GiB) or by the image length.
    Ok(Segment {
        paddr: paddr as u32,
        file: offset as usize..file_end as usize,
        memsz: memsz as u32,
    })
}

/// The a.out kludge: the header's address fields say where the file goes in memory.
fn plan_kludge(
    image: &[u8],
    header_offset: usize,
    addrs: [u32; 5],
    ram_size: u32,
) -> Result<Plan, LoadError> {
    let [header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr] = addrs;
    if load_addr > header_addr {
        return Err(LoadError::BadAddressFields(
            "load_addr is above header_addr",
        ));
    }
    // The file offset that corresponds to load_addr.
    let start = (header_offset as u64)
        .checked_sub(u64::from(header_addr - load_addr))
        .ok_or(LoadError::BadAddressFields(
            "load_addr is before the start of the file",
        ))?;
    let file_len = image.len() as u64;
    let load_size = match load_end_addr {
        0 => file_len - start, // start <= header_offset < file_len
        end if end < load_addr => {
            return Err(LoadError::BadAddressFields(
                "load_end_addr is below load_addr",
            ))
        }
        end => u64::from(end - load_addr),
    };
    let mem_size = match bss_end_addr {
        0 => load_size,
        bss => {
            let load_end = u64::from(load_addr) + load_size;
            if u64::from(bss) < load_end {
                return Err(LoadError::BadAddressFields(
                    "bss_end_addr is below the end of the loaded data",
                ));
            }
            u64::from(bss) - u64::from(load_addr)
        }
    };
    let seg = check_segment(
        image,
        u64::from(load_addr),
        start,
        load_size,
        mem_size,
        ram_size,
    )?;
    Ok(Plan {
        segments: vec![seg],
        entry: entry_addr,
    })
}

fn write_segments(ram: &GuestRam, image: &[u8], segments: &[Segment]) -> Result<(), LoadError> {
    for s in segments {
        let data = &image[s.file.clone()];
        ram.write(s.paddr, data)?;
        // data.len() <= memsz (checked), and paddr + memsz lies in RAM.
        let bss_at = s.paddr + data.len() as u32;
        ram.fill(bss_at, (s.memsz as usize) - data.len(), 0)?;
    }
    Ok(())
}

/// Where module 0 goes: the first page after the kernel, if it fits in RAM.
fn place_module(ram_size: u32, kernel_end: u32, len: usize) -> Result<u32, LoadError> {
    let at = kernel_end.next_multiple_of(0x1000).max(LOADER_AREA_END);
    let fits = u32::try_from(len).ok().and_then(|l| at.checked_add(l)).is_some_and(|end| end <= ram_size);
    if !fits {
        let mib = |b: u64| u32::try_from(b.div_ceil(1 << 20)).unwrap_or(u32::MAX);
        return Err(LoadError::InitrdTooLarge {
            size_mib: mib(len as u64),
            room_mib: mib(u64::from(ram_size.saturating_sub(at))),
        });
    }
    Ok(at)
}

/// RAM at the top that QEMU's PC firmware keeps for itself (its e820 map reserves
/// it); bt86 reports the same map to multiboot kernels, so they see what they see
/// under QEMU.
const FIRMWARE_TOP_RESERVED: u32 = 0x2_0000;
/// The BIOS flash below 4 GiB, reserved in QEMU's map too.
const FLASH: (u64, u64) = (0xfffc_0000, 0x4_0000);

/// End of the RAM a multiboot kernel is told it may use.
fn usable_top(ram_size: u32) -> u32 {
    if ram_size > 0x10_0000 + FIRMWARE_TOP_RESERVED {
        ram_size - FIRMWARE_TOP_RESERVED
    } else {
        ram_size
    }
}

/// The memory map a multiboot kernel gets: QEMU's (see [`FIRMWARE_TOP_RESERVED`]).
fn multiboot_memory_map(ram_size: u32) -> Vec<(u64, u64, u32)> {
    let top = usable_top(ram_size);
    let mut map = memory_map(top);
    if top < ram_size {
        map.push((u64::from(top), u64::from(ram_size - top), MMAP_RESERVED));
    }
    map.push((FLASH.0, FLASH.1, MMAP_RESERVED));
    map
}

/// Writes the multiboot information structure and the data it points to; `module`
/// is the [start, end) of module 0.
fn write_mbi(ram: &GuestRam, cmdline: &str, module: Option<(u32, u32)>) -> Result<(), MemoryError> {
    let mut mbi = [0u8; MBI_SIZE];
    let mut put = |off: usize, v: u32| mbi[off..off + 4].copy_from_slice(&v.to_le_bytes());
    put(0, MBI_MEM | MBI_CMDLINE | MBI_MMAP | MBI_LOADER_NAME | if module.is_some() { MBI_MODS } else { 0 });
    // mem_lower, KiB: conventional memory below the EBDA (639, as QEMU reports).
    put(4, 0x9_fc00 / 1024);
    // mem_upper, KiB from 1 MiB to the first hole: QEMU's, which ends below the top
    // 128 KiB its firmware keeps.
    put(8, usable_top(ram.size()).saturating_sub(0x10_0000) / 1024);
    put(16, CMDLINE_ADDR);
    let map = multiboot_memory_map(ram.size());
    put(44, map.len() as u32 * (MMAP_ENTRY_SIZE + 4)); // mmap_length
    put(48, MMAP_ADDR);
    put(64, LOADER_NAME_ADDR);

    let mut entries = Vec::with_capacity(map.len() * 24);
    for (base, len, ty) in map {
        entries.extend_from_slice(&MMAP_ENTRY_SIZE.to_le_bytes());
        entries.extend_from_slice(&base.to_le_bytes());
        entries.extend_from_slice(&len.to_le_bytes());
        entries.extend_from_slice(&ty.to_le_bytes());
    }
    ram.write(MMAP_ADDR, &entries)?;
    ram.write(LOADER_NAME_ADDR, LOADER_NAME)?;
    if let Some((start, end)) = module {
        put(20, 1); // mods_count
        put(24, MODS_ADDR);
        let entry: Vec<u8> = [start, end, MOD_STRING_ADDR, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        ram.write(MODS_ADDR, &entry)?;
        ram.write(MOD_STRING_ADDR, MOD_STRING)?;
    }
    ram.write(MBI_ADDR, &mbi)?;
    ram.write(CMDLINE_ADDR, &cmdline_bytes(cmdline, CMDLINE_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u32 = 1 << 20;

    /// A program header for the test builder.
    #[derive(Clone, Copy)]
    struct Ph {
        p_type: u32,
        offset: u32,
        vaddr: u32,
        paddr: u32,
        filesz: u32,
        memsz: u32,
    }

    /// Builds an ELF32 i386 executable: header, program headers at 52, then `body` at
    /// file offset 0x100 (where the multiboot header normally lives).
    fn elf(entry: u32, phs: &[Ph], body: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 0x100];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 1; // ELFCLASS32
        f[5] = 1; // little endian
        f[6] = 1; // EV_CURRENT
        let put16 =
            |f: &mut Vec<u8>, at: usize, v: u16| f[at..at + 2].copy_from_slice(&v.to_le_bytes());
        put16(&mut f, 16, 2); // ET_EXEC
        put16(&mut f, 18, 3); // EM_386
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..28].copy_from_slice(&entry.to_le_bytes());
        f[28..32].copy_from_slice(&52u32.to_le_bytes()); // e_phoff
        put16(&mut f, 40, 52); // e_ehsize
        put16(&mut f, 42, 32); // e_phentsize
        put16(&mut f, 44, phs.len() as u16);
        for (i, ph) in phs.iter().enumerate() {
            let at = 52 + 32 * i;
            let words = [
                ph.p_type, ph.offset, ph.vaddr, ph.paddr, ph.filesz, ph.memsz, 7, 0x1000,
            ];
            for (j, w) in words.iter().enumerate() {
                f[at + 4 * j..at + 4 * j + 4].copy_from_slice(&w.to_le_bytes());
            }
        }
        f.extend_from_slice(body);
        f
    }

    fn mb_header(flags: u32) -> Vec<u8> {
        let sum = 0u32
            .wrapping_sub(MULTIBOOT_HEADER_MAGIC)
            .wrapping_sub(flags);
        [MULTIBOOT_HEADER_MAGIC, flags, sum]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }

    /// A good kernel: one segment at 1 MiB holding the multiboot header, code, and bss.
    fn good_kernel() -> Vec<u8> {
        let mut body = mb_header(HF_PAGE_ALIGN | HF_MEMORY_INFO);
        body.extend_from_slice(&[0x90, 0x90, 0xf4, 0xeb, 0xfe]); // nop nop hlt jmp $
        let len = body.len() as u32;
        let ph = Ph {
            p_type: 1,
            offset: 0x100,
            vaddr: 0x10_0000,
            paddr: 0x10_0000,
            filesz: len,
            memsz: 0x2000,
        };
        elf(0x10_000c, &[ph], &body)
    }

    fn ram() -> GuestRam {
        GuestRam::new(4 * MIB).unwrap()
    }

    fn read_cstr(ram: &GuestRam, addr: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for a in addr.. {
            match ram.read_u8(a).unwrap() {
                0 => break,
                b => out.push(b),
            }
        }
        out
    }

    #[test]
    fn loads_good_image() {
        let ram = ram();
        ram.fill(0x10_0000, 0x3000, 0xcc).unwrap(); // stale bytes must become bss zeros
        let info = load_multiboot(&ram, &good_kernel(), "console=ttyS0 quiet", None).unwrap();
        assert_eq!(info.entry, 0x10_000c);
        assert_eq!(info.mbi_addr, MBI_ADDR);
        assert_eq!((info.code_selector, info.data_selector), (0x10, 0x18));
        assert_eq!(info.gdt_limit, 31);
        assert_eq!(info.initial_esp, 0x7000);
        assert_eq!(info.kernel_end, 0x10_2000);
        assert_eq!(ram.read_u32(0x10_0000).unwrap(), MULTIBOOT_HEADER_MAGIC);
        assert_eq!(ram.read_u8(0x10_000e).unwrap(), 0xf4);
        assert_eq!(ram.read_u8(0x10_0011).unwrap(), 0, "bss zeroed");
        assert_eq!(ram.read_u8(0x10_1fff).unwrap(), 0, "bss zeroed to memsz");
        assert_eq!(ram.read_u8(0x10_2000).unwrap(), 0xcc, "nothing past memsz");
    }

    #[test]
    fn writes_gdt_and_mbi() {
        let ram = ram();
        let info = load_multiboot(&ram, &good_kernel(), "hello", None).unwrap();
        let mut gdt = [0u8; 32];
        ram.read(info.gdt_base, &mut gdt).unwrap();
        let desc = |i: usize| u64::from_le_bytes(gdt[i * 8..i * 8 + 8].try_into().unwrap());
        assert_eq!(desc(0), 0);
        assert_eq!(desc(2), 0x00CF_9B00_0000_FFFF);
        assert_eq!(desc(3), 0x00CF_9300_0000_FFFF);

        let m = info.mbi_addr;
        let flags = ram.read_u32(m).unwrap();
        assert_eq!(flags, (1 << 0) | (1 << 2) | (1 << 6) | (1 << 9));
        assert_eq!(ram.read_u32(m + 4).unwrap(), 639);
        // QEMU's numbers: the top 128 KiB are its firmware's.
        assert_eq!(ram.read_u32(m + 8).unwrap(), 3 * 1024 - 128);
        assert_eq!(read_cstr(&ram, ram.read_u32(m + 16).unwrap()), b"hello");
        assert_eq!(read_cstr(&ram, ram.read_u32(m + 64).unwrap()), b"bt86");

        let (len, addr) = (ram.read_u32(m + 44).unwrap(), ram.read_u32(m + 48).unwrap());
        assert_eq!(len, 6 * 24);
        let mut got = Vec::new();
        let mut at = addr;
        while at < addr + len {
            let size = ram.read_u32(at).unwrap();
            let mut e = [0u8; 20];
            ram.read(at + 4, &mut e).unwrap();
            let base = u64::from_le_bytes(e[0..8].try_into().unwrap());
            let length = u64::from_le_bytes(e[8..16].try_into().unwrap());
            let ty = u32::from_le_bytes(e[16..20].try_into().unwrap());
            got.push((base, length, ty));
            at += size + 4;
        }
        assert_eq!(
            got,
            vec![
                (0, 0x9fc00, 1),
                (0x9fc00, 0x400, 2),
                (0xf0000, 0x10000, 2),
                (0x10_0000, (3 << 20) - 0x20000, 1),
                ((4 << 20) - 0x20000, 0x20000, 2),
                (0xfffc_0000, 0x4_0000, 2),
            ]
        );
    }

    #[test]
    fn long_cmdline_is_truncated() {
        let ram = ram();
        let long = "x".repeat(10_000);
        load_multiboot(&ram, &good_kernel(), &long, None).unwrap();
        assert_eq!(read_cstr(&ram, CMDLINE_ADDR).len(), CMDLINE_MAX - 1);
        load_multiboot(&ram, &good_kernel(), "a\0b", None).unwrap();
        assert_eq!(read_cstr(&ram, CMDLINE_ADDR), b"a");
    }

    #[test]
    fn virtual_entry_is_translated() {
        let body = mb_header(0);
        let ph = Ph {
            p_type: 1,
            offset: 0x100,
            vaddr: 0xc010_0000,
            paddr: 0x10_0000,
            filesz: 12,
            memsz: 0x1000,
        };
        let info = load_multiboot(&ram(), &elf(0xc010_0010, &[ph], &body), "", None).unwrap();
        assert_eq!(info.entry, 0x10_0010);
    }

    #[test]
    fn not_elf() {
        let mut img = mb_header(0);
        img.resize(64, 0);
        assert!(matches!(
            load_multiboot(&ram(), &img, "", None),
            Err(LoadError::NotElf)
        ));
    }

    #[test]
    fn elf64_rejected() {
        let mut img = good_kernel();
        img[4] = 2;
        let err = load_multiboot(&ram(), &img, "", None).unwrap_err();
        assert!(matches!(err, LoadError::Elf64));
        assert!(err.to_string().contains("bt86 runs 32-bit kernels"));
    }

    #[test]
    fn elf64_without_header_says_elf64() {
        let mut img = elf(0x10_0000, &[], &[0u8; 16]);
        img[4] = 2;
        assert!(matches!(
            load_multiboot(&ram(), &img, "", None),
            Err(LoadError::Elf64)
        ));
    }

    #[test]
    fn wrong_machine_and_type() {
        let mut img = good_kernel();
        img[18] = 62;
        assert!(matches!(
            load_multiboot(&ram(), &img, "", None),
            Err(LoadError::NotI386 { machine: 62 })
        ));
        let mut img = good_kernel();
        img[16] = 3; // ET_DYN
        assert!(matches!(
            load_multiboot(&ram(), &img, "", None),
            Err(LoadError::NotExecutable { e_type: 3 })
        ));
    }

    #[test]
    fn no_header() {
        let ph = Ph {
            p_type: 1,
            offset: 0x100,
            vaddr: 0x10_0000,
            paddr: 0x10_0000,
            filesz: 4,
            memsz: 4,
        };
        let img = elf(0x10_0000, &[ph], &[0x90; 4]);
        let err = load_multiboot(&ram(), &img, "", None).unwrap_err();
        assert!(matches!(err, LoadError::NoMultibootHeader));
        assert!(err.to_string().contains("first 8 KiB"));
    }

    #[test]
    fn header_beyond_8k_not_found() {
        let mut body = vec![0u8; 8192];
        body.extend_from_slice(&mb_header(0));
        let len = body.len() as u32;
        let ph = Ph {
            p_type: 1,
            offset: 0x100,
            vaddr: 0x10_0000,
            paddr: 0x10_0000,
            filesz: len,
            memsz: len,
        };
        let img = elf(0x10_0000, &[ph], &body);
        assert!(matches!(
            load_multiboot(&ram(), &img, "", None),
            Err(LoadError::NoMultibootHeader)
        ));
    }

    #[test]
    fn bad_checksum() {
        let mut img = good_kernel();
        img[0x108] ^= 1;
        assert!(matches!(
            load_multiboot(&ram(), &img, "", None),
            Err(LoadError::BadChecksum)
        ));
    }

    #[test]
    fn unsupported_flags() {
        let mut img = good_kernel();
        let h = mb_header(1 << 3);
        img[0x100..0x10c].copy_from_slice(&h);
        let err = load_multiboot(&ram(), &img, "", None).unwrap_err();
        assert!(
            matches!(err, LoadError::UnsupportedFlags { unsupported: 8, .. }),
            "{err}"
        );
        // Video mode (bit 2) and optional high bits are fine.
        img[0x100..0x10c].copy_from_slice(&mb_header(HF_VIDEO_MODE | 1 << 20));
        load_multiboot(&ram(), &img, "", None).unwrap();
    }

    fn with_segment(ph: Ph) -> Vec<u8> {
        let body = mb_header(0);
        let first = Ph {
            p_type: 1,
            offset: 0x100,
            vaddr: 0x10_0000,
            paddr: 0x10_0000,
            filesz: 12,
            memsz: 12,
        };
        elf(0x10_0000, &[first, ph], &body)
    }

    #[test]
    fn segment_outside_ram() {
        let ph = Ph {
            p_type: 1,
            offset: 0x100,
            vaddr: 0,
            paddr: 4 * MIB - 4,
            filesz: 12,
            memsz: 12,
        };
        let err = load_multiboot(&ram(), &with_segment(ph), "", None).unwrap_err();
        assert!(
            matches!(err, LoadError::SegmentOutsideRam { ram_size, .. } if ram_size == 4 * MIB),
            "{err}"
        );
    }

    #[test]
    fn segment_in_loader_area() {
        let ph = Ph {
            p_type: 1,
            offset: 0x100,
            vaddr: 0,
            paddr: 0x8000,
            filesz: 12,
            memsz: 12,
        };
        let err = load_multiboot(&ram(), &with_segment(ph), "", None).unwrap_err();
        assert!(
            matches!(err, LoadError::SegmentInLoaderArea { paddr: 0x8000, .. }),
            "{err}"
        );
    }

    #[test]
    fn segment_data_beyond_file() {
        let ph = Ph {
            p_type: 1,
            offset: 0x100,
            vaddr: 0,
            paddr: 0x20_0000,
            filesz: 0x1000,
            memsz: 0x1000,
        };
        let err = load_multiboot(&ram(), &with_segment(ph), "", None).unwrap_err();
        assert!(matches!(err, LoadError::Truncated { .. }), "{err}");
        let ph = Ph {
            p_type: 1,
            offset: u32::MAX,
            vaddr: 0,
            paddr: 0x20_0000,
            filesz: 0x10,
            memsz: 0x10,
        };
        assert!(matches!(
            load_multiboot(&ram(), &with_segment(ph), "", None),
            Err(LoadError::Truncated { .. })
        ));
    }

    #[test]
    fn huge_memsz() {
        let ph = Ph {
            p_type: 1,
            offset: 0x100,
            vaddr: 0,
            paddr: 0x20_0000,
            filesz: 0,
            memsz: u32::MAX,
        };
        let err = load_multiboot(&ram(), &with_segment(ph), "", None).unwrap_err();
        assert!(matches!(err, LoadError::SegmentOutsideRam { .. }), "{err}");
        let ph = Ph {
            p_type: 1,
            offset: 0x100,
            vaddr: 0,
            paddr: u32::MAX,
            filesz: 0,
            memsz: u32::MAX,
        };
        assert!(matches!(
            load_multiboot(&ram(), &with_segment(ph), "", None),
            Err(LoadError::SegmentOutsideRam { .. })
        ));
    }

    #[test]
    fn filesz_above_memsz() {
        let ph = Ph {
            p_type: 1,
            offset: 0x100,
            vaddr: 0,
            paddr: 0x20_0000,
            filesz: 12,
            memsz: 4,
        };
        assert!(matches!(
            load_multiboot(&ram(), &with_segment(ph), "", None),
            Err(LoadError::FileSizeExceedsMemSize { .. })
        ));
    }

    #[test]
    fn no_loadable_segments() {
        let ph = Ph {
            p_type: 4,
            offset: 0x100,
            vaddr: 0,
            paddr: 0,
            filesz: 12,
            memsz: 12,
        }; // PT_NOTE
        let img = elf(0x10_0000, &[ph], &mb_header(0));
        assert!(matches!(
            load_multiboot(&ram(), &img, "", None),
            Err(LoadError::NoLoadableSegments)
        ));
    }

    #[test]
    fn bogus_program_header_count() {
        let mut img = good_kernel();
        img[44..46].copy_from_slice(&0xffffu16.to_le_bytes());
        assert!(matches!(
            load_multiboot(&ram(), &img, "", None),
            Err(LoadError::Elf(_))
        ));
        let mut img = good_kernel();
        img[28..32].copy_from_slice(&u32::MAX.to_le_bytes()); // e_phoff
        assert!(matches!(
            load_multiboot(&ram(), &img, "", None),
            Err(LoadError::Elf(_))
        ));
    }

    /// Hostile input: corrupting any header byte must give an error or a load, never a
    /// panic.
    #[test]
    fn corrupted_headers_never_panic() {
        let ram = ram();
        let good = good_kernel();
        for at in 0..0x10c {
            for v in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut img = good.clone();
                img[at] = v;
                let _ = load_multiboot(&ram, &img, "", None);
            }
        }
        for len in 0..good.len() {
            let _ = load_multiboot(&ram, &good[..len], "", None);
        }
    }

    #[test]
    fn failed_load_writes_nothing() {
        let ram = ram();
        let ph = Ph {
            p_type: 1,
            offset: 0x100,
            vaddr: 0,
            paddr: 4 * MIB - 4,
            filesz: 12,
            memsz: 12,
        };
        assert!(load_multiboot(&ram, &with_segment(ph), "", None).is_err());
        assert_eq!(ram.read_u32(0x10_0000).unwrap(), 0);
        assert_eq!(ram.read_u32(MBI_ADDR).unwrap(), 0);
    }

    /// A flat binary with the a.out kludge: header at file offset 0, loaded at 1 MiB.
    fn kludge(load_end: u32, bss_end: u32) -> Vec<u8> {
        let flags = HF_ADDRESS_FIELDS;
        let mut img = mb_header(flags);
        for w in [0x10_0000u32, 0x10_0000, load_end, bss_end, 0x10_0020] {
            img.extend_from_slice(&w.to_le_bytes());
        }
        img.resize(0x30, 0x90);
        img
    }

    #[test]
    fn aout_kludge_loads_flat_binary() {
        let ram = ram();
        let info = load_multiboot(&ram, &kludge(0, 0x10_4000), "", None).unwrap();
        assert_eq!(info.entry, 0x10_0020);
        assert_eq!(info.kernel_end, 0x10_4000);
        assert_eq!(ram.read_u32(0x10_0000).unwrap(), MULTIBOOT_HEADER_MAGIC);
        assert_eq!(ram.read_u8(0x10_002f).unwrap(), 0x90);
        assert_eq!(ram.read_u8(0x10_0030).unwrap(), 0);
        // load_end within the file, no bss.
        let info = load_multiboot(&ram, &kludge(0x10_0010, 0), "", None).unwrap();
        assert_eq!(info.kernel_end, 0x10_0010);
    }

    #[test]
    fn aout_kludge_rejects_bad_fields() {
        let bad = |img: Vec<u8>| load_multiboot(&ram(), &img, "", None).unwrap_err();
        assert!(matches!(
            bad(kludge(0x10_1000, 0)),
            LoadError::Truncated { .. }
        ));
        assert!(matches!(
            bad(kludge(0xf_0000, 0)),
            LoadError::BadAddressFields(_)
        ));
        assert!(matches!(
            bad(kludge(0x10_0010, 0x10_0008)),
            LoadError::BadAddressFields(_)
        ));
        assert!(matches!(
            bad(kludge(0, 0xffff_ffff)),
            LoadError::SegmentOutsideRam { .. }
        ));
        // load_addr before the start of the file.
        let mut img = kludge(0, 0);
        img[16..20].copy_from_slice(&0x0f_0000u32.to_le_bytes());
        assert!(matches!(bad(img), LoadError::BadAddressFields(_)));
    }
}
