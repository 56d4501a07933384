//! The code cache: units keyed by (eip, physical frame, mode), chaining of direct
//! branches, the indirect-branch lookup table, invalidation by physical frame (for
//! self-modifying code and, later, page-table changes), and the side tables that map
//! a host address back to a guest instruction.
//!
//! Memory is bump-allocated; a full cache is flushed whole (the VMM is told which
//! frames no longer hold translated code). The host memory the units' tables take
//! (side tables, callout sites, slots, the maps) is bounded too: the cache is
//! flushed when they would pass the size of the code cache, so a guest that keeps
//! translating small units cannot grow the VMM past about twice its code cache. Invalidated units stay in memory until
//! the next flush but are unreachable: every chained jump into them is patched back
//! to its own exit stub and their lookup entry is cleared.

use crate::abi::VcpuCtx;
use crate::exec_mem::{ExecMem, ExecMemError, PollHandle, PollPage};
use crate::lookup::LookupTables;
use crate::translate::{self, BuildError, CalloutSite, Fixup, GuestCode, SideEntry};
use crate::world::{self, Stubs};
use crate::isa::Isa;
use crate::Mode;
use hashbrown::HashMap;
use std::time::Instant;
use thiserror::Error;

/// Room a unit may need at most: the host-code budget at which the builder stops
/// (`UNIT_HOST_BUDGET`) plus one more instruction and the exit stubs.
const MAX_UNIT_BYTES: usize = 16 * 1024;

/// Table bytes one unit may add at most (`unit_table_bytes` of a unit at the
/// host-code budget, generously).
const MAX_UNIT_TABLE_BYTES: usize = 64 * 1024;

/// What a unit costs in host memory besides its code: its record and side table,
/// its slots (with the chaining entry each may add to a target's `incoming`), its
/// callout sites, its entries in the key, frame and page maps, and an allocator
/// header for each of its vectors.
fn unit_table_bytes(u: &Unit, slots: usize, sites: usize) -> usize {
    use core::mem::size_of;
    const ALLOC_HEADER: usize = 16;
    const MAP_ENTRY: usize = 2 * size_of::<(UnitKey, u32)>(); // slack of a hash map's load factor
    size_of::<Unit>()
        + u.side.capacity() * size_of::<SideEntry>()
        + u.frames.capacity() * size_of::<u32>()
        + slots * (size_of::<Slot>() + size_of::<u32>())
        + sites * size_of::<CalloutSite>()
        + MAP_ENTRY
        + 2 * (u.frames.len() + 2) * size_of::<u32>()
        + 3 * ALLOC_HEADER
}

/// Adaptive store eips kept across a flush at most: the set outlives the units,
/// so a guest making ever new stores adaptive must not grow it without bound.
const MAX_ADAPTIVE: usize = 1 << 16;

/// Errors from the translator.
#[derive(Debug, Error)]
pub enum TranslatorError {
    #[error(transparent)]
    Memory(#[from] ExecMemError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("the host lacks FSGSBASE (wrgsbase from user space), which bt86 needs")]
    NoFsgsbase,
    #[error("the unit at {eip:#010x} needs {bytes} bytes of host code, more than a unit may take")]
    UnitTooLarge { eip: u32, bytes: usize },
}

/// Identifies a unit: where it starts, which physical frame that is, and the mode
/// its code was specialised for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnitKey {
    pub eip: u32,
    pub phys: u32,
    pub mode: Mode,
}

struct Unit {
    key: UnitKey,
    guest_end: u32,
    /// The checked entry (the unit's first byte): jumps from other pages come here.
    host_start: u64,
    /// The entry past the page check: the VMM, jumps within the page and the
    /// indirect lookup (whose tables are per address space) come here.
    body: u64,
    /// Whether the unit has a page check (units on one page, with paging on).
    checked: bool,
    side: Vec<SideEntry>,
    /// Slots of other units chained to this one.
    incoming: Vec<u32>,
    frames: Vec<u32>,
    /// The first and last linear page its guest code occupies.
    pages: (u32, u32),
    /// For a unit that spans two pages: the second page and the frame it was
    /// translated from (the key only names the first).
    tail: Option<(u32, u32)>,
    live: bool,
    transient: bool,
}

struct Slot {
    unit: u32,
    patch_at: u64,
    stub: u64,
    target: u32,
    chained: bool,
    /// The unit it is chained to, while `chained`.
    chained_to: u32,
}

