//! Block metadata and end-to-end protection information, as QEMU's
//! controller (7.2, `hw/nvme/dif.c`) handles them.
//!
//! Each block's metadata is stored with it. A command moves it with the
//! data: after each block's data in the data buffer on a namespace with
//! extended LBAs, else in one contiguous buffer at the metadata pointer
//! (MPTR, dword aligned; an MPTR that points at an SGL, PSDT 10b, is
//! Invalid Field, as SGLS does not claim metadata SGLs).
//!
//! On a namespace formatted with protection information, PRINFO (CDW12
//! bits 29:26) says what the controller does with the PI tuple in each
//! block's metadata:
//!
//! - PRACT: on writes the controller generates the tuples (guard over the
//!   data and the metadata bytes before the tuple, the command's
//!   application tag, reference tags counting from the command's for
//!   types 1 and 2); on reads it strips them. When the metadata is the
//!   tuple alone, no metadata moves at all; else the rest of it moves as
//!   without PRACT.
//! - PRCHK (guard, application tag under its mask, reference tag): the
//!   fields the controller checks in the tuples the host sends (writes
//!   without PRACT) or that are stored (reads, compares, verifies), with
//!   End-to-end Guard, Application Tag or Reference Tag Check Error
//!   (status code type 2h, 82h to 84h, as QEMU without DNR) at the first
//!   block that fails, nothing written. Tuples with the escape values
//!   (application tag FFFFh, and for type 3 an all-ones reference tag too)
//!   are not checked; blocks never written have all-FFh metadata, so they
//!   escape.
//! - Type 1 with the reference tag check: the command's reference tag must
//!   be its starting LBA (32 or 48 bits of it), else Invalid Protection
//!   Information. Type 3 has no reference tag to check.
//!
//! A namespace without protection information ignores PRINFO.

use blk_dma::{DmaRange, Iova};
use nvme_vfio::nvme::cmd::{Command, Status};
use nvme_vfio::nvme::pi::{BlockFormat, Checks, PiType, Tags};

use super::{invalid, sc, Device, DATA_TRANSFER_ERROR};
use crate::storage::Namespace;

/// Invalid Protection Information (NVM command set specific status 81h).
pub(super) const INVALID_PROTECTION_INFORMATION: Status = Status::new(1, 0x81, true);

/// What a command asks of a namespace's metadata and protection
/// information.
#[derive(Clone, Copy, Debug)]
pub(super) struct Protection {
    /// The namespace's format now.
    pub(super) format: BlockFormat,
    /// PRACT (always off without protection information).
    pub(super) pract: bool,
    /// PRCHK (none without protection information).
    pub(super) checks: Checks,
    /// The command's reference tag (32 or 48 bits of it) and application
    /// tag and mask.
    pub(super) tags: Tags,
}

impl Protection {
    /// The protection settings of `cmd` on `ns`, whose reference tag, for
    /// type 1 with its check, must be `lba` (the command's first block,
    /// or the zone start of a Zone Append).
    pub(super) fn of(cmd: &Command, ns: &Namespace, lba: u64) -> Result<Self, Status> {
        let format = ns.format();
        let Some(pi) = format.pi else {
            return Ok(Self::plain(format));
        };
        let prinfo = cmd.prinfo();
        let checks = Checks::from_prchk(prinfo & 0x7);
        let (app, app_mask) = cmd.app_tag();
        let mask = pi.guard.ref_mask();
        let reference = cmd.reference_tag() & mask;
        if pi.kind == PiType::Type1 && checks.reference && lba & mask != reference {
            return Err(INVALID_PROTECTION_INFORMATION);
        }
        Ok(Self {
            format,
            pract: prinfo & 0x8 != 0,
            checks,
            tags: Tags {
                reference,
                app,
                app_mask,
            },
        })
    }

    /// No protection information asked for: the metadata moves as it is
    /// (Copy).
    pub(super) fn plain(format: BlockFormat) -> Self {
        Self {
            format,
            pract: false,
            checks: Checks::NONE,
            tags: Tags::default(),
        }
    }

