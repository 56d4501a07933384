//! The PC's pair of 8259A programmable interrupt controllers.
//!
//! The master sits at 0x20/0x21, the slave at 0xa0/0xa1 and cascades into the master's
//! IR2, so IRQs 8–15 share IRQ 2's priority on the master. The PIIX edge/level control
//! registers (ELCR) are at 0x4d0/0x4d1.
//!
//! Model of a request (as in the 8259A's priority cell): in edge-triggered mode a
//! low→high transition of an IR input sets its IRR bit, and the request stays latched
//! only while the input stays high: lowering the input withdraws it (a request that went
//! away before INTA is what gives the spurious IRQ 7 / 15 on real hardware). In
//! level-triggered mode (ICW1.LTIM or the IRQ's ELCR bit) IRR simply follows the input.
//! Devices therefore hold their line high until serviced; the platform drives IRQ 0 as a
//! low→high pulse per timer period and then holds it high.
//!
//! Before the guest's first ICW1 the chips are in the state a BIOS leaves them in for
//! vectors (master 0x08, slave 0x70) but with every IRQ masked.

use super::{IoEffect, PortDevice};

/// Command port of the master PIC (data port is +1).
pub const PIC_MASTER: u16 = 0x20;
/// Command port of the slave PIC (data port is +1).
pub const PIC_SLAVE: u16 = 0xa0;
/// First of the two ELCR ports (master's IRQs 0–7, then slave's 8–15).
pub const ELCR: u16 = 0x4d0;

/// The master's input the slave's INT output is wired to.
const CASCADE_IRQ: u8 = 2;
const CASCADE_BIT: u8 = 1 << CASCADE_IRQ;

/// Which initialization command word the chip expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Init {
    Ready,
    Icw2,
    Icw3,
    Icw4,
}

/// One 8259A.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Chip {
    is_master: bool,
    /// Levels of the eight IR inputs.
    lines: u8,
    irr: u8,
    isr: u8,
    imr: u8,
    /// ELCR: 1 = level-triggered (PIIX extension; writable bits in `elcr_mask`).
    elcr: u8,
    elcr_mask: u8,
    /// ICW1.LTIM: all inputs level-triggered.
    ltim: bool,
    vector_base: u8,
    init: Init,
    icw4_needed: bool,
    single: bool,
    auto_eoi: bool,
    rotate_on_aeoi: bool,
    /// The IRQ with the highest priority (0 after init; moved by rotation).
    priority_base: u8,
    /// OCW3: reads of the command port return ISR (true) or IRR.
    read_isr: bool,
    /// OCW3 poll command issued: the next read is the poll word.
    poll: bool,
    special_mask: bool,
    /// ICW4.SFNM: the master lets further slave requests through while IR2 is in service.
    special_fully_nested: bool,
}

impl Chip {
    fn new(is_master: bool, vector_base: u8) -> Self {
        Self {
            is_master,
            lines: 0,
            irr: 0,
            isr: 0,
            imr: 0xff,
            elcr: 0,
            // As on the PIIX: IRQ 0, 1, 2, 8 and 13 are always edge-triggered.
            elcr_mask: if is_master { 0xf8 } else { 0xde },
            ltim: false,
            vector_base,
            init: Init::Ready,
            icw4_needed: false,
            single: false,
            auto_eoi: false,
            rotate_on_aeoi: false,
            priority_base: 0,
            read_isr: false,
            poll: false,
            special_mask: false,
            special_fully_nested: false,
        }
    }

