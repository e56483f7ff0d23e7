//! The calling thread's vCPU and the exit it is handling, which recording decorators read to
//! attribute what they record.

use std::cell::Cell;

thread_local! {
    /// The sequence number of the exit this thread is handling, if any.
    static EXIT: Cell<Option<u64>> = const { Cell::new(None) };
    /// The vCPU this thread runs.
    static VCPU: Cell<u32> = const { Cell::new(0) };
}

/// Says that the calling thread runs vCPU `id`: the exits it dispatches are recorded as that
/// vCPU's. A thread that never calls it records as vCPU 0.
pub fn set_current_vcpu(id: u32) {
    VCPU.with(|vcpu| vcpu.set(id));
}

/// The vCPU of the calling thread ([`set_current_vcpu`]).
pub fn current_vcpu() -> u32 {
    VCPU.with(Cell::get)
}

/// The sequence number of the exit the calling thread is handling, if it is handling one.
pub fn current_exit() -> Option<u64> {
    EXIT.with(Cell::get)
}

/// Marks an exit as the calling thread's current one until dropped (then the previous one, if
/// any, is current again).
#[derive(Debug)]
#[must_use = "the exit is current only while the scope lives"]
pub struct ExitScope {
    previous: Option<u64>,
}

impl ExitScope {
    /// Makes exit `seq` current on the calling thread.
    pub fn enter(seq: u64) -> Self {
        Self {
            previous: EXIT.with(|exit| exit.replace(Some(seq))),
        }
    }
}

impl Drop for ExitScope {
    fn drop(&mut self) {
        EXIT.with(|exit| exit.set(self.previous));
    }
}
