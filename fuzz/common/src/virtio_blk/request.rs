//! Block requests from a chain's payload bytes: the device-specific part of a virtio-blk chain
//! (header, data, status) that the virtio simulator lays out as the chain's structure says.
//!
//! Payload: byte 0 picks the request type ([`KINDS`]); bytes 1..9 are the sector
//! (little-endian, missing bytes 0); byte 9 says the data: its low three bits a number of
//! sectors (0 to 7), bit 3 an ID's 20 bytes instead, bit 4 a status byte the device cannot
//! write (malformed on purpose); the bytes after it are what a write request writes, repeated
//! over its data.

use vmkit_devices::virtio::block::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vmkit_fuzzing::virtio::Segment;

/// Request types a payload picks from (the last two are unsupported).
pub const KINDS: [u32; 6] = [
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    2,
    11,
];
/// Data bit: an ID's 20 bytes instead of sectors.
pub const ID_DATA: u8 = 1 << 3;
/// Data bit: the status byte is device-readable.
pub const READABLE_STATUS: u8 = 1 << 4;
/// The length of a device ID.
const ID_LEN: u32 = 20;

/// The payload of a request of type `kind` (an index into [`KINDS`]) at `sector`, with `data`
/// as described in the [module documentation](self) and `content` for a write.
pub fn payload(kind: u8, sector: u64, data: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&sector.to_le_bytes());
    out.push(data);
    out.extend_from_slice(content);
    out
}

/// The bytes of a write's content a payload keeps from a recorded chain (repeated over its
/// data by [`segments`]).
const RECORDED_CONTENT: usize = 16;

/// The payload whose request has buffers like `segments` (a recorded guest's chain): the
/// header's type (an unknown one as the first unsupported kind) and sector, as many sectors of
/// data as the buffer between header and status holds (at most 7) or an ID for `GET_ID`, a
/// device-readable status, a write's first bytes. `None` without a 16-byte readable header.
pub fn payload_of(segments: &[Segment]) -> Option<Vec<u8>> {
    let Some(Segment::Readable(header)) = segments.first() else {
        return None;
    };
    let header: &[u8; 16] = header.get(..16)?.try_into().ok()?;
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let sector = u64::from_le_bytes(header[8..].try_into().ok()?);
    let index = KINDS.iter().position(|&k| k == kind).unwrap_or(4) as u8;
    let (data, status) = match &segments[1..] {
        [] => (None, None),
        [status] => (None, Some(status)),
        [data, .., status] => (Some(data), Some(status)),
    };
    let (len, content) = match data {
        Some(Segment::Readable(bytes)) => {
            (bytes.len(), &bytes[..bytes.len().min(RECORDED_CONTENT)])
        }
        Some(Segment::Writable(len)) => (*len as usize, &[][..]),
        None => (0, &[][..]),
    };
    let mut flags = if kind == VIRTIO_BLK_T_GET_ID && len > 0 {
        ID_DATA
    } else {
        (len / 512).min(7) as u8
    };
    if matches!(status, Some(Segment::Readable(_))) {
        flags |= READABLE_STATUS;
    }
    Some(payload(index, sector, flags, content))
}

/// The buffers of the request `payload` describes.
pub fn segments(payload: &[u8], segments: &mut Vec<Segment>) {
    let at = |i: usize| payload.get(i).copied().unwrap_or(0);
    let kind = KINDS[usize::from(at(0)) % KINDS.len()];
    let mut sector = [0u8; 8];
    for (i, byte) in sector.iter_mut().enumerate() {
        *byte = at(1 + i);
    }
    let data = at(9);
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&kind.to_le_bytes());
    header[8..].copy_from_slice(&sector);
    segments.push(Segment::Readable(header.to_vec()));
    let len = if data & ID_DATA != 0 {
        ID_LEN
    } else {
        u32::from(data & 7) * 512
    };
    if len > 0 {
        if kind == VIRTIO_BLK_T_OUT {
            let content = payload.get(10..).unwrap_or(&[]);
            let bytes = match content.is_empty() {
                true => vec![0; len as usize],
                false => content.iter().copied().cycle().take(len as usize).collect(),
            };
            segments.push(Segment::Readable(bytes));
        } else {
            segments.push(Segment::Writable(len));
        }
    }
    segments.push(match data & READABLE_STATUS {
        0 => Segment::Writable(1),
        _ => Segment::Readable(vec![0]),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_become_header_data_and_status() {
        let mut out = Vec::new();
        segments(&payload(1, 3, 1, &[7, 8]), &mut out);
        let mut header = vec![1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0];
        let data: Vec<u8> = [7, 8].iter().copied().cycle().take(512).collect();
        assert_eq!(
            out,
            [
                Segment::Readable(header.clone()),
                Segment::Readable(data),
                Segment::Writable(1)
            ]
        );
        out.clear();
        segments(&payload(3, 0, ID_DATA | READABLE_STATUS, &[]), &mut out);
        header[..4].copy_from_slice(&VIRTIO_BLK_T_GET_ID.to_le_bytes());
        header[8] = 0;
        assert_eq!(
            out,
            [
                Segment::Readable(header),
                Segment::Writable(20),
                Segment::Readable(vec![0])
            ]
        );
        out.clear();
        segments(&[], &mut out);
        assert_eq!(payload_of(&out), Some(payload(0, 0, 0, &[])));
        assert_eq!(
            out.len(),
            2,
            "an empty payload reads nothing: header and status"
        );
    }

    #[test]
    fn recorded_chains_become_the_payloads_that_make_them() {
        for (kind, sector, data, content) in [
            (0, 9, 3, &[][..]),
            (1, 2047, 7 | READABLE_STATUS, &[1, 2, 3][..]),
            (2, 0, 0, &[][..]),
            (3, 5, ID_DATA, &[][..]),
            (5, 1 << 40, 1, &[][..]),
        ] {
            let made = payload(kind, sector, data, content);
            let mut out = Vec::new();
            segments(&made, &mut out);
            let mut back = payload_of(&out).unwrap();
            // A write's content comes back repeated over the data, cut to RECORDED_CONTENT.
            back.truncate(made.len());
            assert_eq!(back, made, "kind {kind}");
        }
        // Eight sectors of data, as a guest's page-sized request: seven.
        let header = [1, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0];
        let chain = [
            Segment::Readable(header.to_vec()),
            Segment::Readable(vec![0xAB; 4096]),
            Segment::Writable(1),
        ];
        assert_eq!(
            payload_of(&chain),
            Some(payload(1, 4, 7, &[0xAB; RECORDED_CONTENT]))
        );
        assert_eq!(payload_of(&[Segment::Writable(16)]), None);
        assert_eq!(payload_of(&[Segment::Readable(vec![0; 15])]), None);
    }
}
