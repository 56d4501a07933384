//! isa-debug-exit: a guest write of `v` asks the VMM to exit with status `v`.
//!
//! QEMU's device of the same name exits with `(v << 1) | 1`; bt86 hands the raw value up
//! and leaves the mapping to an exit status to the caller.

use super::{size_mask, IoEffect, PortDevice};

/// The isa-debug-exit device (at 0xf4 on the standard bus).
#[derive(Debug, Default)]
pub struct DebugExit;

impl DebugExit {
    pub fn new() -> Self {
        Self
    }
}

impl PortDevice for DebugExit {
    /// Nothing to read: all ones, like an empty bus.
    fn read(&mut self, _port: u16, size: u8) -> u32 {
        size_mask(size)
    }

    fn write(&mut self, port: u16, size: u8, value: u32) -> IoEffect {
        tracing::debug!(port, size, value, "guest requested exit");
        IoEffect::Exit(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_exits_with_value() {
        let mut d = DebugExit::new();
        assert_eq!(d.write(0xf4, 1, 0), IoEffect::Exit(0));
        assert_eq!(d.write(0xf4, 2, 0x1234), IoEffect::Exit(0x1234));
        assert_eq!(d.write(0xf4, 4, 0xdead_beef), IoEffect::Exit(0xdead_beef));
    }

    #[test]
    fn reads_are_all_ones() {
        let mut d = DebugExit::new();
        assert_eq!(d.read(0xf4, 1), 0xff);
        assert_eq!(d.read(0xf4, 2), 0xffff);
        assert_eq!(d.read(0xf4, 4), 0xffff_ffff);
    }
}