    fn name(&self) -> &'static str {
        if self.is_master {
            "master"
        } else {
            "slave"
        }
    }

    fn level_mode(&self, bit: u8) -> bool {
        self.ltim || self.elcr & bit != 0
    }

    fn set_line(&mut self, irq: u8, level: bool) {
        let bit = 1u8 << (irq & 7);
        let was_high = self.lines & bit != 0;
        if level {
            self.lines |= bit;
            if !was_high || self.level_mode(bit) {
                self.irr |= bit;
            }
        } else {
            self.lines &= !bit;
            // The request is withdrawn (edge: the latch is gated by the input level).
            self.irr &= !bit;
        }
    }

    /// Priority rank (0 = highest) of the highest-priority bit of `mask`.
    fn best(&self, mask: u8) -> Option<u8> {
        (0..8u8).find(|&p| mask & (1 << ((p + self.priority_base) & 7)) != 0)
    }

    fn irq_of_rank(&self, rank: u8) -> u8 {
        (rank + self.priority_base) & 7
    }

    /// The IRQ this chip would present on INTA now, if any (drives its INT output).
    fn pending_irq(&self) -> Option<u8> {
        let rank = self.best(self.irr & !self.imr)?;
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if self.special_fully_nested && self.is_master {
            in_service &= !CASCADE_BIT;
        }
        let current = self.best(in_service).unwrap_or(8);
        (rank < current).then(|| self.irq_of_rank(rank))
    }

    /// The INTA cycle for `irq`: IRR → ISR (or straight through with auto-EOI).
    fn intack(&mut self, irq: u8) {
        let bit = 1u8 << irq;
        if self.auto_eoi {
            if self.rotate_on_aeoi {
                self.priority_base = (irq + 1) & 7;
            }
        } else {
            self.isr |= bit;
        }
        if !self.level_mode(bit) {
            self.irr &= !bit;
        }
    }

    fn non_specific_eoi(&mut self, rotate: bool) {
        if let Some(rank) = self.best(self.isr) {
            let irq = self.irq_of_rank(rank);
            self.isr &= !(1 << irq);
            if rotate {
                self.priority_base = (irq + 1) & 7;
            }
        }
    }

    fn icw1(&mut self, v: u8) {
        if v & 0x04 != 0 {
            tracing::debug!(
                pic = self.name(),
                "ICW1 call address interval 4 (8085 only); ignored"
            );
        }
        self.ltim = v & 0x08 != 0;
        self.single = v & 0x02 != 0;
        self.icw4_needed = v & 0x01 != 0;
        // Edge sense reset: inputs that are high now must go low and high again.
        self.irr = if self.ltim {
            self.lines
        } else {
            self.lines & self.elcr
        };
        self.isr = 0;
        self.imr = 0;
        self.priority_base = 0;
        self.read_isr = false;
        self.poll = false;
        self.special_mask = false;
        // ICW4 functions are cleared, and stay so if no ICW4 follows.
        self.auto_eoi = false;
        self.rotate_on_aeoi = false;
        self.special_fully_nested = false;
        self.init = Init::Icw2;
    }

    fn ocw2(&mut self, v: u8) {
        let level = v & 7;
        match v >> 5 {
            0b001 => self.non_specific_eoi(false),
            0b011 => self.isr &= !(1 << level),
            0b101 => self.non_specific_eoi(true),
            0b111 => {
                self.isr &= !(1 << level);
                self.priority_base = (level + 1) & 7;
            }
            0b110 => self.priority_base = (level + 1) & 7,
            0b100 => self.rotate_on_aeoi = true,
            0b000 => self.rotate_on_aeoi = false,
            _ => {} // 0b010: no operation
        }
    }

    fn ocw3(&mut self, v: u8) {
        if v & 0x04 != 0 {
            self.poll = true;
        }
        match v & 0x03 {
            0x02 => self.read_isr = false,
            0x03 => self.read_isr = true,
            _ => {}
        }
        if v & 0x40 != 0 {
            self.special_mask = v & 0x20 != 0;
        }
    }

    fn write(&mut self, a0: bool, v: u8) {
        if !a0 {
            if v & 0x10 != 0 {
                self.icw1(v);
            } else if v & 0x08 != 0 {
                self.ocw3(v);
            } else {
                self.ocw2(v);
            }
            return;
        }
        match self.init {
            Init::Ready => self.imr = v,
            Init::Icw2 => {
                self.vector_base = v & 0xf8;
                self.init = if !self.single {
                    Init::Icw3
                } else if self.icw4_needed {
                    Init::Icw4
                } else {
                    Init::Ready
                };
            }
            Init::Icw3 => {
                let expected = if self.is_master {
                    CASCADE_BIT
                } else {
                    CASCADE_IRQ
                };
                if v != expected {
                    tracing::debug!(
                        pic = self.name(),
                        icw3 = v,
                        "unusual ICW3; cascade stays on IRQ 2"
                    );
                }
                self.init = if self.icw4_needed {
                    Init::Icw4
                } else {
                    Init::Ready
                };
            }
            Init::Icw4 => {
                if v & 0x01 == 0 {
                    tracing::debug!(
                        pic = self.name(),
                        "ICW4 selects 8080/8085 mode; x86 mode kept"
                    );
                }
                self.auto_eoi = v & 0x02 != 0;
                self.special_fully_nested = v & 0x10 != 0;
                self.init = Init::Ready;
            }
        }
    }

    /// The poll word (OCW3 poll): bit 7 = a request, bits 2:0 = its IRQ; acknowledges it.
    fn poll_read(&mut self) -> u8 {
        self.poll = false;
        match self.pending_irq() {
            Some(irq) => {
                self.intack(irq);
                0x80 | irq
            }
            None => 0,
        }
    }

    fn read(&mut self, a0: bool) -> u8 {
        if self.poll {
            return self.poll_read();
        }
        if a0 {
            self.imr
        } else if self.read_isr {
            self.isr
        } else {
            self.irr
        }
    }
}

