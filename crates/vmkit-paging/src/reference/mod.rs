//! The naive reference walker and the differential harness, for the crate's property tests and
//! the `paging_walk` fuzz target. Not part of the API: enabled by the `reference` feature.
//!
//! [`naive`] translates from plain bit arithmetic written from the manuals and shares no code
//! with the crate's formats; [`scenario`] decodes bytes into paging scenarios;
//! [`differential::check`] runs every access of a scenario through the reference, the crate's
//! walk and, with nested paging, the composition of the guest walker and the GPA map, and
//! compares outcomes and memory. [`shadow::check`] runs guest page-table writes,
//! invalidations and mode changes through the shadow MMU and checks every translation against
//! a fresh walk, with the staleness the architecture allows modelled.

pub mod differential;
pub mod naive;
pub mod scenario;
pub mod shadow;

#[cfg(test)]
mod tests;
