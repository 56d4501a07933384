//! Serde helpers for byte strings: fixed-size arrays longer than serde's 32
//! elements and byte vectors, written as one byte string (a length and the bytes)
//! instead of element by element.

use serde::de::{Error, Visitor};
use serde::{Deserializer, Serializer};
use std::fmt;

/// Any run of bytes, as a `Vec<u8>`.
struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }
}

/// `#[serde(with = "bytes::array")]` for `[u8; N]`.
pub(crate) mod array {
    use super::*;

    pub(crate) fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u8; N], D::Error> {
        let v = d.deserialize_byte_buf(BytesVisitor)?;
        let len = v.len();
        v.try_into().map_err(|_| D::Error::invalid_length(len, &"the array's length"))
    }
}

/// `#[serde(with = "bytes::boxed_array")]` for `Box<[u8; N]>`.
pub(crate) mod boxed_array {
    use super::*;

    pub(crate) fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<Box<[u8; N]>, D::Error> {
        let v = d.deserialize_byte_buf(BytesVisitor)?;
        let len = v.len();
        v.into_boxed_slice().try_into().map_err(|_| D::Error::invalid_length(len, &"the array's length"))
    }
}

/// `#[serde(with = "bytes::vec")]` for `Vec<u8>`.
pub(crate) mod vec {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }
}
