//! The shadow MMU's policy: guest paging through host mappings.
//!
//! With CR0.PG set, the kernel view (CPL 0–2) and the user view (CPL 3) start
//! empty and fill on demand: a host fault in a view is walked through the guest's
//! page tables; if the guest allows the access, the page is mapped and the
//! instruction retried (a *hidden* fault); if not, the guest gets #PF with CR2 and
//! the error code (a *true* fault). The user view only ever receives pages the
//! walk allowed at CPL 3, so user code cannot reach a supervisor page
//! ([`fault`](Shadow::fault)).
//!
//! Accessed and dirty bits: the walk sets A; a page is mapped read-only until its
//! D bit is set, and the first write faults, sets D and remaps it writable.
//!
//! Tracing (`trace.rs`): every frame that held a page directory or page table used
//! by a walk is mapped read-only wherever it is mapped. A write to it runs alone
//! in a transient unit with the page writable; the page is then compared with its
//! old contents and only the mappings whose walks used a changed entry are
//! dropped (and the code pages reached through it leave the space's code map,
//! which the translated code's page checks read). A store that keeps doing this
//! is retranslated into a callout that writes through the emulator (adaptive
//! stores, counted here: [`Shadow::count_trace_fault`], [`Shadow::adaptive_outcome`]),
//! which reports the changed entries without a fault.
//!
//! Address spaces (`spaces.rs`): the shadow state of the last few CR3 values is
//! kept, each with its own pair of views. A CR3 write to a cached space swaps its
//! views in instead of refilling them page by page. That stays correct because
//! tracing is global: a frame is traced while any cached space's walks used it,
//! so a write to another space's page table (a fork copying entries, an exit
//! tearing them down) drops that space's dependent mappings as precisely as the
//! current one's. Changes of CR0.PG/WP or CR4.PSE/PGE still drop everything.
//!
//! Each space's bookkeeping is [`crate::space`]'s; the guest is reached through
//! [`crate::guest`]. The VMM keeps only the glue: the translator's invalidation,
//! the CPU's registers (CR2, the GS base), the frames holding translated code.

mod fault;
mod handover;
mod spaces;
mod trace;

#[cfg(test)]
mod tests;

use crate::code_map::CodeMap;
use crate::guest::Guest;
use crate::space::{pick_view, IdleSpace, Mapping, Place, SpaceMaps, VOID_FRAME};
use crate::view::{View, ViewCalls, ViewError};
use hashbrown::{HashMap, HashSet};
use std::collections::{BTreeMap, VecDeque};
use thiserror::Error;

pub use fault::{Fault, WriteFault};

/// Address spaces whose shadow state is kept (the current one included).
pub const MAX_SPACES: usize = 8;

