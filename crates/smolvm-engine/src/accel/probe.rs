//! The timed KVM probe: a tiny 64-bit guest that clears fresh pages with
//! `rep stosb`, the operation that is slow behind a software hypervisor.

use std::io;
use std::ptr::NonNull;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};

use super::{KVM_DEVICE, KVM_PROBE_TIMEOUT, MAX_KVM_PROBE_PAGES};

// Probe guest memory layout: the GDT, the code and the page tables sit in
// the first 1 MiB, and the pages the guest clears start at 1 MiB.
const PROBE_GDT_ADDR: u64 = 0x500;
const PROBE_CODE_ADDR: u64 = 0x1000;
const PROBE_PML4_ADDR: u64 = 0x2000;
const PROBE_PDPT_ADDR: u64 = 0x3000;
const PROBE_PD_ADDR: u64 = 0x4000;
const PROBE_DATA_ADDR: u64 = 0x10_0000;

const PAGE_SIZE: u64 = 4096;
const LARGE_PAGE_SIZE: u64 = 2 << 20;

// x86 paging and control register bits (Intel SDM volume 3, chapters 2 and 4).
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_LARGE: u64 = 1 << 7;
const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
// Flat 64-bit code and data segment descriptors.
const GDT_CODE64: u64 = 0x00af_9a00_0000_ffff;
const GDT_DATA: u64 = 0x00cf_9200_0000_ffff;

/// Errors from the timed KVM probe.
#[derive(Debug, thiserror::Error)]
pub enum KvmProbeError {
    #[error("invalid KVM probe page count {pages}: expected 1 to {max}")]
    InvalidPageCount { pages: u32, max: u32 },

