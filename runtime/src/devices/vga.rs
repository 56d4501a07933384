//! The VGA in 80x25 colour text mode, the way a multiboot kernel finds it: the text
//! buffer at guest-physical 0xB8000 (two bytes a cell: the character in code page 437,
//! then the attribute: foreground colour in bits 0–3, background in 4–6, blink in 7),
//! and the register ports a text-mode kernel touches.
//!
//! The text buffer is ordinary guest RAM: bt86 does not trap writes to it. Whoever shows
//! the screen reads it from RAM when it draws ([`TextScreen::read`], through a
//! [`crate::memory::RamReader`]), together with the CRT controller state this device
//! shares ([`VgaState`]): the cursor position (CRTC registers 0x0E/0x0F), its shape and
//! whether it is off (0x0A/0x0B), and the display start address (0x0C/0x0D, which
//! kernels move to scroll).
//!
//! Ports (0x3B0–0x3DF): the CRT controller index/data at 0x3D4/0x3D5 (and the monochrome
//! aliases 0x3B4/0x3B5), miscellaneous output (write 0x3C2, read 0x3CC: colour, so the
//! CRTC is at 0x3Dx), the sequencer 0x3C4/0x3C5, the graphics controller 0x3CE/0x3CF,
//! the attribute controller 0x3C0/0x3C1 (index/data flip-flop, reset by reading input
//! status 1 at 0x3DA), the DAC 0x3C6–0x3C9, feature control 0x3CA/0x3DA. They are plain
//! registers that read back what was written (the text mode does not change with them);
//! input status 1 toggles its retrace bits on every read, so a kernel that waits for
//! vertical retrace does not wait forever.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::Arc;

use super::{size_mask, IoEffect, PortDevice};
use crate::memory::RamReader;

/// Guest-physical address of the colour text buffer.
pub const TEXT_BUFFER: u32 = 0xb_8000;
/// Columns and rows of the text mode.
pub const COLUMNS: usize = 80;
pub const ROWS: usize = 25;
/// Bytes the text buffer occupies (32 KiB window; one screen is 4000 bytes).
pub const TEXT_WINDOW: u32 = 0x8000;
/// First and last port the VGA answers.
pub const VGA_FIRST_PORT: u16 = 0x3b0;
pub const VGA_LAST_PORT: u16 = 0x3df;

/// A blank cell as a BIOS leaves the screen after clearing it: a space, light grey on
/// black.
pub const BLANK_CELL: u16 = 0x0720;

/// CRTC registers after a BIOS set mode 3 (80x25 colour text), as QEMU's VGA BIOS
/// leaves them.
const CRTC_MODE3: [u8; 25] = [
    0x5f, 0x4f, 0x50, 0x82, 0x55, 0x81, 0xbf, 0x1f, 0x00, 0x4f, 0x0d, 0x0e, 0x00, 0x00, 0x00,
    0x00, 0x9c, 0x8e, 0x8f, 0x28, 0x1f, 0x96, 0xb9, 0xa3, 0xff,
];
const SEQ_MODE3: [u8; 5] = [0x03, 0x00, 0x03, 0x00, 0x02];
const GC_MODE3: [u8; 9] = [0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0e, 0x00, 0xff];
const ATTR_MODE3: [u8; 21] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e,
    0x3f, 0x0c, 0x00, 0x0f, 0x08, 0x00,
];

/// The CRT controller state a display needs, shared with it (lock-free).
#[derive(Debug)]
pub struct VgaState {
    /// Cursor location: a cell index from the start of video memory (CRTC 0x0E/0x0F).
    cursor: AtomicU16,
    /// Display start address in cells (CRTC 0x0C/0x0D).
    start: AtomicU16,
    /// Cursor start scan line with the "cursor off" bit 5 (CRTC 0x0A).
    cursor_start: AtomicU8,
    /// Cursor end scan line (CRTC 0x0B).
    cursor_end: AtomicU8,
    /// The guest touched a VGA register (a text-mode kernel at work).
    touched: AtomicBool,
}