/// Counters of the interrupt controller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PicStats {
    pub acknowledged: u64,
    pub spurious: u64,
}

/// The master/slave 8259A pair.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Pic {
    master: Chip,
    slave: Chip,
    stats: PicStats,
}

impl Default for Pic {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic {
    /// The pair as after power-on and BIOS: vectors 0x08 / 0x70, all IRQs masked.
    pub fn new() -> Self {
        Self {
            master: Chip::new(true, 0x08),
            slave: Chip::new(false, 0x70),
            stats: PicStats::default(),
        }
    }

    /// Drives IRQ line `irq` (0–15) to `level`. Lines ≥ 16 do not exist and are ignored.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        match irq {
            0..=7 => self.master.set_line(irq, level),
            8..=15 => {
                self.slave.set_line(irq - 8, level);
                self.cascade();
            }
            _ => tracing::debug!(irq, "no such IRQ line"),
        }
    }

    /// Raises IRQ line `irq`; a low→high transition latches a request.
    pub fn raise_irq(&mut self, irq: u8) {
        self.set_irq(irq, true);
    }

    /// Lowers IRQ line `irq`, withdrawing a request not yet acknowledged.
    pub fn lower_irq(&mut self, irq: u8) {
        self.set_irq(irq, false);
    }

    /// Whether IRQ `irq` has a request latched that the CPU has not taken yet.
    pub fn requested(&self, irq: u8) -> bool {
        match irq {
            0..=7 => self.master.irr & (1 << irq) != 0,
            8..=15 => self.slave.irr & (1 << (irq - 8)) != 0,
            _ => false,
        }
    }

    /// The INTR line to the CPU: an unmasked request of higher priority than any in service.
    pub fn interrupt_pending(&self) -> bool {
        self.master.pending_irq().is_some()
    }

    /// The INTA cycle: returns the vector and moves the request from IRR to ISR. With
    /// nothing to deliver it returns the spurious vector (base + 7) of the chip concerned,
    /// setting no ISR bit on it (a slave spurious IRQ still sets the master's ISR bit 2).
    pub fn acknowledge(&mut self) -> u8 {
        self.stats.acknowledged += 1;
        let vector = match self.master.pending_irq() {
            None => {
                self.stats.spurious += 1;
                tracing::debug!("spurious IRQ 7");
                self.master.vector_base.wrapping_add(7)
            }
            Some(CASCADE_IRQ) => {
                let v = match self.slave.pending_irq() {
                    Some(irq) => {
                        self.slave.intack(irq);
                        self.slave.vector_base.wrapping_add(irq)
                    }
                    None => {
                        self.stats.spurious += 1;
                        tracing::debug!("spurious IRQ 15");
                        self.slave.vector_base.wrapping_add(7)
                    }
                };
                self.master.intack(CASCADE_IRQ);
                v
            }
            Some(irq) => {
                self.master.intack(irq);
                self.master.vector_base.wrapping_add(irq)
            }
        };
        self.cascade();
        vector
    }

    /// Whether a request on `irq` would get through the mask registers (for the slave's
    /// IRQs, both the slave's and the master's IR2 mask).
    pub fn irq_unmasked(&self, irq: u8) -> bool {
        match irq {
            0..=7 => self.master.imr & (1 << irq) == 0,
            8..=15 => self.slave.imr & (1 << (irq - 8)) == 0 && self.master.imr & CASCADE_BIT == 0,
            _ => false,
        }
    }

    /// Vector bases (master, slave) from ICW2.
    pub fn vector_bases(&self) -> (u8, u8) {
        (self.master.vector_base, self.slave.vector_base)
    }

    /// (IRR, ISR, IMR) of the pair, master in the low byte, slave in the high byte.
    pub fn registers(&self) -> (u16, u16, u16) {
        let pair = |m: u8, s: u8| u16::from_le_bytes([m, s]);
        (
            pair(self.master.irr, self.slave.irr),
            pair(self.master.isr, self.slave.isr),
            pair(self.master.imr, self.slave.imr),
        )
    }

    pub fn stats(&self) -> PicStats {
        self.stats
    }

    /// Guest read of one byte from `port` (0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1).
    pub fn read_port(&mut self, port: u16) -> u8 {
        let v = match port {
            0x20 | 0x21 => self.master.read(port & 1 != 0),
            0xa0 | 0xa1 => self.slave.read(port & 1 != 0),
            0x4d0 => self.master.elcr,
            0x4d1 => self.slave.elcr,
            _ => 0xff,
        };
        // A poll read acknowledges; keep the cascade line current.
        self.cascade();
        v
    }

    /// Guest write of one byte to `port`.
    pub fn write_port(&mut self, port: u16, v: u8) {
        match port {
            0x20 | 0x21 => self.master.write(port & 1 != 0, v),
            0xa0 | 0xa1 => self.slave.write(port & 1 != 0, v),
            0x4d0 => self.master.elcr = v & self.master.elcr_mask,
            0x4d1 => self.slave.elcr = v & self.slave.elcr_mask,
            _ => {}
        }
        self.cascade();
    }

    /// The slave's INT output drives the master's IR2. The master's IRR bit 2 follows it
    /// as a level: the slave's INT drops during its own INTA cycle, so a request still
    /// pending behind it is presented again.
    fn cascade(&mut self) {
        let out = self.slave.pending_irq().is_some();
        if out {
            self.master.lines |= CASCADE_BIT;
            self.master.irr |= CASCADE_BIT;
        } else {
            self.master.lines &= !CASCADE_BIT;
            self.master.irr &= !CASCADE_BIT;
        }
    }
}

