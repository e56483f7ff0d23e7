//! The XSAVE family on the backend's standard-format XSAVE area: XSAVE, XSAVEOPT, XSAVEC,
//! XSAVES store it in the guest's standard or compacted format; XRSTOR and XRSTORS load either
//! format back (SDM Vol. 1, chapter 13).
//!
//! Component offsets and sizes come from CPUID leaf 0xD ([`XsaveLayout::host`]); a component
//! the standard area of [`XSAVE_AREA_SIZE`] bytes cannot hold (AMX tiles, supervisor
//! components) stops the assist with a report when an instruction asks for it.

use crate::state::XSAVE_AREA_SIZE;

/// Offset of the XSAVE header (XSTATE_BV, XCOMP_BV) in both formats.
pub const HEADER: usize = 512;
/// Offset of the first extended component in the compacted format.
const EXTENDED: usize = 576;
/// XCOMP_BV bit 63: the area is in the compacted format.
pub const COMPACTED: u64 = 1 << 63;
/// The x87 and SSE components, which live in the legacy region.
const LEGACY_COMPONENTS: u64 = 0b11;
/// MXCSR in the legacy region.
const MXCSR: usize = 24;
/// The number of components CPUID leaf 0xD describes in XCR0 | IA32_XSS.
const COMPONENTS: usize = 63;

/// Where one extended state component lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Component {
    /// Offset in the standard format (CPUID.(0xD, i).EBX); 0 for supervisor components.
    pub offset: u32,
    /// Size in bytes (CPUID.(0xD, i).EAX); 0 when the processor does not have it.
    pub size: u32,
    /// Aligned to 64 bytes in the compacted format (CPUID.(0xD, i).ECX bit 1).
    pub align64: bool,
}

/// The layout of extended state components 2..=62.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XsaveLayout {
    components: [Component; COMPONENTS],
}

impl Default for XsaveLayout {
    /// The architectural standard offsets of AVX (2) and the AVX-512 components (5, 6, 7), the
    /// ones every processor with them uses.
    fn default() -> Self {
        let mut components = [Component::default(); COMPONENTS];
        for (i, offset, size) in [
            (2, 576, 256),
            (5, 1088, 64),
            (6, 1152, 512),
            (7, 1664, 1024),
        ] {
            components[i] = Component {
                offset,
                size,
                align64: false,
            };
        }
        Self { components }
    }
}

impl XsaveLayout {
    /// The layout the host processor reports in CPUID leaf 0xD.
    #[cfg(target_arch = "x86_64")]
    pub fn host() -> Self {
        let mut components = [Component::default(); COMPONENTS];
        for (i, c) in components.iter_mut().enumerate().skip(2) {
            // CPUID is available on every x86-64 processor.
            let r = core::arch::x86_64::__cpuid_count(0xd, i as u32);
            *c = Component {
                offset: r.ebx,
                size: r.eax,
                align64: r.ecx & 2 != 0,
            };
        }
        Self { components }
    }

    /// A layout with `components[i]` for component `i` (entries 0 and 1 are ignored).
    pub fn from_components(components: [Component; COMPONENTS]) -> Self {
        Self { components }
    }

    pub(crate) fn component(&self, i: usize) -> Component {
        self.components.get(i).copied().unwrap_or_default()
    }

    /// Whether component `i` fits the standard area.
    fn representable(&self, i: usize) -> bool {
        let c = self.component(i);
        i < 2 || (c.size != 0 && c.offset as usize + c.size as usize <= XSAVE_AREA_SIZE)
    }

    /// The first component of `mask` the standard area cannot hold.
    pub(crate) fn unrepresentable(&self, mask: u64) -> Option<u32> {
        (0..64).find(|&i| mask & (1 << i) != 0 && !self.representable(i as usize))
    }

