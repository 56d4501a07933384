//! The alarm: a thread that makes translated code exit when the next virtual timer
//! interrupt is due, by revoking the poll page every unit entry reads. Translated
//! code never tests a flag (that would clobber the guest's arithmetic flags), and a
//! chained loop that never leaves the code cache still gets its timer interrupt.

use crate::devices::{clock, Clock, Nanos};
use bt86_translator::exec_mem::PollHandle;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

#[derive(Default)]
struct State {
    deadline: Option<Nanos>,
    quit: bool,
}

/// Owns the alarm thread; dropping it stops and joins the thread, so the thread
/// never touches a poll page that is gone.
pub struct Alarm {
    shared: Arc<(Mutex<State>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Alarm {
    /// Starts the thread for `poll`; deadlines are on `clock`.
    pub fn new(poll: PollHandle, clock: Arc<dyn Clock>) -> Self {
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("bt86-alarm".into())
            .spawn(move || run(&theirs, poll, &*clock))
            .ok();
        Self { shared, thread }
    }

    /// Makes translated code exit at `deadline` (None: never). The thread is
    /// woken (a futex call) only when the deadline moves earlier: for a later
    /// one (or none) it wakes at the old time, finds the new one and sleeps
    /// again, which costs the vCPU thread nothing (a spurious exit at most, if
    /// it raced).
    pub fn set(&mut self, deadline: Option<Nanos>) {
        let (lock, cv) = &*self.shared;
        let Ok(mut s) = lock.lock() else { return };
        // The thread clears the deadline when it fires: compare with its state.
        if s.deadline == deadline {
            return;
        }
        let earlier = match (deadline, s.deadline) {
            (Some(new), Some(old)) => new < old,
            (Some(_), None) => true,
            (None, _) => false,
        };
        s.deadline = deadline;
        if earlier {
            cv.notify_one();
        }
    }
}

fn run(shared: &(Mutex<State>, Condvar), poll: PollHandle, clock: &dyn Clock) {
    let (lock, cv) = shared;
    let Ok(mut s) = lock.lock() else { return };
    loop {
        if s.quit {
            return;
        }
        match s.deadline {
            None => match cv.wait(s) {
                Ok(g) => s = g,
                Err(_) => return,
            },
            Some(d) => {
                let now = clock.now_ns();
                if now >= d {
                    s.deadline = None;
                    poll.request_exit();
                    continue;
                }
                match cv.wait_timeout(s, clock::until(now, d)) {
                    Ok((g, _)) => s = g,
                    Err(_) => return,
                }
            }
        }
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        let (lock, cv) = &*self.shared;
        if let Ok(mut s) = lock.lock() {
            s.quit = true;
            cv.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
