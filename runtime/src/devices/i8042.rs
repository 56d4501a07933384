//! The i8042 keyboard controller (data 0x60, status/command 0x64), with no mouse and,
//! unless one is attached ([`I8042::attach_keyboard`], for `--display vga`), no keyboard.
//! bt86 needs it for the reset line (command 0xfe, or output port bit 0 through command
//! 0xd1), so that drivers probing it find a sane controller, and for the keyboard.
//!
//! Controller commands answer at once (the input buffer is never busy). Bytes sent to an
//! absent keyboard or mouse come back as 0xfe with the status register's timeout bit, what
//! a controller reports when no device answers. An attached keyboard
//! ([`super::keyboard`]) answers its commands and sends scan codes, translated to set 1
//! while the command byte's translate bit is set; its bytes enter the output buffer one at
//! a time as the guest reads them (and not while the command byte disables the keyboard). The output buffer holds one byte; reading
//! port 0x60 with it empty returns the last byte again. IRQ 1 / IRQ 12 are raised while
//! the output buffer holds a keyboard / mouse byte and the command byte enables them.

use super::keyboard::{KeyEvent, Keyboard};
use super::IoEffect;

/// The data port.
pub const I8042_DATA: u16 = 0x60;
/// The status (read) / command (write) port.
pub const I8042_COMMAND: u16 = 0x64;

const STATUS_OBF: u8 = 0x01;
const STATUS_SYS: u8 = 0x04;
const STATUS_CMD: u8 = 0x08;
const STATUS_UNLOCKED: u8 = 0x10;
const STATUS_AUX_OBF: u8 = 0x20;
const STATUS_TIMEOUT: u8 = 0x40;

const CMD_KBD_INT: u8 = 0x01;
const CMD_AUX_INT: u8 = 0x02;
const CMD_SYS: u8 = 0x04;
const CMD_KBD_DISABLE: u8 = 0x10;
const CMD_AUX_DISABLE: u8 = 0x20;
const CMD_TRANSLATE: u8 = 0x40;

const OUTPORT_RESET: u8 = 0x01; // active low: 0 holds the CPU in reset
const OUTPORT_A20: u8 = 0x02;

/// What the device at the other end of a byte in the output buffer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Source {
    Keyboard,
    Aux,
}

/// The keyboard controller.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct I8042 {
    command_byte: u8,
    output_port: u8,
    out: Option<(u8, Source)>,
    last_out: u8,
    timeout: bool,
    /// The last write went to the command port.
    last_was_command: bool,
    /// A command waiting for its data byte at port 0x60.
    awaiting: Option<u8>,
    keyboard: Option<Keyboard>,
}

impl Default for I8042 {
    fn default() -> Self {
        Self::new()
    }
}

impl I8042 {
    /// The controller as a BIOS leaves it: self-test passed (system flag), keyboard
    /// interrupt and scan-code translation on, A20 enabled.
    pub fn new() -> Self {
        Self {
            command_byte: CMD_KBD_INT | CMD_SYS | CMD_TRANSLATE,
            output_port: OUTPORT_RESET | OUTPORT_A20,
            out: None,
            last_out: 0,
            timeout: false,
            last_was_command: false,
            awaiting: None,
            keyboard: None,
        }
    }

    /// Plugs a keyboard into the keyboard port.
    pub fn attach_keyboard(&mut self) {
        self.keyboard = Some(Keyboard::new());
    }

    /// Whether a keyboard is attached.
    pub fn has_keyboard(&self) -> bool {
        self.keyboard.is_some()
    }

    /// Room in the keyboard's queue, in bytes (0 without a keyboard).
    pub fn key_room(&self) -> usize {
        self.keyboard.as_ref().map_or(0, Keyboard::room)
    }

    /// Key events from the host; returns how many were queued (stops at the first that
    /// does not fit).
    pub fn push_keys(&mut self, events: &[KeyEvent]) -> usize {
        let translated = self.command_byte & CMD_TRANSLATE != 0;
        let Some(k) = self.keyboard.as_mut() else { return 0 };
        let n = events.iter().take_while(|e| k.press(**e, translated)).count();
        self.refill();
        n
    }

