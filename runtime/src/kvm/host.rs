//! Honest host checks for the KVM engine: is there a /dev/kvm, may we use it, does it
//! speak the stable API, and is it backed by the CPU's virtualization extensions
//! (VT-x `vmx`, AMD-V `svm`) or by a software hypervisor that only looks like KVM?
//!
//! Timing a guest under a software-backed KVM and calling it "hardware-assisted" would
//! be meaningless (the `kvm_pvm` module on the machines bt86 is developed on emulates
//! 32-bit guests very slowly), so a software backing is reported as a reason not to run
//! unless the user allows it (`--allow-software-kvm`).
//!
//! The decision is a pure function of what was read from the host ([`HostProbe`]), so
//! it is unit-tested with made-up `/proc/cpuinfo` and module lists.

use std::io::ErrorKind;
use std::path::Path;
use thiserror::Error;

/// The device node.
pub const KVM_DEV: &str = "/dev/kvm";
/// The only KVM API version there has ever been (`KVM_API_VERSION`).
pub const KVM_STABLE_API: i32 = 12;

/// Kernel modules known to provide /dev/kvm without VT-x/AMD-V underneath.
const SOFTWARE_KVM_MODULES: &[&str] = &["kvm_pvm"];

/// What provides /dev/kvm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backing {
    /// The CPU's virtualization extensions: `flag` is `vmx` or `svm`.
    Hardware { flag: &'static str },
    /// No `vmx`/`svm` flag: a software hypervisor. `module` names it when known.
    Software { module: Option<String> },
}

/// A usable /dev/kvm and what backs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvmHost {
    pub api_version: i32,
    pub backing: Backing,
}

impl KvmHost {
    /// Whether KVM here runs guests on VT-x/AMD-V.
    pub fn is_hardware(&self) -> bool {
        matches!(self.backing, Backing::Hardware { .. })
    }

    /// A short description: `hardware (vmx)` or `software (kvm_pvm)`.
    pub fn describe(&self) -> String {
        match &self.backing {
            Backing::Hardware { flag } => format!("hardware ({flag})"),
            Backing::Software { module: Some(m) } => format!("software ({m})"),
            Backing::Software { module: None } => "software (no vmx/svm)".to_string(),
        }
    }
}

/// Why the KVM engine cannot (or, for a software backing, should not) run here.
/// Each message is one line that names the reason.
#[derive(Debug, Error)]
pub enum KvmUnavailable {
    #[error("{KVM_DEV} not found: this host offers no KVM (it needs VT-x/AMD-V and the kvm_intel or kvm_amd module)")]
    Missing,
    #[error("{KVM_DEV} is not accessible (permission denied): run as a user in the group that owns it (usually `kvm`)")]
    NoAccess,
    #[error("cannot open {KVM_DEV}: {0}")]
    Open(String),
    #[error("{KVM_DEV} speaks KVM API version {found}, bt86 needs version {KVM_STABLE_API}")]
    ApiVersion { found: i32 },
    #[error("{}", software_message(.host))]
    Software { host: KvmHost },
}

impl KvmUnavailable {
    /// The usable-but-software-backed host, for callers that allow it.
    pub fn software_host(&self) -> Option<&KvmHost> {
        match self {
            Self::Software { host } => Some(host),
            _ => None,
        }
    }
}

fn software_message(host: &KvmHost) -> String {
    match &host.backing {
        Backing::Software { module: Some(m) } => format!(
            "{KVM_DEV} is provided by a software hypervisor (the {m} module), not by VT-x/AMD-V: it emulates 32-bit guests very slowly and its timings mean nothing; --allow-software-kvm runs anyway"
        ),
        _ => format!(
            "{KVM_DEV} is not hardware-backed (no vmx or svm flag in /proc/cpuinfo): a software hypervisor provides it, so guests run slowly and timings mean nothing; --allow-software-kvm runs anyway"
        ),
    }
}

/// What opening /dev/kvm gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DevState {
    Missing,
    NoAccess,
    /// Another open error (message).
    OpenFailed(String),
    /// Opened; `KVM_GET_API_VERSION` returned this.
    Api(i32),
}

/// Everything the check reads from the host, as plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostProbe {
    pub dev: DevState,
    /// Contents of /proc/cpuinfo (empty if unreadable).
    pub cpuinfo: String,
    /// Loaded module names, one per line: the first column of /proc/modules, or the
    /// entries of /sys/module (either format is accepted, see [`loaded_modules`]).
    pub modules: String,
}

