//! The few operations of the KVM engine that need `unsafe`, each in one small
//! function: registering guest RAM with KVM, decoding the port-I/O and internal-error
//! parts of the shared `kvm_run` page, and kicking the vCPU thread out of `KVM_RUN`
//! with a signal.

use kvm_bindings::{kvm_run, kvm_userspace_memory_region, KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_IO, KVM_EXIT_IO_IN};
use kvm_ioctls::{VcpuFd, VmFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::memory::GuestRam;

/// Registers all of `ram` as KVM memory slot 0 at guest physical address 0.
pub(super) fn register_ram(vm: &VmFd, ram: &GuestRam) -> Result<(), kvm_ioctls::Error> {
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: u64::from(ram.size()),
        userspace_addr: ram.alias_ptr() as u64,
    };
    // SAFETY: the region is the alias mapping of the guest RAM memfd: `size()` bytes,
    // mapped read-write and shared for the whole life of `ram`. The caller (`run_kvm`)
    // holds `&mut Vm`, which owns `ram`, for as long as the VM fd exists (the fd is a
    // local of that call and is closed before it returns), so the memory outlives the
    // slot. The guest writing this memory through KVM is the same as it writing it
    // through the binary translator's view: Rust code never holds references into it.
    unsafe { vm.set_user_memory_region(region) }
}

/// A port-I/O exit, decoded with the access size that `VcpuExit::IoIn/IoOut` omit
/// (string I/O has `count` elements of `size` bytes in `data`).
pub(super) struct IoExit<'a> {
    pub input: bool,
    pub port: u16,
    pub size: u8,
    pub data: &'a mut [u8],
}

/// The port-I/O exit in `vcpu`'s `kvm_run` page, if the last exit was one.
/// `mmap_size` is `KVM_GET_VCPU_MMAP_SIZE`, the length of that mapping.
pub(super) fn io_exit(vcpu: &mut VcpuFd, mmap_size: usize) -> Option<IoExit<'_>> {
    let run: &mut kvm_run = vcpu.get_kvm_run();
    if run.exit_reason != KVM_EXIT_IO {
        return None;
    }
    // SAFETY: the kernel set exit_reason to KVM_EXIT_IO, so `io` is the member of the
    // union it wrote; it is plain integers, valid for any bit pattern.
    let io = unsafe { run.__bindgen_anon_1.io };
    let len = usize::from(io.size).checked_mul(usize::try_from(io.count).ok()?)?;
    let offset = usize::try_from(io.data_offset).ok()?;
    // The data must lie inside the mapping and after the struct (so it cannot alias
    // the `kvm_run` fields).
    if offset < std::mem::size_of::<kvm_run>() || offset.checked_add(len)? > mmap_size {
        return None;
    }
    let base = std::ptr::from_mut(run).cast::<u8>();
    // SAFETY: `base` is the start of the vCPU's `kvm_run` mapping, `mmap_size` bytes
    // long (checked above: offset + len is inside it and past the struct, so the slice
    // does not overlap `run`, which is not used again). The mapping lives as long as
    // `vcpu`, which this function borrows mutably for the slice's lifetime, so nothing
    // else reads or writes it meanwhile (the kernel touches it only inside KVM_RUN,
    // which needs `&mut vcpu`). This is how kvm-ioctls itself builds its I/O slices.
    let data = unsafe { std::slice::from_raw_parts_mut(base.add(offset), len) };
    Some(IoExit {
        input: u32::from(io.direction) == KVM_EXIT_IO_IN,
        port: io.port,
        size: io.size,
        data,
    })
}

/// `(suberror, data words)` of a KVM_EXIT_INTERNAL_ERROR exit.
pub(super) fn internal_error(vcpu: &mut VcpuFd) -> Option<(u32, Vec<u64>)> {
    let run: &mut kvm_run = vcpu.get_kvm_run();
    if run.exit_reason != KVM_EXIT_INTERNAL_ERROR {
        return None;
    }
    // SAFETY: exit_reason says the kernel filled the `internal` member of the union;
    // it is plain integers, valid for any bit pattern.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let n = usize::try_from(internal.ndata).unwrap_or(0).min(internal.data.len());
    Some((internal.suberror, internal.data[..n].to_vec()))
}

/// The signal that interrupts `KVM_RUN`: a real-time signal nothing else in bt86 uses.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 3
}

extern "C" fn on_kick(_sig: libc::c_int) {
    // Nothing to do: the signal's only job is to make KVM_RUN return EINTR.
}

/// Installs the (empty) kick handler once per process. Without SA_RESTART, so an
/// interrupted KVM_RUN returns EINTR to the run loop.
fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    static FAILED: AtomicBool = AtomicBool::new(false);
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid starting value; we set a plain
        // (non-SA_SIGINFO) handler that does nothing, which is async-signal-safe, and
        // an empty mask. sigaction only reads the struct.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            FAILED.store(true, Ordering::SeqCst);
        }
    });
    if FAILED.load(Ordering::SeqCst) {
        Err(std::io::Error::other("cannot install the KVM timeout signal handler"))
    } else {
        Ok(())
    }
}

/// A watchdog for one `run_kvm`: after `limit` it sets `expired` and signals the
/// vCPU thread (the thread that armed it) every 10 ms until disarmed, so a guest that
/// never exits on its own still leaves KVM_RUN. Repeating the signal covers the race
/// where it lands just before the thread enters KVM_RUN. Dropping it disarms and
/// joins the watchdog, so it never signals a thread that has moved on.
pub(super) struct Watchdog {
    expired: Arc<AtomicBool>,
    cancel: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Arms a watchdog for the calling thread; `None` = no limit.
    pub(super) fn arm(limit: Option<Duration>) -> std::io::Result<Self> {
        let expired = Arc::new(AtomicBool::new(false));
        let Some(limit) = limit else {
            return Ok(Self { expired, cancel: None, thread: None });
        };
        install_kick_handler()?;
        // SAFETY: pthread_self has no preconditions.
        let target = unsafe { libc::pthread_self() };
        let (cancel, cancelled) = channel::<()>();
        let flag = expired.clone();
        let thread = std::thread::Builder::new().name("bt86-kvm-watchdog".into()).spawn(move || {
            if !matches!(cancelled.recv_timeout(limit), Err(RecvTimeoutError::Timeout)) {
                return;
            }
            flag.store(true, Ordering::SeqCst);
            loop {
                // SAFETY: `target` is the vCPU thread, which is blocked in `Drop` of
                // this watchdog (joining us) or still running `run_kvm` until we stop:
                // it cannot have exited, so its pthread_t is valid. The signal has an
                // installed no-op handler, so it cannot kill the process.
                unsafe { libc::pthread_kill(target, kick_signal()) };
                if !matches!(cancelled.recv_timeout(Duration::from_millis(10)), Err(RecvTimeoutError::Timeout)) {
                    return;
                }
            }
        })?;
        Ok(Self { expired, cancel: Some(cancel), thread: Some(thread) })
    }

    /// Whether the limit has passed.
    pub(super) fn expired(&self) -> bool {
        self.expired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Disconnecting the channel (or a message) ends the watchdog's wait.
        if let Some(c) = self.cancel.take() {
            let _ = c.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
