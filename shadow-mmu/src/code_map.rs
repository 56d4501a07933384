//! The code map: which guest frame each linear page maps, as far as translated
//! code has been fetched there, for the page checks of translated code.
//!
//! Translations are keyed by physical frame and shared by every address space,
//! so a unit reached through a chained jump or an indirect-lookup hit must first
//! check that its linear page still maps its frame in the current space. That
//! check reads this map: two loads, like the guest's own two-level walk.
//!
//! The map mirrors the guest's paging structures. Each address space (page
//! directory frame) has a *top* of 1024 pointers, one per 4 MiB region; each
//! points to a *leaf* of 1024 entries (frame + 1 of the page, or 0: not known).
//! Leaves belong to the guest page table they mirror, not to a space: the
//! kernel's page tables are shared by every process, so kernel code checked
//! once passes in every address space, and a new process starts with its
//! kernel half already known. A 4 MiB page's leaf is filled from the page
//! directory entry alone.
//!
//! There are two maps in one: leaves and tops for CPL 0–2 (any present page)
//! and for CPL 3 (pages user-accessible at both levels), so code the guest's
//! user mode may not fetch never passes a user-mode check.
//!
//! Coherence is the caller's: it reports every change of a traced guest entry
//! ([`CodeMap::entry_changed`]) and every frame that stops being traced
//! ([`CodeMap::frame_untraced`]); nothing is entered without a walk that traced
//! the tables it used.

use hashbrown::HashMap;

/// Entries of a leaf or top.
const ENTRIES: usize = 1024;
/// Leaves kept at most (4 KiB each) before everything is dropped.
const MAX_LEAVES: usize = 8192;
/// Tops (address spaces) kept at most (8 KiB each).
const MAX_TOPS: usize = 64;

/// A page table's mirror: frame + 1 of each page of the region, 0 = unknown.
#[repr(C, align(4096))]
struct Leaf([u32; ENTRIES]);

impl Leaf {
    fn zeroed() -> Box<Self> {
        Box::new(Self([0; ENTRIES]))
    }
}

/// An address space's page directory mirror: the host address of each
/// region's leaf (the empty leaf when none).
#[repr(C, align(4096))]
struct Top([u64; ENTRIES]);

/// Where a region's pages come from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Source {
    /// A page table, by frame.
    Table(u32),
    /// A 4 MiB page, by its first frame.
    Large(u32),
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct LeafKey {
    source: Source,
    user: bool,
}

/// The code map of every cached address space.
pub struct CodeMap {
    leaves: HashMap<LeafKey, Box<Leaf>>,
    /// By page directory frame: the kernel-mode and user-mode tops.
    tops: HashMap<u32, [Box<Top>; 2]>,
    /// Page directory frames, least recently used first.
    lru: Vec<u32>,
    empty: Box<Leaf>,
    /// The most recently used space's page directory frame and its two tops'
    /// addresses: every dispatch asks for them.
    last_top: Option<(u32, [u64; 2])>,
    /// Times everything was dropped because the leaves grew past their bound.
    pub resets: u64,
}

impl Default for CodeMap {
    fn default() -> Self {
        Self::new()
    }
}

impl CodeMap {
    pub fn new() -> Self {
        Self {
            leaves: HashMap::new(),
            tops: HashMap::new(),
            lru: Vec::new(),
            empty: Leaf::zeroed(),
            last_top: None,
            resets: 0,
        }
    }

    /// The top translated code reads in the address space whose page directory
    /// is at `pd_frame`, in user mode or not (`VcpuCtx::code_map`). Valid until
    /// the next call of a `&mut self` method.
    pub fn top_address(&mut self, pd_frame: u32, user: bool) -> u64 {
        if let Some((_, tops)) = self.last_top.filter(|l| l.0 == pd_frame && self.lru.last() == Some(&pd_frame)) {
            return tops[usize::from(user)];
        }
        self.touch(pd_frame);
        let tops = self.tops_of(pd_frame);
        let addresses = [tops[0].0.as_ptr() as u64, tops[1].0.as_ptr() as u64];
        self.last_top = Some((pd_frame, addresses));
        addresses[usize::from(user)]
    }

    /// Code at linear `page` was fetched in the space of `pd_frame` through
    /// `source`, reaching `frame`; `user`: the walk found the page
    /// user-accessible at both levels (it then passes user-mode checks too).
    pub fn note(&mut self, pd_frame: u32, page: u32, source: Source, frame: u32, user: bool) {
        if self.leaves.len() + 2 > MAX_LEAVES {
            self.reset();
        }
        self.touch(pd_frame);
        let (region, index) = ((page >> 22) as usize, ((page >> 12) & 0x3ff) as usize);
        for class in [false, true] {
            if class && !user {
                continue;
            }
            let leaf = self.leaves.entry(LeafKey { source, user: class }).or_insert_with(|| match source {
                Source::Table(_) => Leaf::zeroed(),
                Source::Large(first) => large_leaf(first),
            });
            leaf.0[index] = frame + 1;
            let address = leaf.0.as_ptr() as u64;
            self.tops_of(pd_frame)[usize::from(class)].0[region] = address;
        }
    }

