//! A small machine for the handlers' unit tests: flat ring-0 segments, 1 MiB of RAM,
//! the standard port bus writing into a `SharedBuffer`, and a GDT at [`GDT_BASE`].

use super::{emulate, GuestMemory, Machine, MemFault, Outcome};
use crate::cpu::{sreg, Cpu, Segment, TableReg};
use crate::devices::{PortBus, SharedBuffer};
use bt86_translator::abi::VcpuCtx;
use bt86_translator::{CalloutKind, CalloutSite};
use iced_x86::{Decoder, DecoderOptions};

pub const RAM: usize = 1 << 20;
pub const EIP: u32 = 0x1_0000;
pub const GDT_BASE: u32 = 0x2000;
pub const STACK_TOP: u32 = 0x8000;

/// Flat ring-0 selectors in the test GDT.
pub const KCODE: u16 = 0x08;
pub const KDATA: u16 = 0x10;

/// Guest RAM as a plain vector; accesses past its end are unbacked.
pub struct VecMem(pub Vec<u8>);

impl GuestMemory for VecMem {
    fn read(&mut self, linear: u32, buf: &mut [u8], _user: bool) -> Result<(), MemFault> {
        let start = linear as usize;
        let src = self
            .0
            .get(start..start + buf.len())
            .ok_or(MemFault::Unbacked { linear })?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&mut self, linear: u32, data: &[u8], _user: bool) -> Result<(), MemFault> {
        let start = linear as usize;
        let dst = self
            .0
            .get_mut(start..start + data.len())
            .ok_or(MemFault::Unbacked { linear })?;
        dst.copy_from_slice(data);
        Ok(())
    }
}

/// A descriptor: `access` = P DPL S type byte, `flags` = G D/B L AVL nibble.
pub fn desc(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let lo = (limit & 0xffff) | (base << 16);
    let hi = ((base >> 16) & 0xff)
        | (u32::from(access) << 8)
        | (limit & 0xf_0000)
        | (u32::from(flags & 0xf) << 20)
        | (base & 0xff00_0000);
    u64::from(lo) | (u64::from(hi) << 32)
}

pub struct TestMachine {
    pub cpu: Cpu,
    pub ctx: VcpuCtx,
    pub mem: VecMem,
    pub io: PortBus,
    pub console: SharedBuffer,
}

impl TestMachine {
    /// Ring 0, flat segments (CS = 0x08, data = 0x10), esp = [`STACK_TOP`], a GDT with
    /// the two flat descriptors (accessed bits set) and room up to index 31.
    pub fn new() -> Self {
        let console = SharedBuffer::new();
        let mut t = Self {
            cpu: Cpu::default(),
            ctx: VcpuCtx::default(),
            mem: VecMem(vec![0; RAM]),
            io: PortBus::standard(Box::new(console.clone())),
            console,
        };
        t.cpu.seg = [Segment::flat(KDATA, 0x93); 6];
        t.cpu.seg[sreg::CS] = Segment::flat(KCODE, 0x9b);
        t.cpu.gdtr = TableReg {
            base: GDT_BASE,
            limit: 32 * 8 - 1,
        };
        t.set_gdt(1, desc(0, 0xfffff, 0x9b, 0xc));
        t.set_gdt(2, desc(0, 0xfffff, 0x93, 0xc));
        t.ctx.gpr[4] = STACK_TOP;
        t.ctx.eip = EIP;
        t
    }

    pub fn set_gdt(&mut self, index: u32, d: u64) {
        self.write(GDT_BASE + index * 8, &d.to_le_bytes());
    }

    pub fn write(&mut self, addr: u32, data: &[u8]) {
        self.mem.write(addr, data, false).unwrap();
    }

    pub fn write_u32(&mut self, addr: u32, v: u32) {
        self.write(addr, &v.to_le_bytes());
    }

    pub fn write_u16(&mut self, addr: u32, v: u16) {
        self.write(addr, &v.to_le_bytes());
    }

    pub fn read(&self, addr: u32, len: usize) -> Vec<u8> {
        self.mem.0[addr as usize..addr as usize + len].to_vec()
    }

    pub fn read_u8(&self, addr: u32) -> u8 {
        self.mem.0[addr as usize]
    }

    pub fn read_u16(&self, addr: u32) -> u16 {
        let a = addr as usize;
        u16::from_le_bytes([self.mem.0[a], self.mem.0[a + 1]])
    }