    /// Bytes the data pointer describes for `n` blocks (what MDTS limits).
    pub(super) fn data_len(&self, n: u64) -> u64 {
        n * self.format.data_stride(self.pract)
    }

    /// Bytes the metadata pointer describes for `n` blocks.
    pub(super) fn meta_len(&self, n: u64) -> u64 {
        n * self.format.metadata_stride(self.pract)
    }

    /// Whether the metadata moves interleaved with the data.
    fn interleaved(&self) -> bool {
        self.format.data_stride(self.pract) > u64::from(self.format.data)
    }

    /// The layout of the store: data and metadata apart.
    fn stored(&self) -> BlockFormat {
        BlockFormat {
            extended: false,
            ..self.format
        }
    }

    /// The host's bytes of `n` blocks (data buffer, metadata buffer) in
    /// the store's layout: `n` blocks of data, `n` blocks of metadata
    /// (zeroes where none moved).
    pub(super) fn to_store(&self, host: Vec<u8>, host_meta: Vec<u8>, n: u64) -> (Vec<u8>, Vec<u8>) {
        let (bs, ms) = (self.format.data as usize, self.format.metadata as usize);
        let n = n as usize;
        if self.interleaved() {
            let mut data = Vec::with_capacity(n * bs);
            let mut meta = Vec::with_capacity(n * ms);
            for b in host.chunks_exact(bs + ms) {
                data.extend_from_slice(&b[..bs]);
                meta.extend_from_slice(&b[bs..]);
            }
            (data, meta)
        } else if self.meta_len(1) > 0 {
            (host, host_meta)
        } else {
            (host, vec![0; n * ms])
        }
    }

    /// Stored blocks in the host's layout: the data buffer's bytes and the
    /// metadata buffer's (empty if none moves).
    pub(super) fn to_host(&self, data: Vec<u8>, meta: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
        let (bs, ms) = (self.format.data as usize, self.format.metadata as usize);
        if self.interleaved() {
            let mut host = Vec::with_capacity(data.len() + meta.len());
            for (d, m) in data.chunks_exact(bs).zip(meta.chunks_exact(ms)) {
                host.extend_from_slice(d);
                host.extend_from_slice(m);
            }
            (host, Vec::new())
        } else if self.meta_len(1) > 0 {
            (data, meta)
        } else {
            (data, Vec::new())
        }
    }

    /// Checks the tuples of blocks in the store's layout for the PRCHK
    /// fields: `Err` with the failed block's index and status.
    pub(super) fn check(&self, data: &[u8], meta: &[u8]) -> Result<(), (u64, Status)> {
        if self.format.pi.is_none() || self.checks == Checks::NONE {
            return Ok(());
        }
        match self.stored().verify(data, meta, self.checks, self.tags) {
            Ok(None) => Ok(()),
            Ok(Some(m)) => Err((m.block, Status::new(2, m.field.status_code(), false))),
            // Not whole blocks: the callers never ask that.
            Err(_) => Err((0, invalid(sc::INVALID_FIELD))),
        }
    }

    /// What a write does with the tuples of blocks in the store's layout:
    /// generates them with PRACT, else checks them.
    pub(super) fn protect_write(
        &self,
        data: &mut [u8],
        meta: &mut [u8],
    ) -> Result<(), (u64, Status)> {
        if self.format.pi.is_none() {
            return Ok(());
        }
        if self.pract {
            // Whole blocks with protection information: cannot fail.
            let _ = self.stored().generate(data, meta, self.tags);
            return Ok(());
        }
        self.check(data, meta)
    }
}

impl Device {
    /// The host memory of `cmd`'s metadata pointer for `len` bytes (none
    /// on a namespace without separate metadata).
    pub(super) fn meta_ranges(
        &self,
        cmd: &Command,
        p: &Protection,
        len: u64,
    ) -> Result<Vec<DmaRange>, Status> {
        if p.format.metadata == 0 || p.format.extended {
            return Ok(Vec::new());
        }
        // MPTR pointing at an SGL (SGLS bit 19 is not claimed), or not
        // dword aligned.
        if cmd.psdt() == 2 || (len > 0 && cmd.mptr % 4 != 0) {
            return Err(invalid(sc::INVALID_FIELD));
        }
        Ok(match len {
            0 => Vec::new(),
            len => vec![DmaRange::new(Iova::new(cmd.mptr), len)],
        })
    }

