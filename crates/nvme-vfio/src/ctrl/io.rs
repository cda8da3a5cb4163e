//! Requests and completions of the asynchronous I/O API.

use blk_dma::HostSeg;

use super::Namespace;
use crate::mem::DmaBuf;
use crate::nvme::nvm::{
    CopyRange, DsmAttributes, DsmRange, OptionalCommand, COPY_RANGE_LEN, DSM_RANGE_LEN,
};
use crate::nvme::pi::Checks;
use crate::Error;

/// Who computes and checks a request's protection information, on a
/// namespace formatted with it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum PiAction {
    /// The metadata moves as the caller built it (PRACT=0): the
    /// controller checks the fields of [`Protection::checks`] in what is
    /// written and what is read.
    #[default]
    AsIs,
    /// The driver computes the tuples into the request's metadata before
    /// a write, and checks every field of them after a read (the
    /// application tag under its mask; PRACT=0): a mismatch fails the
    /// read with [`Error::ProtectionCheck`]. The controller checks the
    /// fields of [`Protection::checks`] as well.
    Driver,
    /// The controller inserts the tuples on writes and, when the metadata
    /// is the tuple alone, strips them on reads: no metadata moves then
    /// (PRACT=1). It checks [`Protection::checks`].
    Controller,
}

/// The end-to-end protection settings of a request: what computes the
/// protection information, which fields are checked, and the tags.
///
/// The reference tag of types 1 and 2 counts up by one per block from
/// [`reference`](Self::reference) (by default the low 32 or 48 bits of
/// the request's LBA, which type 1 requires); the driver sets each
/// command's initial reference tag when it splits a request.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Protection {
    /// Who computes and checks the tuples.
    pub action: PiAction,
    /// The fields the controller checks (PRCHK). Type 3 has no reference
    /// tag to check: the driver leaves that check out.
    pub checks: Checks,
    /// The first block's reference tag; `None`: the request's LBA.
    pub reference: Option<u64>,
    /// The application tag written, and expected under
    /// [`app_mask`](Self::app_mask).
    pub app: u16,
    /// The bits of the application tag that are checked.
    pub app_mask: u16,
}

impl Protection {
    /// The controller inserts and strips the tuples and checks every
    /// field (PRACT=1).
    pub const fn controller() -> Self {
        Protection {
            action: PiAction::Controller,
            checks: Checks::ALL,
            reference: None,
            app: 0,
            app_mask: 0,
        }
    }

    /// The driver computes the tuples before writes and checks every
    /// field after reads; so does the controller.
    pub const fn driver() -> Self {
        Protection {
            action: PiAction::Driver,
            ..Self::controller()
        }
    }

    /// The caller's metadata moves as it is; the controller checks
    /// `checks`.
    pub const fn as_is(checks: Checks) -> Self {
        Protection {
            action: PiAction::AsIs,
            checks,
            ..Self::controller()
        }
    }

    /// The same settings with application tag `app`, checked under
    /// `mask`.
    pub const fn with_app_tag(mut self, app: u16, mask: u16) -> Self {
        self.app = app;
        self.app_mask = mask;
        self
    }

    /// The same settings with `reference` as the first block's reference
    /// tag.
    pub const fn with_reference(mut self, reference: u64) -> Self {
        self.reference = Some(reference);
        self
    }

    /// The same settings checking `checks`.
    pub const fn with_checks(mut self, checks: Checks) -> Self {
        self.checks = checks;
        self
    }

    /// Whether PRACT is set.
    pub const fn pract(&self) -> bool {
        matches!(self.action, PiAction::Controller)
    }
}

/// A buffer that an I/O owns while the device may access it.
pub enum IoBuf {
    /// DMA memory from the controller's pool: translated, nothing mapped
    /// per I/O.
    Dma(DmaBuf),
    /// Ordinary memory: mapped for the I/O as one coalesced IOVA range.
    Vec(Vec<u8>),
    /// No buffer: a request that moves no data (Verify, Write
    /// Uncorrectable), or the completion of a command submitted with
    /// [`QueuePair::submit_raw`](super::QueuePair::submit_raw), whose memory
    /// the caller owns.
    Raw,
}

