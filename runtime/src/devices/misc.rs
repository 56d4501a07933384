//! Small fixed-function ports: the POST code port (0x80), system control port A (0x92),
//! and the PCI host bridge's configuration mechanism #1 (0xcf8–0xcff) with no devices
//! behind it, plus the reset control register at 0xcf9.

use super::{size_mask, IoEffect, PortDevice};

/// The POST diagnostic port; Linux also writes it as an I/O delay.
pub const POST_PORT: u16 = 0x80;
/// System control port A: fast A20 (bit 1) and fast reset (bit 0).
pub const PORT_A: u16 = 0x92;
/// PCI CONFIG_ADDRESS (32-bit accesses only).
pub const PCI_CONFIG_ADDRESS: u16 = 0xcf8;
/// The reset control register (byte accesses), inside the CONFIG_ADDRESS dword.
pub const RESET_CONTROL: u16 = 0xcf9;
/// PCI CONFIG_DATA, 0xcfc–0xcff.
pub const PCI_CONFIG_DATA: u16 = 0xcfc;

/// Port 0x80: writes are recorded and ignored; reads float high.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PostCode {
    last: Option<u8>,
}

impl PostCode {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last code the guest wrote.
    pub fn last(&self) -> Option<u8> {
        self.last
    }
}

impl PortDevice for PostCode {
    fn read(&mut self, _port: u16, size: u8) -> u32 {
        size_mask(size)
    }

    fn write(&mut self, _port: u16, _size: u8, value: u32) -> IoEffect {
        let code = value.to_le_bytes()[0];
        tracing::trace!(code = format_args!("{code:#04x}"), "POST code");
        self.last = Some(code);
        IoEffect::None
    }
}

/// Port 0x92. Setting bit 0 resets the machine; bit 1 (A20) is stored, A20 is never masked.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SystemControlA {
    value: u8,
}

impl Default for SystemControlA {
    fn default() -> Self {
        Self::new()
    }
}

impl SystemControlA {
    /// A20 enabled, as a BIOS leaves it.
    pub fn new() -> Self {
        Self { value: 0x02 }
    }
}

impl PortDevice for SystemControlA {
    fn read(&mut self, _port: u16, _size: u8) -> u32 {
        u32::from(self.value)
    }

    fn write(&mut self, _port: u16, _size: u8, value: u32) -> IoEffect {
        let v = value.to_le_bytes()[0];
        self.value = v & 0x02;
        if v & 0x01 != 0 {
            tracing::debug!("port 0x92 fast reset");
            return IoEffect::Reset;
        }
        IoEffect::None
    }
}

/// PCI configuration mechanism #1 with an empty bus: CONFIG_ADDRESS reads back what was
/// written (32-bit accesses at 0xcf8), CONFIG_DATA reads all ones ("no device") and
/// ignores writes. Byte and word accesses to 0xcf8–0xcfb are not configuration cycles
/// (that is how guests tell mechanism #1 from #2): they float, except the byte at 0xcf9,
/// the reset control register, where setting bit 2 resets the machine.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PciHost {
    address: u32,
    reset_control: u8,
}

impl PciHost {
    pub fn new() -> Self {
        Self::default()
    }
}

impl PortDevice for PciHost {
    fn read(&mut self, port: u16, size: u8) -> u32 {
        match (port, size) {
            (PCI_CONFIG_ADDRESS, 4) => self.address,
            (RESET_CONTROL, 1) => u32::from(self.reset_control),
            _ => size_mask(size),
        }
    }

    fn write(&mut self, port: u16, size: u8, value: u32) -> IoEffect {
        match (port, size) {
            (PCI_CONFIG_ADDRESS, 4) => self.address = value,
            (RESET_CONTROL, 1) => {
                let v = value.to_le_bytes()[0];
                self.reset_control = v & 0x0a;
                if v & 0x04 != 0 {
                    tracing::debug!(value = v, "reset through port 0xcf9");
                    return IoEffect::Reset;
                }
            }
            (0xcfc..=0xcff, _) => {
                tracing::trace!(
                    address = format_args!("{:#x}", self.address),
                    "PCI config write to no device"
                );
            }
            _ => {}
        }
        IoEffect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_code_is_ignored() {
        let mut p = PostCode::new();
        assert_eq!(p.write(POST_PORT, 1, 0x42), IoEffect::None);
        assert_eq!(p.last(), Some(0x42));
        assert_eq!(p.read(POST_PORT, 1), 0xff);
    }

    #[test]
    fn pci_has_no_devices() {
        let mut pci = PciHost::new();
        assert_eq!(pci.read(0xcf8, 4), 0);
        pci.write(0xcf8, 4, 0x8000_0000);
        assert_eq!(pci.read(0xcf8, 4), 0x8000_0000);
        pci.write(0xcf8, 4, 0x8000_1234);
        assert_eq!(
            pci.read(0xcf8, 4),
            0x8000_1234,
            "reads back what was written"
        );
        for (port, size, all_ones) in [
            (0xcfc, 4, 0xffff_ffff),
            (0xcfc, 2, 0xffff),
            (0xcfe, 2, 0xffff),
            (0xcff, 1, 0xff),
        ] {
            assert_eq!(pci.read(port, size), all_ones);
        }
        assert_eq!(pci.write(0xcfc, 4, 0), IoEffect::None);
        assert_eq!(pci.read(0xcfc, 4), 0xffff_ffff);
        // Linux's mechanism #2 probe: byte writes to 0xcf8/0xcfa do not touch the address.
        pci.write(0xcf8, 1, 0);
        pci.write(0xcfa, 1, 0);
        assert_eq!(pci.read(0xcf8, 1), 0xff);
        assert_eq!(pci.read(0xcf8, 4), 0x8000_1234);
    }

    #[test]
    fn reset_registers() {
        let mut pci = PciHost::new();
        assert_eq!(pci.write(0xcf9, 1, 0x02), IoEffect::None);
        assert_eq!(pci.read(0xcf9, 1), 0x02);
        assert_eq!(pci.write(0xcf9, 1, 0x06), IoEffect::Reset);
        let mut a = SystemControlA::new();
        assert_eq!(a.read(PORT_A, 1), 0x02);
        assert_eq!(a.write(PORT_A, 1, 0x00), IoEffect::None);
        assert_eq!(a.read(PORT_A, 1), 0x00);
        assert_eq!(a.write(PORT_A, 1, 0x03), IoEffect::Reset);
    }
}
