//! vmkit-boot (in progress).
