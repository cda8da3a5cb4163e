//! State a controller shares with its queue pairs: registers, DMA space,
//! the admin queue (commands serialized through its mutex), enable/disable
//! bounded by CAP.TO, reset with its generation counter, and the shadow
//! doorbell pages.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{cmb, Config};
use crate::mem::DmaSpace;
use crate::nvme::cmd::{admin, feature, Command, Completion};
use crate::nvme::queue::{CompletionQueue, Shadow, SubmissionQueue};
use crate::nvme::regs::{self, offset, Aqa, Cap, Cc, Csts, Registers};
use crate::nvme::spec::{DataPtr, PageSize};
use crate::Error;

/// The admin queue pair; commands are serialized through its mutex.
#[derive(Debug)]
pub(super) struct Admin {
    pub(super) sq: SubmissionQueue,
    pub(super) cq: CompletionQueue,
    pub(super) next_cid: u16,
}

/// State shared by the controller and its queue pairs.
pub(crate) struct Shared {
    pub(super) regs: Arc<dyn Registers>,
    pub(super) space: Arc<DmaSpace>,
    pub(super) cap: Cap,
    pub(super) page: PageSize,
    pub(super) admin: Mutex<Admin>,
    /// I/O queue IDs in use (index = qid - 1).
    pub(super) qids: Mutex<Vec<bool>>,
    /// The reset generation and two flags in one word, so that a
    /// submission checks all three with one load: bits 63:2 count the
    /// controller resets (queue pairs compare them with their own to notice
    /// that their queues are gone), [`RESETTING`] says that a reset is in
    /// progress (new requests fail with the retryable [`Error::Reset`]),
    /// [`DISABLED`] that the controller is stopped.
    pub(super) state: std::sync::atomic::AtomicU64,
    pub(super) config: Config,
    /// MSI-X vectors in interrupt mode: vector `qid` serves I/O queue `qid`.
    pub(crate) msix: Option<crate::vfio::Msix>,
    /// The PCI function, to stop DMA when the controller does not stop
    /// (and, for VFIO, what keeps the device and its BAR mapping open).
    #[allow(dead_code)]
    pub(super) function: Option<Arc<dyn super::PciFunction>>,
    /// One flag per queue pair, set while it publishes commands: a reset
    /// waits for publications in progress (see [`Shared::reset`]).
    pub(super) publishers: Mutex<Vec<Arc<Publishing>>>,
    /// CMBMSC to program at every enable (0: no CMB in use).
    pub(super) cmbmsc: std::sync::atomic::AtomicU64,
    /// Shadow doorbell and EventIdx pages, once configured.
    pub(crate) dbbuf: std::sync::OnceLock<DbBuf>,
}

/// Set while a queue pair writes its submission doorbell
/// ([`QueuePair::flush`](super::QueuePair::flush)), on a cache line of its
/// own.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Publishing(pub(crate) std::sync::atomic::AtomicBool);

/// Longest a reset waits for a queue pair to finish publishing (a thread
/// descheduled in the middle of it).
const PUBLISH_WAIT: Duration = Duration::from_secs(1);

/// How long a reset waits, once queue pairs have stopped publishing
/// commands, before it disables the controller.
const RESET_GRACE: Duration = Duration::from_millis(10);

/// [`Shared::state`]: a reset is in progress.
const RESETTING: u64 = 1;
/// [`Shared::state`]: the controller is stopped.
const DISABLED: u64 = 2;
/// [`Shared::state`]: one reset generation.
const GENERATION: u64 = 4;

/// The two pages of Doorbell Buffer Config.
#[derive(Debug)]
pub(crate) struct DbBuf {
    pub(super) shadow: crate::mem::DmaBuf,
    pub(super) eventidx: crate::mem::DmaBuf,
    pub(super) stride: u64,
}

