//! The NVMe controller: bring-up, the admin queue, namespaces, and I/O queue
//! pairs ([`QueuePair`]).
//!
//! Bring-up follows NVMe Base 2.0, 3.5.1: disable (wait for CSTS.RDY = 0),
//! program the admin queues, write CC, enable (wait for CSTS.RDY = 1). Every
//! wait is bounded by CAP.TO and checks CSTS.CFS.

mod asyncio;
mod blocking;
mod cids;
mod clock;
mod cmb;
mod commands;
mod errlog;
mod events;
mod free;
mod function;
mod group;
mod inflight;
mod io;
mod meta;
mod mmio_copy;
mod ns;
mod passthru;
mod pool;
mod qpair;
mod recovery;
mod recovery_state;
mod rings;
mod shared;
mod support;
mod unplug;
mod zns;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::mem::{DmaSpace, SpaceConfig};
use crate::nvme::cmd::{cns, feature, log_page, Command};
use crate::nvme::identify::{IdentifyController, IdentifyNamespace, IDENTIFY_LEN};
use crate::nvme::log::{ErrorLogEntry, SmartLog, ERROR_ENTRY_LEN, SMART_LEN};
use crate::nvme::queue::{CompletionQueue, SubmissionQueue};
use crate::nvme::regs::{self, offset, Cap, Cc, Registers, Shutdown, ShutdownStatus};
use crate::nvme::spec::PageSize;
use crate::Error;

pub use crate::nvme::nvm::{
    CopyLimits, CopyRange, DsmAttributes, DsmRange, NvmLimits, OptionalCommand,
};
pub use crate::nvme::pi::{BlockFormat, Checks, Guard, PiField, PiFormat, PiType};
pub use crate::nvme::zns::{
    ReportFilter, ZoneAction, ZoneAttributes, ZoneDescriptor, ZoneState, ZoneType,
};
pub use asyncio::{AppendFuture, AsyncQueuePair, IoFuture};
pub use cmb::CmbBuf;
pub use events::{AsyncEvent, AsyncEventKind};
pub use function::{Interrupts, PciFunction};
pub use group::PollGroup;
pub use io::{Done, Io, IoBuf, Op, PiAction, Protection};
pub use ns::{CommandSet, NamespaceEntry, NamespaceInfo, ZoneInfo};
pub use pool::{DmaDescPool, DESC_PAGE};
pub use qpair::{QueueConfig, QueuePair};
pub(crate) use shared::Shared;
use shared::{lock, Admin, DbBuf};

/// Admin queue entries (as Linux's nvme driver: whatever CAP.MQES says).
const ADMIN_ENTRIES: u16 = 32;
/// Time allowed for a normal shutdown when the controller does not say.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Driver settings for a controller.
#[derive(Clone, Debug)]
pub struct Config {
    /// DMA memory settings.
    pub space: SpaceConfig,
    /// I/O queues to ask the controller for.
    pub io_queues: u16,
    /// Time allowed for an I/O command before the driver aborts it (and
    /// resets the controller if the abort does not complete it).
    pub io_timeout: Duration,
    /// Time allowed for an admin command before the driver resets the
    /// controller.
    pub admin_timeout: Duration,
    /// Interrupt mode: enable MSI-X and give each I/O completion queue a
    /// vector, so [`QueuePair::wait`] can sleep until completions arrive.
    /// Polled mode (the default) needs no interrupts.
    pub interrupts: bool,
    /// Enable the controller memory buffer when the controller has one
    /// with read and write data support ([`Controller::cmb_alloc`]).
    pub cmb: bool,
    /// Use shadow doorbells (Doorbell Buffer Config) when the controller
    /// offers them: fewer MMIO writes, which cost most under a hypervisor.
    pub shadow_doorbells: bool,
    /// Test hook: when it stops the controller (a reset, or after a
    /// timeout), the driver skips CC.EN = 0 and behaves as if the
    /// controller had not acknowledged it, so it stops the device the way
    /// it stops one that ignores CC.EN: bus mastering cleared, then a
    /// function level reset. Off by default; needs the PCI function
    /// ([`Controller::open`] has it).
    pub test_unacknowledged_disable: bool,
    /// Keep Asynchronous Event Requests outstanding and collect the
    /// controller's events (SMART/health warnings, notices, error log
    /// entries) for [`Controller::poll_events`].
    pub async_events: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            space: SpaceConfig::default(),
            io_queues: 16,
            io_timeout: Duration::from_secs(30),
            admin_timeout: Duration::from_secs(10),
            interrupts: false,
            cmb: true,
            shadow_doorbells: true,
            test_unacknowledged_disable: false,
            async_events: true,
        }
    }
}