    /// Moves the keyboard's next byte into an empty output buffer.
    fn refill(&mut self) {
        if self.out.is_some() || self.command_byte & CMD_KBD_DISABLE != 0 {
            return;
        }
        if let Some(b) = self.keyboard.as_mut().and_then(Keyboard::pop) {
            self.out = Some((b, Source::Keyboard));
        }
    }

    /// Guest read of port 0x60 or 0x64.
    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            I8042_DATA => {
                if let Some((b, _)) = self.out.take() {
                    self.last_out = b;
                    self.timeout = false;
                }
                let b = self.last_out;
                self.refill();
                b
            }
            I8042_COMMAND => self.status(),
            _ => 0xff,
        }
    }

    /// Guest write to port 0x60 or 0x64.
    pub fn write(&mut self, port: u16, v: u8) -> IoEffect {
        match port {
            I8042_DATA => {
                self.last_was_command = false;
                match self.awaiting.take() {
                    Some(cmd) => self.command_data(cmd, v),
                    None => {
                        let translated = self.command_byte & CMD_TRANSLATE != 0;
                        match self.keyboard.as_mut() {
                            Some(k) => {
                                k.command(v, translated);
                                self.refill();
                            }
                            None => {
                                tracing::trace!(byte = v, "byte for the keyboard; none attached");
                                self.no_device(Source::Keyboard);
                            }
                        }
                        IoEffect::None
                    }
                }
            }
            I8042_COMMAND => {
                self.last_was_command = true;
                self.awaiting = None;
                let effect = self.command(v);
                self.refill();
                effect
            }
            _ => IoEffect::None,
        }
    }

    /// IRQ 1: a keyboard byte waits and the command byte enables its interrupt.
    pub fn keyboard_irq(&self) -> bool {
        matches!(self.out, Some((_, Source::Keyboard))) && self.command_byte & CMD_KBD_INT != 0
    }

    /// IRQ 12: a mouse byte waits and the command byte enables its interrupt.
    pub fn aux_irq(&self) -> bool {
        matches!(self.out, Some((_, Source::Aux))) && self.command_byte & CMD_AUX_INT != 0
    }

    /// Whether the A20 gate (output port bit 1) is enabled. bt86 never masks A20.
    pub fn a20_enabled(&self) -> bool {
        self.output_port & OUTPORT_A20 != 0
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_UNLOCKED;
        match self.out {
            Some((_, Source::Keyboard)) => s |= STATUS_OBF,
            Some((_, Source::Aux)) => s |= STATUS_OBF | STATUS_AUX_OBF,
            None => {}
        }
        if self.command_byte & CMD_SYS != 0 {
            s |= STATUS_SYS;
        }
        if self.last_was_command {
            s |= STATUS_CMD;
        }
        if self.timeout {
            s |= STATUS_TIMEOUT;
        }
        s
    }

    fn reply(&mut self, b: u8) {
        self.out = Some((b, Source::Keyboard));
    }

    fn no_device(&mut self, source: Source) {
        self.out = Some((0xfe, source));
        self.timeout = true;
    }

    fn command(&mut self, cmd: u8) -> IoEffect {
        match cmd {
            0x20 => self.reply(self.command_byte),
            // Other internal RAM bytes read as 0.
            0x21..=0x3f => self.reply(0),
            0x60..=0x7f | 0xd1..=0xd4 => self.awaiting = Some(cmd),
            0xa4 => self.reply(0xf1), // no password installed
            0xa7 => self.command_byte |= CMD_AUX_DISABLE,
            0xa8 => self.command_byte &= !CMD_AUX_DISABLE,
            0xa9 | 0xab => self.reply(0x00), // interface tests pass
            0xaa => {
                self.command_byte |= CMD_SYS;
                self.reply(0x55);
            }
            0xad => self.command_byte |= CMD_KBD_DISABLE,
            0xae => self.command_byte &= !CMD_KBD_DISABLE,
            0xd0 => self.reply(self.output_port),
            0xdd => self.output_port &= !OUTPORT_A20,
            0xdf => self.output_port |= OUTPORT_A20,
            // Pulse output port lines 0–3 low for those bits clear; line 0 is reset.
            0xf0..=0xff if cmd & 0x01 == 0 => {
                tracing::debug!(cmd, "i8042 pulses the reset line");
                return IoEffect::Reset;
            }
            0xf0..=0xff => {}
            _ => tracing::debug!(cmd, "unsupported i8042 command ignored"),
        }
        IoEffect::None
    }

    fn command_data(&mut self, cmd: u8, v: u8) -> IoEffect {
        match cmd {
            0x60 => {
                self.command_byte = v;
                self.refill();
            }
            0xd1 => {
                self.output_port = v;
                if v & OUTPORT_A20 == 0 {
                    tracing::debug!("guest disabled A20 through the i8042; not emulated");
                }
                if v & OUTPORT_RESET == 0 {
                    tracing::debug!("i8042 output port drives reset");
                    self.output_port |= OUTPORT_RESET;
                    return IoEffect::Reset;
                }
            }
            0xd2 => self.out = Some((v, Source::Keyboard)),
            0xd3 => self.out = Some((v, Source::Aux)),
            0xd4 => {
                tracing::trace!(byte = v, "byte for the mouse; none attached");
                self.no_device(Source::Aux);
            }
            _ => {} // 0x61..=0x7f: other internal RAM bytes, not kept
        }
        IoEffect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_self_test() {
        let mut k = I8042::new();
        assert_eq!(k.read(I8042_COMMAND), STATUS_UNLOCKED | STATUS_SYS);
        assert_eq!(k.read(I8042_DATA), 0, "empty: 0 before any byte");
        assert_eq!(k.write(I8042_COMMAND, 0xaa), IoEffect::None);
        assert_eq!(
            k.read(I8042_COMMAND) & (STATUS_OBF | STATUS_CMD),
            STATUS_OBF | STATUS_CMD
        );
        assert!(k.keyboard_irq());
        assert_eq!(k.read(I8042_DATA), 0x55);
        assert_eq!(k.read(I8042_COMMAND) & STATUS_OBF, 0);
        assert!(!k.keyboard_irq());
        assert_eq!(k.read(I8042_DATA), 0x55, "empty: the last byte again");
    }

    #[test]
    fn command_byte_read_write() {
        let mut k = I8042::new();
        k.write(I8042_COMMAND, 0x20);
        assert_eq!(k.read(I8042_DATA), 0x45);
        k.write(I8042_COMMAND, 0x60);
        k.write(I8042_DATA, 0x03);
        assert_eq!(
            k.read(I8042_COMMAND) & STATUS_SYS,
            0,
            "system flag follows the command byte"
        );
        k.write(I8042_COMMAND, 0xad);
        k.write(I8042_COMMAND, 0xa7);
        k.write(I8042_COMMAND, 0x20);
        assert_eq!(k.read(I8042_DATA), 0x33);
        k.write(I8042_COMMAND, 0xae);
        k.write(I8042_COMMAND, 0xa8);
        k.write(I8042_COMMAND, 0x20);
        assert_eq!(k.read(I8042_DATA), 0x03);
    }

    #[test]
    fn reset_by_pulse_and_output_port() {
        let mut k = I8042::new();
        assert_eq!(k.write(I8042_COMMAND, 0xfe), IoEffect::Reset);
        assert_eq!(
            k.write(I8042_COMMAND, 0xff),
            IoEffect::None,
            "pulses nothing"
        );
        assert_eq!(k.write(I8042_COMMAND, 0xfc), IoEffect::Reset);
        k.write(I8042_COMMAND, 0xd0);
        assert_eq!(k.read(I8042_DATA), 0x03);
        k.write(I8042_COMMAND, 0xd1);
        assert_eq!(k.write(I8042_DATA, 0x03), IoEffect::None);
        k.write(I8042_COMMAND, 0xd1);
        assert_eq!(k.write(I8042_DATA, 0x00), IoEffect::Reset);
        assert!(!k.a20_enabled());
        k.write(I8042_COMMAND, 0xdf);
        assert!(k.a20_enabled());
    }

    #[test]
    fn absent_devices_time_out() {
        let mut k = I8042::new();
        k.write(I8042_DATA, 0xff); // keyboard reset command
        assert_eq!(
            k.read(I8042_COMMAND) & (STATUS_OBF | STATUS_TIMEOUT),
            STATUS_OBF | STATUS_TIMEOUT
        );
        assert!(k.keyboard_irq());
        assert_eq!(k.read(I8042_DATA), 0xfe);
        assert_eq!(k.read(I8042_COMMAND) & STATUS_TIMEOUT, 0);
        k.write(I8042_COMMAND, 0x60);
        k.write(I8042_DATA, 0x47); // both interrupts
        k.write(I8042_COMMAND, 0xd4);
        k.write(I8042_DATA, 0xf2);
        assert_eq!(k.read(I8042_COMMAND) & STATUS_AUX_OBF, STATUS_AUX_OBF);
        assert!(k.aux_irq() && !k.keyboard_irq());
        assert_eq!(k.read(I8042_DATA), 0xfe);
        // Controller loopback of the aux port.
        k.write(I8042_COMMAND, 0xd3);
        k.write(I8042_DATA, 0x5a);
        assert!(k.aux_irq());
        assert_eq!(k.read(I8042_DATA), 0x5a);
    }

    #[test]
    fn attached_keyboard_sends_translated_scan_codes_with_irq_1() {
        use crate::devices::keyboard::keys_from_terminal;
        let mut k = I8042::new();
        assert_eq!(k.key_room(), 0, "no keyboard yet");
        k.attach_keyboard();
        // Reset as a driver does: ACK, then the self-test result.
        k.write(I8042_DATA, 0xff);
        assert_eq!(k.read(I8042_DATA), 0xfa);
        assert_eq!(k.read(I8042_DATA), 0xaa);
        assert_eq!(k.read(I8042_COMMAND) & (STATUS_OBF | STATUS_TIMEOUT), 0);
        assert_eq!(k.push_keys(&keys_from_terminal(b"hi")), 4);
        assert!(k.keyboard_irq());
        let got: Vec<u8> = (0..4).map(|_| k.read(I8042_DATA)).collect();
        assert_eq!(got, [0x23, 0xa3, 0x17, 0x97]);
        assert!(!k.keyboard_irq());
        // Disabled by the controller: bytes wait.
        k.write(I8042_COMMAND, 0xad);
        k.push_keys(&keys_from_terminal(b"a"));
        assert_eq!(k.read(I8042_COMMAND) & STATUS_OBF, 0);
        k.write(I8042_COMMAND, 0xae);
        assert_eq!(k.read(I8042_DATA), 0x1e);
        // Translation off: set 2.
        k.read(I8042_DATA);
        k.write(I8042_COMMAND, 0x60);
        k.write(I8042_DATA, 0x01);
        k.push_keys(&keys_from_terminal(b"a"));
        let got: Vec<u8> = (0..3).map(|_| k.read(I8042_DATA)).collect();
        assert_eq!(got, [0x1c, 0xf0, 0x1c]);
    }

    #[test]
    fn hostile_sequences_do_not_panic() {
        let mut k = I8042::new();
        for a in 0..=255u8 {
            for b in [0u8, 0x5a, 0xff, a] {
                let _ = k.write(I8042_COMMAND, a);
                let _ = k.write(I8042_DATA, b);
                let _ = k.read(I8042_DATA);
                let _ = k.read(I8042_COMMAND);
            }
        }
        assert_eq!(k.read(0x61), 0xff);
    }
}