impl DbBuf {
    /// The shadow slots of queue `qid`'s SQ tail (`sq`) or CQ head doorbell.
    pub(crate) fn slot(&self, qid: u16, sq: bool, always_mmio: bool) -> Option<Shadow> {
        let at = (2 * qid as u64 + u64::from(!sq)) * self.stride;
        if at + 4 > self.shadow.len() as u64 {
            return None;
        }
        let at = at as usize;
        // SAFETY: `at + 4` is inside each 4 KiB page (checked).
        let db = unsafe { core::ptr::NonNull::new_unchecked(self.shadow.as_ptr().add(at)) };
        // SAFETY: as above.
        let ei = unsafe { core::ptr::NonNull::new_unchecked(self.eventidx.as_ptr().add(at)) };
        Some(Shadow {
            db: db.cast(),
            ei: ei.cast(),
            always_mmio,
        })
    }

    /// Zeroes both pages (the controller is disabled).
    pub(super) fn clear(&self) {
        for p in [&self.shadow, &self.eventidx] {
            for i in 0..p.len() {
                // SAFETY: inside the page; the disabled controller does not
                // access it.
                unsafe { p.as_ptr().add(i).write_volatile(0) };
            }
        }
    }
}

impl core::fmt::Debug for Shared {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Shared")
            .field("cap", &self.cap)
            .field("page", &self.page)
            .finish_non_exhaustive()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(super) fn csts(&self) -> Result<Csts, Error> {
        let v = self.regs.read32(offset::CSTS);
        if v == u32::MAX {
            return Err(Error::DeviceGone);
        }
        Ok(Csts(v))
    }

