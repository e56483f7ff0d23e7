//! The one error type of every walk.

use crate::memory::MemoryError;
use crate::nested::NestedFault;
use crate::walk::MAX_RETRIES;
use crate::x86::PageFault;

/// Why a translation failed.
///
/// A guest walk (GVA → GPA) fails with `PageFault`, `NonCanonical`, `Memory` or `Contended`; a
/// nested walk (GPA → HPA) with `Nested`, `Memory` or `Contended`; the two-dimensional walk with
/// any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// The guest takes a page fault: {0}.
    #[error("The guest takes a page fault: {0}.")]
    PageFault(PageFault),
    /// Linear address {0:#x} is not canonical: the guest takes #GP (or #SS), not #PF.
    #[error("Linear address {0:#x} is not canonical: the guest takes #GP (or #SS), not #PF.")]
    NonCanonical(u64),
    /// The nested translation failed: {0}.
    #[error("The nested translation failed: {0}.")]
    Nested(NestedFault),
    /// A paging structure or page lies outside memory: {0}
    #[error("A paging structure or page lies outside memory: {0}")]
    Memory(#[from] MemoryError),
    /// Paging-structure entries kept changing under the accessed/dirty updates; the walk gave up
    /// after MAX_RETRIES restarts.
    #[error(
        "Paging-structure entries kept changing under the accessed/dirty updates; the walk gave \
         up after {MAX_RETRIES} restarts."
    )]
    Contended,
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn messages() {
        let fault = WalkError::PageFault(PageFault {
            address: 0x1000,
            error_code: 3,
        });
        assert_eq!(
            fault.to_string(),
            "The guest takes a page fault: #PF at 0x1000, error code 0x3."
        );
        assert!(
            WalkError::NonCanonical(1 << 63)
                .to_string()
                .contains("0x8000000000000000")
        );
        assert!(
            WalkError::Memory(MemoryError::OutOfRange(0x5000))
                .to_string()
                .contains("0x5000 is outside memory")
        );
        assert!(WalkError::Contended.to_string().contains("8 restarts"));
        let from: WalkError = MemoryError::Misaligned(1).into();
        assert_eq!(from, WalkError::Memory(MemoryError::Misaligned(1)));
    }
}
