//! A 16550A UART (the PC's COM port), transmit side wired to a console writer.
//!
//! Transmission is instantaneous: the transmit holding register is always empty, so LSR
//! always shows THRE and TEMT. Output is buffered and written to the console at each
//! newline, when the buffer grows large, on [`PortDevice::flush`] and on drop, so nothing
//! is lost at exit. The receive side is a byte queue fed by [`Uart16550::push_input`]
//! (terminal input will use it); loopback mode (MCR bit 4) feeds it with transmitted bytes.

use std::collections::VecDeque;
use std::io::Write;

use super::{size_mask, IoEffect, PortDevice};

// Register offsets from the base port.
const RBR_THR_DLL: u16 = 0;
const IER_DLM: u16 = 1;
const IIR_FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const MSR: u16 = 6;
const SCR: u16 = 7;
const REGISTERS: u16 = 8;

const IER_RDA: u8 = 1 << 0; // received data available
const IER_THRE: u8 = 1 << 1; // transmit holding register empty
const IER_MASK: u8 = 0x0f;
const IIR_NONE: u8 = 0x01;
const IIR_THRE: u8 = 0x02;
const IIR_RDA: u8 = 0x04;
const IIR_FIFO_ENABLED: u8 = 0xc0;
const FCR_ENABLE: u8 = 1 << 0;
const FCR_CLEAR_RX: u8 = 1 << 1;
const LCR_DLAB: u8 = 1 << 7;
const MCR_OUT2: u8 = 1 << 3;
const MCR_LOOP: u8 = 1 << 4;
const MCR_MASK: u8 = 0x1f;
const LSR_DATA_READY: u8 = 1 << 0;
const LSR_THRE: u8 = 1 << 5;
const LSR_TEMT: u8 = 1 << 6;
/// Outside loopback the "cable" shows a connected terminal: DCD, DSR and CTS (as QEMU).
const MSR_CONNECTED: u8 = 0xb0;
/// Divisor after reset: 12, i.e. 9600 baud from the 1.8432 MHz clock.
const RESET_DIVISOR: u16 = 12;

/// Flush the output buffer at this size even without a newline.
const OUT_FLUSH_AT: usize = 4096;
/// Received bytes beyond this are dropped (a real 16550 would flag an overrun).
const RX_CAPACITY: usize = 4096;

/// One 16550A at `base..=base+7`.
pub struct Uart16550 {
    base: u16,
    console: Box<dyn Write + Send>,
    out: Vec<u8>,
    /// Set after the console fails once, so the failure is logged once.
    console_failed: bool,
    rx: VecDeque<u8>,
    ier: u8,
    fcr: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    divisor: u16,
    /// A THRE interrupt is pending (cleared by reading IIR or writing THR).
    thre_pending: bool,
}

impl Uart16550 {
    /// A UART at `base` in its reset state, transmitting to `console`.
    pub fn new(base: u16, console: Box<dyn Write + Send>) -> Self {
        Self {
            base,
            console,
            out: Vec::new(),
            console_failed: false,
            rx: VecDeque::new(),
            ier: 0,
            fcr: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            divisor: RESET_DIVISOR,
            thre_pending: false,
        }
    }

