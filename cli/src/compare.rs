//! `bt86 compare`: the same guest under each engine, each in a child process.
//!
//! What is compared, and why it is fair:
//! - Every engine gets the same kernel file, RAM size and command line, and runs as
//!   its own process with stdin from /dev/null; the wall clock runs from spawning the
//!   process to its exit, so process start-up, loading and (for QEMU) its firmware are
//!   included for every engine alike. For a tiny guest that start-up dominates.
//! - The console output is the guest's COM1 output (stdout of the child). Outputs are
//!   compared byte for byte after two normalisations only: CRLF line ends become LF,
//!   and in QEMU's output the kernel path QEMU's multiboot loader puts in front of the
//!   command line (it passes "PATH CMDLINE" where bt86 passes "CMDLINE") is removed —
//!   so a guest that prints its command line does not differ for that reason alone.
//! - The status is how the guest ended: `exit N` (isa-debug-exit), `halted`, `reset`,
//!   `timeout`, `crashed` (an exception the guest could not handle or a triple fault:
//!   bt reports the exception, KVM the triple fault it becomes on a CPU, QEMU with
//!   -no-reboot ends as on a reset — all the same crash, so they agree), or `failed`
//!   (an engine's own limitation, such as an instruction it cannot run; two failures
//!   agree only with the same message). The reasons are printed as notes. QEMU's
//!   isa-debug-exit carries only the low 7 bits of N (its exit status is (N << 1) | 1),
//!   so exit values are compared in those 7 bits when QEMU is one of the two. QEMU
//!   does not stop at a final `hlt` (it idles until the timeout): that shows as a
//!   different status, which it is.
//! - Lines that may differ from run to run or from engine to engine without anything
//!   being wrong — timer tick counts, the CPU model CPUID reports — can be marked: a
//!   line the guest starts with `~` (the kit's guests do this), or one containing a
//!   `--vary` string. Such lines are left out of the comparison; how many of them
//!   differ is said in a note.
//! - `--runs N` runs each engine N times: the wall time is the median, with the spread
//!   (slowest minus fastest) beside it; output and status are the first run's, and a
//!   note says if later runs ended otherwise.
//! - Bad input (a kernel that cannot be read or loaded, an out-of-range --mem or
//!   --timeout) ends with status 2 before any engine runs; progress goes to stderr.
//! - Guest exits mean different things per engine: for bt the exits from translated
//!   code to the VMM (`guest_exits`), for kvm the VM exits (`guest_exits`); QEMU has no
//!   such count. Callouts (sensitive instructions emulated by the VMM) exist only for bt.

use crate::run::{parse_timeout, read_kernel, EXIT_BAD_INPUT};
use bt86_runtime::kvm::{self, KvmUnavailable};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

pub(crate) const EXIT_STATUS_HELP: &str = "\
Exit status of compare:
  0   every engine that ran agreed (same console output, lines marked as varying
      aside, and same status)
  1   the engines disagree, or none ran
  2   bad input (a kernel that cannot be read or loaded, --mem, --timeout, --runs)";

#[derive(clap::Args)]
pub(crate) struct CompareArgs {
    /// The kernel image (32-bit ELF with a multiboot header).
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// Guest RAM in MiB (for every engine; 1 to 3072).
    #[arg(long, value_name = "MiB", default_value_t = bt86_runtime::DEFAULT_MEM_MIB, value_parser = crate::mem_arg())]
    mem: u32,
    /// The kernel command line.
    #[arg(long, value_name = "STR", default_value = "")]
    cmdline: String,
    /// Include the kvm engine even where /dev/kvm is backed by a software hypervisor.
    #[arg(long)]
    allow_software_kvm: bool,
    /// Stop each engine after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120.0)]
    timeout: f64,
    /// Run each engine N times and report the median wall time and the spread.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,
    /// Lines of console output containing STR may differ between engines (timing,
    /// host details) without counting as disagreement; lines starting with `~` always
    /// may. Repeatable.
    #[arg(long, value_name = "STR")]
    vary: Vec<String>,
}

