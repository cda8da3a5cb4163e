//! The public face of the software controller: construction, the register
//! file for the driver, fault injection controls, statistics and the test
//! helpers that read and write namespace contents directly.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::JoinHandle;

use nvme_vfio::ctrl::PciFunction;
use nvme_vfio::nvme::cmd::Command;
use nvme_vfio::nvme::regs::Registers;

use crate::config::Config;
use crate::device::Device;
use crate::fault::{FaultAction, FaultPlan, FaultRule};
use crate::iommu::SimIommu;
use crate::regs::{csts, RegisterFile};
use crate::storage::Namespace;
use crate::Error;

/// Counters the worker keeps.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) commands: AtomicU64,
    pub(crate) admin_commands: AtomicU64,
    pub(crate) io_commands: AtomicU64,
    pub(crate) read_commands: AtomicU64,
    pub(crate) write_commands: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) inline_nanos: AtomicU64,
    pub(crate) function_resets: AtomicU64,
    pub(crate) bus_master_changes: AtomicU64,
}

/// A snapshot of what the controller has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Commands fetched from any submission queue.
    pub commands: u64,
    /// Admin commands executed.
    pub admin_commands: u64,
    /// I/O commands executed.
    pub io_commands: u64,
    /// Successful Read commands.
    pub read_commands: u64,
    /// Successful Write commands.
    pub write_commands: u64,
    /// Bytes read by successful Reads.
    pub bytes_read: u64,
    /// Bytes written by successful Writes.
    pub bytes_written: u64,
    /// Nanoseconds the device ran on the driver's threads (inline mode,
    /// [`Config::inline`](crate::Config::inline)): what to subtract from
    /// their CPU time to get the driver's own.
    pub inline_nanos: u64,
    /// Faults injected.
    pub faults_injected: u64,
    /// Function level resets requested through the PCI function
    /// ([`SimController::pci_function`]), including those the device
    /// ignored ([`SimController::set_ignore_flr`]).
    pub function_resets: u64,
    /// Changes of Bus Master Enable through the PCI function (writes that
    /// set it to the value it had do not count; neither does a function
    /// level reset clearing it).
    pub bus_master_changes: u64,
}

/// State shared by the controller handle, the register file's users and
/// the worker.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) regs: Arc<RegisterFile>,
    pub(crate) iommu: Arc<SimIommu>,
    pub(crate) namespaces: Vec<Namespace>,
    faults: Mutex<FaultPlan>,
    pub(crate) faults_armed: AtomicBool,
    pub(crate) never_ready: AtomicBool,
    pub(crate) release_held: AtomicBool,
    pub(crate) stop: AtomicBool,
    pub(crate) stats: Counters,
    /// Interrupt vectors, once the driver asked for them.
    pub(crate) irqs: std::sync::OnceLock<Arc<crate::irq::SimInterrupts>>,
    /// CC.EN 1 -> 0 is not acted on (a fault).
    pub(crate) ignore_disable: AtomicBool,
    /// Function level resets do nothing (a fault).
    pub(crate) ignore_flr: AtomicBool,
    /// PCI Bus Master Enable: while clear the device does no DMA. Written
    /// with the device locked, so a pass in progress finishes first.
    pub(crate) bus_master: AtomicBool,
    /// The device, for the PCI function's resets (gone once the controller
    /// is dropped).
    device: OnceLock<Weak<Mutex<Device>>>,
    /// The device request eventfd, once the driver asked for it.
    request: OnceLock<std::fs::File>,
    /// What the device was like when the driver let go of it.
    released: Mutex<Option<Released>>,
}

impl Shared {
    pub(crate) fn new(config: Config, iommu: Option<Arc<SimIommu>>) -> Result<Arc<Self>, Error> {
        config.validate()?;
        let regs = RegisterFile::new(config.cap(), config.stride(), config.max_io_queues);
        Ok(Arc::new(Self {
            iommu: iommu.unwrap_or_else(|| Arc::new(SimIommu::new(config.iommu.clone()))),
            namespaces: config
                .namespace_ids()
                .into_iter()
                .zip(&config.namespaces)
                .map(|(id, &n)| Namespace::new(id, n))
                .collect(),
            regs: Arc::new(regs),
            config,
            faults: Mutex::new(FaultPlan::default()),
            faults_armed: AtomicBool::new(false),
            never_ready: AtomicBool::new(false),
            release_held: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            stats: Counters::default(),
            irqs: std::sync::OnceLock::new(),
            ignore_disable: AtomicBool::new(false),
            ignore_flr: AtomicBool::new(false),
            bus_master: AtomicBool::new(true),
            device: OnceLock::new(),
            request: OnceLock::new(),
            released: Mutex::new(None),
        }))
    }

