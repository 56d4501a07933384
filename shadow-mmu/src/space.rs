//! One address space's shadow bookkeeping: which linear pages of its two views
//! (kernel and user) map which guest frames, which guest page-directory and
//! page-table entries each mapping depends on, the frames its walks used (to
//! trace), and its 4 MiB (PSE) mappings.
//!
//! [`SpaceMaps`] keeps that state consistent with the views it describes, each
//! view's part in a [`ViewMaps`] of its own: dropping the mappings that depended
//! on changed entries ([`SpaceMaps::drop_entries`]), protecting every mapping of
//! a frame ([`SpaceMaps::protect`]), and moving the kernel view's state from one
//! address space to the next ([`SpaceMaps::take_kernel_view`], [`ViewMaps::rebind`],
//! [`SpaceMaps::absorb`]).
//! What fills it (page walks, faults, tracing across all cached spaces, CR3
//! switches) is [`crate::shadow`]'s.

use crate::view::{View, ViewError};
use hashbrown::{HashMap, HashSet};

/// Which cached address space a CR3 value and CR0.WP select: the same page
/// tables with WP set and clear give different host protections, so each
/// combination is a space of its own, and toggling WP switches between two.
pub type SpaceKey = (u32, bool);

/// Bytes of a large (PSE) page.
pub const LARGE: u64 = 4 << 20;

/// The frame number shadow mappings of non-existent memory carry (the void page).
pub const VOID_FRAME: u32 = u32::MAX;

/// A linear page in one of a space's two views.
pub type Place = (bool, u32);

/// The places one entry or frame is behind: one or two (a page in both views)
/// nearly always, kept inline (a fork or an exec makes thousands of lists).
pub type Places = smallvec::SmallVec<[Place; 2]>;

/// A shadow mapping: the guest frame, and whether the guest allows writes through
/// it (R/W, U/S, WP and a set D bit). The host protection may be stricter: code
/// and page-table frames are mapped read-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub frame: u32,
    pub writable: bool,
}

/// One view's shadow state: its mappings, what they depend on, and their
/// reverse maps. Every place in it is in that view.
#[derive(Default)]
pub struct ViewMaps {
    /// Frame → the places it is mapped, for protection.
    pub rmap: HashMap<u32, Places>,
    pub mappings: HashMap<Place, Mapping>,
    /// Physical address of a guest PDE or PTE → the mappings whose walk used it.
    pub deps: HashMap<u32, Places>,
    /// 4 MiB guest pages mapped whole, by place (view, region base).
    pub large: HashMap<Place, LargeMapping>,
    /// Physical address of a PDE → the large mappings it made.
    pub large_deps: HashMap<u32, Places>,
    /// Physical 4 MiB region (frame >> 10) → the large mappings of it.
    pub large_rmap: HashMap<u32, Places>,
    /// Page-table frame → how many of its entries are keys of `deps` or
    /// `large_deps`: a write to a frame not here needs no look-up entry by entry.
    pub dep_frames: HashMap<u32, u32>,
}

/// One address space's shadow state (its views live with it, or in the `Vm` for
/// the current space). Each view's state is kept apart, so the kernel view's
/// moves from space to space (`crate::shadow::handover`) take it whole instead
/// of sorting thousands of entries out of a shared map (measured: 270 µs per
/// move, a fifth of a fork+exec).
#[derive(Default)]
pub struct SpaceMaps {
    pub kernel: ViewMaps,
    pub user: ViewMaps,
    /// Frames holding the page directories and page tables its walks used.
    pub traced: HashSet<u32>,
    /// Page directories and tables code was fetched through in this space: the
    /// code map's entries learnt through them stay valid only while they are
    /// traced, so they stay traced until the space goes.
    pub code_tables: HashSet<u32>,
    /// This space handed its kernel view to a new space and has not run since:
    /// it holds an empty stand-in (`Shadow::reclaim_kernel_view`).
    pub lent_kernel_view: bool,
    /// The space that handed this one its kernel view, while that one has not
    /// run since (a fork's child got it from the parent, the child's exec from
    /// the child).
    pub kernel_view_from: Option<SpaceKey>,
    /// Frames this space stopped tracing since the VMM last looked (their last
    /// dependency went): the VMM updates the global count and protections.
    pub untraced: Vec<u32>,
    /// The page table of the last page mapped ahead of an access (`map_through`:
    /// its entry became present, or was retargeted and invlpg'd): it stays
    /// traced when its last mapping goes. A guest that keeps changing entries
    /// of the same table writes it traced, and the page is mapped at once;
    /// untracing it and tracing it again would cost two host calls each time.
    pub hot_table: Option<u32>,
}

