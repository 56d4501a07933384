//! Port I/O devices and the bus that routes guest `in`/`out` to them.
//!
//! [`PortBus`] routes ports to boxed [`PortDevice`]s; [`PortBus::standard`] is the minimal
//! machine (COM1 output, isa-debug-exit). [`Platform`] is the whole PC of the
//! protected-mode machine: PIC, PIT, RTC, i8042 (with a keyboard on demand), COM1 with
//! input, the VGA text mode, PCI/POST/reset ports,
//! interrupt wiring and virtual time ([`clock`]).

pub mod clock;
pub mod console_input;
pub mod debug_exit;
pub mod i8042;
pub mod keyboard;
pub mod misc;
pub mod pic;
pub mod pit;
pub mod platform;
pub mod rtc;
pub mod uart;
pub mod vga;

pub use clock::{Clock, FakeClock, HostClock, Nanos};
pub use console_input::{ConsoleInput, ConsoleInputError, InputQueue, InputSource, WaitOutcome};
pub use debug_exit::DebugExit;
pub use i8042::I8042;
pub use misc::{PciHost, PostCode, SystemControlA};
pub use pic::Pic;
pub use pit::Pit;
pub use platform::{Platform, PlatformConfig, PlatformState, PlatformStats, PlatformWaker};
pub use rtc::Rtc;
pub use uart::{Uart16550, UartState};
pub use vga::{TextScreen, Vga, VgaRegs, VgaState};

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

/// First port of the COM1 UART.
pub const COM1_BASE: u16 = 0x3f8;
/// The isa-debug-exit port.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// What a port write asks of the VMM beyond the device's own state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEffect {
    None,
    /// The guest asked the VMM to end with this status (isa-debug-exit).
    Exit(u32),
    /// The guest pulsed the reset line (i8042 command 0xfe or output port, port 0x92
    /// bit 0, port 0xcf9): the VMM stops the guest, or resets the CPU and
    /// [`Platform::reset`]s the devices.
    Reset,
}

/// A device reached through port I/O. `size` is the access size in bytes (1, 2 or 4);
/// the bus masks values to it, so devices may return wider values than asked for.
pub trait PortDevice: Send {
    fn read(&mut self, port: u16, size: u8) -> u32;
    fn write(&mut self, port: u16, size: u8, value: u32) -> IoEffect;
    /// Pushes out buffered output (console). Called by [`PortBus::flush`].
    fn flush(&mut self) {}
}

/// All ones for an access of `size` bytes: what reads of an empty ISA bus return.
/// Sizes other than 1 and 2 are treated as 4.
pub fn size_mask(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

/// Number of 64-bit words in a bitset of all 65536 ports.
const PORT_WORDS: usize = 65536 / 64;

/// Routes port accesses to devices. A multi-byte access goes to the device that owns its
/// first port. Unclaimed ports read as all ones and ignore writes, like an empty bus.
pub struct PortBus {
    devices: Vec<Box<dyn PortDevice>>,
    /// Port → 1 + index into `devices`; 0 = unclaimed. O(1) routing on every access.
    owner: Box<[u16]>,
    /// Unclaimed ports already logged, so each is reported once.
    logged: Box<[u64; PORT_WORDS]>,
    accesses: u64,
}

impl Default for PortBus {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for PortBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortBus")
            .field("devices", &self.devices.len())
            .field("accesses", &self.accesses)
            .finish_non_exhaustive()
    }
}

impl PortBus {
    /// An empty bus: every port unclaimed.
    pub fn new() -> Self {
        Self {
            devices: Vec::new(),
            owner: vec![0u16; 65536].into_boxed_slice(),
            logged: Box::new([0u64; PORT_WORDS]),
            accesses: 0,
        }
    }