/// Errors of the shadow's policy (the VMM stops).
#[derive(Debug, Error)]
pub enum ShadowError {
    #[error(transparent)]
    View(#[from] ViewError),
    #[error("traced page-table frame {frame:#x} is not in guest RAM")]
    NotRam { frame: u32 },
}

/// Shadow-paging state of a VM.
pub struct Shadow {
    /// The current address space's kernel view (CPL 0–2; with paging off, RAM
    /// mapped one to one).
    pub view: View,
    /// The current address space's user view (CPL 3 with paging on): only
    /// user-accessible pages.
    pub user_view: View,
    /// The current address space's maps.
    maps: SpaceMaps,
    /// Cached spaces that are not current, least recently used first.
    idle: Vec<IdleSpace>,
    /// Emptied views kept for reuse.
    spare_views: Vec<(View, View)>,
    /// A traced frame being written by a transient instruction, and its contents
    /// before: compared afterwards to find the entries that changed.
    pub pending_trace: Option<(u32, Box<[u8; 4096]>)>,
    pub hidden_faults: u64,
    pub true_faults: u64,
    pub trace_faults: u64,
    /// Page-table writes made by `TracedWrite` callouts (no fault).
    pub adaptive_writes: u64,
    /// Tracing faults per guest eip, to pick instructions for adaptive translation.
    trace_counts: HashMap<u32, u32>,
    pub cr3_switches: u64,
    /// CR3 switches to a space whose shadow state was cached.
    pub space_hits: u64,
    /// Cached spaces dropped to make room.
    pub space_evictions: u64,
    /// Times the current space's mappings were all dropped to stay under the limit.
    pub space_drops: u64,
    pub view_flushes: u64,
    /// invlpg executed (tracing keeps the shadow coherent; see `retargeted`).
    pub invlpgs: u64,
    /// Pages mapped by a hidden fault next to the one that faulted.
    pub prefetched: u64,
    /// The last true fault on a not-present PTE: the handler's store that makes
    /// the entry present maps the page at once (`map_when_present`).
    awaiting_present: Option<trace::AwaitingPresent>,
    /// Pages mapped that way.
    pub mapped_on_present: u64,
    /// Mappings a store dropped by changing their entry to another present
    /// value, newest last: the guest's invlpg of the page maps it again
    /// (`remap_retargeted`).
    retargeted: Vec<trace::Retargeted>,
    /// Pages mapped that way.
    pub mapped_at_invlpg: u64,
    /// The last page mapped again at an invlpg, and whether the guest
    /// invalidated it since it was last mapped (`armed`): a guest that retargets
    /// an entry, invlpgs and uses the page, over and over, has it mapped through
    /// the new entry at the store itself (one host call, no park).
    eager: Option<trace::Eager>,
    /// Pages mapped that way.
    pub mapped_at_store: u64,
    /// 4 MiB guest pages mapped whole.
    pub large_maps: u64,
    /// Switches where a space took the kernel view of the one before (`handover`).
    pub kernel_handovers: u64,
    /// Handovers that gave a kernel view back to the space that lent it
    /// (`handover`; also counted in `kernel_handovers`).
    pub kernel_reclaims: u64,
    /// Writes to each traced frame since a walk last went through it.
    trace_burst: HashMap<u32, u32>,
    /// Frames no longer traced because of a burst of writes.
    pub untraced_frames: u64,
    /// Emulated writes (adaptive or not) that hit a traced frame, ever.
    pub table_write_hits: u64,
    /// Consecutive writes per adaptive store that missed every traced frame.
    adaptive_misses: HashMap<u32, u32>,
    /// Adaptive stores made plain again once (bounded: cleared when large).
    made_plain: HashSet<u32>,
    /// Void pages mapped into the identity view (paging off), oldest first.
    void_pages: VecDeque<u32>,
    /// Frame → how many cached spaces trace it (the union of their `traced`
    /// sets, ordered for range queries over a large page).
    traced_count: BTreeMap<u32, u32>,
    /// What translated code's page checks read.
    code: CodeMap,
}

impl Shadow {
    /// The shadow state of a VM whose current space has these views.
    pub fn new(view: View, user_view: View) -> Self {
        Self {
            view,
            user_view,
            maps: SpaceMaps::default(),
            idle: Vec::new(),
            spare_views: Vec::new(),
            pending_trace: None,
            hidden_faults: 0,
            true_faults: 0,
            trace_faults: 0,
            adaptive_writes: 0,
            trace_counts: HashMap::new(),
            cr3_switches: 0,
            space_hits: 0,
            space_evictions: 0,
            space_drops: 0,
            view_flushes: 0,
            invlpgs: 0,
            prefetched: 0,
            awaiting_present: None,
            mapped_on_present: 0,
            retargeted: Vec::new(),
            mapped_at_invlpg: 0,
            eager: None,
            mapped_at_store: 0,
            large_maps: 0,
            kernel_handovers: 0,
            kernel_reclaims: 0,
            trace_burst: HashMap::new(),
            untraced_frames: 0,
            table_write_hits: 0,
            adaptive_misses: HashMap::new(),
            made_plain: HashSet::new(),
            void_pages: VecDeque::new(),
            traced_count: BTreeMap::new(),
            code: CodeMap::default(),
        }
    }

    /// Pages mapped in all cached spaces' views right now.
    pub fn mappings_live(&self) -> usize {
        self.maps.host_mappings() + self.idle.iter().map(|s| s.maps.host_mappings()).sum::<usize>()
    }

    /// The guest frame the current space's `user` or kernel view maps at
    /// `linear`, and whether the guest allows writes through it: a translation
    /// the shadow keeps coherent with the guest's tables (A, and D where
    /// writable, are set). None: not mapped, or mapped to memory that does not
    /// exist.
    #[inline]
    pub fn cached_frame(&self, linear: u32, user: bool) -> Option<(u32, bool)> {
        let maps = &self.maps;
        let half = maps.half(user);
        let (frame, writable) = match half.mappings.get(&(user, linear & !0xfff)) {
            Some(m) => (m.frame, m.writable),
            None => {
                let l = half.large.get(&(user, linear & !0x3f_ffff))?;
                (l.frame0.checked_add((linear >> 12) & 0x3ff)?, l.writable)
            }
        };
        (frame != VOID_FRAME).then_some((frame, writable))
    }

    /// Whether a #PF handler's return may map a page (`map_awaited`).
    #[inline]
    pub fn awaits_present(&self) -> bool {
        self.awaiting_present.is_some()
    }

    /// Whether `frame` holds a page directory or page table any cached space uses.
    #[inline]
    pub fn is_traced(&self, frame: u32) -> bool {
        self.traced_count.contains_key(&frame)
    }

    /// One more space traces `frame`.
    fn count_trace(&mut self, frame: u32) {
        *self.traced_count.entry(frame).or_insert(0) += 1;
    }

    /// One space fewer traces each of `frames`.
    fn uncount_traces(&mut self, frames: impl IntoIterator<Item = u32>) {
        for f in frames {
            if let Some(n) = self.traced_count.get_mut(&f) {
                *n -= 1;
                if *n == 0 {
                    self.traced_count.remove(&f);
                }
            }
        }
    }

