//! The supervisor: runs cases in a worker child process (this program with
//! `--worker`), one JSON line per case each way, so that a crash, a hang or runaway
//! memory of the VMM is seen from outside and reported as a failure of the case in
//! flight; then a new worker takes over.
//!
//! Watchdog: a case gets its own timeout plus [`WATCHDOG_SLACK`]; past that the
//! worker is killed (a hang). Memory: the worker resets its peak RSS before each
//! case (`/proc/self/clear_refs`) and reports the peak after it; a case that grew it
//! by more than [`CASE_MEMORY_LIMIT`] is a failure, and so is a worker whose RSS
//! passes [`WORKER_MEMORY_LIMIT`] (a leak across cases).

use crate::case::{Body, Case, Failure, Verdict};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

pub const WATCHDOG_SLACK: Duration = Duration::from_secs(20);
pub const CASE_MEMORY_LIMIT_KB: u64 = 512 << 10;
pub const WORKER_MEMORY_LIMIT_KB: u64 = 2 << 20;

/// The worker's answer for one case.
#[derive(Serialize, Deserialize, Debug)]
pub struct Reply {
    pub verdict: Verdict,
    /// RSS before the case and the peak during it, in KiB.
    pub rss_before_kb: u64,
    pub rss_peak_kb: u64,
    pub rss_after_kb: u64,
}

/// The worker side: reads cases from stdin, answers on stdout, until EOF.
pub fn worker_main() -> std::io::Result<()> {
    crate::quiet_panics();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        let case: Case = match serde_json::from_str(&line) {
            Ok(c) => c,
            Err(e) => {
                let v = Verdict { kind: "bad-case".into(), detail: e.to_string(), instructions: 0, failure: None };
                writeln!(out, "{}", serde_json::to_string(&Reply { verdict: v, rss_before_kb: 0, rss_peak_kb: 0, rss_after_kb: 0 })?)?;
                continue;
            }
        };
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let rss_before_kb = status_kb("VmRSS:");
        let verdict = crate::exec::run_case(&case);
        let reply = Reply { verdict, rss_before_kb, rss_peak_kb: status_kb("VmHWM:"), rss_after_kb: status_kb("VmRSS:") };
        writeln!(out, "{}", serde_json::to_string(&reply)?)?;
        out.flush()?;
    }
    Ok(())
}

/// A field of `/proc/self/status` in KiB (0 when unknown).
pub fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// A running worker.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    stderr_path: std::path::PathBuf,
}

impl Worker {
    fn spawn(program: &std::path::Path, stderr_path: &std::path::Path) -> std::io::Result<Self> {
        let stderr = std::fs::File::create(stderr_path)?;
        let mut child = Command::new(program)
            .arg("--worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| std::io::Error::other("no stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| std::io::Error::other("no stdout"))?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, stdin, lines, stderr_path: stderr_path.to_path_buf() })
    }

    /// Kills this worker (it is ours: a child we spawned) and reaps it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// How the worker ended, and the end of what it wrote on stderr.
    fn death(&mut self) -> String {
        let status = match self.child.try_wait() {
            Ok(Some(s)) => Some(s),
            _ => {
                std::thread::sleep(Duration::from_millis(200));
                let _ = self.child.kill();
                self.child.wait().ok()
            }
        };
        let how = match status {
            Some(s) => {
                use std::os::unix::process::ExitStatusExt;
                match s.signal() {
                    Some(sig) => format!("killed by signal {sig} ({})", signal_name(sig)),
                    None => format!("exited with status {}", s.code().unwrap_or(-1)),
                }
            }
            None => "vanished".into(),
        };
        let err = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let tail: Vec<&str> = err.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        if tail.is_empty() {
            format!("the worker {how}")
        } else {
            format!("the worker {how}; its stderr ends: {}", tail.join(" | "))
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGSYS => "SIGSYS",
        _ => "signal",
    }
}

/// Runs cases in workers, one at a time.
pub struct Supervisor {
    worker: Option<Worker>,
    program: std::path::PathBuf,
    stderr_path: std::path::PathBuf,
    last_growth_kb: u64,
    pub restarts: u64,
}

impl Supervisor {
    /// Workers are this program; their stderr goes to a file in `scratch`.
    pub fn new(scratch: &std::path::Path) -> Self {
        let program = std::env::current_exe().unwrap_or_else(|_| "bt86-fuzz".into());
        Self::with_program(&program, scratch)
    }

