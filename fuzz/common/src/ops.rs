//! Decoding and encoding of the operation sequences most fuzz inputs are made of.

use arbitrary::Unstructured;

/// Reads operations from `u` with `read` until the input ends, an operation is cut short, or `max`
/// were read.
pub fn decode<'a, T>(
    u: &mut Unstructured<'a>,
    max: usize,
    mut read: impl FnMut(&mut Unstructured<'a>) -> arbitrary::Result<T>,
) -> Vec<T> {
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < max {
        match read(u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    ops
}

/// The concatenated encodings of `ops`: the bytes [`decode`] reads back as `ops`.
pub fn encode<T>(ops: &[T], mut encode_one: impl FnMut(&T, &mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        encode_one(op, &mut out);
    }
    out
}