impl IoBuf {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            IoBuf::Dma(b) => b.len(),
            IoBuf::Vec(v) => v.len(),
            IoBuf::Raw => 0,
        }
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The contents.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            IoBuf::Dma(b) => b.as_slice(),
            IoBuf::Vec(v) => v,
            IoBuf::Raw => &[],
        }
    }

    /// The contents, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            IoBuf::Dma(b) => b.as_mut_slice(),
            IoBuf::Vec(v) => v,
            IoBuf::Raw => &mut [],
        }
    }

    /// The first `len` bytes as a segment, or `None` if the buffer is
    /// shorter.
    #[inline(always)]
    pub(crate) fn prefix(&self, len: usize) -> Option<HostSeg> {
        let (ptr, have) = match self {
            IoBuf::Dma(b) => (b.as_ptr().cast_const(), b.len()),
            IoBuf::Vec(v) => (v.as_ptr(), v.len()),
            IoBuf::Raw => (core::ptr::null(), 0),
        };
        (len <= have).then(|| HostSeg::new(blk_dma::HostAddr::from_ptr(ptr), len as u64))
    }
}

impl core::fmt::Debug for IoBuf {
    // Kind and length only: a buffer's bytes do not belong in logs and
    // error messages.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            IoBuf::Dma(b) => write!(f, "IoBuf::Dma({} bytes at {})", b.len(), b.iova()),
            IoBuf::Vec(v) => write!(f, "IoBuf::Vec({} bytes)", v.len()),
            IoBuf::Raw => f.write_str("IoBuf::Raw"),
        }
    }
}

impl From<DmaBuf> for IoBuf {
    fn from(b: DmaBuf) -> Self {
        IoBuf::Dma(b)
    }
}

impl From<Vec<u8>> for IoBuf {
    fn from(v: Vec<u8>) -> Self {
        IoBuf::Vec(v)
    }
}

/// What an I/O does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    /// Read into the buffer.
    Read,
    /// Write the buffer; `fua` forces it to media before completion.
    Write {
        /// Force Unit Access.
        fua: bool,
    },
    /// Compare the buffer with the blocks (the data goes to the
    /// controller): Compare Failure if they differ.
    Compare,
    /// Verify the blocks: the controller reads and checks them; no data
    /// moves.
    Verify,
    /// Write Uncorrectable: the blocks read as Unrecovered Read Error until
    /// written again; no data moves.
    WriteUncorrectable,
    /// Copy: the buffer holds the source range descriptors (format 0), the
    /// request's LBA is the destination.
    Copy,
    /// Dataset Management: the buffer holds the ranges (the attributes
    /// are the request's, [`Io::dataset_management`]).
    DatasetManagement,
    /// Zone Append of the buffer to the zone that starts at the request's
    /// LBA (a zoned namespace's): the controller picks where the data
    /// lands, at the zone's write pointer, and the completion says where
    /// ([`Done::appended_lba`]).
    ZoneAppend {
        /// Force Unit Access.
        fua: bool,
    },
}

impl Op {
    /// Whether the op moves the buffer's data to or from blocks (Read,
    /// Write, Compare, Zone Append): the ones a request's length applies
    /// to, and but for Zone Append the ops
    /// [`QueuePair::submit_raw`](super::QueuePair::submit_raw) takes.
    pub const fn moves_blocks(self) -> bool {
        matches!(
            self,
            Op::Read | Op::Write { .. } | Op::Compare | Op::ZoneAppend { .. }
        )
    }

