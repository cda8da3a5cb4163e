//! The embedding API: futures per request (`AsyncQueuePair`) and poll
//! groups (`PollGroup`), against the software controller.

mod common;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use nvme_sim::{Config, FaultAction, FaultRule, Match, SimController};
use nvme_vfio::ctrl::{AsyncQueuePair, Controller, Io, IoBuf, PollGroup, QueueConfig};
use nvme_vfio::Error;

fn open() -> (SimController, Controller) {
    common::driver::open(Config::default(), Duration::from_secs(30), true)
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(0x9e37_79b9) ^ seed.wrapping_mul(0x85eb_ca6b)) as u8)
        .collect()
}

/// Polls every future once, then the queue pair, until all are ready:
/// what an executor running many tasks on one thread does.
fn run_all<F: Future + Unpin>(aq: &AsyncQueuePair, mut futs: Vec<F>) -> Vec<F::Output> {
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    let mut cx = Context::from_waker(Waker::noop());
    let start = Instant::now();
    while out.iter().any(Option::is_none) {
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                if let Poll::Ready(v) = Pin::new(f).poll(&mut cx) {
                    *o = Some(v);
                }
            }
        }
        aq.poll();
        assert!(start.elapsed() < Duration::from_secs(30), "futures stuck");
    }
    out.into_iter().map(Option::unwrap).collect()
}

/// Many requests in flight as futures: writes of distinct patterns, then
/// reads, each future resolving to its own buffer with its own data.
#[test]
fn futures_complete_with_their_own_buffers() {
    let (_sim, ctrl) = open();
    let ns = ctrl.namespace(1).unwrap();
    let aq = AsyncQueuePair::new(ctrl.queue_pair(QueueConfig::default()).unwrap()).unwrap();
    let n = 64u64;
    let writes = (0..n)
        .map(|i| {
            aq.submit(Io::write(&ns, i * 8, pattern(i, 4096)))
                .map_err(|(e, _)| e)
                .unwrap()
        })
        .collect();
    for (_, r) in run_all(&aq, writes) {
        r.unwrap();
    }
    let reads = (0..n)
        .map(|i| {
            aq.submit(Io::read(&ns, i * 8, vec![0u8; 4096]))
                .map_err(|(e, _)| e)
                .unwrap()
        })
        .collect();
    for (i, (buf, r)) in run_all(&aq, reads).into_iter().enumerate() {
        r.unwrap();
        assert!(buf.as_slice() == pattern(i as u64, 4096), "read {i}");
    }
    assert_eq!(aq.inflight(), 0);
    assert!(aq.into_inner().is_ok(), "no future left");
}

/// A woken future: the waker of its last poll is woken by the queue
/// pair's poll that collects its completion.
#[test]
fn the_queue_pairs_poll_wakes_the_future() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let (_sim, ctrl) = open();
    let ns = ctrl.namespace(1).unwrap();
    let aq = AsyncQueuePair::new(ctrl.queue_pair(QueueConfig::default()).unwrap()).unwrap();
    let count = Arc::new(Count(AtomicUsize::new(0)));
    let waker = Waker::from(count.clone());
    let mut cx = Context::from_waker(&waker);
    let mut f = aq
        .submit(Io::read(&ns, 0, vec![0u8; 512]))
        .map_err(|(e, _)| e)
        .unwrap();
    assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
    let start = Instant::now();
    while count.0.load(Ordering::SeqCst) == 0 {
        aq.poll();
        assert!(start.elapsed() < Duration::from_secs(10), "never woken");
    }
    assert_eq!(count.0.load(Ordering::SeqCst), 1);
    let Poll::Ready((buf, r)) = Pin::new(&mut f).poll(&mut cx) else {
        panic!("woken but not ready");
    };
    r.unwrap();
    assert_eq!(buf.len(), 512);
}

