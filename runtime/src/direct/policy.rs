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
//! - Direct → translated when the average run is below `to_translate` (the exits
//!   would cost a large share of the time);
//! - translated → direct when it is above `to_direct` (higher, for hysteresis),
//!   or after `retry_after` of translated user time (a context whose phases
//!   change is tried again).

use hashbrown::HashMap;
use std::time::Duration;

/// How guest user code runs (`--user-code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UserCode {
    /// Always directly when the CPU state allows it.
    Direct,
    /// Always translated (the default until direct execution is complete).
    #[default]
    Translate,
    /// By measured trap rate.
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
    pub retry_after: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            to_translate: Duration::from_micros(150),
            to_direct: Duration::from_micros(600),
            retry_after: Duration::from_millis(200),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Context {
    direct: bool,
    /// Average run length, ns.
    avg: f64,
    samples: u32,
    /// Translated user time since the last switch, ns.
    translated_ns: u64,
}

impl Default for Context {
    fn default() -> Self {
        Self { direct: true, avg: 1e9, samples: 0, translated_ns: 0 }
    }
}

/// Contexts remembered at most (least recently switched are forgotten).
const MAX_CONTEXTS: usize = 256;
/// Weight of a new run in the average.
const WEIGHT: f64 = 0.125;
/// Runs seen in a mode before it may be left.
const MIN_SAMPLES: u32 = 8;

/// The per-context state.
#[derive(Debug, Default)]
pub struct Policy {
    pub thresholds: Thresholds,
    contexts: HashMap<u32, Context>,
    /// Switches between modes.
    pub switches: u64,
}

impl Policy {
    /// Whether context `key` runs directly now.
    pub fn direct(&self, key: u32) -> bool {
        self.contexts.get(&key).is_none_or(|c| c.direct)
    }

    fn context(&mut self, key: u32) -> &mut Context {
        if self.contexts.len() >= MAX_CONTEXTS && !self.contexts.contains_key(&key) {
            self.contexts.clear();
        }
        self.contexts.entry(key).or_default()
    }

    /// A run of `run` guest time in context `key`, direct or translated.
    pub fn observe(&mut self, key: u32, direct: bool, run: Duration) {
        let t = self.thresholds;
        let c = self.context(key);
        if c.direct != direct {
            return;
        }
        #[allow(clippy::cast_precision_loss)]
        let ns = run.as_nanos().min(u128::from(u64::MAX)) as f64;
        c.avg = if c.samples == 0 { ns } else { c.avg + WEIGHT * (ns - c.avg) };
        c.samples = c.samples.saturating_add(1);
        if !direct {
            c.translated_ns = c.translated_ns.saturating_add(u64::try_from(run.as_nanos()).unwrap_or(u64::MAX));
        }
        let switch = if direct {
            c.samples >= MIN_SAMPLES && c.avg < t.to_translate.as_secs_f64() * 1e9
        } else {
            (c.samples >= MIN_SAMPLES && c.avg > t.to_direct.as_secs_f64() * 1e9)
                || Duration::from_nanos(c.translated_ns) >= t.retry_after
        };
        if switch {
            *c = Context { direct: !direct, avg: if direct { 0.0 } else { 1e9 }, samples: 0, translated_ns: 0 };
            self.switches += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_runs_go_translated_and_long_ones_come_back() {
        let mut p = Policy::default();
        assert!(p.direct(7));
        for _ in 0..20 {
            p.observe(7, true, Duration::from_micros(20));
        }
        assert!(!p.direct(7), "a system-call-bound context runs translated");
        assert!(p.direct(8), "other contexts are not affected");
        for _ in 0..20 {
            p.observe(7, false, Duration::from_micros(5));
        }
        assert!(!p.direct(7));
        for _ in 0..20 {
            p.observe(7, false, Duration::from_millis(5));
        }
        assert!(p.direct(7), "long user runs go direct again");
        assert_eq!(p.switches, 2);
        // A compute-bound context stays direct.
        for _ in 0..100 {
            p.observe(9, true, Duration::from_millis(4));
        }
        assert!(p.direct(9));
        assert_eq!("auto".parse::<UserCode>(), Ok(UserCode::Auto));
        assert!("x".parse::<UserCode>().is_err());
    }

    #[test]
    fn translated_contexts_are_retried() {
        let mut p = Policy::default();
        for _ in 0..10 {
            p.observe(1, true, Duration::from_micros(10));
        }
        assert!(!p.direct(1));
        // Short translated runs, but 200 ms of them in all: try direct again.
        for _ in 0..2000 {
            p.observe(1, false, Duration::from_micros(100));
            if p.direct(1) {
                break;
            }
        }
        assert!(p.direct(1));
    }
}