/// A 4 MiB guest page (PSE) mapped as a whole: one host mapping per run of
/// frames with the same protection (code and page-table frames are read-only).
#[derive(Clone, Copy, Debug)]
pub struct LargeMapping {
    /// The first frame of the page.
    pub frame0: u32,
    /// Whether the guest allows writes through it (R/W, U/S, WP, D).
    pub writable: bool,
    /// Host mappings it took (for the bound on their number).
    pub runs: u32,
}

/// A cached address space that is not current.
pub struct IdleSpace {
    pub key: SpaceKey,
    pub view: View,
    pub user_view: View,
    pub maps: SpaceMaps,
}

/// The user view if `user`, else the kernel view.
pub fn pick_view<'v>(view: &'v mut View, user_view: &'v mut View, user: bool) -> &'v mut View {
    if user {
        user_view
    } else {
        view
    }
}

impl ViewMaps {
    /// Forgets the mapping at `place` (the caller unmaps it from its view).
    pub fn forget(&mut self, place: Place) {
        let Some(m) = self.mappings.remove(&place) else { return };
        if let Some(places) = self.rmap.get_mut(&m.frame) {
            places.retain(|p| *p != place);
            if places.is_empty() {
                self.rmap.remove(&m.frame);
            }
        }
    }

    /// Whether nothing is mapped (or depended on) in this view.
    pub fn is_empty(&self) -> bool {
        self.mappings.is_empty() && self.large.is_empty() && self.dep_frames.is_empty()
    }

    /// Drops the mappings that depended on any of the guest `entries` from `view`,
    /// unmapping consecutive pages with one host call. Frames with no dependency
    /// left are added to `emptied`.
    pub fn drop_entries(&mut self, view: &mut View, entries: &[u32], emptied: &mut Vec<u32>) -> Result<(), ViewError> {
        let mut places: Vec<Place> = Vec::new();
        let mut frame_known = (u32::MAX, false);
        for &entry in entries {
            if frame_known.0 != entry >> 12 {
                frame_known = (entry >> 12, self.dep_frames.contains_key(&(entry >> 12)));
            }
            if !frame_known.1 {
                continue;
            }
            if let Some(list) = self.deps.remove(&entry) {
                self.uncount_dep_key(entry, emptied);
                places.extend(list.into_iter().filter(|p| self.mappings.contains_key(p)));
            }
            if let Some(large) = self.large_deps.remove(&entry) {
                self.uncount_dep_key(entry, emptied);
                for place in large {
                    if self.forget_large(place) {
                        view.unmap(place.1, LARGE)?;
                    }
                }
            }
        }
        places.sort_unstable();
        places.dedup();
        for &place in &places {
            self.forget(place);
        }
        let mut i = 0;
        while i < places.len() {
            let start = places[i].1;
            let mut j = i + 1;
            while j < places.len() && places[j].1 == start.wrapping_add(0x1000 * (j - i) as u32) {
                j += 1;
            }
            if j - i == 1 {
                // Most likely made present again soon, at the same frame.
                view.park(start)?;
            } else {
                view.unmap(start, 0x1000 * (j - i) as u64)?;
            }
            i = j;
        }
        Ok(())
    }

