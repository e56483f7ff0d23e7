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

impl std::fmt::Display for StopReason {
    /// A one-line description; an internal error names the instruction it failed on (decoded as
    /// 64-bit code) and shows its bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::GuestExit(code) => write!(f, "guest exit with status {code:#x}"),
            StopReason::Reset => f.write_str("guest reset"),
            StopReason::PowerOff => f.write_str("guest power-off"),
            StopReason::TripleFault => f.write_str("vCPU shutdown (triple fault)"),
            StopReason::Crash => f.write_str("guest crash"),
            StopReason::EntryFailed(reason) => {
                write!(f, "guest entry failed (hardware reason {reason:#x})")
            }
            StopReason::InternalError { suberror, insn } => {
                if *suberror == crate::exit::INTERNAL_ERROR_EMULATION {
                    f.write_str("internal error: emulation failure")?;
                } else {
                    write!(f, "internal error {suberror}")?;
                }
                match insn {
                    Some(insn) if !insn.as_slice().is_empty() => {
                        let bytes = insn.as_slice();
                        write!(f, " on {} [", crate::decode::describe_insn(bytes))?;
                        for (i, b) in bytes.iter().enumerate() {
                            let sep = if i == 0 { "" } else { " " };
                            write!(f, "{sep}{b:02x}")?;
                        }
                        f.write_str("]")
                    }
                    _ => f.write_str(" (no instruction bytes)"),
                }
            }
            StopReason::Unhandled(reason) => write!(f, "unhandled exit (reason {reason})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_display() {
        let cases = [
            (StopReason::GuestExit(0x31), "guest exit with status 0x31"),
            (StopReason::Reset, "guest reset"),
            (StopReason::PowerOff, "guest power-off"),
            (StopReason::TripleFault, "vCPU shutdown (triple fault)"),
            (StopReason::Crash, "guest crash"),
            (
                StopReason::EntryFailed(0x21),
                "guest entry failed (hardware reason 0x21)",
            ),
            (
                StopReason::InternalError {
                    suberror: 1,
                    insn: Some(InsnBytes::new(&[0xf0, 0x48, 0x0f, 0xc7, 0x0e])),
                },
                "internal error: emulation failure on lock cmpxchg16b [rsi] [f0 48 0f c7 0e]",
            ),
            (
                StopReason::InternalError {
                    suberror: 1,
                    insn: Some(InsnBytes::new(&[0xcc])),
                },
                "internal error: emulation failure on int3 [cc]",
            ),
            (
                StopReason::InternalError {
                    suberror: 1,
                    insn: Some(InsnBytes::new(&[])),
                },
                "internal error: emulation failure (no instruction bytes)",
            ),
            (
                StopReason::InternalError {
                    suberror: 3,
                    insn: None,
                },
                "internal error 3 (no instruction bytes)",
            ),
            (StopReason::Unhandled(17), "unhandled exit (reason 17)"),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text);
        }
    }
}
