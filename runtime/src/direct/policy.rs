//! Direct or translated: which way a guest user context (an address space) runs.
//!
//! A trap from direct execution costs a signal, a futex round trip between two
//! processes and the VMM's handling (measured here: about 20–40 µs, see the
//! README), a trap from translated code a callout (under 1 µs); translated user
//! code runs slower than native while it computes. So a context runs directly
//! while it computes and translated while it traps often. The measure is the
//! *run length*: guest time between two exits of direct execution, or between
//! entering and leaving CPL 3 under translation (system calls, exceptions,
//! interrupts: what would have been an exit had it run directly), kept as an
//! exponential average per context.
//!
//! - A new context starts translated: most address spaces (a fork+exec, a shell
//!   command) live for a few system calls and page faults, and a runner's first
//!   entry costs a whole view's mappings;
//! - translated → direct when the average run is above `to_direct` (the exits
//!   would cost a small share of the time);
//! - direct → translated when it is below `to_translate` (lower, for
//!   hysteresis). Both ways are measured, so a context whose phases change
//!   follows them (a compute phase runs long between interrupts even
//!   translated: the guest's timer ends each run);
//! - translated for good (`pin_translated`) where direct execution was seen not to
//!   be exact: the guest loaded a selector the host gives its own meaning, and ran
//!   with the host's descriptor until the next trap.

use hashbrown::HashMap;
use std::time::Duration;

/// How guest user code runs (`--user-code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UserCode {
    /// Always directly when the CPU state allows it.
    Direct,
    /// Always translated.
    Translate,
    /// By measured trap rate (the default).
    #[default]
    Auto,
}

impl std::str::FromStr for UserCode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "direct" => Ok(Self::Direct),
            "translate" => Ok(Self::Translate),
            "auto" => Ok(Self::Auto),
            other => Err(format!("unknown user-code mode {other:?} (direct, translate or auto)")),
        }
    }
}

/// The thresholds.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    pub to_translate: Duration,
    pub to_direct: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            to_translate: Duration::from_micros(150),
            to_direct: Duration::from_micros(600),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Context {
    direct: bool,
    /// Runs translated from now on: direct execution was seen not to be exact here.
    pinned: bool,
    /// Average run length, ns (integer: this is on every system call's path).
    avg: u64,
    samples: u32,
    /// Translated runs not timed since the last timed one (`Policy::time_next`).
    untimed: u32,
}

/// Contexts remembered at most (least recently switched are forgotten).
const MAX_CONTEXTS: usize = 256;
/// Weight of a new run in the average: 1 / 2^WEIGHT_SHIFT.
const WEIGHT_SHIFT: u32 = 3;
/// Runs seen in a mode before it may be left.
const MIN_SAMPLES: u32 = 8;
/// A translated context whose runs average below `to_direct` / `SHORT_RUNS`
/// (system calls back to back) has only one run in `UNTIMED_RUNS` timed.
const SHORT_RUNS: u64 = 64;
const UNTIMED_RUNS: u32 = 8;

/// The per-context state.
#[derive(Debug, Default)]
pub struct Policy {
    pub thresholds: Thresholds,
    contexts: HashMap<u32, Context>,
    /// The context used last, kept out of the map: every system call under
    /// translation looks at it twice, and hashing was a third of that cost.
    current: Option<(u32, Context)>,
    /// Switches between modes.
    pub switches: u64,
    /// Contexts sent back to translation for good because direct execution was not
    /// exact there.
    pub pins: u64,
}

impl Policy {
    /// Whether context `key` runs directly now.
    pub fn direct(&self, key: u32) -> bool {
        match &self.current {
            Some((k, c)) if *k == key => c.direct,
            _ => self.contexts.get(&key).is_some_and(|c| c.direct),
        }
    }

    fn context(&mut self, key: u32) -> &mut Context {
        if let Some((k, c)) = self.current.take_if(|(k, _)| *k != key) {
            self.contexts.insert(k, c);
        }
        let contexts = &mut self.contexts;
        let (_, c) = self.current.get_or_insert_with(|| {
            if contexts.len() >= MAX_CONTEXTS && !contexts.contains_key(&key) {
                contexts.clear();
            }
            (key, contexts.remove(&key).unwrap_or_default())
        });
        c
    }

    /// Context `key` runs translated from now on (while it is remembered): something
    /// it did directly was not exact (a selector the host gave its own meaning).
    pub fn pin_translated(&mut self, key: u32) {
        let c = self.context(key);
        if c.pinned {
            return;
        }
        let was_direct = c.direct;
        *c = Context { direct: false, pinned: true, ..Context::default() };
        self.pins += 1;
        if was_direct {
            self.switches += 1;
        }
    }

    /// Whether the next translated run of context `key` is to be timed. Reading
    /// the TSC twice was a twentieth of a system call's cost; where runs are far
    /// too short to go direct, one in `UNTIMED_RUNS` is enough: when the
    /// context starts computing, its first timed run lifts the average above
    /// the bound and every run is timed again, so it goes direct at most
    /// `UNTIMED_RUNS` runs later than before.
    pub fn time_next(&mut self, key: u32) -> bool {
        let short = u64::try_from(self.thresholds.to_direct.as_nanos()).unwrap_or(u64::MAX) / SHORT_RUNS;
        let c = self.context(key);
        if c.direct || c.samples < MIN_SAMPLES || c.avg >= short {
            return true;
        }
        c.untimed += 1;
        if c.untimed < UNTIMED_RUNS {
            return false;
        }
        c.untimed = 0;
        true
    }