type Settings = CompareArgs;

/// How a guest ended, comparable across engines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Status {
    Exit(u32),
    Halted,
    Reset,
    Timeout,
    /// The guest crashed: an exception it could not handle, or a triple fault
    /// (bt reports the first, KVM the second, for the same guest); the message.
    Crashed(String),
    /// Stopped abnormally for another reason (an engine's limitation); the message.
    Failed(String),
}

impl Status {
    fn label(&self) -> String {
        match self {
            Status::Exit(v) => format!("exit {v}"),
            Status::Halted => "halted".into(),
            Status::Reset => "reset".into(),
            Status::Timeout => "timeout".into(),
            Status::Crashed(_) => "crashed".into(),
            Status::Failed(_) => "failed".into(),
        }
    }
}

/// Whether two engines' statuses agree (see the module notes for QEMU).
pub(super) fn same_status(a: (&str, &Status), b: (&str, &Status)) -> bool {
    match (a.1, b.1) {
        (Status::Exit(x), Status::Exit(y)) if a.0 == "qemu" || b.0 == "qemu" => x & 0x7f == y & 0x7f,
        // With -no-reboot QEMU ends a triple fault exactly like a reset.
        (Status::Crashed(_), Status::Reset) | (Status::Reset, Status::Crashed(_))
            if a.0 == "qemu" || b.0 == "qemu" =>
        {
            true
        }
        // How a crash is described differs by engine; that it crashed does not.
        (Status::Crashed(_), Status::Crashed(_)) => true,
        (x, y) => x == y,
    }
}

/// One engine's result.
struct Row {
    engine: &'static str,
    result: Result<Ran, String>,
    /// A remark printed under the table (software-backed KVM, ...).
    note: Option<String>,
}

struct Ran {
    /// Wall time of each run.
    walls: Vec<Duration>,
    output: String,
    status: Status,
    guest_exits: Option<u64>,
    callouts: Option<u64>,
}

/// A finished child process.
struct Child {
    wall: Duration,
    stdout: Vec<u8>,
    stderr: String,
    /// None when killed at the timeout.
    code: Option<i32>,
}

/// Checks what every engine would refuse alike: a message for bad input.
fn check_input(s: &Settings) -> Result<Duration, String> {
    let limit = parse_timeout(s.timeout)?;
    let image = read_kernel(&s.kernel).map_err(|e| format!("{e:#}"))?;
    // Load it once into RAM of the size asked for (a sparse memfd: cheap), so a kernel
    // no engine can load is refused here.
    let ram = bt86_runtime::memory::GuestRam::new(s.mem << 20).map_err(|e| e.to_string())?;
    bt86_runtime::loader::load(&ram, &image, &s.cmdline, None).map_err(|e| format!("cannot load the kernel: {e}"))?;
    Ok(limit)
}