/// A future dropped before its request completes does not cancel it: the
/// buffer stays with the request until the completion, then its entry is
/// reused; as many requests as the queue is deep are in flight at most.
#[test]
fn dropped_futures_and_a_full_queue() {
    let (sim, ctrl) = open();
    let ns = ctrl.namespace(1).unwrap();
    let depth = 8;
    let aq = AsyncQueuePair::new(
        ctrl.queue_pair(QueueConfig {
            depth: depth as u16 + 1,
            ..Default::default()
        })
        .unwrap(),
    )
    .unwrap();
    sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::Delay(Duration::from_millis(50)),
    ));
    let held: Vec<_> = (0..depth)
        .map(|i| {
            aq.submit(Io::read(&ns, i, vec![0u8; 512]))
                .map_err(|(e, _)| e)
                .unwrap()
        })
        .collect();
    aq.flush();
    match aq.submit(Io::read(&ns, 0, vec![0u8; 512])) {
        Err((Error::QueueFull { .. }, io)) => assert_eq!(io.into_buf().len(), 512),
        other => panic!("{:?}", other.map(|_| ())),
    }
    drop(held);
    let start = Instant::now();
    while aq.inflight() > 0 {
        aq.poll();
        assert!(start.elapsed() < Duration::from_secs(10));
    }
    // Every entry is free again.
    let again: Vec<_> = (0..depth)
        .map(|i| {
            aq.submit(Io::read(&ns, i, vec![0u8; 512]))
                .map_err(|(e, _)| e)
                .unwrap()
        })
        .collect();
    assert!(run_all(&aq, again).iter().all(|(_, r)| r.is_ok()));
}

