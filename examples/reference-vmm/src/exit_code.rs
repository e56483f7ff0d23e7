//! The reference VMM's process exit status: how the VM ended, as a number.
//!
//! | status | meaning |
//! |---|---|
//! | 0–99 | the guest's debug-exit status (port 0xF4); larger guest statuses are reported as 99; also 0 on a guest power-off |
//! | 100 | the guest asked for a reset (the reference VMM does not reboot) |
//! | 101 | a vCPU shut down: triple fault |
//! | 102 | the guest crashed or stopped in a way the VMM cannot continue: crash event, failed entry, internal/emulation error, an unhandled exit |
//! | 103 | `--replay`: an exit's answer or side effects differ from the recording's; one line names the exit |
//! | 123 | a VMM thread panicked (a bug in the VMM); one line names the thread |
//! | 124 | `--timeout` expired |
//! | 125 | VMM error: bad command line or file, or a failure of the VMM itself |
//! | 130 | stopped by SIGINT |
//! | 143 | stopped by SIGTERM |
//! | 159 | a VMM thread made a system call outside its seccomp list (`--seccomp true`, the default); one line names the thread and the call |

use vmkit_exits::StopReason;

/// The largest guest status passed through unchanged.
pub const GUEST_STATUS_MAX: u32 = 99;
/// The guest asked for a reset.
pub const RESET: u8 = 100;
/// A vCPU shut down (triple fault).
pub const TRIPLE_FAULT: u8 = 101;
/// The guest crashed or hit an exit the VMM cannot continue from.
pub const GUEST_FAILURE: u8 = 102;
/// A replay (`--replay`) diverged from its recording.
pub const REPLAY_DIVERGED: u8 = 103;
/// A thread of the VMM panicked.
pub const VMM_PANIC: u8 = 123;
/// The timeout expired.
pub const TIMEOUT: u8 = 124;
/// The VMM itself failed (including bad user input).
pub const VMM_ERROR: u8 = 125;
/// Stopped by SIGINT.
pub const SIGINT: u8 = 130;
/// Stopped by SIGTERM.
pub const SIGTERM: u8 = 143;
/// A thread made a system call outside its seccomp list: 128 + SIGSYS, as a shell reports a
/// process that signal ended.
pub const SECCOMP_VIOLATION: u8 = 128 + libc::SIGSYS as u8;

/// The exit status for a VM that stopped for `reason`.
pub fn for_stop(reason: &StopReason) -> u8 {
    match reason {
        StopReason::GuestExit(s) => (*s).min(GUEST_STATUS_MAX) as u8,
        StopReason::PowerOff => 0,
        StopReason::Reset => RESET,
        StopReason::TripleFault => TRIPLE_FAULT,
        StopReason::Crash
        | StopReason::EntryFailed(_)
        | StopReason::InternalError { .. }
        | StopReason::Unhandled(_) => GUEST_FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_distinct() {
        assert_eq!(for_stop(&StopReason::GuestExit(0)), 0);
        assert_eq!(for_stop(&StopReason::GuestExit(42)), 42);
        assert_eq!(for_stop(&StopReason::GuestExit(u32::MAX)), 99);
        assert_eq!(for_stop(&StopReason::PowerOff), 0);
        assert_eq!(for_stop(&StopReason::Reset), RESET);
        assert_eq!(for_stop(&StopReason::TripleFault), TRIPLE_FAULT);
        assert_eq!(for_stop(&StopReason::Crash), GUEST_FAILURE);
        assert_eq!(for_stop(&StopReason::Unhandled(7)), GUEST_FAILURE);
        let all = [
            RESET,
            TRIPLE_FAULT,
            GUEST_FAILURE,
            REPLAY_DIVERGED,
            VMM_PANIC,
            TIMEOUT,
            VMM_ERROR,
            SIGINT,
            SIGTERM,
            SECCOMP_VIOLATION,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(u32::from(*a) > GUEST_STATUS_MAX);
            assert!(all[i + 1..].iter().all(|b| a != b));
        }
    }
}
