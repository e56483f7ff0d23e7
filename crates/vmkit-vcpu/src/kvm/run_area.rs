//! The vCPU's shared run area: this crate's own mapping of the vCPU file.
//!
//! The kernel writes the area only while the owning thread is inside `KVM_RUN`. The one field
//! another thread may touch is `immediate_exit`, and only with single-byte atomic stores while the
//! owner is inside `KVM_RUN` (see the kick module); outside that window the owner holds the area
//! alone, so handing out `&mut [u8]` views to it is sound.

use std::io;
use std::mem::offset_of;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};

use kvm_bindings::kvm_run;

use super::exit::KVM_RUN_SIZE;

/// A shared, read-write mapping of a vCPU's run area.
#[derive(Debug)]
pub(crate) struct RunArea {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping belongs to the process, not to a thread, and `RunArea` owns it exclusively:
// moving it to another thread moves that exclusive ownership along.
unsafe impl Send for RunArea {}

impl RunArea {
    /// Maps `len` bytes of the vCPU file `fd`.
    pub(crate) fn map(fd: &impl AsRawFd, len: usize) -> io::Result<Self> {
        if len < KVM_RUN_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("vCPU mmap size {len} is smaller than kvm_run"),
            ));
        }
        // SAFETY: a fresh shared mapping chosen by the kernel (no fixed address, so no existing
        // mapping is replaced); the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("null mapping"))?;
        Ok(Self { ptr, len })
    }

    /// The whole area (page-aligned, so aligned for `kvm_run`).
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` read-write bytes living as long as `self`; the exclusive
        // borrow and the module's protocol keep the kernel and kickers out while the slice lives.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The `immediate_exit` byte, for atomic access from any thread.
    pub(crate) fn immediate_exit(&self) -> ImmediateExit {
        // SAFETY: `immediate_exit` lies within the mapping (`len >= KVM_RUN_SIZE`).
        let ptr = unsafe { self.ptr.as_ptr().add(offset_of!(kvm_run, immediate_exit)) };
        ImmediateExit(ptr)
    }

    /// `exit_reason` of the last exit.
    pub(crate) fn exit_reason(&self) -> u32 {
        let at = offset_of!(kvm_run, exit_reason);
        // SAFETY: the field lies within the mapping and is 4-byte aligned in a page-aligned
        // mapping; a volatile read does not assume the value is stable, and any value is valid.
        unsafe { self.ptr.as_ptr().add(at).cast::<u32>().read_volatile() }
    }
}

impl Drop for RunArea {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are `map`'s mapping and nothing refers to it now: slices borrow
        // `self`, and kickers reach it only inside `KVM_RUN`, impossible while dropping.
        let ret = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        if ret != 0 {
            log::error!(
                "unmapping a vCPU run area failed: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// The `immediate_exit` byte of a run area.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ImmediateExit(*mut u8);

// SAFETY: the pointer is only dereferenced through `set`, an atomic store whose callers prove the
// mapping alive: its owner, or a kicker the owner waits for before it leaves its kick window.
unsafe impl Send for ImmediateExit {}

impl ImmediateExit {
    /// The byte's address, for the kick state to publish to kickers.
    pub(crate) fn as_ptr(self) -> *mut u8 {
        self.0
    }

    /// The byte at `ptr` (an address [`ImmediateExit::as_ptr`] returned); only [`set`](Self::set),
    /// whose callers prove the mapping alive, dereferences it.
    pub(crate) fn from_ptr(ptr: *mut u8) -> Self {
        Self(ptr)
    }

    /// Stores `value` (1 makes the next or current `KVM_RUN` return `EINTR` at once).
    ///
    /// # Safety
    ///
    /// The run area this byte belongs to must still be mapped.
    pub(crate) unsafe fn set(self, value: u8) {
        // SAFETY: valid and aligned while the mapping lives (the caller's guarantee); every Rust
        // access to the byte is atomic and the kernel reads it with `READ_ONCE`.
        let byte = unsafe { AtomicU8::from_ptr(self.0) };
        byte.store(value, Ordering::SeqCst);
    }
}

#[cfg(test)]
impl ImmediateExit {
    /// A stand-in byte for tests of the kick protocol.
    pub(crate) fn for_test(byte: &mut u8) -> Self {
        Self(byte)
    }

    /// Reads the byte back (tests only).
    pub(crate) fn get_for_test(self) -> u8 {
        // SAFETY: tests keep the byte alive while they use this handle; the access is atomic.
        unsafe { AtomicU8::from_ptr(self.0) }.load(Ordering::SeqCst)
    }
}
