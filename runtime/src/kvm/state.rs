//! The vCPU state beyond registers and system registers that the KVM engine moves
//! between KVM and the VM: the x87/SSE state, the SYSENTER MSRs, the guest's TSC
//! and the debug registers. With it a checkpoint taken under either engine
//! continues under the other.
//!
//! Into KVM before a run: the x87/SSE image when the VM holds one (a restored
//! checkpoint, an earlier KVM run), the MSRs and debug registers always (a fresh
//! VM's are KVM's reset values), and the TSC when the guest's differs from the
//! host's (a restored checkpoint). Out of KVM after a run: all of them, the TSC as
//! an offset from the host's.

use crate::checkpoint::{self, FxImage};
use crate::devices::clock::host_tsc;
use crate::emulate::msr::{SYSENTER_CS, SYSENTER_EIP, SYSENTER_ESP, TSC};
use crate::vm::Vm;
use kvm_bindings::{kvm_debugregs, kvm_fpu, kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

fn msrs(entries: &[(u32, u64)]) -> Result<Msrs, kvm_ioctls::Error> {
    let list: Vec<kvm_msr_entry> = entries.iter().map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() }).collect();
    Msrs::from_entries(&list).map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))
}

/// KVM's x87/SSE structure from an FXSAVE image (fields at their FXSAVE offsets).
fn to_kvm_fpu(img: &FxImage) -> kvm_fpu {
    let b = &img.0;
    let mut f = kvm_fpu {
        fcw: u16::from_le_bytes([b[0], b[1]]),
        fsw: u16::from_le_bytes([b[2], b[3]]),
        ftwx: b[4],
        last_opcode: u16::from_le_bytes([b[6], b[7]]),
        mxcsr: img.mxcsr(),
        ..Default::default()
    };
    for (i, r) in f.fpr.iter_mut().enumerate() {
        r.copy_from_slice(&b[32 + 16 * i..48 + 16 * i]);
    }
    for (i, r) in f.xmm.iter_mut().take(8).enumerate() {
        r.copy_from_slice(&b[160 + 16 * i..176 + 16 * i]);
    }
    f
}

/// The inverse of [`to_kvm_fpu`] (the x87 pointers and xmm8–15 are not the guest's).
fn from_kvm_fpu(f: &kvm_fpu) -> FxImage {
    let mut img = FxImage([0; 512]);
    let b = &mut img.0;
    b[0..2].copy_from_slice(&f.fcw.to_le_bytes());
    b[2..4].copy_from_slice(&f.fsw.to_le_bytes());
    b[4] = f.ftwx;
    b[6..8].copy_from_slice(&f.last_opcode.to_le_bytes());
    b[24..28].copy_from_slice(&f.mxcsr.to_le_bytes());
    b[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
    for (i, r) in f.fpr.iter().enumerate() {
        b[32 + 16 * i..48 + 16 * i].copy_from_slice(r);
    }
    for (i, r) in f.xmm.iter().take(8).enumerate() {
        b[160 + 16 * i..176 + 16 * i].copy_from_slice(r);
    }
    img
}

/// Gives KVM's vCPU the VM's state beyond its registers (before a run).
pub(crate) fn load(vcpu: &VcpuFd, vm: &mut Vm) -> Result<(), kvm_ioctls::Error> {
    if vm.fpu.is_some() {
        vcpu.set_fpu(&to_kvm_fpu(&checkpoint::guest_fpu(vm)))?;
        vm.fpu = None;
    }
    let c = &vm.cpu;
    let mut list = vec![
        (SYSENTER_CS, u64::from(c.sysenter_cs)),
        (SYSENTER_ESP, u64::from(c.sysenter_esp)),
        (SYSENTER_EIP, u64::from(c.sysenter_eip)),
    ];
    if c.tsc_offset != 0 {
        #[allow(clippy::cast_sign_loss)]
        list.push((TSC, host_tsc().wrapping_add(c.tsc_offset as u64)));
    }
    vcpu.set_msrs(&msrs(&list)?)?;
    let mut db = [0u64; 4];
    for (d, &v) in db.iter_mut().zip(&c.dr) {
        *d = u64::from(v);
    }
    vcpu.set_debug_regs(&kvm_debugregs { db, dr6: u64::from(c.dr[6]), dr7: u64::from(c.dr[7]), ..Default::default() })
}

/// Copies KVM's vCPU state beyond its registers back into the VM (after a run).
pub(crate) fn store(vcpu: &VcpuFd, vm: &mut Vm) -> Result<(), kvm_ioctls::Error> {
    let fpu = vcpu.get_fpu()?;
    checkpoint::set_guest_fpu(vm, from_kvm_fpu(&fpu));
    let mut list = msrs(&[(SYSENTER_CS, 0), (SYSENTER_ESP, 0), (SYSENTER_EIP, 0), (TSC, 0)])?;
    let n = vcpu.get_msrs(&mut list)?;
    let host = host_tsc();
    let c = &mut vm.cpu;
    for e in list.as_slice().iter().take(n) {
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
        match e.index {
            SYSENTER_CS => c.sysenter_cs = e.data as u32,
            SYSENTER_ESP => c.sysenter_esp = e.data as u32,
            SYSENTER_EIP => c.sysenter_eip = e.data as u32,
            TSC => c.tsc_offset = e.data.wrapping_sub(host) as i64,
            _ => {}
        }
    }
    let d = vcpu.get_debug_regs()?;
    #[allow(clippy::cast_possible_truncation)]
    for (i, v) in d.db.iter().chain([&d.dr6, &d.dr7]).enumerate() {
        c.dr[if i < 4 { i } else { i + 2 }] = *v as u32;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fpu_images_convert_both_ways() {
        let mut img = FxImage::default();
        for (i, b) in img.0[32..288].iter_mut().enumerate() {
            *b = i as u8;
        }
        img.0[2] = 0x38; // FSW: TOP = 7
        img.0[4] = 0x80; // one valid register
        let back = from_kvm_fpu(&to_kvm_fpu(&img));
        assert_eq!(back.fcw(), 0x037f);
        assert_eq!(back.mxcsr(), 0x1f80);
        assert_eq!(back.0[..24], img.0[..24]);
        assert_eq!(back.0[32..288], img.0[32..288]);
    }
}
