//! vmkit-devices (in progress).
