//! Wire types from the NVM Express Base Specification (2.0), kept apart from
//! the code that uses them. Multi-byte fields are little-endian on the wire;
//! the structs keep them private and convert in their accessors.

use blk_dma::Iova;

/// The controller memory page size, `2^(12 + CC.MPS)` bytes (4 KiB to
/// 128 MiB). PRP entries are expressed in these pages.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PageSize(u32);

impl PageSize {
    /// 4 KiB, `CC.MPS = 0`, the size every controller supports.
    pub const DEFAULT: PageSize = PageSize(4096);

    /// The page size for a `CC.MPS` value (0 to 15).
    pub const fn from_mps(mps: u8) -> Option<Self> {
        if mps > 15 {
            None
        } else {
            Some(PageSize(1 << (12 + mps)))
        }
    }

    /// The page size of `bytes`, if it is a valid controller page size.
    pub const fn new(bytes: u32) -> Option<Self> {
        if bytes.is_power_of_two() && bytes >= 4096 && bytes <= 1 << 27 {
            Some(PageSize(bytes))
        } else {
            None
        }
    }

    /// Size in bytes.
    #[inline]
    pub const fn bytes(self) -> u64 {
        self.0 as u64
    }

    /// log2 of the size in bytes (12 for 4 KiB): page counts by shifting.
    #[inline]
    pub const fn shift(self) -> u32 {
        self.0.trailing_zeros()
    }

    /// The `CC.MPS` value.
    pub const fn mps(self) -> u8 {
        (self.0.trailing_zeros() - 12) as u8
    }

    /// PRP entries in one PRP list page (8 bytes each).
    #[inline]
    pub const fn prps_per_page(self) -> usize {
        (self.0 / 8) as usize
    }
}

/// The SGL descriptor type (byte 15, bits 7:4).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum SglType {
    /// Data Block: describes data.
    DataBlock = 0x0,
    /// Bit Bucket: data to discard on reads.
    BitBucket = 0x1,
    /// Segment: points to the next SGL segment, which is not the last.
    Segment = 0x2,
    /// Last Segment: points to the last SGL segment.
    LastSegment = 0x3,
    /// Keyed Data Block (fabrics only).
    KeyedDataBlock = 0x4,
    /// Transport SGL Data Block (fabrics only).
    TransportDataBlock = 0x5,
}

impl SglType {
    /// Decodes a descriptor type.
    pub const fn from_raw(v: u8) -> Option<Self> {
        Some(match v {
            0x0 => SglType::DataBlock,
            0x1 => SglType::BitBucket,
            0x2 => SglType::Segment,
            0x3 => SglType::LastSegment,
            0x4 => SglType::KeyedDataBlock,
            0x5 => SglType::TransportDataBlock,
            _ => return None,
        })
    }
}

/// SGL descriptor subtype "Address" (byte 15, bits 3:0): the address field
/// is a memory address.
pub const SGL_SUBTYPE_ADDRESS: u8 = 0x0;

/// One 16-byte SGL descriptor: address, length, type and subtype.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct SglDescriptor {
    addr: u64,
    len: u32,
    rsvd: [u8; 3],
    id: u8,
}

const _: () = assert!(core::mem::size_of::<SglDescriptor>() == 16);
const _: () = assert!(core::mem::align_of::<SglDescriptor>() == 8);

// `len` is the spec's Length field; a descriptor has no notion of emptiness.
#[allow(clippy::len_without_is_empty)]
impl SglDescriptor {
    /// A descriptor of `ty` with subtype Address.
    #[inline]
    pub const fn new(ty: SglType, addr: Iova, len: u32) -> Self {
        Self {
            addr: addr.raw().to_le(),
            len: len.to_le(),
            rsvd: [0; 3],
            id: (ty as u8) << 4 | SGL_SUBTYPE_ADDRESS,
        }
    }

    /// A Data Block descriptor.
    #[inline]
    pub const fn data(addr: Iova, len: u32) -> Self {
        Self::new(SglType::DataBlock, addr, len)
    }

    /// The address field.
    #[inline]
    pub const fn addr(&self) -> Iova {
        Iova::new(u64::from_le(self.addr))
    }

    /// The length field.
    #[inline]
    pub const fn len(&self) -> u32 {
        u32::from_le(self.len)
    }

    /// The raw type (bits 7:4 of byte 15).
    #[inline]
    pub const fn raw_type(&self) -> u8 {
        self.id >> 4
    }

    /// The decoded type, if it is one the specification defines.
    #[inline]
    pub const fn ty(&self) -> Option<SglType> {
        SglType::from_raw(self.raw_type())
    }

