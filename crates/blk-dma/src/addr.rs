//! Address and segment types.
//!
//! Device-visible addresses ([`Iova`]) and host virtual addresses
//! ([`HostAddr`]) are distinct types, so a host pointer cannot end up in a
//! PRP entry or SGL descriptor by accident.

use core::fmt;

/// An address as the device sees it: an I/O virtual address when an IOMMU
/// translates device accesses, a bus address for device memory (a CMB or a
/// peer BAR), or a physical address when there is no IOMMU.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Iova(u64);

impl Iova {
    /// Wraps a raw device address.
    #[inline]
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw value, as written into a PRP entry or SGL descriptor.
    #[inline]
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// `self + off`, or `None` on overflow.
    #[inline]
    pub const fn checked_add(self, off: u64) -> Option<Self> {
        match self.0.checked_add(off) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// `self + off`, wrapping; for hot paths where the caller has already
    /// bounded `off` by a mapped length.
    #[inline]
    pub const fn wrapping_add(self, off: u64) -> Self {
        Self(self.0.wrapping_add(off))
    }

    /// The offset of this address within an `align`-sized block
    /// (`align` is a power of two).
    #[inline]
    pub const fn offset_in(self, align: u64) -> u64 {
        self.0 & (align - 1)
    }

    /// Rounds down to a multiple of `align` (a power of two).
    #[inline]
    pub const fn align_down(self, align: u64) -> Self {
        Self(self.0 & !(align - 1))
    }
}

impl fmt::Debug for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Iova({:#x})", self.0)
    }
}

impl fmt::Display for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A host virtual address, as a number.
///
/// Holding a `HostAddr` grants no access to the memory behind it: blk-dma
/// never dereferences one. Only a [`Mapper`](crate::Mapper) turns it into a
/// device mapping, under the rules of [`DmaIter::start`](crate::DmaIter::start).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct HostAddr(usize);

impl HostAddr {
    /// Wraps a raw address.
    #[inline]
    pub const fn new(raw: usize) -> Self {
        Self(raw)
    }

    /// The address of a pointer.
    #[inline]
    pub fn from_ptr<T>(ptr: *const T) -> Self {
        Self(ptr as usize)
    }

    /// The raw value.
    #[inline]
    pub const fn raw(self) -> usize {
        self.0
    }

    /// The raw value widened to 64 bits, for arithmetic with lengths.
    #[inline]
    pub const fn raw_u64(self) -> u64 {
        self.0 as u64
    }

    /// `self + off`, or `None` on overflow.
    #[inline]
    pub fn checked_add(self, off: u64) -> Option<Self> {
        let off = usize::try_from(off).ok()?;
        self.0.checked_add(off).map(Self)
    }

    /// The offset of this address within an `align`-sized block
    /// (`align` is a power of two).
    #[inline]
    pub const fn offset_in(self, align: u64) -> u64 {
        (self.0 as u64) & (align - 1)
    }
}

impl fmt::Debug for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostAddr({:#x})", self.0)
    }
}

/// One contiguous piece of a request's host buffer: the analog of the
/// kernel's `bio_vec`. Laid out as two 64-bit words, address then length,
/// so that a segment loads as one 16-byte vector.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(C)]
pub struct HostSeg {
    /// Start address.
    pub addr: HostAddr,
    /// Length in bytes.
    pub len: u64,
}

impl HostSeg {
    /// A segment of `len` bytes at `addr`.
    #[inline]
    pub const fn new(addr: HostAddr, len: u64) -> Self {
        Self { addr, len }
    }

    /// The segment covering a byte slice. Only the address and length are
    /// taken: the caller stays responsible for keeping the memory alive and
    /// unaliased for as long as it is mapped.
    #[inline]
    pub fn from_slice(buf: &[u8]) -> Self {
        Self::new(HostAddr::from_ptr(buf.as_ptr()), buf.len() as u64)
    }

    /// The segment covering a byte slice the device writes (the
    /// destination of a read). As [`from_slice`](Self::from_slice), but the
    /// address comes from a mutable borrow: under Rust's aliasing rules,
    /// memory whose address was taken from a shared borrow must not be
    /// written through it, by the device either.
    #[inline]
    pub fn from_mut_slice(buf: &mut [u8]) -> Self {
        Self::new(HostAddr::from_ptr(buf.as_mut_ptr()), buf.len() as u64)
    }

    /// One past the last byte, or `None` if that overflows the address space.
    #[inline]
    pub fn end(&self) -> Option<HostAddr> {
        self.addr.checked_add(self.len)
    }
}

/// A device-visible address range: what a PRP or SGL builder consumes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct DmaRange {
    /// Device address of the first byte.
    pub addr: Iova,
    /// Length in bytes.
    pub len: u64,
}

impl DmaRange {
    /// A range of `len` bytes at `addr`.
    #[inline]
    pub const fn new(addr: Iova, len: u64) -> Self {
        Self { addr, len }
    }

    /// One past the last byte (wrapping; ranges produced by a mapper do not
    /// wrap).
    #[inline]
    pub const fn end(&self) -> Iova {
        self.addr.wrapping_add(self.len)
    }
}

/// Direction of a transfer, seen from the host.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Direction {
    /// Host memory is read by the device (a write command). Mappers map it
    /// read-only for the device where the hardware allows.
    ToDevice,
    /// Host memory is written by the device (a read command).
    FromDevice,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iova_arithmetic() {
        let a = Iova::new(0x1234);
        assert_eq!(a.offset_in(0x1000), 0x234);
        assert_eq!(a.align_down(0x1000), Iova::new(0x1000));
        assert_eq!(a.checked_add(0x10), Some(Iova::new(0x1244)));
        assert_eq!(Iova::new(u64::MAX).checked_add(1), None);
        assert_eq!(format!("{a:?}"), "Iova(0x1234)");
    }

    #[test]
    fn host_seg_end() {
        let s = HostSeg::new(HostAddr::new(usize::MAX - 1), 1);
        assert_eq!(s.end(), Some(HostAddr::new(usize::MAX)));
        let s = HostSeg::new(HostAddr::new(usize::MAX), 1);
        assert_eq!(s.end(), None);
        let buf = [0u8; 7];
        let s = HostSeg::from_slice(&buf);
        assert_eq!(s.len, 7);
        assert_eq!(s.addr.raw(), buf.as_ptr() as usize);
        let mut buf = [0u8; 9];
        let s = HostSeg::from_mut_slice(&mut buf);
        assert_eq!(s.len, 9);
        assert_eq!(s.addr.raw(), buf.as_ptr() as usize);
    }
}
