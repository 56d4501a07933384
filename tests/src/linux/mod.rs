//! Debian's unmodified i386 kernel and busybox, as the Linux tests and the Linux benchmark
//! use them: fetched by package name with apt (`linux-image-686`, a metapackage whose
//! dependency is the real image package, and `busybox-static`), taken out of the `.deb`s
//! in Rust (`deb`), cached under `target/linux-guest/` so later runs fetch nothing, and
//! packed with a scripted `/init` into a gzip newc initramfs (`initramfs`, `newc`).
//!
//! A machine that cannot fetch them (not Debian, no network, i386 packages not enabled
//! and not root to enable them) gives `FetchError::Unavailable`, which tests turn into
//! a skip that says why.

pub mod deb;
pub mod initramfs;
pub mod newc;
pub mod programs;

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The packages fetched: the kernel's metapackage and busybox, for i386.
const KERNEL_METAPACKAGE: &str = "linux-image-686:i386";
const BUSYBOX_PACKAGE: &str = "busybox-static:i386";

/// `/init` of the end-to-end test: checks processes, pipes, a tmpfs file and signals,
/// printing "bt86-check: NAME ok" per check and "bt86-check: PASS", then powers off.
pub const CHECKS_INIT: &str = include_str!("init-checks.sh");

/// The checks `CHECKS_INIT` reports, in order.
pub const CHECKS: &[&str] = &["kernel", "processes", "pipes", "tmpfs", "signals"];

/// `/init` of the interactive test: a busybox shell on the console, prompt
/// `SHELL_PROMPT`.
pub const SHELL_INIT: &str = include_str!("init-shell.sh");

pub const SHELL_PROMPT: &str = "bt86-guest# ";

/// A kernel and a busybox ready to boot, in the cache.
#[derive(Clone, Debug)]
pub struct LinuxGuest {
    /// The bzImage (`boot/vmlinuz-*` of the image package).
    pub kernel: PathBuf,
    /// The static i386 busybox.
    pub busybox: PathBuf,
    /// The `.deb` files they came from, one name per line.
    pub source: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// This machine cannot fetch the packages; says why and what would make it able to.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Deb(#[from] deb::DebError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{meta}: no linux-image-* package in its Depends ({depends:?})")]
    NoImageDependency { meta: PathBuf, depends: Option<String> },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> FetchError {
    let what = what.into();
    move |source| FetchError::Io { what, source }
}

impl LinuxGuest {
    /// The cached guest, fetched first if the cache does not hold it. Callers in several
    /// processes (test binaries run at once) take turns through a lock file.
    /// Once a process has found the packages unavailable it does not ask apt again.
    pub fn get() -> Result<Self, FetchError> {
        static UNAVAILABLE: OnceLock<String> = OnceLock::new();
        if let Some(why) = UNAVAILABLE.get() {
            return Err(FetchError::Unavailable(why.clone()));
        }
        let got = Self::get_locked();
        if let Err(FetchError::Unavailable(why)) = &got {
            let _ = UNAVAILABLE.set(why.clone());
        }
        got
    }

    fn get_locked() -> Result<Self, FetchError> {
        let dir = cache_dir();
        fs::create_dir_all(&dir).map_err(io_error(format!("creating {}", dir.display())))?;
        let _lock = CacheLock::take(&dir.join(".lock"))?;
        if let Some(guest) = Self::cached(&dir) {
            return Ok(guest);
        }
        let scratch = dir.join("debs");
        let fetched = fetch_into(&scratch, &dir);
        let _ = fs::remove_dir_all(&scratch);
        fetched?;
        Self::cached(&dir).ok_or_else(|| FetchError::Unavailable(format!("{} is still empty after fetching", dir.display())))
    }

    /// For a test: the guest, or None after printing why the test is skipped. Any other
    /// error (a package that cannot be read) fails the test.
    pub fn for_test() -> Option<Self> {
        match Self::get() {
            Ok(guest) => Some(guest),
            Err(FetchError::Unavailable(why)) => {
                eprintln!("skipped: cannot fetch Debian's i386 kernel and busybox: {why}");
                None
            }
            Err(e) => panic!("fetching the Linux guest: {e}"),
        }
    }

