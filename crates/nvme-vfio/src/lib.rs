//! A userspace NVMe driver on VFIO: drive a PCIe SSD from your own process,
//! polled, lock-free and zero-copy, with its own DMA mapper.
//!
//! # The crate
//!
//! - [`ctrl`]: the driver. [`Controller`](ctrl::Controller) opens a
//!   controller bound to vfio-pci by PCI address and brings it up;
//!   [`QueuePair`](ctrl::QueuePair) submits requests ([`Io`](ctrl::Io),
//!   whose buffer comes back with the completion, [`Done`](ctrl::Done)) and
//!   polls for completions, or runs blocking reads and writes of any
//!   length, and the NVM command set's optional commands (Compare, Verify,
//!   Write Uncorrectable, Copy, Dataset Management) where the controller
//!   has them; [`AsyncQueuePair`](ctrl::AsyncQueuePair) makes each request a
//!   future for any executor; [`PollGroup`](ctrl::PollGroup) polls many
//!   queue pairs from one thread. Recovery (timeouts, aborts, resets),
//!   device removal, asynchronous events and the error log are handled
//!   here.
//! - [`mem`]: DMA memory: [`DmaSpace`](mem::DmaSpace) (the IOVA space of
//!   one VFIO container, shared by every controller opened into it),
//!   [`DmaBuf`](mem::DmaBuf) (hugepage-backed buffers mapped once), and
//!   registration of the application's own memory.
//! - [`nvme`]: the specification's types (commands, completions and their
//!   statuses, registers, Identify data, log pages), and the PRP and SGL
//!   builders fed straight from [`blk_dma`]'s mapped ranges, with a
//!   device-side walker as strict as a controller.
//! - [`vfio`]: VFIO containers, groups and devices, BARs, MSI-X.
//!
//! # Example
//!
//! The same code drives a controller on vfio-pci
//! (`Controller::open("0000:01:00.0", Config::default())`) or, as here, the
//! software controller of the `nvme-sim` crate:
//!
//! ```
//! # use nvme_sim::{Config as SimConfig, SimController};
//! use nvme_vfio::ctrl::{Config, Controller, Io, QueueConfig};
//! use nvme_vfio::mem::{DmaSpace, SpaceConfig};
//!
//! let sim = SimController::new(SimConfig::default()).unwrap();
//! let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
//! let config = Config { space: SpaceConfig { hugepages: false }, ..Config::default() };
//! // SAFETY: the registers, the IOMMU under `space` and the PCI function
//! // all belong to `sim`, which nothing else drives.
//! let ctrl = unsafe {
//!     Controller::with_backend(sim.registers(), space, config, Some(sim.pci_function()))
//! }?;
//! let ns = ctrl.namespace(1)?;
//! let mut qp = ctrl.queue_pair(QueueConfig::default())?;
//!
//! // Blocking calls take any memory and any length.
//! qp.write(&ns, 0, &[0xa5u8; 8192], false)?;
//! let mut back = vec![0u8; 8192];
//! qp.read(&ns, 0, &mut back)?;
//! assert!(back.iter().all(|&b| b == 0xa5));
//!
//! // Asynchronous requests move their buffer in and get it back done.
//! let buf = ctrl.dma_alloc(4096)?;
//! qp.submit(Io::read(&ns, 0, buf).tag(7)).map_err(|(e, _)| e)?;
//! let mut done = Vec::new();
//! while done.is_empty() {
//!     qp.poll(&mut done);
//! }
//! assert_eq!(done[0].tag, 7);
//! done[0].result.as_ref().map_err(|e| e.to_string()).unwrap();
//! # Ok::<(), nvme_vfio::Error>(())
//! ```
//!
//! # Threads
//!
//! - [`Controller`](ctrl::Controller) is `Send` and `Sync`: share it
//!   (`&` or `Arc`) between threads; its admin commands are serialized
//!   inside.
//! - [`QueuePair`](ctrl::QueuePair) is `Send`, not `Sync`: one per thread,
//!   no locks on its I/O path. Move it to the thread that uses it, or put
//!   several in a [`PollGroup`](ctrl::PollGroup) that one thread polls.
//!   [`AsyncQueuePair`](ctrl::AsyncQueuePair) stays on the thread that made
//!   it (not `Send`): a thread-per-core executor or a local task set.
//! - [`DmaSpace`](mem::DmaSpace) is shared (`Arc`) by every controller and
//!   queue pair in it; [`DmaBuf`](mem::DmaBuf)s are `Send`.
//! - A queue pair may outlive its controller: it then fails every request
//!   with [`Error::Closed`], and nothing brings the controller back.
//! - The driver starts one thread per controller opened with
//!   `Controller::open`, which waits for the kernel to ask for the device
//!   back (hot unplug) and sleeps otherwise.

pub mod ctrl;
pub mod error;
pub mod mem;
pub mod nvme;
pub mod vfio;

pub use error::Error;

/// The README's code examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