/// A poll group over queue pairs of two controllers: every completion is
/// reported with its member, no call takes more than its budget, members
/// take turns, and a command one member's controller never completes
/// times out by time while the group is polled.
#[test]
fn a_poll_group_over_two_controllers() {
    let (sim_a, a) = common::driver::open(Config::default(), Duration::from_millis(200), true);
    let (_sim_b, b) = open();
    let (ns_a, ns_b) = (a.namespace(1).unwrap(), b.namespace(1).unwrap());
    let mut group = PollGroup::new();
    let mut members = Vec::new();
    for (ctrl, ns) in [(&a, &ns_a), (&b, &ns_b), (&a, &ns_a), (&b, &ns_b)] {
        let qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
        members.push((group.add(qp), ns.clone()));
    }
    assert_eq!(group.len(), 4);
    for round in 0..3u64 {
        for (m, ns) in &members {
            let qp = group.get_mut(*m).unwrap();
            for k in 0..8u64 {
                let tag = (*m as u64) << 32 | round << 8 | k;
                qp.submit(Io::read(ns, k, vec![0u8; 512]).tag(tag))
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
        }
        let mut seen = Vec::new();
        let start = Instant::now();
        while seen.len() < 32 {
            let n = group.poll(5, |m, _, d| {
                assert_eq!((d.tag >> 32) as usize, m, "reported with its member");
                assert!(d.result.is_ok());
                seen.push(m);
            });
            assert!(n <= 5, "took {n} with a budget of 5");
            assert!(start.elapsed() < Duration::from_secs(10));
        }
        for m in 0..4 {
            assert_eq!(seen.iter().filter(|&&s| s == m).count(), 8);
        }
    }
    // Budget 1 with every member ready: members take turns.
    for (m, ns) in &members {
        let qp = group.get_mut(*m).unwrap();
        for k in 0..2u64 {
            qp.submit(Io::read(ns, k, vec![0u8; 512]).tag((*m as u64) << 32))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        qp.flush();
    }
    std::thread::sleep(Duration::from_millis(50));
    let mut order = Vec::new();
    while order.len() < 4 {
        group.poll(1, |m, _, _| order.push(m));
    }
    order.sort();
    assert_eq!(order, [0, 1, 2, 3], "one each before anyone's second");
    while group.inflight() > 0 {
        group.poll(64, |_, _, _| {});
    }
    // A stuck command on controller `a`'s member 0 times out (200 ms).
    sim_a.inject(FaultRule::next(Match::io(), FaultAction::Drop));
    group
        .get_mut(0)
        .unwrap()
        .submit(Io::read(&ns_a, 0, vec![0u8; 512]).tag(77))
        .map_err(|(e, _)| e)
        .unwrap();
    let start = Instant::now();
    let mut failed = None;
    while failed.is_none() {
        group.poll(64, |m, _, d| {
            if d.tag == 77 {
                failed = Some((m, d.result));
            }
        });
        assert!(start.elapsed() < Duration::from_secs(5), "no timeout");
        std::thread::sleep(Duration::from_millis(2));
    }
    let (m, r) = failed.unwrap();
    assert_eq!(m, 0);
    assert!(r.is_err(), "{r:?}");
    let qp = group.remove(0).unwrap();
    assert_eq!(group.len(), 3);
    drop(qp);
}

/// Only a VFIO container's DMA space takes more devices: a device model's
/// is refused with a reason, before any device is looked up.
#[test]
fn opening_into_a_space_that_is_no_vfio_container_is_refused() {
    let (_sim, ctrl) = open();
    match Controller::open_in("0000:01:00.0", ctrl.space(), Default::default()) {
        Err(Error::Invalid(m)) => assert!(m.contains("VFIO container"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(ctrl.space().container().is_none());
}

fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(f).poll(&mut cx)
}

fn block_on<F: Future + Unpin>(aq: &AsyncQueuePair, f: &mut F) -> F::Output {
    let start = Instant::now();
    loop {
        if let Poll::Ready(v) = poll_once(f) {
            return v;
        }
        aq.poll();
        assert!(start.elapsed() < Duration::from_secs(10), "stuck");
    }
}

/// A finished future polled again (allowed in safe code) never looks at
/// the entry it had, which the next request may have: it reports that it
/// is done, and the next request's future gets its own buffer.
#[test]
fn a_finished_future_polled_again_takes_nothing_of_the_next_request() {
    let (_sim, ctrl) = open();
    let ns = ctrl.namespace(1).unwrap();
    let aq = AsyncQueuePair::new(ctrl.queue_pair(QueueConfig::default()).unwrap()).unwrap();
    let mut f1 = aq
        .submit(Io::read(&ns, 0, vec![1u8; 4096]))
        .map_err(|(e, _)| e)
        .unwrap();
    let (b1, r1) = block_on(&aq, &mut f1);
    r1.unwrap();
    assert_eq!(b1.len(), 4096);
    let mut f2 = aq
        .submit(Io::read(&ns, 0, vec![2u8; 8192]))
        .map_err(|(e, _)| e)
        .unwrap();
    while aq.inflight() > 0 {
        aq.poll();
    }
    match poll_once(&mut f1) {
        Poll::Ready((IoBuf::Raw, Err(Error::Invalid(_)))) => {}
        Poll::Ready((b, r)) => panic!("f1 again: {} bytes, {r:?}", b.len()),
        Poll::Pending => panic!("f1 again: pending"),
    }
    let (b2, r2) = block_on(&aq, &mut f2);
    r2.unwrap();
    assert_eq!(b2.len(), 8192, "f2 keeps its buffer");
}

/// Only an idle queue pair becomes an `AsyncQueuePair` (completions of
/// earlier requests carry the caller's tags): a busy one is handed back.
#[test]
fn a_busy_queue_pair_is_not_wrapped() {
    let (_sim, ctrl) = open();
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    qp.submit(Io::read(&ns, 0, vec![9u8; 512]).tag(0))
        .map_err(|(e, _)| e)
        .unwrap();
    let Err((Error::Invalid(_), mut qp)) = AsyncQueuePair::new(qp) else {
        panic!("a queue pair with a request in flight was wrapped");
    };
    let mut done = Vec::new();
    while done.is_empty() {
        qp.poll(&mut done);
    }
    assert_eq!(done[0].buf.len(), 512);
    let aq = AsyncQueuePair::new(qp).unwrap();
    let mut f = aq
        .submit(Io::read(&ns, 0, vec![0u8; 4096]))
        .map_err(|(e, _)| e)
        .unwrap();
    let (buf, r) = block_on(&aq, &mut f);
    r.unwrap();
    assert_eq!(buf.len(), 4096);
}

/// `AsyncQueuePair::poll` returns how many requests completed, whether or
/// not their futures were polled yet.
#[test]
fn the_async_poll_counts_completions() {
    let (_sim, ctrl) = open();
    let ns = ctrl.namespace(1).unwrap();
    let aq = AsyncQueuePair::new(ctrl.queue_pair(QueueConfig::default()).unwrap()).unwrap();
    let mut futs: Vec<_> = (0..3)
        .map(|i| {
            aq.submit(Io::read(&ns, i, vec![0u8; 512]))
                .map_err(|(e, _)| e)
                .unwrap()
        })
        .collect();
    let mut completed = 0;
    let start = Instant::now();
    while aq.inflight() > 0 {
        completed += aq.poll();
        assert!(start.elapsed() < Duration::from_secs(10));
    }
    assert_eq!(completed, 3);
    for f in &mut futs {
        assert!(matches!(poll_once(f), Poll::Ready((_, Ok(())))));
    }
}

/// Wakers are the caller's code and run with the queue pair's state
/// released: one that polls the queue pair, submits, and drops futures
/// when cloned, woken or dropped causes no double borrow and no lost
/// wake-up.
#[test]
fn wakers_may_use_the_queue_pair() {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::task::{RawWaker, RawWakerVTable};
    thread_local! {
        static AQ: RefCell<Option<Rc<AsyncQueuePair>>> = const { RefCell::new(None) };
        static HELD: RefCell<Vec<nvme_vfio::ctrl::IoFuture>> = const { RefCell::new(Vec::new()) };
        static WOKEN: RefCell<u32> = const { RefCell::new(0) };
    }
    fn meddle() {
        // Poll the queue, drop the futures held, submit nothing new.
        AQ.with(|a| {
            if let Some(aq) = a.borrow().as_ref() {
                aq.poll();
            }
        });
        HELD.with(|h| h.borrow_mut().clear());
    }
    const VTABLE: RawWakerVTable = RawWakerVTable::new(
        |p| {
            meddle();
            RawWaker::new(p, &VTABLE)
        },
        |_| {
            WOKEN.with(|w| *w.borrow_mut() += 1);
            meddle();
        },
        |_| {
            WOKEN.with(|w| *w.borrow_mut() += 1);
            meddle();
        },
        |_| meddle(),
    );
    let (_sim, ctrl) = open();
    let ns = ctrl.namespace(1).unwrap();
    let aq =
        Rc::new(AsyncQueuePair::new(ctrl.queue_pair(QueueConfig::default()).unwrap()).unwrap());
    AQ.with(|a| *a.borrow_mut() = Some(aq.clone()));
    // SAFETY: the vtable's functions ignore the data pointer.
    let waker = unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VTABLE)) };
    let mut cx = Context::from_waker(&waker);
    for round in 0..20u64 {
        let held = aq
            .submit(Io::read(&ns, round, vec![0u8; 512]))
            .map_err(|(e, _)| e)
            .unwrap();
        HELD.with(|h| h.borrow_mut().push(held));
        let mut f = aq
            .submit(Io::read(&ns, round, vec![0u8; 512]))
            .map_err(|(e, _)| e)
            .unwrap();
        let start = Instant::now();
        let (buf, r) = loop {
            if let Poll::Ready(v) = Pin::new(&mut f).poll(&mut cx) {
                break v;
            }
            aq.poll();
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "round {round}: stuck"
            );
        };
        r.unwrap();
        assert_eq!(buf.len(), 512);
    }
    HELD.with(|h| h.borrow_mut().clear());
    let start = Instant::now();
    while aq.inflight() > 0 {
        aq.poll();
        assert!(start.elapsed() < Duration::from_secs(10));
    }
    AQ.with(|a| *a.borrow_mut() = None);
    drop(waker);
    let aq = Rc::try_unwrap(aq).expect("no other handle");
    assert!(
        aq.into_inner().is_ok(),
        "every future gone, every entry free"
    );
}