    fn faults(&self) -> MutexGuard<'_, FaultPlan> {
        // The plan is updated in single steps: poisoning leaves it usable.
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fault action for a fetched command, if a rule fires.
    pub(crate) fn fault_check(&self, sqid: u16, cmd: &Command) -> Option<FaultAction> {
        let mut plan = self.faults();
        let action = plan.check(sqid, cmd);
        if plan.is_empty() {
            self.faults_armed.store(false, Ordering::Release);
        }
        action
    }

    /// Runs `f` with the device locked (`None` once the controller is
    /// dropped): between two of its passes, never in the middle of one.
    fn with_device<R>(&self, f: impl FnOnce(Option<&mut Device>) -> R) -> R {
        match self.device.get().and_then(Weak::upgrade) {
            Some(dev) => {
                let mut d = crate::device::lock(&dev);
                f(Some(&mut d))
            }
            None => f(None),
        }
    }

    /// Sets or clears Bus Master Enable. Clearing it waits for the device's
    /// pass in progress: once it returns the device does no more DMA.
    fn set_bus_master(&self, on: bool) {
        let was = self.with_device(|_| self.bus_master.swap(on, Ordering::AcqRel));
        if was != on {
            self.stats
                .bus_master_changes
                .fetch_add(1, Ordering::Relaxed);
            log::debug!("bus mastering {}", if on { "on" } else { "off" });
        }
        self.regs.kick();
    }

    /// Function level reset (unless ignored): see [`PciFunction`].
    fn function_reset(&self) {
        self.stats.function_resets.fetch_add(1, Ordering::Relaxed);
        if self.ignore_flr.load(Ordering::Acquire) {
            log::debug!("ignore-FLR fault: function level reset not acted on");
            return;
        }
        self.with_device(|d| {
            match d {
                Some(d) => d.function_reset(),
                None => self.regs.function_reset(),
            }
            self.bus_master.store(false, Ordering::Release);
        });
        log::debug!("function level reset");
        self.regs.kick();
    }
}

/// The PCI function of a software controller (see
/// [`SimController::pci_function`]).
#[derive(Debug)]
struct SimFunction {
    shared: Arc<Shared>,
}

impl SimFunction {
    /// Config space of a removed device does not answer.
    fn present(&self) -> Result<(), nvme_vfio::Error> {
        if self.shared.regs.removed.load(Ordering::Acquire) {
            Err(nvme_vfio::Error::DeviceLost)
        } else {
            Ok(())
        }
    }
}

/// The device's state when the driver let go of it
/// ([`SimController::released`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    /// Bus Master Enable was set: the device could still have done DMA.
    pub bus_master: bool,
    /// CSTS.RDY was set: the controller was still enabled.
    pub ready: bool,
}

impl PciFunction for SimFunction {
    fn set_bus_master(&self, enable: bool) -> Result<(), nvme_vfio::Error> {
        self.present()?;
        self.shared.set_bus_master(enable);
        Ok(())
    }

    fn bus_master(&self) -> Result<bool, nvme_vfio::Error> {
        self.present()?;
        Ok(self.shared.bus_master.load(Ordering::Acquire))
    }

    fn function_reset(&self) -> Result<bool, nvme_vfio::Error> {
        self.present()?;
        self.shared.function_reset();
        Ok(true)
    }

    fn request_notifier(&self) -> Result<Option<std::os::fd::OwnedFd>, nvme_vfio::Error> {
        self.present()?;
        let fd = match self.shared.request.get() {
            Some(f) => f,
            None => {
                // SAFETY: eventfd(2) with no pointer arguments; the result
                // is a new descriptor or -1.
                let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
                if fd < 0 {
                    return Err(nvme_vfio::Error::Unsupported("eventfd creation failed"));
                }
                // SAFETY: `fd` is new and owned by nothing else.
                let f = std::fs::File::from(unsafe {
                    <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
                });
                self.shared.request.get_or_init(|| f)
            }
        };
        let dup = fd
            .try_clone()
            .map_err(|_| nvme_vfio::Error::Unsupported("eventfd duplication failed"))?;
        Ok(Some(dup.into()))
    }