impl Default for VgaState {
    fn default() -> Self {
        Self {
            cursor: AtomicU16::new(0),
            start: AtomicU16::new(0),
            cursor_start: AtomicU8::new(CRTC_MODE3[0x0a]),
            cursor_end: AtomicU8::new(CRTC_MODE3[0x0b]),
            touched: AtomicBool::new(false),
        }
    }
}

impl VgaState {
    /// The cursor's (row, column) on the visible screen, or None when it is switched
    /// off or outside the screen.
    pub fn cursor(&self) -> Option<(usize, usize)> {
        if self.cursor_start.load(Ordering::Relaxed) & 0x20 != 0 {
            return None;
        }
        let start = self.start.load(Ordering::Relaxed);
        let at = usize::from(self.cursor.load(Ordering::Relaxed).wrapping_sub(start));
        (at < COLUMNS * ROWS).then_some((at / COLUMNS, at % COLUMNS))
    }

    /// Display start, in cells from the start of the text buffer.
    pub fn start(&self) -> u16 {
        self.start.load(Ordering::Relaxed)
    }

    /// Whether the guest has used any VGA register.
    pub fn touched(&self) -> bool {
        self.touched.load(Ordering::Relaxed)
    }
}

/// The VGA's registers: its state, as a checkpoint keeps it (the text buffer is
/// guest RAM).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VgaRegs {
    crtc_index: u8,
    crtc: [u8; 25],
    seq_index: u8,
    seq: [u8; 5],
    gc_index: u8,
    gc: [u8; 9],
    attr_index: u8,
    attr: [u8; 21],
    attr_data_next: bool,
    misc: u8,
    feature: u8,
    dac_mask: u8,
    dac_read_index: u8,
    dac_write_index: u8,
    dac_component: u8,
    #[serde(with = "crate::checkpoint::bytes::boxed_array")]
    dac: Box<[u8; 768]>,
    retrace: bool,
}

/// The VGA's registers (see the module notes).
#[derive(Debug)]
pub struct Vga {
    shared: Arc<VgaState>,
    r: VgaRegs,
}

impl Default for Vga {
    fn default() -> Self {
        Self::new()
    }
}

