//! The guest harness: a few kilobytes of raw x86 placed in guest RAM around the
//! generated code (the *body*), so that generating a guest costs microseconds (no C
//! kit, no linker).
//!
//! The run starts in `setup` at CPL 0, flat, paging off (as `Vm::set_flat_state`
//! leaves it). Setup loads the harness's GDT, IDT, TSS and LDT, sets CR4, CR0 and
//! (with paging) CR3, the SYSENTER MSRs, the PICs (and the PIT for a timer stream),
//! the x87/SSE state, then the body's registers, and enters the body at CPL 0 (`jmp`)
//! or CPL 3 (`iret` to the ring-3 selectors).
//!
//! The body is a list of items, each at a 32-byte boundary, padded with `nop`. Every
//! IDT vector has a stub that records the event and goes on:
//! - an IRQ (vectors 0x20–0x2f, where setup puts the PICs) is acknowledged and
//!   returns where it interrupted;
//! - any other event is counted and logged (vector, eip, error code, cs) in the
//!   record area; if its eip lies in the body, the handler resumes at the next item
//!   (a table gives it per 32-byte slot), else it ends the run (`WILD`). Past
//!   [`EVENT_LIMIT`] events, or on a double fault, it ends the run too.
//! - the epilogue after the last item is `int $0xfd` (a DPL-3 gate): the run ends
//!   with `DONE`.
//!
//! The run ends through the isa-debug-exit port with `EXIT_BASE | code`.
//!
//! Physical layout (paging maps it one to one; the body, data, probe and user stack
//! pages are user pages):
//!
//! | range | what |
//! |---|---|
//! | `0x1000` | GDT (32 descriptors), GDTR at `0x1ff0` |
//! | `0x2000` | IDT (256 gates), IDTR at `0x27f0` |
//! | `0x3000` | TSS with an I/O bitmap; `0x5800` a second TSS (task switches) |
//! | `0x6000` | LDT (16 descriptors) |
//! | `0x8000` | vector stubs (16 bytes each), `0x9000` the common handler, `0x9800` services (call-gate, task and SYSENTER targets) |
//! | `0xa000` | record area; `0xb000` the resume table (a dword per body slot) |
//! | `0x10000` | page directory, `0x11000` the table for 0–4 MiB, `0x12000` the table for the top 4 MiB, `0x13000` a random table, `0x18000` another directory |
//! | `0x80000` | top of the ring-0 stack (TSS.esp0); the CPL-0 body runs on `0x7f000` |
//! | `0x100000` | setup; `0x110000` the body (up to 64 KiB) and its epilogue |
//! | `0x200000` | data (what random pointers point at), `0x280000` probe areas, `0x300000` top of the user stack |

use crate::case::{Bytes, Chunk, GuestCase, Item, Probe, Setup};
use crate::rng::Rng;
use iced_x86::code_asm::{self as x, CodeAssembler};
use iced_x86::IcedError;

pub const MEM_MIB: u32 = 8;
pub const GDT: u32 = 0x1000;
pub const GDT_ENTRIES: u32 = 32;
pub const GDTR: u32 = 0x1ff0;
pub const IDT: u32 = 0x2000;
pub const IDTR: u32 = 0x27f0;
pub const TSS: u32 = 0x3000;
pub const TSS2: u32 = 0x5800;
pub const LDT: u32 = 0x6000;
pub const LDT_ENTRIES: u32 = 16;
pub const STUBS: u32 = 0x8000;
pub const COMMON: u32 = 0x9000;
pub const SERVICES: u32 = 0x9800;
pub const RECORD: u32 = 0xa000;
pub const RESUME: u32 = 0xb000;
pub const PD: u32 = 0x1_0000;
pub const PT_LOW: u32 = 0x1_1000;
pub const PT_HIGH: u32 = 0x1_2000;
pub const PT_RANDOM: u32 = 0x1_3000;
pub const PD_ALT: u32 = 0x1_8000;
pub const KSTACK_TOP: u32 = 0x8_0000;
pub const BODY_STACK: u32 = 0x7_f000;
pub const SYSENTER_STACK: u32 = 0x7_0000;
pub const TASK_STACK: u32 = 0x6_0000;
pub const SETUP: u32 = 0x10_0000;
pub const BODY: u32 = 0x11_0000;
pub const BODY_MAX: u32 = 0x1_0000;
pub const DATA: u32 = 0x20_0000;
pub const DATA_LEN: u32 = 0x8_0000;
pub const PROBES: u32 = 0x28_0000;
pub const PROBE_SIZE: u32 = 0x400;
pub const USTACK_TOP: u32 = 0x30_0000;