    fn release(&self) {
        let state = Released {
            bus_master: self.shared.bus_master.load(Ordering::Acquire),
            ready: self.shared.regs.read32(nvme_vfio::nvme::regs::offset::CSTS) & 1 != 0,
        };
        log::debug!("the driver let go of the device: {state:?}");
        *self
            .shared
            .released
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(state);
        // Gone from the driver's view: registers read all ones.
        self.shared.regs.removed.store(true, Ordering::Release);
        self.shared.regs.kick();
    }
}

/// An in-process software NVMe controller.
///
/// The driver reaches it through [`registers`](Self::registers) (BAR0) and
/// does DMA through [`iommu`](Self::iommu); a worker thread plays the
/// device. Dropping the controller stops the worker; the register file
/// stays usable (as a dead device whose doorbells go nowhere) as long as
/// the driver holds it.
#[derive(Debug)]
pub struct SimController {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

impl SimController {
    /// A controller with its own IOMMU (configured by `config.iommu`).
    pub fn new(config: Config) -> Result<Self, Error> {
        Self::start(Shared::new(config, None)?)
    }

    /// A controller doing DMA through `iommu`, which the caller shares with
    /// its DMA memory.
    pub fn with_iommu(config: Config, iommu: Arc<SimIommu>) -> Result<Self, Error> {
        Self::start(Shared::new(config, Some(iommu))?)
    }

