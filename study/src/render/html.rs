//! The HTML page: one self-contained file (inline CSS and SVG, no script, no network)
//! with the figure (instruction × engine, coloured by outcome), an explanation of
//! Popek–Goldberg and of each outcome class, and the full table.

use std::fmt::Write as _;

use crate::report::{EngineResult, Outcome, Row, Study};

/// Fill colour of an outcome (Okabe–Ito colours: distinguishable with colour blindness).
pub fn colour(o: Outcome) -> &'static str {
    match o {
        Outcome::Trap => "#0072b2",
        Outcome::Wrong => "#d55e00",
        Outcome::Correct => "#009e73",
        Outcome::NotRun => "#bdbdbd",
        Outcome::Error => "#6a3d9a",
    }
}

/// Text colour on that fill.
fn ink(o: Outcome) -> &'static str {
    if o == Outcome::NotRun {
        "#222"
    } else {
        "#fff"
    }
}

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn group_title(group: &str) -> &'static str {
    match group {
        "robin-irvine" => "Sensitive, not privileged (Robin & Irvine)",
        "privileged" => "Privileged (for contrast)",
        _ => "Not privileged, reveal the host",
    }
}

const ROW_H: u32 = 30;
const NAME_W: u32 = 190;
const CELL_W: u32 = 170;
const GROUP_H: u32 = 34;
const TOP: u32 = 70;

