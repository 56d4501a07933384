//! The 8254 programmable interval timer (0x40–0x43) and system control port B (0x61).
//!
//! Time model: the counters are driven by a 1.193182 MHz clock derived from virtual
//! time ([`Nanos`], see [`super::clock`]). Nothing ticks: each channel remembers when its
//! current counting phase started and computes its count and OUT level for any later
//! tick, so reads are exact whenever they happen and a long gap between polls costs
//! nothing. A count written to a channel is loaded into the counting element on the next
//! input clock, as on the chip.
//!
//! Wiring as on the PC: channel 0's OUT drives IRQ 0 (gate tied high); channel 1 (DRAM
//! refresh on old boards) counts but is connected to nothing; channel 2's gate is port
//! 0x61 bit 0 and its OUT is readable at port 0x61 bit 5 (bit 1, the speaker enable, is
//! stored). Port 0x61 bit 4 is the refresh toggle; here it flips on every read, so loops
//! waiting for it to change always progress.
//!
//! IRQ 0: [`Pit::poll`] reports one rising edge of channel 0's OUT per call. Edges the
//! guest could not take yet (interrupts off, the previous one not acknowledged) wait
//! and are delivered one after the other later, like QEMU's "delay" lost-tick policy:
//! Linux's PIT clocksource counts jiffies, so a lost tick is lost time. Only a backlog
//! of more than [`MAX_BACKLOG`] edges is cut (counted in [`PitStats::irq0_coalesced`]).
//! [`Pit::next_irq0_deadline`] tells when the next edge is due.
//!
//! Modes 0–5 are implemented; BCD counting is accepted but counts in binary (logged once).
//! In modes 2 and 3 a new count written while counting takes effect at the end of the
//! current period (the chip switches a mode 3 count at the end of the half-period).

use super::clock::Nanos;

/// Most channel 0 edges kept waiting for the guest (a second at Linux's 250 Hz).
pub const MAX_BACKLOG: u64 = 250;

/// Input clock of the counters, in Hz.
pub const PIT_HZ: u64 = 1_193_182;
/// Channel 0's data port (channels 1 and 2 follow).
pub const PIT_BASE: u16 = 0x40;
/// The control word port.
pub const PIT_CONTROL: u16 = 0x43;
/// System control port B: channel 2 gate and output, speaker enable, refresh toggle.
pub const PORT_B: u16 = 0x61;

const NS_PER_SEC: u128 = 1_000_000_000;

/// The PIT input clock tick current at virtual time `ns`.
pub fn tick_at(ns: Nanos) -> u64 {
    u64::try_from(u128::from(ns) * u128::from(PIT_HZ) / NS_PER_SEC).unwrap_or(u64::MAX)
}

/// The earliest virtual time at which tick `tick` has begun.
pub fn ns_at_tick(tick: u64) -> Nanos {
    let hz = u128::from(PIT_HZ);
    u64::try_from((u128::from(tick) * NS_PER_SEC).div_ceil(hz)).unwrap_or(u64::MAX)
}

/// Read/write access mode of a channel's data port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Access {
    Lo,
    Hi,
    LoHi,
}

impl Access {
    fn bits(self) -> u8 {
        match self {
            Access::Lo => 1,
            Access::Hi => 2,
            Access::LoHi => 3,
        }
    }
}

/// What the counting element is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Run {
    /// Control word written, no count yet: OUT at the mode's initial level.
    Unloaded,
    /// Modes 1 and 5: count written, waiting for a gate rising edge.
    Armed,
    /// Counting since tick `start`, at which the element held `from`.
    Counting { start: u64, from: u16 },
    /// Stopped by a low gate (modes 0, 2, 3, 4) holding `ce`.
    Paused { ce: u16 },
}

/// Clocks until an element holding `v` reaches zero (0 stands for 65536).
fn dist(v: u16) -> u64 {
    if v == 0 {
        65536
    } else {
        u64::from(v)
    }
}

/// Period of modes 2 and 3 (a count of 1 is illegal there; treated as 2).
fn period(v: u16) -> u64 {
    dist(v).max(2)
}

fn low16(v: u64) -> u16 {
    u16::try_from(v & 0xffff).unwrap_or(0)
}

