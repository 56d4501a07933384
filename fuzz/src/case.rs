//! What one fuzz run is ([`Case`]), how it went ([`Verdict`]), and reproducer files.
//!
//! A case travels from the supervisor to a worker as one JSON line (bytes as hex).
//! A reproducer is two files: `NAME.bin`, the raw bytes (guest memory chunks, or a
//! snippet's code and data, or a kernel image), and `NAME.json`, the set-up with
//! the length of each piece of `NAME.bin` in order (`blobs`) and what went wrong.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Bytes that serialize as a hex string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(self.0.len() * 2);
        for b in &self.0 {
            out.push_str(&format!("{b:02x}"));
        }
        s.serialize_str(&out)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd number of hex digits"));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map(Bytes)
            .map_err(serde::de::Error::custom)
    }
}

/// Bytes placed in guest RAM at a physical address.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Chunk {
    pub addr: u32,
    pub bytes: Bytes,
}

/// How the harness set the guest up (for people reading a reproducer; the memory
/// image already holds all of it).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Setup {
    /// Privilege level the body runs at (0 or 3).
    pub cpl: u8,
    pub paging: bool,
    /// PIT channel 0 divisor when a timer interrupt stream runs.
    pub timer: Option<u16>,
    /// EFLAGS.IOPL of the body.
    pub iopl: u8,
    pub cr0: u32,
    pub cr4: u32,
}

/// One generated item of the body: where it is, how long, what made it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Item {
    pub addr: u32,
    pub len: u32,
    pub kind: String,
}

/// What a probe area is for: after the run, the bytes a 32-bit CPU does not write
/// must still hold the fill byte, and nothing may look like a host address.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ProbeKind {
    Fxsave,
    Fnsave,
    Fnstenv,
    Xsave,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Probe {
    pub addr: u32,
    pub kind: ProbeKind,
    /// The byte the area was filled with before the run.
    pub fill: u8,
}

/// Raw guest code run by the harness (see `harness`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GuestCase {
    pub mem_mib: u32,
    /// The code cache (MiB); the fuzzer's small default when absent.
    #[serde(default)]
    pub code_cache_mib: Option<u32>,
    pub timeout_ms: u32,
    /// Where the run starts, flat at CPL 0 with paging off.
    pub entry: u32,
    pub chunks: Vec<Chunk>,
    pub items: Vec<Item>,
    pub probes: Vec<Probe>,
    pub setup: Setup,
}

/// A snippet for the differential oracle (native compatibility mode vs translated).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OracleCase {
    pub family: String,
    pub regs: [u32; 8],
    pub eflags: u32,
    pub code: Bytes,
    pub data: Bytes,
    /// The arithmetic flags compared: at the end, and at each instruction start
    /// (eip, flags) where a fault could stop the snippet.
    pub flags_at_end: u32,
    pub flags_at: Vec<(u32, u32)>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ImageKind {
    Multiboot,
    Linux,
}

/// A (mutated) kernel image for the loaders.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LoaderCase {
    pub kind: ImageKind,
    pub mem_mib: u32,
    pub image: Bytes,
    pub initrd: Option<Bytes>,
    pub cmdline: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Body {
    Guest(GuestCase),
    Oracle(OracleCase),
    Loader(LoaderCase),
}

/// One run: what to run and where it came from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Case {
    /// Campaign seed and case number (`bt86-fuzz --seed S --first I --runs 1` makes it again).
    pub seed: u64,
    pub index: u64,
    /// The generator that made it.
    pub generator: String,
    pub body: Body,
}

impl Case {
    /// The byte fields, in a fixed order (how `NAME.bin` is laid out).
    fn blobs_mut(&mut self) -> Vec<&mut Bytes> {
        match &mut self.body {
            Body::Guest(g) => g.chunks.iter_mut().map(|c| &mut c.bytes).collect(),
            Body::Oracle(o) => vec![&mut o.code, &mut o.data],
            Body::Loader(l) => {
                let mut v = vec![&mut l.image];
                v.extend(l.initrd.as_mut());
                v
            }
        }
    }