    /// The (offset, size) of each component of `mask` in the standard (`compacted = None`) or
    /// compacted format with XCOMP_BV `Some(xcomp)`, and the area's length. Components 0 and 1
    /// are left out: they live in the legacy region.
    pub(crate) fn placement(
        &self,
        mask: u64,
        compacted: Option<u64>,
    ) -> (Vec<(usize, usize, usize)>, usize) {
        let mut out = Vec::new();
        let mut end = EXTENDED;
        let mut next = EXTENDED;
        for i in 2..COMPONENTS {
            let c = self.component(i);
            let (size, std_offset) = (c.size as usize, c.offset as usize);
            match compacted {
                None => {
                    if mask & (1 << i) != 0 {
                        out.push((i, std_offset, size));
                        end = end.max(std_offset + size);
                    }
                }
                Some(xcomp) => {
                    if xcomp & (1 << i) == 0 {
                        continue;
                    }
                    if c.align64 {
                        next = next.next_multiple_of(64);
                    }
                    if mask & (1 << i) != 0 {
                        out.push((i, next, size));
                    }
                    next += size;
                    end = end.max(next);
                }
            }
        }
        (out, end)
    }
}

/// The bytes of the legacy region component 0 (x87) owns: all but MXCSR/MXCSR_MASK and XMM.
fn x87_ranges() -> [(usize, usize); 2] {
    [(0, 24), (32, 160)]
}

/// XMM0-15 in the legacy region.
const XMM: (usize, usize) = (160, 416);

fn copy(dst: &mut [u8], src: &[u8], from: usize, to: usize, len: usize) -> Option<()> {
    dst.get_mut(to..to + len)?
        .copy_from_slice(src.get(from..from + len)?);
    Some(())
}

