//! Reads, writes and compares on namespaces formatted with metadata, and
//! their end-to-end protection.
//!
//! Each block's metadata follows its data in the data buffer (extended
//! LBAs) or goes in a separate buffer, which the controller reaches
//! through each command's metadata pointer (MPTR): DMA memory, one
//! contiguous range, so a request split into several commands points each
//! at its own part. The transfer size limit counts interleaved metadata,
//! so requests on extended LBAs split at fewer blocks per command.
//!
//! With protection information, each command carries PRINFO (PRACT and
//! the PRCHK bits), its initial reference tag (the request's, plus the
//! blocks before the command for types 1 and 2) and the expected
//! application tag and mask. With [`PiAction::Driver`] the driver writes
//! the tuples before a write goes out and checks them when a read
//! completes, as Linux's block integrity layer does.

use blk_dma::HostSeg;

use super::inflight::Tag;
use super::io::{Io, IoBuf, Op, PiAction, Protection};
use super::{Namespace, QueuePair};
use crate::mem::DmaBuf;
use crate::nvme::cmd::Command;
use crate::nvme::pi::{BlockFormat, Checks, PiType, Tags};
use crate::Error;

/// How each command of a request with metadata is completed: its data
/// bytes per block, its metadata pointer and its protection fields.
#[derive(Clone, Copy, Debug)]
pub(super) struct MetaPlan {
    /// Bytes per block in the data buffer.
    pub(super) stride: u64,
    /// The metadata buffer's IOVA and its bytes per block.
    mptr: Option<(u64, u64)>,
    /// PRACT and PRCHK, for a namespace with protection information.
    prinfo: Option<(bool, u8)>,
    /// The first block's reference tag.
    reference: u64,
    /// Whether the reference tag counts up per block (types 1 and 2).
    counts: bool,
    ref_mask: u64,
    app: u16,
    app_mask: u16,
}

impl MetaPlan {
    /// Sets the metadata pointer and protection fields of the command
    /// that starts `block` blocks into the request.
    pub(super) fn apply(&self, cmd: &mut Command, block: u64) {
        if let Some((iova, stride)) = self.mptr {
            cmd.mptr = iova + block * stride;
        }
        if let Some((pract, prchk)) = self.prinfo {
            let reference = match self.counts {
                true => self.reference.wrapping_add(block),
                false => self.reference,
            };
            cmd.set_protection(
                pract,
                prchk,
                reference & self.ref_mask,
                self.app,
                self.app_mask,
            );
        }
    }

    /// The plan of the part of the request that starts `block` blocks in,
    /// with its metadata at `mptr` (a bounce buffer's).
    fn part(&self, block: u64, mptr: Option<u64>) -> MetaPlan {
        let mut p = *self;
        if self.counts {
            p.reference = self.reference.wrapping_add(block);
        }
        p.mptr = match (self.mptr, mptr) {
            (Some((_, stride)), Some(iova)) => Some((iova, stride)),
            (m, _) => m,
        };
        p
    }
}

/// A request's metadata buffer and the driver's checks of its data, kept
/// while it is in flight and looked at when it completes.
#[derive(Debug)]
pub(super) struct MetaReq {
    /// The metadata buffer, handed back in [`Done::meta`](super::Done::meta).
    pub(super) buf: Option<DmaBuf>,
    verify: Option<Verify>,
}

/// The driver's checks of a read's protection information.
#[derive(Clone, Copy, Debug)]
struct Verify {
    format: BlockFormat,
    checks: Checks,
    tags: Tags,
    lba: u64,
    /// Bytes of the data and metadata buffers the request moved.
    len: usize,
    meta_len: usize,
}

