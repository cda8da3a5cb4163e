//! Interrupts of the software controller: one eventfd per vector, written
//! when the controller posts a completion to a completion queue created
//! with interrupts enabled (vector 0 for the admin queue), as MSI-X
//! through VFIO signals its eventfds. The driver's interrupt mode sleeps on
//! them ([`nvme_vfio::ctrl::Controller::with_interrupts`]).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd};

use crate::Error;

/// The controller's interrupt vectors.
#[derive(Debug)]
pub struct SimInterrupts {
    eventfds: Vec<File>,
}

impl SimInterrupts {
    pub(crate) fn new(vectors: usize) -> Result<Self, Error> {
        let eventfds = (0..vectors)
            .map(|_| {
                // SAFETY: eventfd(2) with no pointer arguments; the result
                // is checked before use.
                let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
                if fd < 0 {
                    return Err(Error::Spawn(io::Error::last_os_error()));
                }
                // SAFETY: `fd` is a new descriptor this code owns.
                Ok(unsafe { File::from_raw_fd(fd) })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { eventfds })
    }

    /// Raises `vector` (nothing if there is no such vector).
    pub(crate) fn signal(&self, vector: u16) {
        if let Some(f) = self.eventfds.get(vector as usize) {
            // The counter only overflows after 2^64 - 1 signals unread.
            let _ = (&*f).write(&1u64.to_ne_bytes());
        }
    }
}

impl nvme_vfio::ctrl::Interrupts for SimInterrupts {
    fn vectors(&self) -> usize {
        self.eventfds.len()
    }

    fn eventfd(&self, vector: usize) -> Option<BorrowedFd<'_>> {
        self.eventfds.get(vector).map(AsFd::as_fd)
    }

    fn take_count(&self, vector: usize) -> io::Result<u64> {
        let f = self
            .eventfds
            .get(vector)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut b = [0u8; 8];
        match (&*f).read(&mut b) {
            Ok(8) => Ok(u64::from_ne_bytes(b)),
            Ok(_) => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }
}