impl Vga {
    /// The VGA after a BIOS set 80x25 colour text mode.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(VgaState::default()),
            r: VgaRegs {
                crtc_index: 0,
                crtc: CRTC_MODE3,
                seq_index: 0,
                seq: SEQ_MODE3,
                gc_index: 0,
                gc: GC_MODE3,
                attr_index: 0,
                attr: ATTR_MODE3,
                attr_data_next: false,
                misc: 0x67,
                feature: 0,
                dac_mask: 0xff,
                dac_read_index: 0,
                dac_write_index: 0,
                dac_component: 0,
                dac: Box::new([0; 768]),
                retrace: false,
            },
        }
    }

    /// The registers and whether the guest touched any, for a checkpoint.
    pub fn save(&self) -> (VgaRegs, bool) {
        (self.r.clone(), self.shared.touched.load(Ordering::Relaxed))
    }

    /// Takes what `save` gave; the display's view ([`Vga::state`]) follows.
    pub fn restore(&mut self, (mut r, touched): (VgaRegs, bool)) {
        // Indexes the DAC with the palette index: 0..3 only.
        r.dac_component %= 3;
        self.r = r;
        let crtc = &self.r.crtc;
        let pair = |hi: u8, lo: u8| u16::from_be_bytes([hi, lo]);
        let s = &self.shared;
        s.cursor_start.store(crtc[0x0a], Ordering::Relaxed);
        s.cursor_end.store(crtc[0x0b], Ordering::Relaxed);
        s.start.store(pair(crtc[0x0c], crtc[0x0d]), Ordering::Relaxed);
        s.cursor.store(pair(crtc[0x0e], crtc[0x0f]), Ordering::Relaxed);
        s.touched.store(touched, Ordering::Relaxed);
    }

    /// The state a display reads.
    pub fn state(&self) -> Arc<VgaState> {
        self.shared.clone()
    }

    fn read_byte(&mut self, port: u16) -> u8 {
        match port {
            0x3b4 | 0x3d4 => self.r.crtc_index,
            0x3b5 | 0x3d5 => self.r.crtc.get(usize::from(self.r.crtc_index)).copied().unwrap_or(0xff),
            0x3c0 => self.r.attr_index,
            0x3c1 => self.r.attr.get(usize::from(self.r.attr_index & 0x1f)).copied().unwrap_or(0),
            0x3c2 => 0x10, // input status 0: switch sense
            0x3c4 => self.r.seq_index,
            0x3c5 => self.r.seq.get(usize::from(self.r.seq_index)).copied().unwrap_or(0xff),
            0x3c6 => self.r.dac_mask,
            0x3c7 => 0x03, // DAC state: in read mode after a read-index write, say so
            0x3c8 => self.r.dac_write_index,
            0x3c9 => {
                let i = usize::from(self.r.dac_read_index) * 3 + usize::from(self.r.dac_component);
                let v = self.r.dac[i];
                self.step_dac(true);
                v
            }
            0x3ca => self.r.feature,
            0x3cc => self.r.misc,
            0x3ce => self.r.gc_index,
            0x3cf => self.r.gc.get(usize::from(self.r.gc_index)).copied().unwrap_or(0xff),
            0x3ba | 0x3da => {
                // Input status 1: resets the attribute flip-flop; display-enable and
                // vertical-retrace bits alternate from read to read.
                self.r.attr_data_next = false;
                self.r.retrace = !self.r.retrace;
                if self.r.retrace {
                    0x09
                } else {
                    0x00
                }
            }
            _ => 0xff,
        }
    }

    fn step_dac(&mut self, reading: bool) {
        self.r.dac_component += 1;
        if self.r.dac_component == 3 {
            self.r.dac_component = 0;
            if reading {
                self.r.dac_read_index = self.r.dac_read_index.wrapping_add(1);
            } else {
                self.r.dac_write_index = self.r.dac_write_index.wrapping_add(1);
            }
        }
    }

    fn write_byte(&mut self, port: u16, v: u8) {
        match port {
            0x3b4 | 0x3d4 => self.r.crtc_index = v,
            0x3b5 | 0x3d5 => self.write_crtc(v),
            0x3c0 => {
                if self.r.attr_data_next {
                    if let Some(r) = self.r.attr.get_mut(usize::from(self.r.attr_index & 0x1f)) {
                        *r = v;
                    }
                } else {
                    self.r.attr_index = v & 0x3f;
                }
                self.r.attr_data_next = !self.r.attr_data_next;
            }
            0x3c2 => self.r.misc = v,
            0x3c4 => self.r.seq_index = v,
            0x3c5 => {
                if let Some(r) = self.r.seq.get_mut(usize::from(self.r.seq_index)) {
                    *r = v;
                }
            }
            0x3c6 => self.r.dac_mask = v,
            0x3c7 => {
                self.r.dac_read_index = v;
                self.r.dac_component = 0;
            }
            0x3c8 => {
                self.r.dac_write_index = v;
                self.r.dac_component = 0;
            }
            0x3c9 => {
                let i = usize::from(self.r.dac_write_index) * 3 + usize::from(self.r.dac_component);
                self.r.dac[i] = v & 0x3f;
                self.step_dac(false);
            }
            0x3ba | 0x3da => self.r.feature = v,
            0x3ce => self.r.gc_index = v,
            0x3cf => {
                if let Some(r) = self.r.gc.get_mut(usize::from(self.r.gc_index)) {
                    *r = v;
                }
            }
            _ => {}
        }
    }

    fn write_crtc(&mut self, v: u8) {
        let i = usize::from(self.r.crtc_index);
        // Registers 0–7 are write-protected while bit 7 of register 0x11 is set (only the
        // line-compare bit 4 of register 7 stays writable).
        if i <= 7 && self.r.crtc[0x11] & 0x80 != 0 {
            if i == 7 {
                self.r.crtc[7] = (self.r.crtc[7] & !0x10) | (v & 0x10);
            }
            return;
        }
        let Some(r) = self.r.crtc.get_mut(i) else { return };
        *r = v;
        let pair = |hi: u8, lo: u8| u16::from_be_bytes([hi, lo]);
        let s = &self.shared;
        match i {
            0x0a => s.cursor_start.store(v, Ordering::Relaxed),
            0x0b => s.cursor_end.store(v, Ordering::Relaxed),
            0x0c | 0x0d => s.start.store(pair(self.r.crtc[0x0c], self.r.crtc[0x0d]), Ordering::Relaxed),
            0x0e | 0x0f => s.cursor.store(pair(self.r.crtc[0x0e], self.r.crtc[0x0f]), Ordering::Relaxed),
            _ => {}
        }
    }
}