    /// A short description: generator and set-up.
    pub fn describe(&self) -> String {
        match &self.body {
            Body::Guest(g) => format!(
                "{} cpl {} paging {} timer {} iopl {} ({} items)",
                self.generator,
                g.setup.cpl,
                if g.setup.paging { "on" } else { "off" },
                g.setup.timer.map_or("off".into(), |d| format!("divisor {d}")),
                g.setup.iopl,
                g.items.len()
            ),
            Body::Oracle(o) => format!("{} oracle family {}", self.generator, o.family),
            Body::Loader(l) => format!("{} {:?} image of {} bytes", self.generator, l.kind, l.image.0.len()),
        }
    }
}

/// How a run ended, as the fuzzer classifies it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verdict {
    /// The outcome kind: a guest-level one (`exit`, `done`, `halt`, `exception`,
    /// `triple-fault`, `timeout`, `reset`, `unsupported`, `unbacked`, `loaded`,
    /// `load-error`, `agree`) or a failure (see [`Verdict::failure`]).
    pub kind: String,
    /// Details (the outcome, the error message, the differences).
    pub detail: String,
    /// Guest instructions executed, approximately.
    pub instructions: u64,
    /// A failure of the VMM: None for a guest-level outcome.
    pub failure: Option<Failure>,
}

/// What went wrong in the VMM.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Failure {
    /// `internal-error`, `panic`, `crash`, `hang`, `memory`, `host-leak`,
    /// `fxsave-area`, `oracle-diff`, `user-stop`, `loader-panic`.
    pub class: String,
    /// What makes two failures "the same": the class and the message with its
    /// numbers blanked.
    pub signature: String,
    pub message: String,
}

impl Failure {
    pub fn new(class: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self { class: class.into(), signature: format!("{class}: {}", blank_numbers(&message)), message }
    }
}

/// The message with its hexadecimal and decimal numbers replaced by `N` (and
/// its length capped), so that failures with one cause group together.
pub fn blank_numbers(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            while chars.peek().is_some_and(|d| d.is_ascii_hexdigit() || *d == 'x') {
                chars.next();
            }
            out.push('N');
        } else {
            out.push(c);
        }
        if out.len() > 160 {
            break;
        }
    }
    out
}

/// What `NAME.json` holds.
#[derive(Serialize, Deserialize)]
struct ReproFile {
    format: String,
    /// Lengths of the pieces of `NAME.bin`, in the order of the case's byte fields.
    blobs: Vec<usize>,
    case: Case,
    verdict: Option<Verdict>,
}

const FORMAT: &str = "bt86-fuzz reproducer 1";

#[derive(Debug, thiserror::Error)]
pub enum ReproError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a reproducer: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: format {found:?}, expected {FORMAT:?}")]
    Format { path: PathBuf, found: String },
    #[error("{path}: the .bin file has {have} bytes, the .json file names {want}")]
    Size { path: PathBuf, have: usize, want: usize },
}

/// Writes `dir/NAME.json` and `dir/NAME.bin`; returns the JSON file's path.
pub fn save(dir: &Path, name: &str, case: &Case, verdict: Option<&Verdict>) -> Result<PathBuf, ReproError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReproError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut case = case.clone();
    if let Body::Guest(g) = &mut case.body {
        trim_zeros(&mut g.chunks);
    }
    let mut bin = Vec::new();
    let mut blobs = Vec::new();
    for b in case.blobs_mut() {
        blobs.push(b.0.len());
        bin.append(&mut b.0);
    }
    let json_path = dir.join(format!("{name}.json"));
    let bin_path = dir.join(format!("{name}.bin"));
    let file = ReproFile { format: FORMAT.into(), blobs, case, verdict: verdict.cloned() };
    let text = serde_json::to_string_pretty(&file).map_err(|source| ReproError::Json { path: json_path.clone(), source })?;
    std::fs::write(&bin_path, bin).map_err(io(&bin_path))?;
    std::fs::write(&json_path, text + "\n").map_err(io(&json_path))?;
    Ok(json_path)
}