    /// The guest entry at physical `entry` changed to `value`: as a page table
    /// entry, its page is no longer known unless it still maps the same frame
    /// to the same privilege (a fork write-protecting its pages, A and D bits:
    /// the code there is the same code); as a page directory entry, its region
    /// in the spaces of that directory.
    pub fn entry_changed(&mut self, entry: u32, value: u32) {
        let (frame, index) = (entry >> 12, ((entry & 0xfff) >> 2) as usize);
        const PRESENT: u32 = 1;
        const USER: u32 = 4;
        for user in [false, true] {
            if let Some(leaf) = self.leaves.get_mut(&LeafKey { source: Source::Table(frame), user }) {
                let allowed = value & PRESENT != 0 && (!user || value & USER != 0);
                if !(allowed && leaf.0[index] == (value >> 12) + 1) {
                    leaf.0[index] = 0;
                }
            }
        }
        let empty = self.empty_address();
        if let Some(tops) = self.tops.get_mut(&frame) {
            for top in tops.iter_mut() {
                top.0[index] = empty;
            }
        }
    }

    /// `frame` is no longer traced: changes to it would go unseen, so nothing
    /// learnt through it stays.
    pub fn frame_untraced(&mut self, frame: u32) {
        for user in [false, true] {
            if let Some(leaf) = self.leaves.get_mut(&LeafKey { source: Source::Table(frame), user }) {
                leaf.0.fill(0);
            }
        }
        let empty = self.empty_address();
        if let Some(tops) = self.tops.get_mut(&frame) {
            for top in tops.iter_mut() {
                top.0.fill(empty);
            }
        }
    }

    /// Forgets everything (paging turned on or off, CR4.PSE changed).
    pub fn reset(&mut self) {
        let empty = self.empty_address();
        for tops in self.tops.values_mut() {
            for top in tops.iter_mut() {
                top.0.fill(empty);
            }
        }
        self.leaves.clear();
        self.resets += 1;
    }

    /// Leaves held (for statistics).
    pub fn leaves(&self) -> usize {
        self.leaves.len()
    }

    fn empty_address(&self) -> u64 {
        self.empty.0.as_ptr() as u64
    }

    fn tops_of(&mut self, pd_frame: u32) -> &mut [Box<Top>; 2] {
        let empty = self.empty_address();
        self.tops.entry(pd_frame).or_insert_with(|| [Box::new(Top([empty; ENTRIES])), Box::new(Top([empty; ENTRIES]))])
    }

    /// Marks `pd_frame`'s space most recently used, dropping the least recently
    /// used space's tops past the bound (they refill on demand).
    fn touch(&mut self, pd_frame: u32) {
        if self.lru.last() == Some(&pd_frame) {
            return;
        }
        self.lru.retain(|&f| f != pd_frame);
        self.lru.push(pd_frame);
        while self.lru.len() > MAX_TOPS {
            let gone = self.lru.remove(0);
            self.tops.remove(&gone);
            if self.last_top.is_some_and(|l| l.0 == gone) {
                self.last_top = None;
            }
        }
    }
}