    /// Sets the host protection of every mapping of `frame` in `view`:
    /// read-only, or what the guest allows.
    pub fn protect(&self, view: &mut View, frame: u32, writable: bool) -> Result<(), ViewError> {
        for place in self.rmap.get(&frame).into_iter().flatten() {
            let allowed = self.mappings.get(place).is_some_and(|m| m.writable);
            view.protect_page(place.1, writable && allowed)?;
        }
        for place in self.large_rmap.get(&(frame >> 10)).into_iter().flatten() {
            if let Some(l) = self.large.get(place) {
                let linear = place.1 + ((frame - l.frame0) << 12);
                view.protect_page(linear, writable && l.writable)?;
            }
        }
        Ok(())
    }

    /// `entry` became a key of one of the dependency maps.
    fn count_dep_key(&mut self, entry: u32) {
        *self.dep_frames.entry(entry >> 12).or_insert(0) += 1;
    }

    /// `entry` stopped being a key of one of the dependency maps; its frame
    /// goes to `emptied` when that was the last one there.
    fn uncount_dep_key(&mut self, entry: u32, emptied: &mut Vec<u32>) {
        let frame = entry >> 12;
        if let Some(n) = self.dep_frames.get_mut(&frame) {
            *n -= 1;
            if *n == 0 {
                self.dep_frames.remove(&frame);
                emptied.push(frame);
            }
        }
    }

    /// Records that `place` depends on guest entry `entry` (`deps`).
    pub fn add_dep(&mut self, entry: u32, place: Place) {
        match self.deps.entry(entry) {
            // A page directory entry has a place for every page under it: no
            // search per insertion; duplicates (a page mapped again) are rare
            // and removed when the list grows.
            hashbrown::hash_map::Entry::Occupied(mut o) => {
                let list = o.get_mut();
                list.push(place);
                if list.len().is_power_of_two() && list.len() >= 64 {
                    list.sort_unstable();
                    list.dedup();
                }
            }
            hashbrown::hash_map::Entry::Vacant(v) => {
                v.insert(smallvec::smallvec![place]);
                self.count_dep_key(entry);
            }
        }
    }

    /// Records the mapping `m` at `place` (already made in its view) and its
    /// dependencies on the guest entries `deps`.
    pub fn record(&mut self, place: Place, m: Mapping, deps: impl IntoIterator<Item = u32>) {
        self.mappings.insert(place, m);
        let places = self.rmap.entry(m.frame).or_default();
        if !places.contains(&place) {
            places.push(place);
        }
        for entry in deps {
            self.add_dep(entry, place);
        }
    }

    /// Records the large mapping `l` at `place` (already made in its view, over
    /// any large mapping there before) and its dependency on the PDE at `pde`.
    pub fn record_large(&mut self, place: Place, l: LargeMapping, pde: u32) {
        self.forget_large(place);
        self.large.insert(place, l);
        self.large_rmap.entry(l.frame0 >> 10).or_default().push(place);
        match self.large_deps.entry(pde) {
            hashbrown::hash_map::Entry::Occupied(mut o) => {
                if !o.get().contains(&place) {
                    o.get_mut().push(place);
                }
            }
            hashbrown::hash_map::Entry::Vacant(v) => {
                v.insert(smallvec::smallvec![place]);
                self.count_dep_key(pde);
            }
        }
    }

    /// Forgets the large mapping at `place`; whether there was one.
    pub fn forget_large(&mut self, place: Place) -> bool {
        let Some(l) = self.large.remove(&place) else { return false };
        if let Some(places) = self.large_rmap.get_mut(&(l.frame0 >> 10)) {
            places.retain(|p| *p != place);
            if places.is_empty() {
                self.large_rmap.remove(&(l.frame0 >> 10));
            }
        }
        true
    }

    /// Host mappings this view holds (each may be a host VMA).
    pub fn host_mappings(&self) -> usize {
        self.mappings.len() + self.large.values().map(|l| l.runs as usize).sum::<usize>()
    }
}

/// Page-directory entries of one directory.
pub type Directory = [u32; 1024];

