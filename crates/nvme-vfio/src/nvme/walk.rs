//! The device side of a data pointer: reads PRPs and SGLs back into the
//! ranges they describe, as strictly as a controller must.
//!
//! Used by tests (a built data pointer must describe exactly the request's
//! bytes) and by the software controller. Every malformed case is an error
//! carrying the NVMe generic command status a controller reports for it.

use blk_dma::{DmaRange, Iova};

use super::spec::{PageSize, SglDescriptor, SglType, SGL_SUBTYPE_ADDRESS};

/// Reads of device-visible memory, as the device performs them (through the
/// IOMMU, if any).
pub trait DeviceMemory {
    /// Fills `buf` from device address `iova`; `false` if any byte of it is
    /// not readable by the device.
    fn read(&self, iova: Iova, buf: &mut [u8]) -> bool;
}

/// Why a data pointer is invalid, as a controller reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WalkError {
    /// A PRP entry other than PRP1 has a non-zero page offset, PRP1's offset
    /// is not dword aligned, or a PRP list pointer is misaligned.
    #[error("invalid PRP offset at {addr}")]
    InvalidPrpOffset {
        /// The offending entry.
        addr: Iova,
    },
    /// A segment descriptor is malformed (zero or non-multiple-of-16
    /// length, or a segment pointer where none may be).
    #[error("invalid SGL segment descriptor {desc:?}")]
    InvalidSglSegment {
        /// The offending descriptor.
        desc: SglDescriptor,
    },
    /// The SGL describes fewer or more bytes than the command transfers.
    #[error("SGL describes {sgl:#x} bytes, the command transfers {xfer:#x}")]
    SglLengthMismatch {
        /// Bytes described.
        sgl: u64,
        /// Bytes transferred.
        xfer: u64,
    },
    /// A descriptor has a type or subtype this controller does not support.
    #[error("SGL descriptor type invalid: {desc:?}")]
    SglTypeInvalid {
        /// The offending descriptor.
        desc: SglDescriptor,
    },
    /// The device could not read a list page or segment (an IOMMU fault).
    #[error("device read of {len:#x} bytes at {addr} failed")]
    DataTransfer {
        /// Address of the failed read.
        addr: Iova,
        /// Its length.
        len: u64,
    },
    /// The list is longer than any transfer this walk allows (a loop).
    #[error("descriptor list longer than the transfer allows")]
    TooLong,
}

impl WalkError {
    /// The generic command status code (status code type 0) a controller
    /// returns for this error.
    pub const fn status_code(&self) -> u8 {
        match self {
            WalkError::InvalidPrpOffset { .. } => 0x13,
            WalkError::InvalidSglSegment { .. } => 0x0d,
            WalkError::SglLengthMismatch { .. } => 0x0f,
            WalkError::SglTypeInvalid { .. } => 0x11,
            WalkError::DataTransfer { .. } => 0x04,
            WalkError::TooLong => 0x0e,
        }
    }
}

/// Appends `r` to `out`, merging it into the last range when adjacent.
fn push(out: &mut Vec<DmaRange>, r: DmaRange) {
    if r.len == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.end() == r.addr {
            last.len += r.len;
            return;
        }
    }
    out.push(r);
}

fn read_u64<M: DeviceMemory + ?Sized>(mem: &M, addr: Iova) -> Result<u64, WalkError> {
    let mut b = [0u8; 8];
    if !mem.read(addr, &mut b) {
        return Err(WalkError::DataTransfer { addr, len: 8 });
    }
    Ok(u64::from_le_bytes(b))
}

/// The ranges described by PRP1/PRP2 for a transfer of `len` bytes with
/// controller page size `page`, adjacent ranges merged.
pub fn walk_prp<M: DeviceMemory + ?Sized>(
    prp1: Iova,
    prp2: Iova,
    len: u64,
    page: PageSize,
    mem: &M,
) -> Result<Vec<DmaRange>, WalkError> {
    let ps = page.bytes();
    let mut out = Vec::new();
    if prp1.raw() & 3 != 0 {
        return Err(WalkError::InvalidPrpOffset { addr: prp1 });
    }
    let first = len.min(ps - prp1.offset_in(ps));
    push(&mut out, DmaRange::new(prp1, first));
    let mut left = len - first;
    if left == 0 {
        return Ok(out);
    }
    let data_entry = |e: u64| {
        let a = Iova::new(e);
        if a.offset_in(ps) != 0 {
            Err(WalkError::InvalidPrpOffset { addr: a })
        } else {
            Ok(a)
        }
    };
    if left <= ps {
        push(&mut out, DmaRange::new(data_entry(prp2.raw())?, left));
        return Ok(out);
    }
    // PRP2 is a list pointer: quadword aligned, may start inside a page.
    if prp2.raw() & 7 != 0 {
        return Err(WalkError::InvalidPrpOffset { addr: prp2 });
    }
    let mut slot = prp2;
    loop {
        let last_slot = slot.offset_in(ps) == ps - 8;
        let e = read_u64(mem, slot)?;
        if last_slot && left > ps {
            // The last entry of a list page chains to the next list page.
            let next = Iova::new(e);
            if next.offset_in(ps) != 0 {
                return Err(WalkError::InvalidPrpOffset { addr: next });
            }
            slot = next;
            continue;
        }
        let n = left.min(ps);
        push(&mut out, DmaRange::new(data_entry(e)?, n));
        left -= n;
        if left == 0 {
            return Ok(out);
        }
        slot = slot.wrapping_add(8);
    }
}

