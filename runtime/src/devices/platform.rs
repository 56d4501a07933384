//! The PC platform of the protected-mode machine: the devices a 32-bit kernel expects,
//! their interrupt wiring, virtual time, and console input, behind one port-I/O entry.
//!
//! | ports | device | IRQ |
//! |---|---|---|
//! | 0x20–0x21, 0xa0–0xa1, 0x4d0–0x4d1 | 8259A pair, ELCR ([`Pic`]) | — |
//! | 0x40–0x43, 0x61 | 8254 and port B ([`Pit`]) | 0 |
//! | 0x60, 0x64 | i8042, no mouse; a keyboard when attached ([`I8042`]) | 1, 12 |
//! | 0x3b0–0x3df | VGA text-mode registers ([`Vga`]); the text buffer is RAM at 0xB8000 | — |
//! | 0x3f8–0x3ff | COM1 16550A ([`Uart16550`]) | 4 |
//! | 0x70–0x71 | CMOS / RTC ([`Rtc`]) | 8 |
//! | 0x80 | POST code ([`PostCode`]) | — |
//! | 0x92 | system control port A ([`SystemControlA`]) | — |
//! | 0xcf8–0xcff | PCI mechanism #1, no devices; reset at 0xcf9 ([`PciHost`]) | — |
//! | anything else | the [`PortBus`]: isa-debug-exit at 0xf4, whatever is registered with [`Platform::bus_mut`]; unclaimed ports read all ones | — |
//!
//! The 8-bit devices see a 16- or 32-bit access as consecutive byte accesses (as the ISA
//! bus splits them); the UART, the VGA and the PCI ports take wide accesses themselves.
//!
//! Console input (the terminal, a pipe) goes to COM1, or, after
//! [`Platform::attach_keyboard`], to the i8042's keyboard as key presses.
//!
//! How the CPU side drives it:
//! - `in`/`out` → [`Platform::read`] / [`Platform::write`]. [`IoEffect::Reset`] means the
//!   guest pulsed the reset line (i8042, port 0x92, port 0xcf9): stop the VM, or reset the
//!   CPU and call [`Platform::reset`].
//! - [`Platform::poll`] at least when [`Platform::next_event`] is due and when the input
//!   notifier ([`Platform::set_input_notify`]) fires; it is cheap, so also at any exit.
//! - At an instruction boundary with EFLAGS.IF set: if [`Platform::interrupt_pending`],
//!   [`Platform::acknowledge_interrupt`] gives the vector to deliver through the IDT.
//! - `hlt` with IF set and nothing pending: [`Platform::wait_for_event`] with
//!   [`Platform::next_event`], then poll and check again. A stop request from another
//!   thread should call [`PlatformWaker::wake`] (from [`Platform::waker`]).

use std::io::Write;
use std::sync::Arc;

use serde::Serialize;

use super::clock::{self, Clock, GuestClock, HostClock, Nanos};
use super::console_input::{ConsoleInput, InputNotify, InputQueue, WaitOutcome};
use super::i8042::I8042;
use super::misc::{PciHost, PostCode, SystemControlA};
use super::pic::Pic;
use super::pit::Pit;
use super::rtc::Rtc;
use super::vga::{Vga, VgaState};
use super::{
    size_mask, DebugExit, IoEffect, PortBus, PortDevice, Uart16550, COM1_BASE, DEBUG_EXIT_PORT,
};

/// IRQ of PIT channel 0.
pub const IRQ_PIT: u8 = 0;
/// IRQ of the i8042's keyboard port.
pub const IRQ_KEYBOARD: u8 = 1;
/// IRQ of COM1.
pub const IRQ_COM1: u8 = 4;
/// IRQ of the RTC.
pub const IRQ_RTC: u8 = 8;
/// IRQ of the i8042's mouse port.
pub const IRQ_MOUSE: u8 = 12;

/// How to build a [`Platform`].
pub struct PlatformConfig {
    /// Where COM1's output goes.
    pub console: Box<dyn Write + Send>,
    /// Guest RAM size, for the CMOS memory-size bytes.
    pub ram_bytes: u32,
    /// Feed the host's standard input to COM1 (see [`super::console_input`]).
    pub stdin_input: bool,
    /// Virtual time.
    pub clock: Arc<dyn Clock>,
}

impl PlatformConfig {
    /// Output to `console`, the host clock, no console input.
    pub fn new(console: Box<dyn Write + Send>, ram_bytes: u32) -> Self {
        Self {
            console,
            ram_bytes,
            stdin_input: false,
            clock: Arc::new(HostClock::new()),
        }
    }
}

/// Platform counters (`--stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PlatformStats {
    /// Rising edges driven on each IRQ line (IRQ 0: one per timer interrupt raised).
    pub irqs_raised: [u64; 16],
    /// INTA cycles (interrupts handed to the CPU), spurious ones included.
    pub interrupts_acknowledged: u64,
    /// Spurious IRQ 7 / 15 vectors handed out.
    pub spurious_interrupts: u64,
    /// PIT channel 0 interrupts raised.
    pub pit_irq0_fired: u64,
    /// PIT channel 0 periods folded into an interrupt raised for an earlier one (lost ticks).
    pub pit_irq0_coalesced: u64,
    /// Bytes of console input delivered to the UART.
    pub console_bytes_in: u64,
    /// Bytes the guest wrote to the console.
    pub console_bytes_out: u64,
    /// Console input dropped on the host side (queue full, terminal only).
    pub console_input_dropped: u64,
    /// Bytes lost to UART receive overruns (loopback or direct pushes).
    pub uart_rx_overruns: u64,
    /// Port accesses (`in`/`out`, each string element counted).
    pub port_accesses: u64,
    /// Resets the guest requested.
    pub resets_requested: u64,
}

