//! Tiny kernel images made in code, for tests that need a kernel file without the kit.

/// Where [`multiboot_elf`] loads its one segment (1 MiB).
pub const LOAD: u32 = 0x10_0000;
/// File offset (and offset from [`LOAD`]) of the code: the entry point.
pub const CODE_OFFSET: u32 = 108;
/// File offset (and offset from [`LOAD`]) of the data, when there is any.
pub const DATA_OFFSET: u32 = 0x180;

/// A minimal multiboot (v1) ELF32: one PT_LOAD at [`LOAD`] holding the headers, a
/// multiboot header, `code` (the entry point, at [`CODE_OFFSET`]) and `data` (at
/// [`DATA_OFFSET`], if not empty).
pub fn multiboot_elf(code: &[u8], data: &[u8]) -> Vec<u8> {
    let code_end = CODE_OFFSET as usize + code.len();
    assert!(data.is_empty() || code_end <= DATA_OFFSET as usize, "code runs into the data");
    let mut img = vec![0u8; code_end];
    if !data.is_empty() {
        img.resize(DATA_OFFSET as usize, 0);
        img.extend_from_slice(data);
    }
    let le16 = |img: &mut Vec<u8>, at: usize, v: u16| img[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let le32 = |img: &mut Vec<u8>, at: usize, v: u32| img[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let size = u32::try_from(img.len()).expect("a small image");
    // ELF header.
    img[..7].copy_from_slice(&[0x7f, b'E', b'L', b'F', 1, 1, 1]);
    le16(&mut img, 16, 2); // ET_EXEC
    le16(&mut img, 18, 3); // EM_386
    le32(&mut img, 20, 1); // EV_CURRENT
    le32(&mut img, 24, LOAD + CODE_OFFSET); // e_entry
    le32(&mut img, 28, 52); // e_phoff
    le16(&mut img, 40, 52); // e_ehsize
    le16(&mut img, 42, 32); // e_phentsize
    le16(&mut img, 44, 1); // e_phnum
    // Program header: PT_LOAD of the whole file at LOAD, R+X.
    for (i, v) in [1, 0, LOAD, LOAD, size, size, 5, 0x1000].into_iter().enumerate() {
        le32(&mut img, 52 + 4 * i, v);
    }
    // Multiboot header (flags 0: the ELF headers say where to load).
    let magic = 0x1BAD_B002u32;
    le32(&mut img, 96, magic);
    le32(&mut img, 100, 0);
    le32(&mut img, 104, magic.wrapping_neg());
    img[CODE_OFFSET as usize..code_end].copy_from_slice(code);
    img
}