impl MetaReq {
    /// The driver's checks of the completed request's data in `data`.
    pub(super) fn check(&self, what: &'static str, data: &IoBuf) -> Result<(), Error> {
        let Some(v) = self.verify else {
            return Ok(());
        };
        let data = data.as_slice().get(..v.len).unwrap_or(&[]);
        let meta = match &self.buf {
            Some(b) => b.as_slice().get(..v.meta_len).unwrap_or(&[]),
            None => &[],
        };
        verify(what, &v.format, data, meta, v.checks, v.tags, v.lba)
    }
}

/// Checks `data` and `meta` (of blocks from `lba`) as `format` lays them
/// out.
fn verify(
    what: &'static str,
    format: &BlockFormat,
    data: &[u8],
    meta: &[u8],
    checks: Checks,
    tags: Tags,
    lba: u64,
) -> Result<(), Error> {
    match format.verify(data, meta, checks, tags) {
        Ok(None) => Ok(()),
        Ok(Some(m)) => Err(Error::ProtectionCheck {
            what,
            lba: lba + m.block,
            field: m.field,
            found: m.found,
            expected: m.expected,
        }),
        Err(e) => Err(Error::Invalid(e)),
    }
}

/// What a request on a namespace with metadata needs, checked.
struct Prepared {
    plan: MetaPlan,
    /// Blocks of the request.
    blocks: u64,
    /// Bytes of separate metadata it moves.
    meta_len: u64,
    /// The protection the request runs with.
    protection: Option<Protection>,
    tags: Tags,
}

impl Prepared {
    /// Whether the driver writes the tuples before submission.
    fn generates(&self, op: Op) -> bool {
        self.driver() && op != Op::Read
    }
    /// Whether the driver checks the tuples after a read.
    fn verifies(&self, op: Op) -> bool {
        self.driver() && op == Op::Read
    }
    fn driver(&self) -> bool {
        self.protection
            .is_some_and(|p| p.action == PiAction::Driver)
    }
}

/// Checks a request of `len` data bytes and `meta_len` bytes of separate
/// metadata (at `mptr`) on `ns`, and plans its commands.
fn prepare(
    ns: &Namespace,
    op: Op,
    lba: u64,
    len: u64,
    meta: Option<(u64, usize)>,
    protection: Option<Protection>,
) -> Result<Prepared, Error> {
    let format = ns.format();
    let nsid = ns.id();
    if !ns.has_metadata() {
        return Err(Error::Invalid(format!(
            "namespace {nsid} is formatted without metadata: no metadata buffer or protection settings apply"
        )));
    }
    if !matches!(op, Op::Read | Op::Write { .. } | Op::Compare) {
        return Err(Error::Invalid(format!(
            "{op:?} on namespace {nsid}, formatted with metadata: only reads, writes and compares move metadata"
        )));
    }
    if ns.is_zoned() && op != Op::Read {
        return Err(Error::Unsupported(
            "writes to a zoned namespace formatted with metadata",
        ));
    }
    // A namespace whose metadata is the protection information alone:
    // without a metadata buffer, the controller inserts and strips it.
    let protection = match protection {
        None if meta.is_none() && format.metadata_is_pi() => Some(Protection::controller()),
        p => p,
    };
    let pi = match (protection, format.pi) {
        (Some(_), None) => {
            return Err(Error::Invalid(format!(
                "namespace {nsid} is formatted without protection information: no protection settings apply"
            )))
        }
        (p, pi) => p.zip(pi),
    };
    let pract = protection.is_some_and(|p| p.pract());
    let stride = format.data_stride(pract);
    let meta_stride = format.metadata_stride(pract);
    if len == 0 || len % stride != 0 {
        return Err(Error::Invalid(format!(
            "length {len} is not a non-zero multiple of namespace {nsid}'s {stride} bytes per block in the data buffer"
        )));
    }
    let blocks = len / stride;
    super::blocking::check_range(ns, lba, blocks)?;
    let meta_len = blocks.checked_mul(meta_stride).ok_or_else(|| {
        Error::Invalid(format!(
            "{blocks} blocks of {meta_stride} bytes of metadata"
        ))
    })?;
    let mptr = match meta {
        Some(_) if meta_stride == 0 => {
            return Err(Error::Invalid(format!(
                "namespace {nsid} moves no separate metadata {}: no metadata buffer applies",
                if format.extended {
                    "(its metadata follows each block's data)"
                } else {
                    "with the controller inserting and stripping protection information"
                }
            )))
        }
        None if meta_stride != 0 => {
            return Err(Error::Invalid(format!(
                "namespace {nsid} keeps {} bytes of metadata per block in a separate buffer: the request needs one of {meta_len} bytes (read_with_metadata, write_with_metadata, or Io::metadata)",
                format.metadata
            )))
        }
        Some((_, have)) if (have as u64) < meta_len => {
            return Err(Error::Invalid(format!(
                "a metadata buffer of {have} bytes for {blocks} blocks of {meta_stride} bytes of metadata"
            )))
        }
        Some((iova, _)) => Some((iova, meta_stride)),
        None => None,
    };
    let p = protection.unwrap_or_default();
    let ref_mask = format.pi.map_or(u64::MAX, |f| f.guard.ref_mask());
    let reference = p.reference.unwrap_or(lba) & ref_mask;
    let tags = Tags {
        reference,
        app: p.app,
        app_mask: p.app_mask,
    };
    Ok(Prepared {
        plan: MetaPlan {
            stride,
            mptr,
            // Type 3 has no reference tag to check: controllers refuse
            // the check (Invalid Protection Information).
            prinfo: pi.map(|(p, f)| {
                let mut checks = p.checks;
                checks.reference &= f.kind != PiType::Type3;
                (p.pract(), checks.prchk())
            }),
            reference,
            counts: pi.is_some_and(|(_, f)| f.kind != PiType::Type3),
            ref_mask,
            app: p.app,
            app_mask: p.app_mask,
        },
        blocks,
        meta_len,
        protection,
        tags,
    })
}

