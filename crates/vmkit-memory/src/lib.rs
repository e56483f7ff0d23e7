//! Guest physical memory.
