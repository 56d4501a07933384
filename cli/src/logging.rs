//! Logging set-up: `RUST_LOG` to standard error (colour only on a terminal), and
//! `--trace FILE`: the translator's and the CPU's trace events (targets
//! `bt86::trace::<event>`) written to a file, whatever `RUST_LOG` says.

use std::fs::File;
use std::io::IsTerminal;
use std::sync::Mutex;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// What `--trace` records, in the spirit of QEMU's `-d`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum TraceEvent {
    /// Guest code as it is translated (one block per translation unit).
    #[value(name = "in_asm")]
    InAsm,
    /// Host code emitted for each translation unit.
    #[value(name = "out_asm")]
    OutAsm,
    /// Exceptions and interrupts delivered to the guest.
    Int,
}

impl TraceEvent {
    fn target(self) -> &'static str {
        match self {
            Self::InAsm => "bt86::trace::in_asm",
            Self::OutAsm => "bt86::trace::out_asm",
            Self::Int => "bt86::trace::int",
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` (default `warn`) to standard error, and
/// the trace events asked for to `trace` (an open file).
pub fn init(trace: Option<(File, &[TraceEvent])>) {
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        // The trace targets go only to the trace file.
        .with_filter(tracing_subscriber::filter::filter_fn(|m| !m.target().starts_with("bt86::trace::")));
    if let Some((_, events)) = &trace {
        bt86_runtime::enable_unit_trace(events.contains(&TraceEvent::InAsm), events.contains(&TraceEvent::OutAsm));
    }
    let file = trace.map(|(f, events)| {
        let targets = events.iter().fold(Targets::new(), |t, e| t.with_target(e.target(), LevelFilter::TRACE));
        tracing_subscriber::fmt::layer()
            .with_writer(Mutex::new(f))
            .with_ansi(false)
            .with_level(false)
            .with_target(false)
            .without_time()
            .with_filter(targets)
    });
    let _ = tracing_subscriber::registry().with(stderr).with(file).try_init();
}
