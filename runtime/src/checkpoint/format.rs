//! The checkpoint file: a fixed header, then the body.
//!
//! ```text
//! offset size  field
//!  0     8     magic "BT86CKPT"
//!  8     4     format version (little-endian u32), FORMAT_VERSION
//! 12     4     engine that took it (u32): 1 = bt (binary translation), 2 = kvm
//! 16     8     body length in bytes (u64)
//! 24     4     CRC-32 (IEEE, as zlib's crc32) of the body
//! 28     4     CRC-32 of bytes 0..28 (the header itself)
//! 32     ...   body: a `Body` in postcard's encoding (serde; postcard wire format v1)
//! ```
//!
//! A reader checks, in this order: the magic, the header's CRC, the version, the
//! engine, the length (a shorter file is truncated), the body's CRC; only then does
//! it decode the body. The body's layout is `Body` below and the types it names;
//! any change to them changes `FORMAT_VERSION`.

use super::ram::RamImage;
use super::{CheckpointError, Engine, VcpuState};
use crate::devices::PlatformState;
use serde::{Deserialize, Serialize};

/// The file's first eight bytes.
pub const MAGIC: [u8; 8] = *b"BT86CKPT";
/// The body layout this bt86 writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Header bytes.
pub const HEADER_LEN: usize = 32;

/// Virtual time and the guest's TSC at the moment of the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TimeState {
    /// Virtual nanoseconds (the devices' time line).
    pub virtual_ns: u64,
    /// What the guest's `rdtsc` read.
    pub guest_tsc: u64,
}

/// Everything after the header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Body {
    /// The bt86 that wrote it (`CARGO_PKG_VERSION`), for messages.
    pub writer: String,
    /// When it was written, in seconds since the Unix epoch.
    pub saved_at: u64,
    /// The run options the restore keeps (name, value), as the command line chose
    /// them; bt86 run's options, opaque to the runtime.
    pub options: Vec<(String, String)>,
    pub time: TimeState,
    pub cpu: VcpuState,
    pub devices: PlatformState,
    pub ram: RamImage,
}

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The file's bytes for `body` taken under `engine`.
pub(crate) fn encode(engine: Engine, body: &Body) -> Result<Vec<u8>, CheckpointError> {
    let payload = postcard::to_stdvec(body).map_err(|e| CheckpointError::Internal(format!("encoding the checkpoint: {e}")))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&engine.code().to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc(&payload).to_le_bytes());
    let header_crc = crc(&out);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The engine and body of a checkpoint file's bytes, or why they are refused.
pub(crate) fn decode(bytes: &[u8]) -> Result<(Engine, Body), CheckpointError> {
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(CheckpointError::NotACheckpoint);
    }
    if bytes.len() < HEADER_LEN {
        return Err(CheckpointError::Truncated { expected: HEADER_LEN as u64, found: bytes.len() as u64 });
    }
    if crc(&bytes[..28]) != u32_at(bytes, 28) {
        return Err(CheckpointError::Corrupt("the header's checksum does not match".into()));
    }
    let version = u32_at(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(CheckpointError::Version { found: version, supported: FORMAT_VERSION });
    }
    let engine = Engine::from_code(u32_at(bytes, 12)).ok_or(CheckpointError::Engine(u32_at(bytes, 12)))?;
    let len = u64::from_le_bytes(bytes[16..24].try_into().unwrap_or([0xff; 8]));
    let expected = len.saturating_add(HEADER_LEN as u64);
    let found = bytes.len() as u64;
    if found < expected {
        return Err(CheckpointError::Truncated { expected, found });
    }
    if found > expected {
        return Err(CheckpointError::Corrupt(format!("{} bytes follow the checkpoint's end", found - expected)));
    }
    let payload = &bytes[HEADER_LEN..];
    if crc(payload) != u32_at(bytes, 24) {
        return Err(CheckpointError::Corrupt("the checksum of its contents does not match".into()));
    }
    let body: Body = postcard::from_bytes(payload).map_err(|e| CheckpointError::Corrupt(format!("its contents do not decode ({e})")))?;
    Ok((engine, body))
}