    /// A run of `run` guest time in context `key`, direct or translated.
    pub fn observe(&mut self, key: u32, direct: bool, run: Duration) {
        let t = self.thresholds;
        let c = self.context(key);
        if c.direct != direct || c.pinned {
            return;
        }
        let ns = u64::try_from(run.as_nanos()).unwrap_or(u64::MAX);
        c.avg = if c.samples == 0 { ns } else { ewma(c.avg, ns) };
        c.samples = c.samples.saturating_add(1);
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let switch = c.samples >= MIN_SAMPLES
            && if direct { c.avg < nanos(t.to_translate) } else { c.avg > nanos(t.to_direct) };
        if switch {
            *c = Context { direct: !direct, ..Context::default() };
            self.switches += 1;
        }
    }
}

/// The average moved towards `x` by 1 / 2^WEIGHT_SHIFT of the difference.
fn ewma(avg: u64, x: u64) -> u64 {
    if x >= avg {
        avg + ((x - avg) >> WEIGHT_SHIFT)
    } else {
        avg - ((avg - x) >> WEIGHT_SHIFT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_runs_go_direct_and_short_ones_go_back() {
        let mut p = Policy::default();
        assert!(!p.direct(7), "a new context starts translated");
        // A compute phase: runs cut only by the guest's 1 kHz timer.
        for _ in 0..7 {
            p.observe(7, false, Duration::from_millis(1));
        }
        assert!(!p.direct(7), "not before {MIN_SAMPLES} runs");
        p.observe(7, false, Duration::from_millis(1));
        assert!(p.direct(7), "a compute-bound context runs directly");
        assert!(!p.direct(8), "other contexts are not affected");
        // Runs observed in the other mode are ignored.
        for _ in 0..20 {
            p.observe(7, false, Duration::from_micros(5));
        }
        assert!(p.direct(7));
        // A system-call-bound phase: short direct runs.
        for _ in 0..20 {
            p.observe(7, true, Duration::from_micros(20));
        }
        assert!(!p.direct(7), "a system-call-bound context runs translated");
        // Between the thresholds: stays where it is.
        for _ in 0..100 {
            p.observe(7, false, Duration::from_micros(300));
        }
        assert!(!p.direct(7));
        assert_eq!(p.switches, 2);
        // A compute-bound context stays direct, with the odd short run.
        for _ in 0..8 {
            p.observe(9, false, Duration::from_millis(4));
        }
        for i in 0..100 {
            p.observe(9, true, Duration::from_micros(if i % 4 == 0 { 10 } else { 4000 }));
        }
        assert!(p.direct(9));
        assert_eq!("auto".parse::<UserCode>(), Ok(UserCode::Auto));
        assert_eq!(UserCode::default(), UserCode::Auto);
        assert!("x".parse::<UserCode>().is_err());
    }

    /// Runs far too short to go direct are timed one in `UNTIMED_RUNS`, after the
    /// first `MIN_SAMPLES`; the first long run timed brings back timing every
    /// run, and the context goes direct.
    #[test]
    fn short_translated_runs_are_timed_one_in_eight() {
        let mut p = Policy::default();
        let mut timed = 0;
        for _ in 0..MIN_SAMPLES {
            assert!(p.time_next(5), "every run is timed until the average means something");
            p.observe(5, false, Duration::from_micros(1));
        }
        for _ in 0..64 {
            if p.time_next(5) {
                timed += 1;
                p.observe(5, false, Duration::from_micros(1));
            }
        }
        assert_eq!(timed, 64 / UNTIMED_RUNS);
        // The context starts computing: its runs last 4 ms.
        let mut runs = 0;
        while !p.direct(5) {
            runs += 1;
            assert!(runs <= UNTIMED_RUNS + 2, "goes direct within {UNTIMED_RUNS} runs of the change");
            if p.time_next(5) {
                p.observe(5, false, Duration::from_millis(4));
                assert!(p.direct(5) || p.time_next(5), "a long run timed: the next is timed too");
            }
        }
        assert!(p.time_next(5), "a direct context's translated runs are always timed");
    }

    #[test]
    fn a_pinned_context_stays_translated() {
        let mut p = Policy::default();
        for _ in 0..8 {
            p.observe(3, false, Duration::from_millis(4));
        }
        assert!(p.direct(3));
        p.pin_translated(3);
        p.pin_translated(3);
        assert!(!p.direct(3));
        assert_eq!((p.switches, p.pins), (2, 1));
        for _ in 0..100 {
            p.observe(3, false, Duration::from_millis(4));
        }
        assert!(!p.direct(3), "long runs do not unpin it");
    }

    #[test]
    fn a_system_call_bound_context_never_goes_direct() {
        let mut p = Policy::default();
        for _ in 0..100_000 {
            p.observe(1, false, Duration::from_micros(3));
        }
        assert!(!p.direct(1));
        assert_eq!(p.switches, 0);
    }
}
