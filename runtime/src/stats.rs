//! Counters kept by the engine and their report (`--stats`, `--stats json`).

use bt86_translator::Translator;
use iced_x86::Mnemonic;
use serde::Serialize;
use std::collections::BTreeMap;

/// Engine counters.
#[derive(Default)]
pub struct Stats {
    pub guest_exits: u64,
    pub exits_branch: u64,
    pub exits_indirect: u64,
    pub exits_callout: u64,
    pub exits_fault: u64,
    /// Callouts answered on the light path (`light.rs`), also in `exits_callout`.
    pub light_exits: u64,
    /// Dispatches after an exit that entered through the lookup table, without
    /// a walk or a search (`Vm::dispatch_hit`).
    pub dispatch_hits: u64,
    /// Light deliveries and irets whose checks were those of the one before
    /// (`emulate::gate_cache`).
    pub kept_gate_checks: u64,
    /// Instructions given a `PageProbe` callout, and probes taken (`page_probe`).
    pub probes_made: u64,
    pub page_probes: u64,
    pub callouts: MnemonicCounts,
    pub smc_faults: u64,
    pub smc_data_writes: u64,
    pub exceptions: BTreeMap<u8, u64>,
    pub ring_transitions: u64,
    pub interrupts: BTreeMap<u8, u64>,
    pub hlt_nanos: u64,
    pub run_nanos: u64,
}

/// A count per mnemonic: an array, since one is bumped at every callout.
pub struct MnemonicCounts(Box<[u64]>);

impl Default for MnemonicCounts {
    fn default() -> Self {
        Self(vec![0; Mnemonic::values().len()].into_boxed_slice())
    }
}

impl MnemonicCounts {
    /// One more of `m`.
    pub fn add(&mut self, m: Mnemonic) {
        if let Some(n) = self.0.get_mut(m as usize) {
            *n += 1;
        }
    }

    /// The count of `m`, if any.
    pub fn get(&self, m: &Mnemonic) -> Option<&u64> {
        self.0.get(*m as usize).filter(|&&n| n > 0)
    }

    /// The mnemonics counted, with their counts.
    pub fn iter(&self) -> impl Iterator<Item = (Mnemonic, &u64)> {
        Mnemonic::values().zip(self.0.iter()).filter(|(_, &n)| n > 0)
    }
}

/// Exit counts by reason.
#[derive(Serialize, Debug, Clone)]
pub struct ExitCounts {
    pub branch: u64,
    pub indirect: u64,
    pub callout: u64,
    /// Callouts of `callout` taken on the light path (cpuid, port I/O).
    pub light_callout: u64,
    pub fault: u64,
}

