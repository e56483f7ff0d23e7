//! vmkit-paging (in progress).
