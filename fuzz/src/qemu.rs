//! The same guest under QEMU (`qemu-system-i386`, TCG), as the reference for what
//! a CPU does: the regression tests of issue 12 run their guests here too and
//! compare the events the harness logged.
//!
//! The guest's chunks travel in a multiboot image (the address fields of flag 16)
//! loaded in the last MiB of RAM, above everything the harness uses and above what
//! the firmware touches; a stub there copies each chunk to its place, clears the
//! copied data and jumps to the harness's set-up, in the state a multiboot loader
//! leaves (flat 32-bit protected mode, paging off, IF clear), as `Vm::set_flat_state`
//! does for bt86. Guest RAM is a file QEMU shares, so it can be read after QEMU has
//! exited through the isa-debug-exit port.

use crate::case::GuestCase;
use crate::exec::{events_in, Event};
use crate::harness as h;
use iced_x86::code_asm as x;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the image goes: the last MiB of the harness's 8 MiB.
const LOAD: u32 = (h::MEM_MIB - 1) << 20;
/// Bytes of the multiboot header at the start of the image.
const HEADER: u32 = 48;
/// Room for the stub after the header.
const STUB: u32 = 0x100;

/// Why QEMU could not give a run.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("qemu-system-i386 is not installed (apt-get install qemu-system-x86)")]
    Missing,
    #[error("the guest does not fit the loader ({0})")]
    Image(String),
    #[error("QEMU: {0}")]
    Io(#[from] std::io::Error),
    #[error("QEMU did not finish within {0:?}")]
    Timeout(Duration),
}

/// A guest run under QEMU: the harness's exit code (`EXIT_DONE`, ...; None when
/// QEMU ended another way, e.g. a triple fault), the events logged, guest RAM.
#[derive(Debug)]
pub struct QemuRun {
    pub exit: Option<u32>,
    pub events: Vec<Event>,
    pub ram: Vec<u8>,
}

/// Whether `qemu-system-i386` is on PATH.
pub fn installed() -> bool {
    Command::new("qemu-system-i386").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Runs `g` under QEMU with CPU model `cpu` (e.g. "max", "pentium3").
pub fn run(g: &GuestCase, cpu: &str) -> Result<QemuRun, QemuError> {
    if !installed() {
        return Err(QemuError::Missing);
    }
    let dir = scratch_dir();
    std::fs::create_dir_all(&dir)?;
    let (image, ram) = (dir.join("guest.img"), dir.join("ram"));
    std::fs::write(&image, multiboot_image(g)?)?;
    let result = run_qemu(&image, &ram, cpu, g.mem_mib);
    let ram_bytes = std::fs::read(&ram);
    let _ = std::fs::remove_dir_all(&dir);
    let status = result?;
    let ram = ram_bytes?;
    // isa-debug-exit ends QEMU with (value << 1) | 1; the harness's code is in the low bits.
    let exit = status.filter(|s| s & 1 == 1).map(|s| (s as u32 >> 1) & 0x7f);
    Ok(QemuRun { exit, events: events_in(&ram), ram })
}

fn scratch_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!("bt86-fuzz-qemu-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

/// Runs QEMU to its end; its exit status.
fn run_qemu(image: &Path, ram: &Path, cpu: &str, mem_mib: u32) -> Result<Option<i32>, QemuError> {
    const LIMIT: Duration = Duration::from_secs(30);
    let backend = format!("memory-backend-file,id=ram0,size={mem_mib}M,mem-path={},share=on", ram.display());
    let mut child = Command::new("qemu-system-i386")
        .args(["-machine", "pc,memory-backend=ram0", "-m", &format!("{mem_mib}"), "-cpu", cpu])
        .args(["-object", &backend, "-kernel"])
        .arg(image)
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .args(["-display", "none", "-serial", "none", "-monitor", "none", "-no-reboot", "-net", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.code());
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(QemuError::Timeout(LIMIT));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The multiboot image: header, stub, the chunk table (length, destination,
/// source; a zero length ends it), the chunks' bytes.
fn multiboot_image(g: &GuestCase) -> Result<Vec<u8>, QemuError> {
    let table = LOAD + HEADER + STUB;
    let table_len = 12 * (g.chunks.len() as u32 + 1);
    let mut data = Vec::new();
    let mut rows = Vec::new();
    for c in &g.chunks {
        if c.addr >= LOAD || c.addr as usize + c.bytes.0.len() > LOAD as usize {
            return Err(QemuError::Image(format!("a chunk at {:#x} overlaps the image's MiB", c.addr)));
        }
        rows.push((c.bytes.0.len() as u32, c.addr, table + table_len + data.len() as u32));
        data.extend_from_slice(&c.bytes.0);
    }
    let end = table + table_len + data.len() as u32;
    if end > h::MEM_MIB << 20 {
        return Err(QemuError::Image(format!("{} bytes of chunks", data.len())));
    }
    let mut img = header();
    let stub = stub(table, end, g.entry).map_err(|e| QemuError::Image(e.to_string()))?;
    if stub.len() > STUB as usize {
        return Err(QemuError::Image("the stub outgrew its room".into()));
    }
    img.extend_from_slice(&stub);
    img.resize((HEADER + STUB) as usize, 0);
    for (len, dst, src) in rows.into_iter().chain([(0, 0, 0)]) {
        for v in [len, dst, src] {
            img.extend_from_slice(&v.to_le_bytes());
        }
    }
    img.extend_from_slice(&data);
    Ok(img)
}

fn header() -> Vec<u8> {
    let magic = 0x1bad_b002u32;
    let flags = 1u32 << 16;
    [magic, flags, magic.wrapping_add(flags).wrapping_neg(), LOAD, LOAD, 0, 0, LOAD + HEADER]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .chain([0u8; (HEADER - 32) as usize])
        .collect()
}

/// Copies every chunk of the table at `table`, clears the image from the table to
/// `end`, and jumps to `entry`.
fn stub(table: u32, end: u32, entry: u32) -> Result<Vec<u8>, iced_x86::IcedError> {
    use x::*;
    let mut a = CodeAssembler::new(32)?;
    let (mut next, mut done) = (a.create_label(), a.create_label());
    a.cld()?;
    a.mov(ebx, table)?;
    a.set_label(&mut next)?;
    a.mov(ecx, dword_ptr(ebx))?;
    a.test(ecx, ecx)?;
    a.jz(done)?;
    a.mov(edi, dword_ptr(ebx + 4))?;
    a.mov(esi, dword_ptr(ebx + 8))?;
    a.rep().movsb()?;
    a.add(ebx, 12)?;
    a.jmp(next)?;
    a.set_label(&mut done)?;
    a.mov(edi, table)?;
    a.mov(ecx, end - table)?;
    a.xor(eax, eax)?;
    a.rep().stosb()?;
    a.mov(eax, entry)?;
    a.jmp(eax)?;
    a.assemble(u64::from(LOAD + HEADER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::{BodyItem, Harness};

    #[test]
    fn a_ud2_under_qemu_is_logged_and_the_run_ends_done() {
        if !installed() {
            eprintln!("qemu-system-i386 not installed; skipping");
            return;
        }
        let g = Harness::standard(3, true).build(&[BodyItem::raw("ud2", vec![0x0f, 0x0b])], 2000);
        let run = run(&g, "max").expect("qemu runs");
        assert_eq!(run.exit, Some(h::EXIT_DONE), "{run:?}");
        assert_eq!(run.events.iter().map(|e| (e.vector, e.eip)).collect::<Vec<_>>(), vec![(6, h::BODY)]);
    }
}
