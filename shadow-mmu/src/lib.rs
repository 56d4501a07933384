//! The shadow MMU: guest linear address spaces realized as host mappings (*views*)
//! and the write-protection (tracing) of guest pages.
//!
//! Today a view maps guest-physical memory one to one (the guest has not enabled
//! paging); the guest page-table walk, hidden and true faults and page-table tracing
//! arrive with the shadow-MMU issue and fill views on demand through the same type.

pub mod code_map;
pub mod mirror;
pub mod view;
pub mod walk;

pub use code_map::CodeMap;
pub use mirror::{Backing, Mirror, MirrorOp};
pub use view::{View, ViewError, GUARD_BYTES};
pub use walk::{error_code, walk, Access, PagingMode, PhysMem, Translation, WalkError};