/// An active namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    id: u32,
    block_size: u64,
    blocks: u64,
    command_set: CommandSet,
    zones: Option<ZoneInfo>,
    copy: CopyLimits,
    format: BlockFormat,
    /// The blocks the submission fast path may reach: all of them, or
    /// none on a namespace formatted with metadata (whose requests need
    /// more than the fast path builds), so that the fast path's range
    /// check also keeps those out.
    pub(crate) fast_blocks: u64,
}

impl Namespace {
    /// The namespace ID.
    pub fn id(&self) -> u32 {
        self.id
    }
    /// Logical block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }
    /// Capacity in logical blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }
    /// Capacity in bytes.
    pub fn bytes(&self) -> u64 {
        self.blocks.saturating_mul(self.block_size)
    }
    /// The namespace's I/O command set.
    pub fn command_set(&self) -> CommandSet {
        self.command_set
    }
    /// Whether the namespace is zoned (Zoned Namespace command set): it
    /// reads like any other, and is written sequentially in each zone:
    /// with [`QueuePair::zone_append`] (or [`Io::zone_append`]), or with
    /// writes at the zone's write pointer (which the controller checks:
    /// Zone Invalid Write), its zones managed with
    /// [`QueuePair::zone_action`] and listed with
    /// [`QueuePair::report_zones`]. Write Uncorrectable and Copy are
    /// refused on it ([`Error::ZonedNamespace`]).
    pub fn is_zoned(&self) -> bool {
        self.command_set == CommandSet::Zoned
    }
    /// The zones of a zoned namespace (`None` for other namespaces, or if
    /// the controller did not report a zone size).
    pub fn zones(&self) -> Option<&ZoneInfo> {
        self.zones.as_ref()
    }
    /// The namespace's Copy limits (Identify Namespace MSSRL, MCL, MSRC),
    /// against which [`QueuePair::copy`] checks a Copy before submission.
    pub fn copy_limits(&self) -> CopyLimits {
        self.copy
    }
    /// How the namespace's blocks are laid out in host memory: data and
    /// metadata bytes per block, extended LBAs or a separate metadata
    /// buffer, and the protection information format.
    pub fn format(&self) -> BlockFormat {
        self.format
    }
    /// Metadata bytes per block (0: none).
    pub fn metadata_size(&self) -> u16 {
        self.format.metadata
    }
    /// Whether the namespace is formatted with metadata: its reads and
    /// writes go through [`QueuePair::read_with_metadata`],
    /// [`QueuePair::write_with_metadata`] or requests with
    /// [`Io::metadata`] and [`Io::protection`] (see [`Protection`]).
    #[inline(always)]
    pub fn has_metadata(&self) -> bool {
        self.format.metadata != 0
    }
    /// The protection information format, if the namespace is formatted
    /// with end-to-end protection.
    pub fn protection_info(&self) -> Option<PiFormat> {
        self.format.pi
    }
}

/// An NVMe controller.
///
/// Opened by PCI address ([`open`](Self::open), or [`open_in`](Self::open_in)
/// to share another controller's DMA space), or over any backend
/// ([`with_backend`](Self::with_backend)); closed for good when dropped.
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
/// println!("{} ({} I/O queues, {} bytes per command)", ctrl.identify().model(),
///     ctrl.io_queues(), ctrl.max_transfer());
/// for nsid in ctrl.active_namespaces()? {
///     let ns = ctrl.namespace(nsid)?;
///     println!("namespace {nsid}: {} blocks of {} bytes", ns.blocks(), ns.block_size());
/// }
/// let health = ctrl.smart_log()?;
/// # let _ = health;
/// # Ok::<(), nvme_vfio::Error>(())
/// ```
pub struct Controller {
    shared: Arc<Shared>,
    identify: IdentifyController,
    io_queues: u16,
    cmb: Option<Arc<cmb::Cmb>>,
    /// Whether Identify CNS 08h may work (cleared when the controller
    /// refuses it).
    independent_ns: std::sync::atomic::AtomicBool,
    /// The optional NVM commands the controller supports, and their
    /// limits.
    nvm: support::NvmSupport,
}

impl core::fmt::Debug for Controller {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Controller")
            .field("identify", &self.identify)
            .field("io_queues", &self.io_queues)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// Opens the controller at PCI address `addr` (`0000:01:00.0` or
    /// `01:00.0`), bound to vfio-pci, and brings it up.
    pub fn open(addr: &str, config: Config) -> Result<Self, Error> {
        let dev = crate::vfio::Device::open(addr)?;
        let space = DmaSpace::for_container(dev.container().clone(), config.space);
        Self::open_device(dev, space, config)
    }