fn u64_at(area: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = area.get(at..at + 8) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

fn set_u64(area: &mut [u8], at: usize, value: u64) {
    if let Some(s) = area.get_mut(at..at + 8) {
        s.copy_from_slice(&value.to_le_bytes());
    }
}

/// Reads XSTATE_BV and XCOMP_BV of an area.
pub(crate) fn header(area: &[u8]) -> (u64, u64) {
    (u64_at(area, HEADER), u64_at(area, HEADER + 8))
}

/// What a store writes: the image of the guest's area (its length is the area's).
///
/// `vcpu` is the backend's standard area; `guest` the guest's area as it was (for the bytes a
/// store leaves alone); `rfbm` the requested-feature bitmap; `compacted` the compacted format
/// (XSAVEC/XSAVES) or the standard one.
pub(crate) fn store(
    layout: &XsaveLayout,
    vcpu: &[u8],
    guest: &mut [u8],
    rfbm: u64,
    compacted: bool,
) -> Option<()> {
    let (in_use, _) = header(vcpu);
    let saved = if compacted { rfbm & in_use } else { rfbm };
    if saved & 1 != 0 {
        for (from, to) in x87_ranges() {
            copy(guest, vcpu, from, from, to - from)?;
        }
    }
    if rfbm & 0b110 != 0 {
        copy(guest, vcpu, MXCSR, MXCSR, 8)?;
    }
    if saved & 2 != 0 {
        copy(guest, vcpu, XMM.0, XMM.0, XMM.1 - XMM.0)?;
    }
    let xcomp = rfbm | COMPACTED;
    let (places, _) = layout.placement(saved, compacted.then_some(xcomp));
    for (i, at, size) in places {
        let std = layout.component(i).offset as usize;
        copy(guest, vcpu, std, at, size)?;
    }
    let (old_bv, _) = header(guest);
    if compacted {
        set_u64(guest, HEADER, rfbm & in_use);
        set_u64(guest, HEADER + 8, xcomp);
    } else {
        set_u64(guest, HEADER, (old_bv & !rfbm) | (in_use & rfbm));
    }
    Some(())
}

/// Why a restore raises `#GP(0)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BadHeader;

/// Checks the header of an area a restore loads (SDM 13.8.1, 13.12); `allowed` is XCR0 (or
/// XCR0 | IA32_XSS for XRSTORS). Returns XSTATE_BV and XCOMP_BV.
pub(crate) fn check_header(
    guest: &[u8],
    allowed: u64,
    require_compacted: bool,
) -> Result<(u64, Option<u64>), BadHeader> {
    let (bv, xcomp) = header(guest);
    let rest_zero = guest
        .get(HEADER + 16..HEADER + 64)
        .is_some_and(|r| r.iter().all(|&b| b == 0));
    if xcomp & COMPACTED == 0 {
        if require_compacted || bv & !allowed != 0 || xcomp != 0 || u64_at(guest, HEADER + 16) != 0
        {
            return Err(BadHeader);
        }
        return Ok((bv, None));
    }
    let xcomp = xcomp & !COMPACTED;
    if xcomp & !allowed != 0 || bv & !xcomp != 0 || !rest_zero {
        return Err(BadHeader);
    }
    Ok((bv, Some(xcomp)))
}

/// MXCSR in a standard-format area.
pub(crate) fn mxcsr(area: &[u8]) -> u32 {
    u64_at(area, MXCSR) as u32
}

/// Sets MXCSR in a standard-format area, as `ldmxcsr` and `xrstor` load it: `Err` when `value`
/// has a bit set that MXCSR_MASK (the area's, or the architectural default `0xffbf` when it is
/// zero) does not allow (`#GP(0)`).
pub(crate) fn set_mxcsr(area: &mut [u8], value: u32) -> Result<(), BadHeader> {
    let mask = match u64_at(area, MXCSR) >> 32 {
        0 => 0xffbf,
        m => m as u32,
    };
    if value & !mask != 0 {
        return Err(BadHeader);
    }
    area.get_mut(MXCSR..MXCSR + 4)
        .ok_or(BadHeader)?
        .copy_from_slice(&value.to_le_bytes());
    // MXCSR belongs to the SSE component: with its XSTATE_BV bit clear a backend loads the
    // initial MXCSR instead (the XMM registers of an initial component are zeros either way).
    let bv = u64_at(area, HEADER) | 1 << 1;
    area.get_mut(HEADER..HEADER + 8)
        .ok_or(BadHeader)?
        .copy_from_slice(&bv.to_le_bytes());
    Ok(())
}

/// Loads the guest's area into the backend's standard area: components of `rfbm` with their
/// XSTATE_BV bit set are loaded, the others of `rfbm` initialised. `Err` when MXCSR has
/// reserved bits set (`#GP(0)`).
pub(crate) fn restore(
    layout: &XsaveLayout,
    vcpu: &mut [u8],
    guest: &[u8],
    rfbm: u64,
    bv: u64,
    xcomp: Option<u64>,
) -> Result<(), BadHeader> {
    let load = rfbm & bv;
    let init = rfbm & !bv;
    if rfbm & 0b110 != 0 {
        set_mxcsr(vcpu, u64_at(guest, MXCSR) as u32)?;
    }
    if load & 1 != 0 {
        for (from, to) in x87_ranges() {
            copy(vcpu, guest, from, from, to - from).ok_or(BadHeader)?;
        }
    } else if init & 1 != 0 {
        for (from, to) in x87_ranges() {
            vcpu.get_mut(from..to).ok_or(BadHeader)?.fill(0);
        }
        vcpu.get_mut(0..2)
            .ok_or(BadHeader)?
            .copy_from_slice(&0x37fu16.to_le_bytes());
    }
    if load & 2 != 0 {
        copy(vcpu, guest, XMM.0, XMM.0, XMM.1 - XMM.0).ok_or(BadHeader)?;
    } else if init & 2 != 0 {
        vcpu.get_mut(XMM.0..XMM.1).ok_or(BadHeader)?.fill(0);
    }
    let (places, _) = layout.placement(rfbm, xcomp);
    for (i, at, size) in places {
        let std = layout.component(i).offset as usize;
        if load & (1 << i) != 0 {
            copy(vcpu, guest, at, std, size).ok_or(BadHeader)?;
        } else {
            vcpu.get_mut(std..std + size).ok_or(BadHeader)?.fill(0);
        }
    }
    let (old_bv, _) = header(vcpu);
    set_u64(vcpu, HEADER, (old_bv & !rfbm) | load);
    set_u64(vcpu, HEADER + 8, 0);
    Ok(())
}

/// The length of the guest's area an instruction touches.
pub(crate) fn area_len(layout: &XsaveLayout, rfbm: u64, xcomp: Option<u64>) -> usize {
    layout.placement(rfbm, xcomp).1
}

/// Components 0 and 1 need no layout entry.
pub(crate) fn extended(mask: u64) -> u64 {
    mask & !LEGACY_COMPONENTS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vcpu_area() -> Vec<u8> {
        let mut a = vec![0u8; XSAVE_AREA_SIZE];
        for (i, b) in a.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        a[HEADER..HEADER + 64].fill(0);
        set_u64(&mut a, MXCSR, 0x1f80 | (0xffffu64 << 32));
        set_u64(&mut a, HEADER, 0b111);
        a
    }

    #[test]
    fn compacted_round_trip_restores_the_same_state() {
        let layout = XsaveLayout::default();
        let vcpu = vcpu_area();
        let (_, len) = layout.placement(0b111, Some(0b111));
        assert_eq!(len, 576 + 256);
        let mut guest = vec![0u8; len];
        store(&layout, &vcpu, &mut guest, 0b111, true).unwrap();
        assert_eq!(header(&guest), (0b111, 0b111 | COMPACTED));
        assert_eq!(
            guest[576..832],
            vcpu[576..832],
            "AVX right after the header"
        );
        let (bv, xcomp) = check_header(&guest, 0b111, true).unwrap();
        let mut back = vec![0u8; XSAVE_AREA_SIZE];
        set_u64(&mut back, MXCSR, 0xffffu64 << 32);
        restore(&layout, &mut back, &guest, 0b111, bv, xcomp).unwrap();
        assert_eq!(back[..416], vcpu[..416]);
        assert_eq!(back[576..832], vcpu[576..832]);
        assert_eq!(header(&back), (0b111, 0));
    }

    #[test]
    fn standard_round_trip_and_init() {
        let layout = XsaveLayout::default();
        let vcpu = vcpu_area();
        let mut guest = vec![0xeeu8; 832];
        guest[HEADER..HEADER + 64].fill(0);
        set_u64(&mut guest, HEADER, 1 << 2);
        store(&layout, &vcpu, &mut guest, 0b011, false).unwrap();
        assert_eq!(header(&guest), (0b111, 0), "bit 2 outside RFBM kept");
        assert_eq!(guest[576], 0xee, "AVX not requested: untouched");
        // Restore with AVX marked init: the vCPU's AVX state becomes zero.
        let mut target = vcpu.clone();
        set_u64(&mut guest, HEADER, 0b011);
        let (bv, xcomp) = check_header(&guest, 0b111, false).unwrap();
        restore(&layout, &mut target, &guest, 0b111, bv, xcomp).unwrap();
        assert!(target[576..832].iter().all(|&b| b == 0));
        assert_eq!(header(&target).0, 0b011);
    }

    #[test]
    fn bad_headers() {
        let mut g = vec![0u8; 832];
        set_u64(&mut g, HEADER, 1 << 9);
        assert_eq!(check_header(&g, 0b111, false), Err(BadHeader));
        set_u64(&mut g, HEADER, 0);
        assert_eq!(check_header(&g, 0b111, true), Err(BadHeader), "XRSTORS");
        set_u64(&mut g, HEADER + 8, COMPACTED | 0b1);
        set_u64(&mut g, HEADER, 0b10);
        assert_eq!(check_header(&g, 0b111, true), Err(BadHeader), "BV ⊄ XCOMP");
        set_u64(&mut g, HEADER + 8, COMPACTED | 1 << 9);
        assert_eq!(check_header(&g, 0b111, true), Err(BadHeader));
        set_u64(&mut g, HEADER + 8, COMPACTED | 0b11);
        g[HEADER + 40] = 1;
        assert_eq!(check_header(&g, 0b111, true), Err(BadHeader));
        // MXCSR reserved bits.
        let mut v = vcpu_area();
        set_u64(&mut g, MXCSR, 1 << 20);
        assert_eq!(
            restore(&XsaveLayout::default(), &mut v, &g, 0b10, 0b10, None),
            Err(BadHeader)
        );
    }

    #[test]
    fn layouts() {
        let l = XsaveLayout::default();
        assert_eq!(l.unrepresentable(0b1110_0111), None);
        assert_eq!(l.unrepresentable(1 << 11), Some(11));
        assert_eq!(extended(0b111), 0b100);
        let mut c = [Component::default(); COMPONENTS];
        c[2] = Component {
            offset: 576,
            size: 10,
            align64: false,
        };
        c[3] = Component {
            offset: 600,
            size: 8,
            align64: true,
        };
        let l = XsaveLayout::from_components(c);
        assert_eq!(
            l.placement(0b1100, Some(0b1100)),
            (vec![(2, 576, 10), (3, 640, 8)], 648)
        );
        assert_eq!(area_len(&l, 0b1100, None), 608);
        #[cfg(target_arch = "x86_64")]
        let _ = XsaveLayout::host();
    }
}