impl QueuePair {
    /// [`submit`](Self::submit) of a request on a namespace with
    /// metadata, or with a metadata buffer or protection settings.
    #[allow(clippy::result_large_err)]
    pub(super) fn submit_meta(&mut self, mut io: Io) -> Result<(), (Error, Io)> {
        if io.buf.len() < io.len {
            let len = io.len;
            return Err((
                Error::Invalid(format!("transfer of {len} bytes from a smaller buffer")),
                io,
            ));
        }
        if io
            .meta
            .as_ref()
            .is_some_and(|m| !m.in_space(&self.shared().space))
        {
            return Err((
                Error::Invalid(
                    "a metadata buffer of another DMA space: its IOVA means nothing to this \
                     controller"
                        .into(),
                ),
                io,
            ));
        }
        let meta_at = io.meta.as_ref().map(|m| (m.iova().raw(), m.len()));
        let prepared = match prepare(&io.ns, io.op, io.lba, io.len as u64, meta_at, io.protection) {
            Ok(p) => p,
            Err(e) => return Err((e, io)),
        };
        if let Err(e) = self.check_op(io.op, &io.ns) {
            return Err((e, io));
        }
        if prepared.generates(io.op) {
            let format = io.ns.format();
            let len = io.len;
            let meta_len = prepared.meta_len as usize;
            let data = &mut io.buf.as_mut_slice()[..len];
            let meta = match io.meta.as_mut() {
                Some(m) => &mut m.as_mut_slice()[..meta_len],
                None => &mut [],
            };
            if let Err(e) = format.generate(data, meta, prepared.tags) {
                return Err((Error::Invalid(e), io));
            }
        }
        let verify = prepared.verifies(io.op).then(|| Verify {
            format: io.ns.format(),
            checks: Checks::ALL,
            tags: prepared.tags,
            lba: io.lba,
            len: io.len,
            meta_len: prepared.meta_len as usize,
        });
        let Some(seg) = io.buf.prefix(io.len) else {
            return Err((Error::Invalid("empty transfer".into()), io));
        };
        let meta = io.meta.take();
        let mut req = 0;
        let r = io.submit_with(|io, buf| {
            let tag = Tag::Caller(io.tag);
            let plan = Some(&prepared.plan);
            self.submit_general(io.op, &io.ns, io.lba, &[seg], buf, tag, plan)
                .map(|r| req = r)
        });
        match r {
            Ok(()) => {
                self.slots_mut()
                    .set_meta(req, MetaReq { buf: meta, verify });
                Ok(())
            }
            Err((e, mut io)) => {
                io.meta = meta;
                Err((e, io))
            }
        }
    }

