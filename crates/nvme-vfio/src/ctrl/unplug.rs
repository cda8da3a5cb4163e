//! Device removal announced by the device's owner: the kernel asks for a
//! VFIO device back before it hot unplugs it (or unbinds it from
//! vfio-pci), and waits until the process has let go of it.
//!
//! A thread per controller waits on the notice
//! ([`PciFunction::request_notifier`](super::PciFunction::request_notifier)).
//! When it comes, the thread stops the controller the way a reset does
//! (queue pairs publish nothing, the device is quiesced: after it no DMA
//! is possible), marks it lost, so that every request in flight fails
//! with [`Error::DeviceLost`](crate::Error::DeviceLost) with its buffer
//! back and every later call fails the same way, wakes queue pairs asleep
//! on their interrupts, and lets go of the device
//! ([`PciFunction::release`](super::PciFunction::release)) so that the
//! unplug completes.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use super::Shared;

/// The thread waiting for the device request of one controller; stopped
/// (and joined) when dropped.
#[derive(Debug)]
pub(super) struct Watcher {
    stop: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts waiting on `request` for the controller behind `shared`.
    pub(super) fn start(shared: Weak<Shared>, request: OwnedFd) -> std::io::Result<Watcher> {
        let stop = Arc::new(OwnedFd::from(crate::vfio::eventfd()?));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("nvme-unplug".into())
            .spawn(move || watch(&shared, &request, &thread_stop))?;
        Ok(Watcher {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        signal(self.stop.as_fd());
        if let Some(t) = self.thread.take() {
            // The watcher thread itself drops the controller's state when
            // it held the last reference: it is past waiting, and ends.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// Adds one to an eventfd's counter (makes it readable).
pub(super) fn signal(fd: BorrowedFd<'_>) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a local array to an open descriptor.
    unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
}

/// Reads an eventfd's counter (non-blocking), making it quiet.
fn drain(fd: BorrowedFd<'_>) {
    let mut counter = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a local array.
    unsafe { libc::read(fd.as_raw_fd(), counter.as_mut_ptr().cast(), counter.len()) };
}

/// The thread: waits for the request or the stop, whichever comes first.
fn watch(shared: &Weak<Shared>, request: &OwnedFd, stop: &OwnedFd) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: request.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("waiting for the device request interrupt: {e}");
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            drain(request.as_fd());
            if let Some(s) = shared.upgrade() {
                s.release_device();
            }
            return;
        }
        if fds[0].revents != 0 {
            log::error!(
                "the device request eventfd failed (poll events {:#x})",
                fds[0].revents
            );
            return;
        }
    }
}
