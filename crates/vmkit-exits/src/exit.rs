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
    PowerOff,
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
    /// The vCPU entered the shutdown state (KVM's `KVM_EXIT_SHUTDOWN`), as on a triple fault.
    /// A guest's request to power off is [`SystemEvent::PowerOff`].
    TripleFault,
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

/// The kind of a [`VmExit`], without its data: the key of the per-kind exit statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExitKind {
    /// [`VmExit::IoIn`].
    IoIn,
    /// [`VmExit::IoOut`].
    IoOut,
    /// [`VmExit::MmioRead`].
    MmioRead,
    /// [`VmExit::MmioWrite`].
    MmioWrite,
    /// [`VmExit::Hlt`].
    Hlt,
    /// [`VmExit::TripleFault`].
    TripleFault,
    /// [`VmExit::SystemEvent`].
    SystemEvent,
    /// [`VmExit::FailEntry`].
    FailEntry,
    /// [`VmExit::InternalError`].
    InternalError,
    /// [`VmExit::Debug`].
    Debug,
    /// [`VmExit::Other`].
    Other,
}

impl ExitKind {
    /// How many kinds there are.
    pub const COUNT: usize = 11;

    /// Every kind, in declaration order (`ALL[k as usize] == k`).
    pub const ALL: [ExitKind; Self::COUNT] = [
        ExitKind::IoIn,
        ExitKind::IoOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::Hlt,
        ExitKind::TripleFault,
        ExitKind::SystemEvent,
        ExitKind::FailEntry,
        ExitKind::InternalError,
        ExitKind::Debug,
        ExitKind::Other,
    ];

    /// A short lower-case name, as printed in the statistics table.
    pub const fn name(self) -> &'static str {
        match self {
            ExitKind::IoIn => "io-in",
            ExitKind::IoOut => "io-out",
            ExitKind::MmioRead => "mmio-read",
            ExitKind::MmioWrite => "mmio-write",
            ExitKind::Hlt => "hlt",
            ExitKind::TripleFault => "triple-fault",
            ExitKind::SystemEvent => "system-event",
            ExitKind::FailEntry => "fail-entry",
            ExitKind::InternalError => "internal-error",
            ExitKind::Debug => "debug",
            ExitKind::Other => "other",
        }
    }
}

impl std::fmt::Display for ExitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

impl VmExit<'_> {
    /// The kind of this exit.
    pub fn kind(&self) -> ExitKind {
        match self {
            VmExit::IoIn { .. } => ExitKind::IoIn,
            VmExit::IoOut { .. } => ExitKind::IoOut,
            VmExit::MmioRead { .. } => ExitKind::MmioRead,
            VmExit::MmioWrite { .. } => ExitKind::MmioWrite,
            VmExit::Hlt => ExitKind::Hlt,
            VmExit::TripleFault => ExitKind::TripleFault,
            VmExit::SystemEvent(_) => ExitKind::SystemEvent,
            VmExit::FailEntry { .. } => ExitKind::FailEntry,
            VmExit::InternalError { .. } => ExitKind::InternalError,
            VmExit::Debug { .. } => ExitKind::Debug,
            VmExit::Other { .. } => ExitKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insn_bytes_keep_at_most_fifteen() {
        let long = [0x90u8; 20];
        assert_eq!(InsnBytes::new(&long).as_slice(), &long[..MAX_INSN_LEN]);
        assert_eq!(InsnBytes::new(&[0xcc]).as_slice(), &[0xcc]);
        assert!(InsnBytes::new(&[]).as_slice().is_empty());
        assert_eq!(InsnBytes::default(), InsnBytes::new(&[]));
    }

    #[test]
    fn kinds_are_indexed_in_order() {
        for (i, k) in ExitKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        assert_eq!(format!("{:>6}", ExitKind::Hlt), "   hlt");
    }

    #[test]
    fn every_exit_has_its_kind() {
        let mut buf = [0u8; 1];
        let mut buf2 = [0u8; 4];
        let cases = [
            (
                VmExit::IoIn {
                    port: 1,
                    data: &mut buf,
                },
                ExitKind::IoIn,
            ),
            (
                VmExit::IoOut {
                    port: 1,
                    data: &[1],
                },
                ExitKind::IoOut,
            ),
            (
                VmExit::MmioRead {
                    addr: 1,
                    data: &mut buf2,
                },
                ExitKind::MmioRead,
            ),
            (
                VmExit::MmioWrite {
                    addr: 1,
                    data: &[1],
                },
                ExitKind::MmioWrite,
            ),
            (VmExit::Hlt, ExitKind::Hlt),
            (VmExit::TripleFault, ExitKind::TripleFault),
            (
                VmExit::SystemEvent(SystemEvent::Reset),
                ExitKind::SystemEvent,
            ),
            (VmExit::FailEntry { reason: 1, cpu: 0 }, ExitKind::FailEntry),
            (
                VmExit::InternalError {
                    suberror: 1,
                    insn: None,
                },
                ExitKind::InternalError,
            ),
            (
                VmExit::Debug {
                    pc: 0,
                    exception: 1,
                },
                ExitKind::Debug,
            ),
            (VmExit::Other { reason: 99 }, ExitKind::Other),
        ];
        for (exit, kind) in cases {
            assert_eq!(exit.kind(), kind);
            assert!(!kind.name().is_empty());
        }
    }
}
