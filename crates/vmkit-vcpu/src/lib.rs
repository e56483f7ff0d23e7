//! vmkit-vcpu (in progress).
