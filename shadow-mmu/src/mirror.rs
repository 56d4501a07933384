//! A view's *mirror*: what its first 4 GiB hold, as runs of host pages, and which
//! ranges changed since someone last copied them.
//!
//! Direct execution runs guest user code in another process whose low 4 GiB must
//! hold what the view holds (`runtime/src/direct/`). That process cannot share
//! this one's page tables, so every host call a view makes is also recorded here,
//! as state rather than as a log: a run of pages maps consecutive memfd offsets
//! with one protection. Before the other process runs again it asks for the
//! operations that bring a copy up to date ([`Mirror::take_ops`]): for each range
//! that changed, the runs now inside it and unmaps for the gaps. A copy that is
//! new, or that fell too far behind, gets everything.
//!
//! The wrap alias and guards of a view are the translator's own and are not
//! mirrored: compatibility-mode code addresses exactly the low 4 GiB.
//!
//! Nothing here is unsafe; memory cost is one tree node per run of pages (a 4 MiB
//! guest page mapped whole is one run).

use std::collections::BTreeMap;

/// Pages in 4 GiB.
pub const PAGES: u64 = 1 << 20;
/// Changed ranges remembered before a copy must take everything instead.
const MAX_DIRTY: usize = 4096;

/// What a run of pages maps: consecutive pages of the guest-RAM memfd from
/// `offset`, read-only or read-write, shared or private (copy-on-write: the
/// void page for memory that does not exist).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backing {
    pub offset: u64,
    pub writable: bool,
    pub private: bool,
}

impl Backing {
    /// The backing of the page `n` pages further on.
    fn advance(self, n: u32) -> Self {
        Self { offset: self.offset + u64::from(n) * 4096, ..self }
    }
}

/// One host operation on a copy of the view, in pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorOp {
    /// Map `pages` pages from linear page `first` (MAP_FIXED over whatever is there).
    Map { first: u32, pages: u32, backing: Backing },
    /// Make `pages` pages from linear page `first` inaccessible.
    Unmap { first: u32, pages: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    pages: u32,
    backing: Backing,
}

/// The recorded state of a view's low 4 GiB (see the module documentation).
#[derive(Debug, Default)]
pub struct Mirror {
    /// First page → run; runs never overlap.
    runs: BTreeMap<u32, Run>,
    /// Ranges (first page, pages) changed since the last `take_ops`.
    dirty: Vec<(u32, u32)>,
    /// The copy must start over (reset, or too many changes to list).
    everything: bool,
}

/// Clips a byte range of the view to whole pages below 4 GiB: (first, pages).
pub(crate) fn pages_of(linear: u64, len: u64) -> Option<(u32, u32)> {
    let first = linear / 4096;
    let end = (linear + len).div_ceil(4096).min(PAGES);
    if first >= end {
        return None;
    }
    Some((u32::try_from(first).ok()?, u32::try_from(end - first).ok()?))
}

impl Mirror {
    /// Records a mapping of `pages` pages from `first`.
    pub fn map(&mut self, first: u32, pages: u32, backing: Backing) {
        self.cut(first, pages);
        self.runs.insert(first, Run { pages, backing });
        self.touch(first, pages);
    }

    /// Records that `pages` pages from `first` are inaccessible.
    pub fn unmap(&mut self, first: u32, pages: u32) {
        self.cut(first, pages);
        self.touch(first, pages);
    }

    /// Records a protection change of the mapped pages in the range.
    pub fn protect(&mut self, first: u32, pages: u32, writable: bool) {
        let end = u64::from(first) + u64::from(pages);
        self.split_at(first);
        if let Ok(e) = u32::try_from(end) {
            self.split_at(e);
        }
        let keys: Vec<u32> = self.runs.range(first..).take_while(|(&k, _)| u64::from(k) < end).map(|(&k, _)| k).collect();
        for k in keys {
            if let Some(r) = self.runs.get_mut(&k) {
                r.backing.writable = writable;
            }
        }
        self.touch(first, pages);
    }

    /// Everything is unmapped.
    pub fn reset(&mut self) {
        self.runs.clear();
        self.dirty.clear();
        self.everything = true;
    }

