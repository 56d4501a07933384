//! End-to-end tests, the guest kit, and the differential oracle.
pub mod oracle;
