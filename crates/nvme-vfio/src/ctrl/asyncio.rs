//! Asynchronous I/O for any executor: a future per request (see
//! [`AsyncQueuePair`]).

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::io::{Done, Io, IoBuf};
use super::QueuePair;
use crate::Error;

/// What a request's future waits for.
#[derive(Debug, Default)]
enum Cell {
    /// No request.
    #[default]
    Free,
    /// In flight; the waker of the future's last poll.
    Waiting(Option<Waker>),
    /// Completed, not yet taken by its future (with a Zone Append's LBA).
    Done(IoBuf, Result<(), Error>, Option<u64>),
    /// In flight, its future dropped: the buffer goes when it completes.
    Abandoned,
}

#[derive(Debug)]
struct State {
    qp: QueuePair,
    /// One per request that can be in flight, by tag.
    cells: Vec<Cell>,
    free: Vec<u32>,
    /// Completions of one poll (capacity reused).
    done: Vec<Done>,
    /// Wakers to wake once the state is released (capacity reused).
    wake: Vec<Waker>,
}

/// A queue pair whose requests are futures: asynchronous I/O for any
/// executor.
///
/// [`AsyncQueuePair`] wraps a [`QueuePair`] for one thread (it is not
/// `Send`: a thread-per-core executor, tokio's `LocalSet`, or a loop of
/// one's own). [`submit`](AsyncQueuePair::submit) queues a request and
/// returns an [`IoFuture`] that resolves to the buffer and the result, as
/// [`Done`] does. Completions are collected by
/// [`poll`](AsyncQueuePair::poll), which wakes the futures they finish:
/// someone must call it, in a loop that busy-polls, or when the queue
/// pair's interrupt eventfd ([`interrupt_fd`](AsyncQueuePair::interrupt_fd))
/// becomes readable and at least every 100 ms while requests are in
/// flight (timeouts are checked there). A future polled while its command
/// is not yet published publishes what is queued (one doorbell for all).
///
/// In steady state nothing is allocated and no system call is made per
/// request: the per-request state lives in a table sized to the queue
/// depth, and futures share it by reference count.
///
/// Dropping an [`IoFuture`] does not cancel its request (the device may
/// be using the buffer): the buffer is dropped when the request completes.
///
/// ```
/// # use nvme_sim::{Config, SimController};
/// # use nvme_vfio::ctrl::{Controller, QueueConfig};
/// # use nvme_vfio::mem::{DmaSpace, SpaceConfig};
/// # let sim = SimController::new(Config::default()).unwrap();
/// # let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
/// # let config = nvme_vfio::ctrl::Config { space: SpaceConfig { hugepages: false }, ..Default::default() };
/// # // SAFETY: the registers, IOMMU and PCI function all belong to `sim`.
/// # let ctrl = unsafe { Controller::with_backend(sim.registers(), space, config, Some(sim.pci_function())) }?;
/// use std::future::Future;
/// use std::task::{Context, Poll, Waker};
/// use nvme_vfio::ctrl::{AsyncQueuePair, Io};
///
/// /// The smallest executor: polls the future, then the queue pair.
/// fn block_on<F: Future>(aq: &AsyncQueuePair, f: F) -> F::Output {
///     let mut f = std::pin::pin!(f);
///     let mut cx = Context::from_waker(Waker::noop());
///     loop {
///         if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
///             return v;
///         }
///         aq.poll();
///     }
/// }
///
/// let ns = ctrl.namespace(1)?;
/// let aq = AsyncQueuePair::new(ctrl.queue_pair(QueueConfig::default())?).map_err(|(e, _)| e)?;
/// let write = aq.submit(Io::write(&ns, 0, vec![7u8; 4096])).map_err(|(e, _)| e)?;
/// let (_, written) = block_on(&aq, write);
/// written?;
/// let read = aq.submit(Io::read(&ns, 0, vec![0u8; 4096])).map_err(|(e, _)| e)?;
/// let (buf, read) = block_on(&aq, read);
/// read?;
/// assert_eq!(buf.as_slice(), &[7u8; 4096][..]);
/// # Ok::<(), nvme_vfio::Error>(())
/// ```
#[derive(Debug)]
pub struct AsyncQueuePair {
    state: Rc<RefCell<State>>,
}

/// The future of one request: resolves to its buffer and result.
#[derive(Debug)]
#[must_use = "the request runs anyway; its result is only seen by awaiting"]
pub struct IoFuture {
    state: Rc<RefCell<State>>,
    cell: u32,
    finished: bool,
}

