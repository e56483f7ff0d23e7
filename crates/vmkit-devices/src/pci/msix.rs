//! The MSI-X table and pending-bit array of a function (PCI Local Bus 3.0, section 6.8.2).
//!
//! Each table entry is 16 bytes: message address (low, high), message data and vector control
//! (bit 0 masks the vector). A vector fired while it (or the whole function) is masked sets its
//! pending bit instead, and is delivered when it is unmasked. The table answers any read, and
//! takes the aligned dword and qword writes the specification allows (others are ignored).

/// Bytes per MSI-X table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;

/// Vector control bit: the vector is masked.
const VECTOR_MASKED: u32 = 1;

/// One message-signalled interrupt: a dword write of `data` to `address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixMessage {
    /// The message address (on x86, in the 0xFEEx_xxxx window of the local APICs).
    pub address: u64,
    /// The message data (vector and delivery mode on x86).
    pub data: u32,
}

/// What became of a fired vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixDelivery {
    /// Send this message now.
    Send(MsixMessage),
    /// The vector or the function is masked: its pending bit is set.
    Pending,
    /// The vector is not in the table.
    NoSuchVector,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    address_low: u32,
    address_high: u32,
    data: u32,
    control: u32,
}

impl Entry {
    fn masked() -> Self {
        Self {
            control: VECTOR_MASKED,
            ..Self::default()
        }
    }

    fn message(&self) -> MsixMessage {
        MsixMessage {
            address: (u64::from(self.address_high) << 32) | u64::from(self.address_low),
            data: self.data,
        }
    }

    fn dword(&self, index: u64) -> u32 {
        match index {
            0 => self.address_low,
            1 => self.address_high,
            2 => self.data,
            _ => self.control,
        }
    }

    fn set_dword(&mut self, index: u64, value: u32) {
        match index {
            0 => self.address_low = value,
            1 => self.address_high = value,
            2 => self.data = value,
            // Only the mask bit of vector control is defined; the rest is reserved (reads 0).
            _ => self.control = value & VECTOR_MASKED,
        }
    }
}

/// The MSI-X state of a function: table, pending bits, enable and function mask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsixTable {
    entries: Vec<Entry>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
}

impl MsixTable {
    /// A table of `vectors` entries (1..=2048), every vector masked, MSI-X disabled.
    pub fn new(vectors: u16) -> Self {
        let vectors = vectors.clamp(1, 2048);
        Self {
            entries: vec![Entry::masked(); usize::from(vectors)],
            pending: vec![0; usize::from(vectors).div_ceil(64)],
            enabled: false,
            function_masked: false,
        }
    }

    /// The number of vectors.
    pub fn len(&self) -> u16 {
        // At most 2048 entries.
        self.entries.len() as u16
    }

