//! The world switch between the VMM (Rust, System V ABI) and translated code, and
//! the shared stubs every unit jumps to. Generated once at the start of the code
//! cache.
//!
//! - `enter(ctx)`: saves the host's callee-saved registers and rsp, loads the guest
//!   state from the context (GPRs, rflags image, xmm0–7, MXCSR, GS base = view
//!   base) and jumps to `ctx.resume`.
//! - `exit_common`: stores the guest state back and returns from `enter`. Units jump
//!   here after storing the exit reason; nothing on the way changes rflags.
//! - `exit_callout`: a callout's exit; the site stored its resume point in the
//!   context (`lea` + `mov`, then `jmp`: a `call` would leave a return-stack entry
//!   that the `ret` from `enter` does not match, and every return after it would
//!   be mispredicted).
//! - `exit_fault`: where the signal handler redirects a faulting unit.
//! - `lookup_miss`: where the inline indirect-branch lookup (`emit_lookup`) goes
//!   when the target is not in the table.

use crate::abi::{off, ExitReason, VcpuCtx};
use crate::emit::{ctx, ice, ins2m, ins2rm, Asm, EmitError};
use iced_x86::{Code, Instruction, MemoryOperand, Register};

/// Guest GPR register numbers 0..8 as host registers (esp → r8).
pub const GUEST_REGS: [Register; 8] = [
    Register::EAX,
    Register::ECX,
    Register::EDX,
    Register::EBX,
    Register::R8D,
    Register::EBP,
    Register::ESI,
    Register::EDI,
];

const CALLEE_SAVED: [Register; 6] =
    [Register::RBX, Register::RBP, Register::R12, Register::R13, Register::R14, Register::R15];

/// Entry points of the shared stubs (host addresses).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stubs {
    pub enter: u64,
    pub exit_common: u64,
    pub exit_callout: u64,
    pub exit_fault: u64,
    pub lookup_miss: u64,
}

/// Emits all stubs into `asm`.
pub fn emit_stubs(a: &mut Asm) -> Result<Stubs, EmitError> {
    let mut s = Stubs { enter: a.here(), ..Stubs::default() };
    emit_enter(a)?;
    s.exit_common = a.here();
    emit_exit_common(a)?;
    s.exit_callout = a.here();
    a.store_ctx_imm32(off::EXIT_REASON, ExitReason::Callout as u32)?;
    a.jmp(s.exit_common);
    s.exit_fault = a.here();
    a.store_ctx_imm32(off::EXIT_REASON, ExitReason::Fault as u32)?;
    a.jmp(s.exit_common);
    s.lookup_miss = a.here();
    emit_lookup_miss(a, s.exit_common)?;
    Ok(s)
}

fn emit_enter(a: &mut Asm) -> Result<(), EmitError> {
    for r in CALLEE_SAVED {
        a.ins(&Instruction::with1(Code::Push_r64, r).map_err(ice)?)?;
    }
    // Six pushes after the return address leave rsp 16-byte aligned minus 8.
    a.ins(&Instruction::with2(Code::Sub_rm64_imm8, Register::RSP, 8).map_err(ice)?)?;
    a.mov_rr(Register::R15, Register::RDI)?;
    a.store_ctx64(off::HOST_RSP, Register::RSP)?;
    switch_mxcsr(a, off::HOST_MXCSR, off::GUEST_MXCSR)?;
    for i in 0..8 {
        let x = xmm(i);
        a.ins(&ins2rm(Code::Movdqu_xmm_xmmm128, x, ctx(off::XMM + 16 * i)))?;
    }
    a.load_ctx64(Register::RAX, off::GS_BASE)?;
    a.ins(&Instruction::with1(Code::Wrgsbase_r64, Register::RAX).map_err(ice)?)?;
    a.load_ctx64(Register::R13, off::POLL_PAGE)?;
    a.load_ctx64(Register::R14, off::LOOKUP_TABLE)?;
    for (n, r) in GUEST_REGS.iter().enumerate() {
        a.load_ctx32(*r, off::GPR + 4 * n as i32)?;
    }
    a.ins(&Instruction::with1(Code::Push_rm64, ctx(off::RFLAGS)).map_err(ice)?)?;
    a.ins(&Instruction::with(Code::Popfq))?;
    a.ins(&Instruction::with1(Code::Jmp_rm64, ctx(off::RESUME)).map_err(ice)?)
}

/// Saves MXCSR at `save` and loads the one at `load`, only if they differ:
/// guest and host nearly always hold the default, and `ldmxcsr` costs more
/// than the comparison. Clobbers eax and the flags.
fn switch_mxcsr(a: &mut Asm, save: i32, load: i32) -> Result<(), EmitError> {
    a.ins(&Instruction::with1(Code::Stmxcsr_m32, ctx(save)).map_err(ice)?)?;
    a.load_ctx32(Register::EAX, save)?;
    a.ins(&ins2rm(Code::Cmp_r32_rm32, Register::EAX, ctx(load)))?;
    a.bytes(&[0x74, 0x00]); // je same
    let same = a.pos() - 1;
    a.ins(&Instruction::with1(Code::Ldmxcsr_m32, ctx(load)).map_err(ice)?)?;
    a.patch_rel8_here(same);
    Ok(())
}

