//! The study's results: rows, per-engine outcomes, and the facts about the host that
//! explain them. `--format json` is the rows as an array (see [`Study::to_json`]).

use serde::Serialize;

/// What happened to the guest's instruction under one engine.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The VMM got control at the instruction (a fault): it can emulate it. Fine.
    Trap,
    /// No trap reached the VMM, and the guest saw something that is not its own.
    Wrong,
    /// No trap needed: the guest saw exactly what its own state says.
    Correct,
    /// The engine could not run here (the note says why).
    NotRun,
    /// The engine failed on this row (the note says how).
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [Outcome::Trap, Outcome::Wrong, Outcome::Correct, Outcome::NotRun, Outcome::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Trap => "trap",
            Outcome::Wrong => "wrong",
            Outcome::Correct => "correct",
            Outcome::NotRun => "not-run",
            Outcome::Error => "error",
        }
    }

    /// One sentence for the reader.
    pub fn explain(self) -> &'static str {
        match self {
            Outcome::Trap => "the instruction faulted, so the VMM got control at it and can emulate it against the guest's virtual CPU: trap-and-emulate works for this instruction",
            Outcome::Wrong => "no trap reached the VMM and the guest saw a value that is not its own (the host's, or the CPU's real state instead of the virtual one): trap-and-emulate cannot fix what it never sees",
            Outcome::Correct => "the guest saw exactly what its own state says it should",
            Outcome::NotRun => "the engine cannot run on this host (the note says why)",
            Outcome::Error => "the engine itself failed on this row (the note says how)",
        }
    }
}

/// One engine's result for one row.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct EngineResult {
    pub outcome: Outcome,
    /// What the guest saw (or where it trapped).
    pub observed: String,
    /// What the guest's own state says it should see.
    pub expected: String,
    pub note: String,
}

impl EngineResult {
    pub fn not_run(reason: &str) -> Self {
        Self { outcome: Outcome::NotRun, observed: String::new(), expected: String::new(), note: reason.to_string() }
    }
}

/// The three engines.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Engines {
    pub deprivileged: EngineResult,
    pub bt: EngineResult,
    pub kvm: EngineResult,
}

impl Engines {
    /// (name, result) in report order.
    pub fn each(&self) -> [(&'static str, &EngineResult); 3] {
        [("deprivileged", &self.deprivileged), ("bt", &self.bt), ("kvm", &self.kvm)]
    }
}

/// One instruction.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub instruction: String,
    /// Its behaviour depends on, or reveals, privileged or host state.
    pub sensitive: bool,
    /// It faults outside ring 0.
    pub privileged: bool,
    /// `robin-irvine`, `privileged` or `host-leak`.
    pub group: String,
    /// What the row shows.
    pub about: String,
    /// The guest snippet, disassembled (AT&T), from the studied instruction on.
    pub code: Vec<String>,
    pub engines: Engines,
}

/// What the host is, as far as the results depend on it.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    /// The kernel release.
    pub kernel: String,
    /// CR4.UMIP is on (the `umip` flag in /proc/cpuinfo).
    pub umip: bool,
    /// What /dev/kvm is here, or why the kvm engine does not run.
    pub kvm: String,
    /// Whether the kvm engine ran.
    pub kvm_ran: bool,
}

/// The whole study.
#[derive(Clone, Debug)]
pub struct Study {
    pub rows: Vec<Row>,
    pub host: HostFacts,
    /// The guest's known base state, in one line.
    pub guest_state: String,
}

impl Study {
    /// `--format json`: the rows as a JSON array.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.rows).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// Whether every row is `correct` under bt.
    pub fn bt_all_correct(&self) -> bool {
        self.rows.iter().all(|r| r.engines.bt.outcome == Outcome::Correct)
    }

    /// How many rows of `engine` have `outcome`.
    pub fn count(&self, engine: &str, outcome: Outcome) -> usize {
        self.rows
            .iter()
            .filter(|r| r.engines.each().iter().any(|(name, e)| *name == engine && e.outcome == outcome))
            .count()
    }
}
