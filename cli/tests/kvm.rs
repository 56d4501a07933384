//! `bt86 run --engine kvm`: the honest host check (exit status 4 and one line naming
//! the reason), and tiny hand-assembled guests under `--allow-software-kvm` (quick
//! even under the slow software KVM of the development machines), each also run under
//! `--engine bt` for the same answer.
//!
//! Expectations follow what this host has (`bt86_runtime::kvm::check_host`): no
//! /dev/kvm, a software-backed one (kvm_pvm here), or a hardware-backed one.

use bt86_runtime::kvm::{self, Backing, KvmUnavailable};
use std::process::{Command, Output};

fn bt86() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bt86"))
}

use bt86_tests::images::{multiboot_elf, DATA_OFFSET, LOAD};

/// Where the data of [`multiboot_elf`] images is loaded.
const DATA_ADDR: u32 = LOAD + DATA_OFFSET;

/// `mov $v, %eax; mov $0xf4, %dx; out %eax, (%dx)`: exit with `v`, then spin.
fn exit_with(v: u32) -> Vec<u8> {
    let mut c = vec![0xb8];
    c.extend_from_slice(&v.to_le_bytes());
    c.extend_from_slice(&[0x66, 0xba, 0xf4, 0x00, 0xef, 0xeb, 0xfe]);
    c
}

/// The brief's guest: print "K" on COM1, exit with 7.
fn k_guest() -> Vec<u8> {
    // mov $0x3f8,%dx; mov $'K',%al; out %al,(%dx)
    let mut code = vec![0x66, 0xba, 0xf8, 0x03, 0xb0, b'K', 0xee];
    code.extend(exit_with(7));
    multiboot_elf(&code, &[])
}

fn tmp_image(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("bt86-kvm-{}-{name}.elf", std::process::id()));
    std::fs::write(&p, bytes).expect("write temp image");
    p
}