fn emit_exit_common(a: &mut Asm) -> Result<(), EmitError> {
    a.ins(&Instruction::with(Code::Pushfq))?;
    a.ins(&Instruction::with1(Code::Pop_rm64, ctx(off::RFLAGS)).map_err(ice)?)?;
    for (n, r) in GUEST_REGS.iter().enumerate() {
        a.store_ctx32(off::GPR + 4 * n as i32, *r)?;
    }
    for i in 0..8 {
        a.ins(&ins2m(Code::Movdqu_xmmm128_xmm, ctx(off::XMM + 16 * i), xmm(i)))?;
    }
    switch_mxcsr(a, off::GUEST_MXCSR, off::HOST_MXCSR)?;
    // The System V ABI wants DF clear in Rust code; the guest's DF is saved above.
    a.ins(&Instruction::with(Code::Cld))?;
    a.load_ctx64(Register::RSP, off::HOST_RSP)?;
    a.ins(&Instruction::with2(Code::Add_rm64_imm8, Register::RSP, 8).map_err(ice)?)?;
    for r in CALLEE_SAVED.iter().rev() {
        a.ins(&Instruction::with1(Code::Pop_r64, *r).map_err(ice)?)?;
    }
    a.ins(&Instruction::with(Code::Retnq))
}

/// Indirect-branch lookup, emitted inline at every indirect branch so that each
/// site has its own host branch-prediction entry (one shared `jmp *` would
/// mispredict on almost every return). Target eip in r9d. Hash = low 16 bits of
/// the target; 16-byte entries `{ eip: u64, host: u64 }` (empty entries hold
/// u64::MAX). The comparison uses `not`/`lea`/`jrcxz`, none of which touch the
/// guest's flags. A miss jumps to `miss` with the guest registers intact.
pub fn emit_lookup(a: &mut Asm, miss: u64) -> Result<(), EmitError> {
    use Register::*;
    // The slot (`lookup::index`), flag-free: eip + (eip rotated by 16), low half.
    if crate::lookup::mixes_high_half() {
        a.ins(&Instruction::with3(Code::VEX_Rorx_r32_rm32_imm8, R10D, R9D, 16u32).map_err(ice)?)?;
        a.ins(&ins2rm(Code::Lea_r32_m, R10D, MemoryOperand::with_base_index(R9, R10)))?;
        a.ins(&Instruction::with2(Code::Movzx_r32_rm16, R10D, R10W).map_err(ice)?)?;
    } else {
        a.ins(&Instruction::with2(Code::Movzx_r32_rm16, R10D, R9W).map_err(ice)?)?;
    }
    a.ins(&ins2rm(Code::Lea_r64_m, R10, MemoryOperand::with_base_index(R10, R10)))?;
    let entry = MemoryOperand::with_base_index_scale_displ_size(R14, R10, 8, 0, 0);
    a.ins(&ins2rm(Code::Mov_r64_rm64, R11, entry))?;
    a.mov_rr(R12, RCX)?;
    a.mov_rr(RCX, R9)?;
    a.ins(&Instruction::with1(Code::Not_rm64, RCX).map_err(ice)?)?;
    // Entries hold eip + 1 (zero is empty): rcx = ~eip + entry = entry - (eip + 1).
    let diff = MemoryOperand::with_base_index_scale_displ_size(RCX, R11, 1, 0, 0);
    a.ins(&ins2rm(Code::Lea_r64_m, RCX, diff))?;
    a.bytes(&[0xe3, 0x00]); // jrcxz hit
    let hit_rel = a.pos() - 1;
    a.mov_rr(RCX, R12)?;
    a.jmp(miss);
    a.patch_rel8_here(hit_rel);
    a.mov_rr(RCX, R12)?;
    let host = MemoryOperand::with_base_index_scale_displ_size(R14, R10, 8, 8, 1);
    a.ins(&Instruction::with1(Code::Jmp_rm64, host).map_err(ice)?)
}

/// The shared miss path of the inline lookup: exit with the target as eip.
fn emit_lookup_miss(a: &mut Asm, exit_common: u64) -> Result<(), EmitError> {
    a.store_ctx32(off::EIP, Register::R9D)?;
    a.store_ctx_imm32(off::EXIT_REASON, ExitReason::Indirect as u32)?;
    a.jmp(exit_common);
    Ok(())
}

fn xmm(i: i32) -> Register {
    [
        Register::XMM0,
        Register::XMM1,
        Register::XMM2,
        Register::XMM3,
        Register::XMM4,
        Register::XMM5,
        Register::XMM6,
        Register::XMM7,
    ][usize::try_from(i).expect("xmm index")]
}

/// Runs translated code from `ctx.resume` until it exits.
///
/// # Safety
/// `enter` must be the address of the `enter` stub in a sealed (executable) code
/// cache whose units were all produced by this translator, `ctx` must be valid for
/// the whole call, and the GS base it names must be a view the guest may use.
pub unsafe fn run(enter: u64, ctx: *mut VcpuCtx) {
    // SAFETY: the caller guarantees `enter` is our generated stub, which follows the
    // System V ABI for `fn(*mut VcpuCtx)`: it saves and restores every callee-saved
    // register, rsp and MXCSR and returns with DF clear.
    let f: extern "sysv64" fn(*mut VcpuCtx) = unsafe { core::mem::transmute(enter as usize) };
    f(ctx);
}
