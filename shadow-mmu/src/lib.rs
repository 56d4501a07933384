//! The shadow MMU: guest linear address spaces realized as host mappings (*views*)
//! and what they are built from and kept coherent with.
//!
//! - [`view`]: a view, its guards and wrap alias; mapping, unmapping, parking and
//!   protecting pages; [`mirror`]: what a view maps, for a copy in another process.
//! - [`walk`]: the guest's 2-level page walk (permissions, A/D bits, #PF error codes).
//! - [`code_map`]: the code map translated code's page checks read.
//! - [`space`]: one address space's bookkeeping: which places of its views map
//!   which frames, the guest entries each mapping depends on, the frames to trace.
//! - [`shadow`]: the policy over them: hidden and true faults, tracing of page
//!   tables across all cached spaces, the cache of address spaces, adaptive
//!   stores; the guest reached through [`guest`]'s small trait.
//!
//! The VMM (the runtime crate's `mmu` module) keeps the glue: the translator's
//! invalidation, the CPU's registers, raising the guest's exceptions.

pub mod code_map;
pub mod guest;
pub mod mirror;
pub mod shadow;
pub mod space;
pub mod view;
pub mod walk;

pub use code_map::CodeMap;
pub use guest::{Guest, GuestMemory, RamPhys};
pub use mirror::{Backing, Mirror, MirrorOp};
pub use shadow::{Fault, Shadow, ShadowError, WriteFault};
pub use view::{View, ViewError, GUARD_BYTES};
pub use walk::{error_code, walk, Access, PagingMode, PhysMem, Translation, WalkError};