    /// The host's data and metadata of `n` blocks (a write's, a
    /// compare's), in the store's layout.
    pub(super) fn take_blocks(
        &self,
        cmd: &Command,
        p: &Protection,
        n: u64,
    ) -> Result<(Vec<u8>, Vec<u8>), Status> {
        let ranges = self.ranges(cmd, p.data_len(n), true)?;
        let meta_ranges = self.meta_ranges(cmd, p, p.meta_len(n))?;
        let mut host = vec![0u8; p.data_len(n) as usize];
        let mut host_meta = vec![0u8; p.meta_len(n) as usize];
        let iommu = &self.sh.iommu;
        if !iommu.read_ranges(&ranges, &mut host)
            || !iommu.read_ranges(&meta_ranges, &mut host_meta)
        {
            return Err(DATA_TRANSFER_ERROR);
        }
        Ok(p.to_store(host, host_meta, n))
    }

    /// [`Protection::check`] of blocks from `lba`, the failed one's LBA
    /// logged.
    pub(super) fn check_tuples(
        &self,
        p: &Protection,
        lba: u64,
        data: &[u8],
        meta: &[u8],
    ) -> Result<(), Status> {
        p.check(data, meta).map_err(|(i, s)| {
            self.media_lba.set(Some(lba + i));
            s
        })
    }

    /// [`Protection::protect_write`] of blocks from `lba`, the failed
    /// one's LBA logged.
    pub(super) fn protect_write(
        &self,
        p: &Protection,
        lba: u64,
        data: &mut [u8],
        meta: &mut [u8],
    ) -> Result<(), Status> {
        p.protect_write(data, meta).map_err(|(i, s)| {
            self.media_lba.set(Some(lba + i));
            s
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_vfio::nvme::pi::{Guard, PiFormat};

    fn prot(extended: bool, metadata: u16, pract: bool) -> Protection {
        Protection {
            format: BlockFormat {
                data: 512,
                metadata,
                extended,
                pi: Some(PiFormat {
                    kind: PiType::Type1,
                    guard: Guard::Crc16,
                    first: false,
                }),
            },
            pract,
            checks: Checks::ALL,
            tags: Tags {
                reference: 7,
                app: 1,
                app_mask: 0xffff,
            },
        }
    }

    #[test]
    fn layouts_convert_both_ways() {
        for (ext, ms, pract) in [
            (true, 16, false),
            (true, 16, true),
            (true, 8, true),
            (false, 8, false),
            (false, 8, true),
        ] {
            let p = prot(ext, ms, pract);
            let host: Vec<u8> = (0..p.data_len(3)).map(|i| i as u8).collect();
            let host_meta: Vec<u8> = (0..p.meta_len(3)).map(|i| !(i as u8)).collect();
            let (data, meta) = p.to_store(host.clone(), host_meta.clone(), 3);
            assert_eq!((data.len(), meta.len()), (3 * 512, 3 * ms as usize));
            assert_eq!(
                p.to_host(data, meta),
                (host, host_meta),
                "{ext} {ms} {pract}"
            );
        }
    }

    #[test]
    fn writes_generate_with_pract_and_check_without() {
        let p = prot(false, 16, true);
        let mut data = vec![3u8; 1024];
        let mut meta = vec![9u8; 32];
        p.protect_write(&mut data, &mut meta).unwrap();
        assert_eq!(&meta[..8], &[9; 8], "the bytes before the tuple are kept");
        let checked = Protection { pract: false, ..p };
        assert_eq!(checked.check(&data, &meta), Ok(()));
        meta[16] ^= 1;
        let e = checked.protect_write(&mut data, &mut meta).unwrap_err();
        assert_eq!((e.0, e.1.sct(), e.1.sc()), (1, 2, 0x82));
    }
}