    /// Opens the controller at `addr` into `space`, the DMA space of
    /// controllers opened before (see [`space`](Self::space)): its IOMMU
    /// group joins their VFIO container, so memory allocated from or
    /// registered with `space` is usable with all of them, at the same
    /// addresses. `config.space` is not used (the space is). Fails if
    /// `space` is not a VFIO container's, or the kernel refuses the group
    /// in it (a different IOMMU, or reserved regions that clash with
    /// existing mappings).
    pub fn open_in(addr: &str, space: &Arc<DmaSpace>, config: Config) -> Result<Self, Error> {
        let Some(container) = space.container() else {
            return Err(Error::Invalid(
                "the DMA space is not a VFIO container's (Controller::open makes one)".into(),
            ));
        };
        let dev = crate::vfio::Device::open_in(container, addr.parse()?)?;
        Self::open_device(dev, space.clone(), config)
    }

    fn open_device(
        dev: crate::vfio::Device,
        space: Arc<DmaSpace>,
        config: Config,
    ) -> Result<Self, Error> {
        let dev = Arc::new(dev);
        // Registers only: bus mastering comes on once the controller is
        // known stopped and its queues are set up (Shared::enable).
        dev.enable_memory_space()?;
        let bar = Arc::new(dev.map_bar(0)?);
        let msix = if config.interrupts {
            let n = dev.msix_vectors()?.min(config.io_queues as u32 + 1);
            if n < 2 {
                return Err(Error::Unsupported(
                    "interrupt mode needs at least 2 MSI-X vectors",
                ));
            }
            Some(Box::new(dev.enable_msix(n)?) as Box<dyn Interrupts>)
        } else {
            None
        };
        let want_cmb = config.cmb;
        let function = Arc::new(function::VfioFunction::new(dev.clone(), bar.clone()));
        let mut ctrl = Self::build(bar, space.clone(), config, Some(function.clone()), msix)?;
        if want_cmb && ctrl.shared.cap.cmb_supported() {
            if let Some(cmb) = cmb::Cmb::enable(&dev, &*ctrl.shared.regs, &space)? {
                // Let go of with the device when the kernel asks for it.
                function.add_bar(cmb.bar().clone());
                ctrl.shared
                    .cmbmsc
                    .store(cmb.cmbmsc, std::sync::atomic::Ordering::SeqCst);
                ctrl.cmb = Some(Arc::new(cmb));
            }
        }
        Ok(ctrl)
    }

    /// Brings up a controller reached through `regs`, with DMA memory in
    /// `space` (a VFIO container's, or a device model's). `function` is
    /// the PCI function behind it, kept as long as the controller: the
    /// driver clears its bus mastering and resets it when the controller
    /// does not stop. Without one, memory the device might still reach is
    /// never handed back once the controller fails to stop.
    ///
    /// # Safety
    ///
    /// The driver hands the controller device addresses from `space` and
    /// lends it memory by them, so:
    ///
    /// - `space` is a DMA space over the IOMMU that translates the DMA of
    ///   the controller behind `regs` (the container of its VFIO device, a
    ///   device model's IOMMU);
    /// - nothing else drives that controller while the returned
    ///   `Controller` or any of its queue pairs lives (no second
    ///   `Controller` on the same registers);
    /// - `function`, if given, is that controller's PCI function, and its
    ///   methods do what [`PciFunction`] says: the driver relies on it to
    ///   stop the device's DMA before it hands back the memory of requests
    ///   the controller did not complete.
    pub unsafe fn with_backend(
        regs: Arc<dyn Registers>,
        space: Arc<DmaSpace>,
        config: Config,
        function: Option<Arc<dyn PciFunction>>,
    ) -> Result<Self, Error> {
        if config.interrupts {
            return Err(Error::Unsupported(
                "interrupt mode needs interrupt vectors (Controller::open or Controller::with_interrupts)",
            ));
        }
        Self::build(regs, space, config, function, None)
    }

    /// [`with_backend`](Self::with_backend) in interrupt mode: `irqs` are
    /// the controller's interrupt vectors (vector 0 for the admin queue,
    /// vector `q` for I/O queue `q`), which [`QueuePair::wait`] sleeps on.
    ///
    /// # Safety
    ///
    /// As for [`with_backend`](Self::with_backend); and `irqs` are the
    /// vectors of that controller.
    pub unsafe fn with_interrupts(
        regs: Arc<dyn Registers>,
        space: Arc<DmaSpace>,
        config: Config,
        function: Option<Arc<dyn PciFunction>>,
        irqs: Box<dyn Interrupts>,
    ) -> Result<Self, Error> {
        if irqs.vectors() < 2 {
            return Err(Error::Unsupported(
                "interrupt mode needs at least 2 vectors",
            ));
        }
        let config = Config {
            interrupts: true,
            ..config
        };
        Self::build(regs, space, config, function, Some(irqs))
    }

