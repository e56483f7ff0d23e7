//! What the vCPU loop does after an exit was handled.

use crate::exit::InsnBytes;

/// Why the VM stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest ended the VM with a status code (for example through a debug-exit port).
    GuestExit(u32),
    /// The guest asked for a reset (i8042 reset line, reset system event).
    Reset,
    /// The guest powered off.
    PowerOff,
    /// The vCPU shut down, typically on a triple fault.
    TripleFault,
    /// The guest reported a crash.
    Crash,
    /// The backend could not enter the guest (hardware entry-failure reason).
    EntryFailed(u64),
    /// The backend hit an internal error (for example an emulation failure) it cannot resolve.
    InternalError {
        /// The backend's sub-error code.
        suberror: u32,
        /// The instruction bytes, when reported.
        insn: Option<InsnBytes>,
    },
    /// An exit this VMM does not handle, with the backend's raw reason.
    Unhandled(u32),
}

/// What the vCPU loop does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Enter the guest again.
    Resume,
    /// The vCPU halted: wait for an interrupt or a kick, then enter again.
    Halt,
    /// Stop the VM.
    Stop(StopReason),
}
