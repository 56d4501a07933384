//! The indirect-branch lookup tables: guest eip → host entry, read by the inline
//! lookup every indirect branch carries (`world::emit_lookup`).
//!
//! An entry is keyed by eip alone, and the unit an eip means depends on the mode
//! the unit was built for, so there is one table per mode; switching mode is a
//! pointer change instead of wiping a table, so a guest going back and forth
//! between user and kernel mode keeps its entries. Which unit an eip means also
//! depends on the address space (eip → frame), but the tables need not care: an
//! entry points at its unit's page check, which compares the current space's
//! mapping of the page with the unit's frame. So the tables are shared by every
//! address space, and nothing has to be removed when a space remaps a page.
//!
//! Entries store `eip + 1`, so an all-zero entry is empty. That lets a table be
//! zeroed memory straight from the allocator: a fresh table costs only the pages
//! the guest's branches actually touch.

use crate::Mode;

/// Entries per table (indexed by the low 16 bits of the eip).
pub const ENTRIES: usize = 1 << 16;
/// Tables kept at most; the least recently used one goes first.
const MAX_TABLES: usize = 24;
const EMPTY: [u64; 2] = [0, 0];

type Table = Box<[[u64; 2]]>;

fn new_table() -> Table {
    // `vec!` of zeroes uses a zeroing allocation: large ones come straight from
    // mmap, so untouched pages cost nothing.
    vec![EMPTY; ENTRIES].into_boxed_slice()
}

/// The tables and which one is current.
pub struct LookupTables {
    current: Mode,
    table: Table,
    /// Other modes' tables, most recently used last.
    idle: Vec<(Mode, Table)>,
}

impl LookupTables {
    pub fn new() -> Self {
        Self { current: Mode::default(), table: new_table(), idle: Vec::new() }
    }

    /// Host address of the current table (what `r14` holds in translated code).
    pub fn current_ptr(&self) -> u64 {
        self.table.as_ptr() as u64
    }

    /// Makes `mode`'s table current, keeping the table of the one before.
    /// Returns whether the mode changed.
    pub fn select(&mut self, mode: Mode) -> bool {
        if mode == self.current {
            return false;
        }
        let table = match self.idle.iter().position(|(m, _)| *m == mode) {
            Some(i) if i + 1 == self.idle.len() => {
                // Back to the mode before (a ring change and its return): the two
                // tables trade places, and the most recent stays last.
                let (m, t) = &mut self.idle[i];
                *m = self.current;
                self.current = mode;
                core::mem::swap(&mut self.table, t);
                return true;
            }
            Some(i) => self.idle.remove(i).1,
            None => {
                if self.idle.len() + 1 >= MAX_TABLES {
                    self.idle.remove(0);
                }
                new_table()
            }
        };
        let old = core::mem::replace(&mut self.table, table);
        self.idle.push((self.current, old));
        self.current = mode;
        true
    }

    /// Records `eip` → `host` in the current table.
    pub fn insert(&mut self, eip: u32, host: u64) {
        self.table[index(eip)] = [u64::from(eip) + 1, host];
    }

    /// Forgets `eip` → `host` in every table (the unit at `host` is gone).
    pub fn remove(&mut self, eip: u32, host: u64) {
        let i = index(eip);
        for t in core::iter::once(&mut self.table).chain(self.idle.iter_mut().map(|(_, t)| t)) {
            if t[i][1] == host {
                t[i] = EMPTY;
            }
        }
    }

    /// Empties everything (the cache was flushed).
    pub fn clear(&mut self) {
        self.idle.clear();
        self.table = new_table();
    }

    /// The entry for `eip` in the current table, if it is set.
    pub fn get(&self, eip: u32) -> Option<u64> {
        let [e, host] = self.table[index(eip)];
        (e == u64::from(eip) + 1).then_some(host)
    }
}

impl Default for LookupTables {
    fn default() -> Self {
        Self::new()
    }
}

/// The slot of `eip`: its low half plus its high half, modulo 2^16, where the
/// host has BMI2 for the inline lookup to compute it without touching the flags
/// (`rorx`, `lea`); otherwise the low half alone. The low half alone put
/// Linux's hot return addresses 0xc62b90d7 and 0xc62790d7 (two copies of one
/// routine, 256 KiB apart) in one slot: 30,000 misses in a 60-fork run.
pub(crate) fn index(eip: u32) -> usize {
    let mixed = if mixes_high_half() { eip.wrapping_add(eip.rotate_right(16)) } else { eip };
    (mixed & 0xffff) as usize
}

/// Whether slots mix in the eip's high half (`index`, `world::emit_lookup`).
pub(crate) fn mixes_high_half() -> bool {
    std::is_x86_feature_detected!("bmi2")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(cpl: u8) -> Mode {
        Mode { cpl, ..Mode::default() }
    }

    #[test]
    fn modes_keep_their_entries() {
        let mut t = LookupTables::new();
        t.select(mode(0));
        t.insert(0x1000, 0xaaaa);
        assert!(t.select(mode(3)));
        assert_eq!(t.get(0x1000), None, "another mode has its own table");
        t.insert(0x1000, 0xbbbb);
        assert!(t.select(mode(0)));
        assert_eq!(t.get(0x1000), Some(0xaaaa));
        assert!(!t.select(mode(0)));
    }

    #[test]
    fn remove_reaches_idle_tables_and_only_the_same_unit() {
        let mut t = LookupTables::new();
        t.select(mode(0));
        t.insert(0x1000, 0xaaaa);
        t.select(mode(3));
        t.insert(0x1000, 0xcccc);
        t.remove(0x1000, 0xaaaa);
        assert_eq!(t.get(0x1000), Some(0xcccc));
        t.select(mode(0));
        assert_eq!(t.get(0x1000), None);
    }

    #[test]
    fn eip_zero_and_max_are_not_confused_with_empty() {
        let mut t = LookupTables::new();
        assert_eq!(t.get(0), None);
        t.insert(0, 0x10);
        t.insert(0xffff_ffff, 0x20);
        assert_eq!((t.get(0), t.get(0xffff_ffff)), (Some(0x10), Some(0x20)));
        assert_eq!(t.get(0x1_0000), None, "same index, other eip");
    }

    #[test]
    fn old_tables_are_recycled() {
        let mut t = LookupTables::new();
        for fpu in 0..(MAX_TABLES as u8 + 5) {
            t.select(Mode { fpu, ..Mode::default() });
            t.insert(0x42, u64::from(fpu) + 1);
        }
        assert!(t.idle.len() < MAX_TABLES);
    }
}
