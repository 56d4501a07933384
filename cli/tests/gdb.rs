//! `bt86 run --gdb` with the system's gdb as the client, in batch mode, on the
//! kit's `debuggee` guest (built with symbols): a breakpoint on `main`,
//! registers, memory, single steps by instruction lengths, continue to the
//! guest's end; a watchpoint; Ctrl-C; attaching to a running guest and
//! detaching; a restored checkpoint; kill. The tests skip, saying so, where gdb is not installed
//! (`apt-get install -y gdb`). They live here rather than in tests/tests because
//! they run the `bt86` binary.

use bt86_tests::guests;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);

fn have_gdb() -> bool {
    let ok = Command::new("gdb").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: gdb is not installed (apt-get install -y gdb)");
    }
    ok
}

/// bt86 under test: its output so far, as it comes.
struct Bt86 {
    child: Child,
    port: u16,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

/// Collects `r` into a shared string on a thread; each line also goes to `lines`.
fn collect(r: impl Read + Send + 'static, lines: Option<mpsc::Sender<String>>) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let t = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            t.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some(tx) = &lines {
                let _ = tx.send(line);
            }
        }
    });
    text
}

impl Bt86 {
    /// Starts `bt86 run` on the debuggee with `args`, listening on a free port,
    /// and waits until it says where.
    fn start(cmdline: &str, args: &[&str]) -> Self {
        Self::start_with(&["run", "--kernel", guests::DEBUGGEE, "--append", cmdline], args)
    }

