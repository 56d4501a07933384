//! Run a short 32-bit code snippet under the binary translator and report the final
//! machine state. This is the translated half of the differential oracle (the native
//! half lives in `tests/src/oracle`): both place code, data and stack at the same
//! guest addresses, so results compare one to one. Paging maps only the snippet
//! region, so an access outside it is a page fault, as in the native run (where
//! nothing else is mapped).

/// Guest address where snippet code is placed (the terminator `hlt` is appended).
pub const CODE_ADDR: u32 = 0x0010_0000;
/// Guest address of the data block (`Snippet::data`).
pub const DATA_ADDR: u32 = 0x0010_8000;
/// Initial guest esp unless the snippet sets one: top of the stack area.
pub const STACK_TOP: u32 = 0x0010_f000;
/// Size of the whole snippet region starting at `CODE_ADDR`.
pub const REGION_SIZE: u32 = 0x1_0000;

/// One snippet: code bytes, initial registers (eax..edi in encoding order, esp at
/// index 4), initial arithmetic flags, and the initial contents of the data block.
#[derive(Clone, Debug, Default)]
pub struct Snippet {
    pub code: Vec<u8>,
    pub regs: [u32; 8],
    pub eflags: u32,
    pub data: Vec<u8>,
}

/// A fault that ended the snippet early: the x86 vector and the guest EIP of the
/// faulting instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnippetFault {
    pub vector: u8,
    pub eip: u32,
}

/// Final state after the snippet ran to its terminator or faulted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnippetResult {
    pub regs: [u32; 8],
    pub eflags: u32,
    pub data: Vec<u8>,
    pub fault: Option<SnippetFault>,
}

/// Runs `snippet` translated at CPL 0 with flat segments: RAM up to the end of
/// the snippet region, the code
/// followed by `hlt` at `CODE_ADDR`, the data block at `DATA_ADDR`.
pub fn run_snippet(snippet: &Snippet) -> Result<SnippetResult, String> {
    run_snippet_with(snippet, None)
}

/// Like `run_snippet`, with units limited to `max_unit_insns` guest instructions.
pub fn run_snippet_with(snippet: &Snippet, max_unit_insns: Option<usize>) -> Result<SnippetResult, String> {
    use crate::vm::RunOutcome;
    let mut vm = snippet_vm(snippet)?;
    if let Some(n) = max_unit_insns {
        vm.set_max_unit_insns(n);
    }
    map_only_the_region(&mut vm).map_err(|e| e.to_string())?;
    let outcome = crate::vm::run_with_timeout(&mut vm, std::time::Duration::from_secs(2)).map_err(|e| e.to_string())?;
    let end = snippet_end(snippet)?;
    let fault = match outcome {
        RunOutcome::Halted { eip } if eip == end => None,
        RunOutcome::GuestException { vector, eip, .. } => Some(SnippetFault { vector, eip }),
        RunOutcome::Unbacked { eip, .. } => Some(SnippetFault { vector: 14, eip }),
        other => return Err(format!("snippet did not finish: {other:?}")),
    };
    snippet_result(&vm, snippet, fault)
}

/// A VM holding `snippet` (its code followed by `hlt` at `CODE_ADDR`, its data at
/// `DATA_ADDR`, RAM up to the end of the region) in flat CPL-0 state at its start.
fn snippet_vm(snippet: &Snippet) -> Result<crate::vm::Vm, String> {
    use crate::vm::{Vm, VmConfig};
    if snippet.code.len() + 1 > (DATA_ADDR - CODE_ADDR) as usize || snippet.data.len() > (STACK_TOP - DATA_ADDR) as usize {
        return Err("snippet too large".into());
    }
    // RAM ends where the snippet region ends, so an access past it stops like the
    // native run's #PF does (there is no paging yet to make a hole elsewhere).
    let cfg = VmConfig { mem_bytes: u64::from(CODE_ADDR + REGION_SIZE), ..VmConfig::new(1, Box::new(std::io::sink())) };
    let mut vm = Vm::new(cfg).map_err(|e| e.to_string())?;
    let mut code = snippet.code.clone();
    code.push(0xf4);
    vm.ram().write(CODE_ADDR, &code).map_err(|e| e.to_string())?;
    vm.ram().write(DATA_ADDR, &snippet.data).map_err(|e| e.to_string())?;
    let mut regs = snippet.regs;
    if regs[4] == 0 {
        regs[4] = STACK_TOP;
    }
    vm.set_flat_state(CODE_ADDR, regs, snippet.eflags);
    Ok(vm)
}