    /// What linear page `page` maps now, if anything.
    pub fn backing_of(&self, page: u32) -> Option<Backing> {
        let (&k, r) = self.runs.range(..=page).next_back()?;
        (page - k < r.pages).then(|| r.backing.advance(page - k))
    }

    /// Runs of pages recorded (for statistics and bounds).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// The operations that bring a copy up to date with what was recorded, and
    /// forgets the changes. `fresh`: the copy is empty (a new process), so it
    /// needs every run and no unmaps.
    pub fn take_ops(&mut self, fresh: bool) -> Vec<MirrorOp> {
        let mut ops = Vec::new();
        if fresh || self.everything {
            if !fresh {
                ops.push(MirrorOp::Unmap { first: 0, pages: u32::try_from(PAGES).unwrap_or(u32::MAX) });
            }
            ops.extend(self.runs.iter().map(|(&first, r)| MirrorOp::Map { first, pages: r.pages, backing: r.backing }));
            self.dirty.clear();
            self.everything = false;
            return coalesce(ops);
        }
        let mut dirty = core::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (first, pages) in dirty {
            let (s, e) = (u64::from(first), u64::from(first) + u64::from(pages));
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        for (s, e) in merged {
            self.emit_range(s, e, &mut ops);
        }
        coalesce(ops)
    }

    /// The current state of pages `s..e` as operations.
    fn emit_range(&self, s: u64, e: u64, ops: &mut Vec<MirrorOp>) {
        let page = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        let mut at = s;
        let start_key = self.runs.range(..=page(s)).next_back().map_or(page(s), |(&k, _)| k);
        for (&k, r) in self.runs.range(start_key..) {
            let (rs, re) = (u64::from(k), u64::from(k) + u64::from(r.pages));
            if rs >= e {
                break;
            }
            if re <= at {
                continue;
            }
            let from = rs.max(at);
            let to = re.min(e);
            if from > at {
                ops.push(MirrorOp::Unmap { first: page(at), pages: page(from - at) });
            }
            ops.push(MirrorOp::Map { first: page(from), pages: page(to - from), backing: r.backing.advance(page(from - rs)) });
            at = to;
        }
        if at < e {
            ops.push(MirrorOp::Unmap { first: page(at), pages: page(e - at) });
        }
    }

    fn touch(&mut self, first: u32, pages: u32) {
        if self.everything {
            return;
        }
        if self.dirty.len() >= MAX_DIRTY {
            self.dirty.clear();
            self.everything = true;
            return;
        }
        self.dirty.push((first, pages));
    }

    /// Splits the run containing `page` (if it starts before it) so that a run
    /// starts at `page`.
    fn split_at(&mut self, page: u32) {
        let Some((&k, &r)) = self.runs.range(..page).next_back() else { return };
        if page - k >= r.pages {
            return;
        }
        let head = page - k;
        self.runs.insert(k, Run { pages: head, backing: r.backing });
        self.runs.insert(page, Run { pages: r.pages - head, backing: r.backing.advance(head) });
    }

    /// Removes whatever is recorded in `pages` pages from `first`.
    fn cut(&mut self, first: u32, pages: u32) {
        let end = u64::from(first) + u64::from(pages);
        self.split_at(first);
        if let Ok(e) = u32::try_from(end) {
            self.split_at(e);
        }
        let keys: Vec<u32> = self.runs.range(first..).take_while(|(&k, _)| u64::from(k) < end).map(|(&k, _)| k).collect();
        for k in keys {
            self.runs.remove(&k);
        }
    }
}

/// Joins neighbouring maps whose pages continue each other with one protection,
/// and neighbouring unmaps: fewer host calls.
fn coalesce(ops: Vec<MirrorOp>) -> Vec<MirrorOp> {
    let mut out: Vec<MirrorOp> = Vec::with_capacity(ops.len());
    for op in ops {
        match (out.last_mut(), op) {
            (
                Some(MirrorOp::Map { first, pages, backing }),
                MirrorOp::Map { first: f2, pages: p2, backing: b2 },
            ) if u64::from(*first) + u64::from(*pages) == u64::from(f2) && backing.advance(*pages) == b2 && !b2.private => {
                *pages += p2;
            }
            (Some(MirrorOp::Unmap { first, pages }), MirrorOp::Unmap { first: f2, pages: p2 })
                if u64::from(*first) + u64::from(*pages) == u64::from(f2) =>
            {
                *pages += p2;
            }
            _ => out.push(op),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn shared(offset: u64, writable: bool) -> Backing {
        Backing { offset, writable, private: false }
    }

    /// Applies operations to a page-by-page copy.
    fn apply(copy: &mut HashMap<u32, Backing>, ops: &[MirrorOp]) {
        for op in ops {
            match *op {
                MirrorOp::Map { first, pages, backing } => {
                    for i in 0..pages {
                        copy.insert(first + i, backing.advance(i));
                    }
                }
                MirrorOp::Unmap { first, pages } => {
                    for i in 0..pages {
                        copy.remove(&(first + i));
                    }
                }
            }
        }
    }

    #[test]
    fn changes_reach_a_copy_with_few_operations() {
        let mut m = Mirror::default();
        m.map(16, 8, shared(0x10_000, true));
        let ops = m.take_ops(true);
        assert_eq!(ops, vec![MirrorOp::Map { first: 16, pages: 8, backing: shared(0x10_000, true) }]);
        m.protect(18, 1, false);
        let ops = m.take_ops(false);
        assert_eq!(ops, vec![MirrorOp::Map { first: 18, pages: 1, backing: shared(0x12_000, false) }]);
        m.unmap(20, 2);
        m.map(30, 1, shared(0x5000, true));
        let ops = m.take_ops(false);
        assert_eq!(
            ops,
            vec![MirrorOp::Unmap { first: 20, pages: 2 }, MirrorOp::Map { first: 30, pages: 1, backing: shared(0x5000, true) }]
        );
        assert_eq!(m.backing_of(19), Some(shared(0x13_000, true)));
        assert_eq!(m.backing_of(20), None);
        assert!(m.take_ops(false).is_empty());
        m.reset();
        m.map(1, 1, shared(0, false));
        assert_eq!(
            m.take_ops(false),
            vec![MirrorOp::Unmap { first: 0, pages: 1 << 20 }, MirrorOp::Map { first: 1, pages: 1, backing: shared(0, false) }]
        );
    }

    proptest::proptest! {
        /// Whatever is recorded, a copy kept up to date by `take_ops` (taken at
        /// random points) ends equal to the view, page by page.
        #[test]
        fn a_copy_follows_the_view(steps in proptest::collection::vec((0u8..4, 0u32..64, 1u32..24, 0u64..64, proptest::bool::ANY, proptest::bool::ANY), 1..80)) {
            let mut m = Mirror::default();
            let mut model: HashMap<u32, Backing> = HashMap::new();
            let mut copy: HashMap<u32, Backing> = HashMap::new();
            let mut fresh = true;
            for (kind, first, pages, off, w, sync) in steps {
                match kind {
                    0 => {
                        let b = Backing { offset: off * 4096, writable: w, private: off % 7 == 0 };
                        m.map(first, pages, b);
                        for i in 0..pages { model.insert(first + i, b.advance(i)); }
                    }
                    1 => {
                        m.unmap(first, pages);
                        for i in 0..pages { model.remove(&(first + i)); }
                    }
                    2 => {
                        m.protect(first, pages, w);
                        for i in 0..pages { if let Some(b) = model.get_mut(&(first + i)) { b.writable = w; } }
                    }
                    _ => { m.reset(); model.clear(); }
                }
                if sync {
                    apply(&mut copy, &m.take_ops(fresh));
                    fresh = false;
                    proptest::prop_assert_eq!(&copy, &model);
                }
            }
            apply(&mut copy, &m.take_ops(fresh));
            proptest::prop_assert_eq!(&copy, &model);
            for p in 0..100 {
                proptest::prop_assert_eq!(m.backing_of(p), model.get(&p).copied());
            }
        }
    }
}