    /// The optional command the op needs, if any.
    pub const fn optional_command(self) -> Option<OptionalCommand> {
        match self {
            Op::Read | Op::Write { .. } | Op::ZoneAppend { .. } => None,
            Op::Compare => Some(OptionalCommand::Compare),
            Op::Verify => Some(OptionalCommand::Verify),
            Op::WriteUncorrectable => Some(OptionalCommand::WriteUncorrectable),
            Op::Copy => Some(OptionalCommand::Copy),
            Op::DatasetManagement => Some(OptionalCommand::DatasetManagement),
        }
    }

    /// Whether the driver refuses the op on a zoned namespace: Write
    /// Uncorrectable and Copy, which write blocks at LBAs they name
    /// without the zoned command set's rules for them.
    pub(crate) const fn refused_on_zoned(self) -> bool {
        matches!(self, Op::WriteUncorrectable | Op::Copy)
    }
}

/// An I/O request: the buffer moves in with it and comes back in [`Done`].
///
/// ```
/// # use nvme_sim::{Config as SimConfig, SimController};
/// # use nvme_vfio::ctrl::{Config, Controller};
/// # use nvme_vfio::mem::{DmaSpace, SpaceConfig};
/// # let sim = SimController::new(SimConfig::default()).unwrap();
/// # let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
/// # let config = Config { space: SpaceConfig { hugepages: false }, ..Config::default() };
/// # // SAFETY: the registers, IOMMU and PCI function all belong to `sim`.
/// # let ctrl = unsafe { Controller::with_backend(sim.registers(), space, config, Some(sim.pci_function())) }?;
/// # use nvme_vfio::ctrl::{Io, IoBuf, QueueConfig};
/// let ns = ctrl.namespace(1)?;
/// let mut qp = ctrl.queue_pair(QueueConfig::default())?;
/// // A write of the first 1024 bytes of a DMA buffer, with Force Unit
/// // Access, tagged 42.
/// let io = Io::write(&ns, 16, ctrl.dma_alloc(4096)?).with_len(1024).fua().tag(42);
/// qp.submit(io).map_err(|(e, _)| e)?;
/// let mut done = Vec::new();
/// while done.is_empty() {
///     qp.poll(&mut done);
/// }
/// let d = done.pop().unwrap();
/// assert_eq!(d.tag, 42);
/// assert!(matches!(d.buf, IoBuf::Dma(_)));
/// d.result?;
/// # Ok::<(), nvme_vfio::Error>(())
/// ```
#[derive(Debug)]
pub struct Io {
    pub(crate) op: Op,
    pub(crate) ns: Namespace,
    pub(crate) lba: u64,
    pub(crate) len: usize,
    pub(crate) buf: IoBuf,
    pub(crate) tag: u64,
    /// A Dataset Management's attributes.
    pub(crate) attributes: DsmAttributes,
    /// The separate metadata buffer.
    pub(crate) meta: Option<DmaBuf>,
    /// The end-to-end protection settings.
    pub(crate) protection: Option<Protection>,
}

impl Io {
    /// A read of `buf.len()` bytes (rounded down to whole blocks if
    /// `len` is not given via [`with_len`](Self::with_len)) at `lba`.
    pub fn read(ns: &Namespace, lba: u64, buf: impl Into<IoBuf>) -> Self {
        Self::new(Op::Read, ns, lba, buf.into())
    }

    /// A write of the buffer at `lba`. On a zoned namespace a write must
    /// start at its zone's write pointer (else the controller fails it
    /// with Zone Invalid Write) and be one command: it is refused before
    /// submission if it crosses a zone boundary ([`Error::CrossesZone`])
    /// or is longer than the maximum transfer ([`Error::TooLarge`]).
    pub fn write(ns: &Namespace, lba: u64, buf: impl Into<IoBuf>) -> Self {
        Self::new(Op::Write { fua: false }, ns, lba, buf.into())
    }

    /// A Compare of the buffer with the blocks at `lba`: the request fails
    /// with Compare Failure (status type 2h, code 85h) if they differ. The
    /// buffer is only read.
    pub fn compare(ns: &Namespace, lba: u64, buf: impl Into<IoBuf>) -> Self {
        Self::new(Op::Compare, ns, lba, buf.into())
    }

