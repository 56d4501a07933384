//! Reading Debian packages without dpkg: a `.deb` is an `ar` archive whose members are
//! `debian-binary`, `control.tar.*` (the package's metadata) and `data.tar.*` (its files),
//! each tar compressed with xz (Debian's default), zstd (Ubuntu's), gzip, or not at all.
//!
//! Members and tar entries are read as streams and reading stops at the file wanted, so
//! taking the kernel out of a 50 MiB image package (whose `boot/` comes first) decompresses
//! only its first few MiB.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("{deb}: {source}")]
    Io { deb: PathBuf, source: io::Error },
    #[error("{deb}: no {member}.tar member: not a Debian package")]
    NoMember { deb: PathBuf, member: &'static str },
    #[error("{deb}: {member} is compressed in a way this reader does not know")]
    UnknownCompression { deb: PathBuf, member: String },
    #[error("{deb}: no file matching {wanted} in its data")]
    NotFound { deb: PathBuf, wanted: String },
}

/// A file taken out of a package.
#[derive(Debug)]
pub struct Extracted {
    /// Its path in the package, without the leading "./".
    pub path: String,
    pub data: Vec<u8>,
}

/// The first file of `deb`'s data whose path (without "./") satisfies `wanted`;
/// `describe` names it in the error when there is none.
pub fn extract_file(deb: &Path, describe: &str, wanted: impl Fn(&str) -> bool) -> Result<Extracted, DebError> {
    let io_err = |source| DebError::Io { deb: deb.to_owned(), source };
    let found = with_member(deb, "data", |tar| find_in_tar(tar, &wanted))?.map_err(io_err)?;
    found.ok_or_else(|| DebError::NotFound { deb: deb.to_owned(), wanted: describe.to_owned() })
}

/// The value of `field` in the package's `control` file (continuation lines joined).
pub fn control_field(deb: &Path, field: &str) -> Result<Option<String>, DebError> {
    let io_err = |source| DebError::Io { deb: deb.to_owned(), source };
    let control = with_member(deb, "control", |tar| find_in_tar(tar, &|p: &str| p == "control"))?.map_err(io_err)?;
    let control = control.ok_or_else(|| DebError::NotFound { deb: deb.to_owned(), wanted: "control".into() })?;
    Ok(parse_field(&String::from_utf8_lossy(&control.data), field))
}

/// `field` in a control file's text (RFC 822 style: "Name: value", continuation lines
/// start with a blank).
fn parse_field(control: &str, field: &str) -> Option<String> {
    let mut lines = control.lines().skip_while(|l| !field_is(l, field));
    let first = lines.next()?;
    let mut value = first[field.len() + 1..].trim().to_owned();
    for more in lines.take_while(|l| l.starts_with([' ', '\t'])) {
        value.push(' ');
        value.push_str(more.trim());
    }
    Some(value)
}

fn field_is(line: &str, field: &str) -> bool {
    line.len() > field.len() && line.as_bytes()[field.len()] == b':' && line[..field.len()].eq_ignore_ascii_case(field)
}

/// Runs `f` on the decompressed stream of the `<member>.tar*` member of `deb`.
fn with_member<T>(deb: &Path, member: &'static str, f: impl FnOnce(&mut dyn Read) -> T) -> Result<T, DebError> {
    let io_err = |source| DebError::Io { deb: deb.to_owned(), source };
    let mut archive = ar::Archive::new(File::open(deb).map_err(io_err)?);
    let prefix = format!("{member}.tar");
    while let Some(entry) = archive.next_entry() {
        let entry = entry.map_err(io_err)?;
        let name = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        if let Some(suffix) = name.strip_prefix(&prefix) {
            let mut stream = decompressor(suffix, entry)
                .ok_or_else(|| DebError::UnknownCompression { deb: deb.to_owned(), member: name.clone() })?
                .map_err(io_err)?;
            return Ok(f(&mut stream));
        }
    }
    Err(DebError::NoMember { deb: deb.to_owned(), member })
}