    fn build(
        regs: Arc<dyn Registers>,
        space: Arc<DmaSpace>,
        config: Config,
        function: Option<Arc<dyn PciFunction>>,
        msix: Option<Box<dyn Interrupts>>,
    ) -> Result<Self, Error> {
        let cap_raw = regs.read64(offset::CAP);
        if cap_raw == u64::MAX {
            return Err(Error::DeviceLost);
        }
        let cap = Cap(cap_raw);
        if cap.css() & 1 == 0 {
            return Err(Error::Unsupported("NVM command set not supported"));
        }
        // 4 KiB pages when the controller allows them (every CPU page size
        // the driver runs on is a multiple).
        let page = if cap.mps_min() <= 4096 && 4096 <= cap.mps_max() {
            PageSize::DEFAULT
        } else {
            return Err(Error::Unsupported(
                "4 KiB memory pages not supported (CAP.MPSMIN)",
            ));
        };
        // Every register the driver uses, and the admin queue's doorbells,
        // must be reachable: no access may fail later (I/O queues are
        // limited to the doorbells that are, see `negotiate_queues`).
        let stride = cap.doorbell_stride();
        let needed = [
            (offset::CAP, 8),
            (offset::VS, 4),
            (offset::CC, 4),
            (offset::CSTS, 4),
            (offset::AQA, 4),
            (offset::ASQ, 8),
            (offset::ACQ, 8),
            (regs::sq_tail_doorbell(0, stride), 4),
            (regs::cq_head_doorbell(0, stride), 4),
        ];
        let cmb_regs = [(offset::CMBLOC, 4), (offset::CMBSZ, 4), (cmb::CMBMSC, 8)];
        let needed = needed.iter().chain(
            cap.cmb_supported()
                .then_some(&cmb_regs)
                .into_iter()
                .flatten(),
        );
        if let Some(&(at, _)) = needed.clone().find(|&&(at, w)| !regs.reaches(at, w)) {
            log::error!("BAR 0 does not reach register {at:#x}");
            return Err(Error::Unsupported(
                "BAR 0 does not cover the controller's registers and admin doorbells",
            ));
        }
        stop_left_running(&*regs, cap, function.as_deref())?;
        // On PCIe, CAP.MQES bounds the I/O queues only (the admin queue's
        // limit is AQA's 4096): the admin queue holds the event requests
        // and a command even on a controller of 2-entry I/O queues.
        let entries = ADMIN_ENTRIES;
        let (sq_db, cq_db) = (
            regs::sq_tail_doorbell(0, cap.doorbell_stride()),
            regs::cq_head_doorbell(0, cap.doorbell_stride()),
        );
        let admin = Admin {
            sq: SubmissionQueue::new(&space, entries, sq_db)?,
            cq: CompletionQueue::new(&space, entries, cq_db)?,
            next_cid: 0,
            events: events::Events::default(),
        };
        let shared = Arc::new(Shared {
            regs,
            space,
            cap,
            page,
            admin: std::mem::ManuallyDrop::new(Mutex::new(admin)),
            qids: Mutex::new(Vec::new()),
            state: std::sync::atomic::AtomicU64::new(0),
            config,
            msix,
            function,
            publishers: Mutex::new(Vec::new()),
            cmbmsc: std::sync::atomic::AtomicU64::new(0),
            device_errors: std::sync::atomic::AtomicU64::new(0),
            aer_caps: std::sync::OnceLock::new(),
            error_log_entries: std::sync::OnceLock::new(),
            stops: std::sync::atomic::AtomicU64::new(0),
            dbbuf: std::mem::ManuallyDrop::new(std::sync::OnceLock::new()),
            watcher: Mutex::new(None),
        });
        // Armed now (a request during bring-up is kept by the eventfd),
        // watched once the controller is up: bring-up's own enable is not
        // serialized with a removal.
        let request = arm_removal_notice(&shared);
        shared.enable()?;
        let mut ctrl = Controller {
            shared,
            identify: IdentifyController::default(),
            io_queues: 0,
            cmb: None,
            independent_ns: std::sync::atomic::AtomicBool::new(true),
            nvm: support::NvmSupport::default(),
        };
        ctrl.identify = ctrl.identify_controller()?;
        ctrl.nvm = ctrl.discover_nvm_support()?;
        ctrl.io_queues = ctrl.negotiate_queues()?;
        if ctrl.shared.config.shadow_doorbells && ctrl.identify.oacs() & (1 << 8) != 0 {
            ctrl.setup_shadow_doorbells()?;
        }
        *lock(&ctrl.shared.qids) = vec![false; ctrl.io_queues as usize];
        let caps = (ctrl.identify.aerl(), ctrl.identify.oaes());
        let _ = ctrl.shared.aer_caps.set(caps);
        // ELPE (byte 262, 0's based): Error Information log entries kept.
        let _ = ctrl
            .shared
            .error_log_entries
            .set(ctrl.identify.0[262] as usize + 1);
        ctrl.shared.start_events(caps.0, caps.1, false);
        if let Some(fd) = request {
            watch_removal(&ctrl.shared, fd);
        }
        log::info!(
            "controller up: {} (serial {}, firmware {}), {} I/O queues, {} bytes per command",
            ctrl.identify.model(),
            ctrl.identify.serial(),
            ctrl.identify.firmware(),
            ctrl.io_queues,
            ctrl.max_transfer()
        );
        Ok(ctrl)
    }

