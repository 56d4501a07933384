//! `bt86 study`: why x86 was not virtualizable by trap-and-emulate, measured on this
//! machine.
//!
//! - [`catalogue`]: the snippets and what the guest's state says each should see;
//! - [`guest`]: the guest's known state and memory image; [`arch`]: the architectural
//!   rules the expected values are computed with; [`asm`]: the little assembler;
//! - [`native`]: the deprivileged runner (guest code natively in compatibility mode at
//!   host CPL 3, in a confined child process); also the oracle's native half.

pub mod arch;
pub mod asm;
pub mod catalogue;
pub mod guest;
pub mod native;