impl ViewMaps {
    /// Makes kernel-view state taken from the space whose page directory is at
    /// `from` valid for the one at `to`: mappings under entries equal in both move
    /// their dependency to `to`'s entry, the rest are dropped from `view` (host
    /// calls batched). Returns the frames this state now depends on (to trace).
    pub fn rebind(&mut self, view: &mut View, (from, old): (u32, &Directory), (to, new): (u32, &Directory)) -> Result<Vec<u32>, ViewError> {
        let (from, to) = (from & !0xfff, to & !0xfff);
        let (mut keep, mut drop) = (Vec::new(), Vec::new());
        for i in 0..1024 {
            let key = from | (i as u32 * 4);
            let (deps, large) = (self.deps.get(&key), self.large_deps.get(&key));
            if deps.is_none() && large.is_none() {
                continue;
            }
            // A key in the directory frame used as a page table (a recursive
            // mapping) covers pages outside its region: never carried over.
            let in_region = |p: &Place| (p.1 >> 22) as usize == i;
            let only_region = deps.into_iter().chain(large).flatten().all(in_region);
            if old[i] == new[i] && only_region {
                keep.push(key);
            } else {
                drop.push(key);
            }
        }
        let mut emptied = Vec::new();
        self.drop_entries(view, &drop, &mut emptied)?;
        for key in keep {
            let moved = to | (key & 0xfff);
            if let Some(list) = self.deps.remove(&key) {
                self.uncount_dep_key(key, &mut emptied);
                for place in list {
                    self.add_dep(moved, place);
                }
            }
            if let Some(list) = self.large_deps.remove(&key) {
                self.uncount_dep_key(key, &mut emptied);
                match self.large_deps.entry(moved) {
                    hashbrown::hash_map::Entry::Occupied(mut o) => o.get_mut().extend(list),
                    hashbrown::hash_map::Entry::Vacant(v) => {
                        v.insert(list);
                        self.count_dep_key(moved);
                    }
                }
            }
        }
        Ok(self.dep_frames.keys().copied().collect())
    }

    /// Adds `other`'s state (places this view does not have) to this view.
    fn absorb(&mut self, other: ViewMaps) {
        if self.is_empty() {
            *self = other;
            return;
        }
        self.mappings.extend(other.mappings);
        self.large.extend(other.large);
        for (k, v) in other.rmap {
            self.rmap.entry(k).or_default().extend(v);
        }
        for (k, v) in other.large_rmap {
            self.large_rmap.entry(k).or_default().extend(v);
        }
        for (k, v) in other.deps {
            for place in v {
                self.add_dep(k, place);
            }
        }
        for (k, v) in other.large_deps {
            match self.large_deps.entry(k) {
                hashbrown::hash_map::Entry::Occupied(mut o) => o.get_mut().extend(v),
                hashbrown::hash_map::Entry::Vacant(e) => {
                    e.insert(v);
                    *self.dep_frames.entry(k >> 12).or_insert(0) += 1;
                }
            }
        }
    }
}

impl SpaceMaps {
    /// The state of the user view if `user`, else of the kernel view.
    pub fn half(&self, user: bool) -> &ViewMaps {
        if user {
            &self.user
        } else {
            &self.kernel
        }
    }

    /// As `half`, mutable.
    pub fn half_mut(&mut self, user: bool) -> &mut ViewMaps {
        if user {
            &mut self.user
        } else {
            &mut self.kernel
        }
    }

    /// The 4 KiB mapping at `place`.
    pub fn mapping(&self, place: Place) -> Option<&Mapping> {
        self.half(place.0).mappings.get(&place)
    }

    /// The large mapping at `place` (a 4 MiB region base).
    pub fn large_mapping(&self, place: Place) -> Option<&LargeMapping> {
        self.half(place.0).large.get(&place)
    }