impl PortDevice for Vga {
    fn read(&mut self, port: u16, size: u8) -> u32 {
        self.shared.touched.store(true, Ordering::Relaxed);
        let mut bytes = [0xffu8; 4];
        for (i, b) in bytes.iter_mut().enumerate().take(usize::from(size.min(4))) {
            if let Some(p) = port.checked_add(u16::try_from(i).unwrap_or(0)) {
                *b = self.read_byte(p);
            }
        }
        u32::from_le_bytes(bytes) & size_mask(size)
    }

    /// A 16-bit write to an index port writes the index, then the data register (the
    /// `outw` idiom kernels use for the CRTC).
    fn write(&mut self, port: u16, size: u8, value: u32) -> IoEffect {
        self.shared.touched.store(true, Ordering::Relaxed);
        for (i, b) in value.to_le_bytes().iter().enumerate().take(usize::from(size.min(4))) {
            if let Some(p) = port.checked_add(u16::try_from(i).unwrap_or(0)) {
                self.write_byte(p, *b);
            }
        }
        IoEffect::None
    }
}

/// One cell: the character (code page 437) and its attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    pub ch: u8,
    pub attr: u8,
}

/// The 80x25 text screen as the guest left it in RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextScreen {
    pub cells: Vec<Cell>,
    /// (row, column) of the visible cursor.
    pub cursor: Option<(usize, usize)>,
}

impl TextScreen {
    /// Reads the visible screen (from the display start address) out of guest RAM.
    pub fn read(ram: &RamReader, state: &VgaState) -> std::io::Result<Self> {
        let mut raw = vec![0u8; TEXT_WINDOW as usize];
        ram.read(TEXT_BUFFER, &mut raw)?;
        // The start address counts cells and wraps in the 32 KiB window.
        let start = usize::from(state.start()) * 2;
        let cells = (0..COLUMNS * ROWS)
            .map(|i| {
                let at = (start + i * 2) % raw.len();
                Cell { ch: raw[at], attr: raw[at + 1] }
            })
            .collect();
        Ok(Self { cells, cursor: state.cursor() })
    }

    /// The cells of `row`.
    pub fn row(&self, row: usize) -> &[Cell] {
        &self.cells[row * COLUMNS..(row + 1) * COLUMNS]
    }

    /// The screen as plain text: one line per row in Unicode (code page 437 mapped),
    /// NUL as a space, trailing blanks and trailing empty rows trimmed.
    pub fn to_text(&self) -> String {
        let mut lines: Vec<String> = (0..ROWS)
            .map(|r| {
                let line: String = self.row(r).iter().map(|c| cp437(c.ch)).collect();
                line.trim_end().to_string()
            })
            .collect();
        while lines.last().is_some_and(String::is_empty) {
            lines.pop();
        }
        let mut out = lines.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        out
    }

    /// Whether every cell is blank (a space or NUL on any colour): nothing written.
    pub fn is_blank(&self) -> bool {
        self.cells.iter().all(|c| c.ch == b' ' || c.ch == 0)
    }
}

