//! MSI-X interrupts delivered through eventfds.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use vfio_bindings::bindings::vfio as b;

use super::sys;
use super::VfioError;

/// Enabled MSI-X vectors of a device: vector `i` signals eventfd `i`.
///
/// Disabled when dropped (or explicitly with [`Msix::disable`]). At most one
/// `Msix` per device should exist: enabling again replaces the vectors.
#[derive(Debug)]
pub struct Msix {
    device: Arc<File>,
    eventfds: Vec<File>,
    enabled: bool,
}

/// The interrupt index of MSI-X on a vfio-pci device.
const MSIX: u32 = b::VFIO_PCI_MSIX_IRQ_INDEX;

impl Msix {
    /// How many MSI-X vectors the device has.
    pub(crate) fn available(device: &File) -> Result<u32, VfioError> {
        let info = sys::device_get_irq_info(device, MSIX)
            .map_err(VfioError::ioctl("VFIO_DEVICE_GET_IRQ_INFO"))?;
        Ok(if info.flags & b::VFIO_IRQ_INFO_EVENTFD != 0 {
            info.count
        } else {
            0
        })
    }

    /// Enables vectors `0..count` of `device`, each signalling a new
    /// non-blocking eventfd.
    pub(crate) fn enable(device: Arc<File>, count: u32) -> Result<Msix, VfioError> {
        let available = Msix::available(&device)?;
        if count == 0 || count > available {
            return Err(VfioError::TooManyVectors {
                requested: count,
                available,
            });
        }
        let eventfds = (0..count)
            .map(|_| eventfd())
            .collect::<Result<Vec<_>, _>>()
            .map_err(VfioError::Eventfd)?;
        let fds: Vec<BorrowedFd<'_>> = eventfds.iter().map(AsFd::as_fd).collect();
        sys::device_set_irqs_eventfd(&device, MSIX, &fds)
            .map_err(VfioError::ioctl("VFIO_DEVICE_SET_IRQS"))?;
        Ok(Msix {
            device,
            eventfds,
            enabled: true,
        })
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.eventfds.len()
    }

    /// Whether there are no vectors (never true for an enabled `Msix`).
    pub fn is_empty(&self) -> bool {
        self.eventfds.is_empty()
    }

    /// The eventfd of `vector`, to poll/epoll on.
    pub fn eventfd(&self, vector: usize) -> Option<BorrowedFd<'_>> {
        self.eventfds.get(vector).map(AsFd::as_fd)
    }

    /// How many times `vector` fired since the last call (0 if none);
    /// never blocks.
    pub fn take_count(&self, vector: usize) -> io::Result<u64> {
        let fd = self
            .eventfds
            .get(vector)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut counter = [0u8; 8];
        match (&*fd).read(&mut counter) {
            Ok(8) => Ok(u64::from_ne_bytes(counter)),
            Ok(_) => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Disables the vectors, reporting failure (dropping ignores it).
    pub fn disable(mut self) -> Result<(), VfioError> {
        self.enabled = false;
        sys::device_disable_irqs(&self.device, MSIX)
            .map_err(VfioError::ioctl("VFIO_DEVICE_SET_IRQS"))
    }
}

impl Drop for Msix {
    fn drop(&mut self) {
        if self.enabled {
            // Nothing to report to: the device file closing disables them too.
            let _ = sys::device_disable_irqs(&self.device, MSIX);
        }
    }
}

/// A new non-blocking, close-on-exec eventfd.
pub(crate) fn eventfd() -> io::Result<File> {
    // SAFETY: eventfd takes no pointers; it returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_counts_and_never_blocks() {
        let fd = eventfd().unwrap();
        let msix = Msix {
            device: Arc::new(File::open("/dev/null").unwrap()),
            eventfds: vec![fd],
            enabled: false,
        };
        assert_eq!(msix.take_count(0).unwrap(), 0);
        use std::io::Write;
        (&msix.eventfds[0]).write_all(&3u64.to_ne_bytes()).unwrap();
        assert_eq!(msix.take_count(0).unwrap(), 3);
        assert_eq!(msix.take_count(0).unwrap(), 0);
        assert!(msix.take_count(1).is_err());
    }
}
