//! The differential oracle: runs the same 32-bit x86 snippet natively (in compatibility
//! mode, in a forked child: [`native`]) and translated by bt86
//! ([`bt86_runtime::snippet::run_snippet`]), and compares registers, flags, the data block
//! and the fault.
//!
//! - [`compare`]: everything, all of CF PF AF ZF SF OF DF.
//! - [`compare_masked`]: only the flags in `compared_flags` (for instructions that leave
//!   flags undefined).
//! - [`compare_case`]: a generated [`gen::Case`], whose flag mask depends on where it stopped.
//!
//! Fault conventions (see [`native`]): `SnippetFault::eip` is the EIP the exception frame
//! would hold — the faulting instruction for faults, the next instruction for traps
//! (`int3`, `into`, `int1`); the registers and data are the state at that point, and a
//! `rep` string instruction that faults mid-way reports the iterations that completed.

pub mod enc;
pub mod gen;
pub mod native;

use std::fmt::Write as _;
use std::time::Duration;

use bt86_runtime::snippet::{
    run_snippet, Snippet, SnippetFault, SnippetResult, CODE_ADDR, DATA_ADDR, STACK_TOP,
};

/// EFLAGS bits the oracle compares.
pub mod flags {
    pub const CF: u32 = 0x0001;
    pub const PF: u32 = 0x0004;
    pub const AF: u32 = 0x0010;
    pub const ZF: u32 = 0x0040;
    pub const SF: u32 = 0x0080;
    pub const DF: u32 = 0x0400;
    pub const OF: u32 = 0x0800;
    /// The six arithmetic status flags.
    pub const ALL6: u32 = CF | PF | AF | ZF | SF | OF;
    /// Everything compared: the six status flags and DF (0x0cd5).
    pub const ARITH: u32 = ALL6 | DF;
}

const REG_NAMES: [&str; 8] = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"];

/// Names of the flags set in `f` (within [`flags::ARITH`]), e.g. "CF ZF".
pub fn flag_names(f: u32) -> String {
    let names = [
        (flags::CF, "CF"),
        (flags::PF, "PF"),
        (flags::AF, "AF"),
        (flags::ZF, "ZF"),
        (flags::SF, "SF"),
        (flags::DF, "DF"),
        (flags::OF, "OF"),
    ];
    let v: Vec<&str> = names
        .iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(" ")
    }
}

/// Runs `s` both ways and compares everything (all arithmetic flags and DF).
pub fn compare(s: &Snippet) -> Result<(), String> {
    compare_masked(s, flags::ARITH)
}

/// Runs `s` both ways and compares registers, the data block, the fault, and the flags in
/// `compared_flags` (a subset of 0x0cd5; leave out the flags the snippet leaves undefined).
pub fn compare_masked(s: &Snippet, compared_flags: u32) -> Result<(), String> {
    compare_with(s, &|_| compared_flags)
}

/// Compares a generated case, with the flags defined at the point where it stopped.
pub fn compare_case(c: &gen::Case) -> Result<(), String> {
    compare_with(&c.snippet, &|fault| c.compared_flags(fault))
}

/// Runs `s` both ways and compares; `flags_for` gives the compared flags for the native
/// run's fault (None: ran to the end).
pub fn compare_with(
    s: &Snippet,
    flags_for: &dyn Fn(Option<SnippetFault>) -> u32,
) -> Result<(), String> {
    let native = native::run_native_detailed(s)
        .map_err(|e| report(s, &format!("native run failed: {e}"), None, None, 0))?;
    let translated = run_translated(s, TRANSLATED_TIMEOUT);
    let translated = match translated {
        Ok(t) => t,
        Err(e) => {
            return Err(report(
                s,
                &format!("translated run failed: {e}"),
                Some(&native),
                None,
                0,
            ));
        }
    };
    let mask = flags_for(native.result.fault) & flags::ARITH;
    let d = diff(&native.result, &translated, mask, s);
    if d.is_empty() {
        Ok(())
    } else {
        Err(report(
            s,
            &d.join("\n"),
            Some(&native),
            Some(&translated),
            mask,
        ))
    }
}

/// How long [`compare`] waits for the translated run before giving up on it.
pub const TRANSLATED_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `s` under the translator on a thread of its own and waits at most `timeout`, so that
/// a translated run that never ends fails the test instead of hanging it (the thread is
/// left behind).
pub fn run_translated(s: &Snippet, timeout: Duration) -> Result<SnippetResult, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let snippet = s.clone();
    std::thread::Builder::new()
        .name("oracle-translated".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(|| run_snippet(&snippet))
                .unwrap_or_else(|p| Err(format!("run_snippet panicked: {}", panic_text(&p))));
            let _ = tx.send(r);
        })
        .map_err(|e| format!("cannot spawn a thread: {e}"))?;
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no result within {timeout:?} (translated run hangs?)"
        )),
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic)".into()
    }
}