    /// Reads blocks starting at `lba` of a namespace formatted with
    /// metadata, and waits: their data into `data` and, for a namespace
    /// with a separate metadata buffer, their metadata into `meta`
    /// ([`Namespace::metadata_size`] bytes per block; empty for extended
    /// LBAs, whose metadata follows each block's data in `data`, and when
    /// the controller strips protection information that is the whole
    /// metadata). `protection`: see [`Io::protection`]. With
    /// [`PiAction::Driver`] the driver checks the tuples it read
    /// ([`Error::ProtectionCheck`]). Any memory and length (whole blocks):
    /// the data and metadata are copied through DMA buffers.
    pub fn read_with_metadata(
        &mut self,
        ns: &Namespace,
        lba: u64,
        data: &mut [u8],
        meta: &mut [u8],
        protection: Option<Protection>,
    ) -> Result<(), Error> {
        let meta_at = (!meta.is_empty()).then_some((0, meta.len()));
        let p = prepare(ns, Op::Read, lba, data.len() as u64, meta_at, protection)?;
        let data_len = data.len();
        let meta_len = p.meta_len as usize;
        self.run_with_metadata(
            ns,
            Op::Read,
            lba,
            &p,
            |_, _, _| {},
            |at, d, m| {
                data[at.0..at.0 + d.len()].copy_from_slice(d);
                meta[at.1..at.1 + m.len()].copy_from_slice(m);
            },
        )?;
        if p.verifies(Op::Read) {
            let (d, m) = (&data[..data_len], &meta[..meta_len]);
            verify("Read", &ns.format(), d, m, Checks::ALL, p.tags, lba)?;
        }
        Ok(())
    }

    /// Writes blocks starting at `lba` of a namespace formatted with
    /// metadata, and waits: the data from `data` and the metadata from
    /// `meta` (laid out as for [`read_with_metadata`](Self::read_with_metadata)).
    /// With [`PiAction::Driver`] the driver computes the tuples into the
    /// copies of the metadata it sends (`data` and `meta` are not
    /// changed). Refused on a zoned namespace.
    pub fn write_with_metadata(
        &mut self,
        ns: &Namespace,
        lba: u64,
        data: &[u8],
        meta: &[u8],
        protection: Option<Protection>,
        fua: bool,
    ) -> Result<(), Error> {
        self.send_with_metadata(ns, Op::Write { fua }, lba, data, meta, protection)
    }

    /// Compares blocks starting at `lba` of a namespace formatted with
    /// metadata with `data` and `meta` (as for
    /// [`write_with_metadata`](Self::write_with_metadata)), and waits:
    /// Compare Failure if they differ.
    pub fn compare_with_metadata(
        &mut self,
        ns: &Namespace,
        lba: u64,
        data: &[u8],
        meta: &[u8],
        protection: Option<Protection>,
    ) -> Result<(), Error> {
        self.check_op(Op::Compare, ns)?;
        self.send_with_metadata(ns, Op::Compare, lba, data, meta, protection)
    }

