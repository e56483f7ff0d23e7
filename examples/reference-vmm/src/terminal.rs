//! Puts stdin into character-at-a-time mode for the guest's serial console, and restores it.

use std::io::IsTerminal;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, PoisonError};

/// The settings [`RawStdin::enable`] replaced, until they are restored.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Restores the terminal's original settings when dropped.
pub struct RawStdin {
    _private: (),
}

/// Restores the terminal settings [`RawStdin::enable`] replaced, if it did and nobody restored
/// them yet: the guard's drop does, and so does a VMM that exits at once (a second signal).
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(saved) = saved {
        // SAFETY: stdin is open for the life of the process and `saved` is the termios read from
        // it in `enable`; a failure leaves the terminal as it was and is not actionable here.
        unsafe {
            libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &saved);
        }
    }
}

impl RawStdin {
    /// Switches stdin, if it is a terminal, to non-canonical mode without echo. Signals from the
    /// keyboard (Ctrl-C) still reach the VMM, as with QEMU's `-serial stdio`. Returns `None` when
    /// stdin is not a terminal or its mode cannot be read.
    pub fn enable() -> Option<Self> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let fd = stdin.as_raw_fd();
        let mut saved = MaybeUninit::<libc::termios>::uninit();
        // SAFETY: `fd` is stdin, open for the life of the process; `saved` is a valid out pointer
        // that tcgetattr fills completely when it returns 0, which is checked before use.
        if unsafe { libc::tcgetattr(fd, saved.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: tcgetattr returned 0, so it initialised `saved`.
        let saved = unsafe { saved.assume_init() };
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: `fd` is a valid terminal descriptor and `raw` a fully initialised termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        *SAVED.lock().unwrap_or_else(PoisonError::into_inner) = Some(saved);
        Some(Self { _private: () })
    }
}

impl Drop for RawStdin {
    fn drop(&mut self) {
        restore();
    }
}
