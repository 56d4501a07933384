//! End-to-end tests, the guest kit's guests, and the differential oracle.
pub mod guests;
pub mod oracle;
