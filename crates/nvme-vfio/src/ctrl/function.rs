//! The PCI function behind a controller, beyond its registers: what the
//! driver uses to stop a device's DMA when clearing CC.EN does not.
//!
//! A controller that does not acknowledge CC.EN = 0 within CAP.TO may still
//! be fetching commands and moving data. Before any memory the device could
//! reach goes back to its owner, the driver clears Bus Master Enable (a PCI
//! function with it clear cannot start memory requests) and resets the
//! function (function level reset); only when both take is the device
//! known to be quiet.

use crate::Error;

/// Control of the PCI function a controller lives in: bus mastering and
/// function level reset. Implemented by [`vfio::Device`](crate::vfio::Device)
/// (through VFIO's config space region and `VFIO_DEVICE_RESET`) and by
/// device models.
pub trait PciFunction: Send + Sync + core::fmt::Debug {
    /// Sets (`true`) or clears (`false`) Bus Master Enable in the PCI
    /// command register. With it clear the function issues no DMA.
    fn set_bus_master(&self, enable: bool) -> Result<(), Error>;

    /// Whether Bus Master Enable is set, as read back from the function.
    fn bus_master(&self) -> Result<bool, Error>;

    /// Resets the function (function level reset or the reset VFIO
    /// offers). Returns `Ok(false)` if the function cannot be reset. After
    /// a reset the controller is disabled (CC.EN = 0) and bus mastering is
    /// off.
    fn function_reset(&self) -> Result<bool, Error>;

    /// An eventfd that becomes readable when the device's owner asks for
    /// the device back (VFIO's device request interrupt: the kernel is
    /// hot unplugging it, or unbinding it from vfio-pci). The driver
    /// waits on it in a thread of its own and, when it fires, stops the
    /// controller, fails every request with
    /// [`Error::DeviceLost`](crate::Error::DeviceLost) (their memory back
    /// once the device is stopped) and calls [`release`](Self::release).
    /// Asked for once, at bring-up. `Ok(None)` (the default): there is no
    /// such notice, and a removed device is only noticed when its
    /// registers read all ones.
    fn request_notifier(&self) -> Result<Option<std::os::fd::OwnedFd>, Error> {
        Ok(None)
    }

    /// Lets go of the device after the driver stopped it (see
    /// [`request_notifier`](Self::request_notifier)): the process must
    /// hold nothing that keeps the device (file descriptors, BAR
    /// mappings), while the controller's registers stay safe to access
    /// (reading all ones). Called at most once. The default does nothing.
    fn release(&self) {}
}

impl PciFunction for crate::vfio::Device {
    fn set_bus_master(&self, enable: bool) -> Result<(), Error> {
        if enable {
            self.enable_bus_master()?;
        } else {
            self.disable_bus_master()?;
        }
        Ok(())
    }

    fn bus_master(&self) -> Result<bool, Error> {
        Ok(self.bus_master_enabled()?)
    }

    fn function_reset(&self) -> Result<bool, Error> {
        Ok(self.reset()?)
    }
}

/// The PCI function of a controller opened by address
/// ([`Controller::open`](super::Controller::open)): the VFIO device and
/// its BAR 0 mapping, which are let go of together when the kernel asks
/// for the device back.
#[derive(Debug)]
pub(super) struct VfioFunction {
    pub(super) device: std::sync::Arc<crate::vfio::Device>,
    pub(super) bar: std::sync::Arc<crate::vfio::Bar>,
    /// Other BARs mapped for the controller (its memory buffer's).
    pub(super) more_bars: std::sync::Mutex<Vec<std::sync::Arc<crate::vfio::Bar>>>,
    /// Set once the device was let go of.
    pub(super) released: std::sync::atomic::AtomicBool,
}

impl VfioFunction {
    /// A function whose BAR 0 mapping is `bar`.
    pub(super) fn new(
        device: std::sync::Arc<crate::vfio::Device>,
        bar: std::sync::Arc<crate::vfio::Bar>,
    ) -> Self {
        VfioFunction {
            device,
            bar,
            more_bars: std::sync::Mutex::new(Vec::new()),
            released: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Adds another BAR mapping of the device, released with it (at once
    /// if the device was let go of already).
    pub(super) fn add_bar(&self, bar: std::sync::Arc<crate::vfio::Bar>) {
        let mut bars = self.more_bars.lock().unwrap_or_else(|e| e.into_inner());
        if self.released.load(std::sync::atomic::Ordering::SeqCst) {
            if let Err(e) = bar.release() {
                log::error!("releasing BAR {}: {e}", bar.index());
            }
        }
        bars.push(bar);
    }
}

impl PciFunction for VfioFunction {
    fn set_bus_master(&self, enable: bool) -> Result<(), Error> {
        self.device.set_bus_master(enable)
    }

    fn bus_master(&self) -> Result<bool, Error> {
        PciFunction::bus_master(&*self.device)
    }

    fn function_reset(&self) -> Result<bool, Error> {
        self.device.function_reset()
    }

    fn request_notifier(&self) -> Result<Option<std::os::fd::OwnedFd>, Error> {
        Ok(self.device.request_notifier()?)
    }

    fn release(&self) {
        // The BARs first: their mappings keep the device file open too.
        let bars = self.more_bars.lock().unwrap_or_else(|e| e.into_inner());
        self.released
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for bar in std::iter::once(&self.bar).chain(bars.iter()) {
            if let Err(e) = bar.release() {
                log::error!("releasing BAR {}: {e}", bar.index());
            }
        }
        drop(bars);
        if let Err(e) = self.device.release() {
            log::error!("releasing the device file: {e}");
        }
    }
}

/// A controller's interrupts, delivered through eventfds: vector `v`
/// signals eventfd `v` (vector 0 the admin queue, vector `q` I/O queue
/// `q`). MSI-X through VFIO ([`vfio::Msix`](crate::vfio::Msix)) or a
/// device model's.
pub trait Interrupts: Send + Sync + core::fmt::Debug {
    /// How many vectors there are.
    fn vectors(&self) -> usize;

    /// The eventfd of `vector`, to poll or epoll on.
    fn eventfd(&self, vector: usize) -> Option<std::os::fd::BorrowedFd<'_>>;

    /// How many times `vector` fired since the last call (0 if none);
    /// never blocks.
    fn take_count(&self, vector: usize) -> std::io::Result<u64>;
}

impl Interrupts for crate::vfio::Msix {
    fn vectors(&self) -> usize {
        self.len()
    }

    fn eventfd(&self, vector: usize) -> Option<std::os::fd::BorrowedFd<'_>> {
        crate::vfio::Msix::eventfd(self, vector)
    }

    fn take_count(&self, vector: usize) -> std::io::Result<u64> {
        crate::vfio::Msix::take_count(self, vector)
    }
}

/// Shared vectors: the device model (or its tests) keeps a handle too.
impl<T: Interrupts + ?Sized> Interrupts for std::sync::Arc<T> {
    fn vectors(&self) -> usize {
        (**self).vectors()
    }

    fn eventfd(&self, vector: usize) -> Option<std::os::fd::BorrowedFd<'_>> {
        (**self).eventfd(vector)
    }

    fn take_count(&self, vector: usize) -> std::io::Result<u64> {
        (**self).take_count(vector)
    }
}
