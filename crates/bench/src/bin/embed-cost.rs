//! Runs one embedding-API workload on nvme-sim (inline null mode: the
//! device runs inside the doorbell writes, moves no data) for instruction
//! counting under callgrind (scripts/bench-embed.sh):
//!
//!   embed-cost group N      4 queue pairs at QD 32 on one thread, polled
//!                           as one PollGroup, until N I/Os completed
//!   embed-cost each N       the same 4 queue pairs polled one by one
//!   embed-cost async QD N   one queue pair, QD futures (AsyncQueuePair)
//!                           kept in flight by a minimal executor
//!   embed-cost sync QD N    one queue pair, QD requests kept in flight
//!                           with submit/poll
//!
//! The measured loop is the function `measured` (the script toggles
//! collection on it, and off inside the device's doorbell handling).

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use nvme_bench::perf::{SimOptions, Target};
use nvme_vfio::ctrl::{
    AsyncQueuePair, Controller, Done, Io, IoBuf, Namespace, PollGroup, QueueConfig, QueuePair,
};

const MEMBERS: usize = 4;
const GROUP_QD: usize = 32;

#[allow(clippy::large_enum_variant)]
enum Setup {
    Group(PollGroup),
    Each(Vec<QueuePair>),
    Async(AsyncQueuePair),
    Sync(QueuePair),
}

fn qp(ctrl: &Controller, qd: usize) -> QueuePair {
    ctrl.queue_pair(QueueConfig {
        depth: qd as u16 + 1,
        ..Default::default()
    })
    .expect("queue pair")
}

fn read(ns: &Namespace, k: u64, buf: IoBuf) -> Io {
    Io::read(ns, (k % 1024) * 8, buf).tag(k)
}

/// The loop under measurement: keeps `qd` requests in flight per queue
/// pair until `n` have completed.
#[inline(never)]
fn measured(setup: &mut Setup, ctrl: &Controller, ns: &Namespace, qd: usize, n: u64) -> u64 {
    let mut done: Vec<Done> = Vec::with_capacity(MEMBERS * qd);
    let mut completed = 0u64;
    let buf = |_| IoBuf::from(ctrl.dma_alloc(4096).expect("DMA buffer"));
    match setup {
        Setup::Group(g) => {
            for m in 0..MEMBERS {
                let q = g.get_mut(m).expect("member");
                for k in 0..qd as u64 {
                    q.submit(read(ns, k, buf(k)))
                        .map_err(|(e, _)| e)
                        .expect("submit");
                }
            }
            while completed < n {
                g.poll(MEMBERS * qd, |_, q, d| {
                    completed += 1;
                    q.submit(read(ns, d.tag, d.buf))
                        .map_err(|(e, _)| e)
                        .expect("submit");
                });
            }
            while g.inflight() > 0 {
                g.poll(usize::MAX, |_, _, _| {});
            }
        }
        Setup::Each(qps) => {
            for q in qps.iter_mut() {
                for k in 0..qd as u64 {
                    q.submit(read(ns, k, buf(k)))
                        .map_err(|(e, _)| e)
                        .expect("submit");
                }
            }
            while completed < n {
                for q in qps.iter_mut() {
                    q.poll(&mut done);
                    for d in done.drain(..) {
                        completed += 1;
                        q.submit(read(ns, d.tag, d.buf))
                            .map_err(|(e, _)| e)
                            .expect("submit");
                    }
                }
            }
            for q in qps.iter_mut() {
                while q.inflight() > 0 {
                    q.poll(&mut done);
                    done.clear();
                }
            }
        }
        Setup::Async(aq) => {
            let mut cx = Context::from_waker(Waker::noop());
            let mut futs: Vec<Option<_>> = (0..qd as u64)
                .map(|k| {
                    Some(
                        aq.submit(read(ns, k, buf(k)))
                            .map_err(|(e, _)| e)
                            .expect("submit"),
                    )
                })
                .collect();
            let mut submitted = qd as u64;
            let mut live = qd;
            while live > 0 {
                for slot in futs.iter_mut() {
                    let Some(f) = slot.as_mut() else { continue };
                    if let Poll::Ready((b, r)) = Pin::new(f).poll(&mut cx) {
                        black_box(r.is_ok());
                        completed += 1;
                        *slot = if submitted < n {
                            submitted += 1;
                            Some(
                                aq.submit(read(ns, submitted, b))
                                    .map_err(|(e, _)| e)
                                    .expect("submit"),
                            )
                        } else {
                            live -= 1;
                            None
                        };
                    }
                }
                aq.poll();
            }
        }
        Setup::Sync(q) => {
            for k in 0..qd as u64 {
                q.submit(read(ns, k, buf(k)))
                    .map_err(|(e, _)| e)
                    .expect("submit");
            }
            let mut submitted = qd as u64;
            while completed < n {
                q.poll(&mut done);
                for d in done.drain(..) {
                    completed += 1;
                    if submitted < n {
                        q.submit(read(ns, submitted, d.buf))
                            .map_err(|(e, _)| e)
                            .expect("submit");
                        submitted += 1;
                    }
                }
            }
        }
    }
    completed
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| args.get(i).and_then(|s| s.parse::<u64>().ok());
    let (mode, qd, n) = match (args.first().map(String::as_str), num(1), num(2)) {
        (Some(m @ ("group" | "each")), Some(n), None) => (m, GROUP_QD, n),
        (Some(m @ ("async" | "sync")), Some(qd), Some(n)) if (1..=1024).contains(&qd) => {
            (m, qd as usize, n)
        }
        _ => {
            eprintln!("usage: embed-cost group|each N | embed-cost async|sync QD N");
            return ExitCode::from(2);
        }
    };
    let sim = SimOptions {
        null: true,
        inline: true,
        spin: Duration::ZERO,
        ..SimOptions::default()
    };
    let target = match Target::sim(&sim, MEMBERS as u16) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("embed-cost: {e}");
            return ExitCode::from(1);
        }
    };
    let ctrl = target.controller();
    let ns = ctrl.namespace(1).expect("namespace 1");
    let mut setup = match mode {
        "group" => {
            let mut g = PollGroup::new();
            for _ in 0..MEMBERS {
                g.add(qp(ctrl, qd));
            }
            Setup::Group(g)
        }
        "each" => Setup::Each((0..MEMBERS).map(|_| qp(ctrl, qd)).collect()),
        "async" => Setup::Async(
            AsyncQueuePair::new(qp(ctrl, qd))
                .map_err(|(e, _)| e)
                .expect("an idle queue pair"),
        ),
        _ => Setup::Sync(qp(ctrl, qd)),
    };
    let done = measured(&mut setup, ctrl, &ns, qd, n);
    println!("{mode}: {done} I/Os");
    ExitCode::SUCCESS
}