    fn identify_controller(&self) -> Result<IdentifyController, Error> {
        let buf = self.shared.admin_read(
            Command::identify(cns::CONTROLLER, 0),
            IDENTIFY_LEN,
            "Identify Controller",
        )?;
        let mut id = IdentifyController::default();
        id.0.copy_from_slice(&buf.as_slice()[..IDENTIFY_LEN]);
        Ok(id)
    }

    /// Asks for `config.io_queues` submission and completion queues; returns
    /// how many the controller granted (the smaller of both counts).
    fn negotiate_queues(&self) -> Result<u16, Error> {
        let want = self.shared.config.io_queues.clamp(1, 0xfffe) as u32 - 1;
        let c = self.shared.admin(
            Command::set_features(feature::NUMBER_OF_QUEUES, want | want << 16),
            None,
            "Set Features (Number of Queues)",
        )?;
        let sq = (c.result & 0xffff) + 1;
        let cq = (c.result >> 16) + 1;
        let granted = sq.min(cq).min(want + 1) as u16;
        // Only queues whose doorbells BAR 0 reaches (a large doorbell
        // stride in a small BAR leaves some out).
        let stride = self.shared.cap.doorbell_stride();
        let regs = &self.shared.regs;
        let usable = (1..=granted)
            .take_while(|&q| {
                regs.reaches(regs::sq_tail_doorbell(q, stride), 4)
                    && regs.reaches(regs::cq_head_doorbell(q, stride), 4)
            })
            .count() as u16;
        if usable < granted {
            log::warn!(
                "the controller grants {granted} I/O queues, but BAR 0 reaches the doorbells \
                 of {usable} only"
            );
        }
        if usable == 0 {
            return Err(Error::Unsupported(
                "BAR 0 does not reach the doorbells of any I/O queue",
            ));
        }
        Ok(usable)
    }

    /// Allocates the shadow doorbell pages and configures them.
    fn setup_shadow_doorbells(&self) -> Result<(), Error> {
        let s = &self.shared;
        let mut shadow = s.space.alloc(4096)?;
        let mut eventidx = s.space.alloc(4096)?;
        shadow.as_mut_slice().fill(0);
        eventidx.as_mut_slice().fill(0);
        let db = DbBuf {
            shadow,
            eventidx,
            stride: s.cap.doorbell_stride(),
        };
        if s.dbbuf.set(db).is_err() {
            return Ok(());
        }
        s.configure_dbbuf()
    }

    /// Whether shadow doorbells are in use.
    pub fn shadow_doorbells(&self) -> bool {
        self.shared.dbbuf.get().is_some()
    }

    /// The Identify Controller data.
    pub fn identify(&self) -> &IdentifyController {
        &self.identify
    }

    /// The controller capabilities.
    pub fn cap(&self) -> Cap {
        self.shared.cap
    }

    /// I/O queues granted by the controller.
    pub fn io_queues(&self) -> u16 {
        self.io_queues
    }

    /// The DMA space buffers are allocated from.
    pub fn space(&self) -> &Arc<DmaSpace> {
        &self.shared.space
    }

    /// A DMA buffer of at least `len` bytes (see [`DmaSpace::alloc`]).
    pub fn dma_alloc(&self, len: usize) -> Result<crate::mem::DmaBuf, Error> {
        self.shared.space.alloc(len)
    }

    /// IDs of the active namespaces, of every enabled command set, in
    /// increasing order (every page of the list).
    pub fn active_namespaces(&self) -> Result<Vec<u32>, Error> {
        self.namespace_list(None)
    }

    /// The Identify Namespace data of `nsid`.
    pub fn identify_namespace(&self, nsid: u32) -> Result<IdentifyNamespace, Error> {
        if nsid == 0 || nsid == u32::MAX {
            return Err(Error::NoNamespace { nsid });
        }
        let r = self.shared.admin_read(
            Command::identify(cns::NAMESPACE, nsid),
            IDENTIFY_LEN,
            "Identify Namespace",
        );
        let buf = match r {
            Err(Error::Command { status, .. }) if status.sct() == 0 && status.sc() == 0x0b => {
                return Err(Error::NoNamespace { nsid })
            }
            r => r?,
        };
        let mut id = IdentifyNamespace::default();
        id.0.copy_from_slice(&buf.as_slice()[..IDENTIFY_LEN]);
        Ok(id)
    }

