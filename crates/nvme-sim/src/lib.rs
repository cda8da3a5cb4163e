//! An in-process software NVMe controller and IOMMU, for the driver's
//! integration tests, fault injection and driver-overhead benchmarks.
//!
//! - [`SimIommu`]: a software IOMMU. The driver's DMA memory programs it
//!   through [`DmaMap`](nvme_vfio::mem::DmaMap) with VFIO type1v2's rules;
//!   the controller reaches host memory only through its live mappings, so
//!   a bad IOVA is a failed transfer, not a crash.
//! - [`SimController`]: the controller. Its register file implements
//!   [`Registers`](nvme_vfio::nvme::regs::Registers) (BAR0); a worker thread
//!   fetches commands from the queues the driver sets up, walks PRPs and
//!   SGLs with the strict device-side walker of [`nvme_vfio::nvme::walk`],
//!   moves data to and from RAM-backed namespaces and posts completions
//!   with the phase tag.
//! - [`Config`]: the controller's shape, as real disks differ: doorbell
//!   stride, queue sizes, CAP.TO and the time to become ready, memory page
//!   sizes, SGL support (none, without or with Bit Buckets), MDTS, I/O
//!   queues granted, namespaces (block sizes, IDs with gaps, attached later
//!   with [`SimController::attach_namespace`] and its notice), and optional
//!   features (shadow doorbells, volatile write cache, Write Zeroes,
//!   Dataset Management, Compare, Verify, Write Uncorrectable, Copy, the
//!   Commands Supported and Effects log) present or not.
//! - The NVM command set's optional commands, with their limits reported
//!   and enforced ([`Config::copy_limits`], [`Config::nvm_limits`]):
//!   Compare (Compare Failure on a mismatch), Write Uncorrectable (its
//!   blocks fail reads, compares, verifies and copies with Unrecovered Read
//!   Error, logged with their LBA, until written), Verify, Copy (source
//!   range descriptors of format 0) and Dataset Management (ranges
//!   deallocated, reading back as zeroes; the other attributes accepted).
//! - I/O command sets: with [`Config::io_command_sets`] (the default, as
//!   on QEMU's controller) CAP.CSS offers CC.CSS = 110b, namespaces carry
//!   their Command Set Identifier in their descriptor list, and the
//!   command set Identify data is answered (CNS 05h to 08h). A zoned
//!   namespace ([`NamespaceConfig::zoned`]) is active only with CC.CSS =
//!   110b and models zone states, write pointers and the open and active
//!   limits as QEMU's controller does: reads within a zone, writes at a
//!   zone's write pointer, Zone Append (the completion says where the data
//!   landed, within [`Config::zasl`]), Zone Management Send (open, close,
//!   finish, reset, offline; one zone or all) and Receive (Report Zones,
//!   with its filters and Partial Report), each failure with the Zoned
//!   Namespace command set's status; zones go Read Only or Offline at the
//!   test's word ([`SimController::set_zone_state`]).
//! - [`FaultRule`]: fault injection per command (error status, with the
//!   More bit and an Error Information log entry of the caller's choosing
//!   ([`FaultAction::Logged`]), dropped, delayed or out-of-order
//!   completions, CSTS.CFS), plus never-ready and fatal-status switches on
//!   the controller.
//! - A misbehaving device, for hardening the driver against devices that
//!   write memory it has given back: duplicate completions that move their
//!   data again ([`FaultAction::Duplicate`]), commands that outlive a
//!   controller reset ([`FaultAction::SurviveReset`]), altered completion
//!   entries ([`CqeCorruption`]), completions posted before their data
//!   moves ([`FaultAction::CompleteBeforeData`]), writes outside a
//!   command's buffer ([`FaultAction::WriteOutside`]), and a controller
//!   that ignores CC.EN = 0 ([`SimController::set_ignore_disable`]). The
//!   PCI function ([`SimController::pci_function`]) models Bus Master
//!   Enable (clear: no DMA at all) and function level reset (which can be
//!   made to fail silently, [`SimController::set_ignore_flr`]).
//!
//! # How it works
//!
//! - **One worker thread per controller** owns every queue and runs the
//!   controller's state machine; the driver's threads only touch the
//!   register file (atomics) and their own memory. The worker sleeps
//!   (`thread::park`, with a timeout when a timer is due: ready delay,
//!   shutdown, delayed completions) while there is nothing to do, and every
//!   doorbell or CC write wakes it (`unpark`, a single atomic operation when
//!   it is awake). [`Config::idle_spin`] lets it poll a little before
//!   sleeping, for latency benchmarks. Dropping the controller stops and
//!   joins the worker.
//! - CC writes are queued in order, so a quick disable/enable pair is two
//!   transitions. A controller that cannot run the configuration it is
//!   enabled with (bad MPS, CSS, AQA, ASQ/ACQ) raises CSTS.CFS, as does an
//!   unreadable submission queue or unwritable completion queue (as QEMU's
//!   controller does).
//! - Queues are served round robin, 64 commands at a time. A completion
//!   queue is never overwritten: with no free slot the controller stops
//!   fetching from the submission queues that complete there and keeps
//!   finished completions until the head doorbell moves.
//! - **Shadow doorbells** (Doorbell Buffer Config) are used, not only
//!   accepted: for I/O queues the worker takes tails and heads from the
//!   shadow buffer and writes EventIdx entries (event-index protocol, with a
//!   re-check after each EventIdx write). The admin queue always uses the
//!   registers.
//! - **Null mode** ([`Config::null`]) still fetches commands and checks
//!   namespace, LBA range and MDTS, but does not walk PRPs/SGLs and moves no
//!   data, so it measures the driver's own cost.
//! - Commands a fault delays, holds back or drops stay inside the
//!   controller until they run, are aborted (Abort), their queue is deleted
//!   (Command Aborted due to SQ Deletion) or the controller is reset.
//!   Work a fault schedules after a completion (a duplicate, a late data
//!   transfer) is dropped by a reset; a command made to survive a reset is
//!   dropped only by a function level reset.
//! - **Bus mastering** gates every device access to host memory: with Bus
//!   Master Enable clear the worker fetches, transfers and posts nothing,
//!   and the timers of commands it holds wait.
//!
//! ```
//! use std::sync::Arc;
//! use nvme_sim::{Config, SimController};
//! use nvme_vfio::nvme::regs::{offset, Cap, Registers};
//!
//! let sim = SimController::new(Config::default())?;
//! let bar: Arc<dyn Registers> = sim.registers();
//! let cap = Cap(bar.read64(offset::CAP));
//! assert_eq!(cap.max_queue_entries(), 1024);
//! // The driver's DMA memory maps through `sim.iommu()`:
//! // `DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false })`.
//! # Ok::<(), nvme_sim::Error>(())
//! ```