    /// A write or compare with metadata, run to completion.
    fn send_with_metadata(
        &mut self,
        ns: &Namespace,
        op: Op,
        lba: u64,
        data: &[u8],
        meta: &[u8],
        protection: Option<Protection>,
    ) -> Result<(), Error> {
        let meta_at = (!meta.is_empty()).then_some((0, meta.len()));
        let p = prepare(ns, op, lba, data.len() as u64, meta_at, protection)?;
        let format = ns.format();
        let generate = p.generates(op);
        let tags = p.tags;
        let stride = p.plan.stride;
        let counts = p.plan.counts;
        self.run_with_metadata(
            ns,
            op,
            lba,
            &p,
            |at, d, m| {
                d.copy_from_slice(&data[at.0..at.0 + d.len()]);
                m.copy_from_slice(&meta[at.1..at.1 + m.len()]);
                if generate {
                    // Types 1 and 2 count the reference tag per block.
                    let skip = if counts { at.0 as u64 / stride } else { 0 };
                    let t = Tags {
                        reference: tags.reference.wrapping_add(skip),
                        ..tags
                    };
                    // The part is whole blocks of the checked format.
                    let _ = format.generate(d, m, t);
                }
            },
            |_, _, _| {},
        )
    }

    /// Runs a request with metadata through DMA buffers, part by part:
    /// `fill` fills each part's data and metadata buffers before it is
    /// sent (given the part's offsets in the caller's data and metadata),
    /// `drain` takes them after it completed.
    fn run_with_metadata(
        &mut self,
        ns: &Namespace,
        op: Op,
        lba: u64,
        p: &Prepared,
        mut fill: impl FnMut((usize, usize), &mut [u8], &mut [u8]),
        mut drain: impl FnMut((usize, usize), &[u8], &[u8]),
    ) -> Result<(), Error> {
        let stride = p.plan.stride;
        let meta_stride = p.meta_len / p.blocks;
        let chunk = (self.max_transfer() / stride).max(1);
        let wave = chunk * self.slots().depth().min(self.desc_pages()).max(1) as u64;
        let per = wave.min((BOUNCE_MAX / stride).max(1)).min(p.blocks);
        let mut dbuf = self.shared().space.alloc((per * stride) as usize)?;
        let mut mbuf = match meta_stride {
            0 => None,
            n => Some(self.shared().space.alloc((per * n) as usize)?),
        };
        let mut done = 0u64;
        while done < p.blocks {
            let n = per.min(p.blocks - done);
            let at = ((done * stride) as usize, (done * meta_stride) as usize);
            let d = &mut dbuf.as_mut_slice()[..(n * stride) as usize];
            let m = match mbuf.as_mut() {
                Some(b) => &mut b.as_mut_slice()[..(n * meta_stride) as usize],
                None => &mut [],
            };
            fill(at, d, m);
            let plan = p.plan.part(done, mbuf.as_ref().map(|b| b.iova().raw()));
            let seg = HostSeg::from_mut_slice(d);
            let r = self
                .submit_general(
                    op,
                    ns,
                    lba + done,
                    &[seg],
                    IoBuf::Raw,
                    Tag::BlockingOwned,
                    Some(&plan),
                )
                .map_err(|(e, _)| e)
                .and_then(|_| self.wait_blocking());
            if let Err(e) = r {
                if matches!(e, Error::Dead) {
                    // The device may still write them.
                    core::mem::forget(dbuf);
                    core::mem::forget(mbuf);
                }
                return Err(match n < p.blocks {
                    true => Error::At {
                        lba: lba + done,
                        blocks: n,
                        source: Box::new(e),
                    },
                    false => e,
                });
            }
            let m = match mbuf.as_ref() {
                Some(b) => &b.as_slice()[..(n * meta_stride) as usize],
                None => &[],
            };
            drain(at, &dbuf.as_slice()[..(n * stride) as usize], m);
            done += n;
        }
        Ok(())
    }
}

/// The largest data part a blocking call with metadata copies at a time.
const BOUNCE_MAX: u64 = 1 << 20;