    /// Writes to `path` an initramfs of this busybox whose `/init` is `init`.
    pub fn write_initramfs(&self, init: &str, path: &Path) -> Result<(), FetchError> {
        self.write_initramfs_with(init, &[], path)
    }

    /// `write_initramfs` with `programs` (name, executable) in `/bin` too.
    pub fn write_initramfs_with(&self, init: &str, programs: &[(&str, &[u8])], path: &Path) -> Result<(), FetchError> {
        let busybox = fs::read(&self.busybox).map_err(io_error(format!("reading {}", self.busybox.display())))?;
        write(path, &initramfs::busybox_initramfs_with(&busybox, init, programs))
    }

    /// The guest in `dir` if complete (`source` is written last).
    fn cached(dir: &Path) -> Option<Self> {
        let source = fs::read_to_string(dir.join("source")).ok()?;
        let (kernel, busybox) = (dir.join("vmlinuz"), dir.join("busybox"));
        (kernel.is_file() && busybox.is_file()).then_some(Self { kernel, busybox, source })
    }
}

/// `target/linux-guest`: `$CARGO_TARGET_DIR` when set (now or at build time), else
/// the workspace's `target/`.
pub fn cache_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("linux-guest")
}

fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_owned()
}

/// An exclusive `flock` on a file, released when dropped (closing the file).
struct CacheLock {
    _held: fs::File,
}

impl CacheLock {
    fn take(path: &Path) -> Result<Self, FetchError> {
        let file = fs::File::create(path).map_err(io_error(format!("creating {}", path.display())))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| FetchError::Io { what: format!("locking {}", path.display()), source: e.into() })?;
        Ok(Self { _held: file })
    }
}

/// Downloads the packages into `scratch`, takes the kernel and busybox out of them, and
/// writes them to `dir`.
fn fetch_into(scratch: &Path, dir: &Path) -> Result<(), FetchError> {
    let _ = fs::remove_dir_all(scratch);
    fs::create_dir_all(scratch).map_err(io_error(format!("creating {}", scratch.display())))?;
    let (image_deb, busybox_deb) = download(&Apt { dir: scratch.to_owned() })?;
    let kernel = deb::extract_file(&image_deb, "boot/vmlinuz-*", |p| p.starts_with("boot/vmlinuz-"))?;
    // /bin before Debian's /usr merge, /usr/bin after it.
    let busybox = deb::extract_file(&busybox_deb, "bin/busybox", |p| p == "bin/busybox" || p == "usr/bin/busybox")?;
    write(&dir.join("vmlinuz"), &kernel.data)?;
    write(&dir.join("busybox"), &busybox.data)?;
    // Executable, so that it can run on the host too (the benchmark's native reference).
    let exec = fs::Permissions::from_mode(0o755);
    fs::set_permissions(dir.join("busybox"), exec).map_err(io_error("making busybox executable"))?;
    let source = [&image_deb, &busybox_deb].map(|d| d.file_name().unwrap_or_default().to_string_lossy().into_owned());
    write(&dir.join("source"), format!("{}\n", source.join("\n")).as_bytes())
}

/// The image package's and busybox's `.deb`s, downloaded by `apt`: the kernel's
/// metapackage first, to learn which image package is current.
fn download(apt: &Apt) -> Result<(PathBuf, PathBuf), FetchError> {
    apt.enable_i386()?;
    apt.download(&[KERNEL_METAPACKAGE, BUSYBOX_PACKAGE])?;
    let image = image_package(&apt.downloaded("linux-image-686_")?)?;
    apt.download(&[&format!("{image}:i386")])?;
    Ok((apt.downloaded(&format!("{image}_"))?, apt.downloaded("busybox-static_")?))
}