/// The leaf of a 4 MiB page starting at frame `first`: known whole.
fn large_leaf(first: u32) -> Box<Leaf> {
    let mut leaf = Leaf::zeroed();
    for (i, e) in leaf.0.iter_mut().enumerate() {
        *e = first.wrapping_add(i as u32).wrapping_add(1);
    }
    leaf
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What translated code's page check reads for `page`, following the
    /// addresses in the top as the generated code does.
    fn check(map: &mut CodeMap, pd: u32, page: u32, user: bool) -> u32 {
        let top = map.top_address(pd, user);
        let tops = &map.tops[&pd][usize::from(user)];
        assert_eq!(top, tops.0.as_ptr() as u64);
        let leaf_address = tops.0[(page >> 22) as usize];
        let leaf = core::iter::once(&map.empty)
            .chain(map.leaves.values())
            .find(|l| l.0.as_ptr() as u64 == leaf_address)
            .expect("a top points at a live leaf");
        leaf.0[((page >> 12) & 0x3ff) as usize]
    }

    #[test]
    fn kernel_tables_are_shared_between_spaces() {
        let mut map = CodeMap::new();
        map.note(0x100, 0xc010_0000, Source::Table(0x200), 0x100, false);
        assert_eq!(check(&mut map, 0x100, 0xc010_0000, false), 0x101);
        // Another space whose directory points at the same table: unknown
        // until its own walk links the region, then known at once.
        assert_eq!(check(&mut map, 0x300, 0xc010_0000, false), 0);
        map.note(0x300, 0xc010_1000, Source::Table(0x200), 0x101, false);
        assert_eq!(check(&mut map, 0x300, 0xc010_0000, false), 0x101);
    }

    #[test]
    fn user_mode_sees_only_user_pages() {
        let mut map = CodeMap::new();
        map.note(0x100, 0x0804_8000, Source::Table(0x200), 0x500, false);
        assert_eq!(check(&mut map, 0x100, 0x0804_8000, false), 0x501);
        assert_eq!(check(&mut map, 0x100, 0x0804_8000, true), 0, "a supervisor page");
        map.note(0x100, 0x0804_9000, Source::Table(0x200), 0x501, true);
        assert_eq!(check(&mut map, 0x100, 0x0804_9000, true), 0x502);
        assert_eq!(check(&mut map, 0x100, 0x0804_8000, true), 0);
    }

    #[test]
    fn changes_forget_what_they_affect() {
        let mut map = CodeMap::new();
        map.note(0x100, 0x0804_8000, Source::Table(0x200), 0x500, true);
        map.note(0x100, 0x0804_9000, Source::Table(0x200), 0x501, true);
        // The PTE of the second page write-protected (fork): the same frame, kept.
        map.entry_changed((0x200 << 12) + 0x49 * 4, 0x501 << 12 | 0x25);
        assert_eq!(check(&mut map, 0x100, 0x0804_9000, true), 0x502);
        // Made supervisor-only: gone for user mode, kept for the kernel.
        map.note(0x100, 0x0804_9000, Source::Table(0x200), 0x501, true);
        map.entry_changed((0x200 << 12) + 0x49 * 4, 0x501 << 12 | 0x21);
        assert_eq!(check(&mut map, 0x100, 0x0804_9000, true), 0);
        assert_eq!(check(&mut map, 0x100, 0x0804_9000, false), 0x502);
        map.note(0x100, 0x0804_9000, Source::Table(0x200), 0x501, true);
        // The PTE of the first page pointed at another frame, or not present.
        map.entry_changed((0x200 << 12) + 0x48 * 4, 0x777 << 12 | 0x27);
        assert_eq!(check(&mut map, 0x100, 0x0804_8000, true), 0);
        assert_eq!(check(&mut map, 0x100, 0x0804_8000, false), 0);
        assert_eq!(check(&mut map, 0x100, 0x0804_9000, true), 0x502);
        map.entry_changed((0x200 << 12) + 0x49 * 4, 0x501 << 12 | 0x26);
        assert_eq!(check(&mut map, 0x100, 0x0804_9000, true), 0, "not present");
        map.note(0x100, 0x0804_9000, Source::Table(0x200), 0x501, true);
        // The PDE of the region (directory frame 0x100, index 0x20).
        map.entry_changed((0x100 << 12) + 0x20 * 4, 0x200 << 12 | 0x27);
        assert_eq!(check(&mut map, 0x100, 0x0804_9000, true), 0);
        assert_eq!(check(&mut map, 0x100, 0x0804_9000, false), 0);
    }

    #[test]
    fn untraced_tables_and_resets_forget_everything() {
        let mut map = CodeMap::new();
        map.note(0x100, 0x1000, Source::Table(0x200), 0x500, false);
        map.frame_untraced(0x200);
        assert_eq!(check(&mut map, 0x100, 0x1000, false), 0);
        map.note(0x100, 0x1000, Source::Table(0x200), 0x500, false);
        map.frame_untraced(0x100);
        assert_eq!(check(&mut map, 0x100, 0x1000, false), 0, "the directory");
        map.note(0x100, 0x1000, Source::Table(0x200), 0x500, false);
        map.reset();
        assert_eq!(check(&mut map, 0x100, 0x1000, false), 0);
        assert_eq!(map.leaves(), 0);
    }

    #[test]
    fn large_pages_are_known_whole() {
        let mut map = CodeMap::new();
        map.note(0x100, 0xc040_0000, Source::Large(0x400), 0x400, false);
        assert_eq!(check(&mut map, 0x100, 0xc07f_f000, false), 0x400 + 0x3ff + 1);
    }

    #[test]
    fn tops_are_bounded() {
        let mut map = CodeMap::new();
        for pd in 0..(MAX_TOPS as u32 + 10) {
            map.note(pd, 0x1000, Source::Table(0x9999), 0x5, false);
            let _ = map.top_address(pd, false);
        }
        assert!(map.tops.len() <= MAX_TOPS);
    }

    /// The remembered tops of the last space follow the space: the same
    /// addresses while it lives, none of its old ones once the bound dropped it.
    #[test]
    fn last_tops_go_with_their_space() {
        let mut map = CodeMap::new();
        let first = map.top_address(7, false);
        assert_eq!(map.top_address(7, false), first);
        assert_ne!(map.top_address(7, true), first, "user and kernel tops differ");
        for pd in 100..100 + MAX_TOPS as u32 {
            map.top_address(pd, false);
        }
        assert!(!map.tops.contains_key(&7), "space 7 was dropped");
        assert!(map.last_top.is_some_and(|l| l.0 != 7));
        map.top_address(7, false);
        assert_eq!(map.last_top.map(|l| l.0), Some(7));
        assert!(map.tops.contains_key(&7), "and is back");
    }
}