/// Every device's state in a checkpoint, with the interrupt lines the platform
/// drives and the console input queued but not yet delivered.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PlatformState {
    pic: Pic,
    pit: Pit,
    rtc: Rtc,
    kbc: I8042,
    uart: super::uart::UartState,
    vga: (super::vga::VgaRegs, bool),
    input_to_keyboard: bool,
    pci: PciHost,
    post: PostCode,
    port_a: SystemControlA,
    lines: u16,
    irqs_raised: [u64; 16],
    console_bytes_in: u64,
    accesses: u64,
    resets: u64,
    /// Console input queued on the host side, not yet taken by the UART or keyboard.
    #[serde(with = "crate::checkpoint::bytes::vec")]
    input: Vec<u8>,
}

/// Wakes a vCPU blocked in [`Platform::wait_for_event`], from any thread.
#[derive(Debug, Clone)]
pub struct PlatformWaker(InputQueue);

impl PlatformWaker {
    pub fn wake(&self) {
        self.0.wake();
    }
}

/// Which device owns a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dev {
    Pic,
    Pit,
    Kbc,
    Rtc,
    Post,
    PortA,
    Uart,
    Vga,
    Pci,
    Bus,
}

impl Dev {
    /// Whether an access can change what the VMM polls for: a pending interrupt,
    /// the next timer event, console input moving. The POST port, port A, VGA and
    /// the PCI host bridge have no interrupts or time of their own.
    fn has_events(self) -> bool {
        !matches!(self, Dev::Post | Dev::PortA | Dev::Vga | Dev::Pci)
    }
}

fn route(port: u16) -> Dev {
    match port {
        0x20 | 0x21 | 0xa0 | 0xa1 | 0x4d0 | 0x4d1 => Dev::Pic,
        0x40..=0x43 | 0x61 => Dev::Pit,
        0x60 | 0x64 => Dev::Kbc,
        0x70 | 0x71 => Dev::Rtc,
        0x80 => Dev::Post,
        0x92 => Dev::PortA,
        0x3f8..=0x3ff => Dev::Uart,
        super::vga::VGA_FIRST_PORT..=super::vga::VGA_LAST_PORT => Dev::Vga,
        0xcf8..=0xcff => Dev::Pci,
        _ => Dev::Bus,
    }
}

/// Normalizes an access size: 1, 2, or 4 for anything else (as [`size_mask`]).
fn access_size(size: u8) -> u8 {
    match size {
        1 | 2 => size,
        _ => 4,
    }
}

/// All devices of the machine.
pub struct Platform {
    /// `time` as a plain clock (for the alarm thread).
    clock: Arc<dyn Clock>,
    time: Arc<GuestClock>,
    pic: Pic,
    pit: Pit,
    rtc: Rtc,
    kbc: I8042,
    uart: Uart16550,
    vga: Vga,
    /// Console input goes to the keyboard instead of COM1.
    input_to_keyboard: bool,
    pci: PciHost,
    post: PostCode,
    port_a: SystemControlA,
    bus: PortBus,
    input: InputQueue,
    /// Kept for its thread and terminal guard; dropped with the platform.
    console_input: ConsoleInput,
    /// Levels the platform drives on IRQ lines 0–15.
    lines: u16,
    irqs_raised: [u64; 16],
    console_bytes_in: u64,
    accesses: u64,
    resets: u64,
    /// Port I/O or an interrupt acknowledge happened since `take_touched`.
    touched: bool,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("pic", &self.pic)
            .field("console_input", &self.console_input)
            .field("accesses", &self.accesses)
            .finish_non_exhaustive()
    }
}