/// The future of a Zone Append
/// ([`AsyncQueuePair::zone_append`]): resolves to its buffer and the LBA
/// its data landed at.
#[derive(Debug)]
#[must_use = "the request runs anyway; its result is only seen by awaiting"]
pub struct AppendFuture(IoFuture);

/// What a request's future resolves to, with a Zone Append's LBA.
type Finished = (IoBuf, Result<(), Error>, Option<u64>);

impl AsyncQueuePair {
    /// Wraps `qp`: from now on its requests are submitted and completed
    /// through this object. `qp` must be idle (nothing in flight, no
    /// completion left uncollected): completions of requests submitted
    /// before would carry tags of the caller's, not futures'. An idle
    /// queue pair is handed back with the error otherwise.
    #[allow(clippy::result_large_err)]
    pub fn new(qp: QueuePair) -> Result<Self, (Error, QueuePair)> {
        if qp.inflight() > 0 || qp.has_uncollected() {
            return Err((
                Error::Invalid(
                    "the queue pair has requests in flight or completions not yet \
                     collected: poll it empty first"
                        .into(),
                ),
                qp,
            ));
        }
        let depth = qp.depth();
        Ok(AsyncQueuePair {
            state: Rc::new(RefCell::new(State {
                qp,
                cells: (0..depth).map(|_| Cell::Free).collect(),
                free: (0..depth as u32).rev().collect(),
                done: Vec::with_capacity(depth),
                wake: Vec::with_capacity(depth),
            })),
        })
    }

    /// Queues `io` and returns the future of its completion. The request's
    /// tag is the queue's own (the one in `io` is replaced). Refused as
    /// [`QueuePair::submit`] refuses (with the request back), and with
    /// [`Error::QueueFull`] when as many requests are in flight as the
    /// queue is deep.
    #[allow(clippy::result_large_err)]
    pub fn submit(&self, io: Io) -> Result<IoFuture, (Error, Io)> {
        let mut s = self.state.borrow_mut();
        let Some(cell) = s.free.pop() else {
            return Err((Error::QueueFull { needed: 1, free: 0 }, io));
        };
        match s.qp.submit(io.tag(u64::from(cell))) {
            Ok(()) => {
                s.cells[cell as usize] = Cell::Waiting(None);
                Ok(IoFuture {
                    state: Rc::clone(&self.state),
                    cell,
                    finished: false,
                })
            }
            Err(e) => {
                s.free.push(cell);
                Err(e)
            }
        }
    }

    /// Queues a Zone Append of `buf` to the zone of zoned namespace `ns`
    /// that starts at `zslba` ([`Io::zone_append`]) and returns the future
    /// of the LBA its data lands at. Refused as [`submit`](Self::submit)
    /// refuses.
    #[allow(clippy::result_large_err)]
    pub fn zone_append(
        &self,
        ns: &super::Namespace,
        zslba: u64,
        buf: impl Into<IoBuf>,
    ) -> Result<AppendFuture, (Error, Io)> {
        self.submit(Io::zone_append(ns, zslba, buf))
            .map(AppendFuture)
    }

    /// Publishes queued requests and collects completions, waking their
    /// futures; returns how many completed. Checks timeouts (see
    /// [`QueuePair::poll`]).
    pub fn poll(&self) -> usize {
        let wake = {
            let mut s = self.state.borrow_mut();
            let s = &mut *s;
            if s.qp.poll(&mut s.done) == 0 {
                return 0;
            }
            let n = s.done.len();
            for d in s.done.drain(..) {
                let Some(cell) = s.cells.get_mut(d.tag as usize) else {
                    continue;
                };
                match core::mem::take(cell) {
                    Cell::Waiting(waker) => {
                        *cell = Cell::Done(d.buf, d.result, d.appended_lba);
                        if let Some(w) = waker {
                            s.wake.push(w);
                        }
                    }
                    // Its future is gone: the buffer goes now, the device
                    // being done with it.
                    Cell::Abandoned => s.free.push(d.tag as u32),
                    other => *cell = other,
                }
            }
            (core::mem::take(&mut s.wake), n)
        };
        let (mut wake, n) = wake;
        // Woken with the state released: a waker may run a future.
        for w in wake.drain(..) {
            w.wake();
        }
        // Kept for its capacity, unless a waker's future took its place.
        if let Ok(mut s) = self.state.try_borrow_mut() {
            if s.wake.capacity() < wake.capacity() {
                s.wake = wake;
            }
        }
        n
    }

    /// Publishes queued requests (one doorbell for all).
    pub fn flush(&self) {
        self.state.borrow_mut().qp.flush();
    }

