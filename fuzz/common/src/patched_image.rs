//! Boot images as fuzz inputs: either the input's own bytes, or a valid skeleton with a few
//! patches, so the fuzzer reaches deep into a loader without rediscovering the format. Shared by
//! the loader targets (`pvh_loader`, `bzimage_loader`), each with its own skeleton.

/// Most patches taken from one input.
pub const MAX_PATCHES: usize = 64;
/// Encoded size of a patch: offset (2), width (1), value (8).
const PATCH_SIZE: usize = 11;

/// One patch of the skeleton: `value`'s low `width` bytes at `offset` (modulo the image size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patch {
    /// Offset in the image, taken modulo its length.
    pub offset: u16,
    /// Bytes written: 1, 2, 4 or 8 (`width % 4` selects).
    pub width: u8,
    /// The value, little-endian.
    pub value: u64,
}

/// Where the image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Image {
    /// The input bytes themselves.
    Raw(Vec<u8>),
    /// The skeleton with patches applied in order.
    Patched(Vec<Patch>),
}

impl Image {
    /// Decodes the rest of an input: its bytes when `raw`, else up to [`MAX_PATCHES`] patches.
    pub fn decode(raw: bool, rest: &[u8]) -> Self {
        if raw {
            return Image::Raw(rest.to_vec());
        }
        Image::Patched(
            rest.chunks_exact(PATCH_SIZE)
                .take(MAX_PATCHES)
                .map(|chunk| Patch {
                    offset: u16::from_le_bytes([chunk[0], chunk[1]]),
                    width: chunk[2],
                    value: u64::from_le_bytes(chunk[3..11].try_into().unwrap_or_default()),
                })
                .collect(),
        )
    }

    /// Whether the image is the input's own bytes.
    pub fn is_raw(&self) -> bool {
        matches!(self, Image::Raw(_))
    }

    /// Appends the encoding [`decode`](Self::decode) reads back.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Image::Raw(bytes) => out.extend_from_slice(bytes),
            Image::Patched(patches) => {
                for patch in patches {
                    out.extend_from_slice(&patch.offset.to_le_bytes());
                    out.push(patch.width);
                    out.extend_from_slice(&patch.value.to_le_bytes());
                }
            }
        }
    }

    /// The image bytes: the raw bytes, or `skeleton()` with the patches applied.
    pub fn bytes(&self, skeleton: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
        match self {
            Image::Raw(bytes) => bytes.clone(),
            Image::Patched(patches) => {
                let mut bytes = skeleton();
                for patch in patches {
                    let width = [1, 2, 4, 8][usize::from(patch.width % 4)];
                    let start = usize::from(patch.offset) % bytes.len();
                    let end = (start + width).min(bytes.len());
                    bytes[start..end].copy_from_slice(&patch.value.to_le_bytes()[..end - start]);
                }
                bytes
            }
        }
    }
}

/// Reads the byte at `*pos` (zero past the end) and advances.
pub fn u8_at(data: &[u8], pos: &mut usize) -> u8 {
    let value = data.get(*pos).copied().unwrap_or(0);
    *pos += 1;
    value
}

/// Reads a little-endian `u16` at `*pos` (missing bytes zero) and advances.
pub fn u16_at(data: &[u8], pos: &mut usize) -> u16 {
    u16::from_le_bytes([u8_at(data, pos), u8_at(data, pos)])
}
