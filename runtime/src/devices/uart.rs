//! A 16550A UART (the PC's COM port), transmit side wired to a console writer.
//!
//! Transmission is instantaneous: the transmit holding register is always empty, so LSR
//! always shows THRE and TEMT. Output is buffered and written to the console at each
//! newline, when the buffer grows large, on [`PortDevice::flush`] and on drop, so nothing
//! is lost at exit.
//!
//! Receive: bytes from the line ([`Uart16550::push_input`], fed from the terminal by the
//! platform, or the transmitter in loopback mode) go to the receive FIFO: 16 bytes with
//! FIFOs enabled (FCR bit 0), the single receive buffer register otherwise. A byte that
//! arrives when it is full is lost and sets the overrun bit in LSR (cleared by reading
//! LSR). [`Uart16550::rx_room`] tells a feeder how much fits, so host input can wait
//! upstream instead of being lost (0 in loopback, where the line input is disconnected).
//!
//! Interrupts, by IIR priority: receiver line status (overrun; IER bit 2), received data
//! at the FIFO trigger level (IER bit 0), character timeout (data below the trigger level;
//! raised at once, since no character time passes here), transmitter empty (IER bit 1).
//! Modem status interrupts never occur (the modem lines do not change).

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
const IER_RLS: u8 = 1 << 2; // receiver line status
const IER_MASK: u8 = 0x0f;
const IIR_NONE: u8 = 0x01;
const IIR_THRE: u8 = 0x02;
const IIR_RDA: u8 = 0x04;
const IIR_RLS: u8 = 0x06;
const IIR_CTI: u8 = 0x0c;
const IIR_FIFO_ENABLED: u8 = 0xc0;
const FCR_ENABLE: u8 = 1 << 0;
const FCR_CLEAR_RX: u8 = 1 << 1;
const LCR_DLAB: u8 = 1 << 7;
const MCR_OUT2: u8 = 1 << 3;
const MCR_LOOP: u8 = 1 << 4;
const MCR_MASK: u8 = 0x1f;
const LSR_DATA_READY: u8 = 1 << 0;
const LSR_OVERRUN: u8 = 1 << 1;
const LSR_THRE: u8 = 1 << 5;
const LSR_TEMT: u8 = 1 << 6;
/// Outside loopback the "cable" shows a connected terminal: DCD, DSR and CTS (as QEMU).
const MSR_CONNECTED: u8 = 0xb0;
/// Divisor after reset: 12, i.e. 9600 baud from the 1.8432 MHz clock.
const RESET_DIVISOR: u16 = 12;

/// Flush the output buffer at this size even without a newline.
const OUT_FLUSH_AT: usize = 4096;
/// Depth of the receive FIFO of a 16550A.
pub const RX_FIFO_DEPTH: usize = 16;

/// Counters of one UART.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UartStats {
    /// Bytes the guest transmitted to the console (loopback excluded).
    pub tx_bytes: u64,
    /// Bytes received from the line into the FIFO (loopback included).
    pub rx_bytes: u64,
    /// Bytes lost to a full receive FIFO.
    pub rx_overruns: u64,
}

/// A UART's registers and receive FIFO: its whole state, as a checkpoint keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UartState {
    rx: VecDeque<u8>,
    /// LSR error bits (overrun), cleared by reading LSR.
    lsr_errors: u8,
    stats: UartStats,
    ier: u8,
    fcr: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    divisor: u16,
    /// A THRE interrupt is pending (cleared by reading IIR or writing THR).
    thre_pending: bool,
}

impl Default for UartState {
    /// The power-on register state.
    fn default() -> Self {
        Self {
            rx: VecDeque::with_capacity(RX_FIFO_DEPTH),
            lsr_errors: 0,
            stats: UartStats::default(),
            ier: 0,
            fcr: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            divisor: RESET_DIVISOR,
            thre_pending: false,
        }
    }
}

/// One 16550A at `base..=base+7`.
pub struct Uart16550 {
    base: u16,
    console: Box<dyn Write + Send>,
    out: Vec<u8>,
    /// Set after the console fails once, so the failure is logged once.
    console_failed: bool,
    r: UartState,
}

