//! The terminal table: one row per instruction in two lines (what the guest saw
//! deprivileged, and what its own state says), the outcome under each engine, then notes.
//! Every line fits 100 columns.

use crate::report::{Outcome, Study};

/// The widest line.
pub const WIDTH: usize = 100;

const INSN: usize = 13;
const KIND: usize = 3;
const DEPRIV: usize = 12;
const ENGINE: usize = 7;
const GAP: usize = 2;
/// The value column: what is left of the line.
const VALUE: usize = WIDTH - (INSN + 1 + KIND + GAP + DEPRIV + GAP + ENGINE + GAP + ENGINE + GAP);

/// Cuts `s` to `n` characters, marking a cut with `…`.
fn fit(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Wraps `text` at `width` columns, every line after the first indented by `indent`.
pub fn wrap(text: &str, width: usize, indent: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let len = line.chars().count();
        if len > 0 && len + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if line.is_empty() {
            if !lines.is_empty() {
                line.push_str(&" ".repeat(indent));
            }
        } else {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.trim().is_empty() {
        lines.push(line);
    }
    lines
}

fn yes(b: bool) -> &'static str {
    if b {
        "y"
    } else {
        "n"
    }
}

fn group_title(group: &str) -> &'static str {
    match group {
        "robin-irvine" => "sensitive, not privileged (Robin & Irvine)",
        "privileged" => "privileged, for contrast",
        _ => "not privileged, reveal the host",
    }
}

/// The study as terminal text.
pub fn render(study: &Study) -> String {
    let mut out = Vec::new();
    out.push("bt86 study: sensitive x86 instructions run by a guest kernel at CPL 0, under three engines".to_string());
    out.extend(wrap(&format!("guest state: {}", study.guest_state), WIDTH, 2));
    let umip = if study.host.umip { "UMIP on" } else { "UMIP off" };
    out.push(fit(&format!("host: Linux {}, {umip}", study.host.kernel), WIDTH));
    out.push(String::new());
    out.push("S: sensitive, P: privileged (faults outside ring 0); saw: what the guest saw deprivileged,".into());
    out.push("own: what its own state says it should see".into());
    out.push(String::new());
    out.push(format!(
        "{:<INSN$} {:<KIND$}  {:<DEPRIV$}  {:<ENGINE$}  {:<ENGINE$}  {}",
        "instruction", "S P", "deprivileged", "bt", "kvm", "deprivileged: what the guest saw / its own"
    ));
    out.push(format!(
        "{} {}  {}  {}  {}  {}",
        "-".repeat(INSN),
        "-".repeat(KIND),
        "-".repeat(DEPRIV),
        "-".repeat(ENGINE),
        "-".repeat(ENGINE),
        "-".repeat(VALUE)
    ));
    let mut group = "";
    for r in &study.rows {
        if r.group != group {
            group = &r.group;
            out.push(format!("-- {}", group_title(group)));
        }
        let e = &r.engines;
        let saw = if e.deprivileged.outcome == Outcome::Trap {
            format!("saw trap: {}", e.deprivileged.observed)
        } else {
            format!("saw {}", e.deprivileged.observed)
        };
        out.push(format!(
            "{:<INSN$} {:<KIND$}  {:<DEPRIV$}  {:<ENGINE$}  {:<ENGINE$}  {}",
            fit(&r.instruction, INSN),
            format!("{} {}", yes(r.sensitive), yes(r.privileged)),
            e.deprivileged.outcome.as_str(),
            e.bt.outcome.as_str(),
            e.kvm.outcome.as_str(),
            fit(&saw, VALUE)
        ));
        let pad = WIDTH - VALUE;
        out.push(format!("{:pad$}{}", "", fit(&format!("own {}", e.deprivileged.expected), VALUE)));
    }
    out.push(String::new());
    out.extend(notes(study));
    out.join("\n") + "\n"
}

/// The notes under the table: totals, what the host did, the kvm engine, bt's failures.
fn notes(study: &Study) -> Vec<String> {
    let mut out = Vec::new();
    let mut note = |text: String| out.extend(wrap(&text, WIDTH, 2));
    let ri: Vec<_> = study.rows.iter().filter(|r| r.group == "robin-irvine").collect();
    let count = |o: Outcome| ri.iter().filter(|r| r.engines.deprivileged.outcome == o).count();
    note(format!(
        "* Robin & Irvine's instructions ({} rows), deprivileged: {} wrong, {} trap, {} correct. Under bt: {} of {} rows correct.",
        ri.len(),
        count(Outcome::Wrong),
        count(Outcome::Trap),
        count(Outcome::Correct),
        study.count("bt", Outcome::Correct),
        study.rows.len()
    ));
    let umip: Vec<&str> = study
        .rows
        .iter()
        .filter(|r| r.engines.deprivileged.note.contains("UMIP"))
        .map(|r| r.instruction.as_str())
        .collect();
    if !umip.is_empty() {
        note(format!(
            "* UMIP: {} faulted at CPL 3 into the host kernel, which emulated them with fixed dummy values (the 'saw' values above) and resumed: the VMM never saw a trap.",
            umip.join(", ")
        ));
    }
    for r in &study.rows {
        let e = &r.engines;
        if r.instruction == "cpuid" || r.instruction == "rdtsc" {
            let detail = e.deprivileged.note.trim_start_matches("no trap; ");
            note(format!("* {} deprivileged: {detail}", r.instruction));
        }
        if e.deprivileged.outcome == Outcome::Trap && e.deprivileged.note.contains("not at the studied") {
            note(format!("* {} deprivileged: {}", r.instruction, e.deprivileged.note));
        }
        for (name, res) in [("bt", &e.bt), ("kvm", &e.kvm)] {
            match res.outcome {
                Outcome::Wrong => note(format!(
                    "* {} under {name}: wrong (saw {}, should see {}) {}",
                    r.instruction, res.observed, res.expected, res.note
                )),
                Outcome::Error => note(format!("* {} under {name}: error: {}", r.instruction, res.note)),
                _ => {}
            }
        }
    }
    if study.host.kvm_ran {
        note(format!("* kvm: {}", study.host.kvm));
    } else {
        note(format!("* kvm: not run: {}", study.host.kvm));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_and_fit() {
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abc", 4), "abc");
        assert_eq!(wrap("aa bb cc dd", 5, 1), vec!["aa bb", " cc", " dd"]);
        assert!(wrap("", 10, 0).is_empty());
    }
}
