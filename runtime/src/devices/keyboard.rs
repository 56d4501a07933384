//! A PS/2 keyboard behind the i8042, fed from the host terminal.
//!
//! The keyboard's own scan codes are set 2; the i8042 translates them to set 1 while
//! its command byte has the translate bit (bit 6) set, as a BIOS leaves it — so a guest
//! sees set 1 (make code, and make | 0x80 on release; 0xE0 before the extended keys),
//! as on a PC. Here the translation is done when a key is queued: set 1 if translation
//! is on, set 2 (0xF0 before a break code) if the guest turned it off.
//!
//! Keys come from terminal bytes ([`keys_from_terminal`]): printable ASCII on a US
//! layout (Shift pressed around the shifted characters), Enter, Backspace, Tab, Escape,
//! Ctrl-letter, and the arrow/Home/End/Insert/Delete/PageUp/PageDown/F1–F4 escape
//! sequences of an xterm-like terminal. Each becomes a press and a release.
//!
//! Commands the guest sends to the keyboard (port 0x60) are answered as a keyboard does:
//! 0xFA (ACK) for each byte, 0xAA after a reset (0xFF), the ID 0xAB 0x83 (0xAB 0x41
//! translated) for 0xF2, 0xEE for an echo; 0xF5 stops scanning until 0xF4 or a reset.

use std::collections::VecDeque;

/// Bytes the keyboard buffers for the controller (QEMU's PS/2 queue holds 16).
pub const KEYBOARD_QUEUE: usize = 16;

const ACK: u8 = 0xfa;

/// A key on a US PC keyboard: its set-1 and set-2 make codes, and whether it is an
/// extended (0xE0-prefixed) key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub set1: u8,
    pub set2: u8,
    pub extended: bool,
}

const fn key(set1: u8, set2: u8) -> Key {
    Key { set1, set2, extended: false }
}

const fn ext(set1: u8, set2: u8) -> Key {
    Key { set1, set2, extended: true }
}

pub const ESCAPE: Key = key(0x01, 0x76);
pub const BACKSPACE: Key = key(0x0e, 0x66);
pub const TAB: Key = key(0x0f, 0x0d);
pub const ENTER: Key = key(0x1c, 0x5a);
pub const LEFT_CTRL: Key = key(0x1d, 0x14);
pub const LEFT_SHIFT: Key = key(0x2a, 0x12);
pub const SPACE: Key = key(0x39, 0x29);
pub const UP: Key = ext(0x48, 0x75);
pub const DOWN: Key = ext(0x50, 0x72);
pub const LEFT: Key = ext(0x4b, 0x6b);
pub const RIGHT: Key = ext(0x4d, 0x74);
pub const HOME: Key = ext(0x47, 0x6c);
pub const END: Key = ext(0x4f, 0x69);
pub const PAGE_UP: Key = ext(0x49, 0x7d);
pub const PAGE_DOWN: Key = ext(0x51, 0x7a);
pub const INSERT: Key = ext(0x52, 0x70);
pub const DELETE: Key = ext(0x53, 0x71);
pub const F1_TO_F4: [Key; 4] = [key(0x3b, 0x05), key(0x3c, 0x06), key(0x3d, 0x04), key(0x3e, 0x0c)];

/// The US layout: (unshifted, shifted, key) for every printable key but space.
const LAYOUT: [(u8, u8, Key); 47] = [
    (b'`', b'~', key(0x29, 0x0e)),
    (b'1', b'!', key(0x02, 0x16)),
    (b'2', b'@', key(0x03, 0x1e)),
    (b'3', b'#', key(0x04, 0x26)),
    (b'4', b'$', key(0x05, 0x25)),
    (b'5', b'%', key(0x06, 0x2e)),
    (b'6', b'^', key(0x07, 0x36)),
    (b'7', b'&', key(0x08, 0x3d)),
    (b'8', b'*', key(0x09, 0x3e)),
    (b'9', b'(', key(0x0a, 0x46)),
    (b'0', b')', key(0x0b, 0x45)),
    (b'-', b'_', key(0x0c, 0x4e)),
    (b'=', b'+', key(0x0d, 0x55)),
    (b'q', b'Q', key(0x10, 0x15)),
    (b'w', b'W', key(0x11, 0x1d)),
    (b'e', b'E', key(0x12, 0x24)),
    (b'r', b'R', key(0x13, 0x2d)),
    (b't', b'T', key(0x14, 0x2c)),
    (b'y', b'Y', key(0x15, 0x35)),
    (b'u', b'U', key(0x16, 0x3c)),
    (b'i', b'I', key(0x17, 0x43)),
    (b'o', b'O', key(0x18, 0x44)),
    (b'p', b'P', key(0x19, 0x4d)),
    (b'[', b'{', key(0x1a, 0x54)),
    (b']', b'}', key(0x1b, 0x5b)),
    (b'\\', b'|', key(0x2b, 0x5d)),
    (b'a', b'A', key(0x1e, 0x1c)),
    (b's', b'S', key(0x1f, 0x1b)),
    (b'd', b'D', key(0x20, 0x23)),
    (b'f', b'F', key(0x21, 0x2b)),
    (b'g', b'G', key(0x22, 0x34)),
    (b'h', b'H', key(0x23, 0x33)),
    (b'j', b'J', key(0x24, 0x3b)),
    (b'k', b'K', key(0x25, 0x42)),
    (b'l', b'L', key(0x26, 0x4b)),
    (b';', b':', key(0x27, 0x4c)),
    (b'\'', b'"', key(0x28, 0x52)),
    (b'z', b'Z', key(0x2c, 0x1a)),
    (b'x', b'X', key(0x2d, 0x22)),
    (b'c', b'C', key(0x2e, 0x21)),
    (b'v', b'V', key(0x2f, 0x2a)),
    (b'b', b'B', key(0x30, 0x32)),
    (b'n', b'N', key(0x31, 0x31)),
    (b'm', b'M', key(0x32, 0x3a)),
    (b',', b'<', key(0x33, 0x41)),
    (b'.', b'>', key(0x34, 0x49)),
    (b'/', b'?', key(0x35, 0x4a)),
];

