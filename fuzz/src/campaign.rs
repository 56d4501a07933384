//! A campaign: cases (seed, first, first+1, ...) through the supervisor until the
//! time or the run count is up; every failure kept as a reproducer (up to
//! [`KEEP_PER_SIGNATURE`] per distinct failure), the first of each distinct failure
//! minimized; statistics at the end (and in `summary.json`).

use crate::case::{self, Body, Case, Verdict};
use crate::supervise::Supervisor;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Reproducers kept per distinct failure (the rest are counted).
pub const KEEP_PER_SIGNATURE: u64 = 20;
/// Runs a minimization may make.
const MINIMIZE_BUDGET: usize = 120;

pub struct Options {
    pub seed: u64,
    pub first: u64,
    pub runs: Option<u64>,
    pub seconds: Option<u64>,
    pub kind: String,
    pub out: PathBuf,
    pub minimize: bool,
    pub progress: bool,
}

/// One distinct failure.
#[derive(Serialize, Debug, Clone)]
pub struct Distinct {
    pub class: String,
    pub signature: String,
    pub count: u64,
    pub example: String,
    /// Reproducers kept (JSON files), the minimized one first when there is one.
    pub reproducers: Vec<String>,
}

/// What a campaign did.
#[derive(Serialize, Debug, Default)]
pub struct Summary {
    pub seed: u64,
    pub first: u64,
    pub kind: String,
    pub runs: u64,
    pub seconds: f64,
    /// Guest instructions executed (approximate), all and by privilege of the body.
    pub instructions: u64,
    pub instructions_cpl0: u64,
    pub instructions_cpl3: u64,
    pub runs_by_generator: BTreeMap<String, u64>,
    pub outcomes: BTreeMap<String, u64>,
    pub guest_outcomes_cpl0: BTreeMap<String, u64>,
    pub guest_outcomes_cpl3: BTreeMap<String, u64>,
    pub failures: BTreeMap<String, u64>,
    pub distinct: Vec<Distinct>,
    pub worker_restarts: u64,
}

impl Summary {
    pub fn failed(&self) -> bool {
        !self.distinct.is_empty()
    }

    fn record(&mut self, case: &Case, v: &Verdict) {
        self.runs += 1;
        self.instructions += v.instructions;
        *self.runs_by_generator.entry(case.generator.clone()).or_default() += 1;
        *self.outcomes.entry(v.kind.clone()).or_default() += 1;
        if let Body::Guest(g) = &case.body {
            let (n, map) = if g.setup.cpl == 3 {
                (&mut self.instructions_cpl3, &mut self.guest_outcomes_cpl3)
            } else {
                (&mut self.instructions_cpl0, &mut self.guest_outcomes_cpl0)
            };
            *n += v.instructions;
            *map.entry(v.kind.clone()).or_default() += 1;
        }
        if let Some(f) = &v.failure {
            *self.failures.entry(f.class.clone()).or_default() += 1;
        }
    }

    /// The statistics as text.
    pub fn text(&self) -> String {
        let mut s = format!(
            "bt86-fuzz: {} runs in {:.0} s (seed {}, cases {}..{}, {})\n",
            self.runs,
            self.seconds,
            self.seed,
            self.first,
            self.first + self.runs,
            self.kind
        );
        let by_gen: Vec<String> = self.runs_by_generator.iter().map(|(k, v)| format!("{k} {v}")).collect();
        s += &format!("  runs by generator: {}\n", by_gen.join(", "));
        s += &format!(
            "  guest instructions executed (approx.): {} (CPL 0: {}, CPL 3: {})\n",
            self.instructions, self.instructions_cpl0, self.instructions_cpl3
        );
        let line = |m: &BTreeMap<String, u64>| m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
        s += &format!("  outcomes: {}\n", line(&self.outcomes));
        s += &format!("  guest outcomes at CPL 0: {}\n", line(&self.guest_outcomes_cpl0));
        s += &format!("  guest outcomes at CPL 3: {}\n", line(&self.guest_outcomes_cpl3));
        s += &format!("  worker restarts: {}\n", self.worker_restarts);
        if self.distinct.is_empty() {
            s += "  failures: none\n";
        } else {
            s += &format!("  failures: {} ({} distinct)\n", line(&self.failures), self.distinct.len());
            for d in &self.distinct {
                s += &format!("  - [{}] x{} {}\n", d.class, d.count, d.signature);
                if let Some(r) = d.reproducers.first() {
                    s += &format!("      reproducer: {r}\n");
                }
            }
        }
        s
    }
}