/// Counters for `--stats`.
#[derive(Clone, Debug, Default)]
pub struct TranslatorStats {
    pub units_translated: u64,
    pub guest_insns_translated: u64,
    pub host_insns_emitted: u64,
    pub guest_bytes_translated: u64,
    pub chained_jumps: u64,
    pub units_invalidated: u64,
    pub cache_flushes: u64,
    pub adaptive_retranslations: u64,
    /// Adaptive stores translated back to plain stores (they kept missing page
    /// tables).
    pub plain_retranslations: u64,
    pub translate_nanos: u64,
}

/// A freshly translated unit and what the VMM must do about page protection.
pub struct Translated {
    pub host: u64,
    pub unit: u32,
    /// Frames that hold translated code for the first time (write-protect them).
    pub new_frames: Vec<u32>,
    /// Frames whose code was dropped by a flush (they may be unprotected).
    pub flushed_frames: Vec<u32>,
}

/// The translator: code cache, stubs, lookup table and the vCPU context.
pub struct Translator {
    mem: ExecMem,
    stubs: Stubs,
    stubs_end: usize,
    used: usize,
    /// Host bytes the units' tables take (an estimate, `unit_table_bytes`): a
    /// flush comes when it would pass the code cache's size.
    tables: usize,
    units: Vec<Unit>,
    by_key: HashMap<UnitKey, u32>,
    by_frame: HashMap<u32, Vec<u32>>,
    /// Linear page → live units with guest code on it (first or last page).
    by_page: HashMap<u32, Vec<u32>>,
    slots: Vec<Slot>,
    sites: Vec<CalloutSite>,
    lookup: LookupTables,
    ctx: Box<VcpuCtx>,
    poll: PollPage,
    mode: Mode,
    max_insns: usize,
    /// Incremented by every flush: slot and site ids from an older epoch are dead.
    epoch: u64,
    /// Whether new units get page checks (paging on; the VMM says).
    page_checks: bool,
    /// Guest eips translated as `TracedWrite` callouts.
    adaptive: hashbrown::HashSet<u32>,
    /// Guest eips translated after a `PageProbe` callout.
    probed: hashbrown::HashSet<u32>,
    /// The guest CPU's instruction set.
    isa: Isa,
    stats: TranslatorStats,
    /// Where the VMM must get control before a guest instruction runs.
    stops: Stops,
}

/// Guest eips where the VMM must get control before the instruction runs (a
/// debugger's breakpoints), or every eip (while a debugger watches memory). Units
/// end before a stop, and neither a chained jump nor the indirect lookup enters a
/// unit that starts at one, so every arrival there leaves translated code and the
/// VMM sees it. Code without stops keeps its full speed.
#[derive(Default)]
struct Stops {
    at: std::collections::BTreeSet<u32>,
    everywhere: bool,
}

impl Translator {
    /// A translator with a code cache of `cache_bytes` for a guest CPU with
    /// instruction set `isa`.
    pub fn new(cache_bytes: usize, isa: Isa) -> Result<Self, TranslatorError> {
        if !host_has_fsgsbase() {
            return Err(TranslatorError::NoFsgsbase);
        }
        let mut mem = ExecMem::new(cache_bytes.max(2 * MAX_UNIT_BYTES))?;
        let mut a = crate::emit::Asm::new(mem.base());
        let stubs = world::emit_stubs(&mut a).map_err(|e| TranslatorError::Build(e.into()))?;
        let code = a.finish();
        mem.write(0, &code)?;
        let used = code.len().next_multiple_of(64);
        let poll = PollPage::new()?;
        let lookup = LookupTables::new();
        let mut ctx = Box::<VcpuCtx>::default();
        ctx.poll_page = poll.addr();
        ctx.lookup_table = lookup.current_ptr();
        Ok(Self {
            mem,
            stubs,
            stubs_end: used,
            used,
            tables: 0,
            units: Vec::new(),
            by_key: HashMap::new(),
            by_frame: HashMap::new(),
            by_page: HashMap::new(),
            slots: Vec::new(),
            sites: Vec::new(),
            lookup,
            ctx,
            poll,
            mode: Mode::default(),
            max_insns: translate::MAX_UNIT_INSNS,
            epoch: 0,
            adaptive: hashbrown::HashSet::new(),
            probed: hashbrown::HashSet::new(),
            page_checks: false,
            isa,
            stats: TranslatorStats::default(),
            stops: Stops::default(),
        })
    }

