//! Virtual time for the devices.
//!
//! Virtual time follows the host's time-stamp counter, converted to nanoseconds
//! at the TSC rate measured once per process against the host's monotonic
//! clock. The guest's `rdtsc` reads the same counter, so the guest's TSC and its
//! timers (PIT, RTC) advance at exactly the same rate: Linux calibrates the TSC
//! against PIT channel 2 and then finds no skew between them, whatever error the
//! rate measurement has. Devices never read the clock
//! themselves: [`super::Platform`] reads its [`Clock`] once per port access or poll and
//! hands the time down as [`Nanos`], so every device can be tested with a [`FakeClock`].
//! Wall-clock time (for the CMOS clock) is the wall time at the clock's origin plus the
//! monotonic time since, so a fake clock moves both together and a host clock step
//! (NTP, `date -s`) does not jump the guest's clock, as with a real battery-backed RTC.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Nanoseconds on a [`Clock`]'s monotonic time line (0 = the clock's origin).
pub type Nanos = u64;

/// A source of virtual time.
pub trait Clock: Send + Sync {
    /// Monotonic nanoseconds since the clock's origin; never goes backwards.
    fn now_ns(&self) -> Nanos;
    /// Wall-clock time (UTC) at the origin, in nanoseconds since the Unix epoch.
    fn wall_origin_ns(&self) -> u64;
    /// The host time-stamp counter's value at time `ns` on this clock (a clock
    /// not based on it counts at 1 GHz from 0).
    fn tsc_at(&self, ns: Nanos) -> u64 {
        ns
    }
}

/// The host's time-stamp counter.
pub fn host_tsc() -> u64 {
    // SAFETY: rdtsc reads a counter and has no memory effects; x86-64 Linux leaves
    // it enabled for user space (CR4.TSD clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The host TSC's rate in Hz, measured once per process over 20 ms of the
/// monotonic clock.
pub fn tsc_hz() -> u64 {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        let (t0, c0) = (Instant::now(), host_tsc());
        std::thread::sleep(Duration::from_millis(20));
        let (c1, t1) = (host_tsc(), Instant::now());
        let ns = t1.duration_since(t0).as_nanos().max(1);
        u64::try_from(u128::from(c1.wrapping_sub(c0)) * 1_000_000_000 / ns).unwrap_or(1).max(1)
    })
}

/// Nanoseconds per host TSC tick, as a 32.32 fixed-point number.
fn ns_per_tick() -> u128 {
    static NS_PER_TICK: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    *NS_PER_TICK.get_or_init(|| (1_000_000_000u128 << 32) / u128::from(tsc_hz()))
}

/// `ticks` of the host TSC in nanoseconds (a multiplication: cheap enough for
/// every system call's path, where a division was not).
pub fn tsc_ticks_to_ns(ticks: u64) -> u64 {
    u64::try_from((u128::from(ticks) * ns_per_tick()) >> 32).unwrap_or(u64::MAX)
}

/// The host's TSC as a clock, with the host's wall time sampled at creation.
#[derive(Debug, Clone, Copy)]
pub struct HostClock {
    origin_tsc: u64,
    /// Virtual time at `origin_tsc` (0, or where a restored checkpoint left off).
    start_ns: Nanos,
    /// Nanoseconds per TSC tick, as a 32.32 fixed-point number.
    ns_per_tick: u128,
    wall_origin_ns: u64,
}

impl HostClock {
    pub fn new() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self {
            origin_tsc: host_tsc(),
            start_ns: 0,
            ns_per_tick: ns_per_tick(),
            wall_origin_ns: u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// A clock that continues a time line: it reads `at_ns` when the host TSC reads
    /// `at_tsc`, and its wall time is the host's wall time now (so its wall origin
    /// lies `at_ns` before now). A restored checkpoint's virtual time goes on from
    /// where it stopped, however long the checkpoint waited.
    pub fn resuming(at_ns: Nanos, at_tsc: u64) -> Self {
        let fresh = Self::new();
        let since = fresh.ticks_to_ns(fresh.origin_tsc.saturating_sub(at_tsc));
        Self {
            origin_tsc: at_tsc,
            start_ns: at_ns,
            wall_origin_ns: fresh.wall_origin_ns.saturating_sub(at_ns.saturating_add(since)),
            ..fresh
        }
    }

    fn ticks_to_ns(&self, ticks: u64) -> Nanos {
        u64::try_from((u128::from(ticks) * self.ns_per_tick) >> 32).unwrap_or(u64::MAX)
    }
}

impl Default for HostClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for HostClock {
    fn now_ns(&self) -> Nanos {
        let ticks = host_tsc().saturating_sub(self.origin_tsc);
        self.start_ns.saturating_add(self.ticks_to_ns(ticks))
    }