impl Platform {
    pub fn new(mut cfg: PlatformConfig) -> Self {
        let time = Arc::new(GuestClock::new(cfg.clock));
        cfg.clock = time.clone();
        let now = cfg.clock.now_ns();
        let mut bus = PortBus::new();
        bus.register(DEBUG_EXIT_PORT, DEBUG_EXIT_PORT, Box::new(DebugExit::new()));
        let input = InputQueue::new();
        let console_input = if cfg.stdin_input {
            ConsoleInput::stdin(input.clone()).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "no console input");
                ConsoleInput::none(input.clone())
            })
        } else {
            ConsoleInput::none(input.clone())
        };
        Self {
            pic: Pic::new(),
            pit: Pit::new_at(now),
            rtc: Rtc::new(cfg.ram_bytes, cfg.clock.wall_origin_ns()),
            kbc: I8042::new(),
            uart: Uart16550::new(COM1_BASE, cfg.console),
            vga: Vga::new(),
            input_to_keyboard: false,
            pci: PciHost::new(),
            post: PostCode::new(),
            port_a: SystemControlA::new(),
            bus,
            input,
            console_input,
            lines: 0,
            irqs_raised: [0; 16],
            console_bytes_in: 0,
            accesses: 0,
            resets: 0,
            clock: cfg.clock,
            time,
            touched: true,
        }
    }

    /// The devices' state, for a checkpoint (console output is flushed first).
    pub fn save(&mut self) -> PlatformState {
        self.bus.flush();
        PlatformState {
            pic: self.pic.clone(),
            pit: self.pit.clone(),
            rtc: self.rtc.clone(),
            kbc: self.kbc.clone(),
            uart: self.uart.save(),
            vga: self.vga.save(),
            input_to_keyboard: self.input_to_keyboard,
            pci: self.pci.clone(),
            post: self.post.clone(),
            port_a: self.port_a.clone(),
            lines: self.lines,
            irqs_raised: self.irqs_raised,
            console_bytes_in: self.console_bytes_in,
            accesses: self.accesses,
            resets: self.resets,
            input: self.input.peek_all(),
        }
    }

    /// Takes the devices' state from a checkpoint: the console output and input
    /// sources and the clock stay this platform's; the CMOS clock reads the host's
    /// wall time again (see [`Rtc::resume_wall_clock`]); queued input goes before any
    /// the new source reads.
    pub fn restore(&mut self, s: PlatformState) {
        self.pic = s.pic;
        self.pit = s.pit;
        self.rtc = s.rtc;
        self.rtc.resume_wall_clock(self.clock.wall_origin_ns());
        self.kbc = s.kbc;
        self.uart.restore(s.uart);
        self.vga.restore(s.vga);
        self.input_to_keyboard = s.input_to_keyboard;
        self.pci = s.pci;
        self.post = s.post;
        self.port_a = s.port_a;
        self.lines = s.lines;
        self.irqs_raised = s.irqs_raised;
        self.console_bytes_in = s.console_bytes_in;
        self.accesses = s.accesses;
        self.resets = s.resets;
        self.input.push_front(&s.input);
        self.touched = true;
    }

    /// Virtual time now, on the platform's clock.
    pub fn now(&self) -> Nanos {
        self.clock.now_ns()
    }

    /// The platform's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Whether the guest touched a device (port I/O, an interrupt acknowledged)
    /// since the last call: device state, the next timer event or the pending
    /// interrupts may have changed, so the VMM should poll. Clears the flag.
    pub fn take_touched(&mut self) -> bool {
        core::mem::take(&mut self.touched)
    }

    /// `take_touched` without clearing the flag.
    pub fn touched(&self) -> bool {
        self.touched
    }

    /// Guest `in` of `size` bytes (1, 2, 4) from `port`.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        self.accesses += 1;
        let dev = route(port);
        self.touched |= dev.has_events();
        let size = access_size(size);
        let v = match dev {
            Dev::Uart => {
                self.drain_input();
                let v = self.uart.read(port, size);
                self.drain_input();
                v
            }
            Dev::Vga => self.vga.read(port, size),
            Dev::Pci => self.pci.read(port, size),
            Dev::Bus => self.bus.read(port, size),
            _ => {
                let mut bytes = [0xffu8; 4];
                for (i, b) in bytes.iter_mut().enumerate().take(usize::from(size)) {
                    if let Some(p) = port.checked_add(u16::try_from(i).unwrap_or(0)) {
                        *b = self.read_byte(p);
                    }
                }
                u32::from_le_bytes(bytes)
            }
        };
        self.sync_irqs();
        let v = v & size_mask(size);
        tracing::trace!(target: "bt86::io", "in {port:#06x} -> {v:#x}");
        v
    }

    /// Guest `out` of `size` bytes (1, 2, 4) of `value` to `port`.
    pub fn write(&mut self, port: u16, size: u8, value: u32) -> IoEffect {
        self.accesses += 1;
        let dev = route(port);
        self.touched |= dev.has_events();
        let size = access_size(size);
        let value = value & size_mask(size);
        tracing::trace!(target: "bt86::io", "out {port:#06x} <- {value:#x}");
        let effect = match dev {
            Dev::Uart => {
                let e = self.uart.write(port, size, value);
                self.drain_input();
                e
            }
            Dev::Vga => self.vga.write(port, size, value),
            Dev::Pci => self.pci.write(port, size, value),
            Dev::Bus => self.bus.write(port, size, value),
            _ => {
                let mut effect = IoEffect::None;
                for (i, &b) in value
                    .to_le_bytes()
                    .iter()
                    .enumerate()
                    .take(usize::from(size))
                {
                    if let Some(p) = port.checked_add(u16::try_from(i).unwrap_or(0)) {
                        let e = self.write_byte(p, b);
                        if effect == IoEffect::None {
                            effect = e;
                        }
                    }
                }
                effect
            }
        };
        if effect == IoEffect::Reset {
            self.resets += 1;
        }
        self.sync_irqs();
        effect
    }

    fn read_byte(&mut self, port: u16) -> u8 {
        let v = match route(port) {
            Dev::Pic => u32::from(self.pic.read_port(port)),
            Dev::Pit => {
                let now = self.clock.now_ns();
                u32::from(self.pit.read(now, port))
            }
            Dev::Kbc => {
                let v = self.kbc.read(port);
                self.drain_input();
                u32::from(v)
            }
            Dev::Rtc => {
                let now = self.clock.now_ns();
                u32::from(self.rtc.read(now, port))
            }
            Dev::Post => self.post.read(port, 1),
            Dev::PortA => self.port_a.read(port, 1),
            Dev::Uart => self.uart.read(port, 1),
            Dev::Vga => self.vga.read(port, 1),
            Dev::Pci => self.pci.read(port, 1),
            Dev::Bus => self.bus.read(port, 1),
        };
        v.to_le_bytes()[0]
    }

    fn write_byte(&mut self, port: u16, v: u8) -> IoEffect {
        match route(port) {
            Dev::Pic => {
                self.pic.write_port(port, v);
                IoEffect::None
            }
            Dev::Pit => {
                let now = self.clock.now_ns();
                self.pit.write(now, port, v);
                if port == 0x61 {
                    self.port_b_written(v);
                }
                IoEffect::None
            }
            Dev::Kbc => self.kbc.write(port, v),
            Dev::Rtc => {
                let now = self.clock.now_ns();
                self.rtc.write(now, port, v);
                IoEffect::None
            }
            Dev::Post => self.post.write(port, 1, u32::from(v)),
            Dev::PortA => self.port_a.write(port, 1, u32::from(v)),
            Dev::Uart => self.uart.write(port, 1, u32::from(v)),
            Dev::Vga => self.vga.write(port, 1, u32::from(v)),
            Dev::Pci => self.pci.write(port, 1, u32::from(v)),
            Dev::Bus => self.bus.write(port, 1, u32::from(v)),
        }
    }

    /// Brings the devices to virtual time `now`: PIT channel 0 periods become IRQ 0, RTC
    /// flags are updated, queued console input moves into the UART as it has room, and
    /// the IRQ lines follow the devices.
    pub fn poll(&mut self, now: Nanos) {
        // A new edge while the last is still latched in the PIC would be lost: it
        // waits in the PIT's backlog until the CPU has taken the request.
        if !self.pic.requested(IRQ_PIT) && self.pit.poll(now) {
            // A rising edge on IRQ 0, the line then held high until the next period.
            self.pic.lower_irq(IRQ_PIT);
            self.pic.raise_irq(IRQ_PIT);
            self.lines |= 1 << IRQ_PIT;
            self.irqs_raised[usize::from(IRQ_PIT)] += 1;
        }
        self.rtc.advance(now);
        self.drain_input();
        self.sync_irqs();
    }

    /// The CPU's INTR line.
    pub fn interrupt_pending(&self) -> bool {
        self.pic.interrupt_pending()
    }

    /// The INTA cycle: the vector to deliver, or None if no interrupt is pending.
    pub fn acknowledge_interrupt(&mut self) -> Option<u8> {
        if !self.pic.interrupt_pending() {
            return None;
        }
        self.touched = true;
        Some(self.pic.acknowledge())
    }

    /// When the next timer interrupt (PIT IRQ 0, RTC IRQ 8) is due, counting only those
    /// the PIC would let through; None if none is coming. May be in the past: poll now.
    pub fn next_event(&self) -> Option<Nanos> {
        // While a request is latched, more edges wait: the CPU taking it (a PIC
        // access or an interrupt delivery) is what lets the next one through.
        let pit = (self.pic.irq_unmasked(IRQ_PIT) && !self.pic.requested(IRQ_PIT))
            .then(|| self.pit.next_irq0_deadline())
            .flatten();
        let rtc = self
            .pic
            .irq_unmasked(IRQ_RTC)
            .then(|| self.rtc.next_deadline())
            .flatten();
        match (pit, rtc) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Channel 2's gate on with the speaker off is how a kernel starts timing
    /// the TSC against the PIT: time runs clipped until it is done
    /// ([`GuestClock`]).
    fn port_b_written(&mut self, v: u8) {
        if v & 0b11 == 0b01 {
            self.time.start_calibration();
        } else {
            self.time.end_calibration();
        }
    }

    /// The guest's TSC while it calibrates it against the PIT (emulated then:
    /// it follows clipped time), None otherwise.
    pub fn calibration_tsc(&self) -> Option<u64> {
        self.time.calibration_tsc()
    }

    /// Whether the guest is calibrating its TSC (`rdtsc` must be emulated).
    pub fn calibrating(&self) -> bool {
        self.time.calibrating()
    }

    /// Blocks the calling (vCPU) thread until `deadline` (virtual time; None = no
    /// deadline), until console input arrives that the UART can take, or until woken.
    /// Call [`Platform::poll`] afterwards.
    pub fn wait_for_event(&mut self, deadline: Option<Nanos>) -> WaitOutcome {
        self.uart.flush();
        // An idle guest is not timing anything; its wake-up is in real time.
        self.time.end_calibration();
        let timeout = deadline.map(|d| clock::until(self.clock.now_ns(), d));
        let want_input = if self.input_to_keyboard { self.kbc.key_room() >= 8 } else { self.uart.rx_room() > 0 };
        self.input.wait(timeout, want_input)
    }

    /// A handle that wakes [`Platform::wait_for_event`] from another thread.
    pub fn waker(&self) -> PlatformWaker {
        PlatformWaker(self.input.clone())
    }

    /// Sets the function called (on the input thread) when console input is queued, so
    /// the CPU side can make a running vCPU exit and poll.
    pub fn set_input_notify(&self, f: Option<InputNotify>) {
        self.input.set_notify(f);
    }

    /// Reads console input from `reader` (a file, a pipe, test data) instead of
    /// whatever source the platform started with.
    pub fn attach_input<R: std::io::Read + Send + 'static>(&mut self, reader: R) -> Result<(), super::ConsoleInputError> {
        self.console_input = ConsoleInput::from_reader(reader, self.input.clone())?;
        Ok(())
    }

    /// Plugs a keyboard into the i8042 (unless one is there: a restored checkpoint's)
    /// and sends console input there (as key presses) instead of to COM1.
    pub fn attach_keyboard(&mut self) {
        if !self.kbc.has_keyboard() {
            self.kbc.attach_keyboard();
        }
        self.input_to_keyboard = true;
    }

    /// Turns on the Ctrl-A escapes of a terminal console, handled by `f` on the input
    /// thread (see [`super::console_input`]).
    pub fn set_escape_handler(&self, f: super::console_input::EscapeHandler) {
        self.console_input.set_escape_handler(f);
    }

    /// What console input comes from.
    pub fn input_source(&self) -> super::console_input::InputSource {
        self.console_input.source()
    }

    /// The VGA's CRT controller state, for a display.
    pub fn vga_state(&self) -> Arc<VgaState> {
        self.vga.state()
    }

    /// Whether console input may still arrive (a source that has not ended, or
    /// bytes queued): a halted guest with no timer can still be woken by it.
    pub fn input_possible(&self) -> bool {
        let live = self.console_input.source() != super::console_input::InputSource::None && !self.input.source_ended();
        live || !self.input.is_empty()
    }

    /// Queues console input as if typed (delivered by the next poll or UART access).
    /// Returns how many bytes fit in the queue.
    pub fn push_input(&self, bytes: &[u8]) -> usize {
        self.input.push(bytes)
    }

    /// The console input queue (to attach another source, e.g. a file).
    pub fn input_queue(&self) -> &InputQueue {
        &self.input
    }

    /// Writes buffered console output out (at exit and when the guest idles).
    pub fn flush(&mut self) {
        self.uart.flush();
        self.bus.flush();
    }

    /// The bus for ports no platform device owns; devices registered there on ports the
    /// platform routes itself (see the table above) are never reached.
    pub fn bus_mut(&mut self) -> &mut PortBus {
        &mut self.bus
    }

    /// Number of port accesses so far.
    pub fn accesses(&self) -> u64 {
        self.accesses
    }

    /// The interrupt controller (state inspection, tests).
    pub fn pic(&self) -> &Pic {
        &self.pic
    }

    pub fn stats(&self) -> PlatformStats {
        let pic = self.pic.stats();
        let pit = self.pit.stats();
        let uart = self.uart.stats();
        PlatformStats {
            irqs_raised: self.irqs_raised,
            interrupts_acknowledged: pic.acknowledged,
            spurious_interrupts: pic.spurious,
            pit_irq0_fired: pit.irq0_fired,
            pit_irq0_coalesced: pit.irq0_coalesced,
            console_bytes_in: self.console_bytes_in,
            console_bytes_out: uart.tx_bytes,
            console_input_dropped: self.input.counts().1,
            uart_rx_overruns: uart.rx_overruns,
            port_accesses: self.accesses,
            resets_requested: self.resets,
        }
    }

    /// A machine reset (after [`IoEffect::Reset`], if the VMM reboots the guest): every
    /// device back to its power-on state except the CMOS time and RAM; console output
    /// and input, the bus's extra devices and the counters are kept.
    pub fn reset(&mut self) {
        let now = self.clock.now_ns();
        self.pic = Pic::new();
        self.pit = Pit::new_at(now);
        self.rtc.reset();
        let keyboard = self.kbc.has_keyboard();
        self.kbc = I8042::new();
        if keyboard {
            self.kbc.attach_keyboard();
        }
        self.uart.reset();
        self.pci = PciHost::new();
        self.port_a = SystemControlA::new();
        self.lines = 0;
        self.sync_irqs();
    }

    fn drain_input(&mut self) {
        if self.input_to_keyboard {
            // A key is at most 8 bytes of scan codes (Ctrl or Shift around an extended
            // key); take terminal bytes while a whole key surely fits.
            while self.kbc.key_room() >= 8 && !self.input.is_empty() {
                let bytes = self.input.take(1);
                // An escape sequence arrives whole: take the rest of it with its ESC.
                let bytes = if bytes == [0x1b] { [bytes, self.input.take(3)].concat() } else { bytes };
                self.console_bytes_in += bytes.len() as u64;
                let keys = super::keyboard::keys_from_terminal(&bytes);
                self.kbc.push_keys(&keys);
            }
            self.sync_irqs();
            return;
        }
        let room = self.uart.rx_room();
        if room == 0 || self.input.is_empty() {
            return;
        }
        let bytes = self.input.take(room);
        self.console_bytes_in += bytes.len() as u64;
        self.uart.push_input(&bytes);
    }

    fn sync_irqs(&mut self) {
        self.set_line(IRQ_KEYBOARD, self.kbc.keyboard_irq());
        self.set_line(IRQ_COM1, self.uart.interrupt_pending());
        self.set_line(IRQ_RTC, self.rtc.interrupt_pending());
        self.set_line(IRQ_MOUSE, self.kbc.aux_irq());
    }

    fn set_line(&mut self, irq: u8, level: bool) {
        let bit = 1u16 << irq;
        if level == (self.lines & bit != 0) {
            return;
        }
        if level {
            self.lines |= bit;
            self.irqs_raised[usize::from(irq)] += 1;
            self.pic.raise_irq(irq);
        } else {
            self.lines &= !bit;
            self.pic.lower_irq(irq);
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::clock::FakeClock;
    use crate::devices::pit::{ns_at_tick, PIT_HZ};
    use crate::devices::SharedBuffer;
    use std::time::Duration;

    /// 2024-02-29 23:59:58 UTC.
    const WALL: u64 = 1_709_251_198;

    fn platform() -> (Platform, FakeClock, SharedBuffer) {
        let clock = FakeClock::new(WALL);
        let out = SharedBuffer::new();
        let p = Platform::new(PlatformConfig {
            console: Box::new(out.clone()),
            ram_bytes: 64 << 20,
            stdin_input: false,
            clock: Arc::new(clock.clone()),
        });
        (p, clock, out)
    }

    fn outb(p: &mut Platform, port: u16, v: u8) {
        assert_eq!(
            p.write(port, 1, u32::from(v)),
            IoEffect::None,
            "port {port:#x}"
        );
    }

    fn inb(p: &mut Platform, port: u16) -> u8 {
        p.read(port, 1) as u8
    }

    /// Linux's PIC setup: vectors 0x30 / 0x38, everything masked but the cascade.
    fn init_pic(p: &mut Platform) {
        for (port, v) in [
            (0x20, 0x11),
            (0x21, 0x30),
            (0x21, 0x04),
            (0x21, 0x01),
            (0xa0, 0x11),
            (0xa1, 0x38),
            (0xa1, 0x02),
            (0xa1, 0x01),
        ] {
            outb(p, port, v);
        }
        outb(p, 0x21, 0xfb);
        outb(p, 0xa1, 0xff);
    }

    fn poll(p: &mut Platform, c: &FakeClock) {
        let now = c.now_ns();
        p.poll(now);
    }

    #[test]
    fn unclaimed_ports_and_debug_exit() {
        let (mut p, _, _) = platform();
        assert_eq!(p.read(0x2f8, 1), 0xff);
        assert_eq!(p.read(0x1234, 4), 0xffff_ffff);
        assert_eq!(p.write(0x1234, 2, 7), IoEffect::None);
        assert_eq!(p.write(DEBUG_EXIT_PORT, 1, 3), IoEffect::Exit(3));
        assert_eq!(p.read(0xffff, 2), 0xffff);
        assert_eq!(p.stats().port_accesses, 5);
    }

    #[test]
    fn console_output_and_stats() {
        let (mut p, _, out) = platform();
        for b in b"hi\n" {
            outb(&mut p, COM1_BASE, *b);
        }
        assert_eq!(out.contents(), b"hi\n");
        outb(&mut p, COM1_BASE, b'x');
        p.flush();
        assert_eq!(out.contents(), b"hi\nx");
        assert_eq!(p.stats().console_bytes_out, 4);
    }

    #[test]
    fn timer_interrupt_end_to_end() {
        let (mut p, c, _) = platform();
        init_pic(&mut p);
        assert_eq!(p.next_event(), None, "IRQ 0 masked");
        // PIT channel 0: mode 2, 100 Hz.
        outb(&mut p, 0x43, 0x34);
        outb(&mut p, 0x40, (11_932u16 & 0xff) as u8);
        outb(&mut p, 0x40, (11_932u16 >> 8) as u8);
        outb(&mut p, 0x21, 0xfa); // unmask IRQ 0
        let due = p.next_event().expect("timer programmed");
        assert_eq!(due, ns_at_tick(1 + 11_932));
        c.set_ns(due - 1);
        poll(&mut p, &c);
        assert!(!p.interrupt_pending());
        c.set_ns(due);
        poll(&mut p, &c);
        assert!(p.interrupt_pending());
        assert_eq!(p.acknowledge_interrupt(), Some(0x30));
        assert!(!p.interrupt_pending());
        assert_eq!(p.acknowledge_interrupt(), None);
        // Missed periods while the guest is busy: every one arrives, one at a time.
        c.advance(Duration::from_millis(55));
        poll(&mut p, &c);
        assert!(!p.interrupt_pending(), "IRQ 0 still in service");
        let mut taken = 1;
        for _ in 0..10 {
            outb(&mut p, 0x20, 0x20); // EOI
            poll(&mut p, &c);
            if p.interrupt_pending() {
                assert_eq!(p.acknowledge_interrupt(), Some(0x30));
                taken += 1;
            }
        }
        assert_eq!(taken, 6, "the one on time and the five late ones");
        let s = p.stats();
        assert_eq!(s.irqs_raised[0], 6);
        assert_eq!((s.pit_irq0_fired, s.pit_irq0_coalesced), (6, 0));
        assert_eq!(s.interrupts_acknowledged, 6);
        assert_eq!(s.spurious_interrupts, 0);
    }

    #[test]
    fn serial_input_interrupt() {
        let (mut p, c, _) = platform();
        init_pic(&mut p);
        outb(&mut p, 0x21, 0xeb); // unmask IRQ 4
        outb(&mut p, COM1_BASE + 2, 0x07); // FIFO on
        outb(&mut p, COM1_BASE + 1, 0x01); // IER: received data
        outb(&mut p, COM1_BASE + 4, 0x08); // OUT2
        assert_eq!(p.push_input(b"hello, world! 0123456789"), 24);
        assert!(!p.interrupt_pending(), "delivered at the next poll");
        poll(&mut p, &c);
        assert!(p.interrupt_pending());
        assert_eq!(p.acknowledge_interrupt(), Some(0x34));
        // The driver drains the FIFO while LSR shows data; the FIFO refills as it goes.
        let mut got = Vec::new();
        while inb(&mut p, COM1_BASE + 5) & 1 != 0 {
            got.push(inb(&mut p, COM1_BASE));
        }
        assert_eq!(got, b"hello, world! 0123456789");
        assert_eq!(inb(&mut p, COM1_BASE + 2) & 0x0f, 0x01, "no interrupt left");
        outb(&mut p, 0x20, 0x20);
        assert!(!p.interrupt_pending());
        let s = p.stats();
        assert_eq!(s.console_bytes_in, 24);
        assert_eq!(s.irqs_raised[4], 1);
        assert_eq!(s.uart_rx_overruns, 0);
    }

    #[test]
    fn rtc_interrupt_through_the_slave() {
        let (mut p, c, _) = platform();
        init_pic(&mut p);
        outb(&mut p, 0x70, 0x0b);
        outb(&mut p, 0x71, 0x42); // PIE, 24h
        assert_eq!(p.next_event(), None, "IRQ 8 masked at the slave");
        outb(&mut p, 0xa1, 0xfe);
        let due = p.next_event().expect("periodic interrupt enabled");
        assert_eq!(due, 976_563);
        c.set_ns(due);
        poll(&mut p, &c);
        assert_eq!(p.acknowledge_interrupt(), Some(0x38));
        outb(&mut p, 0x70, 0x0c);
        assert_eq!(inb(&mut p, 0x71), 0xc0);
        outb(&mut p, 0xa0, 0x20);
        outb(&mut p, 0x20, 0x20);
        assert!(!p.interrupt_pending());
        assert_eq!(p.stats().irqs_raised[8], 1);
        // The clock reads the fake wall time.
        outb(&mut p, 0x70, 0x09);
        assert_eq!(inb(&mut p, 0x71), 0x24);
        outb(&mut p, 0x70, 0x15);
        assert_eq!(inb(&mut p, 0x71), 0x80, "640 KiB base memory");
    }

    #[test]
    fn reset_sources() {
        let (mut p, _, _) = platform();
        assert_eq!(p.write(0x64, 1, 0xfe), IoEffect::Reset);
        assert_eq!(p.write(0x92, 1, 0x03), IoEffect::Reset);
        assert_eq!(p.write(0xcf9, 1, 0x06), IoEffect::Reset);
        assert_eq!(p.stats().resets_requested, 3);
        p.reset();
        assert_eq!(inb(&mut p, 0x21), 0xff, "PIC masked again after reset");
    }

    #[test]
    fn pci_and_post() {
        let (mut p, _, _) = platform();
        p.write(0xcf8, 4, 0x8000_0800);
        assert_eq!(p.read(0xcf8, 4), 0x8000_0800);
        assert_eq!(p.read(0xcfc, 4), 0xffff_ffff);
        assert_eq!(p.read(0xcfe, 2), 0xffff);
        outb(&mut p, 0x80, 0x55);
        assert_eq!(inb(&mut p, 0x80), 0xff);
    }

    #[test]
    fn wide_accesses_to_byte_devices_split() {
        let (mut p, _, _) = platform();
        init_pic(&mut p);
        // outw to 0x20 writes 0x20 (OCW3 read ISR) and 0x21 (IMR).
        p.write(0x20, 2, 0x5a0b);
        assert_eq!(inb(&mut p, 0x21), 0x5a);
        // inw from 0x20 reads ISR, then IMR.
        assert_eq!(p.read(0x20, 2), 0x5a00);
        // A dword at 0x70 covers 0x70–0x73: index (write-only, 0xff), data, two unclaimed.
        outb(&mut p, 0x70, 0x0d);
        assert_eq!(p.read(0x70, 4), 0xffff_80ff);
    }

    #[test]
    fn calibration_loop_through_port_61() {
        let (mut p, c, _) = platform();
        let b = inb(&mut p, 0x61);
        outb(&mut p, 0x61, (b & !0x02) | 0x01);
        outb(&mut p, 0x43, 0xb0);
        let latch = (PIT_HZ / 20) as u16; // 50 ms
        outb(&mut p, 0x42, latch as u8);
        outb(&mut p, 0x42, (latch >> 8) as u8);
        let start = c.now_ns();
        // Reads 1 µs apart (longer steps would be clipped: see GuestClock).
        while inb(&mut p, 0x61) & 0x20 == 0 {
            c.advance(Duration::from_micros(1));
            assert!(c.now_ns() - start < 1_000_000_000);
        }
        let ms = (c.now_ns() - start) / 1_000_000;
        assert_eq!(ms, 50);
    }

    /// Linux's `pit_calibrate_tsc` loop, with the host stalling now and then:
    /// the guest's TSC follows clipped time, so no read looks ten times slower
    /// than the fastest and the rate comes out exact (the fake clock's TSC
    /// counts at 1 GHz).
    #[test]
    fn calibration_survives_host_stalls() {
        let (mut p, c, _) = platform();
        let b = inb(&mut p, 0x61);
        outb(&mut p, 0x61, (b & !0x02) | 0x01);
        assert!(p.calibrating());
        outb(&mut p, 0x43, 0xb0);
        let latch = (PIT_HZ / 100) as u16; // 10 ms
        outb(&mut p, 0x42, latch as u8);
        outb(&mut p, 0x42, (latch >> 8) as u8);
        let tsc = |p: &Platform| p.calibration_tsc().expect("calibrating");
        let (t0, mut last) = (tsc(&p), tsc(&p));
        let (mut min, mut max, mut reads) = (u64::MAX, 0, 0u64);
        while inb(&mut p, 0x61) & 0x20 == 0 {
            reads += 1;
            c.advance_ns(if reads % 997 == 0 { 300_000 } else { 400 });
            let now = tsc(&p);
            min = min.min(now - last);
            max = max.max(now - last);
            last = now;
        }
        assert!(max <= 10 * min, "max {max} min {min}");
        let khz = (last - t0) / 10; // TSC ticks in 10 ms
        assert!((khz as i64 - 1_000_000).abs() < 1_000, "{khz} kHz");
        outb(&mut p, 0x61, 0);
        assert!(!p.calibrating());
        assert_eq!(p.now(), c.now_ns(), "real time again");
    }

    #[test]
    fn waiting() {
        let (mut p, c, _) = platform();
        c.set_ns(1_000_000);
        assert_eq!(
            p.wait_for_event(Some(5)),
            WaitOutcome::Deadline,
            "deadline passed"
        );
        let w = p.waker();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            w.wake();
        });
        assert_eq!(p.wait_for_event(None), WaitOutcome::Woken);
        h.join().unwrap();
        p.push_input(b"k");
        assert_eq!(p.wait_for_event(None), WaitOutcome::Input);
        poll(&mut p, &c);
        // Without FIFOs the UART holds one byte: more input does not end the wait.
        p.push_input(b"more");
        assert_eq!(
            p.wait_for_event(Some(c.now_ns() + 2_000_000)),
            WaitOutcome::Deadline
        );
        assert_eq!(inb(&mut p, COM1_BASE), b'k');
        assert_eq!(inb(&mut p, COM1_BASE), b'm', "refilled on access");
    }

    #[test]
    fn input_notify() {
        let (p, _, _) = platform();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = hits.clone();
        p.set_input_notify(Some(Arc::new(move || {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })));
        p.push_input(b"x");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn platform_is_send() {
        fn send<T: Send>() {}
        send::<Platform>();
        send::<PlatformWaker>();
    }

    #[test]
    fn stats_serialize() {
        let (p, _, _) = platform();
        let json = serde_json::to_string(&p.stats()).unwrap();
        assert!(json.contains("\"pit_irq0_coalesced\":0"), "{json}");
        assert!(json.contains("\"irqs_raised\":[0,"), "{json}");
    }

    #[test]
    fn hostile_port_traffic_does_not_panic() {
        let (mut p, c, _) = platform();
        let ports: Vec<u16> = [
            0x20u16, 0x21, 0xa0, 0xa1, 0x40, 0x41, 0x42, 0x43, 0x60, 0x61, 0x64, 0x70, 0x71, 0x80,
            0x92, 0x4d0, 0x4d1, 0xcf8, 0xcf9, 0xcfc, 0xcff,
        ]
        .into_iter()
        .chain(0x3f8..=0x3ff)
        .collect();
        let mut x: u32 = 0x1234_5678;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let port = ports[x as usize % ports.len()];
            let size = [1u8, 2, 4, 3][(x >> 8) as usize % 4];
            let v = x.rotate_left(7);
            if x & 1 == 0 {
                let _ = p.write(port, size, v);
            } else {
                let _ = p.read(port, size);
            }
            if x & 0x30 == 0 {
                c.advance_ns(u64::from(x >> 12));
                poll(&mut p, &c);
                let _ = p.next_event();
                // Bounded: with level-triggered lines held high this never ends.
                for _ in 0..20 {
                    if !p.interrupt_pending() {
                        break;
                    }
                    let _ = p.acknowledge_interrupt();
                    p.write(0x20, 1, 0x20);
                    p.write(0xa0, 1, 0x20);
                }
            }
            if x & 0x3ff == 0 {
                p.push_input(&x.to_le_bytes());
            }
        }
        let _ = p.stats();
    }
}