/// The Unicode character for a code page 437 byte, as the VGA's font draws it (NUL as a
/// space).
pub fn cp437(b: u8) -> char {
    const LOW: [char; 32] = [
        ' ', '☺', '☻', '♥', '♦', '♣', '♠', '•', '◘', '○', '◙', '♂', '♀', '♪', '♫', '☼', '►',
        '◄', '↕', '‼', '¶', '§', '▬', '↨', '↑', '↓', '→', '←', '∟', '↔', '▲', '▼',
    ];
    const HIGH: [char; 128] = [
        'Ç', 'ü', 'é', 'â', 'ä', 'à', 'å', 'ç', 'ê', 'ë', 'è', 'ï', 'î', 'ì', 'Ä', 'Å', 'É',
        'æ', 'Æ', 'ô', 'ö', 'ò', 'û', 'ù', 'ÿ', 'Ö', 'Ü', '¢', '£', '¥', '₧', 'ƒ', 'á', 'í',
        'ó', 'ú', 'ñ', 'Ñ', 'ª', 'º', '¿', '⌐', '¬', '½', '¼', '¡', '«', '»', '░', '▒', '▓',
        '│', '┤', '╡', '╢', '╖', '╕', '╣', '║', '╗', '╝', '╜', '╛', '┐', '└', '┴', '┬', '├',
        '─', '┼', '╞', '╟', '╚', '╔', '╩', '╦', '╠', '═', '╬', '╧', '╨', '╤', '╥', '╙', '╘',
        '╒', '╓', '╫', '╪', '┘', '┌', '█', '▄', '▌', '▐', '▀', 'α', 'ß', 'Γ', 'π', 'Σ', 'σ',
        'µ', 'τ', 'Φ', 'Θ', 'Ω', 'δ', '∞', 'φ', 'ε', '∩', '≡', '±', '≥', '≤', '⌠', '⌡', '÷',
        '≈', '°', '∙', '·', '√', 'ⁿ', '²', '■', ' ',
    ];
    match b {
        0..=0x1f => LOW[usize::from(b)],
        0x7f => '⌂',
        0x20..=0x7e => char::from(b),
        _ => HIGH[usize::from(b - 0x80)],
    }
}