    /// Limits units to `n` guest instructions (1 = single-step translation).
    pub fn set_max_unit_insns(&mut self, n: usize) {
        self.max_insns = n.clamp(1, translate::MAX_UNIT_INSNS);
    }

    /// The vCPU context translated code works on.
    pub fn ctx(&self) -> &VcpuCtx {
        &self.ctx
    }

    /// Mutable access to the context (only while translated code is not running).
    pub fn ctx_mut(&mut self) -> &mut VcpuCtx {
        &mut self.ctx
    }

    /// Host addresses of the stubs (the signal handler needs `exit_fault`).
    pub fn stubs(&self) -> &Stubs {
        &self.stubs
    }

    /// The host address range of the code cache.
    pub fn code_range(&self) -> (u64, u64) {
        (self.mem.base(), self.mem.base() + self.mem.size() as u64)
    }

    /// A handle that makes running translated code exit soon.
    pub fn poll_handle(&self) -> PollHandle {
        self.poll.handle()
    }

    /// Host address of the poll page.
    pub fn poll_page(&self) -> u64 {
        self.poll.addr()
    }

    /// Makes the poll page readable again.
    pub fn rearm_poll(&self) {
        self.poll.rearm();
    }

    /// The flush epoch: ids of slots, sites and units from another epoch are stale.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Counters.
    pub fn stats(&self) -> &TranslatorStats {
        &self.stats
    }

    /// Bytes of generated code in the cache (stubs included).
    pub fn cache_bytes(&self) -> usize {
        self.used
    }

    /// Sets the current mode (each mode has its own lookup table). A switch of
    /// address space needs no work here: chained jumps from other pages and
    /// lookup hits enter a unit through its page check, which reads the current
    /// space's code map.
    pub fn set_mode(&mut self, mode: Mode) {
        self.lookup.select(mode);
        self.ctx.lookup_table = self.lookup.current_ptr();
        self.mode = mode;
    }

    /// Turns the page checks of new units on (paging on) or off. Existing units
    /// keep what they were built with; the VMM flushes the cache when paging is
    /// switched.
    pub fn set_page_checks(&mut self, on: bool) {
        self.page_checks = on;
    }