/// A probe area (`PROBE_SIZE` bytes): the save image at 0, then what the probe item
/// wrote after the save ran.
pub mod probe {
    /// Bytes a 32-bit CPU's `fxsave` leaves alone (the guest fills them first).
    pub const UPPER: std::ops::Range<u32> = 288..512;
    /// `ecx` after `repe scasb` over UPPER: 0 when every byte kept the fill.
    pub const LEFT: u32 = 0x3f0;
    /// The saved x87 instruction pointer and code selector, as the guest read them.
    pub const FIP: u32 = 0x3f4;
    pub const FCS: u32 = 0x3f8;
    /// Written last: the save ran.
    pub const MARKER: u32 = 0x3fc;
    pub const MAGIC: u32 = 0x5afe_5afe;
}
/// Frames above this are what random page-table entries point at.
pub const RANDOM_FRAMES: u32 = 0x40_0000;

/// Selectors of the harness's GDT.
pub mod sel {
    pub const KCODE: u16 = 0x10;
    pub const KDATA: u16 = 0x18;
    pub const UCODE: u16 = 0x23;
    pub const UDATA: u16 = 0x2b;
    pub const TSS: u16 = 0x30;
    pub const LDT: u16 = 0x38;
    pub const TSS2: u16 = 0x40;
    pub const CALL_GATE: u16 = 0x48;
    pub const CALL_GATE_PARAMS: u16 = 0x50;
    pub const TASK_GATE: u16 = 0x58;
    pub const CONFORMING: u16 = 0x60;
    pub const BASED_DATA: u16 = 0x68;
    pub const EXPAND_DOWN: u16 = 0x70;
    pub const CODE16: u16 = 0x78;
    pub const BASED_CODE: u16 = 0x80;
    pub const READ_ONLY: u16 = 0x88;
    pub const EXEC_ONLY: u16 = 0x90;
    pub const DATA16: u16 = 0x98;
    /// First of the random descriptors.
    pub const RANDOM: u16 = 0xa0;
}

/// Record area fields (offsets from [`RECORD`]).
pub mod rec {
    pub const EVENTS: u32 = 0;
    pub const IRQS: u32 = 4;
    pub const MAX_EIP: u32 = 8;
    pub const MXCSR_DEFAULT: u32 = 12;
    /// 32 entries of (vector, eip, error code, cs).
    pub const LOG: u32 = 0x40;
    pub const LOG_ENTRIES: u32 = 32;
}

/// The run ends with `EXIT_BASE | code` on the isa-debug-exit port.
pub const EXIT_BASE: u32 = 0x7e57_0000;
pub const EXIT_DONE: u32 = 1;
pub const EXIT_EVENTS: u32 = 2;
pub const EXIT_WILD: u32 = 3;
pub const EXIT_DOUBLE_FAULT: u32 = 4;
pub const EXIT_TASK: u32 = 5;
/// Events (exceptions and software interrupts, not IRQs) before the run ends.
pub const EVENT_LIMIT: u32 = 256;
/// Vector of the epilogue's `int`.
pub const EPILOGUE_VECTOR: u8 = 0xfd;

/// Instructions the harness runs: setup (about) and each handler call (about).
pub const SETUP_INSNS: u64 = 60;
pub const HANDLER_INSNS: u64 = 40;