impl Uart16550 {
    /// A UART at `base` in its reset state, transmitting to `console`.
    pub fn new(base: u16, console: Box<dyn Write + Send>) -> Self {
        Self { base, console, out: Vec::new(), console_failed: false, r: UartState::default() }
    }

    /// Bytes received from the line (terminal input), as if they arrived one after the
    /// other: those that find the receive FIFO full are lost (overrun). Ignored in
    /// loopback mode, where the line input is disconnected.
    pub fn push_input(&mut self, bytes: &[u8]) {
        if self.r.mcr & MCR_LOOP != 0 {
            return;
        }
        for &b in bytes {
            self.receive(b);
        }
    }

    /// How many bytes the line can deliver now without an overrun.
    pub fn rx_room(&self) -> usize {
        if self.r.mcr & MCR_LOOP != 0 {
            return 0;
        }
        self.rx_capacity().saturating_sub(self.r.rx.len())
    }

    /// Counters so far.
    pub fn stats(&self) -> UartStats {
        self.r.stats
    }

    /// Back to the power-on register state (the console and counters are kept; buffered
    /// output is flushed).
    pub fn reset(&mut self) {
        self.flush_output();
        let stats = self.r.stats;
        self.r = UartState { stats, ..UartState::default() };
    }

    /// The registers and the receive FIFO, for a checkpoint (buffered output is
    /// flushed first: it belongs to the console, not to the UART).
    pub fn save(&mut self) -> UartState {
        self.flush_output();
        self.r.clone()
    }

    /// Takes the state `save` gave (the console stays this UART's); a receive FIFO
    /// longer than the hardware's is cut to it.
    pub fn restore(&mut self, mut s: UartState) {
        s.rx.truncate(RX_FIFO_DEPTH);
        self.r = s;
    }

    /// Whether the UART drives its interrupt line: an interrupt is pending and, as on PC
    /// boards, MCR.OUT2 gates the line to the PIC (IRQ 4 for COM1).
    pub fn interrupt_pending(&self) -> bool {
        self.pending_iid() != IIR_NONE && self.r.mcr & MCR_OUT2 != 0
    }