/// Drops the leading and trailing zero bytes of each chunk that no other chunk
/// overlaps (guest RAM starts zeroed, so the guest is the same).
fn trim_zeros(chunks: &mut [Chunk]) {
    let spans: Vec<(u64, u64)> = chunks.iter().map(|c| (u64::from(c.addr), u64::from(c.addr) + c.bytes.0.len() as u64)).collect();
    for (i, c) in chunks.iter_mut().enumerate() {
        let (a, b) = spans[i];
        if spans.iter().enumerate().any(|(j, &(x, y))| j != i && x < b && a < y) {
            continue;
        }
        let bytes = &c.bytes.0;
        let Some(first) = bytes.iter().position(|&v| v != 0) else {
            c.bytes.0.clear();
            continue;
        };
        let last = bytes.iter().rposition(|&v| v != 0).unwrap_or(first);
        c.bytes.0 = bytes[first..=last].to_vec();
        c.addr += first as u32;
    }
}

/// Reads a reproducer: `path` is its `.json` (or `.bin`) file.
pub fn load(path: &Path) -> Result<(Case, Option<Verdict>), ReproError> {
    let json_path = path.with_extension("json");
    let bin_path = path.with_extension("bin");
    let text = std::fs::read_to_string(&json_path).map_err(|source| ReproError::Io { path: json_path.clone(), source })?;
    let file: ReproFile = serde_json::from_str(&text).map_err(|source| ReproError::Json { path: json_path.clone(), source })?;
    if file.format != FORMAT {
        return Err(ReproError::Format { path: json_path, found: file.format });
    }
    let bin = std::fs::read(&bin_path).map_err(|source| ReproError::Io { path: bin_path.clone(), source })?;
    let want: usize = file.blobs.iter().sum();
    let mut case = file.case;
    let blobs = case.blobs_mut();
    if want != bin.len() || blobs.len() != file.blobs.len() {
        return Err(ReproError::Size { path: bin_path, have: bin.len(), want });
    }
    let mut at = 0;
    for (b, len) in blobs.into_iter().zip(file.blobs) {
        b.0 = bin[at..at + len].to_vec();
        at += len;
    }
    Ok((case, file.verdict))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducer_files_round_trip() {
        let case = Case {
            seed: 1,
            index: 2,
            generator: "test".into(),
            body: Body::Guest(GuestCase {
                mem_mib: 8,
                code_cache_mib: None,
                timeout_ms: 100,
                entry: 0x10_0000,
                chunks: vec![
                    Chunk { addr: 0x1000, bytes: Bytes(vec![1, 2, 3]) },
                    Chunk { addr: 0x2000, bytes: Bytes(vec![0xff; 5]) },
                    Chunk { addr: 0x3000, bytes: Bytes(vec![0, 0, 7, 0, 8, 0]) },
                ],
                items: vec![Item { addr: 0x11_0000, len: 3, kind: "x".into() }],
                probes: vec![],
                setup: Setup::default(),
            }),
        };
        let dir = std::env::temp_dir().join(format!("bt86-fuzz-case-{}", std::process::id()));
        let path = save(&dir, "r", &case, None).expect("save");
        assert_eq!(std::fs::read(dir.join("r.bin")).expect("bin"), [1, 2, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 7, 0, 8]);
        let (back, _) = load(&path).expect("load");
        let mut trimmed = case.clone();
        if let Body::Guest(g) = &mut trimmed.body {
            g.chunks[2] = Chunk { addr: 0x3002, bytes: Bytes(vec![7, 0, 8]) };
        }
        assert_eq!(back, trimmed, "zeros around a chunk are left out");
        let wire = serde_json::to_string(&case).expect("json");
        assert!(wire.contains("\"010203\""), "{wire}");
        assert_eq!(serde_json::from_str::<Case>(&wire).expect("parse"), case);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn signatures_ignore_numbers() {
        let a = Failure::new("internal-error", "fault at host 0x7f12 outside the views (eip 0x00100004)");
        let b = Failure::new("internal-error", "fault at host 0x7f99 outside the views (eip 0x00200010)");
        assert_eq!(a.signature, b.signature);
    }
}