/// The figure: one row per instruction, one column per engine, each cell coloured by
/// outcome and labelled with it.
pub fn svg(study: &Study) -> String {
    let engines = ["deprivileged", "bt", "kvm"];
    let groups = study.rows.windows(2).filter(|w| w[0].group != w[1].group).count() as u32 + 1;
    let rows = study.rows.len() as u32;
    let width = NAME_W + CELL_W * 3 + 20;
    let legend_y = TOP + rows * ROW_H + groups * GROUP_H + 20;
    let height = legend_y + 50;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-labelledby="fig-title" font-family="DejaVu Sans, Verdana, sans-serif">"#
    );
    let _ = write!(s, r#"<title id="fig-title">Outcome of each sensitive instruction under each engine</title>"#);
    let _ = write!(s, r##"<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>"##);
    let _ = write!(s, r##"<text x="{}" y="28" font-size="20" font-weight="bold" fill="#111">A guest kernel's instruction, run three ways</text>"##, 10);
    for (i, e) in engines.iter().enumerate() {
        let x = NAME_W + CELL_W * i as u32 + CELL_W / 2;
        let _ = write!(s, r##"<text x="{x}" y="{}" font-size="17" font-weight="bold" text-anchor="middle" fill="#111">{e}</text>"##, TOP - 12);
    }
    let mut y = TOP;
    let mut group = "";
    for r in &study.rows {
        if r.group != group {
            group = &r.group;
            let _ = write!(
                s,
                r##"<text x="10" y="{}" font-size="15" font-style="italic" fill="#444">{}</text>"##,
                y + GROUP_H - 10,
                esc(group_title(group))
            );
            y += GROUP_H;
        }
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" font-size="16" font-family="DejaVu Sans Mono, monospace" text-anchor="end" fill="#111">{}</text>"##,
            NAME_W - 12,
            y + ROW_H / 2 + 6,
            esc(&r.instruction)
        );
        for (i, (_, e)) in r.engines.each().iter().enumerate() {
            let x = NAME_W + CELL_W * i as u32;
            let _ = write!(
                s,
                r##"<rect x="{}" y="{}" width="{}" height="{}" rx="4" fill="{}"><title>{}</title></rect>"##,
                x + 2,
                y + 2,
                CELL_W - 4,
                ROW_H - 4,
                colour(e.outcome),
                esc(&format!("{} / {}: {}", r.instruction, engines[i], cell_title(e)))
            );
            let _ = write!(
                s,
                r##"<text x="{}" y="{}" font-size="15" text-anchor="middle" fill="{}">{}</text>"##,
                x + CELL_W / 2,
                y + ROW_H / 2 + 5,
                ink(e.outcome),
                e.outcome.as_str()
            );
        }
        y += ROW_H;
    }
    let mut x = 10;
    for o in Outcome::ALL {
        let _ = write!(s, r##"<rect x="{x}" y="{legend_y}" width="22" height="22" rx="3" fill="{}"/>"##, colour(o));
        let _ = write!(s, r##"<text x="{}" y="{}" font-size="15" fill="#111">{}</text>"##, x + 28, legend_y + 16, o.as_str());
        x += 40 + 9 * o.as_str().len() as u32 + 20;
    }
    s.push_str("</svg>");
    s
}

fn cell_title(e: &EngineResult) -> String {
    let mut t = e.outcome.as_str().to_string();
    if !e.observed.is_empty() {
        let _ = write!(t, "; saw {}", e.observed);
    }
    if !e.expected.is_empty() {
        let _ = write!(t, "; should see {}", e.expected);
    }
    if !e.note.is_empty() {
        let _ = write!(t, "; {}", e.note);
    }
    t
}

fn badge(o: Outcome) -> String {
    format!(r#"<span class="badge" style="background:{};color:{}">{}</span>"#, colour(o), ink(o), o.as_str())
}

/// A result cell; a note the page already says once (`said`) is not repeated.
fn engine_cell(e: &EngineResult, full: bool, said: &str) -> String {
    let mut s = badge(e.outcome);
    if full || e.outcome != Outcome::Correct {
        if !e.observed.is_empty() {
            let _ = write!(s, r#"<div><span class="k">saw</span> <code>{}</code></div>"#, esc(&e.observed));
        }
        if !e.expected.is_empty() && e.observed != e.expected {
            let _ = write!(s, r#"<div><span class="k">should see</span> <code>{}</code></div>"#, esc(&e.expected));
        }
    }
    if !said.is_empty() && e.note == said {
        s.push_str(r#"<div class="note">(see <em>kvm</em> under “The guest and the host”)</div>"#);
    } else if !e.note.is_empty() {
        let _ = write!(s, r#"<div class="note">{}</div>"#, esc(&e.note));
    }
    s
}

fn table_row(r: &Row, kvm_said: &str) -> String {
    let e = &r.engines;
    format!(
        r#"<tr><td><code class="insn">{}</code><div class="about">{}</div><details><summary>snippet</summary><pre>{}</pre></details></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
        esc(&r.instruction),
        esc(&r.about),
        esc(&r.code.join("\n")),
        if r.sensitive { "yes" } else { "no" },
        if r.privileged { "yes" } else { "no" },
        engine_cell(&e.deprivileged, true, ""),
        engine_cell(&e.bt, false, ""),
        engine_cell(&e.kvm, false, kvm_said),
    )
}

const STYLE: &str = r#"
body { font-family: "DejaVu Sans", Verdana, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #111; line-height: 1.45; font-size: 17px; }
h1 { font-size: 1.8em; margin-bottom: 0.2em; }
h2 { margin-top: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: 0.2em; }
code, pre { font-family: "DejaVu Sans Mono", monospace; font-size: 0.92em; }
.lead { font-size: 1.1em; }
.figure { text-align: center; margin: 1.5em 0; }
.figure svg { max-width: 100%; height: auto; border: 1px solid #ddd; }
dl.outcomes dt { margin-top: 0.6em; }
.badge { display: inline-block; padding: 0.1em 0.6em; border-radius: 4px; font-weight: bold; font-size: 0.9em; }
table { border-collapse: collapse; width: 100%; font-size: 0.88em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.45em; vertical-align: top; text-align: left; }
th { background: #f3f3f3; position: sticky; top: 0; }
tr.group td { background: #fafafa; font-style: italic; font-weight: bold; }
.insn { font-size: 1.15em; font-weight: bold; }
.about { color: #333; margin-top: 0.3em; max-width: 24em; }
.note { color: #555; font-size: 0.92em; margin-top: 0.3em; }
.k { color: #666; font-size: 0.9em; }
details summary { cursor: pointer; color: #0072b2; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 0.4em; margin: 0.3em 0; }
.facts td { border: none; padding: 0.15em 0.8em 0.15em 0; }
.facts td:first-child { white-space: nowrap; }
"#;

/// The whole page.
pub fn render(study: &Study) -> String {
    let mut s = String::new();
    s.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    s.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    s.push_str("<title>bt86 study: why x86 was not virtualizable, measured</title>\n");
    let _ = write!(s, "<style>{STYLE}</style>\n</head>\n<body>\n");
    s.push_str("<h1>Why x86 was not virtualizable, measured on this machine</h1>\n");
    s.push_str(r#"<p class="lead">A small guest kernel runs one sensitive instruction at a time, at guest privilege level 0, with a known state: its own GDT, IDT, CR0, CR3, interrupt flag and I/O privilege level. Each instruction runs under three engines, and the page shows what the guest actually saw. Every value below was measured by <code>bt86 study</code>; every expected value was computed from the guest's own state.</p>"#);
    s.push('\n');
    s.push_str("<h2>Popek and Goldberg, and why x86 failed their test</h2>\n");
    s.push_str(r#"<p>Popek and Goldberg (1974) showed when a machine can be virtualized by <em>trap-and-emulate</em>: run the guest kernel with reduced privilege, let every privileged instruction trap to the virtual machine monitor (VMM), and emulate it against the guest's virtual CPU. This works if every <strong>sensitive</strong> instruction (one that reads or changes privileged state, or whose behaviour depends on it) is <strong>privileged</strong> (traps when run without privilege). Robin and Irvine (2000) listed the Pentium's sensitive instructions that are <em>not</em> privileged: they run at user level without trapping, and silently give the deprivileged guest the wrong answer. A VMM that never gets control cannot fix it.</p>"#);
    s.push_str(r#"<p>Binary translation (VMware Workstation, 1999; bt86 here) sidesteps the problem: guest kernel code is not run as it is, but translated first, and every sensitive instruction is rewritten into code that consults the guest's virtual CPU (inline, or by a call into the VMM: a <em>callout</em>). Hardware-assisted virtualization (Intel VT-x, AMD-V, 2005-06) fixed the architecture instead: the guest kernel really runs at ring 0 in a separate mode, and the CPU itself keeps the guest's state.</p>"#);
    s.push('\n');
    s.push_str("<h2>The three engines</h2>\n<ul>\n");
    s.push_str("<li><strong>deprivileged</strong>: the snippet runs natively on this CPU, in 32-bit compatibility mode at host privilege level 3, as a trap-and-emulate VMM without binary translation would run guest kernel code. The guest's GDT is mirrored as well as it can be (its kernel code and data descriptors sit where the host has the same segments with DPL 3); its other state lives only in the VMM.</li>\n");
    s.push_str("<li><strong>bt</strong>: the same guest under bt86's binary translator.</li>\n");
    s.push_str("<li><strong>kvm</strong>: the same guest under KVM, only where KVM is backed by VT-x or AMD-V.</li>\n</ul>\n");
    s.push_str("<h2>Figure</h2>\n<div class=\"figure\">");
    s.push_str(&svg(study));
    s.push_str("</div>\n");
    s.push_str("<h2>What each outcome means</h2>\n<dl class=\"outcomes\">\n");
    for o in Outcome::ALL {
        let _ = writeln!(s, "<dt>{}</dt><dd>{}</dd>", badge(o), esc(o.explain()));
    }
    s.push_str("</dl>\n");
    s.push_str("<h2>The guest and the host</h2>\n<table class=\"facts\">\n");
    let umip = if study.host.umip {
        "on: sgdt, sidt, sldt, smsw and str fault at user level; Linux catches the fault and emulates them for user programs with fixed dummy values, so a process (the deprivileged VMM) never sees a trap"
    } else {
        "off"
    };
    for (k, v) in [
        ("guest state", study.guest_state.as_str()),
        ("host kernel", study.host.kernel.as_str()),
        ("UMIP", umip),
        ("kvm", study.host.kvm.as_str()),
    ] {
        let _ = writeln!(s, "<tr><td><strong>{}</strong></td><td>{}</td></tr>", esc(k), esc(v));
    }
    s.push_str("</table>\n");
    s.push_str("<h2>All rows</h2>\n<table>\n<thead><tr><th>instruction</th><th>sensitive</th><th>privileged</th><th>deprivileged</th><th>bt</th><th>kvm</th></tr></thead>\n<tbody>\n");
    let mut group = "";
    for r in &study.rows {
        if r.group != group {
            group = &r.group;
            let _ = writeln!(s, r#"<tr class="group"><td colspan="6">{}</td></tr>"#, esc(group_title(group)));
        }
        s.push_str(&table_row(r, &study.host.kvm));
        s.push('\n');
    }
    s.push_str("</tbody>\n</table>\n");
    s.push_str("<p class=\"note\">Made by <code>bt86 study --html</code>. References: G. J. Popek, R. P. Goldberg, <em>Formal Requirements for Virtualizable Third Generation Architectures</em>, CACM 1974; J. S. Robin, C. E. Irvine, <em>Analysis of the Intel Pentium's Ability to Support a Secure Virtual Machine Monitor</em>, USENIX Security 2000; K. Adams, O. Agesen, <em>A Comparison of Software and Hardware Techniques for x86 Virtualization</em>, ASPLOS 2006.</p>\n");
    s.push_str("</body>\n</html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(esc(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