/// The counting element in mode 3 `e` clocks into a phase loaded with `from`: it counts
/// down by two each half-period; an odd count spends one more clock in the high half.
fn square_wave_ce(from: u16, e: u64) -> u16 {
    let p = period(from);
    let r = e % p;
    let high_len = p.div_ceil(2);
    let (k, high) = if r < high_len {
        (r, true)
    } else {
        (r - high_len, false)
    };
    let v = if p & 1 == 0 || k == 0 {
        p - 2 * k
    } else if high {
        p + 1 - 2 * k
    } else {
        p - 1 - 2 * k
    };
    low16(v)
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Channel {
    mode: u8,
    access: Access,
    bcd: bool,
    /// The count register (0 = 65536).
    reload: u16,
    run: Run,
    /// The element's value while not counting (Unloaded / Armed).
    ce_idle: u16,
    /// Mode 0: OUT already went high; mode 4: the strobe already happened (across a
    /// pause, where the phase restarts).
    done: bool,
    /// Tick at which the count register is transferred to the element; "null count"
    /// before it.
    load_tick: u64,
    /// Modes 2/3: a count written while counting, taking effect at tick .0.
    pending: Option<(u64, u16)>,
    write_lsb: Option<u8>,
    read_msb_next: bool,
    latched: Option<u16>,
    latch_msb_next: bool,
    status: Option<u8>,
    gate: bool,
}

impl Channel {
    /// As a BIOS leaves it: mode 3, count 65536, counting from tick `t` if the gate is high.
    fn new(gate: bool, t: u64) -> Self {
        Self {
            mode: 3,
            access: Access::LoHi,
            bcd: false,
            reload: 0,
            run: if gate {
                Run::Counting { start: t, from: 0 }
            } else {
                Run::Paused { ce: 0 }
            },
            ce_idle: 0,
            done: false,
            load_tick: t,
            pending: None,
            write_lsb: None,
            read_msb_next: false,
            latched: None,
            latch_msb_next: false,
            status: None,
            gate,
        }
    }

    /// The run state in effect at tick `t`, with a pending reload applied.
    fn run_at(&self, t: u64) -> Run {
        match self.pending {
            Some((at, from)) if t >= at => Run::Counting { start: at, from },
            _ => self.run,
        }
    }

    fn settle(&mut self, t: u64) {
        if let Some((at, from)) = self.pending {
            if t >= at {
                self.run = Run::Counting { start: at, from };
                self.pending = None;
            }
        }
    }

    fn ce(&self, t: u64) -> u16 {
        match self.run_at(t) {
            Run::Unloaded | Run::Armed => self.ce_idle,
            Run::Paused { ce } => ce,
            Run::Counting { start, from } => {
                if t < start {
                    return from;
                }
                let e = t - start;
                match self.mode {
                    2 => {
                        let p = period(from);
                        let r = e % p;
                        if r == 0 {
                            from
                        } else {
                            low16(p - r)
                        }
                    }
                    3 => square_wave_ce(from, e),
                    _ => from.wrapping_sub(low16(e)),
                }
            }
        }
    }

    fn out(&self, t: u64) -> bool {
        let run = self.run_at(t);
        match (self.mode, run) {
            (0, Run::Counting { start, from }) => {
                self.done || t >= start.saturating_add(dist(from))
            }
            (0, Run::Paused { .. }) => self.done,
            (0, _) => false,
            (1, Run::Counting { start, from }) => {
                t < start || t >= start.saturating_add(dist(from))
            }
            (2, Run::Counting { start, from }) => {
                let p = period(from);
                t < start || (t - start) % p != p - 1
            }
            (3, Run::Counting { start, from }) => {
                let p = period(from);
                t < start || (t - start) % p < p.div_ceil(2)
            }
            (4 | 5, Run::Counting { start, from }) => {
                self.done || t != start.saturating_add(dist(from))
            }
            _ => true,
        }
    }

    fn null_count(&self, t: u64) -> bool {
        t < self.load_tick
    }

    fn status_byte(&self, t: u64) -> u8 {
        (u8::from(self.out(t)) << 7)
            | (u8::from(self.null_count(t)) << 6)
            | (self.access.bits() << 4)
            | (self.mode << 1)
            | u8::from(self.bcd)
    }

    /// Rising edges of OUT at ticks in `(a, b]` during phase `run`.
    fn phase_edges(&self, run: Run, a: u64, b: u64) -> u64 {
        let Run::Counting { start, from } = run else {
            return 0;
        };
        let once = |e: u64| u64::from(a < e && e <= b);
        let zero = start.saturating_add(dist(from));
        match self.mode {
            0 if !self.done => once(zero),
            1 => once(zero),
            4 if !self.done => once(zero.saturating_add(1)),
            5 => once(zero.saturating_add(1)),
            2 | 3 => {
                let p = period(from);
                let periods = |t: u64| t.saturating_sub(start) / p;
                periods(b).saturating_sub(periods(a))
            }
            _ => 0,
        }
    }

    /// Rising edges of OUT at ticks in `(a, b]`.
    fn edges(&self, a: u64, b: u64) -> u64 {
        if b <= a {
            return 0;
        }
        match self.pending {
            Some((at, from)) if at <= a => {
                self.phase_edges(Run::Counting { start: at, from }, a, b)
            }
            Some((at, from)) if at <= b => {
                self.phase_edges(self.run, a, at)
                    + self.phase_edges(Run::Counting { start: at, from }, at, b)
            }
            _ => self.phase_edges(self.run, a, b),
        }
    }

    fn phase_next_edge(&self, run: Run, a: u64) -> Option<u64> {
        let Run::Counting { start, from } = run else {
            return None;
        };
        let after = |e: u64| (e > a).then_some(e);
        let zero = start.saturating_add(dist(from));
        match self.mode {
            0 if !self.done => after(zero),
            1 => after(zero),
            4 if !self.done => after(zero.saturating_add(1)),
            5 => after(zero.saturating_add(1)),
            2 | 3 => {
                let p = period(from);
                let k = a.saturating_sub(start) / p + 1;
                Some(start.saturating_add(k.saturating_mul(p)))
            }
            _ => None,
        }
    }

    /// The first rising edge of OUT after tick `a`.
    fn next_edge_after(&self, a: u64) -> Option<u64> {
        match self.pending {
            Some((at, from)) if at <= a => {
                self.phase_next_edge(Run::Counting { start: at, from }, a)
            }
            Some((at, from)) => self
                .phase_next_edge(self.run, a)
                .filter(|&e| e <= at)
                .or_else(|| self.phase_next_edge(Run::Counting { start: at, from }, a)),
            None => self.phase_next_edge(self.run, a),
        }
    }

    fn control(&mut self, t: u64, mode: u8, access: Access, bcd: bool) {
        self.settle(t);
        self.ce_idle = self.ce(t);
        self.mode = mode;
        self.access = access;
        self.bcd = bcd;
        self.run = Run::Unloaded;
        self.done = false;
        self.pending = None;
        self.write_lsb = None;
        self.read_msb_next = false;
        self.latched = None;
        self.latch_msb_next = false;
        self.status = None;
        self.load_tick = u64::MAX;
    }

    fn latch_count(&mut self, t: u64) {
        if self.latched.is_none() {
            self.latched = Some(self.ce(t));
            self.latch_msb_next = false;
        }
    }

    fn latch_status(&mut self, t: u64) {
        if self.status.is_none() {
            self.status = Some(self.status_byte(t));
        }
    }

    fn write(&mut self, t: u64, v: u8) {
        self.settle(t);
        match self.access {
            Access::Lo => self.load(t, u16::from(v)),
            Access::Hi => self.load(t, u16::from(v) << 8),
            Access::LoHi => match self.write_lsb.take() {
                Some(lo) => self.load(t, u16::from_le_bytes([lo, v])),
                None => {
                    self.write_lsb = Some(v);
                    if self.mode == 0 {
                        // Writing the first byte stops the count and drops OUT at once.
                        self.ce_idle = self.ce(t);
                        self.run = Run::Unloaded;
                        self.done = false;
                    }
                }
            },
        }
    }

    /// A complete count `n` was written to the count register at tick `t`.
    fn load(&mut self, t: u64, n: u16) {
        self.reload = n;
        let next = t.saturating_add(1);
        match self.mode {
            0 | 4 => {
                self.done = false;
                self.load_tick = next;
                self.run = if self.gate {
                    Run::Counting {
                        start: next,
                        from: n,
                    }
                } else {
                    Run::Paused { ce: n }
                };
            }
            1 | 5 => {
                // Loaded into the element on the next gate trigger.
                if self.run == Run::Unloaded {
                    self.run = Run::Armed;
                }
                self.load_tick = u64::MAX;
            }
            _ => match self.run {
                Run::Counting { start, from } if t >= start => {
                    let p = period(from);
                    let at = start.saturating_add((((t - start) / p) + 1).saturating_mul(p));
                    self.pending = Some((at, n));
                    self.load_tick = at;
                }
                Run::Counting { start, .. } => {
                    self.run = Run::Counting { start, from: n };
                    self.load_tick = start;
                }
                Run::Paused { .. } => self.load_tick = u64::MAX,
                Run::Unloaded | Run::Armed => {
                    if self.gate {
                        self.run = Run::Counting {
                            start: next,
                            from: n,
                        };
                        self.load_tick = next;
                    } else {
                        self.ce_idle = n;
                        self.run = Run::Paused { ce: n };
                        self.load_tick = u64::MAX;
                    }
                }
            },
        }
    }

    fn set_gate(&mut self, t: u64, level: bool) {
        if level == self.gate {
            return;
        }
        self.settle(t);
        self.gate = level;
        let next = t.saturating_add(1);
        if level {
            match (self.mode, self.run) {
                (0 | 4, Run::Paused { ce }) => {
                    self.run = Run::Counting {
                        start: next,
                        from: ce,
                    }
                }
                (1 | 5, run) if run != Run::Unloaded => {
                    self.run = Run::Counting {
                        start: next,
                        from: self.reload,
                    };
                    self.load_tick = next;
                }
                (2 | 3, Run::Paused { .. }) => {
                    self.run = Run::Counting {
                        start: next,
                        from: self.reload,
                    };
                    self.load_tick = next;
                }
                _ => {}
            }
        } else {
            match (self.mode, self.run) {
                (0 | 4, Run::Counting { start, from }) => {
                    let zero = start.saturating_add(dist(from));
                    let passed = if self.mode == 0 { t >= zero } else { t > zero };
                    self.done |= passed;
                    self.run = Run::Paused { ce: self.ce(t) };
                }
                (2 | 3, Run::Counting { .. }) => {
                    self.run = Run::Paused { ce: self.ce(t) };
                    self.pending = None;
                }
                _ => {}
            }
        }
    }

    fn read(&mut self, t: u64) -> u8 {
        self.settle(t);
        if let Some(s) = self.status.take() {
            return s;
        }
        if let Some(v) = self.latched {
            let [lo, hi] = v.to_le_bytes();
            return match self.access {
                Access::Lo => {
                    self.latched = None;
                    lo
                }
                Access::Hi => {
                    self.latched = None;
                    hi
                }
                Access::LoHi if self.latch_msb_next => {
                    self.latched = None;
                    self.latch_msb_next = false;
                    hi
                }
                Access::LoHi => {
                    self.latch_msb_next = true;
                    lo
                }
            };
        }
        let [lo, hi] = self.ce(t).to_le_bytes();
        match self.access {
            Access::Lo => lo,
            Access::Hi => hi,
            Access::LoHi => {
                let msb = self.read_msb_next;
                self.read_msb_next = !msb;
                if msb {
                    hi
                } else {
                    lo
                }
            }
        }
    }
}

/// Counters of the timer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PitStats {
    /// IRQ 0 edges reported.
    pub irq0_fired: u64,
    /// Channel 0 edges dropped because the backlog was full.
    pub irq0_coalesced: u64,
}