    /// Host calls made by the views of idle and spare spaces.
    pub fn idle_view_calls(&self) -> ViewCalls {
        let views = self.idle.iter().flat_map(|s| [&s.view, &s.user_view]).chain(self.spare_views.iter().flat_map(|(a, b)| [a, b]));
        views.fold(Default::default(), |mut acc: ViewCalls, v| {
            acc.maps += v.calls.maps;
            acc.unmaps += v.calls.unmaps;
            acc.protects += v.calls.protects;
            acc
        })
    }

    /// Address spaces cached (the current one included).
    pub fn spaces_cached(&self) -> usize {
        1 + self.idle.len()
    }

    /// The code map translated code's page checks read for the space whose page
    /// directory is at `pd_frame`, at CPL 3 (`user`) or not.
    pub fn code_map_address(&mut self, pd_frame: u32, user: bool) -> u64 {
        self.code.top_address(pd_frame, user)
    }

    /// Drops every shadow mapping of every cached space, and all tracing (the
    /// VMM drops the translations and maps RAM one to one without paging).
    pub fn flush(&mut self) -> Result<(), ViewError> {
        self.view.unmap_all()?;
        self.user_view.unmap_all()?;
        for mut idle in core::mem::take(&mut self.idle) {
            idle.view.unmap_all()?;
            idle.user_view.unmap_all()?;
            self.spare_views.push((idle.view, idle.user_view));
        }
        self.maps = SpaceMaps::default();
        self.traced_count.clear();
        self.code.reset();
        self.pending_trace = None;
        self.void_pages.clear();
        self.view_flushes += 1;
        Ok(())
    }

    /// Sets the host protection of every mapping of `frame` in every cached space:
    /// read-only, or (`writable`) what the guest allows unless the frame holds
    /// translated code or a page table.
    pub fn protect_frame(&mut self, g: &Guest<'_>, frame: u32, writable: bool) -> Result<(), ViewError> {
        if !g.paging {
            self.view.set_writable(frame << 12, writable)?;
            return Ok(());
        }
        let writable = writable && !g.code.contains(&frame) && !self.is_traced(frame);
        self.maps.protect(&mut self.view, &mut self.user_view, frame, writable)?;
        for idle in &mut self.idle {
            idle.maps.protect(&mut idle.view, &mut idle.user_view, frame, writable)?;
        }
        Ok(())
    }

    /// Maps `linear` in the user or kernel view as `m` (host-writable only if
    /// `host_writable`), dependent on the guest entries `deps`.
    fn map_shadow(
        &mut self,
        g: &Guest<'_>,
        user_view: bool,
        linear: u32,
        m: Mapping,
        host_writable: bool,
        deps: [Option<u32>; 2],
    ) -> Result<(), ViewError> {
        let place: Place = (user_view, linear & !0xfff);
        let maps = &mut self.maps;
        if maps.mapping(place).is_some_and(|old| old.frame != m.frame) {
            // The new mapping replaces the old one on the host (MAP_FIXED).
            maps.forget(place);
        }
        let view = pick_view(&mut self.view, &mut self.user_view, user_view);
        if m.frame == VOID_FRAME {
            view.map_void(place.1, g.ram.fd(), g.ram.void_offset(), host_writable)?;
        } else {
            view.map_page(place.1, g.ram.fd(), m.frame << 12, host_writable)?;
        }
        maps.record(place, m, deps.into_iter().flatten());
        Ok(())
    }

    /// One more tracing fault by the store at `eip`: whether it is the one after
    /// which the store is to be retranslated as a callout that writes without
    /// faulting (an adaptive store).
    pub fn count_trace_fault(&mut self, eip: u32) -> bool {
        const ADAPT_AFTER: u32 = 3;
        let n = self.trace_counts.entry(eip).or_insert(0);
        *n += 1;
        *n == ADAPT_AFTER
    }

    /// The adaptive store at `eip` wrote a page table (`hit`) or not: whether it
    /// is to become a plain store again. One that keeps missing (a copy loop that
    /// once touched a page table, a table no longer traced) does: a callout costs
    /// an exit every time. But only once: a store that became adaptive again
    /// after that misses in bursts (Linux's `unmap_page_range` clearing a table
    /// untraced by a burst of writes, then hitting traced tables at the next
    /// exit), and each return would cost three tracing faults and two
    /// retranslations.
    pub fn adaptive_outcome(&mut self, eip: u32, hit: bool) -> bool {
        const PLAIN_AFTER: u32 = 32;
        const MAX_MADE_PLAIN: usize = 4096;
        if hit {
            self.adaptive_misses.remove(&eip);
            return false;
        }
        let misses = self.adaptive_misses.entry(eip).or_insert(0);
        *misses += 1;
        if *misses < PLAIN_AFTER {
            return false;
        }
        self.adaptive_misses.remove(&eip);
        if self.made_plain.contains(&eip) {
            return false;
        }
        if self.made_plain.len() >= MAX_MADE_PLAIN {
            self.made_plain.clear();
        }
        self.made_plain.insert(eip);
        self.trace_counts.remove(&eip);
        true
    }
}

/// Mapped views need this to be `Send` with the VM.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<Shadow>();
};
