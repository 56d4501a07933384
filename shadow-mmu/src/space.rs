//! One address space's shadow bookkeeping: which linear pages of its two views
//! (kernel and user) map which guest frames, which guest page-directory and
//! page-table entries each mapping depends on, the frames its walks used (to
//! trace), and its 4 MiB (PSE) mappings.
//!
//! [`SpaceMaps`] keeps that state consistent with the views it describes:
//! dropping the mappings that depended on changed entries ([`SpaceMaps::drop_entries`]),
//! protecting every mapping of a frame ([`SpaceMaps::protect`]), and moving the
//! kernel view's state from one address space to the next
//! ([`SpaceMaps::take_kernel_view`], [`SpaceMaps::rebind`], [`SpaceMaps::absorb`]).
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

/// One address space's shadow state (its views live with it, or in the `Vm` for
/// the current space).
pub struct SpaceMaps {
    /// Frame → the places it is mapped, for protection.
    pub rmap: HashMap<u32, Places>,
    pub mappings: HashMap<Place, Mapping>,
    /// Physical address of a guest PDE or PTE → the mappings whose walk used it.
    pub deps: HashMap<u32, Places>,
    /// Frames holding the page directories and page tables its walks used.
    pub traced: HashSet<u32>,
    /// Page directories and tables code was fetched through in this space: the
    /// code map's entries learnt through them stay valid only while they are
    /// traced, so each counts as one dependency in `dep_frames` until the space
    /// goes.
    pub code_tables: HashSet<u32>,
    /// 4 MiB guest pages mapped whole, by place (view, region base).
    pub large: HashMap<Place, LargeMapping>,
    /// Physical address of a PDE → the large mappings it made.
    pub large_deps: HashMap<u32, Places>,
    /// Physical 4 MiB region (frame >> 10) → the large mappings of it.
    pub large_rmap: HashMap<u32, Places>,
    /// Page-table frame → how many of its entries are keys of `deps` or
    /// `large_deps`, plus one if it is in `code_tables`: a write to a frame not
    /// here needs no look-up entry by entry.
    pub dep_frames: HashMap<u32, u32>,
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
    /// its entry became present, or was retargeted and invlpg'd): one more
    /// dependency in `dep_frames`, so the table stays traced when its last
    /// mapping goes. A guest that keeps changing entries of the same table
    /// writes it traced, and the page is mapped at once; untracing it and
    /// tracing it again would cost two host calls each time.
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

impl Default for SpaceMaps {
    fn default() -> Self {
        Self {
            rmap: HashMap::new(),
            mappings: HashMap::new(),
            deps: HashMap::new(),
            traced: HashSet::new(),
            code_tables: HashSet::new(),
            large: HashMap::new(),
            large_deps: HashMap::new(),
            large_rmap: HashMap::new(),
            dep_frames: HashMap::new(),
            untraced: Vec::new(),
            hot_table: None,
            lent_kernel_view: false,
            kernel_view_from: None,
        }
    }
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

impl SpaceMaps {
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

