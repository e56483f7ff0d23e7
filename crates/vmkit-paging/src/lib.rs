#![doc = include_str!("../README.md")]
//!
//! # Modules
//!
//! - [`x86`]: x86-64 entries, [`X86Format`] (what the builder takes: levels, MAXPHYADDR, NXE,
//!   1 GiB pages), [`X86Paging`] (the vCPU state that governs translation: the format, CR3 and
//!   the access checks) and the guest walker with exact #PF error codes.
//! - [`ept`] and [`npt`]: the nested formats; [`nested`]: GPA → HPA translation and the
//!   two-dimensional walk.
//! - [`TableBuilder`]: tables for given mappings in any format, largest page size first.
//! - [`shadow`] (feature `alloc`): the shadow MMU, GVA → HPA tables kept from the guest's
//!   tables and a GPA → HPA map; [`tlb`] (feature `alloc`): a set-associative TLB tagged by
//!   VPID, EPTP and PCID with the architectural invalidations.
//! - [`PhysMemory`]: how everything reaches memory; `BufferMemory` (feature `alloc`), and vm-memory's
//!   `GuestMemoryMmap` behind the `vm-memory` feature.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

#[cfg(any(feature = "alloc", test))]
extern crate alloc;
// The derive refers to `::thiserror`; the dependency is the same crate without its `std`
// feature, so that the core builds for bare-metal targets.
extern crate thiserror_no_std as thiserror;

mod access;
#[cfg(feature = "alloc")]
mod buffer;
mod builder;
mod error;
mod format;
mod memory;
mod size;
#[cfg(feature = "vm-memory")]
mod vm_memory;
mod walk;

pub mod ept;
pub mod nested;
pub mod npt;
#[cfg(feature = "alloc")]
pub mod shadow;
#[cfg(feature = "alloc")]
pub mod tlb;
pub mod x86;

#[cfg(any(test, feature = "reference"))]
#[doc(hidden)]
pub mod reference;

pub use access::{Access, AccessKind, Privilege};
#[cfg(feature = "alloc")]
pub use buffer::BufferMemory;
pub use builder::{BuildError, BumpAllocator, FrameAllocator, TableBuilder};
pub use ept::{Ept, EptCaps, EptFlags};
pub use error::WalkError;
pub use format::{EntryKind, PagingFormat, Rights};
pub use memory::{MemoryError, PhysMemory};
pub use nested::{NestedFault, NestedFormat, NestedTranslation};
pub use npt::Npt;
#[cfg(feature = "alloc")]
pub use shadow::{
    GpaMap, GpaRanges, ShadowConfig, ShadowError, ShadowMmu, ShadowStats, ShadowTranslation,
    SyncPolicy,
};
pub use size::{PageSize, PageSizes};
#[cfg(feature = "alloc")]
pub use tlb::{Tag, Tlb, TlbConfig, TlbEntry};
#[cfg(feature = "vm-memory")]
pub use vm_memory::GuestMemoryPhys;
pub use walk::{MAX_RETRIES, Translation};
pub use x86::{PageFault, PteFlags, X86Format, X86Paging, X86Walker};