mod config;
mod controller;
mod device;
mod fault;
mod iommu;
mod irq;
mod regs;
mod storage;
mod zones;

pub use config::{
    BlockFormat, Config, CopyLimits, Guard, NamespaceConfig, NvmLimitsConfig, PiFormat, PiType,
    ZoneConfig,
};
pub use controller::{Released, SimController, Stats};
pub use fault::{CqeCorruption, ErrorDetail, FaultAction, FaultRule, Match};
pub use iommu::{IommuConfig, Mapping, SimIommu};
pub use irq::SimInterrupts;

/// Why the software controller could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is out of range.
    #[error("invalid nvme-sim configuration: {0}")]
    Config(&'static str),
    /// The worker thread could not be started.
    #[error("cannot start the nvme-sim worker thread")]
    Spawn(#[source] std::io::Error),
    /// No namespace has this ID.
    #[error("no namespace {nsid}")]
    NoNamespace {
        /// The namespace ID asked for.
        nsid: u32,
    },
    /// A namespace kind [`NamespaceConfig::from_kind`] does not know.
    #[error(
        "unknown namespace kind '{0}' (nvm, zoned, metaN, piT, with -ext, -first, -crc64, -msN)"
    )]
    Kind(String),
    /// The bytes asked for extend past the namespace's end.
    #[error("{len} bytes at block {lba} are beyond the end of namespace {nsid}")]
    OutOfRange {
        /// The namespace.
        nsid: u32,
        /// The first block.
        lba: u64,
        /// The length in bytes.
        len: usize,
    },
}
