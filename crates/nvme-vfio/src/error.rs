//! The crate's error type.

use blk_dma::MapError;

use crate::nvme::iocs::CommandSet;
use crate::nvme::log::ErrorLogEntry;
use crate::nvme::nvm::OptionalCommand;
use crate::nvme::status::{CommandKind, Status};
use crate::nvme::DptrError;
use crate::vfio::VfioError;

/// Errors of the driver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Building a command's data pointer failed.
    #[error(transparent)]
    Dptr(#[from] DptrError),
    /// Mapping memory for the device failed.
    #[error(transparent)]
    Map(#[from] MapError),
    /// A VFIO operation failed.
    #[error(transparent)]
    Vfio(#[from] VfioError),
    /// No DMA memory could be allocated for a buffer.
    #[error("cannot allocate {len:#x} bytes of DMA memory")]
    OutOfDmaMemory {
        /// Bytes asked for.
        len: u64,
        /// Why, when the system said.
        #[source]
        source: Option<std::io::Error>,
    },
    /// The IOMMU's valid IOVA ranges have no room left.
    #[error("no IOVA space left for {len:#x} bytes")]
    IovaExhausted {
        /// Bytes asked for.
        len: u64,
    },
    /// A buffer of zero bytes, or a registration of zero bytes, was asked for.
    #[error("zero-length DMA memory request")]
    ZeroLength,
    /// The device did not answer in time.
    #[error("timed out after {ms} ms waiting for {what}")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// How long.
        ms: u64,
    },
    /// The controller reported a fatal error (CSTS.CFS) and needs a reset.
    #[error("controller fatal status (CSTS.CFS) while {during}")]
    ControllerFatal {
        /// What the driver was doing.
        during: &'static str,
    },
    /// The device is gone: its registers read as all ones (surprise
    /// removal, a link down, or its function reset underneath the driver).
    /// When its configuration space does not answer either, the driver
    /// takes it as absent, unable to do DMA: requests in flight fail with
    /// this error and their buffers come back, and every later call fails
    /// the same way.
    #[error("device lost (removed, or its registers read all ones)")]
    DeviceLost,
    /// A command completed with an error status.
    ///
    /// When the status has the More bit set, the controller's Error
    /// Information log entry for the command is attached (`log`) by the
    /// admin commands and the blocking I/O calls; a request completed by
    /// [`QueuePair::poll`](crate::ctrl::QueuePair::poll) comes back without
    /// it, which [`Controller::attach_error_log`](crate::ctrl::Controller::attach_error_log)
    /// fetches afterwards.
    #[error("{}", CommandFailure { what, status: *status, sqid: *sqid, log: log.as_deref() })]
    Command {
        /// The command.
        what: &'static str,
        /// Its completion status.
        status: Status,
        /// The submission queue it was submitted to (0: the admin queue).
        sqid: u16,
        /// Its command ID, as the error log names it (IDs are reused:
        /// match entries soon after the failure).
        cid: u16,
        /// The Error Information log entry for the command, when fetched.
        log: Option<Box<ErrorLogEntry>>,
    },
    /// The controller lacks something the driver needs.
    #[error("unsupported controller: {0}")]
    Unsupported(&'static str),
    /// An optional command of the NVM command set that the controller does
    /// not support, refused before anything is submitted: neither
    /// Identify Controller ONCS (with OCFS for Copy's descriptor format 0)
    /// nor the Commands Supported and Effects log lists it.
    #[error("the controller does not support the {command} command (Identify Controller ONCS)")]
    UnsupportedCommand {
        /// The command.
        command: OptionalCommand,
    },
    /// A request over a limit the controller or the namespace reports
    /// (Copy's source ranges and lengths, Dataset Management's ranges),
    /// refused before anything is submitted.
    #[error("{what}: {requested}, over the limit of {max} ({limit})")]
    OverLimit {
        /// What was counted.
        what: &'static str,
        /// How many the request has.
        requested: u64,
        /// How many are allowed.
        max: u64,
        /// The field that sets the limit.
        limit: &'static str,
    },
    /// A namespace that does not exist or is not active.
    #[error("namespace {nsid} is not active on this controller")]
    NoNamespace {
        /// The namespace ID asked for.
        nsid: u32,
    },
    /// A namespace formatted with a metadata format the driver does not
    /// handle.
    #[error("namespace {nsid} uses {metadata} bytes of metadata per block: {reason}")]
    MetadataFormat {
        /// The namespace ID.
        nsid: u32,
        /// Metadata bytes per block.
        metadata: u16,
        /// What is not supported.
        reason: &'static str,
    },
    /// A protection information check the driver made on a read's data
    /// failed (the request asked the driver to check,
    /// [`PiAction::Driver`](crate::ctrl::PiAction::Driver)): the same
    /// checks as the controller's End-to-end Guard, Application Tag and
    /// Reference Tag Check Errors (status type 2h, codes 82h to 84h).
    #[error("{what}: end-to-end {} check error found by the driver at LBA {lba:#x}: the block's protection information holds {found:#x}, {expected:#x} was expected", field_name(*field))]
    ProtectionCheck {
        /// The command's name.
        what: &'static str,
        /// The LBA of the first block that failed.
        lba: u64,
        /// The field that failed.
        field: crate::nvme::pi::PiField,
        /// The value in the block's protection information.
        found: u64,
        /// The value the check expected.
        expected: u64,
    },
    /// Write Uncorrectable or Copy to a zoned namespace (Zoned Namespace
    /// command set), refused before anything is submitted: a zoned
    /// namespace is written sequentially, at each zone's write pointer
    /// (Write, Write Zeroes) or by Zone Append
    /// ([`QueuePair::zone_append`](crate::ctrl::QueuePair::zone_append)).
    #[error(
        "namespace {nsid} is zoned: Write Uncorrectable and Copy are refused on it \
         (write at each zone's write pointer, or with Zone Append)"
    )]
    ZonedNamespace {
        /// The namespace ID.
        nsid: u32,
    },
    /// A zone command (Zone Append, Zone Management Send or Receive) on a
    /// namespace that is not zoned, refused before anything is submitted.
    #[error(
        "namespace {nsid} is not zoned: zone commands need a Zoned Namespace command set namespace"
    )]
    NotZoned {
        /// The namespace ID.
        nsid: u32,
    },
    /// A write (or Write Zeroes) to a zoned namespace whose blocks span
    /// two zones, refused before anything is submitted (the controller
    /// would fail it with Zone Boundary Error).
    #[error(
        "LBA range {lba}+{blocks} crosses a zone boundary (zones of {zone_blocks} blocks): \
         a write stays inside one zone"
    )]
    CrossesZone {
        /// The first block.
        lba: u64,
        /// The number of blocks.
        blocks: u64,
        /// The zone size in blocks.
        zone_blocks: u64,
    },
    /// Data the controller returned makes no sense (a Zone Append's
    /// completion naming an LBA outside its zone, a zone report listing
    /// zones out of order or outside the namespace): a device error. The
    /// command's effect is unknown.
    #[error("{what}: the controller returned data that cannot be right: {detail}")]
    DeviceData {
        /// The command.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A namespace of an I/O command set the driver does no block I/O on
    /// (only NVM and Zoned Namespace).
    #[error(
        "namespace {nsid} uses the {command_set} command set, which this driver does not support"
    )]
    UnsupportedCommandSet {
        /// The namespace ID.
        nsid: u32,
        /// Its command set.
        command_set: CommandSet,
    },
    /// No I/O queue is left to create a queue pair with.
    #[error("all {max} I/O queues are in use")]
    NoQueues {
        /// I/O queues the controller granted.
        max: u16,
    },
    /// The queue pair has too few free command slots for the request.
    #[error("queue full: the request needs {needed} command slots, {free} are free")]
    QueueFull {
        /// Commands the request needs (more than one when split at MDTS).
        needed: usize,
        /// Commands that can still be submitted.
        free: usize,
    },
    /// The request needs more commands (of the controller's maximum
    /// transfer) than the queue pair can ever have in flight: waiting for
    /// completions does not help. Submit at most `max` bytes per request
    /// (the blocking calls take any length: they run such a request in
    /// waves).
    #[error(
        "request of {len} bytes is larger than this queue pair can take at once ({max} bytes)"
    )]
    TooLarge {
        /// The request's length in bytes.
        len: u64,
        /// The largest request the queue pair takes.
        max: u64,
    },
    /// A blocking transfer run in waves failed in the wave at `lba`
    /// (`blocks` long): the blocks before it were transferred, it and the
    /// ones after it may not have been.
    #[error("transfer failed at LBA {lba} (+{blocks} blocks): {source}")]
    At {
        /// The first block of the wave that failed.
        lba: u64,
        /// The wave's length in blocks.
        blocks: u64,
        /// What failed.
        #[source]
        source: Box<Error>,
    },
    /// The request is invalid (detected before anything is submitted).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The controller was reset while the request was in flight; it was not
    /// completed (its data may be partly transferred) and may be retried.
    #[error("controller reset while the request was in flight")]
    Reset,
    /// The controller was disabled to stop a command that did not complete
    /// in time; it must be reset before further use.
    #[error("controller disabled after a command timed out; reset it")]
    Disabled,
    /// The controller could not be stopped: it kept running after CC.EN
    /// was cleared, and bus mastering and a function level reset could not
    /// stop it (or the driver has no access to its PCI function). Memory
    /// it might still reach (buffers of requests in flight, queue rings,
    /// descriptor pages) is quarantined: never handed back or reused. The
    /// controller takes no more commands.
    #[error(
        "controller could not be stopped; its memory is quarantined and it takes no more commands"
    )]
    Dead,
    /// The [`Controller`](crate::ctrl::Controller) was dropped: the
    /// controller was shut down and stopped, and nothing brings it back
    /// (queue pairs that outlive it fail every request with this error).
    #[error("controller closed (its Controller was dropped)")]
    Closed,
    /// The queue pair's queues could not be created again after a
    /// controller reset (the log says why); each later call tries again
    /// (at most every 100 ms) until it works.
    #[error("queue pair {qid}: its queues could not be created again after a controller reset")]
    QueueUnavailable {
        /// The queue ID.
        qid: u16,
    },
}