/// The real image package a `linux-image-686` metapackage depends on, e.g.
/// `linux-image-6.1.0-50-686`.
fn image_package(meta: &Path) -> Result<String, FetchError> {
    let depends = deb::control_field(meta, "Depends")?;
    let name = depends.as_deref().and_then(|d| {
        d.split([',', '|']).map(|alt| alt.split_whitespace().next().unwrap_or("")).find(|n| n.starts_with("linux-image-"))
    });
    name.map(str::to_owned).ok_or_else(|| FetchError::NoImageDependency { meta: meta.to_owned(), depends })
}

fn write(path: &Path, data: &[u8]) -> Result<(), FetchError> {
    // Through a temporary name, so a crash never leaves half a file under the real one.
    let tmp = path.with_extension("partial");
    fs::write(&tmp, data).map_err(io_error(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io_error(format!("renaming to {}", path.display())))
}

/// apt and dpkg, downloading into `dir`.
struct Apt {
    dir: PathBuf,
}

impl Apt {
    /// Makes i386 packages known to apt: `dpkg --add-architecture i386` and `apt-get
    /// update` if they are not yet (root only).
    fn enable_i386(&self) -> Result<(), FetchError> {
        let archs = run(Command::new("dpkg").arg("--print-foreign-architectures"), "dpkg")?;
        if String::from_utf8_lossy(&archs.stdout).split_whitespace().any(|a| a == "i386") {
            return Ok(());
        }
        if !rustix::process::geteuid().is_root() {
            return Err(FetchError::Unavailable(
                "i386 packages are not enabled (as root: dpkg --add-architecture i386 && apt-get update)".into(),
            ));
        }
        succeed(run(Command::new("dpkg").args(["--add-architecture", "i386"]), "dpkg")?, "dpkg --add-architecture i386")?;
        self.update()
    }

    /// `apt-get download` of `packages`; when apt does not know them (an index without
    /// i386, or an old one) and we are root, `apt-get update` and once more.
    fn download(&self, packages: &[&str]) -> Result<(), FetchError> {
        let first = self.apt_get("download", packages)?;
        if first.status.success() {
            return Ok(());
        }
        if !rustix::process::geteuid().is_root() {
            return succeed(first, "apt-get download");
        }
        self.update()?;
        succeed(self.apt_get("download", packages)?, "apt-get download")
    }

    /// `apt-get update`, twice if need be: it may fail once on a security index and
    /// succeed on the second try.
    fn update(&self) -> Result<(), FetchError> {
        let first = self.apt_get("update", &[])?;
        if first.status.success() {
            return Ok(());
        }
        succeed(self.apt_get("update", &[])?, "apt-get update")
    }

    fn apt_get(&self, verb: &str, args: &[&str]) -> Result<Output, FetchError> {
        let mut cmd = Command::new("apt-get");
        cmd.args(["-q", verb]).args(args).current_dir(&self.dir);
        run(&mut cmd, "apt-get")
    }

    /// The `.deb` downloaded whose file name starts with `prefix`.
    fn downloaded(&self, prefix: &str) -> Result<PathBuf, FetchError> {
        let entries = fs::read_dir(&self.dir).map_err(io_error(format!("listing {}", self.dir.display())))?;
        let found = entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with(prefix) && name.ends_with(".deb")
        });
        found.ok_or_else(|| FetchError::Unavailable(format!("apt-get download left no {prefix}*.deb in {}", self.dir.display())))
    }
}

/// Runs `cmd`; a program that is not there makes the packages unavailable.
fn run(cmd: &mut Command, program: &str) -> Result<Output, FetchError> {
    cmd.output().map_err(|e| FetchError::Unavailable(format!("cannot run {program} ({e}): not a Debian host?")))
}

/// A failed command makes the packages unavailable, with the end of what it said.
fn succeed(out: Output, what: &str) -> Result<(), FetchError> {
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = err.lines().rev().take(3).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(FetchError::Unavailable(format!("{what} failed ({}): {}", out.status, tail.join(" / "))))
}