/// Runs the campaign.
pub fn run(opts: &Options) -> std::io::Result<Summary> {
    std::fs::create_dir_all(&opts.out)?;
    let mut sup = Supervisor::new(&opts.out);
    let mut sum = Summary { seed: opts.seed, first: opts.first, kind: opts.kind.clone(), ..Summary::default() };
    let mut distinct: BTreeMap<String, Distinct> = BTreeMap::new();
    let started = Instant::now();
    let deadline = opts.seconds.map(|s| started + Duration::from_secs(s));
    let mut last_progress = Instant::now();
    let mut index = opts.first;
    loop {
        if opts.runs.is_some_and(|n| index - opts.first >= n) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let Some(case) = crate::gen::case_of(&opts.kind, opts.seed, index) else {
            return Err(std::io::Error::other(format!("unknown kind {:?}", opts.kind)));
        };
        let v = sup.run(&case);
        sum.record(&case, &v);
        if let Some(f) = &v.failure {
            let d = distinct.entry(f.signature.clone()).or_insert_with(|| Distinct {
                class: f.class.clone(),
                signature: f.signature.clone(),
                count: 0,
                example: f.message.chars().take(2000).collect(),
                reproducers: Vec::new(),
            });
            d.count += 1;
            if d.count <= KEEP_PER_SIGNATURE {
                let name = format!("{}-{}-{}", f.class, opts.seed, index);
                let path = case::save(&opts.out, &name, &case, Some(&v)).map_err(std::io::Error::other)?;
                d.reproducers.push(path.display().to_string());
                if d.count == 1 && opts.minimize {
                    if let Some(min) = minimize(&mut sup, &case, &f.signature) {
                        let p = case::save(&opts.out, &format!("{name}-min"), &min.0, Some(&min.1)).map_err(std::io::Error::other)?;
                        d.reproducers.insert(0, p.display().to_string());
                    }
                }
            }
            if opts.progress && d.count == 1 {
                eprintln!("bt86-fuzz: case {index}: new failure [{}] {}", f.class, f.signature);
            }
        }
        if opts.progress && last_progress.elapsed() > Duration::from_secs(30) {
            last_progress = Instant::now();
            eprintln!(
                "bt86-fuzz: {} runs, {} instructions, {} distinct failures, {:.0} s",
                sum.runs,
                sum.instructions,
                distinct.len(),
                started.elapsed().as_secs_f64()
            );
        }
        index += 1;
    }
    sum.seconds = started.elapsed().as_secs_f64();
    sum.worker_restarts = sup.restarts;
    sum.distinct = distinct.into_values().collect();
    std::fs::write(opts.out.join("summary.json"), serde_json::to_string_pretty(&sum).map_err(std::io::Error::other)? + "\n")?;
    Ok(sum)
}

/// A smaller guest with the same failure: items turned into `nop`s, halves first,
/// then one by one (addresses stay where they were).
fn minimize(sup: &mut Supervisor, case: &Case, signature: &str) -> Option<(Case, Verdict)> {
    let Body::Guest(g) = &case.body else { return None };
    let mut active: Vec<bool> = vec![true; g.items.len()];
    let mut best: Option<(Case, Verdict)> = None;
    let mut budget = MINIMIZE_BUDGET;
    let mut try_without = |active: &[bool], best: &mut Option<(Case, Verdict)>| -> bool {
        if budget == 0 {
            return false;
        }
        budget -= 1;
        let candidate = with_items(case, active);
        let v = sup.run(&candidate);
        if v.failure.as_ref().is_some_and(|f| f.signature == signature) {
            *best = Some((candidate, v));
            true
        } else {
            false
        }
    };
    let mut chunk = active.len().div_ceil(2);
    while chunk >= 1 {
        let mut start = 0;
        while start < active.len() {
            let end = (start + chunk).min(active.len());
            if active[start..end].iter().any(|&a| a) {
                let mut trial = active.clone();
                trial[start..end].fill(false);
                if try_without(&trial, &mut best) {
                    active = trial;
                }
            }
            start = end;
        }
        if chunk == 1 {
            break;
        }
        chunk /= 2;
    }
    best
}

/// `case` with the items not `active` overwritten by `nop`s.
fn with_items(case: &Case, active: &[bool]) -> Case {
    let mut c = case.clone();
    if let Body::Guest(g) = &mut c.body {
        let body = g.chunks.iter_mut().find(|ch| ch.addr == crate::harness::BODY);
        if let Some(body) = body {
            for (it, _) in g.items.iter().zip(active).filter(|(_, &a)| !a) {
                let at = (it.addr - crate::harness::BODY) as usize;
                body.bytes.0[at..at + it.len as usize].fill(0x90);
            }
        }
        let kept: Vec<_> = g.items.iter().zip(active).filter(|(_, &a)| a).map(|(it, _)| it.clone()).collect();
        g.items = kept;
    }
    c.generator = format!("{} (minimized)", case.generator);
    c
}

/// Replays reproducer files: each through a worker; prints what happened.
pub fn replay(files: &[PathBuf], scratch: &Path) -> Result<bool, crate::case::ReproError> {
    let mut sup = Supervisor::new(scratch);
    let mut all_ok = true;
    for f in files {
        let (case, recorded) = crate::case::load(f)?;
        let v = sup.run(&case);
        println!("{}: {}", f.display(), case.describe());
        if let Some(r) = recorded {
            println!("  recorded: {} {}", r.kind, r.failure.as_ref().map_or(String::new(), |x| x.signature.clone()));
        }
        println!("  now:      {} {}", v.kind, v.detail.lines().next().unwrap_or(""));
        if let Some(fail) = &v.failure {
            all_ok = false;
            println!("  FAILURE [{}] {}", fail.class, fail.message);
        }
    }
    Ok(all_ok)
}