pub(crate) fn main(s: &Settings) -> ExitCode {
    let limit = match check_input(s) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bt86: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let kvm_note = match kvm::check_host() {
        Ok(h) => Ok(Some(format!("KVM is {}", h.describe()))),
        Err(e @ KvmUnavailable::Software { .. }) if s.allow_software_kvm => {
            let what = e.software_host().map(kvm::KvmHost::describe).unwrap_or_default();
            Ok(Some(format!(
                "KVM here is {what}, not VT-x/AMD-V: its time says nothing about hardware-assisted virtualization"
            )))
        }
        Err(e) => Err(format!("skipped: {e}")),
    };
    let qemu = find_on_path("qemu-system-i386").ok_or_else(|| "skipped: qemu-system-i386 is not on PATH".to_string());
    let rows = vec![
        runs(s, "bt", || run_bt86(s, "bt", limit, None)),
        match kvm_note {
            Ok(note) => runs(s, "kvm", || run_bt86(s, "kvm", limit, note.clone())),
            Err(why) => Row { engine: "kvm", result: Err(why), note: None },
        },
        match qemu {
            Ok(q) => runs(s, "qemu", || run_qemu(s, &q, limit)),
            Err(why) => Row { engine: "qemu", result: Err(why), note: None },
        },
    ];
    progress("");
    let agree = print_table(s, &rows);
    if agree {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Runs one engine `s.runs` times, showing progress on stderr; the first run's output
/// and status with every run's wall time.
fn runs(s: &Settings, engine: &'static str, mut once: impl FnMut() -> Row) -> Row {
    let mut first: Option<Row> = None;
    let mut others_differ = 0;
    for i in 1..=s.runs {
        let what = if s.runs > 1 { format!("{engine} (run {i} of {})", s.runs) } else { engine.to_string() };
        progress(&format!("running {what}..."));
        let row = once();
        let Some(f) = first.as_mut() else {
            if row.result.is_err() {
                return row;
            }
            first = Some(row);
            continue;
        };
        if let (Ok(a), Ok(b)) = (f.result.as_mut(), row.result) {
            if comparable(&a.output, &s.vary) != comparable(&b.output, &s.vary) || a.status != b.status {
                others_differ += 1;
            }
            a.walls.extend(b.walls);
        }
    }
    let mut row = first.expect("at least one run");
    if others_differ > 0 {
        let n = format!("{engine}: {others_differ} of the later runs ended otherwise than the first (output or status)");
        row.note = Some(row.note.map_or(n.clone(), |m| format!("{m}\n{n}")));
    }
    row
}

/// A progress line on stderr: rewritten in place on a terminal, one line each
/// otherwise; "" clears it (terminal) or says nothing.
fn progress(what: &str) {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        let line = if what.is_empty() { String::new() } else { format!("bt86 compare: {what}") };
        eprint!("\r\x1b[K{line}");
    } else if !what.is_empty() {
        eprintln!("bt86 compare: {what}");
    }
}

/// The median and the spread (slowest minus fastest) of `walls`.
pub(super) fn median_spread(walls: &[Duration]) -> (Duration, Duration) {
    let mut w = walls.to_vec();
    w.sort();
    if w.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    let n = w.len();
    let median = if n % 2 == 1 { w[n / 2] } else { (w[n / 2 - 1] + w[n / 2]) / 2 };
    (median, w[n - 1] - w[0])
}

/// Whether a line of console output is marked as varying (see the module notes).
pub(super) fn varies(line: &str, vary: &[String]) -> bool {
    line.starts_with('~') || vary.iter().any(|v| !v.is_empty() && line.contains(v.as_str()))
}

/// The output with every varying line replaced by one marker, for comparison.
pub(super) fn comparable(output: &str, vary: &[String]) -> String {
    output.split('\n').map(|l| if varies(l, vary) { "~" } else { l }).collect::<Vec<_>>().join("\n")
}

/// How many lines differ between `a` and `b` only among the varying ones.
fn varying_differences(a: &str, b: &str, vary: &[String]) -> usize {
    a.split('\n').zip(b.split('\n')).filter(|(x, y)| x != y && varies(x, vary) && varies(y, vary)).count()
}

/// bt86 itself (`run --engine ENGINE --stats=json`) as a child process.
fn run_bt86(s: &Settings, engine: &'static str, limit: Duration, note: Option<String>) -> Row {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return Row { engine, result: Err(format!("cannot find the bt86 executable: {e}")), note },
    };
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg("--kernel")
        .arg(&s.kernel)
        // `--cmdline=...` so a command line that starts with '-' stays a value.
        .args(["--engine", engine, "--stats=json", "--mem", &s.mem.to_string(), &format!("--cmdline={}", s.cmdline)])
        .args(["--timeout", &limit.as_secs_f64().to_string()]);
    if engine == "kvm" {
        cmd.arg("--allow-software-kvm");
    }
    // The child stops itself at the limit (printing its statistics); the grace
    // period only matters if it cannot.
    let child = match spawn_and_wait(cmd, limit + Duration::from_secs(5)) {
        Ok(c) => c,
        Err(e) => return Row { engine, result: Err(format!("could not run: {e}")), note },
    };
    let stats = child
        .stderr
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
    let guest_exits = stats.as_ref().and_then(|v| v["guest_exits"].as_u64());
    let callouts = stats
        .as_ref()
        .and_then(|v| v["callouts"].as_object().map(|m| m.values().filter_map(serde_json::Value::as_u64).sum()));
    let status = stats.as_ref().and_then(|v| status_of_stop(&v["stop"])).unwrap_or_else(|| bt86_status(child.code, &child.stderr));
    let output = normalise(&child.stdout, None);
    Row { engine, result: Ok(Ran { walls: vec![child.wall], output, status, guest_exits, callouts }), note }
}