/// Runs `bt86 run` on `image` with `args`.
fn run(name: &str, image: &[u8], args: &[&str]) -> Output {
    let p = tmp_image(name, image);
    let out = bt86().arg("run").arg("--kernel").arg(&p).args(args).output().expect("run bt86");
    let _ = std::fs::remove_file(&p);
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs the image under kvm (allowed on software) and bt; `None` when this host has no
/// usable /dev/kvm at all (then `--engine kvm` must refuse with status 4).
fn both(name: &str, image: &[u8], extra: &[&str]) -> Option<(Output, Output)> {
    let kvm_args: Vec<&str> = ["--engine", "kvm", "--allow-software-kvm"].iter().chain(extra).copied().collect();
    let bt_args: Vec<&str> = ["--engine", "bt"].iter().chain(extra).copied().collect();
    let k = run(&format!("{name}-kvm"), image, &kvm_args);
    let b = run(&format!("{name}-bt"), image, &bt_args);
    match kvm::check_host() {
        Err(e) if e.software_host().is_none() => {
            assert_eq!(k.status.code(), Some(4), "no usable KVM ({e}) must refuse: {}", text(&k.stderr));
            None
        }
        _ => Some((k, b)),
    }
}

#[test]
fn kvm_without_the_flag_refuses_or_runs_honestly() {
    let out = run("refuse", &k_guest(), &["--engine", "kvm"]);
    let stderr = text(&out.stderr);
    match kvm::check_host() {
        Ok(_) => {
            // A hardware-backed KVM: it simply runs.
            assert_eq!(out.status.code(), Some(7), "{stderr}");
            assert_eq!(text(&out.stdout), "K");
        }
        Err(e) => {
            assert_eq!(out.status.code(), Some(4), "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "one line naming the reason: {stderr}");
            assert!(out.stdout.is_empty(), "the guest must not have run");
            match e {
                KvmUnavailable::Missing => assert!(stderr.contains("not found"), "{stderr}"),
                KvmUnavailable::Software { host } => {
                    assert!(stderr.contains("software hypervisor") || stderr.contains("not hardware-backed"), "{stderr}");
                    assert!(stderr.contains("--allow-software-kvm"), "{stderr}");
                    if let Backing::Software { module: Some(m) } = host.backing {
                        assert!(stderr.contains(&m), "names the module {m}: {stderr}");
                    }
                }
                other => assert!(stderr.contains(&other.to_string()), "{stderr}"),
            }
        }
    }
}

#[test]
fn kvm_on_this_machine_names_kvm_pvm() {
    // The development machines: /dev/kvm from the kvm_pvm module.
    if !std::path::Path::new("/sys/module/kvm_pvm").exists() || !std::path::Path::new("/dev/kvm").exists() {
        return;
    }
    let out = run("pvm", &k_guest(), &["--engine", "kvm"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("software hypervisor") && stderr.contains("kvm_pvm"), "{stderr}");
    assert!(stderr.contains("32-bit guests very slowly"), "{stderr}");
}

#[test]
fn tiny_guest_runs_under_both_engines() {
    let Some((k, b)) = both("tiny", &k_guest(), &[]) else { return };
    for (engine, out) in [("kvm", &k), ("bt", &b)] {
        assert_eq!(out.status.code(), Some(7), "{engine}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "K", "{engine}");
    }
    if kvm::check_host().is_err() {
        let stderr = text(&k.stderr);
        assert!(stderr.starts_with("bt86: warning:") && stderr.contains("not VT-x/AMD-V"), "{stderr}");
    }
}

#[test]
fn kvm_statistics_use_the_bt_key_names() {
    let Some((k, b)) = both("stats", &k_guest(), &["--stats=json"]) else { return };
    let json = |o: &Output| -> serde_json::Value {
        let stderr = text(&o.stderr);
        let line = stderr.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("a JSON line: {stderr}"));
        serde_json::from_str(line).expect("valid JSON")
    };
    let (kj, bj) = (json(&k), json(&b));
    for key in ["guest_exits", "exits", "run_seconds"] {
        assert!(kj.get(key).is_some() && bj.get(key).is_some(), "{key} in both: {kj} / {bj}");
    }
    // Two `out`s: the console byte and the exit port.
    assert_eq!(kj["exits"]["io"], 2, "{kj}");
    assert_eq!(kj["guest_exits"], 2, "{kj}");
    assert_eq!(kj["engine"], "kvm");
}

#[test]
fn string_and_input_port_io() {
    // mov $0x3f8,%dx; mov $DATA,%esi; mov $3,%ecx; cld; rep outsb     -- "OK\n"
    // add $5,%dx; in (%dx),%al; movzbl %al,%eax                     -- the UART's LSR
    // mov $0xf4,%dx; out %eax,(%dx)                                  -- exit with it
    let mut code = vec![0x66, 0xba, 0xf8, 0x03, 0xbe];
    code.extend_from_slice(&DATA_ADDR.to_le_bytes());
    code.extend_from_slice(&[0xb9, 3, 0, 0, 0, 0xfc, 0xf3, 0x6e]);
    code.extend_from_slice(&[0x66, 0x83, 0xc2, 0x05, 0xec, 0x0f, 0xb6, 0xc0]);
    code.extend_from_slice(&[0x66, 0xba, 0xf4, 0x00, 0xef, 0xeb, 0xfe]);
    let Some((k, b)) = both("strio", &multiboot_elf(&code, b"OK\n"), &[]) else { return };
    for (engine, out) in [("kvm", &k), ("bt", &b)] {
        assert_eq!(text(&out.stdout), "OK\n", "{engine}: {}", text(&out.stderr));
        // LSR: transmitter empty and holding register empty.
        assert_eq!(out.status.code(), Some(0x60), "{engine}: {}", text(&out.stderr));
    }
}

#[test]
fn timeout_stops_a_spinning_guest() {
    // jmp . : never exits on its own, so only the timeout (a signal under KVM) ends it.
    let image = multiboot_elf(&[0xeb, 0xfe], &[]);
    let started = std::time::Instant::now();
    let Some((k, b)) = both("spin", &image, &["--timeout", "0.5"]) else { return };
    for (engine, out) in [("kvm", &k), ("bt", &b)] {
        assert_eq!(out.status.code(), Some(3), "{engine}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("stopped at eip 0x0010006c"), "{engine}: {}", text(&out.stderr));
    }
    assert!(started.elapsed().as_secs() < 15, "took {:?}", started.elapsed());
}

#[test]
fn hlt_and_triple_fault_are_reported() {
    // hlt
    let Some((k, b)) = both("hlt", &multiboot_elf(&[0xf4], &[]), &[]) else { return };
    for (engine, out) in [("kvm", &k), ("bt", &b)] {
        assert_eq!(out.status.code(), Some(0), "{engine}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("powered off (hlt with interrupts off at eip 0x0010006c)"), "{engine}: {}", text(&out.stderr));
    }
    // ud2 with no IDT: bt reports the exception, KVM the resulting shutdown.
    let Some((k, b)) = both("ud2", &multiboot_elf(&[0x0f, 0x0b], &[]), &[]) else { return };
    assert_eq!(b.status.code(), Some(3), "{}", text(&b.stderr));
    assert_eq!(k.status.code(), Some(3), "{}", text(&k.stderr));
    assert!(text(&k.stderr).contains("triple fault at eip 0x0010006c"), "{}", text(&k.stderr));
}

#[test]
fn software_kvm_emulation_failure_names_the_instruction() {
    // lar %eax,%ecx, then exit 5. The software KVM here cannot emulate lar.
    let mut code = vec![0x0f, 0x02, 0xc8];
    code.extend(exit_with(5));
    let image = multiboot_elf(&code, &[]);
    let Some((k, b)) = both("lar", &image, &[]) else { return };
    assert_eq!(b.status.code(), Some(5), "{}", text(&b.stderr));
    match kvm::check_host() {
        Err(KvmUnavailable::Software { host })
            if host.backing == (Backing::Software { module: Some("kvm_pvm".into()) }) =>
        {
            let stderr = text(&k.stderr);
            assert_eq!(k.status.code(), Some(3), "{stderr}");
            assert!(
                stderr.contains("KVM emulation failure on instruction bytes 0f 02 c8") && stderr.contains("eip 0x0010006c"),
                "{stderr}"
            );
        }
        // Elsewhere lar runs (natively or emulated) and the guest exits normally.
        _ => {
            if k.status.code() != Some(5) {
                assert!(text(&k.stderr).contains("emulation failure"), "{}", text(&k.stderr));
            }
        }
    }
}

#[test]
fn help_documents_the_engine_and_exit_status_4() {
    let out = bt86().args(["run", "--help"]).output().expect("run bt86");
    let help = text(&out.stdout);
    assert!(help.contains("--engine") && help.contains("--allow-software-kvm"), "{help}");
    assert!(help.contains("4   --engine kvm cannot run here"), "{help}");
}