    fn wall_origin_ns(&self) -> u64 {
        self.wall_origin_ns
    }

    fn tsc_at(&self, ns: Nanos) -> u64 {
        let ticks = u128::from(ns) * u128::from(tsc_hz()) / 1_000_000_000;
        self.origin_tsc.saturating_add(u64::try_from(ticks).unwrap_or(u64::MAX))
    }
}

/// Time the guest sees: the platform's clock, except while the guest calibrates
/// its TSC against PIT channel 2 (gate on, speaker off: how Linux and other
/// kernels do it at boot). Their calibration loops time one port read after
/// another and give up when one read takes ten times longer than the shortest,
/// which a host interrupt or a preempted vCPU thread does all the time here
/// (reads take 0.3–0.5 µs, hiccups 10–100 µs and more). So while calibrating,
/// time advances between two reads by the real time elapsed but at most
/// [`CLIP_NS`]: the host's stalls vanish, and the guest's TSC (emulated then,
/// see [`GuestClock::calibration_tsc`]) follows the same time, so TSC and PIT
/// agree exactly. Clipped time only falls behind; when calibration ends it
/// jumps forward to the real time again, so nothing runs backwards.
pub struct GuestClock {
    inner: Arc<dyn Clock>,
    clipping: std::sync::atomic::AtomicBool,
    clip: std::sync::Mutex<Clip>,
}

/// Longest step of clipped time between two reads.
pub const CLIP_NS: Nanos = 2_000;
/// Clipped time one calibration may last (Linux's longest attempt is 50 ms).
pub const CLIP_LIMIT_NS: Nanos = 250_000_000;
/// Real time one calibration may last. Clipped time moves only when the guest
/// reads it, at most [`CLIP_NS`] a read, so after a calibration that leaves the
/// gate on (Linux does) a guest that keeps computing without idling would see
/// its clock crawl: at Linux's boot, time ran at a fraction of real time for
/// the whole run, and every `rdtsc` stayed emulated.
pub const CLIP_REAL_LIMIT_NS: Nanos = 500_000_000;

#[derive(Default)]
struct Clip {
    /// The real time at the last read.
    real: Nanos,
    /// The clipped time at the last read.
    virt: Nanos,
    /// The clipped time calibration started.
    since: Nanos,
    /// The real time calibration (re)started.
    since_real: Nanos,
}

impl GuestClock {
    pub fn new(inner: Arc<dyn Clock>) -> Self {
        Self { inner, clipping: false.into(), clip: Default::default() }
    }

    /// The guest started (or restarted) a calibration: clip stalls from now on.
    pub fn start_calibration(&self) {
        let mut clip = self.lock();
        let now = self.inner.now_ns();
        if !self.clipping.load(Ordering::SeqCst) {
            *clip = Clip { real: now, virt: now, since: now, since_real: now };
            self.clipping.store(true, Ordering::SeqCst);
        } else {
            clip.since = clip.virt;
            clip.since_real = now;
        }
    }

    /// Calibration is over (or the guest idles): time is real again.
    pub fn end_calibration(&self) {
        let _clip = self.lock();
        self.clipping.store(false, Ordering::SeqCst);
    }

    /// Whether time is clipped now.
    pub fn calibrating(&self) -> bool {
        self.clipping.load(Ordering::SeqCst)
    }

