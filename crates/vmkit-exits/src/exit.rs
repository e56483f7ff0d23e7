//! The backend-neutral description of why a vCPU stopped running guest code.

/// The most instruction bytes an x86 instruction can have.
pub const MAX_INSN_LEN: usize = 15;

/// The bytes of the instruction a backend failed on, as far as the backend reported them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InsnBytes {
    bytes: [u8; MAX_INSN_LEN],
    len: u8,
}

impl InsnBytes {
    /// Keeps at most [`MAX_INSN_LEN`] bytes of `bytes`.
    pub fn new(bytes: &[u8]) -> Self {
        let len = bytes.len().min(MAX_INSN_LEN);
        let mut out = [0u8; MAX_INSN_LEN];
        out[..len].copy_from_slice(&bytes[..len]);
        Self {
            bytes: out,
            len: len as u8,
        }
    }

    /// The reported bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A guest-initiated power event reported by the backend (for KVM, `KVM_EXIT_SYSTEM_EVENT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemEvent {
    /// The guest asked for a reset.
    Reset,
    /// The guest asked to power off.
    Shutdown,
    /// The guest reported a crash.
    Crash,
    /// An event type this crate does not know, with the backend's raw type.
    Other(u32),
}

/// Why a vCPU stopped running guest code.
///
/// Data buffers borrow the backend's shared run area: for reads the handler fills `data` and the
/// backend hands it to the guest on the next entry. Every field is guest-controlled.
#[derive(Debug, PartialEq, Eq)]
pub enum VmExit<'a> {
    /// `in` from `port`; `data.len()` is the access size (1, 2 or 4).
    IoIn {
        /// The port.
        port: u16,
        /// Filled by the handler.
        data: &'a mut [u8],
    },
    /// `out` to `port`.
    IoOut {
        /// The port.
        port: u16,
        /// The bytes written.
        data: &'a [u8],
    },
    /// A read of guest-physical `addr` that no memory backs.
    MmioRead {
        /// Guest-physical address.
        addr: u64,
        /// Filled by the handler.
        data: &'a mut [u8],
    },
    /// A write to guest-physical `addr` that no memory backs.
    MmioWrite {
        /// Guest-physical address.
        addr: u64,
        /// The bytes written.
        data: &'a [u8],
    },
    /// The vCPU executed `hlt` (and the backend did not handle it).
    Hlt,
    /// The vCPU shut down, for example on a triple fault.
    Shutdown,
    /// A guest-initiated power event.
    SystemEvent(SystemEvent),
    /// The backend could not enter the guest.
    FailEntry {
        /// Hardware entry-failure reason.
        reason: u64,
        /// The physical CPU the entry was attempted on.
        cpu: u32,
    },
    /// The backend hit an internal error, for example an instruction it could not emulate.
    InternalError {
        /// The backend's sub-error code (for KVM, `KVM_INTERNAL_ERROR_*`; 1 is emulation).
        suberror: u32,
        /// The instruction bytes, when the backend reported them.
        insn: Option<InsnBytes>,
    },
    /// A debug exit (breakpoint or single step).
    Debug {
        /// Guest instruction pointer.
        pc: u64,
        /// The exception vector.
        exception: u32,
    },
    /// Any other exit, with the backend's raw reason.
    Other {
        /// The backend's raw exit reason.
        reason: u32,
    },
}

/// The sub-error of [`VmExit::InternalError`] that means "instruction emulation failed".
pub const INTERNAL_ERROR_EMULATION: u32 = 1;