    /// The standard PC devices bt86 has so far: COM1 writing to `console`, and
    /// isa-debug-exit at 0xf4.
    pub fn standard(console: Box<dyn Write + Send>) -> Self {
        let mut bus = Self::new();
        bus.register(
            COM1_BASE,
            COM1_BASE + 7,
            Box::new(Uart16550::new(COM1_BASE, console)),
        );
        bus.register(DEBUG_EXIT_PORT, DEBUG_EXIT_PORT, Box::new(DebugExit::new()));
        bus
    }

    /// Gives ports `first..=last` to `dev`, taking them from any earlier owner.
    /// An empty range (`first > last`) registers nothing.
    pub fn register(&mut self, first: u16, last: u16, dev: Box<dyn PortDevice>) {
        if first > last {
            tracing::warn!(first, last, "empty port range; device not registered");
            return;
        }
        // More than 65535 devices cannot own distinct ports; refuse rather than wrap.
        let Ok(id) = u16::try_from(self.devices.len() + 1) else {
            tracing::warn!("too many port devices; device not registered");
            return;
        };
        self.devices.push(dev);
        for slot in &mut self.owner[usize::from(first)..=usize::from(last)] {
            if *slot != 0 {
                tracing::debug!(first, last, "port range overrides an earlier device");
            }
            *slot = id;
        }
    }

    /// Guest `in` of `size` bytes from `port`.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        self.accesses += 1;
        let mask = size_mask(size);
        match self.device(port) {
            Some(dev) => dev.read(port, size) & mask,
            None => {
                self.note_unclaimed(port, "read");
                mask
            }
        }
    }

    /// Guest `out` of `size` bytes to `port`.
    pub fn write(&mut self, port: u16, size: u8, value: u32) -> IoEffect {
        self.accesses += 1;
        let value = value & size_mask(size);
        match self.device(port) {
            Some(dev) => dev.write(port, size, value),
            None => {
                self.note_unclaimed(port, "write");
                IoEffect::None
            }
        }
    }

    /// Flushes every device's buffered output (call at exit and when the guest idles).
    pub fn flush(&mut self) {
        for dev in &mut self.devices {
            dev.flush();
        }
    }

    /// Number of port accesses so far (reads and writes, claimed or not).
    pub fn accesses(&self) -> u64 {
        self.accesses
    }

    fn device(&mut self, port: u16) -> Option<&mut Box<dyn PortDevice>> {
        let id = self.owner[usize::from(port)];
        self.devices.get_mut(usize::from(id).checked_sub(1)?)
    }

    fn note_unclaimed(&mut self, port: u16, what: &str) {
        let (word, bit) = (usize::from(port) / 64, 1u64 << (port % 64));
        if self.logged[word] & bit == 0 {
            self.logged[word] |= bit;
            tracing::debug!(
                port = format_args!("{port:#x}"),
                what,
                "access to unclaimed port"
            );
        }
    }
}