    /// Submission doorbell publications so far, and how many of them
    /// wrote the MMIO doorbell (see [`QueuePair::doorbell_stats`]).
    pub fn doorbell_stats(&self) -> (u64, u64) {
        self.state.borrow().qp.doorbell_stats()
    }

    /// Requests in flight (their commands).
    pub fn inflight(&self) -> usize {
        self.state.borrow().qp.inflight()
    }

    /// The queue pair's interrupt eventfd in interrupt mode (see
    /// [`QueuePair::interrupt_fd`] for the rules), for an event loop to
    /// wait on; it stays open as long as this queue pair.
    pub fn interrupt_fd(&self) -> Option<RawFd> {
        let s = self.state.borrow();
        s.qp.interrupt_fd()
            .map(|fd| std::os::fd::AsRawFd::as_raw_fd(&fd))
    }

    /// Resets the interrupt eventfd (see [`QueuePair::clear_interrupt`]).
    pub fn clear_interrupt(&self) -> u64 {
        self.state.borrow_mut().qp.clear_interrupt()
    }

    /// The queue pair back, once no future of it is left.
    pub fn into_inner(self) -> Result<QueuePair, Self> {
        match Rc::try_unwrap(self.state) {
            Ok(s) => Ok(s.into_inner().qp),
            Err(state) => Err(AsyncQueuePair { state }),
        }
    }
}

impl Future for IoFuture {
    type Output = (IoBuf, Result<(), Error>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_finished(cx).map(|(buf, r, _)| (buf, r))
    }
}

impl Future for AppendFuture {
    type Output = (IoBuf, Result<u64, Error>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().0.poll_finished(cx).map(|(buf, r, lba)| {
            let lba = r.and_then(|()| {
                lba.ok_or_else(|| Error::Invalid("not a Zone Append: no LBA came back".into()))
            });
            (buf, lba)
        })
    }
}

impl IoFuture {
    /// [`poll`](Future::poll), with a Zone Append's LBA.
    fn poll_finished(&mut self, cx: &mut Context<'_>) -> Poll<Finished> {
        let this = self;
        let done_already = || {
            Poll::Ready((
                IoBuf::Raw,
                Err(Error::Invalid("future polled after it completed".into())),
                None,
            ))
        };
        if this.finished {
            // Its entry may be another request's by now: never looked at.
            return done_already();
        }
        // No code of the caller's (waker clone, wake or drop) runs while
        // the state is borrowed: it may use this queue pair.
        let old = {
            let mut s = this.state.borrow_mut();
            let s = &mut *s;
            let Some(cell) = s.cells.get_mut(this.cell as usize) else {
                return done_already();
            };
            match core::mem::take(cell) {
                Cell::Done(buf, result, lba) => {
                    s.free.push(this.cell);
                    this.finished = true;
                    return Poll::Ready((buf, result, lba));
                }
                Cell::Waiting(waker) => {
                    // Published now if it was not yet (nothing if it was).
                    s.qp.flush();
                    *cell = Cell::Waiting(None);
                    waker
                }
                other => {
                    *cell = other;
                    return done_already();
                }
            }
        };
        let waker = match old {
            Some(w) if w.will_wake(cx.waker()) => w,
            old => {
                drop(old);
                cx.waker().clone()
            }
        };
        let mut s = this.state.borrow_mut();
        let s = &mut *s;
        match s.cells.get_mut(this.cell as usize) {
            Some(Cell::Waiting(slot)) => {
                *slot = Some(waker);
                Poll::Pending
            }
            // Completed while the waker was cloned (it polled the queue).
            Some(cell @ Cell::Done(..)) => {
                let Cell::Done(buf, result, lba) = core::mem::take(cell) else {
                    unreachable!("matched above")
                };
                s.free.push(this.cell);
                this.finished = true;
                Poll::Ready((buf, result, lba))
            }
            _ => done_already(),
        }
    }
}

impl Drop for IoFuture {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // No code of the caller's runs while the state is borrowed, so it
        // is free here.
        let Ok(mut guard) = self.state.try_borrow_mut() else {
            return;
        };
        let s = &mut *guard;
        let Some(cell) = s.cells.get_mut(self.cell as usize) else {
            return;
        };
        let old = match core::mem::take(cell) {
            // Completed, never taken: the buffer goes now.
            Cell::Done(buf, result, _) => {
                s.free.push(self.cell);
                drop((buf, result));
                None
            }
            Cell::Waiting(waker) => {
                *cell = Cell::Abandoned;
                waker
            }
            other => {
                *cell = other;
                None
            }
        };
        drop(guard);
        // The waker (the caller's code) is dropped with the state released.
        drop(old);
    }
}
