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
#[derive(Debug, Clone, Copy, PartialEq, Eq, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum WalkError {
    /// the guest takes a page fault: {0}
    PageFault(PageFault),
    /// linear address {0:#x} is not canonical: the guest takes #GP (or #SS), not #PF
    NonCanonical(u64),
    /// the nested translation failed: {0}
    Nested(NestedFault),
    /// a paging structure or page lies outside memory
    Memory(#[from] MemoryError),
    /// paging-structure entries kept changing under the accessed/dirty updates; the walk gave up
    /// after 8 restarts
    ///
    /// The count is [`MAX_RETRIES`] (a message names fields, not constants; the assertion below
    /// keeps the two equal).
    Contended,
}

const _: () = assert!(
    MAX_RETRIES == 8,
    "WalkError::Contended's message names the retry count"
);

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
            "the guest takes a page fault: #PF at 0x1000, error code 0x3"
        );
        assert!(
            WalkError::NonCanonical(1 << 63)
                .to_string()
                .contains("0x8000000000000000")
        );
        // The cause is the source, not part of the message: a printed chain names it once.
        let memory = WalkError::Memory(MemoryError::OutOfRange(0x5000));
        assert_eq!(
            memory.to_string(),
            "a paging structure or page lies outside memory"
        );
        assert_eq!(
            core::error::Error::source(&memory).map(ToString::to_string),
            Some("physical address 0x5000 is outside memory".to_string())
        );
        assert!(WalkError::Contended.to_string().contains("8 restarts"));
        let from: WalkError = MemoryError::Misaligned(1).into();
        assert_eq!(from, WalkError::Memory(MemoryError::Misaligned(1)));
    }
}
