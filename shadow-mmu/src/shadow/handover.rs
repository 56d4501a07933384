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
//! The state moves with `SpaceMaps::take_kernel_view`, `rebind` and `absorb`
//! (`crate::space`); here the views are swapped and the traced frames counted.
//!
//! Measured on the fork+exec loop (Debian 6.1, busybox; per fork+exec): host
//! system calls 820 → 600, host signals 190 → 150, bt86 CPU time 7.5 → 6.1 ms.

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
        let frames = moved.rebind(&mut incoming.view, &mut incoming.user_view, (old.0, &from), (incoming.key.0, &to))?;
        let fresh: Vec<u32> = frames.into_iter().filter(|f| !incoming.maps.traced.contains(f)).collect();
        incoming.maps.absorb(moved);
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