    fn fifo_enabled(&self) -> bool {
        self.r.fcr & FCR_ENABLE != 0
    }

    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled() {
            RX_FIFO_DEPTH
        } else {
            1
        }
    }

    /// Receive FIFO level at which IIR reports "data available" (1 without FIFOs).
    fn rx_trigger(&self) -> usize {
        if !self.fifo_enabled() {
            return 1;
        }
        match self.r.fcr >> 6 {
            0 => 1,
            1 => 4,
            2 => 8,
            _ => 14,
        }
    }

    fn receive(&mut self, byte: u8) {
        if self.r.rx.len() < self.rx_capacity() {
            self.r.rx.push_back(byte);
            self.r.stats.rx_bytes += 1;
        } else {
            self.r.lsr_errors |= LSR_OVERRUN;
            self.r.stats.rx_overruns += 1;
            tracing::trace!("UART receive overrun; byte lost");
        }
    }

    fn dlab(&self) -> bool {
        self.r.lcr & LCR_DLAB != 0
    }

    /// Highest-priority pending interrupt identification (without the FIFO bits).
    fn pending_iid(&self) -> u8 {
        if self.r.ier & IER_RLS != 0 && self.r.lsr_errors != 0 {
            IIR_RLS
        } else if self.r.ier & IER_RDA != 0 && self.r.rx.len() >= self.rx_trigger() {
            IIR_RDA
        } else if self.r.ier & IER_RDA != 0 && !self.r.rx.is_empty() {
            IIR_CTI
        } else if self.r.ier & IER_THRE != 0 && self.r.thre_pending {
            IIR_THRE
        } else {
            IIR_NONE
        }
    }

    fn read_iir(&mut self) -> u8 {
        let iid = self.pending_iid();
        // Reading IIR while it reports THRE acknowledges that interrupt.
        if iid == IIR_THRE {
            self.r.thre_pending = false;
        }
        let fifo = if self.fifo_enabled() {
            IIR_FIFO_ENABLED
        } else {
            0
        };
        iid | fifo
    }

    /// Line status; reading it clears the error bits.
    fn read_lsr(&mut self) -> u8 {
        let ready = if self.r.rx.is_empty() {
            0
        } else {
            LSR_DATA_READY
        };
        LSR_THRE | LSR_TEMT | ready | std::mem::take(&mut self.r.lsr_errors)
    }

    /// Modem status; in loopback the outputs of MCR come back as the inputs.
    fn msr(&self) -> u8 {
        if self.r.mcr & MCR_LOOP == 0 {
            return MSR_CONNECTED;
        }
        let m = self.r.mcr;
        // CTS←RTS, DSR←DTR, RI←OUT1, DCD←OUT2.
        ((m & 0x02) << 3) | ((m & 0x01) << 5) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
    }

    fn read_reg(&mut self, reg: u16) -> u8 {
        match reg {
            RBR_THR_DLL if self.dlab() => self.r.divisor.to_le_bytes()[0],
            RBR_THR_DLL => self.r.rx.pop_front().unwrap_or(0),
            IER_DLM if self.dlab() => self.r.divisor.to_le_bytes()[1],
            IER_DLM => self.r.ier,
            IIR_FCR => self.read_iir(),
            LCR => self.r.lcr,
            MCR => self.r.mcr,
            LSR => self.read_lsr(),
            MSR => self.msr(),
            SCR => self.r.scr,
            _ => 0xff,
        }
    }

    fn write_reg(&mut self, reg: u16, v: u8) {
        match reg {
            RBR_THR_DLL if self.dlab() => {
                self.r.divisor = u16::from_le_bytes([v, self.r.divisor.to_le_bytes()[1]])
            }
            RBR_THR_DLL => self.transmit(v),
            IER_DLM if self.dlab() => {
                self.r.divisor = u16::from_le_bytes([self.r.divisor.to_le_bytes()[0], v])
            }
            IER_DLM => self.write_ier(v),
            IIR_FCR => self.write_fcr(v),
            LCR => self.r.lcr = v,
            MCR => self.r.mcr = v & MCR_MASK,
            SCR => self.r.scr = v,
            // LSR and MSR writes are factory-test only; ignore.
            _ => {}
        }
    }

    fn write_ier(&mut self, v: u8) {
        let v = v & IER_MASK;
        // Enabling THRE interrupts while the transmitter is empty raises one at once.
        if v & IER_THRE != 0 && self.r.ier & IER_THRE == 0 {
            self.r.thre_pending = true;
        }
        self.r.ier = v;
    }

    fn write_fcr(&mut self, v: u8) {
        // Switching the FIFOs on or off clears them.
        if v & FCR_CLEAR_RX != 0 || (v ^ self.r.fcr) & FCR_ENABLE != 0 {
            self.r.rx.clear();
        }
        // Bit 2 (clear the transmit FIFO) has nothing to clear: it is always empty.
        // The clear bits are self-clearing; only enable/DMA/trigger bits stay.
        self.r.fcr = v & 0xc9;
    }

    fn transmit(&mut self, byte: u8) {
        if self.r.mcr & MCR_LOOP != 0 {
            self.receive(byte);
        } else {
            self.out.push(byte);
            self.r.stats.tx_bytes += 1;
            if byte == b'\n' || self.out.len() >= OUT_FLUSH_AT {
                self.flush_output();
            }
        }
        // The byte left at once, so THR is empty again.
        self.r.thre_pending = true;
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
        wr(&mut u, IIR_FCR, FCR_ENABLE);
        u.push_input(b"ok");
        assert_eq!(rd(&mut u, LSR), 0x61);
        wr(&mut u, IER_DLM, IER_RDA);
        assert_eq!(rd(&mut u, IIR_FCR), 0xc4);
        assert_eq!(rd(&mut u, 0), b'o');
        assert_eq!(rd(&mut u, 0), b'k');
        assert_eq!(rd(&mut u, LSR), 0x60);
        assert_eq!(rd(&mut u, IIR_FCR), 0xc1);
        assert_eq!(rd(&mut u, 0), 0, "empty RBR reads 0");
        u.push_input(b"z");
        wr(&mut u, IIR_FCR, FCR_ENABLE | FCR_CLEAR_RX);
        assert_eq!(rd(&mut u, LSR), 0x60, "FIFO clear drops input");
        assert_eq!(u.stats().rx_bytes, 3);
    }

    #[test]
    fn without_fifo_one_byte_then_overrun() {
        let (mut u, _) = uart();
        assert_eq!(u.rx_room(), 1);
        u.push_input(b"ab");
        assert_eq!(u.rx_room(), 0);
        assert_eq!(rd(&mut u, LSR), 0x63, "data ready + overrun");
        assert_eq!(rd(&mut u, LSR), 0x61, "reading LSR clears overrun");
        assert_eq!(
            rd(&mut u, 0),
            b'a',
            "the byte in RBR survives; the new one is lost"
        );
        assert_eq!(u.stats().rx_overruns, 1);
    }

    #[test]
    fn fifo_holds_sixteen_bytes() {
        let (mut u, _) = uart();
        wr(&mut u, IIR_FCR, FCR_ENABLE);
        assert_eq!(u.rx_room(), RX_FIFO_DEPTH);
        let input: Vec<u8> = (0..40).collect();
        u.push_input(&input);
        assert_eq!(u.rx_room(), 0);
        assert_eq!(u.stats().rx_overruns, 24);
        wr(&mut u, IER_DLM, IER_RDA | IER_RLS);
        wr(&mut u, MCR, MCR_OUT2);
        assert!(u.interrupt_pending());
        assert_eq!(rd(&mut u, IIR_FCR), 0xc6, "line status first");
        assert_eq!(rd(&mut u, LSR), 0x63);
        assert_eq!(rd(&mut u, IIR_FCR), 0xc4, "then data");
        let got: Vec<u8> = (0..16).map(|_| rd(&mut u, 0)).collect();
        assert_eq!(got, (0..16).collect::<Vec<u8>>());
        assert_eq!(rd(&mut u, LSR), 0x60);
        assert!(!u.interrupt_pending());
        // Turning the FIFO off (or on) clears it.
        u.push_input(b"xy");
        wr(&mut u, IIR_FCR, 0);
        assert_eq!(rd(&mut u, LSR), 0x60);
    }

    #[test]
    fn trigger_level_and_character_timeout() {
        let (mut u, _) = uart();
        wr(&mut u, IIR_FCR, FCR_ENABLE | 0x80); // trigger at 8, as Linux sets it
        wr(&mut u, IER_DLM, IER_RDA | IER_THRE);
        assert_eq!(rd(&mut u, IIR_FCR), 0xc2, "THRE alone");
        u.push_input(b"abc");
        assert_eq!(
            rd(&mut u, IIR_FCR),
            0xcc,
            "below the trigger: character timeout"
        );
        u.push_input(b"defgh");
        assert_eq!(rd(&mut u, IIR_FCR), 0xc4, "at the trigger: data available");
        wr(&mut u, 0, b'!');
        assert_eq!(rd(&mut u, IIR_FCR), 0xc4, "data outranks THRE");
        for _ in 0..8 {
            rd(&mut u, 0);
        }
        assert_eq!(rd(&mut u, IIR_FCR), 0xc2, "then THRE");
        assert_eq!(rd(&mut u, IIR_FCR), 0xc1);
    }

    #[test]
    fn out2_gates_the_irq_line() {
        let (mut u, _) = uart();
        wr(&mut u, IER_DLM, IER_RDA);
        u.push_input(b"q");
        assert!(!u.interrupt_pending(), "OUT2 off: line disconnected");
        assert_eq!(rd(&mut u, IIR_FCR), 0x04, "but IIR shows it");
        wr(&mut u, MCR, MCR_OUT2);
        assert!(u.interrupt_pending());
        rd(&mut u, 0);
        assert!(!u.interrupt_pending());
    }

    #[test]
    fn loopback_disconnects_line_input() {
        let (mut u, _) = uart();
        wr(&mut u, MCR, MCR_LOOP);
        assert_eq!(u.rx_room(), 0);
        u.push_input(b"ignored");
        assert_eq!(rd(&mut u, LSR) & LSR_DATA_READY, 0);
        wr(&mut u, 0, 0xaa);
        wr(&mut u, 0, 0xbb);
        assert_eq!(rd(&mut u, LSR), 0x63, "second looped byte overruns RBR");
        assert_eq!(rd(&mut u, 0), 0xaa);
        wr(&mut u, MCR, 0);
        assert_eq!(u.rx_room(), 1);
        u.reset();
        assert_eq!(rd(&mut u, LSR), 0x60);
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