/// The message of [`Error::Command`]: `Read failed: Unrecovered Read Error
/// (SCT 0x2, SC 0x81, do not retry, more info in the error log): the read
/// data could not be recovered from the media; error log entry 7 (SQ 1,
/// command 0x0012, opcode 0x02): namespace 1, LBA 4099 (0x1003)`, the
/// entry last.
struct CommandFailure<'a> {
    what: &'static str,
    status: Status,
    sqid: u16,
    log: Option<&'a ErrorLogEntry>,
}

impl core::fmt::Display for CommandFailure<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let kind = CommandKind::of_queue(self.sqid);
        write!(
            f,
            "{} failed: {}: {}",
            self.what,
            self.status.display_for(kind),
            self.status.message_for(kind)
        )?;
        if let Some(e) = self.log {
            write!(f, "; error log {}", e.display_after(self.status))?;
        }
        Ok(())
    }
}

impl Error {
    /// The protection information field whose end-to-end check failed:
    /// the controller's End-to-end Guard, Application Tag or Reference Tag
    /// Check Error (status type 2h, codes 82h to 84h), or the driver's own
    /// check ([`Error::ProtectionCheck`]); also inside [`Error::At`].
    pub fn protection_field(&self) -> Option<crate::nvme::pi::PiField> {
        use crate::nvme::pi::PiField;
        match self {
            Error::ProtectionCheck { field, .. } => Some(*field),
            Error::At { source, .. } => source.protection_field(),
            _ => match self.status().map(|s| (s.sct(), s.sc())) {
                Some((2, 0x82)) => Some(PiField::Guard),
                Some((2, 0x83)) => Some(PiField::AppTag),
                Some((2, 0x84)) => Some(PiField::RefTag),
                _ => None,
            },
        }
    }

    /// The completion status of a failed command ([`Error::Command`], also
    /// inside [`Error::At`]).
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Command { status, .. } => Some(*status),
            Error::At { source, .. } => source.status(),
            _ => None,
        }
    }

    /// The Error Information log entry attached to a failed command's
    /// error (also inside [`Error::At`]).
    pub fn error_log(&self) -> Option<&ErrorLogEntry> {
        match self {
            Error::Command { log, .. } => log.as_deref(),
            Error::At { source, .. } => source.error_log(),
            _ => None,
        }
    }

    /// The failed command's error ([`Error::Command`], also inside
    /// [`Error::At`]), to attach its error log entry to.
    pub(crate) fn command_mut(&mut self) -> Option<&mut Error> {
        match self {
            Error::Command { .. } => Some(self),
            Error::At { source, .. } => source.command_mut(),
            _ => None,
        }
    }
}

/// The name of a protection information field in messages.
fn field_name(f: crate::nvme::pi::PiField) -> &'static str {
    match f {
        crate::nvme::pi::PiField::Guard => "guard",
        crate::nvme::pi::PiField::AppTag => "application tag",
        crate::nvme::pi::PiField::RefTag => "reference tag",
    }
}