/// Fills the text buffer with blank cells, as a BIOS leaves the screen.
pub fn clear_text_buffer(ram: &crate::memory::GuestRam) -> Result<(), crate::memory::MemoryError> {
    if !ram.contains(TEXT_BUFFER, TEXT_WINDOW as usize) {
        return Ok(());
    }
    let blank: Vec<u8> = std::iter::repeat_n(BLANK_CELL.to_le_bytes(), TEXT_WINDOW as usize / 2).flatten().collect();
    ram.write(TEXT_BUFFER, &blank)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(v: &mut Vga, port: u16, b: u8) {
        assert_eq!(v.write(port, 1, u32::from(b)), IoEffect::None);
    }

    #[test]
    fn cursor_position_through_the_crtc() {
        let mut v = Vga::new();
        let s = v.state();
        assert!(!s.touched());
        assert_eq!(s.cursor(), Some((0, 0)));
        // The OSDev idiom: index 0x0F, low byte; index 0x0E, high byte.
        let pos: u16 = 3 * 80 + 7;
        out(&mut v, 0x3d4, 0x0f);
        out(&mut v, 0x3d5, pos as u8);
        out(&mut v, 0x3d4, 0x0e);
        out(&mut v, 0x3d5, (pos >> 8) as u8);
        assert_eq!(s.cursor(), Some((3, 7)));
        assert!(s.touched());
        // Read back, and the 16-bit outw form.
        out(&mut v, 0x3d4, 0x0f);
        assert_eq!(v.read(0x3d5, 1), u32::from(pos as u8));
        v.write(0x3d4, 2, 0x0e | (1 << 8));
        assert_eq!(s.cursor(), Some((503 / 80, 503 % 80)), "high byte 1, low byte 247");
        // Cursor off (bit 5 of the cursor start register).
        v.write(0x3d4, 2, 0x0a | (0x20 << 8));
        assert_eq!(s.cursor(), None);
        v.write(0x3d4, 2, 0x0a | (0x0d << 8));
        // Scrolled by the start address: the cursor moves up with the screen.
        v.write(0x3d4, 2, 0x0c);
        v.write(0x3d4, 2, 0x0d | (80 << 8));
        assert_eq!(s.start(), 80);
        assert_eq!(s.cursor(), Some(((503 - 80) / 80, (503 - 80) % 80)));
    }

    #[test]
    fn registers_read_back_and_status_toggles() {
        let mut v = Vga::new();
        assert_eq!(v.read(0x3cc, 1), 0x67, "colour: CRTC at 0x3Dx");
        out(&mut v, 0x3c4, 2);
        out(&mut v, 0x3c5, 0x0f);
        assert_eq!(v.read(0x3c5, 1), 0x0f);
        out(&mut v, 0x3ce, 5);
        assert_eq!(v.read(0x3cf, 1), 0x10);
        let a = v.read(0x3da, 1);
        let b = v.read(0x3da, 1);
        assert_ne!(a & 8, b & 8, "vertical retrace alternates");
        // Attribute flip-flop: index, data; reading 0x3DA resets it to index.
        out(&mut v, 0x3c0, 0x10);
        out(&mut v, 0x3c0, 0x08);
        assert_eq!(v.read(0x3c1, 1), 0x08);
        out(&mut v, 0x3c0, 0x11);
        v.read(0x3da, 1);
        out(&mut v, 0x3c0, 0x12);
        assert_eq!(v.read(0x3c0, 1), 0x12);
        // DAC: three components per index.
        out(&mut v, 0x3c8, 1);
        for c in [0x3f, 0x20, 0x01] {
            out(&mut v, 0x3c9, c);
        }
        out(&mut v, 0x3c7, 1);
        let got: Vec<u32> = (0..3).map(|_| v.read(0x3c9, 1)).collect();
        assert_eq!(got, [0x3f, 0x20, 0x01]);
        // CRTC 0-7 are protected while 0x11 bit 7 is set (as after mode 3: 0x8e).
        v.write(0x3d4, 2, 0x01 | (0x10 << 8));
        out(&mut v, 0x3d4, 0x01);
        assert_eq!(v.read(0x3d5, 1), 0x4f);
        // Unknown indices and hostile traffic do nothing bad.
        for p in VGA_FIRST_PORT..=VGA_LAST_PORT {
            for x in [0u8, 0x7f, 0xff] {
                let _ = v.write(p, 1, u32::from(x));
                let _ = v.read(p, 4);
            }
        }
    }

    #[test]
    fn cp437_maps_the_box_and_control_glyphs() {
        assert_eq!(cp437(0), ' ');
        assert_eq!(cp437(b'A'), 'A');
        assert_eq!(cp437(0x01), '☺');
        assert_eq!(cp437(0xc9), '╔');
        assert_eq!(cp437(0xdb), '█');
        assert_eq!(cp437(0xff), ' ');
        let all: String = (0..=255u8).map(cp437).collect();
        assert_eq!(all.chars().count(), 256);
    }

    #[test]
    fn screen_text_is_trimmed() {
        let mut cells = vec![Cell { ch: b' ', attr: 7 }; COLUMNS * ROWS];
        for (i, b) in b"hi  ".iter().enumerate() {
            cells[i] = Cell { ch: *b, attr: 0x1f };
        }
        cells[COLUMNS * 2] = Cell { ch: 0xc4, attr: 7 };
        let s = TextScreen { cells, cursor: None };
        assert_eq!(s.to_text(), "hi\n\n─\n");
        assert!(!s.is_blank());
        let blank = TextScreen { cells: vec![Cell { ch: 0, attr: 0 }; COLUMNS * ROWS], cursor: None };
        assert!(blank.is_blank());
        assert_eq!(blank.to_text(), "");
    }
}