    /// Workers are `program --worker` (the `bt86-fuzz` binary).
    pub fn with_program(program: &std::path::Path, scratch: &std::path::Path) -> Self {
        Self {
            worker: None,
            program: program.to_path_buf(),
            stderr_path: scratch.join("worker-stderr.txt"),
            last_growth_kb: 0,
            restarts: 0,
        }
    }

    /// How much the last case grew the worker's peak RSS, in KiB.
    pub fn last_growth_kb(&self) -> u64 {
        self.last_growth_kb
    }

    /// Runs `case` in the worker and judges what happened to the worker too.
    pub fn run(&mut self, case: &Case) -> Verdict {
        if self.worker.is_none() {
            match Worker::spawn(&self.program, &self.stderr_path) {
                Ok(w) => self.worker = Some(w),
                Err(e) => {
                    return Verdict { kind: "no-worker".into(), detail: e.to_string(), instructions: 0, failure: Some(Failure::new("fuzzer", e.to_string())) }
                }
            }
        }
        let Some(w) = self.worker.as_mut() else { unreachable!("spawned above") };
        let line = serde_json::to_string(case).unwrap_or_default();
        let limit = case_timeout(case) + WATCHDOG_SLACK;
        let sent = writeln!(w.stdin, "{line}").and_then(|()| w.stdin.flush());
        let answer = match sent {
            Ok(()) => w.lines.recv_timeout(limit),
            Err(_) => Err(RecvTimeoutError::Disconnected),
        };
        match answer {
            Ok(text) => match serde_json::from_str::<Reply>(&text) {
                Ok(reply) => self.judge_memory(reply),
                Err(e) => self.replace(Verdict {
                    kind: "crash".into(),
                    detail: format!("unreadable reply {text:?}: {e}"),
                    instructions: 0,
                    failure: Some(Failure::new("crash", format!("the worker answered garbage: {e}"))),
                }),
            },
            Err(RecvTimeoutError::Timeout) => {
                w.kill();
                let msg = format!("no answer within {limit:?}: the VMM hangs (the guest's own time limit had passed)");
                self.replace(Verdict { kind: "hang".into(), detail: msg.clone(), instructions: 0, failure: Some(Failure::new("hang", msg)) })
            }
            Err(RecvTimeoutError::Disconnected) => {
                let msg = w.death();
                self.replace(Verdict { kind: "crash".into(), detail: msg.clone(), instructions: 0, failure: Some(Failure::new("crash", msg)) })
            }
        }
    }

    /// Drops the current worker (after a crash or a hang); the next case starts one.
    fn replace(&mut self, v: Verdict) -> Verdict {
        if let Some(mut w) = self.worker.take() {
            w.kill();
        }
        self.restarts += 1;
        v
    }

    fn judge_memory(&mut self, reply: Reply) -> Verdict {
        let mut v = reply.verdict;
        if v.kind == "panic" || v.kind == "loader-panic" {
            // The VMM may be left in a bad state (signal handlers): start afresh.
            return self.replace(v);
        }
        let grew = reply.rss_peak_kb.saturating_sub(reply.rss_before_kb);
        self.last_growth_kb = grew;
        if v.failure.is_none() && grew > CASE_MEMORY_LIMIT_KB {
            v.failure = Some(Failure::new("memory", format!("one case grew the VMM by {} MiB (peak {} MiB)", grew >> 10, reply.rss_peak_kb >> 10)));
        }
        if reply.rss_after_kb > WORKER_MEMORY_LIMIT_KB {
            if v.failure.is_none() {
                v.failure = Some(Failure::new("memory", format!("the worker holds {} MiB after this case (a leak across cases)", reply.rss_after_kb >> 10)));
            }
            return self.replace(v);
        }
        v
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(mut w) = self.worker.take() {
            drop(w.stdin);
            let _ = w.child.wait();
        }
    }
}

/// How long the case may run inside the worker.
fn case_timeout(case: &Case) -> Duration {
    match &case.body {
        Body::Guest(g) => Duration::from_millis(u64::from(g.timeout_ms)),
        Body::Oracle(_) => bt86_tests::oracle::TRANSLATED_TIMEOUT,
        Body::Loader(_) => Duration::from_secs(2),
    }
}