/// The virtualization flag (`vmx` or `svm`) if every `flags` line of `cpuinfo` lists
/// one (all CPUs must have it; an empty cpuinfo has none).
pub fn virt_flag(cpuinfo: &str) -> Option<&'static str> {
    let mut found: Option<&'static str> = None;
    for line in cpuinfo.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        if key.trim() != "flags" {
            continue;
        }
        let words: Vec<&str> = value.split_whitespace().collect();
        let this = if words.contains(&"vmx") {
            "vmx"
        } else if words.contains(&"svm") {
            "svm"
        } else {
            return None;
        };
        found = Some(this);
    }
    found
}

/// Module names from /proc/modules text (`name size refcount deps state addr` per
/// line) or from a plain list of names, one per line.
pub fn loaded_modules(text: &str) -> Vec<&str> {
    text.lines().filter_map(|l| l.split_whitespace().next()).collect()
}

/// The first known software-KVM module among `modules`.
pub fn software_kvm_module(modules: &str) -> Option<String> {
    loaded_modules(modules)
        .into_iter()
        .find(|m| SOFTWARE_KVM_MODULES.contains(m))
        .map(str::to_string)
}

/// The decision, from what was read.
pub fn evaluate(probe: &HostProbe) -> Result<KvmHost, KvmUnavailable> {
    let api_version = match &probe.dev {
        DevState::Missing => return Err(KvmUnavailable::Missing),
        DevState::NoAccess => return Err(KvmUnavailable::NoAccess),
        DevState::OpenFailed(e) => return Err(KvmUnavailable::Open(e.clone())),
        DevState::Api(v) => *v,
    };
    if api_version != KVM_STABLE_API {
        return Err(KvmUnavailable::ApiVersion { found: api_version });
    }
    // A known software module wins even if the flags claim vmx: some nested setups
    // pass the flag through while KVM itself is the software one.
    if let Some(module) = software_kvm_module(&probe.modules) {
        let host = KvmHost { api_version, backing: Backing::Software { module: Some(module) } };
        return Err(KvmUnavailable::Software { host });
    }
    match virt_flag(&probe.cpuinfo) {
        Some(flag) => Ok(KvmHost { api_version, backing: Backing::Hardware { flag } }),
        None => Err(KvmUnavailable::Software {
            host: KvmHost { api_version, backing: Backing::Software { module: None } },
        }),
    }
}

/// Checks this host: Ok only for a hardware-backed KVM.
pub fn check_host() -> Result<KvmHost, KvmUnavailable> {
    evaluate(&probe_host())
}

/// Like [`check_host`], but a software-backed KVM is accepted when `allow_software`.
pub fn check_host_allowing(allow_software: bool) -> Result<KvmHost, KvmUnavailable> {
    match check_host() {
        Err(KvmUnavailable::Software { host }) if allow_software => Ok(host),
        other => other,
    }
}