    /// A Zone Append of the buffer to the zone of a zoned namespace that
    /// starts at `zslba`: one command, at most the controller's Zone
    /// Append size limit ([`QueuePair::zone_append_limit`](super::QueuePair::zone_append_limit)).
    /// Its [`Done::appended_lba`] is where the data landed. Refused before
    /// submission on a namespace that is not zoned ([`Error::NotZoned`]),
    /// when `zslba` is not a zone's start, when the data is longer than a
    /// zone or over the limit ([`Error::OverLimit`]).
    pub fn zone_append(ns: &Namespace, zslba: u64, buf: impl Into<IoBuf>) -> Self {
        Self::new(Op::ZoneAppend { fua: false }, ns, zslba, buf.into())
    }

    /// A Verify of `blocks` blocks at `lba` (split at the controller's
    /// Verify size limit into commands that complete as one request). No
    /// buffer: [`IoBuf::Raw`] comes back.
    pub fn verify(ns: &Namespace, lba: u64, blocks: u64) -> Self {
        Self::without_data(Op::Verify, ns, lba, blocks)
    }

    /// A Write Uncorrectable of `blocks` blocks at `lba`: they read as
    /// Unrecovered Read Error until written again (refused on a zoned
    /// namespace). No buffer: [`IoBuf::Raw`] comes back.
    pub fn write_uncorrectable(ns: &Namespace, lba: u64, blocks: u64) -> Self {
        Self::without_data(Op::WriteUncorrectable, ns, lba, blocks)
    }

    /// A Copy of `sources` (at most 256, and the namespace's limits) to
    /// `dest`, one command. The source range descriptors are built into a
    /// buffer of ordinary memory, which the request owns and which comes
    /// back in [`Done::buf`]. Refused on a zoned namespace.
    pub fn copy(ns: &Namespace, sources: &[CopyRange], dest: u64) -> Self {
        let mut list = Vec::with_capacity(sources.len() * COPY_RANGE_LEN);
        for r in sources {
            list.extend_from_slice(&r.to_bytes());
        }
        Self::with_list(Op::Copy, ns, dest, list)
    }

    /// A Dataset Management of `ranges` (at most 256) with `attributes`,
    /// one command. The ranges are built into a buffer of ordinary memory,
    /// which the request owns and which comes back in [`Done::buf`].
    pub fn dataset_management(
        ns: &Namespace,
        ranges: &[DsmRange],
        attributes: DsmAttributes,
    ) -> Self {
        let mut list = Vec::with_capacity(ranges.len() * DSM_RANGE_LEN);
        for r in ranges {
            list.extend_from_slice(&r.to_bytes());
        }
        let mut io = Self::with_list(Op::DatasetManagement, ns, 0, list);
        io.attributes = attributes;
        io
    }

    fn new(op: Op, ns: &Namespace, lba: u64, buf: IoBuf) -> Self {
        Io {
            op,
            ns: ns.clone(),
            lba,
            len: buf.len(),
            buf,
            tag: 0,
            attributes: DsmAttributes::default(),
            meta: None,
            protection: None,
        }
    }

    /// A request without data: `blocks` blocks' worth of length, and no
    /// buffer, so the fast path (which needs a buffer that holds the
    /// length) never takes it.
    fn without_data(op: Op, ns: &Namespace, lba: u64, blocks: u64) -> Self {
        let len = blocks.saturating_mul(ns.block_size());
        Io {
            op,
            ns: ns.clone(),
            lba,
            len: usize::try_from(len).unwrap_or(usize::MAX),
            buf: IoBuf::Raw,
            tag: 0,
            attributes: DsmAttributes::default(),
            meta: None,
            protection: None,
        }
    }