impl PortDevice for Pic {
    /// Byte-wide registers; the platform splits wider accesses.
    fn read(&mut self, port: u16, _size: u8) -> u32 {
        u32::from(self.read_port(port))
    }

    fn write(&mut self, port: u16, _size: u8, value: u32) -> IoEffect {
        self.write_port(port, value.to_le_bytes()[0]);
        IoEffect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The initialization Linux (and most kernels) do: edge, cascade, ICW4 8086 mode.
    fn init(pic: &mut Pic, master_base: u8, slave_base: u8, icw4: u8) {
        pic.write_port(0x20, 0x11);
        pic.write_port(0x21, master_base);
        pic.write_port(0x21, 0x04);
        pic.write_port(0x21, icw4);
        pic.write_port(0xa0, 0x11);
        pic.write_port(0xa1, slave_base);
        pic.write_port(0xa1, 0x02);
        pic.write_port(0xa1, icw4);
    }

    fn linux_pic() -> Pic {
        let mut pic = Pic::new();
        init(&mut pic, 0x30, 0x38, 0x01);
        pic
    }

    fn eoi(pic: &mut Pic, irq: u8) {
        if irq >= 8 {
            pic.write_port(0xa0, 0x20);
        }
        pic.write_port(0x20, 0x20);
    }

    #[test]
    fn power_on_state_is_masked_with_bios_bases() {
        let mut pic = Pic::new();
        assert_eq!(pic.vector_bases(), (0x08, 0x70));
        assert_eq!(pic.read_port(0x21), 0xff);
        assert_eq!(pic.read_port(0xa1), 0xff);
        pic.raise_irq(0);
        assert!(!pic.interrupt_pending(), "masked until initialized");
        assert_eq!(pic.registers().0 & 1, 1, "IRR latches while masked");
        pic.write_port(0x21, 0xfe);
        assert!(pic.interrupt_pending());
        assert_eq!(pic.acknowledge(), 0x08);
    }

    #[test]
    fn icw_sequence_sets_bases_and_clears_masks() {
        let mut pic = linux_pic();
        assert_eq!(pic.vector_bases(), (0x30, 0x38));
        assert_eq!(pic.read_port(0x21), 0, "ICW1 clears IMR");
        assert_eq!(pic.read_port(0xa1), 0);
        // OCW1 after init is the mask.
        pic.write_port(0x21, 0xfb);
        assert_eq!(pic.read_port(0x21), 0xfb);
        // ICW2's low three bits are ignored.
        init(&mut pic, 0x47, 0x7f, 0x01);
        assert_eq!(pic.vector_bases(), (0x40, 0x78));
    }

    #[test]
    fn single_mode_without_icw4() {
        let mut pic = Pic::new();
        pic.write_port(0x20, 0x12); // single, no ICW4
        pic.write_port(0x21, 0x50); // ICW2 → done
        pic.write_port(0x21, 0xfd); // OCW1
        assert_eq!(pic.read_port(0x21), 0xfd);
        assert_eq!(pic.vector_bases().0, 0x50);
    }

    #[test]
    fn fixed_priority_and_nesting() {
        let mut pic = linux_pic();
        pic.raise_irq(3);
        pic.raise_irq(1);
        assert_eq!(pic.acknowledge(), 0x31, "IRQ 1 beats IRQ 3");
        assert!(
            !pic.interrupt_pending(),
            "IRQ 3 waits behind IRQ 1 in service"
        );
        pic.raise_irq(0);
        assert!(pic.interrupt_pending(), "IRQ 0 nests above IRQ 1");
        assert_eq!(pic.acknowledge(), 0x30);
        assert_eq!(pic.registers().1, 0b11);
        eoi(&mut pic, 0); // non-specific EOI clears the highest: IRQ 0
        assert_eq!(pic.registers().1, 0b10);
        assert!(!pic.interrupt_pending());
        eoi(&mut pic, 1);
        assert_eq!(pic.acknowledge(), 0x33);
    }

    #[test]
    fn slave_irqs_have_irq2_priority() {
        let mut pic = linux_pic();
        pic.raise_irq(4);
        pic.raise_irq(12);
        assert_eq!(
            pic.acknowledge(),
            0x38 + 4,
            "IRQ 12 (via IRQ 2) beats IRQ 4"
        );
        let (_, isr, _) = pic.registers();
        assert_eq!(isr, 0x1004, "slave ISR bit 4 and master ISR bit 2");
        pic.raise_irq(1);
        assert!(pic.interrupt_pending(), "IRQ 1 nests above IRQ 2");
        assert_eq!(pic.acknowledge(), 0x31);
        eoi(&mut pic, 1);
        pic.raise_irq(8);
        assert!(
            !pic.interrupt_pending(),
            "master IR2 in service blocks further slave IRQs"
        );
        eoi(&mut pic, 12);
        assert_eq!(pic.acknowledge(), 0x38, "IRQ 8 after EOI of IRQ 12");
        eoi(&mut pic, 8);
        assert_eq!(pic.acknowledge(), 0x34);
    }

    #[test]
    fn second_slave_request_presented_after_aeoi() {
        let mut pic = Pic::new();
        init(&mut pic, 0x20, 0x28, 0x03); // auto-EOI
        pic.raise_irq(9);
        pic.raise_irq(10);
        assert_eq!(pic.acknowledge(), 0x29);
        assert_eq!(pic.registers().1, 0, "auto-EOI leaves ISR clear");
        assert!(pic.interrupt_pending());
        assert_eq!(pic.acknowledge(), 0x2a);
        assert!(!pic.interrupt_pending());
    }

    #[test]
    fn specific_eoi_and_isr_irr_reads() {
        let mut pic = linux_pic();
        pic.raise_irq(5);
        pic.raise_irq(6);
        pic.write_port(0x21, 0x40); // mask IRQ 6
        assert_eq!(pic.acknowledge(), 0x35);
        pic.write_port(0x20, 0x0a); // OCW3: read IRR
        assert_eq!(pic.read_port(0x20), 0x40);
        pic.write_port(0x20, 0x0b); // OCW3: read ISR
        assert_eq!(pic.read_port(0x20), 0x20);
        assert_eq!(pic.read_port(0x20), 0x20, "selection is sticky");
        pic.write_port(0x20, 0x60 | 4); // specific EOI for IRQ 4: not in service
        assert_eq!(pic.read_port(0x20), 0x20);
        pic.write_port(0x20, 0x60 | 5); // specific EOI for IRQ 5
        assert_eq!(pic.read_port(0x20), 0);
        pic.write_port(0x21, 0);
        assert_eq!(pic.acknowledge(), 0x36);
    }

    #[test]
    fn edge_needs_new_transition_and_lowering_withdraws() {
        let mut pic = linux_pic();
        pic.raise_irq(3);
        pic.raise_irq(3); // still high: no new edge
        assert_eq!(pic.acknowledge(), 0x33);
        eoi(&mut pic, 3);
        assert!(!pic.interrupt_pending(), "held high, no new request");
        pic.lower_irq(3);
        pic.raise_irq(3);
        assert!(pic.interrupt_pending());
        pic.lower_irq(3);
        assert!(!pic.interrupt_pending(), "request went away");
    }

    #[test]
    fn spurious_master_irq7() {
        let mut pic = linux_pic();
        pic.raise_irq(3);
        pic.lower_irq(3);
        assert_eq!(pic.acknowledge(), 0x37);
        assert_eq!(pic.registers().1, 0, "no ISR bit for a spurious IRQ");
        assert_eq!(pic.stats().spurious, 1);
        // A real IRQ 7 does set ISR bit 7.
        pic.raise_irq(7);
        assert_eq!(pic.acknowledge(), 0x37);
        assert_eq!(pic.registers().1, 0x80);
    }

    #[test]
    fn spurious_slave_irq15_sets_master_isr2() {
        let mut pic = linux_pic();
        pic.raise_irq(10);
        // The slave's request goes away after the master latched IR2 but before INTA.
        pic.slave.irr = 0;
        assert!(pic.interrupt_pending());
        assert_eq!(pic.acknowledge(), 0x3f);
        assert_eq!(pic.registers().1, 0x0004, "master ISR bit 2 only");
        assert_eq!(pic.stats().spurious, 1);
    }

    #[test]
    fn level_triggered_follows_line() {
        let mut pic = Pic::new();
        init(&mut pic, 0x20, 0x28, 0x01);
        pic.write_port(0x4d1, 0xff); // ELCR: slave IRQs level (8 and 13 stay edge)
        assert_eq!(pic.read_port(0x4d1), 0xde);
        pic.raise_irq(11);
        assert_eq!(pic.acknowledge(), 0x2b);
        eoi(&mut pic, 11);
        assert!(pic.interrupt_pending(), "line still high: requested again");
        pic.lower_irq(11);
        assert!(!pic.interrupt_pending());
        // ICW1.LTIM makes the whole chip level-triggered.
        pic.write_port(0x20, 0x19);
        pic.write_port(0x21, 0x20);
        pic.write_port(0x21, 0x04);
        pic.write_port(0x21, 0x01);
        pic.raise_irq(5);
        assert_eq!(pic.acknowledge(), 0x25);
        eoi(&mut pic, 5);
        assert!(pic.interrupt_pending());
    }

    #[test]
    fn auto_eoi() {
        let mut pic = Pic::new();
        init(&mut pic, 0x20, 0x28, 0x03);
        pic.raise_irq(4);
        assert_eq!(pic.acknowledge(), 0x24);
        assert_eq!(pic.registers().1, 0);
        pic.raise_irq(5);
        assert!(pic.interrupt_pending(), "nothing in service blocks IRQ 5");
    }

    #[test]
    fn rotation() {
        let mut pic = linux_pic();
        pic.raise_irq(1);
        pic.raise_irq(3);
        assert_eq!(pic.acknowledge(), 0x31);
        pic.write_port(0x20, 0xa0); // rotate on non-specific EOI: IRQ 1 becomes lowest
        pic.lower_irq(1);
        pic.raise_irq(1);
        pic.raise_irq(0);
        // Priority order now 2,3,...,7,0,1.
        assert_eq!(pic.acknowledge(), 0x33);
        pic.write_port(0x20, 0x20);
        assert_eq!(pic.acknowledge(), 0x30);
        pic.write_port(0x20, 0x20);
        // Set priority: IRQ 5 lowest, so 6 is highest.
        pic.write_port(0x20, 0xc5);
        pic.raise_irq(6);
        assert_eq!(pic.acknowledge(), 0x36);
        pic.write_port(0x20, 0xe6); // rotate on specific EOI of 6
        assert_eq!(
            pic.acknowledge(),
            0x31,
            "7 is highest now but idle; IRQ 1 still pending"
        );
    }

    #[test]
    fn poll_command() {
        let mut pic = linux_pic();
        pic.write_port(0x20, 0x0c); // OCW3 poll
        assert_eq!(pic.read_port(0x20), 0, "nothing pending");
        pic.raise_irq(6);
        pic.write_port(0x20, 0x0c);
        assert_eq!(pic.read_port(0x21), 0x86, "poll word on either port");
        assert_eq!(pic.registers().1, 0x40, "poll acknowledges");
        assert_eq!(pic.read_port(0x21), 0, "next read is IMR again");
    }

    #[test]
    fn special_mask_mode() {
        let mut pic = linux_pic();
        pic.raise_irq(2 + 1);
        assert_eq!(pic.acknowledge(), 0x33);
        pic.raise_irq(5);
        assert!(!pic.interrupt_pending());
        pic.write_port(0x21, 0x08); // mask IRQ 3 (in service)
        pic.write_port(0x20, 0x68); // set special mask mode
        assert!(
            pic.interrupt_pending(),
            "lower priority allowed while 3 is masked"
        );
        pic.write_port(0x20, 0x48); // reset special mask mode
        assert!(!pic.interrupt_pending());
    }

    #[test]
    fn hostile_writes_do_not_panic() {
        let mut pic = Pic::new();
        for v in 0..=255u8 {
            for port in [0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1] {
                pic.write_port(port, v);
                let _ = pic.read_port(port);
            }
            pic.raise_irq(v % 20);
            let _ = pic.acknowledge();
            pic.lower_irq(v % 17);
        }
        pic.set_irq(200, true);
    }
}