/// The vectors for which the CPU pushes an error code.
fn has_error_code(v: u8) -> bool {
    matches!(v, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// A code or data segment descriptor.
pub fn seg_desc(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let (base, limit) = (u64::from(base), u64::from(limit));
    (limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | u64::from(access) << 40
        | (limit >> 16 & 0xf) << 48
        | u64::from(flags & 0xf) << 52
        | (base >> 24) << 56
}

/// A gate descriptor (call, interrupt, trap, task): `attrs` is the access byte.
pub fn gate_desc(selector: u16, offset: u32, attrs: u8, params: u8) -> u64 {
    let offset = u64::from(offset);
    (offset & 0xffff) | u64::from(selector) << 16 | u64::from(params & 0x1f) << 32 | u64::from(attrs) << 40 | (offset >> 16) << 48
}

/// Flat 4 GiB segments: access byte and G+D flags.
const FLAT: u32 = 0xf_ffff;
const GD: u8 = 0xc;

/// One item of the body: assembled at its address `at`, knowing where the next
/// item starts (`next`, for far transfers that should carry on there).
pub struct BodyItem {
    pub kind: String,
    #[allow(clippy::type_complexity)]
    pub emit: Box<dyn Fn(&mut CodeAssembler, ItemAt) -> Result<(), IcedError>>,
}

#[derive(Clone, Copy, Debug)]
pub struct ItemAt {
    pub at: u32,
    pub next: u32,
}

impl BodyItem {
    pub fn new(kind: impl Into<String>, emit: impl Fn(&mut CodeAssembler, ItemAt) -> Result<(), IcedError> + 'static) -> Self {
        Self { kind: kind.into(), emit: Box::new(emit) }
    }

    /// Raw bytes.
    pub fn raw(kind: impl Into<String>, bytes: Vec<u8>) -> Self {
        Self::new(kind, move |a, _| a.db(&bytes))
    }

    fn assemble(&self, at: ItemAt) -> Result<Vec<u8>, IcedError> {
        let mut a = CodeAssembler::new(32)?;
        (self.emit)(&mut a, at)?;
        a.assemble(u64::from(at.at))
    }
}

/// The harness's choices: privilege, paging, timer, control registers, tables.
#[derive(Clone, Debug)]
pub struct Harness {
    /// Privilege, paging, timer, IOPL, CR0 and CR4.
    pub setup: Setup,
    /// The body's initial eax..edi (esp is the harness's).
    pub regs: [u32; 8],
    pub gdt: Vec<u64>,
    pub ldt: Vec<u64>,
    /// Gate access bytes per vector (0x8e interrupt gate DPL 0, ...).
    pub idt_attrs: Vec<u8>,
    /// The TSS's I/O permission bitmap (a set bit denies the port at CPL > IOPL).
    pub io_bitmap: Vec<u8>,
    /// Page directory entries besides the harness's own (index, value).
    pub pde_extra: Vec<(u32, u32)>,
    /// The random page table's entries.
    pub pt_random: Vec<u32>,
    /// Entries of the table for the top 4 MiB (index, value).
    pub pt_high: Vec<(u32, u32)>,
    /// Linear page 0: present and user-accessible (with paging).
    pub page0: bool,
    /// The data area's initial bytes (a pattern seed; 0: zeros).
    pub data_seed: u64,
    pub probes: Vec<Probe>,
}

pub const CR0_PE: u32 = 1;
pub const CR0_MP: u32 = 1 << 1;
pub const CR0_EM: u32 = 1 << 2;
pub const CR0_TS: u32 = 1 << 3;
pub const CR0_ET: u32 = 1 << 4;
pub const CR0_NE: u32 = 1 << 5;
pub const CR0_WP: u32 = 1 << 16;
pub const CR0_AM: u32 = 1 << 18;
pub const CR0_PG: u32 = 1 << 31;
pub const CR4_DE: u32 = 1 << 3;
pub const CR4_PSE: u32 = 1 << 4;
pub const CR4_PGE: u32 = 1 << 7;
pub const CR4_PCE: u32 = 1 << 8;
pub const CR4_OSFXSR: u32 = 1 << 9;
pub const CR4_OSXMMEXCPT: u32 = 1 << 10;
pub const CR4_TSD: u32 = 1 << 2;

impl Harness {
    /// The plain set-up: standard tables, CR4 with OSFXSR, no timer, data zeroed.
    pub fn standard(cpl: u8, paging: bool) -> Self {
        let mut gdt = vec![0u64; GDT_ENTRIES as usize];
        let fixed = [
            (0x08, seg_desc(0, FLAT, 0x9b, GD)),
            (0x10, seg_desc(0, FLAT, 0x9b, GD)),
            (0x18, seg_desc(0, FLAT, 0x93, GD)),
            (0x20, seg_desc(0, FLAT, 0xfb, GD)),
            (0x28, seg_desc(0, FLAT, 0xf3, GD)),
            (0x30, seg_desc(TSS, 0x68 + 0x2000, 0x89, 0)),
            (0x38, seg_desc(LDT, LDT_ENTRIES * 8 - 1, 0x82, 0)),
            (0x40, seg_desc(TSS2, 0x67, 0x89, 0)),
            (0x48, gate_desc(sel::KCODE, SERVICES, 0xec, 0)),
            (0x50, gate_desc(sel::KCODE, SERVICES + 0x10, 0xec, 2)),
            (0x58, gate_desc(sel::TSS2, 0, 0xe5, 0)),
            (0x60, seg_desc(0, FLAT, 0x9f, GD)),
            (0x68, seg_desc(DATA, 0xfff, 0xf3, 0x4)),
            (0x70, seg_desc(0, 0x1fff, 0xf7, 0x4)),
            (0x78, seg_desc(0, 0xffff, 0x9b, 0)),
            (0x80, seg_desc(0x1000, FLAT, 0x9b, GD)),
            (0x88, seg_desc(0, FLAT, 0xf1, GD)),
            (0x90, seg_desc(0, FLAT, 0xf9, GD)),
            (0x98, seg_desc(0, 0xffff, 0xf3, 0)),
        ];
        for (s, d) in fixed {
            gdt[s / 8] = d;
        }
        let mut ldt = vec![0u64; LDT_ENTRIES as usize];
        ldt[1] = seg_desc(0, FLAT, 0xfb, GD);
        ldt[2] = seg_desc(0, FLAT, 0xf3, GD);
        ldt[3] = seg_desc(DATA, 0xffff, 0xf3, 0x4);
        let mut idt_attrs = vec![0x8eu8; 256];
        for v in [3usize, 4, 0x80, usize::from(EPILOGUE_VECTOR)] {
            idt_attrs[v] = 0xee;
        }
        Self {
            setup: Setup {
                cpl,
                paging,
                timer: None,
                iopl: 0,
                cr0: CR0_PE | CR0_ET | CR0_NE | CR0_MP | if paging { CR0_PG | CR0_WP } else { 0 },
                cr4: CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_PSE,
            },
            regs: [DATA, DATA + 0x100, DATA + 0x200, DATA + 0x300, 0, DATA + 0x400, DATA + 0x500, DATA + 0x600],
            gdt,
            ldt,
            idt_attrs,
            io_bitmap: vec![0xff; 0x2001],
            pde_extra: Vec::new(),
            pt_random: Vec::new(),
            pt_high: vec![(1023, RANDOM_FRAMES | 0x7), (1022, (RANDOM_FRAMES + 0x1000) | 0x7)],
            page0: false,
            data_seed: 0,
            probes: Vec::new(),
        }
    }

    /// A random set-up for `cpl`, `paging` and `timer`.
    pub fn random(r: &mut Rng, cpl: u8, paging: bool, timer: bool) -> Self {
        let mut h = Self::standard(cpl, paging);
        h.setup.timer = timer.then(|| r.range(300, 6000) as u16);
        h.setup.iopl = if r.chance(1, 5) { r.below(4) as u8 } else { 0 };
        if r.chance(1, 4) {
            h.setup.cr0 |= r.pick(&[CR0_TS, CR0_EM, CR0_AM, 0]);
            h.setup.cr0 &= !r.pick(&[CR0_MP, CR0_NE, 0, 0]);
        }
        if r.chance(1, 4) {
            h.setup.cr4 ^= r.pick(&[CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_PSE, CR4_PGE, CR4_DE, CR4_PCE, CR4_TSD]);
        }
        for v in h.regs.iter_mut() {
            *v = match r.below(4) {
                0 | 1 => (DATA + r.below(DATA_LEN)) & !r.pick(&[0, 3, 0xf]),
                2 => r.edgy_u32(),
                _ => r.u32(),
            };
        }
        h.regs[4] = 0;
        // Random descriptors: mutated copies of the fixed ones, or random bits.
        for i in (sel::RANDOM / 8) as usize..GDT_ENTRIES as usize {
            h.gdt[i] = random_descriptor(r, &h.gdt);
        }
        for i in 4..LDT_ENTRIES as usize {
            h.ldt[i] = random_descriptor(r, &h.gdt);
        }
        for _ in 0..r.below(6) {
            let v = r.u8() as usize;
            if v != 0x20 && v != usize::from(EPILOGUE_VECTOR) {
                h.idt_attrs[v] = { let z0 = r.u8(); r.pick(&[0xee, 0x8f, 0xef, 0x0e, 0x85, 0xe5, z0]) };
            }
        }
        if r.chance(1, 3) {
            for _ in 0..r.below(8) {
                let port = { let z0 = r.u16(); r.pick(&[0x80u16, 0x3f8, 0x3fd, 0x40, 0x43, 0x61, 0x70, 0x71, 0x20, 0x21, 0xcf8, 0xcfc, z0]) };
                h.io_bitmap[usize::from(port / 8)] &= !(1 << (port % 8));
            }
        }
        if paging {
            for _ in 0..r.below(6) {
                let index = r.range(2, 1023);
                h.pde_extra.push((index, random_pte(r)));
            }
            if r.chance(1, 2) {
                h.pde_extra.push((1, PT_RANDOM | 0x7));
            }
            h.pt_random = (0..1024).map(|_| if r.chance(1, 3) { random_pte(r) } else { 0 }).collect();
            h.pt_high = (0..r.below(6)).map(|_| (r.range(1016, 1024), random_pte(r))).collect();
            h.page0 = r.chance(1, 3);
        }
        h.data_seed = if r.chance(1, 2) { r.next_u64() } else { 0 };
        h
    }

    /// The guest: this set-up around `items`. Items that do not assemble are left
    /// out (a generator bug, counted in the item list as `unassembled`).
    pub fn build(&self, items: &[BodyItem], timeout_ms: u32) -> GuestCase {
        let mut chunks = Vec::new();
        let mut body = Vec::new();
        let mut placed = Vec::new();
        let mut at = BODY;
        for item in items {
            let Some(bytes) = place(item, at) else {
                continue;
            };
            let next = align32(at + bytes.len() as u32);
            if next + 32 > BODY + BODY_MAX {
                break;
            }
            body.resize((at - BODY) as usize, 0x90);
            body.extend_from_slice(&bytes);
            placed.push(Item { addr: at, len: bytes.len() as u32, kind: item.kind.clone() });
            at = next;
        }
        let epilogue = at;
        body.resize((epilogue - BODY) as usize, 0x90);
        body.extend_from_slice(&[0xcd, EPILOGUE_VECTOR, 0x0f, 0x0b]);
        chunks.push(Chunk { addr: BODY, bytes: Bytes(body) });
        // Resume table: for each 32-byte slot, where the next item starts.
        let mut resume = vec![0u8; ((epilogue - BODY) / 32 * 4) as usize];
        for (i, it) in placed.iter().enumerate() {
            let next = placed.get(i + 1).map_or(epilogue, |n| n.addr);
            for slot in (it.addr - BODY) / 32..(next - BODY) / 32 {
                resume[slot as usize * 4..slot as usize * 4 + 4].copy_from_slice(&next.to_le_bytes());
            }
        }
        chunks.push(Chunk { addr: RESUME, bytes: Bytes(resume) });
        chunks.push(Chunk { addr: SETUP, bytes: Bytes(self.setup_code().expect("setup assembles")) });
        chunks.push(Chunk { addr: STUBS, bytes: Bytes(stubs().expect("stubs assemble")) });
        chunks.push(Chunk { addr: COMMON, bytes: Bytes(common_handler(epilogue).expect("handler assembles")) });
        chunks.push(Chunk { addr: SERVICES, bytes: Bytes(services().expect("services assemble")) });
        chunks.extend(self.tables());
        let mut record = vec![0u8; 0x40];
        record[rec::MXCSR_DEFAULT as usize..][..4].copy_from_slice(&0x1f80u32.to_le_bytes());
        chunks.push(Chunk { addr: RECORD, bytes: Bytes(record) });
        if self.data_seed != 0 {
            let mut r = Rng::new(self.data_seed);
            chunks.push(Chunk { addr: DATA, bytes: Bytes(r.bytes(0x4000)) });
        }
        for p in &self.probes {
            chunks.push(Chunk { addr: p.addr, bytes: Bytes(vec![p.fill; PROBE_SIZE as usize]) });
        }
        GuestCase {
            mem_mib: MEM_MIB,
            code_cache_mib: None,
            timeout_ms,
            entry: SETUP,
            chunks,
            items: placed,
            probes: self.probes.clone(),
            setup: self.setup.clone(),
        }
    }

    fn tables(&self) -> Vec<Chunk> {
        let mut out = Vec::new();
        let desc_bytes = |d: &[u64]| Bytes(d.iter().flat_map(|v| v.to_le_bytes()).collect());
        out.push(Chunk { addr: GDT, bytes: desc_bytes(&self.gdt) });
        out.push(Chunk { addr: LDT, bytes: desc_bytes(&self.ldt) });
        let mut gdtr = ((GDT_ENTRIES * 8 - 1) as u16).to_le_bytes().to_vec();
        gdtr.extend_from_slice(&GDT.to_le_bytes());
        out.push(Chunk { addr: GDTR, bytes: Bytes(gdtr) });
        let idt: Vec<u64> = (0..256u32)
            .map(|v| {
                let attrs = self.idt_attrs[v as usize];
                if attrs & 0x1f == 0x05 {
                    gate_desc(sel::TSS2, 0, attrs, 0)
                } else {
                    gate_desc(sel::KCODE, STUBS + 16 * v, attrs, 0)
                }
            })
            .collect();
        out.push(Chunk { addr: IDT, bytes: desc_bytes(&idt) });
        let mut idtr = 0x7ffu16.to_le_bytes().to_vec();
        idtr.extend_from_slice(&IDT.to_le_bytes());
        out.push(Chunk { addr: IDTR, bytes: Bytes(idtr) });
        out.push(Chunk { addr: TSS, bytes: Bytes(tss(KSTACK_TOP, 0, 0, 0, 0x68)) });
        let mut bitmap = self.io_bitmap.clone();
        bitmap.resize(0x2001, 0xff);
        out.push(Chunk { addr: TSS + 0x68, bytes: Bytes(bitmap) });
        let cr3 = if self.setup.paging { PD } else { 0 };
        out.push(Chunk { addr: TSS2, bytes: Bytes(tss(TASK_STACK, SERVICES + 0x20, cr3, 0x2, 0x68)) });
        if self.setup.paging {
            out.extend(self.page_tables());
        }
        out
    }

    fn page_tables(&self) -> Vec<Chunk> {
        let user = |page: u32| {
            (BODY..BODY + BODY_MAX + 0x1000).contains(&page)
                || (DATA..USTACK_TOP).contains(&page)
                || (page == 0 && self.page0)
        };
        let low: Vec<u32> = (0..1024u32)
            .map(|i| {
                let page = i << 12;
                if page == 0 && !self.page0 {
                    0
                } else {
                    page | 0x3 | if user(page) { 0x4 } else { 0 }
                }
            })
            .collect();
        let mut pd = vec![0u32; 1024];
        pd[0] = PT_LOW | 0x7;
        pd[1023] = PT_HIGH | 0x7;
        for &(i, v) in &self.pde_extra {
            pd[i as usize] = v;
        }
        let mut high = vec![0u32; 1024];
        for &(i, v) in &self.pt_high {
            high[i as usize] = v;
        }
        let mut alt = pd.clone();
        alt[1] = 0;
        let words = |v: &[u32]| Bytes(v.iter().flat_map(|x| x.to_le_bytes()).collect());
        let mut out = vec![
            Chunk { addr: PD, bytes: words(&pd) },
            Chunk { addr: PT_LOW, bytes: words(&low) },
            Chunk { addr: PT_HIGH, bytes: words(&high) },
            Chunk { addr: PD_ALT, bytes: words(&alt) },
        ];
        if !self.pt_random.is_empty() {
            out.push(Chunk { addr: PT_RANDOM, bytes: words(&self.pt_random) });
        }
        out
    }

    /// Setup: tables, control registers, MSRs, PICs, PIT, FPU, registers, entry.
    fn setup_code(&self) -> Result<Vec<u8>, IcedError> {
        use x::*;
        let mut a = CodeAssembler::new(32)?;
        a.lgdt(ptr(u64::from(GDTR)))?;
        a.lidt(ptr(u64::from(IDTR)))?;
        a.mov(eax, u32::from(sel::KDATA))?;
        for s in [ds, es, fs, gs, ss] {
            a.mov(s, ax)?;
        }
        a.mov(esp, KSTACK_TOP)?;
        a.mov(eax, u32::from(sel::TSS))?;
        a.ltr(ax)?;
        a.mov(eax, u32::from(sel::LDT))?;
        a.lldt(ax)?;
        for (msr, v) in [(0x174u32, u32::from(sel::KCODE)), (0x175, SYSENTER_STACK), (0x176, SERVICES + 0x40)] {
            a.mov(ecx, msr)?;
            a.mov(eax, v)?;
            a.xor(edx, edx)?;
            a.wrmsr()?;
        }
        a.mov(eax, self.setup.cr4)?;
        a.mov(cr4, eax)?;
        if self.setup.paging {
            a.mov(eax, PD)?;
            a.mov(cr3, eax)?;
        }
        // The x87/SSE state first, with TS and EM clear (they would fault), then
        // CR0 as chosen.
        a.mov(eax, self.setup.cr0 & !(CR0_TS | CR0_EM))?;
        a.mov(cr0, eax)?;
        a.fninit()?;
        if self.setup.cr4 & CR4_OSFXSR != 0 {
            a.ldmxcsr(dword_ptr(u64::from(RECORD + rec::MXCSR_DEFAULT)))?;
        }
        if self.setup.cr0 & (CR0_TS | CR0_EM) != 0 {
            a.mov(eax, self.setup.cr0)?;
            a.mov(cr0, eax)?;
        }
        // PICs: vectors 0x20 and 0x28, cascade on IRQ 2, 8086 mode; IRQ 0 only.
        for (port, v) in [(0x20u32, 0x11u32), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0xa0, 0x11), (0xa1, 0x28), (0xa1, 0x02), (0xa1, 0x01)] {
            a.mov(al, v)?;
            a.out(port, al)?;
        }
        a.mov(al, if self.setup.timer.is_some() { 0xfeu32 } else { 0xff })?;
        a.out(0x21u32, al)?;
        a.mov(al, 0xffu32)?;
        a.out(0xa1u32, al)?;
        if let Some(divisor) = self.setup.timer {
            a.mov(al, 0x34u32)?;
            a.out(0x43u32, al)?;
            a.mov(al, u32::from(divisor & 0xff))?;
            a.out(0x40u32, al)?;
            a.mov(al, u32::from(divisor >> 8))?;
            a.out(0x40u32, al)?;
        }
        let eflags = 0x2 | u32::from(self.setup.iopl & 3) << 12 | if self.setup.timer.is_some() { 0x200 } else { 0 };
        if self.setup.cpl == 3 {
            a.mov(eax, u32::from(sel::UDATA))?;
            for s in [ds, es, fs, gs] {
                a.mov(s, ax)?;
            }
            a.push(u32::from(sel::UDATA))?;
            a.push(USTACK_TOP)?;
            a.push(eflags)?;
            a.push(u32::from(sel::UCODE))?;
            a.push(BODY)?;
        } else {
            a.mov(esp, BODY_STACK)?;
            a.push(u32::from(sel::KCODE))?;
            a.push(BODY)?;
            a.push(eflags)?;
            a.popfd()?;
        }
        for (r, &v) in [eax, ecx, edx, ebx].into_iter().zip(&self.regs[..4]) {
            a.mov(r, v)?;
        }
        for (r, &v) in [ebp, esi, edi].into_iter().zip(&self.regs[5..]) {
            a.mov(r, v)?;
        }
        if self.setup.cpl == 3 {
            a.iretd()?;
        } else {
            // retf to the body: sti's shadow is not needed (popf set IF).
            a.retf()?;
        }
        a.assemble(u64::from(SETUP))
    }
}

fn align32(v: u32) -> u32 {
    (v + 31) & !31
}

/// The item's bytes at `at`: assembled twice, the second time knowing where the
/// next item starts (the length does not depend on it).
fn place(item: &BodyItem, at: u32) -> Option<Vec<u8>> {
    let first = item.assemble(ItemAt { at, next: at }).ok()?;
    let mut next = align32(at + first.len() as u32);
    for _ in 0..3 {
        let bytes = item.assemble(ItemAt { at, next }).ok()?;
        let n = align32(at + bytes.len() as u32);
        if n == next {
            return Some(bytes);
        }
        next = n;
    }
    None
}

/// A 32-bit TSS: ring-0 stack, entry eip (a task's), CR3, EFLAGS, I/O map base.
fn tss(esp0: u32, eip: u32, cr3: u32, eflags: u32, iomap: u32) -> Vec<u8> {
    let mut t = vec![0u8; 0x68];
    let mut put = |off: usize, v: u32| t[off..off + 4].copy_from_slice(&v.to_le_bytes());
    put(4, esp0);
    put(8, u32::from(sel::KDATA));
    put(0x1c, cr3);
    put(0x20, eip);
    put(0x24, eflags);
    put(0x38, esp0); // esp
    put(0x48, u32::from(sel::KDATA)); // es
    put(0x4c, u32::from(sel::KCODE)); // cs
    put(0x50, u32::from(sel::KDATA)); // ss
    put(0x54, u32::from(sel::KDATA)); // ds
    put(0x58, u32::from(sel::KDATA)); // fs
    put(0x5c, u32::from(sel::KDATA)); // gs
    put(0x64, iomap << 16);
    t
}

/// A descriptor for the random part of a table: a fixed one with a field changed,
/// or random bits.
fn random_descriptor(r: &mut Rng, gdt: &[u64]) -> u64 {
    let base = gdt[r.range(1, (sel::RANDOM / 8) as u32) as usize];
    match r.below(5) {
        0 => r.next_u64(),
        1 => base ^ (1u64 << r.below(64)),
        2 => seg_desc(r.edgy_u32(), r.u32() & 0xf_ffff, r.u8() | 0x80, r.u8()),
        3 => gate_desc({ let z0 = r.u16(); r.pick(&[sel::KCODE, sel::UCODE, sel::CONFORMING, z0]) }, { let z0 = r.u32(); r.pick(&[SERVICES, BODY, z0]) }, { let z0 = r.u8(); r.pick(&[0xec, 0xe5, 0x8c, 0xee, z0]) }, r.u8()),
        _ => base,
    }
}

/// A random page-table entry: frames in RAM (often the random area or the
/// harness's own tables), any flags.
pub fn random_pte(r: &mut Rng) -> u32 {
    let frame = match r.below(6) {
        0 => PT_LOW + 0x1000 * r.below(8),
        1 => r.u32() & !0xfff,
        2 => DATA + 0x1000 * r.below(DATA_LEN >> 12),
        _ => RANDOM_FRAMES + 0x1000 * r.below((MEM_MIB << 8) - (RANDOM_FRAMES >> 12)),
    };
    frame | (r.u32() & 0xfff) | if r.chance(4, 5) { 1 } else { 0 }
}

/// The vector stubs: `push $0` for vectors without an error code, `push $vector`,
/// `jmp common`, 16 bytes each.
fn stubs() -> Result<Vec<u8>, IcedError> {
    let mut out = Vec::with_capacity(0x1000);
    for v in 0..=255u8 {
        let at = STUBS + 16 * u32::from(v);
        let mut a = CodeAssembler::new(32)?;
        if !has_error_code(v) {
            a.push(0i32)?;
        }
        a.push(i32::from(v))?;
        a.jmp(u64::from(COMMON))?;
        let mut b = a.assemble(u64::from(at))?;
        b.resize(16, 0xcc);
        out.extend_from_slice(&b);
    }
    Ok(out)
}

/// The common handler; see the module documentation.
fn common_handler(epilogue: u32) -> Result<Vec<u8>, IcedError> {
    use x::*;
    let mut a = CodeAssembler::new(32)?;
    let (mut exc, mut not_done, mut not_df, mut ret, mut wild, mut exit, mut no_max) =
        (a.create_label(), a.create_label(), a.create_label(), a.create_label(), a.create_label(), a.create_label(), a.create_label());
    let r = |off: u32| dword_ptr(u64::from(RECORD + off));
    // Frame after pushad, ds, es: +40 vector, +44 error, +48 eip, +52 cs, +56 eflags.
    a.pushad()?;
    a.push(ds)?;
    a.push(es)?;
    a.mov(eax, u32::from(sel::KDATA))?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(eax, dword_ptr(esp + 40))?;
    a.cmp(eax, 0x20)?;
    a.jb(exc)?;
    a.cmp(eax, 0x30)?;
    a.jae(exc)?;
    a.inc(r(rec::IRQS))?;
    a.mov(al, 0x20u32)?;
    a.out(0xa0u32, al)?;
    a.out(0x20u32, al)?;
    a.jmp(ret)?;
    a.set_label(&mut exc)?;
    a.cmp(eax, u32::from(EPILOGUE_VECTOR))?;
    a.jne(not_done)?;
    a.cmp(dword_ptr(esp + 48), epilogue + 2)?;
    a.jne(not_done)?;
    a.mov(eax, EXIT_BASE | EXIT_DONE)?;
    a.jmp(exit)?;
    a.set_label(&mut not_done)?;
    a.cmp(eax, 8)?;
    a.jne(not_df)?;
    a.mov(eax, EXIT_BASE | EXIT_DOUBLE_FAULT)?;
    a.jmp(exit)?;
    a.set_label(&mut not_df)?;
    a.mov(ecx, r(rec::EVENTS))?;
    a.inc(ecx)?;
    a.mov(r(rec::EVENTS), ecx)?;
    a.cmp(ecx, EVENT_LIMIT)?;
    a.mov(edx, EXIT_BASE | EXIT_EVENTS)?;
    a.cmova(eax, edx)?;
    a.ja(exit)?;
    a.and(ecx, rec::LOG_ENTRIES - 1)?;
    a.shl(ecx, 4)?;
    a.add(ecx, RECORD + rec::LOG)?;
    a.mov(dword_ptr(ecx), eax)?;
    for (off, frame) in [(4, 48), (8, 44), (12, 52)] {
        a.mov(edx, dword_ptr(esp + frame))?;
        a.mov(dword_ptr(ecx + off), edx)?;
    }
    a.mov(edx, dword_ptr(esp + 48))?;
    a.cmp(edx, r(rec::MAX_EIP))?;
    a.jbe(no_max)?;
    a.mov(r(rec::MAX_EIP), edx)?;
    a.set_label(&mut no_max)?;
    a.sub(edx, BODY)?;
    a.cmp(edx, epilogue - BODY)?;
    a.jae(wild)?;
    a.shr(edx, 5)?;
    a.mov(edx, dword_ptr(edx * 4 + RESUME))?;
    a.mov(dword_ptr(esp + 48), edx)?;
    a.set_label(&mut ret)?;
    a.pop(es)?;
    a.pop(ds)?;
    a.popad()?;
    a.add(esp, 8)?;
    a.iretd()?;
    a.set_label(&mut wild)?;
    a.mov(eax, EXIT_BASE | EXIT_WILD)?;
    a.set_label(&mut exit)?;
    a.mov(edx, 0xf4u32)?;
    a.out(dx, eax)?;
    a.hlt()?;
    a.jmp(exit)?;
    a.assemble(u64::from(COMMON))
}

/// Services at fixed offsets of [`SERVICES`]: +0 the call gate's target (`lret`),
/// +0x10 the two-parameter gate's (`lret $8`), +0x20 the second task's entry
/// (`iret` back to the caller when NT is set, else the run ends), +0x40 the
/// SYSENTER target (`sysexit` to edx with esp = ecx).
fn services() -> Result<Vec<u8>, IcedError> {
    use x::*;
    let mut out = vec![0xccu8; 0x60];
    let mut put = |off: usize, code: &dyn Fn(&mut CodeAssembler) -> Result<(), IcedError>| -> Result<(), IcedError> {
        let mut a = CodeAssembler::new(32)?;
        code(&mut a)?;
        let b = a.assemble(u64::from(SERVICES) + off as u64)?;
        out[off..off + b.len()].copy_from_slice(&b);
        Ok(())
    };
    put(0, &|a| a.retf())?;
    put(0x10, &|a| a.retf_1(8u32))?;
    put(0x20, &|a| {
        let mut end = a.create_label();
        a.pushfd()?;
        a.pop(eax)?;
        a.test(eax, 0x4000)?;
        a.jz(end)?;
        a.iretd()?;
        a.set_label(&mut end)?;
        a.mov(eax, EXIT_BASE | EXIT_TASK)?;
        a.mov(edx, 0xf4u32)?;
        a.out(dx, eax)?;
        a.hlt()
    })?;
    put(0x40, &|a| a.sysexit())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_encode_as_the_sdm_says() {
        assert_eq!(seg_desc(0, FLAT, 0x9b, GD), 0x00cf_9b00_0000_ffff);
        assert_eq!(seg_desc(0x1234_5678, 0xabcde, 0x93, 0x4), 0x124a_9334_5678_bcde);
        assert_eq!(gate_desc(0x10, 0x1234_5678, 0x8e, 0), 0x1234_8e00_0010_5678);
    }

    #[test]
    fn build_places_items_and_the_resume_table() {
        let h = Harness::standard(0, false);
        let items = vec![BodyItem::raw("a", vec![0x90; 40]), BodyItem::raw("b", vec![0x0f, 0x0b])];
        let g = h.build(&items, 100);
        assert_eq!(g.items[0].addr, BODY);
        assert_eq!(g.items[1].addr, BODY + 64);
        let resume = &g.chunks.iter().find(|c| c.addr == RESUME).expect("resume").bytes.0;
        let entry = |slot: usize| u32::from_le_bytes(resume[slot * 4..slot * 4 + 4].try_into().expect("4"));
        assert_eq!((entry(0), entry(1), entry(2)), (BODY + 64, BODY + 64, BODY + 96));
    }
}