    fn start(shared: Arc<Shared>) -> Result<Self, Error> {
        let sh = Arc::clone(&shared);
        let dev = Arc::new(Mutex::new(Device::new(Arc::clone(&sh))));
        let _ = sh.device.set(Arc::downgrade(&dev));
        if sh.config.inline {
            sh.regs.set_inline(Arc::downgrade(&dev));
        }
        let worker = std::thread::Builder::new()
            .name("nvme-sim".into())
            .spawn(move || {
                sh.regs.set_worker(std::thread::current());
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    crate::device::run(&dev, &sh)
                }));
                if r.is_err() {
                    log::error!("nvme-sim worker panicked; raising CSTS.CFS");
                    sh.regs.update_csts(csts::CFS, 0);
                }
            })
            .map_err(Error::Spawn)?;
        Ok(Self {
            shared,
            worker: Some(worker),
        })
    }

    /// The controller's interrupt vectors (`vectors` eventfds, created on
    /// the first call; later calls return the same ones): from now on a
    /// completion posted to a queue created with interrupts enabled
    /// signals its vector. For the driver's interrupt mode
    /// (`Controller::with_interrupts`).
    pub fn interrupts(&self, vectors: usize) -> Result<Arc<crate::irq::SimInterrupts>, Error> {
        if let Some(i) = self.shared.irqs.get() {
            return Ok(i.clone());
        }
        let i = Arc::new(crate::irq::SimInterrupts::new(vectors)?);
        Ok(self.shared.irqs.get_or_init(|| i).clone())
    }

    /// Surprise removal: the device leaves the bus. Its registers read all
    /// ones and drop writes, its config space does not answer (the PCI
    /// function's calls fail), and it does no more DMA (what it held is
    /// lost with it).
    pub fn surprise_remove(&self) {
        self.shared.set_bus_master(false);
        self.shared.regs.removed.store(true, Ordering::Release);
        self.shared.regs.kick();
    }

    /// The device's owner asks for it back, as the kernel does through
    /// VFIO's device request interrupt before a hot unplug: signals the
    /// eventfd the driver got from the PCI function's
    /// `request_notifier`. Returns whether the driver had asked for one.
    pub fn request_removal(&self) -> bool {
        let Some(f) = self.shared.request.get() else {
            return false;
        };
        use std::io::Write;
        (&*f).write_all(&1u64.to_ne_bytes()).is_ok()
    }

    /// The device's state when the driver let go of it (its PCI
    /// function's `release`), or `None` if it has not. After the release
    /// the registers read all ones.
    pub fn released(&self) -> Option<Released> {
        *self
            .shared
            .released
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// BAR0, for the driver.
    pub fn registers(&self) -> Arc<dyn Registers> {
        self.shared.regs.clone()
    }

    /// The IOMMU the controller's DMA goes through.
    pub fn iommu(&self) -> &Arc<SimIommu> {
        &self.shared.iommu
    }

    /// The PCI function the controller lives in, for the driver
    /// ([`Controller::with_backend`](nvme_vfio::ctrl::Controller::with_backend)):
    ///
    /// - **Bus Master Enable** (set at start): while it is clear the device
    ///   issues no memory requests at all: it fetches no commands, moves no
    ///   data and writes no completions; commands wait (in their
    ///   submission queues, or inside the controller with their timers
    ///   stopped) until it is set again. Clearing it returns once the
    ///   device has finished the pass it was in: no DMA follows.
    /// - **Function level reset** returns `Ok(true)` once the controller is
    ///   back in its power-on state: every command it holds or schedules is
    ///   dropped (those that would survive a controller reset too), CC,
    ///   CSTS (RDY, CFS, SHST), AQA, ASQ, ACQ and the doorbells are zero, CC
    ///   writes not yet acted on are discarded and Bus Master Enable is
    ///   clear. It takes even while [`set_ignore_disable`](Self::set_ignore_disable)
    ///   is on; with [`set_ignore_flr`](Self::set_ignore_flr) it does
    ///   nothing but still returns `Ok(true)`.
    ///
    /// The handle shares the controller's state and stays usable after the
    /// controller is dropped (a dead device: resets then only reset the
    /// registers).
    pub fn pci_function(&self) -> Arc<dyn PciFunction> {
        Arc::new(SimFunction {
            shared: Arc::clone(&self.shared),
        })
    }

    /// Whether Bus Master Enable is set.
    pub fn bus_master(&self) -> bool {
        self.shared.bus_master.load(Ordering::Acquire)
    }

    /// While set, the controller does not act on CC.EN 1 -> 0: CSTS.RDY
    /// stays 1 and it goes on fetching and executing commands, running
    /// delayed and held ones and doing their DMA, with its queues as they
    /// were (CC reads back as written; a later CC.EN = 1 is no transition).
    /// Only clearing Bus Master Enable stops its DMA, and only a function
    /// level reset stops it. Clearing the switch makes the controller act
    /// on CC as it is then (a reset if CC.EN is 0).
    pub fn set_ignore_disable(&self, on: bool) {
        let was = self.shared.ignore_disable.swap(on, Ordering::AcqRel);
        if was && !on {
            self.shared.regs.replay_cc();
        }
    }

    /// While set, a function level reset through
    /// [`pci_function`](Self::pci_function) does nothing (it is counted in
    /// [`Stats::function_resets`] and reports success, `Ok(true)`): the
    /// device keeps its state, its commands and Bus Master Enable.
    pub fn set_ignore_flr(&self, on: bool) {
        self.shared.ignore_flr.store(on, Ordering::Release);
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The doorbell stride in bytes (`4 << CAP.DSTRD`).
    pub fn doorbell_stride(&self) -> u64 {
        self.shared.config.stride()
    }

    /// Adds a fault injection rule; it sees commands fetched from now on.
    pub fn inject(&self, rule: FaultRule) {
        self.shared.faults().add(rule);
        self.shared.faults_armed.store(true, Ordering::Release);
    }

    /// Removes every fault injection rule.
    pub fn clear_faults(&self) {
        self.shared.faults().clear();
        self.shared.faults_armed.store(false, Ordering::Release);
    }

    /// Reseeds the generator random rules draw from.
    pub fn seed_faults(&self, seed: u64) {
        self.shared.faults().reseed(seed);
    }

    /// Executes and completes every command held back by
    /// [`FaultAction::HoldBack`] now.
    pub fn release_held(&self) {
        self.shared.release_held.store(true, Ordering::Release);
        self.shared.regs.kick();
    }

    /// While set, CC.EN = 1 never sets CSTS.RDY (applies to enables from now
    /// on).
    pub fn set_never_ready(&self, on: bool) {
        self.shared.never_ready.store(on, Ordering::Release);
    }

    /// Raises CSTS.CFS now: the controller stops processing commands until
    /// the driver resets it (CC.EN 1 -> 0).
    pub fn raise_fatal(&self) {
        self.shared.regs.update_csts(csts::CFS, 0);
        self.shared.regs.kick();
    }

    /// What the controller has done so far.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            commands: l(&c.commands),
            admin_commands: l(&c.admin_commands),
            io_commands: l(&c.io_commands),
            read_commands: l(&c.read_commands),
            write_commands: l(&c.write_commands),
            bytes_read: l(&c.bytes_read),
            bytes_written: l(&c.bytes_written),
            inline_nanos: l(&c.inline_nanos),
            faults_injected: self.shared.faults().fired(),
            function_resets: l(&c.function_resets),
            bus_master_changes: l(&c.bus_master_changes),
        }
    }

    /// Bytes of memory the namespaces hold (they are sparse: unwritten and
    /// deallocated blocks take none).
    pub fn resident_bytes(&self) -> u64 {
        self.shared.namespaces.iter().map(Namespace::resident).sum()
    }

    /// Namespace `nsid`'s size in blocks and block size, if it exists
    /// (attached or not).
    pub fn namespace(&self, nsid: u32) -> Option<(u64, u32)> {
        self.ns(nsid).map(|n| (n.blocks, n.block_size))
    }

    /// Attaches namespace `nsid` (configured detached, or detached since):
    /// its ID becomes active, it is added to the Changed Namespace List
    /// log page, and a Namespace Attribute Changed event is reported (see
    /// [`detach_namespace`](Self::detach_namespace)). Attaching an
    /// attached namespace changes nothing.
    pub fn attach_namespace(&self, nsid: u32) -> Result<(), Error> {
        self.set_attached(nsid, true)
    }

    /// Detaches namespace `nsid`: its ID becomes inactive (commands to it
    /// fail with Invalid Namespace or Format; its blocks are kept for a
    /// later attach), and the change is reported as for
    /// [`attach_namespace`](Self::attach_namespace).
    ///
    /// The event is an Asynchronous Event Request completing with a notice
    /// (type 2), Namespace Attribute Changed (information 0), log page
    /// 04h, if the host enabled such notices (Asynchronous Event
    /// Configuration bit 8); once reported, further ones are masked until
    /// the host reads the Changed Namespace List log page (without Retain
    /// Asynchronous Event), as the specification has it, and what changed
    /// meanwhile is in that log.
    pub fn detach_namespace(&self, nsid: u32) -> Result<(), Error> {
        self.set_attached(nsid, false)
    }

    fn set_attached(&self, nsid: u32, on: bool) -> Result<(), Error> {
        let ns = self.ns(nsid).ok_or(Error::NoNamespace { nsid })?;
        self.shared.with_device(|d| {
            if ns.set_attached(on) != on {
                log::debug!(
                    "namespace {nsid} {}",
                    if on { "attached" } else { "detached" }
                );
                if let Some(d) = d {
                    d.namespace_changed(nsid);
                }
            }
        });
        self.shared.regs.kick();
        Ok(())
    }

    /// Namespace `nsid`, attached or not.
    fn ns(&self, nsid: u32) -> Option<&Namespace> {
        self.shared.namespaces.iter().find(|n| n.id == nsid)
    }

    /// The byte offset of `len` bytes at block `lba` of namespace `nsid`.
    fn extent(&self, nsid: u32, lba: u64, len: usize) -> Result<(&Namespace, u64), Error> {
        let ns = self.ns(nsid).ok_or(Error::NoNamespace { nsid })?;
        let off = lba.checked_mul(ns.block_size as u64);
        match off {
            Some(off) if off.checked_add(len as u64).is_some_and(|e| e <= ns.bytes()) => {
                Ok((ns, off))
            }
            _ => Err(Error::OutOfRange { nsid, lba, len }),
        }
    }

    /// Puts the zone of zoned namespace `nsid` that starts at `zslba` in
    /// `state`, as the device's own doing: Read Only or Offline (worn out
    /// media, which no command brings about), or any other state for a
    /// test's setup (resources taken or released without limits).
    pub fn set_zone_state(
        &self,
        nsid: u32,
        zslba: u64,
        state: nvme_vfio::nvme::zns::ZoneState,
    ) -> Result<(), Error> {
        let ns = self.ns(nsid).ok_or(Error::NoNamespace { nsid })?;
        let zones = ns.zoned.as_ref().ok_or(Error::NoNamespace { nsid })?;
        match zones.set_state(zslba, state) {
            true => Ok(()),
            false => Err(Error::OutOfRange {
                nsid,
                lba: zslba,
                len: 0,
            }),
        }
    }

    /// The open and active zones of zoned namespace `nsid` now, if it is
    /// one.
    pub fn zone_resources(&self, nsid: u32) -> Option<(u32, u32)> {
        self.ns(nsid)?.zoned.as_ref().map(|z| z.resources())
    }

    /// Test helper: copies `buf.len()` bytes of namespace `nsid` from the
    /// start of block `lba`, as stored (not through the queues).
    pub fn read_blocks(&self, nsid: u32, lba: u64, buf: &mut [u8]) -> Result<(), Error> {
        let (ns, off) = self.extent(nsid, lba, buf.len())?;
        ns.read(off, buf);
        Ok(())
    }

    /// Test helper: stores `data` in namespace `nsid` from the start of
    /// block `lba` (not through the queues).
    pub fn write_blocks(&self, nsid: u32, lba: u64, data: &[u8]) -> Result<(), Error> {
        let (ns, off) = self.extent(nsid, lba, data.len())?;
        ns.write(off, data);
        Ok(())
    }

    /// Test helper: copies the stored metadata of namespace `nsid`'s blocks
    /// from `lba` into `buf` (a whole number of blocks' metadata; all FFh
    /// for blocks never written).
    pub fn read_metadata(&self, nsid: u32, lba: u64, buf: &mut [u8]) -> Result<(), Error> {
        let ns = self.ns(nsid).ok_or(Error::NoNamespace { nsid })?;
        let ms = usize::from(ns.metadata);
        let whole = ms > 0 && buf.len() % ms == 0;
        if !whole || !ns.contains(lba, (buf.len() / ms) as u64) {
            return Err(Error::OutOfRange {
                nsid,
                lba,
                len: buf.len(),
            });
        }
        ns.read_meta(lba, buf);
        Ok(())
    }

    /// Fault injection: damages block `lba` of namespace `nsid` as the
    /// medium might, inverting every bit of the byte at `offset`, counted
    /// over the block's data and then its metadata (`offset` below the
    /// block size is a data byte, from there on a metadata byte). A later
    /// Read, Compare or Verify that checks the block's protection
    /// information then finds its guard (a data byte, or metadata covered
    /// by it), application tag or reference tag wrong, as the byte says.
    /// Fails if the block or the offset does not exist.
    pub fn corrupt(&self, nsid: u32, lba: u64, offset: usize) -> Result<(), Error> {
        let ns = self.ns(nsid).ok_or(Error::NoNamespace { nsid })?;
        let bs = ns.block_size as usize;
        if !ns.contains(lba, 1) || offset >= bs + usize::from(ns.metadata) {
            return Err(Error::OutOfRange {
                nsid,
                lba,
                len: offset + 1,
            });
        }
        let (mut data, mut meta) = ns.load(lba, 1);
        match offset.checked_sub(bs) {
            None => data[offset] ^= 0xff,
            Some(m) => meta[m] ^= 0xff,
        }
        // As stored, not as written: the uncorrectable mark stays.
        let bad = ns.first_uncorrectable(lba, 1).is_some();
        ns.store(lba, &data, &meta);
        if bad {
            ns.mark_uncorrectable(lba, 1);
        }
        Ok(())
    }
}

/// The controller is also its own BAR0, for tests that poke registers.
impl Registers for SimController {
    fn read32(&self, offset: u64) -> u32 {
        self.shared.regs.read32(offset)
    }
    fn write32(&self, offset: u64, value: u32) {
        self.shared.regs.write32(offset, value)
    }
    fn read64(&self, offset: u64) -> u64 {
        self.shared.regs.read64(offset)
    }
    fn write64(&self, offset: u64, value: u64) {
        self.shared.regs.write64(offset, value)
    }
}

impl Drop for SimController {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.regs.kick();
        if let Some(w) = self.worker.take() {
            // The worker checks `stop` before sleeping; a kick wakes it.
            w.thread().unpark();
            if w.join().is_err() {
                log::error!("nvme-sim worker ended with a panic");
            }
        }
    }
}