    /// The places that depend on guest entry `entry`, in either view.
    pub fn dependents(&self, entry: u32) -> impl Iterator<Item = Place> + '_ {
        [&self.kernel, &self.user].into_iter().flat_map(move |h| h.deps.get(&entry).into_iter().flatten().copied())
    }

    /// Forgets the mapping at `place` (the caller unmaps it from its view).
    pub fn forget(&mut self, place: Place) {
        self.half_mut(place.0).forget(place);
    }

    /// Records the mapping `m` at `place` (already made in its view) and its
    /// dependencies on the guest entries `deps`.
    pub fn record(&mut self, place: Place, m: Mapping, deps: impl IntoIterator<Item = u32>) {
        self.half_mut(place.0).record(place, m, deps);
    }

    /// Records the large mapping `l` at `place` (already made in its view, over
    /// any large mapping there before) and its dependency on the PDE at `pde`.
    pub fn record_large(&mut self, place: Place, l: LargeMapping, pde: u32) {
        self.half_mut(place.0).record_large(place, l, pde);
    }

    /// Forgets the large mapping at `place`; whether there was one.
    pub fn forget_large(&mut self, place: Place) -> bool {
        self.half_mut(place.0).forget_large(place)
    }

    /// Whether something of this space still needs `frame` traced.
    fn needs_trace(&self, frame: u32) -> bool {
        self.kernel.dep_frames.contains_key(&frame)
            || self.user.dep_frames.contains_key(&frame)
            || self.code_tables.contains(&frame)
            || self.hot_table == Some(frame)
    }

    /// Frames whose last dependency in one view went: those nothing else in the
    /// space needs stop being traced (`untraced`).
    fn untrace_unneeded(&mut self, frames: Vec<u32>) {
        for frame in frames {
            if !self.needs_trace(frame) && self.traced.remove(&frame) {
                self.untraced.push(frame);
            }
        }
    }

    /// Drops the mappings that depended on any of the guest `entries`, unmapping
    /// consecutive pages with one host call.
    pub fn drop_entries(&mut self, view: &mut View, user_view: &mut View, entries: &[u32]) -> Result<(), ViewError> {
        let mut emptied = Vec::new();
        self.kernel.drop_entries(view, entries, &mut emptied)?;
        self.user.drop_entries(user_view, entries, &mut emptied)?;
        self.untrace_unneeded(emptied);
        Ok(())
    }

    /// Sets the host protection of every mapping of `frame`: read-only, or what
    /// the guest allows.
    pub fn protect(&self, view: &mut View, user_view: &mut View, frame: u32, writable: bool) -> Result<(), ViewError> {
        self.kernel.protect(view, frame, writable)?;
        self.user.protect(user_view, frame, writable)
    }

    /// Makes `frame` the hot table (see `hot_table`); the one before may stop
    /// being traced (`untraced`).
    pub fn set_hot_table(&mut self, frame: u32) {
        if let Some(old) = self.hot_table.replace(frame).filter(|&old| old != frame) {
            self.untrace_unneeded(vec![old]);
        }
    }

    /// Host mappings this space holds (each may be a host VMA).
    pub fn host_mappings(&self) -> usize {
        self.kernel.host_mappings() + self.user.host_mappings()
    }

    /// Moves out everything about the kernel view's mappings.
    pub fn take_kernel_view(&mut self) -> ViewMaps {
        core::mem::take(&mut self.kernel)
    }

    /// Adds kernel-view state (`rebind`ed to this space's directory) to this
    /// space, with the frames it depends on traced.
    pub fn absorb(&mut self, kernel: ViewMaps, frames: &[u32]) {
        self.kernel.absorb(kernel);
        self.traced.extend(frames.iter().copied());
    }

    /// Forgets every mapping of both views (the caller unmaps them); only the
    /// code tables and the hot table stay traced. Returns the frames no longer
    /// traced.
    pub fn clear_mappings(&mut self) -> Vec<u32> {
        self.kernel = ViewMaps::default();
        self.user = ViewMaps::default();
        let gone: Vec<u32> = self.traced.iter().copied().filter(|&f| !self.needs_trace(f)).collect();
        for f in &gone {
            self.traced.remove(f);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
    use std::os::fd::{AsFd, OwnedFd};

    /// Guest RAM of 64 frames.
    fn ram() -> OwnedFd {
        let fd = memfd_create("space-test", MemfdFlags::CLOEXEC).expect("memfd");
        ftruncate(&fd, 0x4_0000).expect("size");
        fd
    }

    fn views() -> (View, View) {
        (View::reserve().expect("kernel view"), View::reserve().expect("user view"))
    }

    /// Maps `place` to `frame` in its view, as the VMM does, and records it with its dependencies.
    fn map(maps: &mut SpaceMaps, views: &mut (View, View), ram: &OwnedFd, place: Place, m: Mapping, deps: &[u32]) {
        let view = pick_view(&mut views.0, &mut views.1, place.0);
        view.map_page(place.1, ram.as_fd(), m.frame << 12, m.writable).expect("map");
        maps.record(place, m, deps.iter().copied());
    }

    /// The memfd offset and writability the view holds at `place`.
    fn backing(views: &mut (View, View), place: Place) -> Option<(u64, bool)> {
        let view = pick_view(&mut views.0, &mut views.1, place.0);
        view.mirror_mut().backing_of(place.1 >> 12).map(|b| (b.offset, b.writable))
    }

    fn rw(frame: u32) -> Mapping {
        Mapping { frame, writable: true }
    }

    /// Every list of `map` with its places sorted, the keys in order.
    fn lists(map: &HashMap<u32, Places>) -> Vec<(u32, Vec<Place>)> {
        let mut out: Vec<(u32, Vec<Place>)> = map
            .iter()
            .map(|(&k, v)| {
                let mut v = v.to_vec();
                v.sort_unstable();
                (k, v)
            })
            .collect();
        out.sort_unstable();
        out
    }

    fn sorted<K: Ord + Copy, V: Copy>(map: &HashMap<K, V>) -> Vec<(K, V)> {
        let mut out: Vec<(K, V)> = map.iter().map(|(&k, &v)| (k, v)).collect();
        out.sort_unstable_by_key(|&(k, _)| k);
        out
    }

    /// The page directory at frame 0x10; kernel pages under its entry 0x300
    /// through the page table at frame 0x11, a user page under entry 0x20 through
    /// the table at frame 0x12.
    const PD: u32 = 0x1_0000;
    const KERNEL_PDE: u32 = PD + 0x300 * 4;
    const USER_PDE: u32 = PD + 0x20 * 4;
    const KERNEL_PT: u32 = 0x1_1000;
    const USER_PT: u32 = 0x1_2000;
    const USER_PAGE: Place = (true, 0x0804_8000);

    fn kernel_page(i: u32) -> Place {
        (false, 0xc000_0000 + i * 0x1000)
    }

    /// Three kernel pages (frames 1–3) and one user page (frame 4), all traced.
    fn populated(views: &mut (View, View), ram: &OwnedFd) -> SpaceMaps {
        let mut maps = SpaceMaps::default();
        for i in 0..3 {
            map(&mut maps, views, ram, kernel_page(i), rw(1 + i), &[KERNEL_PDE, KERNEL_PT + 4 * i]);
        }
        map(&mut maps, views, ram, USER_PAGE, rw(4), &[USER_PDE, USER_PT + 0x48 * 4]);
        maps.traced.extend([PD >> 12, KERNEL_PT >> 12, USER_PT >> 12]);
        maps
    }

    /// Dropping a PDE drops every page under it (consecutive pages with one host
    /// call) and nothing else; dropping the PTEs after that leaves their table
    /// with no dependency: untraced.
    #[test]
    fn drop_entries_drops_dependents_and_untraces() {
        let (fd, mut views) = (ram(), views());
        let mut maps = populated(&mut views, &fd);
        assert_eq!(sorted(&maps.kernel.dep_frames), vec![(0x10, 1), (0x11, 3)]);
        assert_eq!(sorted(&maps.user.dep_frames), vec![(0x10, 1), (0x12, 1)]);

        // An entry in a frame nothing depends on: no change.
        maps.drop_entries(&mut views.0, &mut views.1, &[0x3_0000]).expect("drop");
        assert_eq!(maps.host_mappings(), 4);

        let unmaps = views.0.calls.unmaps;
        maps.drop_entries(&mut views.0, &mut views.1, &[KERNEL_PDE]).expect("drop");
        assert_eq!(views.0.calls.unmaps, unmaps + 1, "three consecutive pages: one host call");
        assert!(maps.kernel.mappings.is_empty() && maps.kernel.rmap.is_empty());
        assert_eq!(maps.user.mappings.keys().copied().collect::<Vec<_>>(), vec![USER_PAGE]);
        assert_eq!(lists(&maps.user.rmap), vec![(4, vec![USER_PAGE])]);
        for i in 0..3 {
            assert_eq!(backing(&mut views, kernel_page(i)), None, "page {i} unmapped");
        }
        assert_eq!(backing(&mut views, USER_PAGE), Some((0x4000, true)));
        assert!(!maps.kernel.deps.contains_key(&KERNEL_PDE));
        assert_eq!(sorted(&maps.kernel.dep_frames), vec![(0x11, 3)]);
        assert!(maps.untraced.is_empty(), "the user page still depends on the directory");

        maps.drop_entries(&mut views.0, &mut views.1, &[KERNEL_PT, KERNEL_PT + 4, KERNEL_PT + 8]).expect("drop");
        assert!(maps.kernel.dep_frames.is_empty());
        assert_eq!(maps.untraced, vec![KERNEL_PT >> 12]);
        assert!(!maps.traced.contains(&(KERNEL_PT >> 12)));
        assert_eq!(maps.host_mappings(), 1, "the user page stays");
    }

    /// A single page dropped by its PTE is parked, its neighbours stay.
    #[test]
    fn drop_entries_one_pte() {
        let (fd, mut views) = (ram(), views());
        let mut maps = populated(&mut views, &fd);
        maps.drop_entries(&mut views.0, &mut views.1, &[KERNEL_PT + 4]).expect("drop");
        assert!(maps.mapping(kernel_page(1)).is_none());
        assert!(!maps.kernel.rmap.contains_key(&2));
        assert_eq!(backing(&mut views, kernel_page(1)), None);
        assert_eq!(backing(&mut views, kernel_page(0)), Some((0x1000, true)));
        assert_eq!(backing(&mut views, kernel_page(2)), Some((0x3000, true)));
        assert_eq!(maps.kernel.dep_frames.get(&0x11), Some(&2));
    }

    /// Moving the kernel view's state out leaves the user view's; adding it
    /// back to a space whose kernel view is empty takes it whole, and to one
    /// whose kernel view is not merges the two.
    #[test]
    fn take_kernel_view_and_absorb_round_trip() {
        let (fd, mut views) = (ram(), views());
        let mut maps = populated(&mut views, &fd);
        maps.record_large((false, 0xc040_0000), LargeMapping { frame0: 0x400, writable: true, runs: 1 }, PD + 0x301 * 4);
        let state = |h: &ViewMaps| (sorted(&h.mappings), lists(&h.rmap), lists(&h.deps), sorted(&h.dep_frames));
        let before = state(&maps.kernel);
        let user_before = state(&maps.user);

        let kernel = maps.take_kernel_view();
        assert!(maps.kernel.is_empty() && maps.kernel.large_deps.is_empty() && maps.kernel.large_rmap.is_empty());
        assert_eq!(state(&maps.user), user_before);
        assert_eq!(state(&kernel), before);
        assert_eq!(sorted(&kernel.dep_frames), vec![(0x10, 2), (0x11, 3)]);

        maps.absorb(kernel, &[0x10, 0x11]);
        assert_eq!(state(&maps.kernel), before);

        // Merging: one page already there, two new ones.
        let mut other = SpaceMaps::default();
        map(&mut other, &mut views, &fd, kernel_page(5), rw(6), &[KERNEL_PDE, KERNEL_PT + 20]);
        let kernel = maps.take_kernel_view();
        other.absorb(kernel, &[0x10, 0x11]);
        assert_eq!(other.kernel.mappings.len(), 4);
        assert_eq!(other.kernel.deps.get(&KERNEL_PDE).map(|l| l.len()), Some(4));
        assert_eq!(sorted(&other.kernel.dep_frames), vec![(0x10, 2), (0x11, 4)]);
        assert_eq!(other.kernel.large.len(), 1);
        assert!(other.traced.contains(&0x11));
    }

    /// Kernel-view state moved to another directory keeps the mappings under
    /// entries equal in both, with their dependency moved to the new directory,
    /// and drops the rest.
    #[test]
    fn rebind_keeps_shared_entries() {
        let (fd, mut views) = (ram(), views());
        let mut maps = populated(&mut views, &fd);
        let other_pde = PD + 0x301 * 4;
        let other_page = (false, 0xc040_0000);
        map(&mut maps, &mut views, &fd, other_page, rw(5), &[other_pde, 0x1_4000]);
        let mut old: Directory = [0; 1024];
        old[0x300] = KERNEL_PT | 3;
        old[0x301] = 0x1_4003;
        let mut new = old;
        new[0x301] = 0x1_5003;
        let new_pd = 0x2_0000;

        let mut kernel = maps.take_kernel_view();
        let mut frames = kernel.rebind(&mut views.0, (PD, &old), (new_pd, &new)).expect("rebind");
        frames.sort_unstable();
        assert!(frames.contains(&(new_pd >> 12)) && frames.contains(&(KERNEL_PT >> 12)), "{frames:x?}");
        assert!(!frames.contains(&(PD >> 12)), "{frames:x?}");
        assert_eq!(kernel.deps.get(&(new_pd + 0x300 * 4)).map(|p| p.len()), Some(3), "moved to the new directory");
        assert!(!kernel.deps.contains_key(&KERNEL_PDE) && !kernel.deps.contains_key(&other_pde));
        assert!(!kernel.mappings.contains_key(&other_page), "its PDE differs");
        assert_eq!(backing(&mut views, other_page), None);
        assert_eq!(kernel.mappings.len(), 3);
        assert_eq!(backing(&mut views, kernel_page(0)), Some((0x1000, true)));
        assert_eq!(kernel.dep_frames.keys().copied().collect::<HashSet<_>>(), frames.iter().copied().collect());
    }

    /// `protect` sets every mapping of a frame read-only, or back to what the
    /// guest allows there.
    #[test]
    fn protect_follows_the_guest_permission() {
        let (fd, mut views) = (ram(), views());
        let mut maps = SpaceMaps::default();
        let (a, b) = ((false, 0x40_0000), (true, 0x50_0000));
        map(&mut maps, &mut views, &fd, a, rw(7), &[PD + 4]);
        map(&mut maps, &mut views, &fd, b, Mapping { frame: 7, writable: false }, &[PD + 8]);
        maps.protect(&mut views.0, &mut views.1, 7, false).expect("protect");
        assert_eq!((backing(&mut views, a), backing(&mut views, b)), (Some((0x7000, false)), Some((0x7000, false))));
        maps.protect(&mut views.0, &mut views.1, 7, true).expect("protect");
        assert_eq!((backing(&mut views, a), backing(&mut views, b)), (Some((0x7000, true)), Some((0x7000, false))));
    }

    /// Large mappings: recorded once per place and dependency, forgotten from
    /// the region's reverse map.
    #[test]
    fn record_and_forget_large() {
        let mut maps = SpaceMaps::default();
        let l = LargeMapping { frame0: 0x400, writable: true, runs: 2 };
        let (a, b) = ((false, 0xc000_0000), (true, 0x0040_0000));
        maps.record_large(a, l, KERNEL_PDE);
        maps.record_large(a, l, KERNEL_PDE);
        maps.record_large(b, l, USER_PDE);
        assert_eq!(lists(&maps.kernel.large_rmap), vec![(1, vec![a])]);
        assert_eq!(lists(&maps.user.large_rmap), vec![(1, vec![b])]);
        assert_eq!(lists(&maps.kernel.large_deps), vec![(KERNEL_PDE, vec![a])]);
        assert_eq!(lists(&maps.user.large_deps), vec![(USER_PDE, vec![b])]);
        assert_eq!(sorted(&maps.kernel.dep_frames), vec![(0x10, 1)]);
        assert_eq!(maps.host_mappings(), 4);
        assert!(maps.forget_large(a));
        assert!(!maps.forget_large(a));
        assert!(maps.kernel.large_rmap.is_empty());
        assert!(maps.forget_large(b));
        assert!(maps.user.large_rmap.is_empty() && maps.user.large.is_empty());
        assert_eq!(maps.host_mappings(), 0);
    }
}