/// One piece of a transfer an SGL describes, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SglPiece {
    /// Bytes moved to or from host memory (adjacent ones merged).
    Data(DmaRange),
    /// Bytes a Bit Bucket descriptor discards (a read's data not moved).
    Discard(u64),
}

/// The ranges described by SGL Entry 1 for a transfer of `len` bytes,
/// adjacent ranges merged. Data Block descriptors with subtype Address are
/// the only data descriptors accepted (no Bit Bucket, no keyed types).
pub fn walk_sgl<M: DeviceMemory + ?Sized>(
    sgl1: SglDescriptor,
    len: u64,
    mem: &M,
) -> Result<Vec<DmaRange>, WalkError> {
    let mut out = Vec::new();
    walk_sgl_with(sgl1, len, mem, false, &mut |p| {
        if let SglPiece::Data(r) = p {
            push(&mut out, r);
        }
    })?;
    Ok(out)
}

/// [`walk_sgl`] for a controller that supports Bit Bucket descriptors
/// (Identify SGLS bit 16): a Bit Bucket (subtype Address) is accepted
/// wherever a Data Block is, and its bytes come back as
/// [`SglPiece::Discard`]; they count towards the transfer's length.
pub fn walk_sgl_bit_bucket<M: DeviceMemory + ?Sized>(
    sgl1: SglDescriptor,
    len: u64,
    mem: &M,
) -> Result<Vec<SglPiece>, WalkError> {
    let mut out: Vec<SglPiece> = Vec::new();
    walk_sgl_with(sgl1, len, mem, true, &mut |p| match (out.last_mut(), p) {
        (Some(SglPiece::Data(last)), SglPiece::Data(r)) if last.end() == r.addr => {
            last.len += r.len
        }
        (Some(SglPiece::Discard(n)), SglPiece::Discard(m)) => *n += m,
        _ => out.push(p),
    })?;
    Ok(out)
}

/// Walks an SGL, handing each data descriptor's piece (non-empty) to
/// `piece` in order; Bit Buckets are accepted if `bit_bucket`.
fn walk_sgl_with<M: DeviceMemory + ?Sized>(
    sgl1: SglDescriptor,
    len: u64,
    mem: &M,
    bit_bucket: bool,
    piece: &mut dyn FnMut(SglPiece),
) -> Result<(), WalkError> {
    let mut total = 0u64;
    let mut data = |d: SglDescriptor| -> Result<(), WalkError> {
        let p = match d.ty() {
            Some(SglType::DataBlock) => SglPiece::Data(DmaRange::new(d.addr(), u64::from(d.len()))),
            Some(SglType::BitBucket) if bit_bucket => SglPiece::Discard(u64::from(d.len())),
            _ => return Err(WalkError::SglTypeInvalid { desc: d }),
        };
        if d.subtype() != SGL_SUBTYPE_ADDRESS {
            return Err(WalkError::SglTypeInvalid { desc: d });
        }
        total += u64::from(d.len());
        if total > len {
            return Err(WalkError::SglLengthMismatch {
                sgl: total,
                xfer: len,
            });
        }
        if d.len() != 0 {
            piece(p);
        }
        Ok(())
    };
    let mut ptr = match sgl1.ty() {
        Some(SglType::DataBlock) => {
            data(sgl1)?;
            None
        }
        Some(SglType::BitBucket) if bit_bucket => {
            data(sgl1)?;
            None
        }
        Some(SglType::Segment | SglType::LastSegment) => Some(sgl1),
        _ => return Err(WalkError::SglTypeInvalid { desc: sgl1 }),
    };
    // A segment holds at least one data descriptor, so more segments than
    // bytes means a loop.
    let mut budget = len + 1;
    while let Some(seg) = ptr.take() {
        budget = budget.checked_sub(1).ok_or(WalkError::TooLong)?;
        if seg.subtype() != SGL_SUBTYPE_ADDRESS {
            return Err(WalkError::SglTypeInvalid { desc: seg });
        }
        let n = seg.len() as usize / 16;
        if seg.len() == 0 || seg.len() % 16 != 0 {
            return Err(WalkError::InvalidSglSegment { desc: seg });
        }
        let last_seg = seg.ty() == Some(SglType::LastSegment);
        for i in 0..n {
            let at = seg.addr().wrapping_add(16 * i as u64);
            let mut b = [0u8; 16];
            if !mem.read(at, &mut b) {
                return Err(WalkError::DataTransfer { addr: at, len: 16 });
            }
            let d = SglDescriptor::from_bytes(b);
            match d.ty() {
                Some(SglType::Segment | SglType::LastSegment) => {
                    // Only the last descriptor of a non-last segment may
                    // point onwards.
                    if last_seg || i + 1 != n {
                        return Err(WalkError::InvalidSglSegment { desc: d });
                    }
                    ptr = Some(d);
                }
                _ => data(d)?,
            }
        }
        if !last_seg && ptr.is_none() {
            // A Segment must end in a pointer to the next segment.
            return Err(WalkError::InvalidSglSegment { desc: seg });
        }
    }
    if total != len {
        return Err(WalkError::SglLengthMismatch {
            sgl: total,
            xfer: len,
        });
    }
    Ok(())
}