    #[error("opening {KVM_DEVICE} failed")]
    Open(#[source] kvm_ioctls::Error),

    #[error("creating a KVM VM failed")]
    CreateVm(#[source] kvm_ioctls::Error),

    #[error("mapping {bytes} bytes of probe guest memory failed")]
    MapMemory {
        bytes: usize,
        #[source]
        source: io::Error,
    },

    #[error("registering probe guest memory with KVM failed")]
    SetMemory(#[source] kvm_ioctls::Error),

    #[error("creating the probe vCPU failed")]
    CreateVcpu(#[source] kvm_ioctls::Error),

    #[error("setting the probe vCPU registers failed")]
    SetRegisters(#[source] kvm_ioctls::Error),

    #[error("running the probe vCPU failed")]
    Run(#[source] kvm_ioctls::Error),

    #[error("probe vCPU stopped with unexpected exit {exit}")]
    UnexpectedExit { exit: String },

    #[error("probe guest wrote {written} of {pages} pages")]
    IncompleteWrite { written: u32, pages: u32 },

    #[error("KVM probe timed out after {} ms", timeout.as_millis())]
    TimedOut { timeout: Duration },

    #[error("starting the KVM probe thread failed")]
    SpawnThread(#[source] io::Error),

    #[error("KVM probe thread panicked")]
    ThreadPanicked,
}

impl KvmProbeError {
    /// Reports whether another run could succeed on the same boot, so the
    /// result must not be cached.
    pub(super) fn is_transient(&self) -> bool {
        matches!(
            self,
            KvmProbeError::TimedOut { .. }
                | KvmProbeError::SpawnThread(_)
                | KvmProbeError::ThreadPanicked
                | KvmProbeError::MapMemory { .. }
        )
    }
}

/// Runs a 64-bit guest that clears `pages` fresh 4 KiB guest pages with
/// `rep stosb` and returns how long the vCPU took, from first entry to `hlt`.
///
/// The probe runs on its own thread. After [`KVM_PROBE_TIMEOUT`] it returns
/// [`KvmProbeError::TimedOut`] and leaves that thread behind, because a vCPU
/// stuck inside `KVM_RUN` cannot be stopped from here.
pub fn probe_kvm(pages: u32) -> Result<Duration, KvmProbeError> {
    if pages == 0 || pages > MAX_KVM_PROBE_PAGES {
        return Err(KvmProbeError::InvalidPageCount {
            pages,
            max: MAX_KVM_PROBE_PAGES,
        });
    }

    let (sender, receiver) = mpsc::channel();
    std::thread::Builder::new()
        .name("kvm-probe".into())
        .spawn(move || {
            // Sending fails only after the caller timed out and dropped the receiver.
            let _ = sender.send(run_probe_guest(pages));
        })
        .map_err(KvmProbeError::SpawnThread)?;

    match receiver.recv_timeout(KVM_PROBE_TIMEOUT) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(KvmProbeError::TimedOut {
            timeout: KVM_PROBE_TIMEOUT,
        }),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(KvmProbeError::ThreadPanicked),
    }
}

/// 64-bit machine code loaded at [`PROBE_CODE_ADDR`]. It fills `pages`
/// consecutive 4 KiB pages from [`PROBE_DATA_ADDR`] with the byte 1, one
/// `rep stosb` per page as Linux's `clear_page_erms` does, then halts.
#[rustfmt::skip]
fn probe_code(pages: u64) -> [u8; 38] {
    let data = PROBE_DATA_ADDR.to_le_bytes();
    let count = pages.to_le_bytes();
    [
        0x48, 0xbf, data[0], data[1], data[2], data[3], data[4], data[5], data[6], data[7],
                                                    // mov rdi, PROBE_DATA_ADDR
        0x48, 0xba, count[0], count[1], count[2], count[3], count[4], count[5], count[6], count[7],
                                                    // mov rdx, pages
        0xb8, 0x01, 0x00, 0x00, 0x00,               // mov eax, 1
        0xb9, 0x00, 0x10, 0x00, 0x00,               // next: mov ecx, 4096
        0xf3, 0xaa,                                 // rep stosb (advances rdi by 4096)
        0x48, 0xff, 0xca,                           // dec rdx
        0x75, 0xf4,                                 // jnz next (back 12 bytes)
        0xf4,                                       // hlt
    ]
}

/// Anonymous private mapping used as probe guest memory; unmapped on drop.
struct ProbeMemory {
    base: NonNull<u8>,
    len: usize,
}

impl ProbeMemory {
    fn new(len: usize) -> Result<Self, KvmProbeError> {
        // SAFETY: a fresh anonymous mapping with a null hint aliases no
        // existing Rust object, and the result is checked before use.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            let source = io::Error::last_os_error();
            return Err(KvmProbeError::MapMemory { bytes: len, source });
        }

        let base = NonNull::new(address.cast::<u8>()).ok_or_else(|| KvmProbeError::MapMemory {
            bytes: len,
            source: io::Error::other("mmap returned a null address"),
        })?;
        Ok(Self { base, len })
    }

    fn host_address(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    fn write(&mut self, guest_address: u64, bytes: &[u8]) {
        let offset = guest_address as usize;
        assert!(
            offset + bytes.len() <= self.len,
            "probe memory write out of bounds"
        );
        // SAFETY: the bounds check above keeps the copy inside the mapping,
        // and the source is a Rust slice, which cannot overlap it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.base.as_ptr().add(offset),
                bytes.len(),
            );
        }
    }

    fn write_u64(&mut self, guest_address: u64, value: u64) {
        self.write(guest_address, &value.to_le_bytes());
    }

    fn read_byte(&self, guest_address: u64) -> u8 {
        let offset = guest_address as usize;
        assert!(offset < self.len, "probe memory read out of bounds");
        // SAFETY: `offset` is inside the mapping (checked above), and the
        // guest writes it only inside `KVM_RUN` on this thread, which has
        // returned by the time this runs.
        unsafe { self.base.as_ptr().add(offset).read() }
    }
}

impl Drop for ProbeMemory {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` describe the mapping made in `new`, and no
        // reference into it outlives `self`.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// Builds the probe guest and runs it to `hlt`, returning the vCPU run time.
fn run_probe_guest(pages: u32) -> Result<Duration, KvmProbeError> {
    let memory_len = probe_memory_len(pages);

    // Declared before the VM so that it is unmapped only after the VM is closed.
    let mut memory = ProbeMemory::new(memory_len as usize)?;
    write_probe_guest(&mut memory, memory_len, pages);

    let kvm = Kvm::new().map_err(KvmProbeError::Open)?;
    let vm = kvm.create_vm().map_err(KvmProbeError::CreateVm)?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: memory_len,
        userspace_addr: memory.host_address(),
        flags: 0,
    };
    // SAFETY: `region` describes exactly the live mapping in `memory`, which
    // is dropped after `vm`, and slot 0 is the only slot of this new VM.
    unsafe { vm.set_user_memory_region(region) }.map_err(KvmProbeError::SetMemory)?;

    let mut vcpu = vm.create_vcpu(0).map_err(KvmProbeError::CreateVcpu)?;
    enter_long_mode(&vcpu)?;

    let started = Instant::now();
    loop {
        match vcpu.run() {
            Ok(VcpuExit::Hlt) => break,
            Ok(VcpuExit::Intr) => continue,
            Ok(exit) => {
                return Err(KvmProbeError::UnexpectedExit {
                    exit: format!("{exit:?}"),
                });
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return Err(KvmProbeError::Run(e)),
        }
    }
    let elapsed = started.elapsed();

    let written = (0..pages)
        .filter(|page| {
            let first = PROBE_DATA_ADDR + u64::from(*page) * PAGE_SIZE;
            memory.read_byte(first) == 1 && memory.read_byte(first + PAGE_SIZE - 1) == 1
        })
        .count() as u32;
    if written != pages {
        return Err(KvmProbeError::IncompleteWrite { written, pages });
    }
    Ok(elapsed)
}

/// Guest memory size for `pages` data pages, rounded up to whole 2 MiB
/// pages because the guest maps its memory with 2 MiB pages.
fn probe_memory_len(pages: u32) -> u64 {
    let end = PROBE_DATA_ADDR + u64::from(pages) * PAGE_SIZE;
    end.div_ceil(LARGE_PAGE_SIZE) * LARGE_PAGE_SIZE
}

/// Writes the code, a flat GDT and identity-mapping page tables (2 MiB
/// pages) into guest memory.
fn write_probe_guest(memory: &mut ProbeMemory, memory_len: u64, pages: u32) {
    memory.write(PROBE_CODE_ADDR, &probe_code(u64::from(pages)));

    memory.write_u64(PROBE_GDT_ADDR + 8, GDT_CODE64);
    memory.write_u64(PROBE_GDT_ADDR + 16, GDT_DATA);

    memory.write_u64(
        PROBE_PML4_ADDR,
        PROBE_PDPT_ADDR | PTE_PRESENT | PTE_WRITABLE,
    );
    memory.write_u64(PROBE_PDPT_ADDR, PROBE_PD_ADDR | PTE_PRESENT | PTE_WRITABLE);
    for index in 0..memory_len / LARGE_PAGE_SIZE {
        let entry = (index * LARGE_PAGE_SIZE) | PTE_PRESENT | PTE_WRITABLE | PTE_LARGE;
        memory.write_u64(PROBE_PD_ADDR + index * 8, entry);
    }
}

/// Puts the vCPU in 64-bit mode with paging on, at [`PROBE_CODE_ADDR`].
fn enter_long_mode(vcpu: &VcpuFd) -> Result<(), KvmProbeError> {
    let mut sregs = vcpu.get_sregs().map_err(KvmProbeError::SetRegisters)?;

    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x8,
        type_: 0xb, // execute/read, accessed
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    let data = kvm_segment {
        selector: 0x10,
        type_: 0x3, // read/write, accessed
        db: 1,
        l: 0,
        ..code
    };
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.gdt.base = PROBE_GDT_ADDR;
    sregs.gdt.limit = 3 * 8 - 1;

    sregs.cr3 = PROBE_PML4_ADDR;
    sregs.cr4 = CR4_PAE;
    sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)
        .map_err(KvmProbeError::SetRegisters)?;

    // Bit 1 of RFLAGS is reserved and must be set. DF is clear, so `rep stosb` counts up.
    let regs = kvm_regs {
        rip: PROBE_CODE_ADDR,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(KvmProbeError::SetRegisters)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::KVM_PROBE_PAGES;
    use super::*;

    #[test]
    fn probe_rejects_page_counts_out_of_range() {
        for pages in [0, MAX_KVM_PROBE_PAGES + 1] {
            let error = probe_kvm(pages).unwrap_err();
            assert!(
                matches!(error, KvmProbeError::InvalidPageCount { .. }),
                "{error}"
            );
        }
    }

    #[test]
    fn probe_code_loop_jumps_to_mov_ecx() {
        let code = probe_code(200);
        assert_eq!(&code[12..20], &200_u64.to_le_bytes());
        let jump_end = 37_i32;
        let target = (jump_end + i32::from(code[36] as i8)) as usize;
        assert_eq!(&code[target..target + 5], &[0xb9, 0x00, 0x10, 0x00, 0x00]);
        assert_eq!(code[37], 0xf4);
    }

    #[test]
    fn probe_memory_rounds_to_large_pages() {
        assert_eq!(probe_memory_len(1), 2 << 20);
        assert_eq!(probe_memory_len(256), 2 << 20);
        assert_eq!(probe_memory_len(257), 4 << 20);
        assert_eq!(probe_memory_len(MAX_KVM_PROBE_PAGES), 18 << 20);
    }

    #[test]
    fn probe_finishes_within_timeout() {
        if !Path::new(KVM_DEVICE).exists() {
            println!("skipped: {KVM_DEVICE} not present");
            return;
        }

        let started = Instant::now();
        let result = probe_kvm(KVM_PROBE_PAGES);
        let waited = started.elapsed();
        println!("KVM probe of {KVM_PROBE_PAGES} pages: {result:?} (waited {waited:?})");

        assert!(
            waited < KVM_PROBE_TIMEOUT + Duration::from_secs(1),
            "waited {waited:?}"
        );
        if let Ok(elapsed) = result {
            assert!(
                elapsed <= waited,
                "probe reported {elapsed:?} but took {waited:?}"
            );
        }
    }
}