/// How a `bt86 run` child ended, from the `stop` member of its JSON statistics.
pub(super) fn status_of_stop(stop: &serde_json::Value) -> Option<Status> {
    let message = || stop["message"].as_str().unwrap_or("").to_string();
    Some(match stop["reason"].as_str()? {
        "guest-exit" => Status::Exit(u32::try_from(stop["exit_status"].as_u64()?).ok()?),
        "halted" => Status::Halted,
        "reset" => Status::Reset,
        "timeout" => Status::Timeout,
        "guest-exception" | "triple-fault" => Status::Crashed(message()),
        _ => Status::Failed(message()),
    })
}

/// How a `bt86 run` child ended, from its exit status and its stderr messages (when
/// it printed no statistics).
pub(super) fn bt86_status(code: Option<i32>, stderr: &str) -> Status {
    let Some(code) = code else { return Status::Timeout };
    // bt86's own last message about the run (warnings and statistics aside).
    let message = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("bt86: ") && !l.starts_with("bt86: warning"))
        .map(|l| l.trim_start_matches("bt86: ").to_string());
    match (code, message) {
        (0, Some(m)) if m.starts_with("guest halted") => Status::Halted,
        (0, Some(m)) if m.contains("asked for a reset") => Status::Reset,
        (3, Some(m)) if m.starts_with("stopped at eip") => Status::Timeout,
        (3, Some(m)) if m.starts_with("guest exception") || m.starts_with("triple fault") => Status::Crashed(m),
        (2 | 3 | 4 | 70, Some(m)) => Status::Failed(m),
        (c, _) if c >= 0 => Status::Exit(c.unsigned_abs()),
        (c, m) => Status::Failed(m.unwrap_or_else(|| format!("exit status {c}"))),
    }
}

