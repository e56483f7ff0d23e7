//! placeholder

/// Target body.
pub fn run(data: &[u8]) {
    let _ = data;
}