    /// Starts bt86 with `command` (a subcommand and its input), `--gdb` on a free
    /// port, and `args`.
    fn start_with(command: &[&str], args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bt86"))
            .args(command)
            .args(["--gdb", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bt86");
        let stdout = collect(child.stdout.take().unwrap(), None);
        let (tx, rx) = mpsc::channel();
        let stderr = collect(child.stderr.take().unwrap(), Some(tx));
        let port = loop {
            let line = rx.recv_timeout(Duration::from_secs(20)).expect("bt86 says where gdb connects");
            if let Some(at) = line.split(" on 127.0.0.1:").nth(1) {
                break at.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().expect("a port");
            }
        };
        Self { child, port, stdout, stderr }
    }

    /// Waits until the guest has printed `text`.
    fn wait_for_output(&self, text: &str) {
        let deadline = Instant::now() + LIMIT;
        while !self.stdout.lock().unwrap().contains(text) {
            assert!(Instant::now() < deadline, "the guest never printed {text:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for bt86 to end (killing it after `LIMIT`).
    fn wait(mut self) -> (ExitStatus, String, String) {
        let status = wait_or_kill(&mut self.child, "bt86");
        // The readers finish with the pipes.
        std::thread::sleep(Duration::from_millis(100));
        let out = self.stdout.lock().unwrap().clone();
        let err = self.stderr.lock().unwrap().clone();
        (status, out, err)
    }
}

impl Drop for Bt86 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_or_kill(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not end within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// gdb in batch mode on the debuggee's symbols, connected to `port`, running `commands`.
fn gdb(port: u16, commands: &[&str]) -> Command {
    let mut cmd = Command::new("gdb");
    cmd.args(["-nx", "-batch", "-ex", "set pagination off", "-ex", "set confirm off"]);
    cmd.args(["-ex", &format!("file {}", guests::DEBUGGEE), "-ex", &format!("target remote 127.0.0.1:{port}")]);
    for c in commands {
        cmd.args(["-ex", c]);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// gdb started on `commands`, with what it prints (stdout, stderr) as it comes.
fn spawn_gdb(port: u16, commands: &[&str]) -> (Child, Arc<Mutex<String>>, Arc<Mutex<String>>) {
    let mut child = gdb(port, commands).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start gdb");
    let (out, err) = (collect(child.stdout.take().unwrap(), None), collect(child.stderr.take().unwrap(), None));
    (child, out, err)
}

/// Waits for gdb to end; all it printed.
fn finish_gdb((mut child, out, err): (Child, Arc<Mutex<String>>, Arc<Mutex<String>>)) -> String {
    wait_or_kill(&mut child, "gdb");
    std::thread::sleep(Duration::from_millis(100));
    let text = format!("{}{}", out.lock().unwrap(), err.lock().unwrap());
    text
}

fn run_gdb(port: u16, commands: &[&str]) -> String {
    finish_gdb(spawn_gdb(port, commands))
}

/// The numbers in base `radix` after each `prefix` in `text`, in order.
fn numbers_in(text: &str, prefix: &str, radix: u32) -> Vec<u32> {
    text.split(prefix)
        .skip(1)
        .filter_map(|s| {
            let digits: String = s.trim_start_matches("0x").chars().take_while(|c| c.is_digit(radix)).collect();
            u32::from_str_radix(&digits, radix).ok()
        })
        .collect()
}

/// The hex numbers (with or without 0x) after each `prefix` in `text`.
fn hex_after(text: &str, prefix: &str) -> Vec<u32> {
    numbers_in(text, prefix, 16)
}

/// The decimal numbers after each `prefix` in `text`.
fn numbers_after(text: &str, prefix: &str) -> Vec<u32> {
    numbers_in(text, prefix, 10)
}

#[test]
fn gdb_breaks_on_main_reads_state_steps_and_continues_to_the_end() {
    if !have_gdb() {
        return;
    }
    // -S: QEMU's spelling of --gdb-wait.
    let bt86 = Bt86::start("", &["-S"]);
    let out = run_gdb(
        bt86.port,
        &[
            "break main",
            "continue",
            "info registers",
            "x/4x $esp",
            "x/4i $pc",
            "stepi",
            "printf \"pc=%#x\\n\", $pc",
            "stepi",
            "printf \"pc=%#x\\n\", $pc",
            "stepi",
            "printf \"pc=%#x\\n\", $pc",
            "continue",
        ],
    );
    let (status, stdout, stderr) = bt86.wait();
    assert!(out.contains("Breakpoint 1, main ()"), "{out}");
    assert!(out.contains("<main>"), "eip named in info registers: {out}");
    for reg in ["eax", "esp", "eip", "eflags", "cs             0x8", "ss             0x10"] {
        assert!(out.contains(reg), "{reg} in info registers: {out}");
    }
    let words: Vec<&str> = out.lines().filter(|l| l.starts_with("0x") && l.contains(":\t0x")).collect();
    assert_eq!(words.first().map(|l| l.matches("0x").count()), Some(5), "x/4x: an address and 4 words: {out}");
    // Each stepi moves to the next instruction of main's straight-line prologue,
    // as x/4i listed them.
    let listed: Vec<u32> = out.lines().filter(|l| l.contains("<main") && l.contains(">:\t")).filter_map(|l| hex_after(l, "0x").first().copied()).collect();
    assert_eq!(listed.len(), 4, "{out}");
    assert_eq!(hex_after(&out, "Breakpoint 1 at ").first(), listed.first(), "x/4i starts at main: {out}");
    assert_eq!(hex_after(&out, "pc="), listed[1..], "stepi went by instruction lengths: {out}");
    assert!(out.contains("exited normally"), "{out}");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("RESULT: 1 passed, 0 failed"), "{stdout}");
}

#[test]
fn gdb_watchpoint_stops_after_each_write() {
    if !have_gdb() {
        return;
    }
    let bt86 = Bt86::start("", &["--gdb-wait"]);
    let out = run_gdb(bt86.port, &["watch counter", "continue", "continue", "delete", "continue"]);
    let (status, stdout, _) = bt86.wait();
    assert!(out.contains("Hardware watchpoint 1: counter"), "{out}");
    let (olds, news) = (numbers_after(&out, "Old value = "), numbers_after(&out, "New value = "));
    assert_eq!((olds, news), (vec![0, 1], vec![1, 3]), "bump(1), then bump(2): {out}");
    assert!(out.contains("in bump"), "stopped in the writer: {out}");
    assert!(out.contains("exited normally"), "{out}");
    assert_eq!(status.code(), Some(0));
    assert!(stdout.contains("0 failed"), "{stdout}");
}

#[test]
fn gdb_ctrl_c_interrupts_a_running_guest() {
    if !have_gdb() {
        return;
    }
    let bt86 = Bt86::start("spin", &["--gdb-wait"]);
    let client = spawn_gdb(bt86.port, &["continue", "printf \"spinning=%d\\n\", spinning", "set var spinning = 0", "continue"]);
    bt86.wait_for_output("spinning");
    std::thread::sleep(Duration::from_millis(200));
    // What Ctrl-C at gdb's prompt does: SIGINT to gdb, which sends the interrupt.
    let pid = i32::try_from(client.0.id()).unwrap();
    // SAFETY: kill(2) on the gdb child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let out = finish_gdb(client);
    let (status, stdout, _) = bt86.wait();
    assert!(out.contains("Program received signal SIGINT"), "{out}");
    assert!(out.contains("spinning=1"), "{out}");
    assert!(out.contains("exited normally"), "{out}");
    assert_eq!(status.code(), Some(0));
    assert!(stdout.contains("debuggee: released"), "{stdout}");
}

#[test]
fn gdb_attaches_to_a_running_guest_which_runs_on_after_detach() {
    if !have_gdb() {
        return;
    }
    // No --gdb-wait: the guest runs (spinning) until gdb connects.
    let bt86 = Bt86::start("spin", &[]);
    bt86.wait_for_output("spinning");
    let out = run_gdb(bt86.port, &["set var spinning = 0", "detach"]);
    let (status, stdout, stderr) = bt86.wait();
    assert!(out.contains("main () at"), "paused where it ran: {out}");
    assert!(stderr.contains("gdb detached; the guest runs on"), "{stderr}");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("debuggee: released"), "{stdout}");
}

#[test]
fn gdb_debugs_a_restored_checkpoint() {
    if !have_gdb() {
        return;
    }
    let file = std::env::temp_dir().join(format!("bt86-gdb-{}.ckpt", std::process::id()));
    let file_arg = file.to_str().unwrap();
    let saved = Command::new(env!("CARGO_BIN_EXE_bt86"))
        .args(["run", "--kernel", guests::DEBUGGEE, "--append", "spin", "--checkpoint", file_arg, "--checkpoint-after", "0.3"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&saved.stdout).contains("spinning"), "{saved:?}");
    let bt86 = Bt86::start_with(&["restore", file_arg], &["-S"]);
    let out = run_gdb(bt86.port, &["printf \"spinning=%d fctrl=%#x\\n\", spinning, $fctrl", "set var spinning = 0", "continue"]);
    let (status, stdout, stderr) = bt86.wait();
    let _ = std::fs::remove_file(&file);
    assert!(out.contains("main () at"), "paused where it was saved: {out}");
    assert!(out.contains("spinning=1 fctrl=0x37f"), "{out}");
    assert!(out.contains("exited normally"), "{out}");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("debuggee: released"), "{stdout}");
}

#[test]
fn gdb_kill_ends_bt86() {
    if !have_gdb() {
        return;
    }
    let bt86 = Bt86::start("", &["-S", "--stats", "json"]);
    run_gdb(bt86.port, &["kill"]);
    let (status, stdout, stderr) = bt86.wait();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("\"reason\":\"gdb-kill\""), "{stderr}");
    assert!(!stdout.contains("debuggee: main"), "killed before main: {stdout}");
}

#[test]
fn gdb_options_that_cannot_work_are_bad_input() {
    let run = |args: &[&str]| -> Output {
        Command::new(env!("CARGO_BIN_EXE_bt86")).args(["run", "--kernel", guests::DEBUGGEE]).args(args).output().unwrap()
    };
    for (args, says) in [
        (&["--gdb-wait"][..], "needs --gdb"),
        (&["--gdb", "127.0.0.1:notaport"][..], "cannot listen for gdb"),
        (&["--gdb", "127.0.0.1:0", "--engine", "kvm"][..], "--engine bt only"),
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