/// QEMU TCG with isa-debug-exit, the reference emulator.
fn run_qemu(s: &Settings, qemu: &Path, limit: Duration) -> Row {
    let mut cmd = Command::new(qemu);
    cmd.args(["-accel", "tcg", "-kernel"])
        .arg(&s.kernel)
        .args(["-append", &s.cmdline, "-m", &s.mem.to_string()])
        // Not -nographic: with it, SeaBIOS copies its own banner ("SeaBIOS (version
        // ...)", "Booting from ROM..", terminal escapes) to the serial port, in front
        // of the guest's output. -display none and -monitor none already keep QEMU
        // off the terminal, so the serial port carries only the guest's output.
        .args(["-no-reboot", "-net", "none", "-display", "none", "-monitor", "none"])
        .args(["-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    let child = match spawn_and_wait(cmd, limit) {
        Ok(c) => c,
        Err(e) => return Row { engine: "qemu", result: Err(format!("could not run: {e}")), note: None },
    };
    let status = match child.code {
        None => Status::Timeout,
        // isa-debug-exit: QEMU exits with (v << 1) | 1.
        Some(c) if c & 1 == 1 => Status::Exit(c.unsigned_abs() >> 1),
        // With -no-reboot a reset or triple fault ends QEMU with 0.
        Some(0) => Status::Reset,
        Some(c) => {
            let why = child.stderr.lines().last().unwrap_or("").trim().to_string();
            Status::Failed(format!("QEMU exit status {c}: {why}"))
        }
    };
    let output = normalise(&child.stdout, Some(&s.kernel));
    let note = (status == Status::Reset).then(|| {
        "qemu: QEMU ended without an exit-port write: the guest reset or triple-faulted (-no-reboot)".to_string()
    });
    Row {
        engine: "qemu",
        result: Ok(Ran { walls: vec![child.wall], output, status, guest_exits: None, callouts: None }),
        note,
    }
}

/// The console output in comparable form (see the module notes).
pub(super) fn normalise(raw: &[u8], qemu_kernel: Option<&Path>) -> String {
    let mut text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    if let Some(k) = qemu_kernel {
        text = text.replace(&format!("{} ", k.display()), "");
    }
    text
}

/// Runs `cmd` with stdin from /dev/null and captured output, killing it after
/// `limit`; times it by the wall clock.
fn spawn_and_wait(mut cmd: Command, limit: Duration) -> std::io::Result<Child> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn()?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    // Poll with a short, growing sleep: precise enough to time a run of a few
    // milliseconds, cheap for a long one.
    let mut nap = Duration::from_micros(50);
    let (code, wall) = loop {
        if let Some(st) = child.try_wait()? {
            break (st.code(), started.elapsed());
        }
        if started.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            break (None, started.elapsed());
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(1));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    Ok(Child { wall, stdout, stderr, code })
}