/// Shadow-MMU counters.
#[derive(Serialize, Debug, Clone, Default)]
pub struct PagingReport {
    /// Faults the shadow MMU resolved by mapping a page (invisible to the guest).
    pub hidden_faults: u64,
    /// Faults the guest's page tables refused: delivered as #PF.
    pub true_faults: u64,
    /// Writes to page directories/tables in use that faulted (traced pages).
    pub trace_faults: u64,
    /// Page-table writes made by adaptively retranslated instructions (no fault).
    pub adaptive_writes: u64,
    /// Instructions retranslated into callouts after repeated tracing faults.
    pub adaptive_retranslations: u64,
    pub cr3_switches: u64,
    /// CR3 switches to an address space whose shadow state was cached (its views
    /// were swapped in, not refilled).
    pub cr3_cache_hits: u64,
    /// Cached address spaces dropped to make room for another.
    pub space_evictions: u64,
    /// Address spaces cached now (the current one included).
    pub spaces_cached: u64,
    /// Page-table frames no longer traced after a burst of writes without a walk.
    pub untraced_frames: u64,
    /// Adaptive stores translated back to plain stores after missing page tables.
    pub plain_retranslations: u64,
    /// Pages mapped next to a hidden fault (same page table, A bit already set).
    pub prefetched_pages: u64,
    /// Pages mapped when the guest's #PF handler made their entry present
    /// (the access it returns to does not fault again).
    pub mapped_on_present: u64,
    /// Pages mapped again at the guest's invlpg after a store changed their
    /// entry to another present one (the access that follows does not fault).
    pub mapped_at_invlpg: u64,
    /// Pages mapped through the new entry at the store that retargeted them (a
    /// page that the guest keeps retargeting and invlpg'ing).
    pub mapped_at_store: u64,
    /// 4 MiB guest pages mapped whole by one hidden fault.
    pub large_pages_mapped: u64,
    /// CR3 switches where the new space took the kernel view of the one before.
    pub kernel_view_handovers: u64,
    /// Handovers that gave a kernel view back to the space that lent it.
    pub kernel_view_reclaims: u64,
    /// Host calls that changed the views: mappings made, removed, reprotected.
    pub host_maps: u64,
    pub host_unmaps: u64,
    pub host_protects: u64,
    /// Times every shadow mapping of every space was dropped (CR0.PG or CR4.PSE
    /// changes).
    pub view_flushes: u64,
    /// invlpg instructions (tracing keeps the shadow coherent: only the mapping
    /// of a retargeted entry is made again).
    pub invlpgs: u64,
    /// Times the current space's mappings were dropped to stay under the host's limit.
    pub space_drops: u64,
    /// Guest pages mapped in all cached spaces' views now.
    pub mappings_live: u64,
}

/// What `--stats` prints.
#[derive(Serialize, Debug, Clone)]
pub struct StatsReport {
    pub units_translated: u64,
    pub guest_instructions_translated: u64,
    pub host_instructions_emitted: u64,
    pub host_instructions_per_guest_instruction: f64,
    pub guest_bytes_translated: u64,
    pub code_cache_bytes: u64,
    pub chained_jumps: u64,
    pub callouts: BTreeMap<String, u64>,
    pub guest_exits: u64,
    pub exits: ExitCounts,
    pub smc_faults: u64,
    /// SMC faults that wrote data next to code and kept the translations.
    pub smc_data_writes: u64,
    pub units_invalidated: u64,
    pub cache_flushes: u64,
    pub exceptions: BTreeMap<String, u64>,
    pub ring_transitions: u64,
    pub dispatch_hits: u64,
    /// Light deliveries and irets that reused the checks of the one before.
    pub kept_gate_checks: u64,
    /// Instructions that kept taking true page faults and got a `PageProbe`
    /// callout, and the probes taken (each a light exit instead of a signal).
    pub probes_made: u64,
    pub page_probes: u64,
    /// External interrupts delivered, by vector.
    pub interrupts: BTreeMap<String, u64>,
    /// Time the guest spent halted (waiting for an interrupt).
    pub hlt_seconds: f64,
    pub devices: Option<crate::devices::PlatformStats>,
    pub paging: PagingReport,
    /// Direct execution of guest user code.
    pub direct: Option<crate::direct::DirectReport>,
    pub translate_seconds: f64,
    pub run_seconds: f64,
}

