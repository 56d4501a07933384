//! `bt86 study`: why x86 was not virtualizable by trap-and-emulate, measured on this
//! machine.
//!
//! - [`native`]: the deprivileged runner (guest code natively in compatibility mode at
//!   host CPL 3, in a confined child process); also the oracle's native half.

pub mod native;