/// `name` in a directory of $PATH, if it is an executable file there.
fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Where two outputs differ: the first differing line (1-based number, a's line,
/// b's line) and how many lines differ in all.
pub(super) fn first_difference<'a>(a: &'a str, b: &'a str) -> Option<(usize, &'a str, &'a str, usize)> {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.split('\n').collect(), b.split('\n').collect());
    let line = |v: &[&'a str], i: usize| v.get(i).copied().unwrap_or("<end of output>");
    let differing: Vec<usize> = (0..la.len().max(lb.len())).filter(|&i| la.get(i) != lb.get(i)).collect();
    let &first = differing.first()?;
    Some((first + 1, line(&la, first), line(&lb, first), differing.len()))
}

/// Prints the table and the notes; returns whether every engine that ran agreed.
fn print_table(s: &Settings, rows: &[Row]) -> bool {
    println!(
        "bt86 compare: {} ({} MiB, cmdline {:?})",
        s.kernel.display(),
        s.mem,
        s.cmdline
    );
    let ran: Vec<(&'static str, &Ran)> =
        rows.iter().filter_map(|r| r.result.as_ref().ok().map(|x| (r.engine, x))).collect();
    let fastest = ran
        .iter()
        .filter(|(_, r)| r.status != Status::Timeout)
        .map(|(_, r)| median_spread(&r.walls).0)
        .min();
    let reference = ran.first().copied();
    let many = s.runs > 1;
    let spread_head = if many { format!(" {:>10}", "spread") } else { String::new() };
    println!(
        "{:<6} {:>10}{spread_head} {:>10} {:>12} {:>9}  {:<10} output",
        "engine",
        if many { "median" } else { "wall time" },
        "vs fastest",
        "guest exits",
        "callouts",
        "status"
    );
    let mut agree = !ran.is_empty();
    let mut notes = Vec::new();
    for row in rows {
        let r = match &row.result {
            Ok(r) => r,
            Err(why) => {
                println!("{:<6} {why}", row.engine);
                continue;
            }
        };
        let (median, spread) = median_spread(&r.walls);
        let wall = if r.status == Status::Timeout {
            format!(">{:.3} s", median.as_secs_f64())
        } else {
            format!("{:.3} s", median.as_secs_f64())
        };
        let spread = if many { format!(" {:>10}", format!("{:.3} s", spread.as_secs_f64())) } else { String::new() };
        let ratio = match fastest {
            Some(f) if r.status != Status::Timeout && !f.is_zero() => {
                format!("{:.2}x", median.as_secs_f64() / f.as_secs_f64())
            }
            _ => "-".to_string(),
        };
        let num = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |n| n.to_string());
        let (ref_engine, ref_run) = reference.unwrap_or((row.engine, r));
        let same_output = comparable(&r.output, &s.vary) == comparable(&ref_run.output, &s.vary);
        let same = same_output && same_status((row.engine, &r.status), (ref_engine, &ref_run.status));
        agree &= same;
        let verdict = match (row.engine == ref_engine, same_output, same) {
            (true, _, _) => "match".to_string(),
            (false, true, true) => "match".to_string(),
            (false, true, false) => format!("same output, status differs from {ref_engine}"),
            (false, false, _) => format!("DIFFERS from {ref_engine}"),
        };
        println!(
            "{:<6} {:>10}{spread} {:>10} {:>12} {:>9}  {:<10} {}",
            row.engine,
            wall,
            ratio,
            num(r.guest_exits),
            num(r.callouts),
            r.status.label(),
            verdict
        );
        if let Status::Failed(why) | Status::Crashed(why) = &r.status {
            notes.push(format!("{}: {}: {why}", row.engine, r.status.label()));
        }
        let varying = varying_differences(&ref_run.output, &r.output, &s.vary);
        if varying > 0 && row.engine != ref_engine {
            notes.push(format!(
                "{}: {varying} line(s) marked as varying (timing, host CPU) differ from {ref_engine}; not counted",
                row.engine
            ));
        }
        if !same_output {
            let (a_cmp, b_cmp) = (comparable(&ref_run.output, &s.vary), comparable(&r.output, &s.vary));
            if let Some((n, _, _, count)) = first_difference(&a_cmp, &b_cmp) {
                let line = |t: &'_ str| t.split('\n').nth(n - 1).unwrap_or("<end of output>").to_string();
                let (a, b) = (line(&ref_run.output), line(&r.output));
                notes.push(format!(
                    "{}: output differs from {ref_engine} in {count} line(s), first at line {n}: {a:?} vs {b:?}",
                    row.engine
                ));
            }
        }
        if let Some(n) = &row.note {
            notes.push(n.clone());
        }
    }
    println!();
    for n in &notes {
        println!("{n}");
    }
    if agree {
        let bytes = reference.map_or(0, |(_, r)| r.output.len());
        println!(
            "all {} engines that ran agree: the same console output ({bytes} bytes, lines marked as varying aside) and status",
            ran.len()
        );
    } else if ran.is_empty() {
        println!("no engine ran");
    } else {
        println!("the engines disagree");
    }
    agree
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn qemu_kernel_path_is_ignored() {
        let k = Path::new("/tmp/k.elf");
        assert_eq!(normalise(b"cmdline: /tmp/k.elf a=1\r\nok\n", Some(k)), "cmdline: a=1\nok\n");
        assert_eq!(normalise(b"cmdline: /tmp/k.elf \n", Some(k)), "cmdline: \n");
        // bt86 output is left alone.
        assert_eq!(normalise(b"/tmp/k.elf x\n", None), "/tmp/k.elf x\n");
    }

    #[test]
    fn child_statuses() {
        assert_eq!(bt86_status(Some(7), ""), Status::Exit(7));
        assert_eq!(bt86_status(Some(3), "bt86: warning: slow\n"), Status::Exit(3));
        assert_eq!(bt86_status(Some(0), "bt86: guest halted at eip 0x00100010 with nothing left to wake it\n{}"), Status::Halted);
        assert_eq!(bt86_status(Some(3), "bt86: stopped at eip 0x1\n"), Status::Timeout);
        assert!(matches!(bt86_status(Some(3), "bt86: triple fault at eip 0x1 (the CPU shut down)\n"), Status::Crashed(_)));
        assert!(matches!(bt86_status(Some(3), "bt86: guest exception #UD (vector 6) at eip 0x1: no IDT\n"), Status::Crashed(_)));
        assert!(matches!(bt86_status(Some(3), "bt86: unsupported at eip 0x1: lar\n"), Status::Failed(_)));
        assert_eq!(bt86_status(None, ""), Status::Timeout);
    }

    #[test]
    fn qemu_exit_values_compare_in_seven_bits() {
        assert!(same_status(("bt", &Status::Exit(200)), ("qemu", &Status::Exit(72))));
        assert!(!same_status(("bt", &Status::Exit(200)), ("kvm", &Status::Exit(72))));
        assert!(same_status(("bt", &Status::Crashed("a".into())), ("kvm", &Status::Crashed("b".into()))));
        assert!(!same_status(("bt", &Status::Failed("a".into())), ("kvm", &Status::Failed("b".into()))));
        assert!(same_status(("kvm", &Status::Crashed("a".into())), ("qemu", &Status::Reset)));
        assert!(!same_status(("bt", &Status::Crashed("a".into())), ("kvm", &Status::Reset)));
        assert!(!same_status(("bt", &Status::Halted), ("qemu", &Status::Timeout)));
    }

    #[test]
    fn varying_lines_do_not_count() {
        let vary = vec!["ticks".to_string()];
        assert!(varies("~cpuid 0: max leaf 7", &[]));
        assert!(varies("kernel: 50 ticks", &vary) && !varies("kernel: 50 ticks", &[]));
        assert!(!varies("", &vary), "an empty --vary matches nothing");
        assert_eq!(comparable("a\n~x 1\nb", &[]), comparable("a\n~x 2\nb", &[]));
        assert_ne!(comparable("a\n~x 1\nb", &[]), comparable("a\n~x 1\nc", &[]));
        assert_eq!(varying_differences("a\n~x 1\n~y", "a\n~x 2\n~y", &[]), 1);
    }

    #[test]
    fn median_and_spread() {
        let ms = Duration::from_millis;
        assert_eq!(median_spread(&[ms(5)]), (ms(5), ms(0)));
        assert_eq!(median_spread(&[ms(9), ms(1), ms(5)]), (ms(5), ms(8)));
        assert_eq!(median_spread(&[ms(4), ms(2), ms(8), ms(6)]), (ms(5), ms(6)));
    }

    #[test]
    fn status_from_the_stop_record() {
        let j = |v: serde_json::Value| status_of_stop(&v);
        assert_eq!(j(serde_json::json!({"reason": "guest-exit", "exit_status": 7})), Some(Status::Exit(7)));
        assert_eq!(j(serde_json::json!({"reason": "timeout", "exit_status": 3})), Some(Status::Timeout));
        assert!(matches!(j(serde_json::json!({"reason": "triple-fault", "message": "m"})), Some(Status::Crashed(_))));
        assert!(matches!(j(serde_json::json!({"reason": "unsupported", "message": "m"})), Some(Status::Failed(_))));
        assert_eq!(j(serde_json::json!(null)), None);
    }

    #[test]
    fn first_difference_names_the_line() {
        assert_eq!(first_difference("a\nb\n", "a\nb\n"), None);
        assert_eq!(first_difference("a\nb\n", "a\nc\n"), Some((2, "b", "c", 1)));
        assert_eq!(first_difference("a\n", "a\nmore"), Some((2, "", "more", 1)));
        assert_eq!(first_difference("x\ny\n", "a\n"), Some((1, "x", "a", 3)));
    }
}