impl Stats {
    /// The report, combining engine and translator counters.
    pub fn report(&self, tr: &Translator) -> StatsReport {
        let t = tr.stats();
        #[allow(clippy::cast_precision_loss)]
        let per = if t.guest_insns_translated == 0 {
            0.0
        } else {
            t.host_insns_emitted as f64 / t.guest_insns_translated as f64
        };
        let callouts = self.callouts.iter().map(|(m, n)| (format!("{m:?}").to_lowercase(), *n)).collect();
        let exceptions = self.exceptions.iter().map(|(v, n)| (v.to_string(), *n)).collect();
        #[allow(clippy::cast_precision_loss)]
        StatsReport {
            units_translated: t.units_translated,
            guest_instructions_translated: t.guest_insns_translated,
            host_instructions_emitted: t.host_insns_emitted,
            host_instructions_per_guest_instruction: (per * 100.0).round() / 100.0,
            guest_bytes_translated: t.guest_bytes_translated,
            code_cache_bytes: tr.cache_bytes() as u64,
            chained_jumps: t.chained_jumps,
            callouts,
            guest_exits: self.guest_exits,
            exits: ExitCounts {
                branch: self.exits_branch,
                indirect: self.exits_indirect,
                callout: self.exits_callout,
                light_callout: self.light_exits,
                fault: self.exits_fault,
            },
            smc_faults: self.smc_faults,
            smc_data_writes: self.smc_data_writes,
            units_invalidated: t.units_invalidated,
            cache_flushes: t.cache_flushes,
            exceptions,
            ring_transitions: self.ring_transitions,
            dispatch_hits: self.dispatch_hits,
            kept_gate_checks: self.kept_gate_checks,
            probes_made: self.probes_made,
            page_probes: self.page_probes,
            interrupts: self.interrupts.iter().map(|(v, n)| (v.to_string(), *n)).collect(),
            hlt_seconds: self.hlt_nanos as f64 / 1e9,
            devices: None,
            paging: PagingReport::default(),
            direct: None,
            translate_seconds: t.translate_nanos as f64 / 1e9,
            run_seconds: self.run_nanos as f64 / 1e9,
        }
    }
}

impl StatsReport {
    /// Human-readable lines: the same groups and names as the JSON ([`text_from_json`]).
    pub fn to_text(&self) -> String {
        serde_json::to_value(self).map(|v| text_from_json(&v)).unwrap_or_default()
    }
}

/// The text form of a statistics object: one line per counter, named as in the JSON,
/// nested objects as indented groups; arrays of numbers show their non-zero entries
/// as `index:value`. So the text and the JSON always show the same groups.
pub fn text_from_json(v: &serde_json::Value) -> String {
    let mut out = String::new();
    text_lines(v, 1, &mut out);
    out
}

fn text_lines(v: &serde_json::Value, depth: usize, out: &mut String) {
    use serde_json::Value;
    let Value::Object(map) = v else {
        out.push_str(&format!("{}{}\n", "  ".repeat(depth), scalar(v)));
        return;
    };
    for (k, v) in map {
        let indent = "  ".repeat(depth);
        match v {
            Value::Object(m) if m.is_empty() => out.push_str(&format!("{indent}{k:<width$} -\n", width = 44 - 2 * depth)),
            Value::Object(_) => {
                out.push_str(&format!("{indent}{k}\n"));
                text_lines(v, depth + 1, out);
            }
            _ => out.push_str(&format!("{indent}{k:<width$} {}\n", scalar(v), width = 44 - 2 * depth)),
        }
    }
}

fn scalar(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(Value::is_number) => {
            let nz: Vec<String> = a
                .iter()
                .enumerate()
                .filter(|(_, x)| x.as_f64() != Some(0.0))
                .map(|(i, x)| format!("{i}:{x}"))
                .collect();
            if nz.is_empty() {
                "-".into()
            } else {
                nz.join(" ")
            }
        }
        Value::Array(a) => a.iter().map(scalar).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_the_json_groups() {
        let v = serde_json::json!({
            "stop": {"reason": "guest-exit", "exit_status": 0},
            "units_translated": 3,
            "callouts": {},
            "devices": {"irqs_raised": [0, 5, 0, 2], "console_bytes_out": 10},
            "hlt_seconds": 0.5,
        });
        let t = text_from_json(&v);
        for want in ["  stop\n", "    reason", "guest-exit", "  units_translated", "  callouts", "  devices\n", "1:5 3:2", "0.5"] {
            assert!(t.contains(want), "{want:?} missing in\n{t}");
        }
        // Every top-level JSON key is a line of the text.
        for k in v.as_object().unwrap().keys() {
            assert!(t.lines().any(|l| l.trim_start().starts_with(k.as_str())), "{k}");
        }
    }
}