    pub fn read_u32(&self, addr: u32) -> u32 {
        let a = addr as usize;
        u32::from_le_bytes(self.mem.0[a..a + 4].try_into().unwrap())
    }

    /// Decodes `bytes` at the current eip as an `Emulate` site.
    pub fn site(&self, bytes: &[u8]) -> CalloutSite {
        let mut d = Decoder::with_ip(32, bytes, u64::from(self.ctx.eip), DecoderOptions::NONE);
        let ins = d.decode();
        CalloutSite {
            eip: self.ctx.eip,
            len: ins.len() as u8,
            ins,
            kind: CalloutKind::Emulate,
        }
    }

    pub fn run_site(&mut self, site: &CalloutSite) -> Outcome {
        let mut m = Machine {
            cpu: &mut self.cpu,
            ctx: &mut self.ctx,
            mem: &mut self.mem,
            io: &mut self.io,
        };
        emulate(&mut m, site)
    }

    /// Emulates the instruction `bytes` at the current eip.
    pub fn run(&mut self, bytes: &[u8]) -> Outcome {
        let site = self.site(bytes);
        self.run_site(&site)
    }

    /// Puts the vCPU at `cpl` with flat segments of that DPL (descriptors 3 and 4 of
    /// the GDT: ring-3 code 0x1b, data 0x23).
    pub fn set_cpl(&mut self, cpl: u8) {
        if cpl == 0 {
            self.cpu.seg = [Segment::flat(KDATA, 0x93); 6];
            self.cpu.seg[sreg::CS] = Segment::flat(KCODE, 0x9b);
            return;
        }
        self.set_gdt(3, desc(0, 0xfffff, 0xfb, 0xc));
        self.set_gdt(4, desc(0, 0xfffff, 0xf3, 0xc));
        let (cs, ds) = (0x18 | u16::from(cpl), 0x20 | u16::from(cpl));
        self.cpu.seg = [Segment::flat(ds, 0xf3); 6];
        self.cpu.seg[sreg::CS] = Segment::flat(cs, 0xfb);
    }

    pub fn flags(&self) -> u32 {
        self.ctx.rflags as u32
    }

    pub fn zf(&self) -> bool {
        self.ctx.rflags & 0x40 != 0
    }

    pub fn esp(&self) -> u32 {
        self.ctx.gpr[4]
    }
}

pub fn exc(vector: u8, error: Option<u32>) -> Outcome {
    Outcome::Exception {
        vector,
        error,
        trap: false,
    }
}

pub fn gp(error: u32) -> Outcome {
    exc(13, Some(error))
}

/// A machine with an IDT and a TSS, for delivery tests.
pub mod gates {
    use super::{desc, TestMachine, KCODE, KDATA};
    use crate::cpu::TableReg;

    pub const IDT: u32 = 0x3000;
    pub const TSS: u32 = 0x4000;
    pub const KSTACK: u32 = 0x9000;
    pub const HANDLER: u32 = 0x5000;

    /// An IDT with an interrupt gate at 0x20 (DPL 0), a trap gate at 0x80 (DPL 3),
    /// and a 32-bit TSS (GDT index 5, selector 0x28) whose ring-0 stack is
    /// 0x10:KSTACK.
    pub fn machine() -> TestMachine {
        let mut t = TestMachine::new();
        t.cpu.idtr = TableReg { base: IDT, limit: 256 * 8 - 1 };
        gate(&mut t, 0x20, 0x8e);
        gate(&mut t, 0x80, 0xef);
        t.write_u32(TSS + 4, KSTACK);
        t.write_u32(TSS + 8, u32::from(KDATA));
        t.set_gdt(5, desc(TSS, 0x67, 0x8b, 0));
        t.cpu.tr = crate::cpu::Segment { selector: 0x28, base: TSS, limit: 0x67, attrs: 0x8b };
        t
    }

    /// IDT entry `vector`: a gate to HANDLER in KCODE with access byte `access`.
    pub fn gate(t: &mut TestMachine, vector: u32, access: u32) {
        let lo = (HANDLER & 0xffff) | (u32::from(KCODE) << 16);
        let hi = (HANDLER & 0xffff_0000) | (access << 8);
        t.write_u32(IDT + vector * 8, lo);
        t.write_u32(IDT + vector * 8 + 4, hi);
    }
}
