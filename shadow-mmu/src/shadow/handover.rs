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
//! view as a stand-in. If it runs again before anything else took the view on,
//! the stand-in fills on demand; but a parent that forked usually runs again
//! only after its child has exec'd (handing the view on once more) and exited:
//! then the space holding the view, found by following the handovers, gives it
//! back (`reclaim_kernel_view`). Without that, a shell's fork+exec loop refilled
//! the parent's kernel view page by page at every fork: about 60 hidden faults
//! and 220 host mappings per fork+exec.
//! Switches between cached spaces are unchanged: handing the view back and forth
//! there (text_poke's temporary mm, a shell and its child) would cost a walk over
//! the view's mappings at every switch (measured: boot 2.4 s → 5 s).
//!
//! The state moves with `SpaceMaps::take_kernel_view`, `ViewMaps::rebind` and
//! `SpaceMaps::absorb` (`crate::space`); here the views are swapped and the
//! traced frames counted. Each view's state is kept apart in `SpaceMaps`, so a
//! move takes it whole: sorting it out of one shared map cost 270 µs per move
//! (a fifth of a fork+exec); now 39 µs, mostly unmapping the user half.
//!
//! Measured on the fork+exec loop (Debian 6.1, busybox; per fork+exec): host
//! system calls 820 → 600, host signals 190 → 150, bt86 CPU time 7.5 → 6.1 ms.
//! Giving the view back: 300 fork+exec 1.41 s → 1.16 s (QEMU TCG: 1.01 s).

use super::Shadow;
use crate::guest::GuestMemory;
use crate::space::{Directory, IdleSpace, SpaceKey};
use crate::view::ViewError;

impl Shadow {
    /// Switching from `old` to the new space `incoming`: `incoming` takes the
    /// current kernel view with what holds under its page directory, and the
    /// current space (about to go idle) gets `incoming`'s empty one. Only between
    /// spaces with the same CR0.WP (writability was decided under it).
    /// Returns the frames to protect once `incoming` is current (no space traced
    /// them before), or None if the view was not handed over.
    pub(super) fn hand_over_kernel_view(&mut self, ram: &dyn GuestMemory, old: SpaceKey, incoming: &mut IdleSpace) -> Result<Option<Vec<u32>>, ViewError> {
        if old.1 != incoming.key.1 || old.0 >> 12 == incoming.key.0 >> 12 {
            return Ok(None);
        }
        let (Some(from), Some(to)) = (directory(ram, old.0), directory(ram, incoming.key.0)) else { return Ok(None) };
        let mut moved = self.maps.take_kernel_view();
        core::mem::swap(&mut self.view, &mut incoming.view);
        let frames = moved.rebind(&mut incoming.view, (old.0, &from), (incoming.key.0, &to))?;
        let fresh: Vec<u32> = frames.iter().copied().filter(|f| !incoming.maps.traced.contains(f)).collect();
        incoming.maps.absorb(moved, &frames);
        let mut newly = Vec::new();
        for &f in &fresh {
            if !self.is_traced(f) {
                newly.push(f);
            }
            self.count_trace(f);
        }
        self.kernel_handovers += 1;
        Ok(Some(newly))
    }
}

impl Shadow {
    /// The current space `key` is being left: if it had lent its kernel view, it
    /// has run on the stand-in since, which is its view now, and what it lent
    /// belongs to the borrowers.
    pub(super) fn note_ran(&mut self, key: SpaceKey) {
        if !core::mem::take(&mut self.maps.lent_kernel_view) {
            return;
        }
        for s in &mut self.idle {
            if s.maps.kernel_view_from == Some(key) {
                s.maps.kernel_view_from = None;
            }
        }
    }

    /// `gone` leaves the cache: a space holding the kernel view it lent on now
    /// holds it for `gone`'s own lender (a fork's child is evicted while its
    /// exec runs), so the parent can still get it back.
    pub(super) fn unlink_lender(&mut self, gone: &IdleSpace) {
        let to = if gone.maps.lent_kernel_view { gone.maps.kernel_view_from } else { None };
        let maps = self.idle.iter_mut().map(|s| &mut s.maps).chain(core::iter::once(&mut self.maps));
        for m in maps {
            if m.kernel_view_from == Some(gone.key) {
                m.kernel_view_from = to;
            }
        }
    }

    /// Switching from `old` to `lender`, a space that handed its kernel view to
    /// a new space and has not run since (a parent that forked; its child has
    /// exec'd and exited since): the space holding that view now, found by
    /// following the handovers (the child, then its exec), gives it back, with
    /// what holds under `lender`'s directory, instead of `lender` refilling its
    /// stand-in page by page at every fork. The holder gets the stand-in (it is
    /// usually dead). Returns the frames to protect, as `hand_over_kernel_view`.
    pub(super) fn reclaim_kernel_view(&mut self, ram: &dyn GuestMemory, old: SpaceKey, lender: &mut IdleSpace) -> Result<Option<Vec<u32>>, ViewError> {
        lender.maps.lent_kernel_view = false;
        let mut key = lender.key;
        for _ in 0..=self.idle.len() {
            let holder = if self.maps.kernel_view_from == Some(key) {
                None
            } else {
                match self.idle.iter().position(|s| s.maps.kernel_view_from == Some(key)) {
                    Some(j) => Some(j),
                    None => return Ok(None),
                }
            };
            let (lent, holder_key) = match holder {
                None => (self.maps.lent_kernel_view, old),
                Some(j) => (self.idle[j].maps.lent_kernel_view, self.idle[j].key),
            };
            if lent {
                key = holder_key;
                continue;
            }
            if holder_key.1 != lender.key.1 {
                return Ok(None);
            }
            drop(lender.maps.take_kernel_view());
            lender.view.unmap_all()?;
            let handed = match holder {
                None => self.hand_over_kernel_view(ram, old, lender)?,
                Some(j) => {
                    // Handed over from an idle space: make it current for the move.
                    let mut h = self.idle.remove(j);
                    self.swap_current(&mut h);
                    let handed = self.hand_over_kernel_view(ram, h.key, lender);
                    self.swap_current(&mut h);
                    self.idle.insert(j, h);
                    handed?
                }
            };
            if handed.is_some() {
                self.kernel_reclaims += 1;
            }
            return Ok(handed);
        }
        Ok(None)
    }

    /// Exchanges the current space's views and maps with `other`'s (its key is
    /// the caller's to track).
    fn swap_current(&mut self, other: &mut IdleSpace) {
        core::mem::swap(&mut self.view, &mut other.view);
        core::mem::swap(&mut self.user_view, &mut other.user_view);
        core::mem::swap(&mut self.maps, &mut other.maps);
    }
}

/// The 1024 entries of the page directory CR3 value `cr3` points at, if in RAM.
fn directory(ram: &dyn GuestMemory, cr3: u32) -> Option<Directory> {
    let mut bytes = [0u8; 4096];
    if !ram.read(cr3 & !0xfff, &mut bytes) {
        return None;
    }
    let mut d = [0u32; 1024];
    for (e, b) in d.iter_mut().zip(bytes.chunks_exact(4)) {
        *e = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    Some(d)
}