/// Where the snippet's terminating `hlt` is.
fn snippet_end(snippet: &Snippet) -> Result<u32, String> {
    Ok(CODE_ADDR + u32::try_from(snippet.code.len()).map_err(|e| e.to_string())?)
}

/// The registers and the data block after the run.
fn snippet_result(vm: &crate::vm::Vm, snippet: &Snippet, fault: Option<SnippetFault>) -> Result<SnippetResult, String> {
    let (regs, eflags) = vm.registers();
    let mut data = vec![0u8; snippet.data.len()];
    vm.ram().read(DATA_ADDR, &mut data).map_err(|e| e.to_string())?;
    Ok(SnippetResult { regs, eflags, data, fault })
}

/// Page tables (below the region) that map the snippet region one to one and
/// nothing else; paging on.
fn map_only_the_region(vm: &mut crate::vm::Vm) -> Result<(), crate::vm::VmError> {
    const PD: u32 = 0x1000;
    const PT: u32 = 0x2000;
    let ram = vm.ram();
    ram.fill(PD, 0x2000, 0)?;
    ram.write_u32(PD + 4 * (CODE_ADDR >> 22), PT | 0x7)?;
    for page in (CODE_ADDR..CODE_ADDR + REGION_SIZE).step_by(0x1000) {
        ram.write_u32(PT + 4 * ((page >> 12) & 0x3ff), page | 0x7)?;
    }
    vm.enable_paging(PD)
}

/// A snippet run at CPL 3 (`run_snippet_user`) and how many times its code was entered
/// directly.
#[derive(Clone, Debug)]
pub struct UserSnippetResult {
    pub result: SnippetResult,
    pub direct_entries: u64,
}

/// Runs `snippet` as user code (CPL 3, flat DPL-3 segments 0x1b/0x23, interrupts on,
/// no IDT), its code run as `user_code` says: the direct half of the oracle that
/// compares guest user code run directly with the same code translated. The
/// terminator `hlt` raises #GP at CPL 3; an exception there is the end, any other the
/// snippet's fault.
pub fn run_snippet_user(snippet: &Snippet, user_code: crate::UserCode) -> Result<UserSnippetResult, String> {
    use crate::cpu::{sreg, Segment};
    use crate::vm::RunOutcome;
    let mut vm = snippet_vm(snippet)?;
    vm.set_user_code(user_code);
    for (i, s) in vm.cpu.seg.iter_mut().enumerate() {
        *s = if i == sreg::CS { Segment::flat(0x1b, 0xfb) } else { Segment::flat(0x23, 0xf3) };
    }
    vm.tr.ctx_mut().vif = 1;
    map_only_the_region(&mut vm).map_err(|e| e.to_string())?;
    let outcome = crate::vm::run_with_timeout(&mut vm, std::time::Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let end = snippet_end(snippet)?;
    let fault = match outcome {
        RunOutcome::GuestException { vector: 13, eip, .. } if eip == end => None,
        RunOutcome::GuestException { vector, eip, .. } => Some(SnippetFault { vector, eip }),
        RunOutcome::Unbacked { eip, .. } => Some(SnippetFault { vector: 14, eip }),
        other => return Err(format!("snippet did not finish: {other:?}")),
    };
    let direct_entries = vm.stats().direct.map_or(0, |d| d.entries);
    Ok(UserSnippetResult { result: snippet_result(&vm, snippet, fault)?, direct_entries })
}