    /// Queues bytes as received from the line (terminal input).
    pub fn push_input(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.receive(b);
        }
    }

    /// Whether the UART drives its interrupt line: an interrupt is pending and, as on PC
    /// boards, MCR.OUT2 gates the line to the PIC (IRQ 4 for COM1).
    pub fn interrupt_pending(&self) -> bool {
        self.pending_iid() != IIR_NONE && self.mcr & MCR_OUT2 != 0
    }

    fn receive(&mut self, byte: u8) {
        if self.rx.len() < RX_CAPACITY {
            self.rx.push_back(byte);
        } else {
            tracing::debug!("UART receive queue full; byte dropped");
        }
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    /// Highest-priority pending interrupt identification (without the FIFO bits).
    fn pending_iid(&self) -> u8 {
        if self.ier & IER_RDA != 0 && !self.rx.is_empty() {
            IIR_RDA
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            IIR_THRE
        } else {
            IIR_NONE
        }
    }

    fn read_iir(&mut self) -> u8 {
        let iid = self.pending_iid();
        // Reading IIR while it reports THRE acknowledges that interrupt.
        if iid == IIR_THRE {
            self.thre_pending = false;
        }
        let fifo = if self.fcr & FCR_ENABLE != 0 {
            IIR_FIFO_ENABLED
        } else {
            0
        };
        iid | fifo
    }

    fn lsr(&self) -> u8 {
        let ready = if self.rx.is_empty() {
            0
        } else {
            LSR_DATA_READY
        };
        LSR_THRE | LSR_TEMT | ready
    }

    /// Modem status; in loopback the outputs of MCR come back as the inputs.
    fn msr(&self) -> u8 {
        if self.mcr & MCR_LOOP == 0 {
            return MSR_CONNECTED;
        }
        let m = self.mcr;
        // CTS←RTS, DSR←DTR, RI←OUT1, DCD←OUT2.
        ((m & 0x02) << 3) | ((m & 0x01) << 5) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
    }

    fn read_reg(&mut self, reg: u16) -> u8 {
        match reg {
            RBR_THR_DLL if self.dlab() => self.divisor.to_le_bytes()[0],
            RBR_THR_DLL => self.rx.pop_front().unwrap_or(0),
            IER_DLM if self.dlab() => self.divisor.to_le_bytes()[1],
            IER_DLM => self.ier,
            IIR_FCR => self.read_iir(),
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => self.lsr(),
            MSR => self.msr(),
            SCR => self.scr,
            _ => 0xff,
        }
    }

    fn write_reg(&mut self, reg: u16, v: u8) {
        match reg {
            RBR_THR_DLL if self.dlab() => {
                self.divisor = u16::from_le_bytes([v, self.divisor.to_le_bytes()[1]])
            }
            RBR_THR_DLL => self.transmit(v),
            IER_DLM if self.dlab() => {
                self.divisor = u16::from_le_bytes([self.divisor.to_le_bytes()[0], v])
            }
            IER_DLM => self.write_ier(v),
            IIR_FCR => self.write_fcr(v),
            LCR => self.lcr = v,
            MCR => self.mcr = v & MCR_MASK,
            SCR => self.scr = v,
            // LSR and MSR writes are factory-test only; ignore.
            _ => {}
        }
    }

    fn write_ier(&mut self, v: u8) {
        let v = v & IER_MASK;
        // Enabling THRE interrupts while the transmitter is empty raises one at once.
        if v & IER_THRE != 0 && self.ier & IER_THRE == 0 {
            self.thre_pending = true;
        }
        self.ier = v;
    }

    fn write_fcr(&mut self, v: u8) {
        if v & FCR_CLEAR_RX != 0 {
            self.rx.clear();
        }
        // The clear bits are self-clearing; only enable/DMA/trigger bits stay.
        self.fcr = v & 0xc9;
    }

    fn transmit(&mut self, byte: u8) {
        if self.mcr & MCR_LOOP != 0 {
            self.receive(byte);
        } else {
            self.out.push(byte);
            if byte == b'\n' || self.out.len() >= OUT_FLUSH_AT {
                self.flush_output();
            }
        }
        // The byte left at once, so THR is empty again.
        self.thre_pending = true;
    }

    fn flush_output(&mut self) {
        if self.out.is_empty() {
            return;
        }
        if !self.console_failed {
            let res = self
                .console
                .write_all(&self.out)
                .and_then(|()| self.console.flush());
            if let Err(e) = res {
                tracing::warn!(error = %e, "console write failed; further UART output is dropped");
                self.console_failed = true;
            }
        }
        self.out.clear();
    }

    /// Register index for byte `i` of an access at `port`, if it is one of ours.
    fn reg_of(&self, port: u16, i: u8) -> Option<u16> {
        let reg = port.wrapping_sub(self.base).checked_add(u16::from(i))?;
        (reg < REGISTERS).then_some(reg)
    }
}