/// Reads the host: opens /dev/kvm and asks its API version, reads /proc/cpuinfo and
/// the loaded modules (/proc/modules, else the names under /sys/module).
pub fn probe_host() -> HostProbe {
    let dev = if !Path::new(KVM_DEV).exists() {
        DevState::Missing
    } else {
        match kvm_ioctls::Kvm::new() {
            Ok(kvm) => DevState::Api(kvm.get_api_version()),
            Err(e) => match std::io::Error::from_raw_os_error(e.errno()).kind() {
                ErrorKind::NotFound => DevState::Missing,
                ErrorKind::PermissionDenied => DevState::NoAccess,
                _ => DevState::OpenFailed(std::io::Error::from_raw_os_error(e.errno()).to_string()),
            },
        }
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let modules = std::fs::read_to_string("/proc/modules").unwrap_or_else(|_| {
        std::fs::read_dir("/sys/module")
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    });
    HostProbe { dev, cpuinfo, modules }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU_VMX: &str = "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse2\n\nprocessor\t: 1\nflags\t\t: fpu vme vmx sse2\n";
    const CPU_SVM: &str = "processor\t: 0\nflags\t\t: fpu svm lm\n";
    const CPU_NONE: &str = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae hypervisor\nbugs\t\t: spectre_v1\n";
    /// /proc/modules format.
    const MODS_PVM: &str = "kvm_pvm 57344 0 - Live 0x0000000000000000\nkvm 1150976 1 kvm_pvm, Live 0x0000000000000000\n";
    const MODS_INTEL: &str = "kvm_intel 380928 0 - Live 0x0\nkvm 1150976 1 kvm_intel, Live 0x0\n";

    fn probe(dev: DevState, cpuinfo: &str, modules: &str) -> HostProbe {
        HostProbe { dev, cpuinfo: cpuinfo.into(), modules: modules.into() }
    }

    #[test]
    fn flags_parsing() {
        assert_eq!(virt_flag(CPU_VMX), Some("vmx"));
        assert_eq!(virt_flag(CPU_SVM), Some("svm"));
        assert_eq!(virt_flag(CPU_NONE), None);
        assert_eq!(virt_flag(""), None);
        // "vmx" must be a whole word, and on every CPU.
        assert_eq!(virt_flag("flags : vmxfoo avx\n"), None);
        assert_eq!(virt_flag("flags : vmx\nflags : sse\n"), None);
        // Other keys that mention vmx do not count.
        assert_eq!(virt_flag("vmx flags : ept vpid\nflags : sse\n"), None);
    }

    #[test]
    fn module_parsing() {
        assert_eq!(loaded_modules(MODS_PVM), vec!["kvm_pvm", "kvm"]);
        assert_eq!(software_kvm_module(MODS_PVM).as_deref(), Some("kvm_pvm"));
        assert_eq!(software_kvm_module(MODS_INTEL), None);
        // /sys/module listing: bare names.
        assert_eq!(software_kvm_module("8250\nkvm\nkvm_pvm\nloop\n").as_deref(), Some("kvm_pvm"));
        assert_eq!(software_kvm_module("kvm_pvmx\n"), None);
        assert_eq!(software_kvm_module(""), None);
    }

    #[test]
    fn hardware_host_is_accepted() {
        let h = evaluate(&probe(DevState::Api(12), CPU_VMX, MODS_INTEL)).unwrap();
        assert!(h.is_hardware());
        assert_eq!(h.describe(), "hardware (vmx)");
        let h = evaluate(&probe(DevState::Api(12), CPU_SVM, "")).unwrap();
        assert_eq!(h.backing, Backing::Hardware { flag: "svm" });
    }

    #[test]
    fn software_host_names_the_module() {
        let e = evaluate(&probe(DevState::Api(12), CPU_NONE, MODS_PVM)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("software hypervisor") && msg.contains("kvm_pvm"), "{msg}");
        assert!(msg.contains("32-bit guests very slowly") && msg.contains("--allow-software-kvm"), "{msg}");
        assert!(!msg.contains('\n'));
        let host = e.software_host().unwrap();
        assert_eq!(host.describe(), "software (kvm_pvm)");
        // Even when the flags pass vmx through.
        assert!(evaluate(&probe(DevState::Api(12), CPU_VMX, MODS_PVM)).is_err());
    }

    #[test]
    fn software_host_without_a_known_module() {
        let e = evaluate(&probe(DevState::Api(12), CPU_NONE, MODS_INTEL)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("no vmx or svm flag") && msg.contains("--allow-software-kvm"), "{msg}");
        assert_eq!(e.software_host().unwrap().backing, Backing::Software { module: None });
    }

    #[test]
    fn device_problems_come_first() {
        let e = evaluate(&probe(DevState::Missing, CPU_VMX, MODS_INTEL)).unwrap_err();
        assert!(e.to_string().contains("/dev/kvm not found"), "{e}");
        let e = evaluate(&probe(DevState::NoAccess, CPU_NONE, MODS_PVM)).unwrap_err();
        assert!(e.to_string().contains("permission denied"), "{e}");
        assert!(e.software_host().is_none());
        let e = evaluate(&probe(DevState::OpenFailed("Device or resource busy".into()), CPU_VMX, "")).unwrap_err();
        assert!(e.to_string().contains("busy"), "{e}");
        let e = evaluate(&probe(DevState::Api(11), CPU_VMX, "")).unwrap_err();
        assert!(e.to_string().contains("API version 11"), "{e}");
    }

    #[test]
    fn this_host_gives_an_answer() {
        // Whatever this machine is, the check answers without panicking, in one line.
        match check_host() {
            Ok(h) => assert_eq!(h.api_version, KVM_STABLE_API),
            Err(e) => assert!(!e.to_string().contains('\n')),
        }
    }
}
