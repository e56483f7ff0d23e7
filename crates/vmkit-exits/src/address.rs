//! The addresses of the two I/O spaces, as distinct types: a port ([`PioAddress`]) and a
//! guest-physical MMIO address ([`MmioAddress`]).
//!
//! A handler is called with the base of its range and the offset of the access inside it. Were
//! both plain integers of the same type, swapping them would compile and misroute every access;
//! so the base is an address type and the offset stays a plain integer (`u16` for ports, `u64`
//! for MMIO), as rust-vmm's vm-device does. The buses route on the same types, and a
//! [`BusRange`](crate::BusRange) pairs an address with a `u64` length, so a base and a length
//! cannot be swapped either.

use std::fmt;

use crate::bus::BusAddress;

/// A port on the port-I/O bus (16 bits on x86).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PioAddress(pub u16);

/// A guest-physical address on the MMIO bus.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MmioAddress(pub u64);

impl fmt::Debug for PioAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PioAddress({:#x})", self.0)
    }
}

impl fmt::Debug for MmioAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MmioAddress({:#x})", self.0)
    }
}

impl fmt::LowerHex for PioAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl fmt::LowerHex for MmioAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl From<PioAddress> for u64 {
    fn from(address: PioAddress) -> Self {
        u64::from(address.0)
    }
}

impl From<MmioAddress> for u64 {
    fn from(address: MmioAddress) -> Self {
        address.0
    }
}

impl BusAddress for PioAddress {
    type Offset = u16;
    const HEX_DIGITS: usize = 4;
    fn to_u64(self) -> u64 {
        self.into()
    }
    fn from_u64(value: u64) -> Option<Self> {
        u16::try_from(value).ok().map(PioAddress)
    }
    fn offset_from_u64(value: u64) -> Option<u16> {
        u16::try_from(value).ok()
    }
}

impl BusAddress for MmioAddress {
    type Offset = u64;
    const HEX_DIGITS: usize = 8;
    fn to_u64(self) -> u64 {
        self.0
    }
    fn from_u64(value: u64) -> Option<Self> {
        Some(MmioAddress(value))
    }
    fn offset_from_u64(value: u64) -> Option<u64> {
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_convert_and_print_in_hex() {
        assert_eq!(PioAddress::from_u64(0x3f8), Some(PioAddress(0x3f8)));
        assert_eq!(PioAddress::from_u64(0x1_0000), None);
        assert_eq!(PioAddress::offset_from_u64(0xffff), Some(0xffff));
        assert_eq!(PioAddress::offset_from_u64(0x1_0000), None);
        assert_eq!(PioAddress(0x3f8).to_u64(), 0x3f8);
        assert_eq!(MmioAddress::from_u64(u64::MAX), Some(MmioAddress(u64::MAX)));
        assert_eq!(MmioAddress::offset_from_u64(7), Some(7));
        assert_eq!(MmioAddress(0xd000_0000).to_u64(), 0xd000_0000);
        assert_eq!(format!("{:?}", PioAddress(0x3f8)), "PioAddress(0x3f8)");
        assert_eq!(format!("{:?}", MmioAddress(0x1000)), "MmioAddress(0x1000)");
        assert_eq!(format!("{:#06x}", PioAddress(0x60)), "0x0060");
        assert_eq!(format!("{:x}", MmioAddress(0xfee0_0000)), "fee00000");
        assert!(PioAddress(1) < PioAddress(2));
    }
}