    /// Namespace `nsid`, if active, of the NVM or Zoned Namespace command
    /// set (see [`namespace_info`](Self::namespace_info), less the command
    /// set independent data). A namespace formatted with metadata opens
    /// with its [`format`](Namespace::format): extended LBAs or a separate
    /// metadata buffer, and protection information of types 1 to 3 with a
    /// 16-bit (CRC-16) or 64-bit (CRC-64) guard; formats with a 32-bit
    /// guard or storage tags are refused ([`Error::MetadataFormat`]).
    pub fn namespace(&self, nsid: u32) -> Result<Namespace, Error> {
        let info = self.describe_namespace(nsid, false)?;
        let command_set = info.command_set;
        let Some(id) = info
            .identify
            .as_ref()
            .filter(|_| matches!(command_set, CommandSet::Nvm | CommandSet::Zoned))
        else {
            return Err(Error::UnsupportedCommandSet { nsid, command_set });
        };
        let f = id.current_lba_format().ok_or(Error::Unsupported(
            "namespace reports no current LBA format",
        ))?;
        let block_size = f.block_size();
        if !(512..=1 << 20).contains(&block_size) {
            return Err(Error::Unsupported("LBA data size outside 512 B to 1 MiB"));
        }
        let guard = match PiType::from_dps(id.dps()) {
            Some(_) if f.metadata != 0 => self.pi_guard(nsid, id.current_format(), f.metadata)?,
            _ => Guard::Crc16,
        };
        let mut format = id.block_format(guard).ok_or(Error::Unsupported(
            "namespace reports no current LBA format",
        ))?;
        if format.metadata == 0 {
            format.pi = None;
            format.extended = false;
        }
        if let Some(pi) = format.pi {
            if (format.metadata as usize) < pi.guard.tuple_len() {
                return Err(Error::MetadataFormat {
                    nsid,
                    metadata: f.metadata,
                    reason: "protection information larger than the metadata",
                });
            }
        }
        Ok(Namespace {
            id: nsid,
            block_size,
            blocks: id.nsze(),
            command_set,
            zones: info.zones(),
            copy: id.copy_limits(),
            fast_blocks: if format.metadata == 0 { id.nsze() } else { 0 },
            format,
        })
    }

    /// The guard of namespace `nsid`'s protection information in LBA
    /// format `index`: from the NVM command set's extended LBA format
    /// where the controller has I/O command sets (16-bit otherwise, the
    /// only one before them).
    fn pi_guard(&self, nsid: u32, index: usize, metadata: u16) -> Result<Guard, Error> {
        if !self.io_command_sets() {
            return Ok(Guard::Crc16);
        }
        let Some(raw) = ns::optional(
            self.identify_namespace_csi(nsid, CommandSet::Nvm),
            "NVM Command Set Identify Namespace",
        )?
        else {
            return Ok(Guard::Crc16);
        };
        let nvm = crate::nvme::iocs::IdentifyNvmNamespace(raw);
        let (sts, pif) = nvm.elbaf(index).unwrap_or((0, 0));
        let refuse = |reason| Error::MetadataFormat {
            nsid,
            metadata,
            reason,
        };
        if sts != 0 {
            return Err(refuse("storage tags are not supported"));
        }
        Guard::from_pif(pif).ok_or_else(|| refuse("a 32-bit guard is not supported"))
    }

    /// The controller's registers as they read now, by name (CAP, VS,
    /// INTMS, INTMC, CC, CSTS, AQA, ASQ, ACQ, CMBLOC, CMBSZ), for display.
    pub fn registers(&self) -> Vec<(&'static str, u64)> {
        let r = &self.shared.regs;
        let mut v: Vec<(&'static str, u64)> = vec![
            ("cap", r.read64(offset::CAP)),
            ("version", u64::from(r.read32(offset::VS))),
            ("intms", u64::from(r.read32(offset::INTMS))),
            ("intmc", u64::from(r.read32(offset::INTMC))),
            ("cc", u64::from(r.read32(offset::CC))),
            ("csts", u64::from(r.read32(offset::CSTS))),
            ("aqa", u64::from(r.read32(offset::AQA))),
            ("asq", r.read64(offset::ASQ)),
            ("acq", r.read64(offset::ACQ)),
        ];
        if self.shared.cap.cmb_supported() {
            v.push(("cmbloc", u64::from(r.read32(offset::CMBLOC))));
            v.push(("cmbsz", u64::from(r.read32(offset::CMBSZ))));
        }
        v
    }

