//! The cache of address spaces: the shadow state of the last few CR3 values,
//! each with its own pair of views, swapped in at a CR3 switch; spaces dropped
//! to make room, or when the guest rewrites their page directory; and the bound
//! on host mappings over all of them.

use super::{Shadow, ShadowError, MAX_SPACES};
use crate::guest::Guest;
use crate::space::{IdleSpace, SpaceKey, SpaceMaps};
use crate::view::{View, ViewError};

/// Mappings kept over all cached spaces at most: each one may be a host VMA, and a
/// process has at most 65,530 of those by default (`vm.max_map_count`).
pub(crate) const MAX_CACHED_MAPPINGS: usize = 24_000;

impl Shadow {
    /// CR3 or CR0.WP changed with paging on and the other paging controls
    /// unchanged: make `new`'s cached shadow state current, or start it empty
    /// (dropping the least recently used space if the cache is full).
    pub fn switch_space(&mut self, g: &Guest<'_>, old: SpaceKey, new: SpaceKey) -> Result<(), ShadowError> {
        self.cr3_switches += 1;
        self.note_ran(old);
        let mut handed = None;
        let incoming = match self.idle.iter().position(|s| s.key == new) {
            Some(i) => {
                self.space_hits += 1;
                let mut space = self.idle.remove(i);
                if space.maps.lent_kernel_view {
                    handed = self.reclaim_kernel_view(g.ram, old, &mut space)?;
                }
                space
            }
            None => {
                if self.idle.len() + 1 >= MAX_SPACES {
                    self.evict_idle_space(g)?;
                }
                let (view, user_view) = match self.spare_views.pop() {
                    Some(pair) => pair,
                    None => (View::reserve()?, View::reserve()?),
                };
                let mut space = IdleSpace { key: new, view, user_view, maps: SpaceMaps::default() };
                handed = self.hand_over_kernel_view(g.ram, old, &mut space)?;
                if handed.is_some() {
                    space.maps.kernel_view_from = Some(old);
                    self.maps.lent_kernel_view = true;
                }
                space
            }
        };
        let outgoing = IdleSpace {
            key: old,
            view: core::mem::replace(&mut self.view, incoming.view),
            user_view: core::mem::replace(&mut self.user_view, incoming.user_view),
            maps: core::mem::replace(&mut self.maps, incoming.maps),
        };
        self.idle.push(outgoing);
        // A frame no space traced before may be mapped writable somewhere.
        for frame in handed.into_iter().flatten() {
            self.protect_frame(g, frame, false)?;
        }
        while self.mappings_live() > MAX_CACHED_MAPPINGS && !self.idle.is_empty() {
            self.evict_idle_space(g)?;
        }
        Ok(())
    }

    /// Drops the least recently used idle space. Frames only it traced are no
    /// longer traced; where other spaces map them read-only, the next write takes
    /// a hidden fault that maps them as the guest allows.
    fn evict_idle_space(&mut self, g: &Guest<'_>) -> Result<(), ViewError> {
        let gone = self.idle.remove(0);
        self.retire_space(g, gone)
    }

    /// Drops cached space `gone`: its views go back to the spares, and frames only
    /// it traced become writable where the guest allows.
    fn retire_space(&mut self, g: &Guest<'_>, mut gone: IdleSpace) -> Result<(), ViewError> {
        self.unlink_lender(&gone);
        gone.view.unmap_all()?;
        gone.user_view.unmap_all()?;
        self.spare_views.push((gone.view, gone.user_view));
        self.space_evictions += 1;
        self.release_traces(g, gone.maps.traced.into_iter().collect())
    }

    /// A cached space whose page directory the guest rewrites is gone (an OS
    /// reuses the frame of a dead process's page directory): drop it whole now,
    /// rather than follow each write, and stop tracing what only it traced.
    pub(super) fn evict_rewritten_spaces(&mut self, g: &Guest<'_>, entries: &[u32]) -> Result<(), ViewError> {
        while let Some(i) = self.idle.iter().position(|s| entries.iter().any(|e| e >> 12 == s.key.0 >> 12)) {
            let gone = self.idle.remove(i);
            self.retire_space(g, gone)?;
        }
        Ok(())
    }

    /// Keeps the host mappings of all cached spaces below `MAX_CACHED_MAPPINGS`
    /// (each may be a host VMA, and their number is limited): idle spaces go first;
    /// if the current one alone is too big, its mappings are dropped (they refill on
    /// demand; translations do not depend on them).
    pub(super) fn bound_mappings(&mut self, g: &Guest<'_>) -> Result<(), ViewError> {
        while self.mappings_live() >= MAX_CACHED_MAPPINGS && !self.idle.is_empty() {
            self.evict_idle_space(g)?;
        }
        if self.maps.host_mappings() >= MAX_CACHED_MAPPINGS {
            self.view.unmap_all()?;
            self.user_view.unmap_all()?;
            // Only the code tables and the hot table stay, and their tracing.
            let gone = self.maps.clear_mappings();
            self.release_traces(g, gone)?;
            self.space_drops += 1;
        }
        Ok(())
    }
}
