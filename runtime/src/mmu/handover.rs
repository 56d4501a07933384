//! The kernel view follows the CPU into address spaces that have none.
//!
//! Every process of a guest kernel maps the kernel the same way: its page
//! directory's kernel entries are copies of one another and point at the same
//! page tables. Filling each new space's kernel view again, page by page, is what
//! made a fork or an exec cost hundreds of hidden faults and host mappings. So
//! when the CPU switches to a space the cache does not hold (a new process, an
//! exec), that space takes the outgoing space's kernel view, and with it the
//! mappings that still hold there:
//!
//! - a mapping under a page-directory entry that is the same in both directories
//!   stays; its dependency on that entry moves to the new directory's copy (PTE
//!   dependencies are on shared page tables and do not move);
//! - every other mapping (the user half, seen from the kernel) is dropped.
//!
//! The outgoing space keeps its user view and gets the new space's empty kernel
//! view, which fills on demand if it runs again (a parent after its child).
//! Switches between cached spaces are unchanged: handing the view back and forth
//! there (text_poke's temporary mm, a shell and its child) would cost a walk over
//! the view's mappings at every switch (measured: boot 2.4 s → 5 s).
//!
//! Measured on the fork+exec loop (Debian 6.1, busybox; per fork+exec): host
//! system calls 820 → 600, host signals 190 → 150, bt86 CPU time 7.5 → 6.1 ms.

use super::{IdleSpace, Place, SpaceKey, SpaceMaps};
use crate::vm::Vm;
use crate::vm::VmError;
use bt86_shadow_mmu::View;

/// Page-directory entries of one directory.
pub(super) type Directory = [u32; 1024];

impl SpaceMaps {
    /// Moves out everything about the kernel view's mappings (places `(false, _)`).
    pub(super) fn take_kernel_view(&mut self) -> SpaceMaps {
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
    pub(super) fn rebind(
        &mut self,
        view: &mut View,
        other: &mut View,
        (from, old): (u32, &Directory),
        (to, new): (u32, &Directory),
    ) -> Result<Vec<u32>, VmError> {
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
    pub(super) fn absorb(&mut self, other: SpaceMaps) {
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
    source: &mut hashbrown::HashMap<u32, Vec<Place>>,
    target: &mut hashbrown::HashMap<u32, Vec<Place>>,
    take: impl Fn(&Place) -> bool,
) {
    source.retain(|key, list| {
        let (taken, kept): (Vec<Place>, Vec<Place>) = list.iter().partition(|p| take(p));
        if !taken.is_empty() {
            target.entry(*key).or_default().extend(taken);
        }
        *list = kept;
        !list.is_empty()
    });
}

impl Vm {
    /// Switching from `old` to the new space `incoming`: `incoming` takes the
    /// current kernel view with what holds under its page directory, and the
    /// current space (about to go idle) gets `incoming`'s empty one. Only between
    /// spaces with the same CR0.WP (writability was decided under it).
    /// Returns the frames to protect once `incoming` is current (no space traced
    /// them before), or None if the view was not handed over.
    pub(super) fn hand_over_kernel_view(&mut self, old: SpaceKey, incoming: &mut IdleSpace) -> Result<Option<Vec<u32>>, VmError> {
        if old.1 != incoming.key.1 || old.0 >> 12 == incoming.key.0 >> 12 {
            return Ok(None);
        }
        let (Some(from), Some(to)) = (self.directory(old.0), self.directory(incoming.key.0)) else { return Ok(None) };
        let mut moved = self.shadow.maps.take_kernel_view();
        core::mem::swap(&mut self.view, &mut incoming.view);
        let frames = moved.rebind(&mut incoming.view, &mut incoming.user_view, (old.0, &from), (incoming.key.0, &to))?;
        let fresh: Vec<u32> = frames.into_iter().filter(|f| !incoming.maps.traced.contains(f)).collect();
        incoming.maps.absorb(moved);
        let mut newly = Vec::new();
        for &f in &fresh {
            if !self.shadow.is_traced(f) {
                newly.push(f);
            }
            self.shadow.count_trace(f);
        }
        self.shadow.kernel_handovers += 1;
        Ok(Some(newly))
    }

    /// The 1024 entries of the page directory CR3 value `cr3` points at, if in RAM.
    fn directory(&self, cr3: u32) -> Option<Directory> {
        let mut bytes = [0u8; 4096];
        self.ram.read(cr3 & !0xfff, &mut bytes).ok()?;
        let mut d = [0u32; 1024];
        for (e, b) in d.iter_mut().zip(bytes.chunks_exact(4)) {
            *e = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        Some(d)
    }
}