    /// The SMART / Health Information log (controller-wide).
    pub fn smart_log(&self) -> Result<SmartLog, Error> {
        let buf = self.shared.admin_read(
            Command::get_log_page(log_page::SMART, 0xffff_ffff, SMART_LEN as u32),
            4096,
            "Get Log Page (SMART)",
        )?;
        let mut b = [0u8; SMART_LEN];
        b.copy_from_slice(&buf.as_slice()[..SMART_LEN]);
        Ok(SmartLog::parse(&b))
    }

    /// The newest `entries` (1 to 64) Error Information log entries that are
    /// in use.
    pub fn error_log(&self, entries: usize) -> Result<Vec<ErrorLogEntry>, Error> {
        let n = entries.clamp(1, 64);
        let buf = self.shared.admin_read(
            Command::get_log_page(log_page::ERROR, 0xffff_ffff, (n * ERROR_ENTRY_LEN) as u32),
            4096,
            "Get Log Page (Error Information)",
        )?;
        Ok(buf.as_slice()[..n * ERROR_ENTRY_LEN]
            .chunks_exact(ERROR_ENTRY_LEN)
            .filter_map(ErrorLogEntry::parse)
            .filter(|e| e.error_count != 0)
            .collect())
    }

    /// Whether the volatile write cache is enabled: `false` without
    /// asking when the controller has none (Identify VWC), as such a
    /// controller may refuse the feature.
    pub fn write_cache(&self) -> Result<bool, Error> {
        if self.identify.vwc() & 1 == 0 {
            return Ok(false);
        }
        let c = self.shared.admin(
            Command::get_features(feature::VOLATILE_WRITE_CACHE),
            None,
            "Get Features (Volatile Write Cache)",
        )?;
        Ok(c.result & 1 != 0)
    }

    /// Enables or disables the volatile write cache (when present).
    pub fn set_write_cache(&self, on: bool) -> Result<(), Error> {
        if self.identify.vwc() & 1 == 0 {
            return Err(Error::Unsupported("no volatile write cache"));
        }
        self.shared
            .admin(
                Command::set_features(feature::VOLATILE_WRITE_CACHE, on as u32),
                None,
                "Set Features (Volatile Write Cache)",
            )
            .map(drop)
    }

    /// Asks the controller to abort command `cid` on submission queue
    /// `sqid`. Returns whether it was aborted (Abort's dword 0, bit 0 clear);
    /// the command itself then completes with "Command Abort Requested".
    pub fn abort(&self, sqid: u16, cid: u16) -> Result<bool, Error> {
        let c = self
            .shared
            .admin(Command::abort(sqid, cid), None, "Abort")?;
        Ok(c.result & 1 == 0)
    }

    /// The asynchronous events the controller reported since the last
    /// call, oldest first (SMART/health warnings such as a temperature
    /// threshold crossed, namespace attribute changes, error log entries).
    /// The driver keeps Asynchronous Event Requests outstanding
    /// ([`Config::async_events`]) and sends a new one for each event; this
    /// call collects what completed, without waiting for events (it may
    /// wait for an admin command another thread is running). Events that
    /// arrived while another admin command ran are kept for it too.
    ///
    /// For a notice the driver reads the log page the controller named
    /// (for a namespace attribute change, the Changed Namespace List),
    /// which is what makes the controller report the next one: after a
    /// namespace attribute notice, [`active_namespaces`](Self::active_namespaces)
    /// and [`namespace`](Self::namespace) show the change.
    pub fn poll_events(&self) -> Result<Vec<AsyncEvent>, Error> {
        self.shared.poll_events()
    }

    /// Set Features: sets feature `fid` to `value` (Command Dword 11) and
    /// returns the completion's dword 0.
    pub fn set_features(&self, fid: u8, value: u32) -> Result<u32, Error> {
        self.shared
            .admin(Command::set_features(fid, value), None, "Set Features")
            .map(|c| c.result)
    }

    /// Get Features: the current value of feature `fid` (the completion's
    /// dword 0).
    pub fn get_features(&self, fid: u8) -> Result<u32, Error> {
        self.shared
            .admin(Command::get_features(fid), None, "Get Features")
            .map(|c| c.result)
    }

    /// Largest transfer of one command in bytes (from MDTS; 1 MiB when the
    /// controller sets no limit).
    pub fn max_transfer(&self) -> u64 {
        // MDTS is the device's word: a shift past 1 MiB (or past 64 bits)
        // is no limit below 1 MiB.
        match self.identify.mdts() {
            0 => 1 << 20,
            m => {
                // CAP.MPSMIN is a power of two.
                let shift = self.shared.cap.mps_min().trailing_zeros() + u32::from(m);
                1 << shift.min(20)
            }
        }
    }

    /// Resets the controller (also what recovery does after a command that
    /// cannot be aborted or a fatal controller status). Requests in flight on
    /// every queue pair complete with [`Error::Reset`]; each queue pair
    /// recreates its queues at its next call, and I/O continues.
    pub fn reset(&self) -> Result<(), Error> {
        self.shared.reset()
    }