/// A reader decompressing `raw` by the member name's suffix; None for an unknown one.
fn decompressor<'a>(suffix: &str, raw: impl Read + 'a) -> Option<io::Result<Box<dyn Read + 'a>>> {
    Some(Ok(match suffix {
        "" => Box::new(raw),
        // dpkg-deb may write several xz streams one after another.
        ".xz" => Box::new(xz2::read::XzDecoder::new_multi_decoder(raw)),
        ".gz" => Box::new(flate2::read::GzDecoder::new(raw)),
        ".zst" => match ruzstd::decoding::StreamingDecoder::new(raw) {
            Ok(d) => Box::new(d),
            Err(e) => return Some(Err(io::Error::new(io::ErrorKind::InvalidData, e))),
        },
        _ => return None,
    }))
}

/// The first regular file of the tar stream whose path satisfies `wanted`.
fn find_in_tar(tar: &mut dyn Read, wanted: &dyn Fn(&str) -> bool) -> io::Result<Option<Extracted>> {
    for entry in tar::Archive::new(tar).entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path()?.to_string_lossy().trim_start_matches("./").to_owned();
        if wanted(&path) {
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            return Ok(Some(Extracted { path, data }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTROL: &str = "Package: linux-image-686\nVersion: 6.1.176-1\n\
        Depends: linux-image-6.1.0-50-686 (= 6.1.176-1)\nDescription: Linux for older PCs\n \
        This package depends on\n the latest kernel.\nSection: kernel\n";

    #[test]
    fn control_fields_are_found_and_continued() {
        assert_eq!(parse_field(CONTROL, "Depends").as_deref(), Some("linux-image-6.1.0-50-686 (= 6.1.176-1)"));
        assert_eq!(parse_field(CONTROL, "depends").as_deref(), Some("linux-image-6.1.0-50-686 (= 6.1.176-1)"));
        assert_eq!(
            parse_field(CONTROL, "Description").as_deref(),
            Some("Linux for older PCs This package depends on the latest kernel.")
        );
        assert_eq!(parse_field(CONTROL, "Pre-Depends"), None);
        assert_eq!(parse_field(CONTROL, "Section").as_deref(), Some("kernel"));
    }

    /// A package built here: an ar archive whose data member is a tar compressed with
    /// `suffix`'s method.
    fn deb_with(suffix: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, path, *data).unwrap();
        }
        let tar = tar.into_inner().unwrap();
        let data = match suffix {
            ".xz" => {
                let mut out = Vec::new();
                xz2::read::XzEncoder::new(&tar[..], 6).read_to_end(&mut out).unwrap();
                out
            }
            ".gz" => {
                let mut out = Vec::new();
                flate2::read::GzEncoder::new(&tar[..], flate2::Compression::fast()).read_to_end(&mut out).unwrap();
                out
            }
            ".zst" => ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest),
            _ => tar,
        };
        let path = std::env::temp_dir().join(format!("bt86-deb-test-{}{suffix}.deb", std::process::id()));
        let mut ar = ar::Builder::new(File::create(&path).unwrap());
        ar.append(&ar::Header::new(b"debian-binary".to_vec(), 4), &b"2.0\n"[..]).unwrap();
        let name = format!("data.tar{suffix}").into_bytes();
        ar.append(&ar::Header::new(name, data.len() as u64), &data[..]).unwrap();
        path
    }

    #[test]
    fn a_file_is_taken_out_of_each_compression() {
        for suffix in ["", ".xz", ".gz", ".zst"] {
            let deb = deb_with(suffix, &[("./boot/config", b"c"), ("./boot/vmlinuz-6.1", b"kernel")]);
            let got = extract_file(&deb, "the kernel", |p| p.starts_with("boot/vmlinuz-"));
            let missing = extract_file(&deb, "busybox", |p| p == "bin/busybox");
            let no_control = control_field(&deb, "Depends");
            std::fs::remove_file(&deb).unwrap();
            let got = got.unwrap();
            assert_eq!((got.path.as_str(), &got.data[..]), ("boot/vmlinuz-6.1", &b"kernel"[..]), "{suffix}");
            assert!(matches!(missing, Err(DebError::NotFound { .. })), "{missing:?}");
            assert!(matches!(no_control, Err(DebError::NoMember { member: "control", .. })), "{no_control:?}");
        }
    }

    #[test]
    fn an_unknown_compression_is_named() {
        let deb = deb_with(".lz4", &[]);
        let err = extract_file(&deb, "x", |_| true).unwrap_err();
        std::fs::remove_file(&deb).unwrap();
        assert!(err.to_string().contains("data.tar.lz4"), "{err}");
    }
}