/// A key going down or up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyEvent {
    pub key: Key,
    pub down: bool,
}

fn tap(out: &mut Vec<KeyEvent>, modifier: Option<Key>, k: Key) {
    if let Some(m) = modifier {
        out.push(KeyEvent { key: m, down: true });
    }
    out.push(KeyEvent { key: k, down: true });
    out.push(KeyEvent { key: k, down: false });
    if let Some(m) = modifier {
        out.push(KeyEvent { key: m, down: false });
    }
}

/// The key presses that typed `bytes` on a terminal (see the module notes); bytes with
/// no key are skipped.
pub fn keys_from_terminal(bytes: &[u8]) -> Vec<KeyEvent> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        i += 1;
        if b == 0x1b {
            // CSI (ESC [) and SS3 (ESC O) sequences; a lone ESC is the Escape key.
            let seq = &bytes[i..];
            let (k, used) = match seq {
                [b'[', b'A', ..] | [b'O', b'A', ..] => (Some(UP), 2),
                [b'[', b'B', ..] | [b'O', b'B', ..] => (Some(DOWN), 2),
                [b'[', b'C', ..] | [b'O', b'C', ..] => (Some(RIGHT), 2),
                [b'[', b'D', ..] | [b'O', b'D', ..] => (Some(LEFT), 2),
                [b'[', b'H', ..] | [b'O', b'H', ..] => (Some(HOME), 2),
                [b'[', b'F', ..] | [b'O', b'F', ..] => (Some(END), 2),
                [b'O', c @ b'P'..=b'S', ..] => (Some(F1_TO_F4[usize::from(c - b'P')]), 2),
                [b'[', c @ b'1'..=b'6', b'~', ..] => {
                    (Some([HOME, INSERT, DELETE, END, PAGE_UP, PAGE_DOWN][usize::from(c - b'1')]), 3)
                }
                _ => (Some(ESCAPE), 0),
            };
            i += used;
            if let Some(k) = k {
                tap(&mut out, None, k);
            }
            continue;
        }
        match b {
            b'\r' | b'\n' => tap(&mut out, None, ENTER),
            0x7f | 0x08 => tap(&mut out, None, BACKSPACE),
            b'\t' => tap(&mut out, None, TAB),
            b' ' => tap(&mut out, None, SPACE),
            0x01..=0x1a => {
                let letter = b'a' + b - 1;
                if let Some(&(_, _, k)) = LAYOUT.iter().find(|(l, _, _)| *l == letter) {
                    tap(&mut out, Some(LEFT_CTRL), k);
                }
            }
            _ => {
                if let Some(&(plain, _, k)) = LAYOUT.iter().find(|(l, s, _)| *l == b || *s == b) {
                    tap(&mut out, (plain != b).then_some(LEFT_SHIFT), k);
                }
            }
        }
    }
    out
}

/// What the keyboard waits for after a command that takes a data byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Pending {
    Leds,
    Typematic,
    ScanSet,
}

/// The keyboard: scanning state and its output queue.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Keyboard {
    queue: VecDeque<u8>,
    scanning: bool,
    pending: Option<Pending>,
    /// Key events the guest could not take yet (the queue was full).
    dropped: u64,
}

impl Default for Keyboard {
    fn default() -> Self {
        Self::new()
    }
}

impl Keyboard {
    pub fn new() -> Self {
        Self { queue: VecDeque::with_capacity(KEYBOARD_QUEUE), scanning: true, pending: None, dropped: 0 }
    }

    /// Room left in the output queue, in bytes.
    pub fn room(&self) -> usize {
        KEYBOARD_QUEUE.saturating_sub(self.queue.len())
    }

    /// The next byte for the controller.
    pub fn pop(&mut self) -> Option<u8> {
        self.queue.pop_front()
    }

