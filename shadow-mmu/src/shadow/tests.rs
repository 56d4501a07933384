//! The policy against a fake guest RAM (a memfd, as the VMM's) and real views.

use super::{Fault, Shadow};
use crate::guest::{Guest, GuestMemory};
use crate::view::View;
use crate::walk::{error_code, Access, PagingMode, PTE_A, PTE_D, PTE_P, PTE_RW, PTE_US};
use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;

/// Guest RAM of 64 frames in a memfd, the void page after it.
struct FakeRam {
    file: File,
}

const RAM: u32 = 0x4_0000;

impl FakeRam {
    fn new() -> Self {
        let fd = memfd_create("shadow-test", MemfdFlags::CLOEXEC).expect("memfd");
        ftruncate(&fd, u64::from(RAM) + 0x1000).expect("size");
        let file = File::from(fd);
        file.write_all_at(&[0xff; 0x1000], u64::from(RAM)).expect("void page");
        Self { file }
    }

    fn set(&self, phys: u32, v: u32) {
        self.write_or_drop(phys, &v.to_le_bytes());
    }

    fn get(&self, phys: u32) -> u32 {
        let mut b = [0u8; 4];
        self.read_or_ones(phys, &mut b);
        u32::from_le_bytes(b)
    }
}

impl GuestMemory for FakeRam {
    fn size(&self) -> u32 {
        RAM
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    fn void_offset(&self) -> u32 {
        RAM
    }

    fn read_or_ones(&self, phys: u32, buf: &mut [u8]) {
        buf.fill(0xff);
        let n = RAM.saturating_sub(phys).min(buf.len() as u32) as usize;
        self.file.read_exact_at(&mut buf[..n], u64::from(phys)).expect("read");
    }

    fn write_or_drop(&self, phys: u32, data: &[u8]) {
        let n = RAM.saturating_sub(phys).min(data.len() as u32) as usize;
        self.file.write_all_at(&data[..n], u64::from(phys)).expect("write");
    }

    fn read(&self, phys: u32, buf: &mut [u8]) -> bool {
        self.contains(phys, buf.len()) && self.file.read_exact_at(buf, u64::from(phys)).is_ok()
    }
}

/// Page directories at frames 0x10 (space A) and 0x20 (space B); both map
/// linear 0–4 MiB through the page table at frame 0x11, A maps 4–8 MiB through
/// the table at 0x12.
const PD_A: u32 = 0x1_0000;
const PD_B: u32 = 0x2_0000;
const PT: u32 = 0x1_1000;
const PT2: u32 = 0x1_2000;
const USER_RW: u32 = PTE_P | PTE_RW | PTE_US;

/// Linear 0 and 0x1000: frames 1 and 2, used and written (A, D); 0x2000: frame
/// 3, read-only, never used; 0x3000: the page table itself; 4 MiB: frame 4.
fn tables(ram: &FakeRam) {
    for pd in [PD_A, PD_B] {
        ram.set(pd, PT | USER_RW | PTE_A);
    }
    ram.set(PD_A + 4, PT2 | USER_RW | PTE_A);
    ram.set(PT, 0x1000 | USER_RW | PTE_A | PTE_D);
    ram.set(PT + 4, 0x2000 | USER_RW | PTE_A | PTE_D);
    ram.set(PT + 8, 0x3000 | PTE_P | PTE_US);
    ram.set(PT + 12, PT | USER_RW | PTE_A | PTE_D);
    ram.set(PT2, 0x4000 | USER_RW | PTE_A | PTE_D);
}

/// The guest with paging and CR0.WP on, CR3 = `cr3`.
fn guest<'a>(ram: &'a FakeRam, code: &'a BTreeSet<u32>, cr3: u32) -> Guest<'a> {
    let mode = PagingMode { cr3, wp: true, pse: false, pge: false };
    Guest { ram, code, mode, paging: true, space: (0x8001_0000, cr3, 0) }
}

fn shadow() -> Shadow {
    Shadow::new(View::reserve().expect("kernel view"), View::reserve().expect("user view"))
}

fn count(shadow: &Shadow, frame: u32) -> Option<u32> {
    shadow.traced_count.get(&frame).copied()
}

/// A hidden fault maps the page (and its used neighbours) and sets A; a walk
/// the guest refuses is a true fault with the #PF error code, mapping nothing;
/// a write to a traced page table runs through with the page's contents kept.
#[test]
fn hidden_and_true_faults() {
    let (ram, code, mut shadow) = (FakeRam::new(), BTreeSet::new(), shadow());
    tables(&ram);
    let g = guest(&ram, &code, PD_A);

    assert_eq!(shadow.fault(&g, 0x10, false, true).expect("fault"), Fault::Retry);
    assert_eq!((shadow.hidden_faults, shadow.true_faults), (1, 0));
    assert_eq!(shadow.cached_frame(0x10, true), Some((1, true)));
    assert_eq!(shadow.cached_frame(0x1000, true), Some((2, true)), "a used neighbour, prefetched");
    assert_eq!(shadow.cached_frame(0x2000, true), None, "not used yet: its A bit stays clear");
    assert_eq!(shadow.cached_frame(0x10, false), None, "the kernel view is another view");
    assert!(shadow.is_traced(PD_A >> 12) && shadow.is_traced(PT >> 12));

    let pf = shadow.fault(&g, 0x80_0000, false, true).expect("fault");
    assert_eq!(pf, Fault::PageFault(error_code(false, Access::USER_READ)));
    let pf = shadow.fault(&g, 0x2000, true, true).expect("fault");
    assert_eq!(pf, Fault::PageFault(error_code(true, Access::USER_WRITE)));
    assert_eq!((shadow.hidden_faults, shadow.true_faults), (1, 2));
    assert_eq!(shadow.cached_frame(0x2000, true), None);
    assert_eq!(ram.get(PT + 8) & PTE_A, 0, "a walk that faults sets no A bit");

    assert_eq!(shadow.fault(&g, 0x2000, false, true).expect("fault"), Fault::Retry);
    assert_ne!(ram.get(PT + 8) & PTE_A, 0);
    assert_eq!(shadow.cached_frame(0x2000, true), Some((3, false)));

    let Fault::Write(w) = shadow.fault(&g, 0x3000, true, true).expect("fault") else { panic!("not a write-through") };
    assert!(w.traced && !w.code && w.frame == PT >> 12);
    shadow.write_through(&g, w).expect("write through");
    assert_eq!(shadow.pending_trace.as_ref().map(|p| p.0), Some(PT >> 12));
    assert_eq!(shadow.trace_faults, 1);
}

/// A changed PTE drops the mappings whose walks used it, in the view too, and
/// nothing else.
#[test]
fn changed_entry_drops_only_its_dependents() {
    let (ram, code, mut shadow) = (FakeRam::new(), BTreeSet::new(), shadow());
    tables(&ram);
    let g = guest(&ram, &code, PD_A);
    shadow.fault(&g, 0, false, true).expect("fault");
    shadow.fault(&g, 0x40_0000, false, true).expect("fault");
    assert_eq!(shadow.cached_frame(0x1000, true), Some((2, true)));

    ram.set(PT, 0);
    shadow.entry_changed(&g, PT).expect("entry changed");
    assert_eq!(shadow.cached_frame(0, true), None);
    assert!(shadow.user_view.mirror_mut().backing_of(0).is_none(), "unmapped in the view");
    assert_eq!(shadow.cached_frame(0x1000, true), Some((2, true)));
    assert!(shadow.user_view.mirror_mut().backing_of(1).is_some());
    assert_eq!(shadow.cached_frame(0x40_0000, true), Some((4, true)));
    assert!(shadow.is_traced(PT >> 12), "its other entries are still used");
}

/// A page table both spaces walk is counted twice; when the guest rewrites
/// the idle space's page directory, that space goes, and so does its count.
#[test]
fn trace_counts_across_two_spaces() {
    let (ram, code, mut shadow) = (FakeRam::new(), BTreeSet::new(), shadow());
    tables(&ram);
    shadow.fault(&guest(&ram, &code, PD_A), 0, false, true).expect("fault in A");
    assert_eq!((count(&shadow, PD_A >> 12), count(&shadow, PT >> 12)), (Some(1), Some(1)));

    let g = guest(&ram, &code, PD_B);
    shadow.switch_space(&g, (PD_A, true), (PD_B, true)).expect("switch");
    assert_eq!((shadow.spaces_cached(), shadow.cr3_switches), (2, 1));
    assert_eq!(shadow.cached_frame(0, true), None, "B starts empty");
    shadow.fault(&g, 0, false, true).expect("fault in B");
    assert_eq!(count(&shadow, PT >> 12), Some(2));
    assert_eq!((count(&shadow, PD_A >> 12), count(&shadow, PD_B >> 12)), (Some(1), Some(1)));

    ram.set(PD_A + 8, 0);
    shadow.entry_changed(&g, PD_A + 8).expect("entry changed");
    assert_eq!((shadow.spaces_cached(), shadow.space_evictions), (1, 1));
    assert_eq!(count(&shadow, PT >> 12), Some(1), "B still walks it");
    assert!(!shadow.is_traced(PD_A >> 12));
    assert_eq!(shadow.cached_frame(0, true), Some((1, true)), "B keeps its mappings");
}

/// A store that keeps missing page tables becomes plain once, never twice.
#[test]
fn adaptive_stores() {
    let mut shadow = shadow();
    assert_eq!((0..4).map(|_| shadow.count_trace_fault(0x100)).collect::<Vec<_>>(), [false, false, true, false]);
    assert!(!(0..31).any(|_| shadow.adaptive_outcome(0x100, false)));
    assert!(!shadow.adaptive_outcome(0x100, true), "a hit starts over");
    assert!(!(0..31).any(|_| shadow.adaptive_outcome(0x100, false)));
    assert!(shadow.adaptive_outcome(0x100, false));
    let again: Vec<bool> = (0..3).map(|_| shadow.count_trace_fault(0x100)).collect();
    assert_eq!(again, [false, false, true], "tracing faults counted from zero again");
    assert!(!(0..64).any(|_| shadow.adaptive_outcome(0x100, false)), "made plain once only");
}

/// A parent forks (its kernel view goes to the child's new space), the child
/// execs (on to the exec's space) and exits to the parent: the parent takes
/// its kernel view back, with no fault; once it has run, nothing is reclaimed
/// for it again.
#[test]
fn a_parent_gets_its_kernel_view_back_from_its_exec_child() {
    const PD_C: u32 = 0x3_0000;
    let (ram, code, mut shadow) = (FakeRam::new(), BTreeSet::new(), shadow());
    tables(&ram);
    ram.set(PD_C, PT | USER_RW | PTE_A);
    let (a, b, c) = ((PD_A, true), (PD_B, true), (PD_C, true));
    shadow.fault(&guest(&ram, &code, PD_A), 0, false, false).expect("fault in A");
    assert_eq!(shadow.cached_frame(0, false), Some((1, true)));

    shadow.switch_space(&guest(&ram, &code, PD_B), a, b).expect("fork");
    assert_eq!(shadow.cached_frame(0, false), Some((1, true)), "handed to the child");
    shadow.switch_space(&guest(&ram, &code, PD_C), b, c).expect("exec");
    assert_eq!(shadow.cached_frame(0, false), Some((1, true)), "handed on to the exec");
    shadow.switch_space(&guest(&ram, &code, PD_A), c, a).expect("exit");
    assert_eq!(shadow.cached_frame(0, false), Some((1, true)), "back in the parent");
    assert_eq!((shadow.kernel_reclaims, shadow.hidden_faults), (1, 1));

    shadow.switch_space(&guest(&ram, &code, PD_C), a, c).expect("to C");
    assert_eq!(shadow.cached_frame(0, false), None, "C holds the parent's stand-in");
    shadow.switch_space(&guest(&ram, &code, PD_A), c, a).expect("to A");
    assert_eq!(shadow.kernel_reclaims, 1, "A had not lent its view again");
    assert_eq!(shadow.cached_frame(0, false), Some((1, true)));
}