    /// The guest CPU's instruction set.
    pub fn isa(&self) -> &Isa {
        &self.isa
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The live unit for `key`, if any.
    pub fn find(&self, key: &UnitKey) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    /// The guest address just past unit `id`'s last instruction.
    pub fn unit_guest_end(&self, id: u32) -> u32 {
        self.units[id as usize].guest_end
    }

    /// Where an indirect branch to `eip` would go in the current mode (a unit's
    /// page check, or its body with paging off), if the lookup table has it: the
    /// VMM can enter there too, as the branch would.
    pub fn lookup_entry(&self, eip: u32) -> Option<u64> {
        self.lookup.get(eip)
    }

    /// Host address where the VMM enters unit `id` (past its page check).
    pub fn entry(&self, id: u32) -> u64 {
        self.units[id as usize].body
    }

    /// Translates the unit at `key.eip`. A `transient` unit is not cached, chained
    /// or registered with its frames (it runs once, e.g. right after a write to its
    /// own page). `frame_of` gives the physical frame of a linear page.
    pub fn translate(
        &mut self,
        key: UnitKey,
        mem: &mut dyn GuestCode,
        frame_of: &mut dyn FnMut(u32) -> Option<u32>,
        transient: bool,
    ) -> Result<Translated, TranslatorError> {
        let started = Instant::now();
        let mut flushed_frames = Vec::new();
        if self.used + MAX_UNIT_BYTES > self.mem.size() || self.tables + MAX_UNIT_TABLE_BYTES > self.mem.size() {
            flushed_frames = self.flush();
        }
        let base = self.mem.base() + self.used as u64;
        let first_slot = u32::try_from(self.slots.len()).expect("slot count");
        let first_site = u32::try_from(self.sites.len()).expect("site count");
        let place = translate::UnitPlacement {
            stubs: &self.stubs,
            host_base: base,
            first_slot_id: first_slot,
            first_site_id: first_site,
            max_insns: if transient || self.stops.everywhere { 1 } else { self.max_insns },
            adaptive: &self.adaptive,
            probed: &self.probed,
            isa: &self.isa,
            entry_frames: (self.page_checks && !transient)
                .then(|| (key.phys >> 12, frame_of((key.eip & !0xfff).wrapping_add(0x1000)))),
            stop_before: self.stops.at.range(key.eip.saturating_add(1)..).next().copied(),
        };
        let built = translate::build_unit(mem, key.eip, &key.mode, &place)?;
        if built.code.len() > MAX_UNIT_BYTES {
            return Err(TranslatorError::UnitTooLarge { eip: key.eip, bytes: built.code.len() });
        }
        self.mem.write(self.used, &built.code)?;
        crate::trace::unit_built(mem, built.guest_start, built.guest_len, base, &built.code);
        let id = u32::try_from(self.units.len()).expect("unit count");
        for s in &built.slots {
            self.slots.push(Slot {
                unit: id,
                patch_at: base + u64::from(s.patch_off),
                stub: base + u64::from(s.stub_off),
                target: s.target,
                chained: false,
                chained_to: 0,
            });
        }
        let site_count = built.sites.len();
        self.sites.extend(built.sites);
        let frames = unit_frames(built.guest_start, built.guest_len, frame_of);
        let mut new_frames = Vec::new();
        if !transient {
            for &f in &frames {
                let list = self.by_frame.entry(f).or_default();
                if list.is_empty() {
                    new_frames.push(f);
                }
                list.push(id);
            }
            self.by_key.insert(key, id);
        }
        let pages = unit_pages(built.guest_start, built.guest_len);
        if !transient {
            for p in [pages.0, pages.1].into_iter().take(if pages.0 == pages.1 { 1 } else { 2 }) {
                self.by_page.entry(p).or_default().push(id);
            }
        }
        let tail = if pages.0 == pages.1 { None } else { frame_of(pages.1).map(|f| (pages.1, f)) };
        self.units.push(Unit {
            key,
            guest_end: built.guest_start.wrapping_add(built.guest_len),
            host_start: base,
            body: base + u64::from(built.body_off),
            checked: !transient && self.page_checks && (tail.is_none() || built.checks_tail),
            side: built.side,
            incoming: Vec::new(),
            frames,
            pages,
            tail,
            live: true,
            transient,
        });
        if !transient {
            self.remember_indirect(key.eip, id);
        }
        self.used = (self.used + built.code.len()).next_multiple_of(16);
        self.tables += unit_table_bytes(&self.units[id as usize], built.slots.len(), site_count);
        let st = &mut self.stats;
        st.units_translated += 1;
        st.guest_insns_translated += built.guest_insns as u64;
        st.host_insns_emitted += built.host_insns as u64;
        st.guest_bytes_translated += u64::from(built.guest_len);
        st.translate_nanos += u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Ok(Translated { host: base + u64::from(built.body_off), unit: id, new_frames, flushed_frames })
    }

    /// Records that `eip` (in the current mode) is at host address `host` in the
    /// indirect lookup table.
    pub fn remember_indirect(&mut self, eip: u32, unit: u32) {
        if self.is_stop(eip) {
            return;
        }
        if let Some(entry) = self.entry_from_elsewhere(unit) {
            self.lookup.insert(eip, entry);
        }
    }

    /// Where a jump from another page (a chained jump, a lookup hit) enters unit
    /// `id`: its page check, or with paging off its body; None if it must not be
    /// entered that way (transient, or paging on and no check).
    fn entry_from_elsewhere(&self, id: u32) -> Option<u64> {
        let u = &self.units[id as usize];
        match (u.live && !u.transient, u.checked, self.page_checks) {
            (false, _, _) => None,
            (true, true, _) => Some(u.host_start),
            (true, false, false) => Some(u.body),
            (true, false, true) => None,
        }
    }

    /// The guest target of branch slot `slot`.
    pub fn slot_target(&self, slot: u32) -> Option<u32> {
        self.slots.get(slot as usize).map(|s| s.target)
    }

    /// Chains branch slot `slot` straight to unit `target` (both must be live and
    /// cached; otherwise nothing happens). A jump within the target's page goes
    /// past its page check; one from another page goes through it (a unit without
    /// a check is not chained to from another page while paging is on).
    pub fn chain(&mut self, slot: u32, target: u32) -> Result<(), TranslatorError> {
        let Some(s) = self.slots.get(slot as usize) else { return Ok(()) };
        let (from, to) = (&self.units[s.unit as usize], &self.units[target as usize]);
        if s.chained || !from.live || from.transient || !to.live || to.transient || self.is_stop(to.key.eip) {
            return Ok(());
        }
        let within = [to.pages.0, to.pages.1].iter().all(|p| *p == from.pages.0 || *p == from.pages.1);
        let entry = if within { to.body } else if let Some(e) = self.entry_from_elsewhere(target) { e } else { return Ok(()) };
        let patch_at = s.patch_at;
        self.patch_rel32(patch_at, entry)?;
        let s = &mut self.slots[slot as usize];
        s.chained = true;
        s.chained_to = target;
        self.units[target as usize].incoming.push(slot);
        self.stats.chained_jumps += 1;
        Ok(())
    }

    fn patch_rel32(&mut self, at: u64, target: u64) -> Result<(), TranslatorError> {
        let rel = i32::try_from(target.wrapping_sub(at + 4) as i64).expect("cache within rel32");
        let offset = usize::try_from(at - self.mem.base()).expect("offset");
        self.mem.write(offset, &rel.to_le_bytes())?;
        Ok(())
    }

    /// Drops every unit with code on physical frame `frame`. Returns whether any
    /// unit was dropped.
    pub fn invalidate_frame(&mut self, frame: u32) -> Result<bool, TranslatorError> {
        let Some(ids) = self.by_frame.remove(&frame) else { return Ok(false) };
        for id in ids {
            self.invalidate_unit(id)?;
        }
        Ok(true)
    }

    fn invalidate_unit(&mut self, id: u32) -> Result<(), TranslatorError> {
        let u = &mut self.units[id as usize];
        if !u.live {
            return Ok(());
        }
        u.live = false;
        let key = u.key;
        let incoming = core::mem::take(&mut u.incoming);
        let frames = core::mem::take(&mut u.frames);
        let host = u.host_start;
        let body = u.body;
        let pages = u.pages;
        self.by_key.remove(&key);
        for p in [pages.0, pages.1] {
            if let Some(list) = self.by_page.get_mut(&p) {
                list.retain(|&x| x != id);
                if list.is_empty() {
                    self.by_page.remove(&p);
                }
            }
        }
        for f in frames {
            if let Some(list) = self.by_frame.get_mut(&f) {
                list.retain(|&x| x != id);
                if list.is_empty() {
                    self.by_frame.remove(&f);
                }
            }
        }
        self.lookup.remove(key.eip, host);
        self.lookup.remove(key.eip, body);
        for slot in incoming {
            let (patch_at, stub) = (self.slots[slot as usize].patch_at, self.slots[slot as usize].stub);
            self.patch_rel32(patch_at, stub)?;
            self.slots[slot as usize].chained = false;
        }
        self.stats.units_invalidated += 1;
        Ok(())
    }

    /// Live units with guest code on linear `page`.
    fn units_on_page(&self, page: u32) -> Vec<u32> {
        self.by_page.get(&(page & !0xfff)).cloned().unwrap_or_default()
    }

    /// Drops every unit whose guest code overlaps the linear range
    /// [`start`, `start + len`) (`len` at most a page).
    pub fn invalidate_linear(&mut self, start: u32, len: u32) -> Result<bool, TranslatorError> {
        let end = u64::from(start) + u64::from(len);
        let mut candidates = self.units_on_page(start);
        candidates.extend(self.units_on_page(start.wrapping_add(len.max(1) - 1)));
        candidates.sort_unstable();
        candidates.dedup();
        let hit: Vec<u32> = candidates
            .into_iter()
            .filter(|&id| {
                let u = &self.units[id as usize];
                let s = u64::from(u.key.eip);
                let mut e = u64::from(u.guest_end);
                if e < s {
                    e += 1 << 32;
                }
                s < end && u64::from(start) < e
            })
            .collect();
        for &id in &hit {
            self.invalidate_unit(id)?;
        }
        Ok(!hit.is_empty())
    }

    /// Translates the store at `eip` as a plain store again (it stopped writing
    /// page tables): drops the units holding it.
    pub fn make_plain(&mut self, eip: u32) -> Result<(), TranslatorError> {
        if self.adaptive.remove(&eip) {
            self.stats.plain_retranslations += 1;
            self.invalidate_linear(eip, 1)?;
        }
        Ok(())
    }

    /// Retranslates the store at `eip` as a `TracedWrite` callout from now on:
    /// drops the units holding it so the next dispatch rebuilds them.
    pub fn make_adaptive(&mut self, eip: u32) -> Result<(), TranslatorError> {
        if self.adaptive.insert(eip) {
            self.stats.adaptive_retranslations += 1;
            self.invalidate_linear(eip, 1)?;
        }
        Ok(())
    }

    /// Translates the instruction at `eip` after a `PageProbe` callout from now
    /// on (`probe`) or without one again: drops the units holding it.
    pub fn set_probed(&mut self, eip: u32, probe: bool) -> Result<(), TranslatorError> {
        let changed = if probe { self.probed.insert(eip) } else { self.probed.remove(&eip) };
        if changed {
            self.invalidate_linear(eip, 1)?;
        }
        Ok(())
    }

    /// For a unit spanning two linear pages: the second page and the frame its
    /// code came from. A unit found by key in another address space is valid only
    /// if that page still maps the same frame there.
    pub fn unit_tail(&self, id: u32) -> Option<(u32, u32)> {
        self.units.get(id as usize).and_then(|u| u.tail)
    }

    /// Drops unit `id`.
    pub fn invalidate(&mut self, id: u32) -> Result<(), TranslatorError> {
        self.invalidate_unit(id)
    }

    /// How many units were ever dropped (invalidated or flushed): unchanged across
    /// a callout, the unit it came from is still live.
    pub fn drops(&self) -> u64 {
        self.stats.units_invalidated + self.epoch
    }

    /// Whether unit `id` is still live (not invalidated or flushed).
    pub fn is_live(&self, id: u32) -> bool {
        self.units.get(id as usize).is_some_and(|u| u.live)
    }

    /// Whether any live unit's guest code overlaps the linear range
    /// [`start`, `start + len`) on `frame`.
    pub fn code_overlaps(&self, frame: u32, start: u32, len: u32) -> bool {
        let end = u64::from(start) + u64::from(len);
        self.by_frame.get(&frame).is_some_and(|ids| {
            ids.iter().any(|&id| {
                let u = &self.units[id as usize];
                let (s, e) = (u64::from(u.key.eip), u64::from(u.guest_end));
                let e = if e < s { e + (1 << 32) } else { e };
                s < end && u64::from(start) < e
            })
        })
    }

    /// Whether any live unit has code on `frame`.
    pub fn has_code_on(&self, frame: u32) -> bool {
        self.by_frame.contains_key(&frame)
    }

    /// Drops every unit. Returns the frames that held code.
    pub fn flush(&mut self) -> Vec<u32> {
        let frames: Vec<u32> = self.by_frame.keys().copied().collect();
        self.units.clear();
        self.by_key.clear();
        self.by_frame.clear();
        self.by_page.clear();
        self.slots.clear();
        self.sites.clear();
        self.lookup.clear();
        self.ctx.lookup_table = self.lookup.current_ptr();
        self.used = self.stubs_end;
        self.tables = 0;
        if self.adaptive.len() > MAX_ADAPTIVE {
            // Forgotten whole (with its memory): the stores that still hit page
            // tables learn it again.
            self.adaptive = hashbrown::HashSet::new();
        }
        if self.probed.len() > MAX_ADAPTIVE {
            self.probed = hashbrown::HashSet::new();
        }
        self.epoch += 1;
        self.stats.cache_flushes += 1;
        frames
    }

    /// Makes `eip` a stop: the units holding it are dropped (with the chains into
    /// them), and from now on none is entered there without the VMM.
    pub fn add_stop(&mut self, eip: u32) -> Result<(), TranslatorError> {
        self.stops.at.insert(eip);
        self.invalidate_linear(eip, 1).map(|_| ())
    }

    /// `eip` is no longer a stop; the units around it are rebuilt to chain again.
    pub fn remove_stop(&mut self, eip: u32) -> Result<(), TranslatorError> {
        if self.stops.at.remove(&eip) {
            self.invalidate_linear(eip, 1)?;
        }
        Ok(())
    }

    /// Makes every eip a stop (units of one instruction that always exit) or
    /// none but those added. A change flushes the cache; returns the frames that
    /// held code, as a flush for room does.
    pub fn set_stop_everywhere(&mut self, on: bool) -> Vec<u32> {
        if self.stops.everywhere == on {
            return Vec::new();
        }
        self.stops.everywhere = on;
        self.flush()
    }

    /// Whether the VMM must get control before the instruction at `eip` runs.
    pub fn is_stop(&self, eip: u32) -> bool {
        self.stops.everywhere || (!self.stops.at.is_empty() && self.stops.at.contains(&eip))
    }

    /// The callout site `id`.
    pub fn site(&self, id: u32) -> Option<&CalloutSite> {
        self.sites.get(id as usize)
    }

    /// Maps a host address inside a unit to the guest instruction it belongs to.
    pub fn resolve(&self, host_rip: u64) -> Option<(u32, Fixup, u32)> {
        let pos = self.units.partition_point(|u| u.host_start <= host_rip);
        let id = pos.checked_sub(1)?;
        let u = &self.units[id];
        let off = u32::try_from(host_rip - u.host_start).ok()?;
        let row = u.side.partition_point(|e| e.host_off <= off).checked_sub(1)?;
        let e = u.side[row];
        Some((e.eip, e.fixup, u32::try_from(id).ok()?))
    }

    /// Runs translated code from host address `host` until it exits. The exit
    /// reason and guest state are in `ctx()` afterwards.
    pub fn run(&mut self, host: u64) -> Result<(), TranslatorError> {
        self.ctx.resume = host;
        self.ctx.neg_gs_base = self.ctx.gs_base.wrapping_neg();
        let ctx: *mut VcpuCtx = &mut *self.ctx;
        // SAFETY: the cache holds only stubs and units we generated (its executable view
        // is never writable);
        // `ctx` is our boxed context, alive for the call; the GS base in it was set
        // by the VMM to a view it owns (checked by the caller's construction).
        unsafe { world::run(self.stubs.enter, ctx) };
        Ok(())
    }
}

/// The first and last linear page of `len` guest bytes at `start`.
fn unit_pages(start: u32, len: u32) -> (u32, u32) {
    (start & !0xfff, start.wrapping_add(len.max(1) - 1) & !0xfff)
}

fn unit_frames(start: u32, len: u32, frame_of: &mut dyn FnMut(u32) -> Option<u32>) -> Vec<u32> {
    let last = start.wrapping_add(len.max(1) - 1);
    let mut frames = Vec::new();
    for page in [start & !0xfff, last & !0xfff] {
        if let Some(f) = frame_of(page) {
            if !frames.contains(&f) {
                frames.push(f);
            }
        }
    }
    frames
}

fn host_has_fsgsbase() -> bool {
    // AT_HWCAP2 bit 1: the kernel enabled FSGSBASE for user space.
    const HWCAP2_FSGSBASE: u64 = 1 << 1;
    std::fs::read("/proc/self/auxv")
        .map(|auxv| {
            auxv.chunks_exact(16).any(|kv| {
                let k = u64::from_le_bytes(kv[..8].try_into().expect("8 bytes"));
                let v = u64::from_le_bytes(kv[8..].try_into().expect("8 bytes"));
                k == 26 && v & HWCAP2_FSGSBASE != 0
            })
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guest code of `ret`s everywhere.
    struct Rets;

    impl GuestCode for Rets {
        fn fetch(&mut self, _linear: u32, buf: &mut [u8]) -> usize {
            buf.fill(0xc3);
            buf.len()
        }
    }

    #[test]
    fn many_small_units_flush_before_their_tables_outgrow_the_cache() {
        const CACHE: usize = 4 << 20;
        let mut tr = Translator::new(CACHE, Isa::default()).expect("translator");
        let mode = Mode::default();
        let mut most_code = 0;
        for eip in 0..100_000u32 {
            let key = UnitKey { eip, phys: eip & !0xfff, mode };
            tr.translate(key, &mut Rets, &mut |p| Some(p >> 12), false).expect("translate");
            most_code = most_code.max(tr.cache_bytes());
            assert!(tr.tables <= CACHE, "unit tables of {} bytes", tr.tables);
        }
        assert!(tr.stats().cache_flushes > 0);
        assert!(most_code + MAX_UNIT_BYTES < CACHE, "the code cache filled ({most_code} bytes): the tables did not decide");
    }

    #[test]
    fn a_flush_forgets_adaptive_stores_once_there_are_too_many() {
        let mut tr = Translator::new(1 << 20, Isa::default()).expect("translator");
        for eip in 0..100u32 {
            tr.make_adaptive(eip).expect("adaptive");
        }
        tr.flush();
        assert_eq!(tr.adaptive.len(), 100, "a few are kept");
        for eip in 0..=MAX_ADAPTIVE as u32 {
            tr.make_adaptive(eip).expect("adaptive");
        }
        tr.flush();
        assert!(tr.adaptive.is_empty());
    }
}