    /// The subtype (bits 3:0 of byte 15).
    #[inline]
    pub const fn subtype(&self) -> u8 {
        self.id & 0xf
    }

    /// The descriptor as it sits in memory.
    #[inline]
    pub const fn to_bytes(self) -> [u8; 16] {
        let a = u64::from_le(self.addr).to_le_bytes();
        let l = u32::from_le(self.len).to_le_bytes();
        [
            a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], l[0], l[1], l[2], l[3], 0, 0, 0,
            self.id,
        ]
    }

    /// Decodes a descriptor from memory.
    #[inline]
    pub fn from_bytes(b: [u8; 16]) -> Self {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[0..8]);
        let mut l = [0u8; 4];
        l.copy_from_slice(&b[8..12]);
        Self {
            addr: u64::from_le_bytes(a).to_le(),
            len: u32::from_le_bytes(l).to_le(),
            rsvd: [b[12], b[13], b[14]],
            id: b[15],
        }
    }

    /// The two little-endian quadwords as they sit in a command's DPTR field.
    #[inline]
    pub const fn to_qwords(self) -> [u64; 2] {
        [
            u64::from_le(self.addr),
            u32::from_le(self.len) as u64 | (self.id as u64) << 56,
        ]
    }
}

impl core::fmt::Debug for SglDescriptor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SglDescriptor")
            .field("type", &self.ty())
            .field("addr", &self.addr())
            .field("len", &format_args!("{:#x}", self.len()))
            .finish()
    }
}

/// PRP or SGL for data transfer: command dword 0, bits 15:14 (PSDT).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum Psdt {
    /// PRPs are used for this transfer.
    Prp = 0b00,
    /// SGLs are used; the metadata pointer is a contiguous buffer.
    SglMptrContiguous = 0b01,
    /// SGLs are used; the metadata pointer addresses an SGL segment.
    SglMptrSgl = 0b10,
}

/// A command's data pointer (DPTR, command dwords 6 to 9).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum DataPtr {
    /// PRP Entry 1 and PRP Entry 2 (data or a PRP list pointer; zero when
    /// unused).
    Prp {
        /// PRP Entry 1: the first data byte; may have a dword-aligned offset.
        prp1: Iova,
        /// PRP Entry 2.
        prp2: Iova,
    },
    /// SGL Entry 1: an inline Data Block, or a (Last) Segment descriptor.
    Sgl(SglDescriptor),
}

impl DataPtr {
    /// The PSDT value the command must carry with this pointer.
    pub const fn psdt(&self) -> Psdt {
        match self {
            DataPtr::Prp { .. } => Psdt::Prp,
            DataPtr::Sgl(_) => Psdt::SglMptrContiguous,
        }
    }

    /// The DPTR field as two little-endian quadwords (dwords 6-7 and 8-9).
    pub const fn to_qwords(&self) -> [u64; 2] {
        match self {
            DataPtr::Prp { prp1, prp2 } => [prp1.raw(), prp2.raw()],
            DataPtr::Sgl(d) => d.to_qwords(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_encodings() {
        assert_eq!(PageSize::from_mps(0), Some(PageSize::DEFAULT));
        assert_eq!(PageSize::from_mps(4).unwrap().bytes(), 65536);
        assert_eq!(PageSize::from_mps(16), None);
        assert_eq!(PageSize::new(16384).unwrap().mps(), 2);
        assert_eq!(PageSize::new(16384).unwrap().shift(), 14);
        assert_eq!(PageSize::DEFAULT.shift(), 12);
        assert_eq!(PageSize::new(6000), None);
        assert_eq!(PageSize::new(2048), None);
        assert_eq!(PageSize::DEFAULT.prps_per_page(), 512);
    }

    #[test]
    fn sgl_descriptor_layout_matches_the_spec() {
        let d = SglDescriptor::new(SglType::LastSegment, Iova::new(0x1122_3344_5566_7788), 0x30);
        let b = d.to_bytes();
        assert_eq!(&b[0..8], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[8..12], &0x30u32.to_le_bytes());
        assert_eq!(&b[12..15], &[0, 0, 0]);
        assert_eq!(b[15], 0x30);
        assert_eq!(SglDescriptor::from_bytes(b), d);
        assert_eq!(d.ty(), Some(SglType::LastSegment));
        assert_eq!(d.to_qwords(), [0x1122_3344_5566_7788, 0x30 | 0x30 << 56]);
        // The in-memory representation is the wire format.
        // SAFETY: SglDescriptor is repr(C), 16 bytes, no padding (checked above).
        let raw: [u8; 16] = unsafe { core::mem::transmute(d) };
        assert_eq!(raw, b);
    }
}