    /// Waits until CSTS.RDY is `ready`, bounded by CAP.TO.
    pub(super) fn wait_ready(&self, ready: bool, during: &'static str) -> Result<(), Error> {
        let limit = Duration::from_millis(self.cap.timeout_ms().max(500));
        let start = Instant::now();
        loop {
            let csts = self.csts()?;
            if csts.ready() == ready {
                return Ok(());
            }
            if csts.fatal() && ready {
                return Err(Error::ControllerFatal { during });
            }
            if start.elapsed() > limit {
                return Err(Error::Timeout {
                    what: if ready {
                        "CSTS.RDY = 1"
                    } else {
                        "CSTS.RDY = 0"
                    },
                    ms: limit.as_millis() as u64,
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Clears CC.EN and waits for the controller to stop: after this the
    /// device does no more DMA.
    pub(crate) fn disable(&self) -> Result<(), Error> {
        let cc = Cc(self.regs.read32(offset::CC));
        if cc.enabled() {
            self.regs.write32(offset::CC, cc.with_enable(false).0);
        }
        self.wait_ready(false, "disabling")
    }

    /// Stops the controller after a command timed out, so no memory is
    /// touched by the device once the caller gets its buffers back.
    pub(crate) fn stop_after_timeout(&self) {
        self.set_disabled(true);
        if let Err(e) = self.disable() {
            log::error!("disabling the controller after a timeout: {e}");
        }
    }

    /// Whether the controller is stopped.
    #[inline]
    pub(crate) fn is_disabled(&self) -> bool {
        self.state.load(std::sync::atomic::Ordering::SeqCst) & DISABLED != 0
    }

    /// Marks the controller stopped (or running again).
    pub(super) fn set_disabled(&self, disabled: bool) {
        use std::sync::atomic::Ordering::SeqCst;
        if disabled {
            self.state.fetch_or(DISABLED, SeqCst);
        } else {
            self.state.fetch_and(!DISABLED, SeqCst);
        }
    }

    /// Whether a queue pair of reset generation `generation` may submit:
    /// no reset since, none in progress, and the controller running. One
    /// load, for the I/O path.
    #[inline(always)]
    pub(crate) fn accepts_io(&self, generation: u64) -> bool {
        self.state.load(std::sync::atomic::Ordering::SeqCst) == generation.wrapping_mul(GENERATION)
    }

    /// Runs one admin command to completion, with `data` (a 4 KiB-aligned
    /// DMA buffer) as its PRP1 if given.
    pub(crate) fn admin(
        &self,
        cmd: Command,
        data: Option<blk_dma::Iova>,
        what: &'static str,
    ) -> Result<Completion, Error> {
        if self.is_resetting() {
            return Err(Error::Reset);
        }
        self.admin_raw(cmd, data, what)
    }

    /// [`admin`](Self::admin) without the reset check, for the reset itself.
    pub(super) fn admin_raw(
        &self,
        mut cmd: Command,
        data: Option<blk_dma::Iova>,
        what: &'static str,
    ) -> Result<Completion, Error> {
        if self.is_disabled() {
            return Err(Error::Disabled);
        }
        let mut a = lock(&self.admin);
        let cid = a.next_cid;
        a.next_cid = a.next_cid.wrapping_add(1);
        cmd.set_cid(cid);
        if let Some(iova) = data {
            cmd.set_data(DataPtr::Prp {
                prp1: iova,
                prp2: blk_dma::Iova::new(0),
            });
        }
        if !a.sq.push(&cmd) {
            return Err(Error::Invalid("admin queue full".into()));
        }
        a.sq.ring(&*self.regs);
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if let Some(c) = a.cq.pop() {
                a.sq.set_head(c.sq_head);
                a.cq.ring(&*self.regs);
                if c.cid != cid {
                    log::warn!("stale admin completion for cid {}", c.cid);
                    continue;
                }
                let status = c.status();
                if !status.is_success() {
                    return Err(Error::Command { what, status });
                }
                return Ok(c);
            }
            spins += 1;
            if spins % 64 == 0 {
                if self.csts()?.fatal() {
                    return Err(Error::ControllerFatal { during: what });
                }
                let limit = self.config.admin_timeout;
                if start.elapsed() > limit {
                    drop(a);
                    // An admin command cannot be aborted from its own queue
                    // reliably: reset the controller (queue pairs recover
                    // by the generation). A timeout during a reset stops the
                    // controller instead of resetting recursively.
                    if self.is_resetting() {
                        self.stop_after_timeout();
                    } else if let Err(e) = self.reset() {
                        log::error!("reset after an admin timeout failed: {e}");
                    }
                    return Err(Error::Timeout {
                        what,
                        ms: limit.as_millis() as u64,
                    });
                }
                std::thread::yield_now();
            }
        }
    }

    /// Disables, programs the admin queues and CC, enables.
    pub(super) fn enable(&self) -> Result<(), Error> {
        self.disable()?;
        {
            let mut a = lock(&self.admin);
            a.sq.reset();
            a.cq.reset();
            let r = &self.regs;
            r.write32(offset::AQA, Aqa::new(a.sq.entries(), a.cq.entries()).0);
            r.write64(offset::ASQ, a.sq.iova().raw());
            r.write64(offset::ACQ, a.cq.iova().raw());
        }
        if self.cap.cmb_supported() {
            // Always written: a CMB base address left enabled by an earlier
            // user would make the controller take our DMA addresses in that
            // range for its own memory.
            let cmbmsc = self.cmbmsc.load(std::sync::atomic::Ordering::SeqCst);
            self.regs.write64(cmb::CMBMSC, cmbmsc);
        }
        let cc = Cc::default()
            .with_css(0)
            .with_mps(self.page.mps())
            .with_entry_sizes(6, 4)
            .with_enable(true);
        self.regs.write32(offset::CC, cc.0);
        self.wait_ready(true, "enabling")?;
        self.set_disabled(false);
        Ok(())
    }

    /// Resets the controller: disable (every queue and command in flight
    /// is dropped by the device, which then touches no memory), enable,
    /// ask for the I/O queues again. Queue pairs notice by the generation
    /// and recreate their queues, failing what they had in flight.
    pub(crate) fn reset(&self) -> Result<(), Error> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.state.fetch_or(RESETTING, SeqCst) & RESETTING != 0 {
            // Another thread is resetting: wait for it (bounded by its own
            // CAP.TO waits) instead of resetting twice.
            while self.is_resetting() {
                std::thread::sleep(Duration::from_micros(100));
            }
            return if self.is_disabled() {
                Err(Error::Disabled)
            } else {
                Ok(())
            };
        }
        // Queue pairs publish nothing from now on (see QueuePair::flush);
        // wait for a publication in progress to finish, then give a doorbell
        // written just before a moment to be seen: QEMU's
        // emulated controller (7.2 to 10.0) starts the commands it fetches
        // while its reset drains the disk, after that reset has freed their
        // queues, and then completes them into freed memory. A controller
        // fetches within microseconds of a doorbell.
        self.wait_publishers();
        std::thread::sleep(RESET_GRACE);
        let r = self.disable().and_then(|()| {
            if let Some(db) = self.dbbuf.get() {
                db.clear();
            }
            self.enable()?;
            let want = self.config.io_queues.clamp(1, 0xfffe) as u32 - 1;
            self.admin_raw(
                Command::set_features(feature::NUMBER_OF_QUEUES, want | want << 16),
                None,
                "Set Features (Number of Queues)",
            )?;
            self.configure_dbbuf()
        });
        self.state.fetch_add(GENERATION, SeqCst);
        if r.is_err() {
            self.set_disabled(true);
        }
        self.state.fetch_and(!RESETTING, SeqCst);
        r
    }

    /// Issues Doorbell Buffer Config with the shadow pages (after bring-up
    /// and after every reset); the controller seeds the slots of existing
    /// queues with their current values. The admin queue keeps writing MMIO
    /// doorbells too.
    pub(super) fn configure_dbbuf(&self) -> Result<(), Error> {
        let Some(db) = self.dbbuf.get() else {
            return Ok(());
        };
        let mut cmd = Command::new(admin::DOORBELL_BUFFER_CONFIG, 0);
        cmd.set_data(DataPtr::Prp {
            prp1: db.shadow.iova(),
            prp2: db.eventidx.iova(),
        });
        self.admin_raw(cmd, None, "Doorbell Buffer Config")?;
        let mut a = lock(&self.admin);
        if let (Some(sq), Some(cq)) = (db.slot(0, true, true), db.slot(0, false, true)) {
            a.sq.set_shadow(sq);
            a.cq.set_shadow(cq);
        }
        Ok(())
    }

    /// Whether a reset is in progress.
    #[inline]
    pub(crate) fn is_resetting(&self) -> bool {
        self.state.load(std::sync::atomic::Ordering::SeqCst) & RESETTING != 0
    }

    /// The current reset generation.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.state.load(std::sync::atomic::Ordering::SeqCst) / GENERATION
    }

    pub(crate) fn doorbells(&self, qid: u16) -> (u64, u64) {
        let s = self.cap.doorbell_stride();
        (
            regs::sq_tail_doorbell(qid, s),
            regs::cq_head_doorbell(qid, s),
        )
    }
}

impl Shared {
    /// A flag for a new queue pair to announce its publications with.
    pub(crate) fn add_publisher(&self) -> Arc<Publishing> {
        let p = Arc::new(Publishing::default());
        lock(&self.publishers).push(p.clone());
        p
    }

    /// Forgets a queue pair's flag.
    pub(crate) fn remove_publisher(&self, p: &Arc<Publishing>) {
        lock(&self.publishers).retain(|q| !Arc::ptr_eq(q, p));
    }

    /// Waits until no queue pair is publishing commands (bounded by
    /// [`PUBLISH_WAIT`]). The caller has set [`RESETTING`] first: a queue
    /// pair announces a publication before it reads the state and the
    /// reset sets the state before it reads the flags (both sequentially
    /// consistent), so either the queue pair sees the reset and publishes
    /// nothing, or the reset sees the flag and waits for the doorbell write
    /// to be done.
    fn wait_publishers(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        let start = Instant::now();
        for p in lock(&self.publishers).iter() {
            while p.0.load(SeqCst) {
                if start.elapsed() > PUBLISH_WAIT {
                    log::warn!("reset: a queue pair is still publishing after {PUBLISH_WAIT:?}");
                    return;
                }
                std::thread::yield_now();
            }
        }
    }

    pub(crate) fn free_qid(&self, qid: u16) {
        if let Some(slot) = lock(&self.qids).get_mut(qid as usize - 1) {
            *slot = false;
        }
    }
}