    /// Size of the controller memory buffer in use, if any.
    pub fn cmb_len(&self) -> Option<u64> {
        self.cmb.as_ref().map(|c| c.len())
    }

    /// A buffer of at least `len` bytes in the controller memory buffer.
    pub fn cmb_alloc(&self, len: usize) -> Result<CmbBuf, Error> {
        let cmb = self
            .cmb
            .as_ref()
            .ok_or(Error::Unsupported("no controller memory buffer in use"))?;
        CmbBuf::alloc(cmb, len)
    }

    /// Creates an I/O queue pair for the calling thread.
    pub fn queue_pair(&self, config: QueueConfig) -> Result<QueuePair, Error> {
        QueuePair::create(self, config)
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn alloc_qid(&self) -> Result<u16, Error> {
        let mut q = lock(&self.shared.qids);
        let i = q.iter().position(|used| !used).ok_or(Error::NoQueues {
            max: self.io_queues,
        })?;
        q[i] = true;
        Ok(i as u16 + 1)
    }
}

/// Arms the notice of the device's owner asking for it back (see
/// [`unplug`]), when the PCI function has one.
fn arm_removal_notice(shared: &shared::Shared) -> Option<std::os::fd::OwnedFd> {
    let f = shared.function.as_ref()?;
    match f.request_notifier() {
        Ok(fd) => fd,
        Err(e) => {
            log::warn!(
                "device request interrupt unavailable: {e}; \
                 a removal is noticed only when the device stops answering"
            );
            None
        }
    }
}

/// Starts the thread that waits on `request` (see [`unplug`]).
fn watch_removal(shared: &Arc<shared::Shared>, request: std::os::fd::OwnedFd) {
    match unplug::Watcher::start(Arc::downgrade(shared), request) {
        Ok(w) => *lock(&shared.watcher) = Some(w),
        Err(e) => log::warn!(
            "cannot start the thread waiting for device removal: {e}; \
             a removal is noticed only when the device stops answering"
        ),
    }
}

/// Bring-up, before anything is mapped for the device or bus mastering is
/// on (as Linux's nvme driver does): bus mastering off, and a controller
/// left enabled (by an earlier user, or a process that died) is disabled
/// and waited for, bounded by CAP.TO; one that does not stop is reset
/// (function level reset) and waited for again.
fn stop_left_running(
    regs: &dyn Registers,
    cap: Cap,
    function: Option<&dyn PciFunction>,
) -> Result<(), Error> {
    if let Some(f) = function {
        f.set_bus_master(false)?;
    }
    let limit = Duration::from_millis(cap.timeout_ms().max(500));
    let stopped = || -> Result<bool, Error> {
        let start = Instant::now();
        loop {
            let csts = regs.read32(offset::CSTS);
            if csts == u32::MAX {
                return Err(Error::DeviceLost);
            }
            if regs::Csts(csts).ready() {
                if start.elapsed() > limit {
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_micros(200));
            } else {
                return Ok(true);
            }
        }
    };
    let cc = Cc(regs.read32(offset::CC));
    if cc.enabled() {
        log::info!("controller found enabled: disabling it first");
        regs.write32(offset::CC, cc.with_enable(false).0);
    }
    if stopped()? {
        return Ok(());
    }
    log::warn!("controller does not become not-ready after CC.EN = 0: resetting the function");
    match function {
        Some(f) if f.function_reset()? => {
            if stopped()? {
                return Ok(());
            }
            Err(Error::Timeout {
                what: "CSTS.RDY = 0 after a function level reset",
                ms: limit.as_millis() as u64,
            })
        }
        _ => Err(Error::Timeout {
            what: "CSTS.RDY = 0 (and no function level reset available)",
            ms: limit.as_millis() as u64,
        }),
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        // Queue pairs may outlive the controller (they hold the shared
        // state): it is closed for good, so none of them can enable it
        // again, and what they have in flight fails once the device is
        // stopped.
        let shared = &self.shared;
        let cmb = self.cmb.is_some();
        shared.close(|| {
            let r = &shared.regs;
            if cmb {
                // Leave no CMB address window behind for the next user.
                r.write64(cmb::CMBMSC, 0);
            }
            let cc = Cc(r.read32(offset::CC));
            r.write32(offset::CC, cc.with_shutdown(Shutdown::Normal).0);
            let start = Instant::now();
            while start.elapsed() < SHUTDOWN_TIMEOUT {
                match shared.csts() {
                    Ok(c) if c.shutdown_status() == ShutdownStatus::Complete => return,
                    Ok(_) => std::thread::sleep(Duration::from_micros(500)),
                    Err(_) => return,
                }
            }
            log::warn!("controller shutdown did not complete in {SHUTDOWN_TIMEOUT:?}");
        });
    }
}