    /// Whether the table has no vectors (never: a table has at least one).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether MSI-X is enabled (message control bit 15).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether all vectors are masked (message control bit 14).
    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    /// Bytes of the table in the BAR.
    pub fn table_len(&self) -> u64 {
        self.entries.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Bytes of the pending-bit array in the BAR.
    pub fn pba_len(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// Whether `vector`'s pending bit is set.
    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pending
            .get(v / 64)
            .is_some_and(|w| w & (1 << (v % 64)) != 0)
    }

    fn set_pending(&mut self, vector: usize, pending: bool) {
        if let Some(word) = self.pending.get_mut(vector / 64) {
            if pending {
                *word |= 1 << (vector % 64);
            } else {
                *word &= !(1 << (vector % 64));
            }
        }
    }

    fn deliverable(&self, vector: usize) -> bool {
        self.enabled
            && !self.function_masked
            && self
                .entries
                .get(vector)
                .is_some_and(|e| e.control & VECTOR_MASKED == 0)
    }

    /// Takes the messages of pending vectors that are now deliverable, clearing their bits.
    fn drain_pending(&mut self) -> Vec<MsixMessage> {
        let mut out = Vec::new();
        for vector in 0..self.entries.len() {
            if self.deliverable(vector) && self.is_pending(vector as u16) {
                self.set_pending(vector, false);
                out.push(self.entries[vector].message());
            }
        }
        out
    }

    /// Applies the message control bits (enable, function mask); returns the pending messages
    /// that became deliverable.
    pub fn set_control(&mut self, enabled: bool, function_masked: bool) -> Vec<MsixMessage> {
        self.enabled = enabled;
        self.function_masked = function_masked;
        self.drain_pending()
    }

    /// Fires `vector`. The caller checks that MSI-X is enabled first.
    pub fn fire(&mut self, vector: u16) -> MsixDelivery {
        let v = usize::from(vector);
        match self.entries.get(v) {
            None => MsixDelivery::NoSuchVector,
            Some(entry) if self.deliverable(v) => MsixDelivery::Send(entry.message()),
            Some(_) => {
                self.set_pending(v, true);
                MsixDelivery::Pending
            }
        }
    }

    /// Reads table bytes at `offset`; bytes past the table read 0.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let o = offset.saturating_add(i as u64);
            *byte = usize::try_from(o / MSIX_ENTRY_SIZE)
                .ok()
                .and_then(|e| self.entries.get(e))
                .map_or(0, |e| {
                    e.dword((o % MSIX_ENTRY_SIZE) / 4).to_le_bytes()[(o % 4) as usize]
                });
        }
    }

    /// Writes table bytes at `offset`: an aligned dword or qword inside the table (else
    /// `false`, nothing changes). Returns the pending messages an unmask made deliverable.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Option<Vec<MsixMessage>> {
        let len = data.len() as u64;
        if !(len == 4 || len == 8) || !offset.is_multiple_of(len) || offset >= self.table_len() {
            return None;
        }
        let entry = usize::try_from(offset / MSIX_ENTRY_SIZE).ok()?;
        let first = (offset % MSIX_ENTRY_SIZE) / 4;
        for (k, chunk) in data.chunks_exact(4).enumerate() {
            let value = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            self.entries[entry].set_dword(first + k as u64, value);
        }
        Some(self.drain_pending())
    }

    /// Reads pending-bit-array bytes at `offset`; bytes past the array read 0.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let o = offset.saturating_add(i as u64);
            *byte = usize::try_from(o / 8)
                .ok()
                .and_then(|w| self.pending.get(w))
                .map_or(0, |w| w.to_le_bytes()[(o % 8) as usize]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(t: &mut MsixTable, vector: u64, address: u64, data: u32) {
        let base = vector * MSIX_ENTRY_SIZE;
        assert!(t.write_table(base, &address.to_le_bytes()).is_some());
        assert!(t.write_table(base + 8, &data.to_le_bytes()).is_some());
    }

    fn unmask(t: &mut MsixTable, vector: u64) -> Vec<MsixMessage> {
        t.write_table(vector * MSIX_ENTRY_SIZE + 12, &0u32.to_le_bytes())
            .unwrap()
    }

    #[test]
    fn entries_start_masked_and_read_back() {
        let mut t = MsixTable::new(3);
        assert_eq!((t.len(), t.table_len(), t.pba_len()), (3, 48, 8));
        assert!(!t.is_empty() && !t.enabled() && !t.function_masked());
        let mut data = [0u8; 4];
        t.read_table(12, &mut data);
        assert_eq!(u32::from_le_bytes(data), 1);
        program(&mut t, 1, 0xFEE0_1000, 0x4041);
        let mut q = [0u8; 8];
        t.read_table(16, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0xFEE0_1000);
        t.read_table(24, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0x4041);
        // Reserved control bits read 0.
        t.write_table(28, &0xFFFF_FFFEu32.to_le_bytes()).unwrap();
        t.read_table(28, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0);
        // Byte reads and reads past the table.
        let mut b = [0u8; 2];
        t.read_table(25, &mut b);
        assert_eq!(b, [0x40, 0]);
        let mut across = [0xAAu8; 8];
        t.read_table(44, &mut across);
        assert_eq!(
            across,
            [1, 0, 0, 0, 0, 0, 0, 0],
            "entry 2 is masked, then the end"
        );
        t.read_table(u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
    }

    #[test]
    fn odd_writes_are_refused() {
        let mut t = MsixTable::new(2);
        let before = t.clone();
        assert!(t.write_table(0, &[1]).is_none());
        assert!(t.write_table(2, &[1, 2, 3, 4]).is_none());
        assert!(t.write_table(4, &[0; 8]).is_none());
        assert!(t.write_table(32, &[0; 4]).is_none());
        assert!(t.write_table(0, &[0; 2]).is_none());
        assert_eq!(t, before);
    }

    #[test]
    fn masked_vectors_pend_and_deliver_on_unmask() {
        let mut t = MsixTable::new(2);
        program(&mut t, 0, 0xFEE0_0000, 0x30);
        assert!(t.set_control(true, false).is_empty());
        assert_eq!(t.fire(0), MsixDelivery::Pending, "entry masked");
        assert!(t.is_pending(0));
        let mut pba = [0u8; 8];
        t.read_pba(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 1);
        let sent = unmask(&mut t, 0);
        assert_eq!(
            sent,
            vec![MsixMessage {
                address: 0xFEE0_0000,
                data: 0x30
            }]
        );
        assert!(!t.is_pending(0));
        assert_eq!(
            t.fire(0),
            MsixDelivery::Send(MsixMessage {
                address: 0xFEE0_0000,
                data: 0x30
            })
        );
        assert_eq!(t.fire(2), MsixDelivery::NoSuchVector);
        assert!(!t.is_pending(2));
    }

    #[test]
    fn function_mask_and_enable_hold_messages() {
        let mut t = MsixTable::new(2);
        program(&mut t, 1, 0xFEE0_2000, 0x51);
        unmask(&mut t, 1);
        t.set_control(true, true);
        assert_eq!(t.fire(1), MsixDelivery::Pending, "function masked");
        let sent = t.set_control(true, false);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].data, 0x51);
        // While disabled, pending bits stay until enabled.
        t.set_control(false, false);
        assert_eq!(t.fire(1), MsixDelivery::Pending);
        assert!(t.set_control(false, false).is_empty());
        assert_eq!(t.set_control(true, false).len(), 1);
        let mut pba = [0xAAu8; 4];
        t.read_pba(6, &mut pba);
        assert_eq!(pba, [0; 4]);
    }

    #[test]
    fn sizes_are_clamped() {
        assert_eq!(MsixTable::new(0).len(), 1);
        assert_eq!(MsixTable::new(4000).len(), 2048);
        assert_eq!(MsixTable::new(65).pba_len(), 16);
    }
}
