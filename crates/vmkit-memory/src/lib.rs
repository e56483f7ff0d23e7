#![doc = include_str!("../README.md")]
//!
//! # Modules
//!
//! - [`layout`]: the fixed addresses of the x86-64 guest physical layout.
//! - [`GuestLayout`]: RAM regions, memory map, windows and reserved pages of one guest, and the
//!   [`GuestMemoryMmap`](vm_memory::GuestMemoryMmap) backing its RAM.
//! - [`Allocators`]: MMIO32, MMIO64, port-I/O and GSI allocation inside the layout's windows.

// Re-exports: the foreign crate and types of this crate's public signatures, so that callers
// need not depend on the same vm-memory version themselves.
/// vm-memory, whose guest memory and addresses this crate's API hands out.
pub use vm_memory;
/// The guest-physical address of every range and region.
pub use vm_memory::{GuestAddress, GuestMemoryMmap};

mod allocator;
mod guest_layout;
pub mod layout;
mod map;
mod range;

pub use allocator::{AllocatorError, Allocators, ResourceKind};
pub use guest_layout::{GuestLayout, LayoutError, MemoryError};
pub use map::{MemoryKind, MemoryMapEntry};
pub use range::{AddressRange, PortRange, RamRegion};