    /// The guest's TSC while calibrating (the host TSC at the clipped time),
    /// None otherwise.
    pub fn calibration_tsc(&self) -> Option<u64> {
        self.calibrating().then(|| self.inner.tsc_at(self.now_ns()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Clip> {
        self.clip.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Clock for GuestClock {
    fn now_ns(&self) -> Nanos {
        if !self.clipping.load(Ordering::SeqCst) {
            return self.inner.now_ns();
        }
        let mut clip = self.lock();
        let real = self.inner.now_ns();
        if !self.clipping.load(Ordering::SeqCst) {
            return real;
        }
        clip.virt += real.saturating_sub(clip.real).min(CLIP_NS);
        clip.real = real;
        if clip.virt - clip.since > CLIP_LIMIT_NS || real - clip.since_real > CLIP_REAL_LIMIT_NS {
            self.clipping.store(false, Ordering::SeqCst);
            return real;
        }
        clip.virt
    }

    fn wall_origin_ns(&self) -> u64 {
        self.inner.wall_origin_ns()
    }

    fn tsc_at(&self, ns: Nanos) -> u64 {
        self.inner.tsc_at(ns)
    }
}

/// A clock that moves only when told to (tests). Clones share the same time.
#[derive(Debug, Clone)]
pub struct FakeClock {
    now: Arc<AtomicU64>,
    wall_origin_ns: u64,
}

impl FakeClock {
    /// A fake clock at monotonic time 0, whose origin is `wall_origin_secs` after the
    /// Unix epoch.
    pub fn new(wall_origin_secs: u64) -> Self {
        Self {
            now: Arc::new(AtomicU64::new(0)),
            wall_origin_ns: wall_origin_secs.saturating_mul(1_000_000_000),
        }
    }

    /// Moves the clock forward by `ns` nanoseconds.
    pub fn advance_ns(&self, ns: u64) {
        // fetch_update cannot fail with a closure that always returns Some.
        let _ = self
            .now
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(ns))
            });
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.advance_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Sets the clock to `ns`; a time earlier than the current one is ignored, since a
    /// monotonic clock never goes back.
    pub fn set_ns(&self, ns: Nanos) {
        self.now.fetch_max(ns, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_ns(&self) -> Nanos {
        self.now.load(Ordering::SeqCst)
    }

    fn wall_origin_ns(&self) -> u64 {
        self.wall_origin_ns
    }
}

/// How long from `now` until `deadline` (zero if it has passed).
pub fn until(now: Nanos, deadline: Nanos) -> Duration {
    Duration::from_nanos(deadline.saturating_sub(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_is_shared_and_monotonic() {
        let c = FakeClock::new(1_000);
        let d = c.clone();
        c.advance(Duration::from_millis(5));
        assert_eq!(d.now_ns(), 5_000_000);
        d.set_ns(1);
        assert_eq!(c.now_ns(), 5_000_000, "never goes back");
        c.advance_ns(u64::MAX);
        assert_eq!(c.now_ns(), u64::MAX, "saturates");
        assert_eq!(c.wall_origin_ns(), 1_000_000_000_000);
    }

    #[test]
    fn calibration_clips_stalls_and_ends_in_real_time() {
        let fake = FakeClock::new(0);
        let c = GuestClock::new(Arc::new(fake.clone()));
        fake.advance_ns(1_000);
        c.start_calibration();
        assert!(c.calibrating());
        fake.advance_ns(500);
        assert_eq!(c.now_ns(), 1_500, "short steps pass");
        fake.advance_ns(80_000);
        assert_eq!(c.now_ns(), 1_500 + CLIP_NS, "a stall is clipped");
        assert_eq!(c.calibration_tsc(), Some(1_500 + CLIP_NS), "the TSC follows clipped time");
        c.end_calibration();
        assert_eq!(c.now_ns(), 81_500, "real time again");
        assert_eq!(c.calibration_tsc(), None);
    }

    #[test]
    fn calibration_cannot_last_forever() {
        let fake = FakeClock::new(0);
        let c = GuestClock::new(Arc::new(fake.clone()));
        c.start_calibration();
        let mut last = 0;
        while c.calibrating() {
            fake.advance_ns(CLIP_NS);
            let now = c.now_ns();
            assert!(now >= last);
            last = now;
        }
        assert!(last >= CLIP_LIMIT_NS);
    }

    /// A guest that leaves the gate on and reads the clock seldom: clipped time
    /// crawls, but calibration ends after half a second of real time.
    #[test]
    fn calibration_ends_after_half_a_real_second() {
        let fake = FakeClock::new(0);
        let c = GuestClock::new(Arc::new(fake.clone()));
        c.start_calibration();
        for _ in 0..10 {
            fake.advance_ns(CLIP_REAL_LIMIT_NS / 8);
            let _ = c.now_ns();
        }
        assert!(!c.calibrating(), "still calibrating after {} ns", fake.now_ns());
        assert_eq!(c.now_ns(), fake.now_ns(), "real time again");
    }

    #[test]
    fn host_clock_moves_forward() {
        let c = HostClock::new();
        let a = c.now_ns();
        std::thread::sleep(Duration::from_millis(1));
        assert!(c.now_ns() > a);
        assert!(c.wall_origin_ns() > 1_600_000_000 * 1_000_000_000);
        assert_eq!(until(10, 4), Duration::ZERO);
        assert_eq!(until(4, 10), Duration::from_nanos(6));
    }

    #[test]
    fn a_resumed_clock_goes_on_from_its_start() {
        let ten_s = 10_000_000_000;
        let c = HostClock::resuming(ten_s, host_tsc());
        let t = c.now_ns();
        assert!((ten_s..ten_s + 1_000_000_000).contains(&t), "{t}");
        let wall_now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        let wall = c.wall_origin_ns() + c.now_ns();
        assert!(wall.abs_diff(wall_now) < 1_000_000_000, "wall time is the host's: {wall} vs {wall_now}");
    }
}