    /// Drops the mappings that depended on any of the guest `entries`, unmapping
    /// consecutive pages with one host call; returns their linear pages.
    pub fn drop_entries(&mut self, view: &mut View, user_view: &mut View, entries: &[u32]) -> Result<(), ViewError> {
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
                self.uncount_dep_key(entry);
                places.extend(list.into_iter().filter(|p| self.mappings.contains_key(p)));
            }
            if let Some(large) = self.large_deps.remove(&entry) {
                self.uncount_dep_key(entry);
                for place in large {
                    if self.forget_large(place) {
                        pick_view(view, user_view, place.0).unmap(place.1, LARGE)?;
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
            let (user, start) = places[i];
            let mut j = i + 1;
            while j < places.len() && places[j] == (user, start.wrapping_add(0x1000 * (j - i) as u32)) {
                j += 1;
            }
            if j - i == 1 {
                // Most likely made present again soon, at the same frame.
                pick_view(view, user_view, user).park(start)?;
            } else {
                pick_view(view, user_view, user).unmap(start, 0x1000 * (j - i) as u64)?;
            }
            i = j;
        }
        Ok(())
    }

    /// Sets the host protection of every mapping of `frame`: read-only, or what
    /// the guest allows.
    pub fn protect(&self, view: &mut View, user_view: &mut View, frame: u32, writable: bool) -> Result<(), ViewError> {
        for place in self.rmap.get(&frame).into_iter().flatten() {
            let allowed = self.mappings.get(place).is_some_and(|m| m.writable);
            pick_view(view, user_view, place.0).protect_page(place.1, writable && allowed)?;
        }
        for place in self.large_rmap.get(&(frame >> 10)).into_iter().flatten() {
            if let Some(l) = self.large.get(place) {
                let linear = place.1 + ((frame - l.frame0) << 12);
                pick_view(view, user_view, place.0).protect_page(linear, writable && l.writable)?;
            }
        }
        Ok(())
    }

    /// `entry` became a key of one of the dependency maps.
    pub fn count_dep_key(&mut self, entry: u32) {
        *self.dep_frames.entry(entry >> 12).or_insert(0) += 1;
    }

    /// `entry` stopped being a key of one of the dependency maps.
    /// When the last dependency on a frame goes, the space stops tracing it
    /// (a page table the guest took down, and perhaps reuses as data).
    fn uncount_dep_key(&mut self, entry: u32) {
        let frame = entry >> 12;
        if let Some(n) = self.dep_frames.get_mut(&frame) {
            *n -= 1;
            if *n == 0 {
                self.dep_frames.remove(&frame);
                if self.traced.remove(&frame) {
                    self.untraced.push(frame);
                }
            }
        }
    }

    /// Makes `frame` the hot table (see `hot_table`); the one before may stop
    /// being traced (`untraced`).
    pub fn set_hot_table(&mut self, frame: u32) {
        if self.hot_table == Some(frame) {
            return;
        }
        self.count_dep_key(frame << 12);
        if let Some(old) = self.hot_table.replace(frame) {
            self.uncount_dep_key(old << 12);
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

    /// Host mappings this space holds (each may be a host VMA).
    pub fn host_mappings(&self) -> usize {
        self.mappings.len() + self.large.values().map(|l| l.runs as usize).sum::<usize>()
    }
}

/// Page-directory entries of one directory.
pub type Directory = [u32; 1024];

impl SpaceMaps {
    /// Moves out everything about the kernel view's mappings (places `(false, _)`).
    pub fn take_kernel_view(&mut self) -> SpaceMaps {
        let kernel = |p: &Place| !p.0;
        let mut out = SpaceMaps::default();
        self.mappings.retain(|p, m| {
            if kernel(p) {
                out.mappings.insert(*p, *m);
            }
            !kernel(p)
        });
        self.large.retain(|p, l| {
            if kernel(p) {
                out.large.insert(*p, *l);
            }
            !kernel(p)
        });
        for (source, target) in [(&mut self.rmap, &mut out.rmap), (&mut self.deps, &mut out.deps)] {
            split_lists(source, target, kernel);
        }
        split_lists(&mut self.large_deps, &mut out.large_deps, kernel);
        split_lists(&mut self.large_rmap, &mut out.large_rmap, kernel);
        self.recount_dep_frames();
        out.recount_dep_frames();
        out
    }

    /// Rebuilds `dep_frames` from the dependency keys, the code tables and the hot table.
    fn recount_dep_frames(&mut self) {
        self.dep_frames.clear();
        let keys: Vec<u32> = self.deps.keys().chain(self.large_deps.keys()).copied().collect();
        for key in keys {
            self.count_dep_key(key);
        }
        let tables: Vec<u32> = self.code_tables.iter().copied().chain(self.hot_table).collect();
        for table in tables {
            self.count_dep_key(table << 12);
        }
    }

    /// Makes kernel-view state taken from the space whose page directory is at
    /// `from` valid for the one at `to`: mappings under entries equal in both move
    /// their dependency to `to`'s entry, the rest are dropped from `view` (host
    /// calls batched). Returns the frames this state now depends on (to trace).
    pub fn rebind(
        &mut self,
        view: &mut View,
        other: &mut View,
        (from, old): (u32, &Directory),
        (to, new): (u32, &Directory),
    ) -> Result<Vec<u32>, ViewError> {
        let in_from = |key: u32| key >> 12 == from >> 12;
        let mut keys: Vec<u32> = self.deps.keys().chain(self.large_deps.keys()).copied().filter(|&k| in_from(k)).collect();
        keys.sort_unstable();
        keys.dedup();
        let (mut keep, mut drop) = (Vec::new(), Vec::new());
        for key in keys {
            let i = ((key & 0xfff) / 4) as usize;
            // A key in the directory frame used as a page table (a recursive
            // mapping) covers pages outside its region: never carried over.
            let in_region = |p: &Place| (p.1 >> 22) as usize == i;
            let only_region = self.deps.get(&key).into_iter().chain(self.large_deps.get(&key)).flatten().all(in_region);
            if old[i] == new[i] && only_region {
                keep.push(key);
            } else {
                drop.push(key);
            }
        }
        self.drop_entries(view, other, &drop)?;
        for key in keep {
            let moved = (to & !0xfff) | (key & 0xfff);
            if let Some(list) = self.deps.remove(&key) {
                self.uncount_dep_key(key);
                self.deps.entry(moved).or_default().extend(list);
                self.count_dep_key(moved);
            }
            if let Some(list) = self.large_deps.remove(&key) {
                self.uncount_dep_key(key);
                self.large_deps.entry(moved).or_default().extend(list);
                self.count_dep_key(moved);
            }
        }
        self.recount_dep_frames();
        self.untraced.clear();
        self.traced = self.dep_frames.keys().copied().collect();
        Ok(self.traced.iter().copied().collect())
    }

    /// Adds `other`'s state (places this space does not have) to this space.
    pub fn absorb(&mut self, other: SpaceMaps) {
        self.mappings.extend(other.mappings);
        self.large.extend(other.large);
        for (k, v) in other.rmap {
            self.rmap.entry(k).or_default().extend(v);
        }
        for (k, v) in other.deps {
            self.deps.entry(k).or_default().extend(v);
        }
        for (k, v) in other.large_deps {
            self.large_deps.entry(k).or_default().extend(v);
        }
        for (k, v) in other.large_rmap {
            self.large_rmap.entry(k).or_default().extend(v);
        }
        self.traced.extend(other.traced);
        self.recount_dep_frames();
    }
}

/// Moves the places `take` selects from every list of `source` into `target`.
fn split_lists(
    source: &mut hashbrown::HashMap<u32, Places>,
    target: &mut hashbrown::HashMap<u32, Places>,
    take: impl Fn(&Place) -> bool,
) {
    source.retain(|key, list| {
        let (taken, kept): (Places, Places) = list.iter().copied().partition(|p| take(p));
        if !taken.is_empty() {
            target.entry(*key).or_default().extend(taken);
        }
        *list = kept;
        !list.is_empty()
    });
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
        assert_eq!(sorted(&maps.dep_frames), vec![(0x10, 2), (0x11, 3), (0x12, 1)]);

        // An entry in a frame nothing depends on: no change.
        maps.drop_entries(&mut views.0, &mut views.1, &[0x3_0000]).expect("drop");
        assert_eq!(maps.mappings.len(), 4);

        let unmaps = views.0.calls.unmaps;
        maps.drop_entries(&mut views.0, &mut views.1, &[KERNEL_PDE]).expect("drop");
        assert_eq!(views.0.calls.unmaps, unmaps + 1, "three consecutive pages: one host call");
        assert_eq!(maps.mappings.keys().copied().collect::<Vec<_>>(), vec![USER_PAGE]);
        assert_eq!(lists(&maps.rmap), vec![(4, vec![USER_PAGE])]);
        for i in 0..3 {
            assert_eq!(backing(&mut views, kernel_page(i)), None, "page {i} unmapped");
        }
        assert_eq!(backing(&mut views, USER_PAGE), Some((0x4000, true)));
        assert!(!maps.deps.contains_key(&KERNEL_PDE));
        assert_eq!(sorted(&maps.dep_frames), vec![(0x10, 1), (0x11, 3), (0x12, 1)]);
        assert!(maps.untraced.is_empty());

        maps.drop_entries(&mut views.0, &mut views.1, &[KERNEL_PT, KERNEL_PT + 4, KERNEL_PT + 8]).expect("drop");
        assert_eq!(sorted(&maps.dep_frames), vec![(0x10, 1), (0x12, 1)]);
        assert_eq!(maps.untraced, vec![KERNEL_PT >> 12]);
        assert!(!maps.traced.contains(&(KERNEL_PT >> 12)));
        assert_eq!(maps.mappings.len(), 1, "the user page stays");
    }

    /// A single page dropped by its PTE is parked, its neighbours stay.
    #[test]
    fn drop_entries_one_pte() {
        let (fd, mut views) = (ram(), views());
        let mut maps = populated(&mut views, &fd);
        maps.drop_entries(&mut views.0, &mut views.1, &[KERNEL_PT + 4]).expect("drop");
        assert!(!maps.mappings.contains_key(&kernel_page(1)));
        assert!(!maps.rmap.contains_key(&2));
        assert_eq!(backing(&mut views, kernel_page(1)), None);
        assert_eq!(backing(&mut views, kernel_page(0)), Some((0x1000, true)));
        assert_eq!(backing(&mut views, kernel_page(2)), Some((0x3000, true)));
        assert_eq!(maps.dep_frames.get(&0x11), Some(&2));
    }

    /// Moving the kernel view's state out leaves only user places; adding it
    /// back gives the same state.
    #[test]
    fn take_kernel_view_and_absorb_round_trip() {
        let (fd, mut views) = (ram(), views());
        let mut maps = populated(&mut views, &fd);
        maps.record_large((false, 0xc040_0000), LargeMapping { frame0: 0x400, writable: true, runs: 1 }, PD + 0x301 * 4);
        let before = (sorted(&maps.mappings), lists(&maps.rmap), lists(&maps.deps), sorted(&maps.dep_frames));
        let large_before = (maps.large.len(), lists(&maps.large_deps), lists(&maps.large_rmap));

        let kernel = maps.take_kernel_view();
        assert_eq!(maps.mappings.keys().copied().collect::<Vec<_>>(), vec![USER_PAGE]);
        assert!(maps.large.is_empty() && maps.large_deps.is_empty() && maps.large_rmap.is_empty());
        assert!(maps.rmap.values().chain(maps.deps.values()).flatten().all(|p| p.0), "user places only");
        assert!(kernel.rmap.values().chain(kernel.deps.values()).flatten().all(|p| !p.0), "kernel places only");
        assert_eq!(sorted(&maps.dep_frames), vec![(0x10, 1), (0x12, 1)]);
        assert_eq!(sorted(&kernel.dep_frames), vec![(0x10, 2), (0x11, 3)]);
        assert_eq!(kernel.mappings.len(), 3);

        maps.absorb(kernel);
        assert_eq!((sorted(&maps.mappings), lists(&maps.rmap), lists(&maps.deps), sorted(&maps.dep_frames)), before);
        assert_eq!((maps.large.len(), lists(&maps.large_deps), lists(&maps.large_rmap)), large_before);
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
        let mut frames = kernel.rebind(&mut views.0, &mut views.1, (PD, &old), (new_pd, &new)).expect("rebind");
        frames.sort_unstable();
        assert!(frames.contains(&(new_pd >> 12)) && frames.contains(&(KERNEL_PT >> 12)), "{frames:x?}");
        assert!(!frames.contains(&(PD >> 12)), "{frames:x?}");
        assert_eq!(kernel.deps.get(&(new_pd + 0x300 * 4)).map(|p| p.len()), Some(3), "moved to the new directory");
        assert!(!kernel.deps.contains_key(&KERNEL_PDE) && !kernel.deps.contains_key(&other_pde));
        assert!(!kernel.mappings.contains_key(&other_page), "its PDE differs");
        assert_eq!(backing(&mut views, other_page), None);
        assert_eq!(kernel.mappings.len(), 3);
        assert_eq!(backing(&mut views, kernel_page(0)), Some((0x1000, true)));
        assert_eq!(kernel.traced.iter().copied().collect::<HashSet<_>>(), frames.iter().copied().collect());
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
        assert_eq!(lists(&maps.large_rmap), vec![(1, vec![a, b])]);
        assert_eq!(lists(&maps.large_deps), vec![(USER_PDE, vec![b]), (KERNEL_PDE, vec![a])]);
        assert_eq!(sorted(&maps.dep_frames), vec![(0x10, 2)]);
        assert_eq!(maps.host_mappings(), 4);
        assert!(maps.forget_large(a));
        assert!(!maps.forget_large(a));
        assert_eq!(lists(&maps.large_rmap), vec![(1, vec![b])]);
        assert!(maps.forget_large(b));
        assert!(maps.large_rmap.is_empty() && maps.large.is_empty());
        assert_eq!(maps.host_mappings(), 0);
    }
}
