//! A terminal for interactive tests: a tmux server of the test's own, with keys sent
//! and the screen read through tmux's command line. Where tmux is not installed the
//! tests skip, saying so (`apt-get install -y tmux`).

use std::process::Command;
use std::time::{Duration, Instant};

/// How long `wait_for` waits.
const WAIT: Duration = Duration::from_secs(20);

/// A tmux server of our own, killed when dropped.
pub struct Tmux {
    socket: String,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Tmux {
    /// A 100x40 terminal running `shell_command`; None (after saying why) where tmux is
    /// not installed.
    pub fn start(name: &str, shell_command: &str) -> Option<Self> {
        if Command::new("tmux").arg("-V").output().map(|o| !o.status.success()).unwrap_or(true) {
            eprintln!("skipped: tmux is not installed (apt-get install -y tmux)");
            return None;
        }
        let t = Self { socket: format!("bt86-test-{}-{name}", std::process::id()) };
        let st = t.cmd(&["new-session", "-d", "-x", "100", "-y", "40", shell_command]).status().unwrap();
        assert!(st.success(), "tmux new-session");
        Some(t)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket, "-f", "/dev/null"]).args(args);
        c
    }

    /// Sends keys as `tmux send-keys` takes them ("-l" then literal text, or key names).
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "0"];
        args.extend_from_slice(keys);
        assert!(self.cmd(&args).status().unwrap().success());
    }

    /// The visible screen, wrapped lines joined.
    pub fn screen(&self) -> String {
        text(&self.cmd(&["capture-pane", "-p", "-J", "-t", "0"]).output().unwrap().stdout)
    }

    /// Waits until the pane shows `want`; the pane on failure.
    pub fn wait_for(&self, want: &str) -> String {
        self.wait_until(&format!("{want:?}"), WAIT, |s| s.contains(want))
    }

    /// Waits up to `limit` until `done` holds for the screen (`what` names it in the
    /// failure); returns that screen.
    pub fn wait_until(&self, what: &str, limit: Duration, done: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + limit;
        loop {
            let s = self.screen();
            if done(&s) {
                return s;
            }
            assert!(Instant::now() < end, "timed out waiting for {what} in:\n{s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pid of the pane's first process's child (bt86 under the shell).
    pub fn child_pid(&self) -> u32 {
        let pane = text(&self.cmd(&["list-panes", "-t", "0", "-F", "#{pane_pid}"]).output().unwrap().stdout);
        let pane: u32 = pane.trim().parse().unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let children = std::fs::read_to_string(format!("/proc/{pane}/task/{pane}/children")).unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next() {
                return pid.parse().unwrap();
            }
            assert!(Instant::now() < end, "no child of the pane's shell");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]).status();
    }
}