    /// A request whose buffer is its range list: a length of 0, so the
    /// fast path (which needs a non-empty transfer) never takes it.
    fn with_list(op: Op, ns: &Namespace, lba: u64, list: Vec<u8>) -> Self {
        Io {
            op,
            ns: ns.clone(),
            lba,
            len: 0,
            buf: IoBuf::Vec(list),
            tag: 0,
            attributes: DsmAttributes::default(),
            meta: None,
            protection: None,
        }
    }

    /// Transfers only the first `len` bytes of the buffer (reads, writes,
    /// compares and Zone Appends; other requests keep their length).
    pub fn with_len(mut self, len: usize) -> Self {
        if self.op.moves_blocks() {
            self.len = len;
        }
        self
    }

    /// Sets Force Unit Access on a write or a Zone Append.
    pub fn fua(mut self) -> Self {
        match self.op {
            Op::Write { .. } => self.op = Op::Write { fua: true },
            Op::ZoneAppend { .. } => self.op = Op::ZoneAppend { fua: true },
            _ => {}
        }
        self
    }

    /// Moves the blocks' metadata through `meta`, on a namespace formatted
    /// with metadata in a separate buffer: [`Namespace::metadata_size`]
    /// bytes per block, in the order of the blocks (reads, writes and
    /// compares). The buffer comes back in [`Done::meta`]. DMA memory, so
    /// that the controller reads or writes it through one metadata
    /// pointer per command.
    pub fn metadata(mut self, meta: DmaBuf) -> Self {
        self.meta = Some(meta);
        self.off_fast_path();
        self
    }

    /// Keeps the request off the submission fast path, which moves no
    /// metadata (its range check then fails): the general path takes it,
    /// or refuses it on a namespace without metadata.
    fn off_fast_path(&mut self) {
        self.ns.fast_blocks = 0;
    }

    /// Sets the request's end-to-end protection (reads, writes and
    /// compares on a namespace formatted with protection information).
    /// Without it, the metadata moves as it is and nothing is checked,
    /// except on a namespace whose metadata is the protection information
    /// alone, where requests without a metadata buffer get
    /// [`Protection::controller`].
    pub fn protection(mut self, protection: Protection) -> Self {
        self.protection = Some(protection);
        self.off_fast_path();
        self
    }

    /// A caller's value handed back in [`Done::tag`].
    pub fn tag(mut self, tag: u64) -> Self {
        self.tag = tag;
        self
    }

    /// Runs `submit` with the buffer taken out of the request: a refusal
    /// hands the buffer back, and the caller gets the whole request again.
    #[allow(clippy::result_large_err)]
    pub(crate) fn submit_with(
        mut self,
        submit: impl FnOnce(&Io, IoBuf) -> Result<(), (Error, IoBuf)>,
    ) -> Result<(), (Error, Io)> {
        let buf = core::mem::replace(&mut self.buf, IoBuf::Raw);
        submit(&self, buf).map_err(|(e, buf)| {
            self.buf = buf;
            (e, self)
        })
    }

    /// Gives the buffer back (for a request that was refused).
    pub fn into_buf(self) -> IoBuf {
        self.buf
    }

    /// Gives the buffer and the metadata buffer back (for a request that
    /// was refused).
    pub fn into_bufs(self) -> (IoBuf, Option<DmaBuf>) {
        (self.buf, self.meta)
    }
}

/// A completed I/O: the buffer, back with its owner, and the result.
#[derive(Debug)]
pub struct Done {
    /// The request's tag.
    pub tag: u64,
    /// The request's buffer.
    pub buf: IoBuf,
    /// The outcome.
    pub result: Result<(), Error>,
    /// For a Zone Append that succeeded, the LBA its data landed at (from
    /// its completion, checked to lie in the append's zone); `None` for
    /// every other request.
    pub appended_lba: Option<u64>,
    /// The request's metadata buffer ([`Io::metadata`]), if it had one.
    pub meta: Option<DmaBuf>,
}

impl Done {
    /// The buffer and the result.
    pub fn into_parts(self) -> (IoBuf, Result<(), Error>) {
        (self.buf, self.result)
    }
}