impl PortDevice for Uart16550 {
    /// A wide access covers consecutive registers, as on the ISA bus; bytes past the
    /// UART's eight ports read as all ones.
    fn read(&mut self, port: u16, size: u8) -> u32 {
        let mut bytes = [0xffu8; 4];
        for i in 0..size.min(4) {
            if let Some(reg) = self.reg_of(port, i) {
                bytes[usize::from(i)] = self.read_reg(reg);
            }
        }
        u32::from_le_bytes(bytes) & size_mask(size)
    }

    fn write(&mut self, port: u16, size: u8, value: u32) -> IoEffect {
        let bytes = value.to_le_bytes();
        for i in 0..size.min(4) {
            if let Some(reg) = self.reg_of(port, i) {
                self.write_reg(reg, bytes[usize::from(i)]);
            }
        }
        IoEffect::None
    }

    fn flush(&mut self) {
        self.flush_output();
    }
}

impl Drop for Uart16550 {
    fn drop(&mut self) {
        self.flush_output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::SharedBuffer;

    const B: u16 = 0x3f8;

    fn uart() -> (Uart16550, SharedBuffer) {
        let out = SharedBuffer::new();
        (Uart16550::new(B, Box::new(out.clone())), out)
    }

    fn rd(u: &mut Uart16550, reg: u16) -> u8 {
        u.read(B + reg, 1) as u8
    }

    fn wr(u: &mut Uart16550, reg: u16, v: u8) {
        assert_eq!(u.write(B + reg, 1, u32::from(v)), IoEffect::None);
    }

    #[test]
    fn reset_state() {
        let (mut u, _) = uart();
        assert_eq!(rd(&mut u, IER_DLM), 0);
        assert_eq!(rd(&mut u, IIR_FCR), 0x01);
        assert_eq!(rd(&mut u, LCR), 0);
        assert_eq!(rd(&mut u, MCR), 0);
        assert_eq!(rd(&mut u, LSR), 0x60);
        assert_eq!(rd(&mut u, MSR), 0xb0);
        assert_eq!(rd(&mut u, SCR), 0);
        assert_eq!(rd(&mut u, RBR_THR_DLL), 0);
        assert!(!u.interrupt_pending());
    }

    #[test]
    fn output_is_line_buffered_and_flushed() {
        let (mut u, out) = uart();
        for b in b"ab" {
            wr(&mut u, 0, *b);
        }
        assert!(out.contents().is_empty(), "buffered until newline");
        wr(&mut u, 0, b'\n');
        assert_eq!(out.contents(), b"ab\n");
        wr(&mut u, 0, b'c');
        u.flush();
        assert_eq!(out.contents(), b"ab\nc");
        wr(&mut u, 0, b'd');
        drop(u);
        assert_eq!(out.contents(), b"ab\ncd", "drop flushes");
    }

    #[test]
    fn long_lines_flush_without_newline() {
        let (mut u, out) = uart();
        for _ in 0..OUT_FLUSH_AT {
            wr(&mut u, 0, b'x');
        }
        assert_eq!(out.contents().len(), OUT_FLUSH_AT);
    }

    #[test]
    fn divisor_latch_and_scratch() {
        let (mut u, out) = uart();
        wr(&mut u, LCR, 0x83); // DLAB, 8N1
        assert_eq!(rd(&mut u, 0), 12);
        assert_eq!(rd(&mut u, 1), 0);
        wr(&mut u, 0, 0x01);
        wr(&mut u, 1, 0x02);
        assert_eq!(rd(&mut u, 0), 0x01);
        assert_eq!(rd(&mut u, 1), 0x02);
        wr(&mut u, LCR, 0x03);
        assert_eq!(rd(&mut u, LCR), 0x03);
        assert_eq!(rd(&mut u, 1), 0, "IER untouched by divisor writes");
        u.flush();
        assert!(out.contents().is_empty(), "DLL writes are not output");
        wr(&mut u, SCR, 0x5a);
        assert_eq!(rd(&mut u, SCR), 0x5a);
        // LSR/MSR writes are ignored.
        wr(&mut u, LSR, 0);
        assert_eq!(rd(&mut u, LSR), 0x60);
    }

    #[test]
    fn fifo_bits_in_iir() {
        let (mut u, _) = uart();
        wr(&mut u, IIR_FCR, 0x07); // enable + clear both FIFOs
        assert_eq!(rd(&mut u, IIR_FCR), 0xc1);
        wr(&mut u, IIR_FCR, 0);
        assert_eq!(rd(&mut u, IIR_FCR), 0x01);
    }

    #[test]
    fn thre_interrupt() {
        let (mut u, _) = uart();
        wr(&mut u, MCR, MCR_OUT2);
        wr(&mut u, IER_DLM, IER_THRE);
        assert!(u.interrupt_pending());
        assert_eq!(rd(&mut u, IIR_FCR), 0x02);
        assert_eq!(rd(&mut u, IIR_FCR), 0x01, "IIR read acknowledged it");
        assert!(!u.interrupt_pending());
        wr(&mut u, 0, b'x');
        assert_eq!(rd(&mut u, IIR_FCR), 0x02, "transmit re-arms it");
        assert_eq!(rd(&mut u, IER_DLM), IER_THRE);
    }

    #[test]
    fn input_and_data_ready() {
        let (mut u, _) = uart();
        u.push_input(b"ok");
        assert_eq!(rd(&mut u, LSR), 0x61);
        wr(&mut u, IER_DLM, IER_RDA);
        assert_eq!(rd(&mut u, IIR_FCR), 0x04);
        assert_eq!(rd(&mut u, 0), b'o');
        assert_eq!(rd(&mut u, 0), b'k');
        assert_eq!(rd(&mut u, LSR), 0x60);
        assert_eq!(rd(&mut u, IIR_FCR), 0x01);
        u.push_input(b"z");
        wr(&mut u, IIR_FCR, FCR_ENABLE | FCR_CLEAR_RX);
        assert_eq!(rd(&mut u, LSR), 0x60, "FIFO clear drops input");
    }

    #[test]
    fn loopback() {
        let (mut u, out) = uart();
        wr(&mut u, MCR, MCR_LOOP | 0x0a); // loop + OUT2 + RTS: Linux's probe
        assert_eq!(rd(&mut u, MSR) & 0xf0, 0x90);
        wr(&mut u, MCR, MCR_LOOP | 0x0f);
        assert_eq!(rd(&mut u, MSR), 0xf0);
        wr(&mut u, 0, 0x55);
        assert_eq!(rd(&mut u, LSR) & 1, 1);
        assert_eq!(rd(&mut u, 0), 0x55);
        u.flush();
        assert!(out.contents().is_empty(), "loopback output stays inside");
        wr(&mut u, MCR, 0xff);
        assert_eq!(rd(&mut u, MCR), 0x1f);
    }

    #[test]
    fn wide_accesses_span_registers() {
        let (mut u, out) = uart();
        // 16-bit read at base+5: LSR then MSR.
        assert_eq!(u.read(B + 5, 2), 0xb060);
        // 32-bit read at base+6: MSR, SCR, then two bytes past the UART.
        assert_eq!(u.read(B + 6, 4), 0xffff_00b0);
        // 16-bit write at base: THR 'h', IER 0.
        u.write(B, 2, u32::from(b'h'));
        u.flush();
        assert_eq!(out.contents(), b"h");
    }

    #[test]
    fn failing_console_does_not_panic() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("gone"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut u = Uart16550::new(B, Box::new(Broken));
        for b in b"a\nb\n" {
            wr(&mut u, 0, *b);
        }
        u.flush();
    }
}
