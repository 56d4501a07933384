//! Translation throughput: guest instructions translated per second, over the
//! code of the CPU benchmark's guest kernel (compiler output, as a kernel's would
//! be). Units are built back to back from the entry to the end of the executable
//! segment, the cache is flushed, and the pass repeated.
//!
//! `cargo bench -p bt86-benches --bench translate`

use bt86_translator::{GuestCode, Mode, Translator, UnitKey};
use std::time::Instant;

struct Image {
    base: u32,
    bytes: Vec<u8>,
}

impl GuestCode for Image {
    fn fetch(&mut self, linear: u32, buf: &mut [u8]) -> usize {
        let Some(off) = linear.checked_sub(self.base).map(|o| o as usize) else { return 0 };
        let n = buf.len().min(self.bytes.len().saturating_sub(off));
        buf[..n].copy_from_slice(&self.bytes[off..off + n]);
        n
    }
}

fn text_segment(path: &str) -> Image {
    let data = std::fs::read(path).expect("read the bench guest");
    let elf = goblin::elf::Elf::parse(&data).expect("parse the bench guest");
    let ph = elf
        .program_headers
        .iter()
        .find(|p| p.p_type == goblin::elf::program_header::PT_LOAD && p.is_executable())
        .expect("an executable segment");
    let start = usize::try_from(ph.p_offset).expect("offset");
    let len = usize::try_from(ph.p_filesz).expect("size");
    Image { base: u32::try_from(ph.p_paddr).expect("32-bit"), bytes: data[start..start + len].to_vec() }
}

fn main() {
    let mut image = text_segment(env!("BT86_BENCH_GUEST"));
    let mut tr = Translator::new(64 << 20, bt86_translator::Isa::default()).expect("translator");
    let mode = Mode { fpu: bt86_translator::fpu_mode::OSFXSR, ..Mode::default() };
    let end = image.base + u32::try_from(image.bytes.len()).expect("size");
    let (mut insns, mut units, mut host_bytes) = (0u64, 0u64, 0u64);
    let passes = 200;
    let started = Instant::now();
    for _ in 0..passes {
        tr.flush();
        let before = tr.stats().guest_insns_translated;
        let mut eip = image.base;
        while eip < end {
            let key = UnitKey { eip, phys: eip, mode };
            let t = tr.translate(key, &mut image, &mut |p| Some(p >> 12), false).expect("translate");
            units += 1;
            let next = tr.unit_guest_end(t.unit);
            eip = if next > eip { next } else { eip + 1 };
        }
        insns += tr.stats().guest_insns_translated - before;
        host_bytes += tr.cache_bytes() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    {
        println!("translation throughput over {} bytes of guest code, {passes} passes:", image.bytes.len());
        println!("  {:.0} guest instructions/s ({:.0} units/s)", insns as f64 / secs, units as f64 / secs);
        println!("  {:.2} host instructions per guest instruction", tr.stats().host_insns_emitted as f64 / tr.stats().guest_insns_translated as f64);
        println!("  {:.1} host bytes per guest instruction", host_bytes as f64 / insns as f64);
    }
}