    /// Queues a key event's scan code (set 1 if `translated`, else set 2), whole or not
    /// at all; false if it did not fit or scanning is off.
    pub fn press(&mut self, e: KeyEvent, translated: bool) -> bool {
        if !self.scanning {
            return false;
        }
        let mut code = Vec::with_capacity(3);
        if e.key.extended {
            code.push(0xe0);
        }
        match (translated, e.down) {
            (true, true) => code.push(e.key.set1),
            (true, false) => code.push(e.key.set1 | 0x80),
            (false, true) => code.push(e.key.set2),
            (false, false) => code.extend([0xf0, e.key.set2]),
        }
        if code.len() > self.room() {
            self.dropped += 1;
            return false;
        }
        self.queue.extend(code);
        true
    }

    /// A byte the guest sent to the keyboard; the answer is queued.
    pub fn command(&mut self, b: u8, translated: bool) {
        if let Some(p) = self.pending.take() {
            self.reply(&[ACK]);
            if p == Pending::ScanSet && b == 0 {
                // "Which set?": 2, which the controller translates to 0x41.
                self.reply(&[if translated { 0x41 } else { 0x02 }]);
            }
            return;
        }
        match b {
            0xff => {
                self.queue.clear();
                self.scanning = true;
                self.reply(&[ACK, 0xaa]);
            }
            0xf2 => self.reply(&[ACK, 0xab, if translated { 0x41 } else { 0x83 }]),
            0xf4 => {
                self.scanning = true;
                self.reply(&[ACK]);
            }
            0xf5 | 0xf6 => {
                self.queue.clear();
                self.scanning = b == 0xf6;
                self.reply(&[ACK]);
            }
            0xed => {
                self.pending = Some(Pending::Leds);
                self.reply(&[ACK]);
            }
            0xf3 => {
                self.pending = Some(Pending::Typematic);
                self.reply(&[ACK]);
            }
            0xf0 => {
                self.pending = Some(Pending::ScanSet);
                self.reply(&[ACK]);
            }
            0xee => self.reply(&[0xee]),
            _ => self.reply(&[ACK]),
        }
    }

    fn reply(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.queue.len() >= KEYBOARD_QUEUE {
                self.queue.pop_back();
            }
            self.queue.push_back(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(bytes: &[u8], translated: bool) -> Vec<u8> {
        let mut k = Keyboard::new();
        let mut out = Vec::new();
        for e in keys_from_terminal(bytes) {
            assert!(k.press(e, translated));
            while let Some(b) = k.pop() {
                out.push(b);
            }
        }
        out
    }

    #[test]
    fn letters_shift_and_enter_in_set_1() {
        assert_eq!(codes(b"a", true), [0x1e, 0x9e]);
        assert_eq!(codes(b"A", true), [0x2a, 0x1e, 0x9e, 0xaa]);
        assert_eq!(codes(b"\r", true), [0x1c, 0x9c]);
        assert_eq!(codes(b"!", true), [0x2a, 0x02, 0x82, 0xaa]);
        assert_eq!(codes(&[0x7f], true), [0x0e, 0x8e]);
        assert_eq!(codes(&[0x03], true), [0x1d, 0x2e, 0xae, 0x9d], "Ctrl-C");
    }

    #[test]
    fn set_2_when_not_translated_and_extended_keys() {
        assert_eq!(codes(b"a", false), [0x1c, 0xf0, 0x1c]);
        assert_eq!(codes(b"\x1b[A", true), [0xe0, 0x48, 0xe0, 0xc8]);
        assert_eq!(codes(b"\x1b[3~", false), [0xe0, 0x71, 0xe0, 0xf0, 0x71]);
        assert_eq!(codes(b"\x1bOP", true), [0x3b, 0xbb]);
        assert_eq!(codes(b"\x1b", true), [0x01, 0x81], "a lone Escape");
    }

    #[test]
    fn commands_are_acknowledged() {
        let mut k = Keyboard::new();
        let drain = |k: &mut Keyboard| std::iter::from_fn(|| k.pop()).collect::<Vec<u8>>();
        k.command(0xff, true);
        assert_eq!(drain(&mut k), [0xfa, 0xaa]);
        k.command(0xf2, true);
        assert_eq!(drain(&mut k), [0xfa, 0xab, 0x41]);
        k.command(0xed, true);
        k.command(0x07, true);
        assert_eq!(drain(&mut k), [0xfa, 0xfa]);
        k.command(0xf0, true);
        k.command(0x00, true);
        assert_eq!(drain(&mut k), [0xfa, 0xfa, 0x41]);
        k.command(0xf5, true);
        assert!(!k.press(KeyEvent { key: ENTER, down: true }, true), "scanning off");
        k.command(0xf4, true);
        assert_eq!(drain(&mut k), [0xfa, 0xfa]);
        assert!(k.press(KeyEvent { key: ENTER, down: true }, true));
    }

    #[test]
    fn a_full_queue_refuses_whole_codes() {
        let mut k = Keyboard::new();
        let up = KeyEvent { key: UP, down: true };
        for _ in 0..KEYBOARD_QUEUE / 2 {
            assert!(k.press(up, true));
        }
        assert!(!k.press(up, true));
        assert_eq!(k.room(), 0);
    }
}