/// Field-by-field differences between the native and the translated result (empty when
/// they agree). `input` supplies the initial data block for context.
pub fn diff(
    native: &SnippetResult,
    translated: &SnippetResult,
    compared_flags: u32,
    input: &Snippet,
) -> Vec<String> {
    let mut out = Vec::new();
    if native.fault != translated.fault {
        out.push(format!(
            "fault: native {} translated {}",
            fault_str(native.fault),
            fault_str(translated.fault)
        ));
    }
    for (name, (n, t)) in REG_NAMES
        .iter()
        .zip(native.regs.iter().zip(&translated.regs))
    {
        if n != t {
            out.push(format!(
                "{name}: native {n:#010x} translated {t:#010x} (xor {:#010x})",
                n ^ t
            ));
        }
    }
    let (nf, tf) = (
        native.eflags & compared_flags,
        translated.eflags & compared_flags,
    );
    if nf != tf {
        out.push(format!(
            "eflags (compared {}): native {:#06x} [{}] translated {:#06x} [{}], differing: {}",
            flag_names(compared_flags),
            native.eflags & flags::ARITH,
            flag_names(native.eflags),
            translated.eflags & flags::ARITH,
            flag_names(translated.eflags),
            flag_names(nf ^ tf)
        ));
    }
    if native.data.len() != translated.data.len() {
        out.push(format!(
            "data length: native {} translated {}",
            native.data.len(),
            translated.data.len()
        ));
    }
    let mut shown = 0;
    let mut total = 0;
    for (i, (a, b)) in native.data.iter().zip(&translated.data).enumerate() {
        if a != b {
            total += 1;
            if shown < 24 {
                shown += 1;
                let was = input
                    .data
                    .get(i)
                    .map(|v| format!("{v:#04x}"))
                    .unwrap_or_else(|| "?".into());
                out.push(format!(
                    "data[{i:#06x}] @ {:#010x}: native {a:#04x} translated {b:#04x} (input {was})",
                    DATA_ADDR + i as u32
                ));
            }
        }
    }
    if total > shown {
        out.push(format!("... {} more differing data bytes", total - shown));
    }
    out
}

fn fault_str(f: Option<SnippetFault>) -> String {
    match f {
        None => "none (ran to the end)".into(),
        Some(f) => format!("vector {} at eip {:#010x}", f.vector, f.eip),
    }
}

/// Hex dump of the code, 16 bytes a line, with guest addresses.
pub fn hex_dump(code: &[u8]) -> String {
    let mut s = String::new();
    for (i, chunk) in code.chunks(16).enumerate() {
        let _ = write!(s, "  {:08x}:", CODE_ADDR as usize + i * 16);
        for b in chunk {
            let _ = write!(s, " {b:02x}");
        }
        s.push('\n');
    }
    s
}

/// Disassembly (AT&T syntax) of the code as decoded in 32-bit mode.
pub fn listing(code: &[u8]) -> String {
    use iced_x86::{Decoder, DecoderOptions, Formatter, GasFormatter, Instruction};
    let mut dec = Decoder::with_ip(32, code, u64::from(CODE_ADDR), DecoderOptions::NONE);
    let mut fmt = GasFormatter::new();
    let mut s = String::new();
    let mut ins = Instruction::default();
    while dec.can_decode() {
        dec.decode_out(&mut ins);
        let start = (ins.ip() - u64::from(CODE_ADDR)) as usize;
        let bytes = &code[start..start + ins.len()];
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut text = String::new();
        fmt.format(&ins, &mut text);
        let _ = writeln!(s, "  {:08x}  {:<24} {}", ins.ip(), hex, text);
    }
    s
}

/// The snippet's input: code (hex and disassembly), registers, flags, data size.
pub fn describe_input(s: &Snippet) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  code ({} bytes, `hlt` terminator at {:#010x}):",
        s.code.len(),
        CODE_ADDR as usize + s.code.len()
    );
    out.push_str(&hex_dump(&s.code));
    out.push_str("  disassembly:\n");
    out.push_str(&listing(&s.code));
    let mut regs = s.regs;
    if regs[4] == 0 {
        regs[4] = STACK_TOP;
    }
    out.push_str("  input:");
    for (i, r) in regs.iter().enumerate() {
        let _ = write!(out, " {}={:#010x}", REG_NAMES[i], r);
    }
    let _ = writeln!(
        out,
        "\n  input eflags: {:#06x} [{}]; data block {} bytes at {:#010x}",
        s.eflags & flags::ARITH,
        flag_names(s.eflags),
        s.data.len(),
        DATA_ADDR
    );
    out
}

fn describe_result(r: &SnippetResult) -> String {
    let mut out = String::new();
    for (i, v) in r.regs.iter().enumerate() {
        let _ = write!(out, " {}={:#010x}", REG_NAMES[i], v);
    }
    let _ = write!(
        out,
        " eflags={:#06x} [{}] fault: {}",
        r.eflags & flags::ARITH,
        flag_names(r.eflags),
        fault_str(r.fault)
    );
    out
}

fn report(
    s: &Snippet,
    what: &str,
    native: Option<&native::NativeRun>,
    translated: Option<&SnippetResult>,
    mask: u32,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "differential oracle: native and translated runs disagree"
    );
    out.push_str(&describe_input(s));
    if let Some(n) = native {
        let _ = writeln!(
            out,
            "  native:    {}\n             (host signal {}, trap {}, error code {:#x}, cr2 {:#010x})",
            describe_result(&n.result),
            n.signal,
            n.trapno,
            n.error_code,
            n.cr2
        );
    }
    if let Some(t) = translated {
        let _ = writeln!(out, "  translated:{}", describe_result(t));
        let _ = writeln!(out, "  compared flags: {}", flag_names(mask));
    }
    let _ = writeln!(out, "differences:");
    for line in what.lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}