/// The 8254 with port 0x61.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Pit {
    ch: [Channel; 3],
    /// Port 0x61 bits 0–3 (gate 2, speaker enable, parity/IOCHK check disables).
    port_b: u8,
    refresh: bool,
    /// Channel 0's edges are accounted up to this tick.
    last_tick: u64,
    /// Edges accounted but not yet reported by `poll`.
    pending_edges: u64,
    stats: PitStats,
    bcd_logged: bool,
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit {
    /// The timer as a BIOS leaves it at virtual time 0: every channel in mode 3 with
    /// count 65536 (18.2 Hz on channel 0), channel 2's gate low.
    pub fn new() -> Self {
        Self::new_at(0)
    }

    /// The timer as a BIOS leaves it, counting from virtual time `now` (after a reset).
    pub fn new_at(now: Nanos) -> Self {
        let t = tick_at(now);
        Self {
            ch: [
                Channel::new(true, t),
                Channel::new(true, t),
                Channel::new(false, t),
            ],
            port_b: 0,
            refresh: false,
            last_tick: t,
            pending_edges: 0,
            stats: PitStats::default(),
            bcd_logged: false,
        }
    }

    /// Guest read of `port` (0x40–0x43, 0x61) at virtual time `now`.
    pub fn read(&mut self, now: Nanos, port: u16) -> u8 {
        let t = tick_at(now);
        // Account channel 0's edges before any access can settle its state.
        self.accumulate(t);
        match port {
            0x40..=0x42 => self.ch[usize::from(port - PIT_BASE)].read(t),
            PORT_B => {
                self.refresh = !self.refresh;
                self.port_b | (u8::from(self.refresh) << 4) | (u8::from(self.ch[2].out(t)) << 5)
            }
            // The control word register is write-only.
            _ => 0xff,
        }
    }

    /// Guest write of `v` to `port` (0x40–0x43, 0x61) at virtual time `now`.
    pub fn write(&mut self, now: Nanos, port: u16, v: u8) {
        let t = tick_at(now);
        self.accumulate(t);
        match port {
            PIT_BASE => self.change_ch0(t, |c| c.write(t, v)),
            0x41 | 0x42 => self.ch[usize::from(port - PIT_BASE)].write(t, v),
            PIT_CONTROL => self.control(t, v),
            PORT_B => {
                self.port_b = v & 0x0f;
                self.ch[2].set_gate(t, v & 1 != 0);
            }
            _ => {}
        }
    }

    /// Advances to `now`; true (one IRQ 0 edge) if channel 0's OUT rose and that
    /// edge was not reported yet.
    pub fn poll(&mut self, now: Nanos) -> bool {
        self.accumulate(tick_at(now));
        if self.pending_edges > MAX_BACKLOG {
            self.stats.irq0_coalesced += self.pending_edges - MAX_BACKLOG;
            self.pending_edges = MAX_BACKLOG;
        }
        if self.pending_edges == 0 {
            return false;
        }
        self.pending_edges -= 1;
        self.stats.irq0_fired += 1;
        true
    }

    /// When the next IRQ 0 edge is due (already passed if one awaits `poll`), or None if
    /// channel 0 will not raise its output again as programmed.
    pub fn next_irq0_deadline(&self) -> Option<Nanos> {
        if self.pending_edges > 0 {
            return Some(ns_at_tick(self.last_tick));
        }
        self.ch[0].next_edge_after(self.last_tick).map(ns_at_tick)
    }

    /// Channel 2's OUT (port 0x61 bit 5) at `now`.
    pub fn channel2_out(&self, now: Nanos) -> bool {
        self.ch[2].out(tick_at(now))
    }

    pub fn stats(&self) -> PitStats {
        self.stats
    }

    fn accumulate(&mut self, t: u64) {
        if t > self.last_tick {
            let edges = self.ch[0].edges(self.last_tick, t);
            self.pending_edges = self.pending_edges.saturating_add(edges);
            self.ch[0].settle(t);
            self.last_tick = t;
        }
    }

    /// Changes channel 0's programming; a change that raises OUT is an edge too.
    fn change_ch0(&mut self, t: u64, f: impl FnOnce(&mut Channel)) {
        self.accumulate(t);
        let before = self.ch[0].out(t);
        f(&mut self.ch[0]);
        if !before && self.ch[0].out(t) {
            self.pending_edges = self.pending_edges.saturating_add(1);
        }
    }

    fn control(&mut self, t: u64, v: u8) {
        let select = v >> 6;
        if select == 3 {
            // Read-back: bit 5 clear = latch counts, bit 4 clear = latch status,
            // bits 1–3 select channels 0–2.
            for (i, ch) in self.ch.iter_mut().enumerate() {
                if v & (2 << i) != 0 {
                    if v & 0x20 == 0 {
                        ch.latch_count(t);
                    }
                    if v & 0x10 == 0 {
                        ch.latch_status(t);
                    }
                }
            }
            return;
        }
        let i = usize::from(select);
        let access = match (v >> 4) & 3 {
            0 => {
                self.ch[i].latch_count(t);
                return;
            }
            1 => Access::Lo,
            2 => Access::Hi,
            _ => Access::LoHi,
        };
        let mode = match (v >> 1) & 7 {
            m @ (6 | 7) => m - 4,
            m => m,
        };
        let bcd = v & 1 != 0;
        if bcd && !self.bcd_logged {
            self.bcd_logged = true;
            tracing::warn!(
                channel = i,
                "PIT BCD counting not supported; counting in binary"
            );
        }
        if i == 0 {
            self.change_ch0(t, |c| c.control(t, mode, access, bcd));
        } else {
            self.ch[i].control(t, mode, access, bcd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PIT and a virtual time in ticks.
    struct Rig {
        pit: Pit,
        tick: u64,
    }

    impl Rig {
        fn new() -> Self {
            Self {
                pit: Pit::new(),
                tick: 0,
            }
        }
        fn now(&self) -> Nanos {
            ns_at_tick(self.tick)
        }
        fn at(&mut self, tick: u64) -> &mut Self {
            assert!(tick >= self.tick, "time goes forward");
            self.tick = tick;
            self
        }
        fn out(&mut self, port: u16, v: u8) {
            let now = self.now();
            self.pit.write(now, port, v);
        }
        fn inb(&mut self, port: u16) -> u8 {
            let now = self.now();
            self.pit.read(now, port)
        }
        fn program(&mut self, ch: u8, mode: u8, count: u16) {
            self.out(PIT_CONTROL, (ch << 6) | 0x30 | (mode << 1));
            let [lo, hi] = count.to_le_bytes();
            self.out(PIT_BASE + u16::from(ch), lo);
            self.out(PIT_BASE + u16::from(ch), hi);
        }
        fn count(&mut self, ch: u8) -> u16 {
            self.out(PIT_CONTROL, ch << 6); // counter latch
            let port = PIT_BASE + u16::from(ch);
            u16::from_le_bytes([self.inb(port), self.inb(port)])
        }
        fn status(&mut self, ch: u8) -> u8 {
            self.out(PIT_CONTROL, 0xe0 | (2 << ch)); // read-back status only
            self.inb(PIT_BASE + u16::from(ch))
        }
        fn poll(&mut self) -> bool {
            let now = self.now();
            self.pit.poll(now)
        }
    }

    #[test]
    fn tick_conversions_round_trip() {
        for t in [0, 1, 2, 1193, 1_193_182, 10_000_000_000] {
            assert_eq!(tick_at(ns_at_tick(t)), t);
            assert_eq!(
                tick_at(ns_at_tick(t).saturating_sub(1)),
                t.saturating_sub(1)
            );
        }
        assert_eq!(tick_at(1_000_000_000), PIT_HZ);
        assert!(tick_at(u64::MAX) < u64::MAX);
    }

    #[test]
    fn power_on_channel0_runs_at_18_hz() {
        let mut r = Rig::new();
        assert_eq!(r.pit.next_irq0_deadline(), Some(ns_at_tick(65536)));
        r.at(65535);
        assert!(!r.poll());
        r.at(65536);
        assert!(r.poll());
        r.at(PIT_HZ);
        let late = std::iter::from_fn(|| r.poll().then_some(())).count();
        assert_eq!(late, 17, "every edge of the rest of the second, one per poll");
        assert_eq!(r.pit.stats(), PitStats { irq0_fired: 18, irq0_coalesced: 0 });
    }

    #[test]
    fn mode0_interrupt_on_terminal_count() {
        let mut r = Rig::new();
        r.at(1000).program(0, 0, 100);
        assert!(!r.poll(), "mode 0 control word drops OUT: no edge");
        assert_eq!(r.status(0) & 0x80, 0, "OUT low while counting");
        assert_eq!(r.status(0) & 0x40, 0x40, "null count until loaded");
        assert_eq!(r.pit.next_irq0_deadline(), Some(ns_at_tick(1101)));
        r.at(1001);
        assert_eq!(r.status(0), 0x30, "loaded, OUT low, lohi, mode 0");
        assert_eq!(r.count(0), 100);
        r.at(1051);
        assert_eq!(r.count(0), 50);
        r.at(1100);
        assert!(!r.poll());
        assert_eq!(r.count(0), 1);
        r.at(1101);
        assert!(r.poll());
        assert_eq!(r.status(0) & 0x80, 0x80);
        assert_eq!(r.pit.next_irq0_deadline(), None, "one-shot");
        r.at(1102);
        assert_eq!(r.count(0), 0xffff, "keeps counting after terminal count");
        r.at(200_000);
        assert!(!r.poll());
        assert_eq!(r.status(0) & 0x80, 0x80, "OUT stays high");
    }

    #[test]
    fn mode0_first_byte_stops_counting() {
        let mut r = Rig::new();
        r.at(10).program(0, 0, 1000);
        r.at(110);
        r.out(PIT_BASE, 0x10);
        r.at(5000);
        assert_eq!(r.count(0), 901, "halted by the first byte");
        assert!(!r.poll());
        r.out(PIT_BASE, 0x00); // count 0x0010
        r.at(5000 + 1 + 16);
        assert!(r.poll());
    }

    #[test]
    fn mode2_rate_generator() {
        let mut r = Rig::new();
        r.at(5).program(0, 2, 1000);
        let start = 6;
        assert!(!r.poll());
        assert_eq!(r.pit.next_irq0_deadline(), Some(ns_at_tick(start + 1000)));
        r.at(start + 250);
        assert_eq!(r.count(0), 750);
        r.at(start + 999);
        assert_eq!(r.count(0), 1);
        assert_eq!(r.status(0) & 0x80, 0, "OUT low for the clock at count 1");
        r.at(start + 1000);
        assert_eq!(r.count(0), 1000, "reloaded");
        assert_eq!(r.status(0) & 0x80, 0x80);
        assert!(r.poll());
        r.at(start + 3500);
        assert!(r.poll(), "two periods late: one edge now...");
        assert_eq!(r.pit.next_irq0_deadline(), Some(ns_at_tick(start + 3500)), "...and one waiting");
        assert!(r.poll());
        assert!(!r.poll());
        assert_eq!(r.pit.stats().irq0_coalesced, 0);
        assert_eq!(r.count(0), 500);
        assert_eq!(r.pit.next_irq0_deadline(), Some(ns_at_tick(start + 4000)));
    }

    #[test]
    fn mode2_new_count_at_end_of_period() {
        let mut r = Rig::new();
        r.at(0).program(0, 2, 100);
        r.at(51);
        r.out(PIT_BASE, 10);
        r.out(PIT_BASE, 0); // count 10, while counting
        assert_eq!(r.status(0) & 0x40, 0x40, "null count until the reload");
        assert_eq!(r.count(0), 50, "current period unaffected");
        assert_eq!(r.pit.next_irq0_deadline(), Some(ns_at_tick(101)));
        r.at(101);
        assert_eq!(r.count(0), 10);
        assert_eq!(r.status(0) & 0x40, 0);
        r.at(131);
        // Edges at 101, 111, 121, 131, one per poll.
        assert_eq!(std::iter::from_fn(|| r.poll().then_some(())).count(), 4);
    }

    #[test]
    fn a_long_backlog_is_cut() {
        let mut r = Rig::new();
        r.at(0).program(0, 2, 100);
        r.at(100 * (MAX_BACKLOG + 10) + 1);
        assert_eq!(std::iter::from_fn(|| r.poll().then_some(())).count() as u64, MAX_BACKLOG);
        assert_eq!(r.pit.stats().irq0_coalesced, 10);
    }

    #[test]
    fn mode3_square_wave() {
        let mut r = Rig::new();
        r.at(0).program(0, 3, 1000);
        r.at(1);
        assert!(
            !r.poll(),
            "mode 3 starts high: no edge from the control word"
        );
        assert_eq!(r.count(0), 1000);
        r.at(2);
        assert_eq!(r.count(0), 998, "counts by two");
        r.at(500);
        assert_eq!(r.status(0) & 0x80, 0x80);
        r.at(501);
        assert_eq!(r.status(0) & 0x80, 0, "low half");
        assert_eq!(r.count(0), 1000);
        r.at(1000);
        assert_eq!(r.count(0), 2);
        r.at(1001);
        assert_eq!(r.status(0) & 0x80, 0x80);
        assert!(r.poll());
        // Odd count: high one clock longer.
        r.program(0, 3, 5);
        let s = 1002;
        r.at(s);
        let outs: Vec<u8> = (0..10)
            .map(|i| {
                r.at(s + i);
                r.status(0) >> 7
            })
            .collect();
        assert_eq!(outs, [1, 1, 1, 0, 0, 1, 1, 1, 0, 0]);
    }

    #[test]
    fn mode4_software_strobe() {
        let mut r = Rig::new();
        r.at(100).program(0, 4, 50);
        assert!(!r.poll());
        assert_eq!(r.pit.next_irq0_deadline(), Some(ns_at_tick(152)));
        r.at(150);
        assert_eq!(r.status(0) & 0x80, 0x80);
        r.at(151);
        assert_eq!(r.count(0), 0);
        assert_eq!(r.status(0) & 0x80, 0, "one clock low at zero");
        assert!(!r.poll());
        r.at(152);
        assert_eq!(r.status(0) & 0x80, 0x80);
        assert!(r.poll(), "the strobe's rising edge");
        r.at(300_000);
        assert!(!r.poll(), "one strobe per count written");
        // Linux reprograms the next event by writing a new count.
        r.out(PIT_BASE, 20);
        r.out(PIT_BASE, 0);
        r.at(300_000 + 22);
        assert!(r.poll());
    }

    #[test]
    fn mode_change_raising_out_is_an_edge() {
        let mut r = Rig::new();
        r.at(0).program(0, 0, 0); // Linux's PIT shutdown: mode 0, count 0
        r.at(1000);
        assert!(!r.poll());
        r.out(PIT_CONTROL, 0x34); // mode 2: OUT goes high at once
        assert!(r.poll());
    }

    #[test]
    fn mode1_and_mode5_need_a_gate_edge() {
        let mut r = Rig::new();
        r.at(10).program(2, 1, 30);
        assert_eq!(r.inb(PORT_B) & 0x20, 0x20, "OUT high before the trigger");
        r.at(500);
        assert_eq!(r.inb(PORT_B) & 0x20, 0x20, "no gate edge: nothing happens");
        r.out(PORT_B, 0x01); // trigger
        r.at(501);
        assert_eq!(r.inb(PORT_B) & 0x20, 0, "OUT low during the one-shot");
        assert_eq!(r.count(2), 30);
        r.at(530);
        assert_eq!(r.inb(PORT_B) & 0x20, 0);
        r.at(531);
        assert_eq!(r.inb(PORT_B) & 0x20, 0x20);
        // Retrigger.
        r.out(PORT_B, 0x00);
        r.out(PORT_B, 0x01);
        r.at(540);
        assert_eq!(r.inb(PORT_B) & 0x20, 0);

        r.at(1000).program(2, 5, 10);
        r.out(PORT_B, 0x00);
        r.at(1001);
        r.out(PORT_B, 0x01);
        let s = 1002;
        r.at(s + 9);
        assert_eq!(r.inb(PORT_B) & 0x20, 0x20);
        r.at(s + 10);
        assert_eq!(r.inb(PORT_B) & 0x20, 0, "strobe");
        r.at(s + 11);
        assert_eq!(r.inb(PORT_B) & 0x20, 0x20);
    }

    #[test]
    fn gate_pauses_mode0() {
        let mut r = Rig::new();
        r.out(PORT_B, 0x01);
        r.at(0).program(2, 0, 100);
        r.at(41);
        assert_eq!(r.count(2), 60);
        r.out(PORT_B, 0x00);
        r.at(10_000);
        assert_eq!(r.count(2), 60, "gate low holds the count");
        assert_eq!(r.inb(PORT_B) & 0x20, 0);
        r.out(PORT_B, 0x01);
        r.at(10_060);
        assert_eq!(r.inb(PORT_B) & 0x20, 0);
        r.at(10_061);
        assert_eq!(r.inb(PORT_B) & 0x20, 0x20);
    }

    #[test]
    fn latch_holds_value_until_read() {
        let mut r = Rig::new();
        r.at(0).program(0, 2, 0x1234);
        r.at(1 + 0x34);
        r.out(PIT_CONTROL, 0x00); // latch
        r.at(500);
        r.out(PIT_CONTROL, 0x00); // a second latch is ignored until read
        assert_eq!(r.inb(PIT_BASE), 0x00);
        r.at(600);
        assert_eq!(r.inb(PIT_BASE), 0x12);
        // Latch released: live reads now (0x1234 - 599).
        assert_eq!(r.inb(PIT_BASE), 0xdd);
        assert_eq!(r.inb(PIT_BASE), 0x0f);
    }

    #[test]
    fn lo_hi_access_modes_and_flip_flops() {
        let mut r = Rig::new();
        // LSB only.
        r.out(PIT_CONTROL, 0x50 | (2 << 1)); // ch1, lo, mode 2
        r.out(0x41, 0x80);
        r.at(11);
        assert_eq!(r.inb(0x41), 0x80 - 10);
        assert_eq!(r.inb(0x41), 0x80 - 10, "no flip-flop in LSB mode");
        // MSB only.
        r.out(PIT_CONTROL, 0x60 | (2 << 1)); // ch1, hi, mode 2
        r.out(0x41, 0x02); // count 0x200
        r.at(12);
        assert_eq!(r.inb(0x41), 0x02);
        // LSB then MSB with interleaved writes (allowed on the 8254).
        r.out(PIT_CONTROL, 0x70 | (2 << 1));
        assert_eq!(r.inb(0x41), 0x00, "read LSB");
        r.out(0x41, 0x00); // write LSB
        assert_eq!(r.inb(0x41), 0x02, "read MSB");
        r.out(0x41, 0x10); // write MSB: count 0x1000
        r.at(13);
        assert_eq!(r.count(1), 0x1000);
        r.at(14);
        // Control word resets the read flip-flop.
        assert_eq!(r.inb(0x41), 0xff); // LSB of 0x0fff
        r.out(PIT_CONTROL, 0x70 | (2 << 1));
        assert_eq!(r.inb(0x41), 0xff, "LSB again after a control word");
    }

    #[test]
    fn read_back_command() {
        let mut r = Rig::new();
        r.at(0).program(2, 0, 0x300);
        assert_eq!(r.status(2), 0x70, "null count until the next clock");
        r.out(PIT_CONTROL, 0x30 | (3 << 1)); // ch0: mode 3, null count
        r.at(1);
        r.out(PORT_B, 0x01); // gate on: counting from tick 2
        r.at(0x101);
        // Latch count and status of channels 0 and 2.
        r.out(PIT_CONTROL, 0xc0 | 0x02 | 0x08);
        assert_eq!(
            r.inb(0x42),
            0x30,
            "status first: OUT low, loaded, lohi, mode 0"
        );
        assert_eq!(r.inb(0x42), 0x01, "then the count (0x300 - 0xff), LSB");
        assert_eq!(r.inb(0x42), 0x02, "MSB");
        assert_eq!(r.inb(0x40), 0xf6, "ch0: OUT high, null count, lohi, mode 3");
        // Status only, count only.
        r.out(PIT_CONTROL, 0xe0 | 0x08);
        r.out(PIT_CONTROL, 0xd0 | 0x08);
        r.at(0x200);
        r.out(PIT_CONTROL, 0xe0 | 0x08); // ignored: status already latched
        assert_eq!(r.inb(0x42), 0x30);
        assert_eq!(r.inb(0x42), 0x01);
        assert_eq!(r.inb(0x42), 0x02);
        assert_eq!(r.inb(0x42), 0x02, "live again: 0x300 - 0x1fe = 0x102");
    }

    #[test]
    fn linux_pit_calibrate_tsc() {
        // arch/x86/kernel/tsc.c pit_calibrate_tsc(): gate on, speaker off, channel 2
        // mode 0 with a 10 ms latch, spin until port 0x61 bit 5 goes high.
        let mut r = Rig::new();
        r.at(777);
        let b = r.inb(PORT_B);
        r.out(PORT_B, (b & !0x02) | 0x01);
        r.out(PIT_CONTROL, 0xb0);
        let latch: u64 = PIT_HZ / (1000 / 10);
        r.out(0x42, (latch & 0xff) as u8);
        r.out(0x42, (latch >> 8) as u8);
        let start = r.tick;
        let mut spins = 0u64;
        let mut toggles = 0;
        let mut last_refresh = None;
        loop {
            r.tick += 7; // each inb takes a few hundred nanoseconds
            let v = r.inb(PORT_B);
            if last_refresh.is_some_and(|l| l != v & 0x10) {
                toggles += 1;
            }
            last_refresh = Some(v & 0x10);
            spins += 1;
            if v & 0x20 != 0 {
                break;
            }
            assert!(spins < 10_000, "channel 2 never fired");
        }
        let elapsed = r.tick - start;
        assert!(
            (latch + 1..latch + 1 + 7).contains(&elapsed),
            "after {elapsed} ticks"
        );
        assert_eq!(toggles, spins - 1, "refresh bit flips on every read");
        assert_eq!(r.inb(PORT_B) & 0x03, 0x01, "gate on, speaker off stored");
    }

    #[test]
    fn linux_quick_pit_calibrate() {
        // quick_pit_calibrate(): count from 0xffff and watch the MSB fall, reading
        // LSB and MSB back to back from port 0x42.
        let mut r = Rig::new();
        let b = r.inb(PORT_B);
        r.out(PORT_B, (b & !0x02) | 0x01);
        r.out(PIT_CONTROL, 0xb0);
        r.out(0x42, 0xff);
        r.out(0x42, 0xff);
        let t0 = r.tick;
        for expect_msb in (0xf0..=0xfe).rev() {
            r.at(t0 + 1 + 256 * (0xff - expect_msb) + 10);
            let _lsb = r.inb(0x42);
            assert_eq!(r.inb(0x42), expect_msb as u8);
        }
    }

    #[test]
    fn bcd_flag_is_kept_in_status() {
        let mut r = Rig::new();
        r.out(PIT_CONTROL, 0x31);
        assert_eq!(r.status(0) & 0x3f, 0x31);
    }

    #[test]
    fn hostile_programming_does_not_panic() {
        let mut r = Rig::new();
        let mut x: u32 = 12345;
        for _ in 0..50_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let port = [0x40, 0x41, 0x42, 0x43, 0x61][(x >> 8) as usize % 5];
            let v = (x >> 16) as u8;
            r.tick += u64::from(x >> 28) * u64::from((x >> 4) & 0xff);
            if x & 1 == 0 {
                r.out(port, v);
            } else {
                r.inb(port);
            }
            if x & 0x10 == 0 {
                let _ = r.pit.next_irq0_deadline();
                r.poll();
            }
        }
        r.tick = u64::MAX / 2_000;
        r.poll();
        let _ = r.pit.next_irq0_deadline();
    }

    #[test]
    fn deadline_is_when_poll_fires() {
        let mut r = Rig::new();
        r.at(3).program(0, 2, 11_932); // ~100 Hz
        for _ in 0..5 {
            let d = r.pit.next_irq0_deadline().unwrap();
            r.pit.poll(d - 1);
            assert!(!r.pit.poll(d - 1));
            assert!(r.pit.poll(d));
        }
        assert_eq!(r.pit.stats().irq0_coalesced, 0);
    }
}
