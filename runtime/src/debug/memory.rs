//! Guest memory as a debugger reads and writes it: by linear address, through
//! the guest's page tables when paging is on. Unlike the guest's own accesses,
//! the debugger's reach every present page whatever its protection, set no
//! accessed or dirty bit, and fail (rather than fault or read the empty bus)
//! where nothing is mapped or no RAM is. Writes keep the engine coherent the way
//! the VMM's own writes for the guest do: translated code on a frame written is
//! dropped, and a page-table entry written drops the shadow mappings made from it.

use super::DebugError;
use crate::memory::GuestRam;
use crate::vm::{Vm, VmError};
use bt86_shadow_mmu::walk::{self, Access, PhysMem};

/// Guest-physical memory for the debugger's page walks: RAM only, and never
/// written (an accessed or dirty bit the walk would set stays as the guest left
/// it, so looking changes nothing).
struct Untouched<'a>(&'a GuestRam);

impl PhysMem for Untouched<'_> {
    fn read_u32(&mut self, phys: u32) -> Option<u32> {
        let mut b = [0u8; 4];
        self.0.read(phys, &mut b).ok()?;
        Some(u32::from_le_bytes(b))
    }

    fn write_u32(&mut self, _phys: u32, _v: u32) -> bool {
        true
    }
}

impl Vm {
    /// The guest-physical address of `linear` for the debugger, if a present
    /// page with RAM behind it is there.
    fn debug_phys(&self, linear: u32) -> Option<u32> {
        let phys = if self.paging() {
            let t = walk::walk(&mut Untouched(&self.ram), &self.paging_mode(), linear, Access::KERNEL_READ).ok()?;
            t.phys_page | (linear & 0xfff)
        } else {
            linear
        };
        self.ram.contains(phys, 1).then_some(phys)
    }

    /// Reads guest memory at `linear` into `buf` up to the first byte that is
    /// not mapped; returns how many bytes were read.
    pub fn debug_read(&self, linear: u32, buf: &mut [u8]) -> usize {
        let mut read = 0;
        for (at, off, n) in crate::engine::page_pieces(linear, buf.len()) {
            match self.debug_phys(at) {
                Some(phys) if self.ram.read(phys, &mut buf[off..off + n]).is_ok() => read += n,
                _ => break,
            }
        }
        read
    }

    /// Writes `data` to guest memory at `linear`; nothing is written unless all
    /// of it is mapped.
    pub fn debug_write(&mut self, linear: u32, data: &[u8]) -> Result<(), DebugError> {
        let targets = crate::engine::page_pieces(linear, data.len())
            .map(|(at, off, n)| self.debug_phys(at).map(|phys| (phys, off, n)).ok_or(DebugError::Unmapped(at)))
            .collect::<Result<Vec<_>, _>>()?;
        for (phys, off, n) in targets {
            self.ram.write(phys, &data[off..off + n]).map_err(VmError::from)?;
            self.debugger_wrote(phys, n)?;
        }
        Ok(())
    }

    /// After the debugger wrote `len` bytes at `phys` (within one frame): drop the
    /// frame's translated code and let the guest write it again, and follow any
    /// page-table entry written (as `with_machine` does for emulated stores).
    fn debugger_wrote(&mut self, phys: u32, len: usize) -> Result<(), VmError> {
        let frame = phys >> 12;
        self.tr.invalidate_frame(frame)?;
        if self.protected.remove(&frame) {
            self.protect_frame(frame, true)?;
        }
        if self.paging() && self.shadow.is_traced(frame) {
            let end = u64::from(phys) + len as u64;
            let mut entry = phys & !3;
            while u64::from(entry) < end {
                self.entry_changed(entry)?;
                entry += 4;
            }
        }
        Ok(())
    }
}
