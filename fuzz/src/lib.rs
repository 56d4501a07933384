//! bt86-fuzz: a guest-code fuzzer for bt86.
//!
//! Guests are raw code placed in RAM around a small harness ([`harness`]): random
//! and structured instruction streams ([`gen`]) at CPL 0 and 3, with paging off and
//! on, with and without a timer interrupt stream. Each run must end in a
//! guest-level outcome; the oracles ([`exec`]) also look for host addresses in
//! guest memory and check the x87/SSE save areas. User-level instruction streams
//! also go through the project's differential oracle (native vs translated), and
//! mutated multiboot and Linux images through the loaders. Cases run in a worker
//! process ([`supervise`]) so that a crash, a hang or runaway memory is caught;
//! [`campaign`] runs many, keeps reproducers ([`case`]) and prints statistics.
pub mod campaign;
pub mod case;
pub mod exec;
pub mod gen;
pub mod harness;
pub mod qemu;
pub mod rng;
pub mod supervise;

/// The text of a caught panic.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".into()
    }
}

/// Panics are caught and reported as failures: the default hook's message (with
/// its location) goes to stderr only, where the supervisor reads it after a crash.
pub fn quiet_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("bt86-fuzz worker: {info}");
        let _ = &default;
    }));
}