/// A cloneable in-memory `Write` target, so tests can capture console output.
#[derive(Debug, Clone, Default)]
pub struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of everything written so far.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }

    /// Everything written so far, as text (invalid UTF-8 replaced).
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(&self.lock()).into_owned()
    }

    /// Takes everything written so far, leaving the buffer empty.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.lock())
    }

    /// A panic elsewhere while holding the lock leaves the bytes intact; keep using them.
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (kind, port, size, value) of each access a probe saw.
    type AccessLog = Arc<Mutex<Vec<(char, u16, u8, u32)>>>;

    /// Records accesses; reads return a fixed pattern.
    #[derive(Default)]
    struct Probe {
        log: AccessLog,
    }

    impl PortDevice for Probe {
        fn read(&mut self, port: u16, size: u8) -> u32 {
            self.log.lock().unwrap().push(('r', port, size, 0));
            0x1234_5678
        }
        fn write(&mut self, port: u16, size: u8, value: u32) -> IoEffect {
            self.log.lock().unwrap().push(('w', port, size, value));
            IoEffect::None
        }
    }

    #[test]
    fn unclaimed_ports_float_high() {
        let mut bus = PortBus::new();
        assert_eq!(bus.read(0x80, 1), 0xff);
        assert_eq!(bus.read(0x80, 2), 0xffff);
        assert_eq!(bus.read(0x80, 4), 0xffff_ffff);
        assert_eq!(bus.read(0xffff, 1), 0xff);
        assert_eq!(bus.write(0x80, 1, 0x42), IoEffect::None);
        assert_eq!(bus.accesses(), 5);
        // The log-once bitset is set for the ports touched.
        assert_ne!(bus.logged[0x80 / 64] & (1 << (0x80 % 64)), 0);
        assert_ne!(bus.logged[PORT_WORDS - 1] & (1 << 63), 0);
    }

    #[test]
    fn routes_by_first_port_and_masks() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut bus = PortBus::new();
        bus.register(0x60, 0x64, Box::new(Probe { log: log.clone() }));
        assert_eq!(bus.read(0x60, 1), 0x78);
        assert_eq!(bus.read(0x64, 2), 0x5678);
        assert_eq!(bus.read(0x64, 4), 0x1234_5678);
        bus.write(0x62, 1, 0xabcd);
        bus.write(0x63, 2, 0xdead_beef);
        // An access starting just past the range is not the device's.
        assert_eq!(bus.read(0x65, 4), 0xffff_ffff);
        // One that starts inside but runs past the end still is.
        bus.write(0x64, 4, 7);
        let got = log.lock().unwrap().clone();
        assert_eq!(
            got,
            vec![
                ('r', 0x60, 1, 0),
                ('r', 0x64, 2, 0),
                ('r', 0x64, 4, 0),
                ('w', 0x62, 1, 0xcd),
                ('w', 0x63, 2, 0xbeef),
                ('w', 0x64, 4, 7),
            ]
        );
    }

    #[test]
    fn later_registration_wins_and_empty_range_ignored() {
        let a = Arc::new(Mutex::new(Vec::new()));
        let b = Arc::new(Mutex::new(Vec::new()));
        let mut bus = PortBus::new();
        bus.register(0x10, 0x1f, Box::new(Probe { log: a.clone() }));
        bus.register(0x18, 0x18, Box::new(Probe { log: b.clone() }));
        bus.register(0x30, 0x20, Box::new(Probe::default()));
        bus.read(0x17, 1);
        bus.read(0x18, 1);
        assert_eq!(bus.read(0x20, 1), 0xff);
        assert_eq!(a.lock().unwrap().len(), 1);
        assert_eq!(b.lock().unwrap().len(), 1);
    }

    #[test]
    fn standard_bus_console_and_exit() {
        let out = SharedBuffer::new();
        let mut bus = PortBus::standard(Box::new(out.clone()));
        for b in b"hi\n" {
            bus.write(COM1_BASE, 1, u32::from(*b));
        }
        assert_eq!(out.to_string_lossy(), "hi\n");
        assert_eq!(bus.read(COM1_BASE + 5, 1), 0x60);
        bus.write(COM1_BASE, 1, u32::from(b'x'));
        assert_eq!(bus.write(DEBUG_EXIT_PORT, 1, 3), IoEffect::Exit(3));
        bus.flush();
        assert_eq!(out.take(), b"hi\nx");
        assert!(out.contents().is_empty());
        assert_eq!(
            bus.write(DEBUG_EXIT_PORT, 4, 0x1_0000),
            IoEffect::Exit(0x1_0000)
        );
        assert_eq!(bus.write(DEBUG_EXIT_PORT, 1, 0x1ff), IoEffect::Exit(0xff));
    }

    #[test]
    fn shared_buffer_survives_poison() {
        let buf = SharedBuffer::new();
        let b2 = buf.clone();
        let _ = std::thread::spawn(move || {
            let _g = b2.0.lock().unwrap();
            panic!("poison");
        })
        .join();
        let mut w = buf.clone();
        w.write_all(b"ok").unwrap();
        assert_eq!(buf.contents(), b"ok");
    }
}
