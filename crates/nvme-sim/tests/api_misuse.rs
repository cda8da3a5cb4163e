//! Safe API misuse. Everything here must be refused (buffer back),
//! never submitted, never panic.

mod common;
use std::time::Duration;

use nvme_sim::{Config, SimController};
use nvme_vfio::ctrl::{Controller, Io, IoBuf, QueueConfig};
use nvme_vfio::Error;

fn open(config: Config) -> (SimController, Controller) {
    common::driver::open(config, Duration::from_secs(2), true)
}

#[test]
fn bad_requests_are_refused() {
    let (sim, ctrl) = open(Config::default());
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let before = sim.stats().io_commands;
    let cases: Vec<(&str, Io)> = vec![
        (
            "len > buffer",
            Io::read(&ns, 0, vec![0u8; 512]).with_len(1024),
        ),
        (
            "len > DmaBuf",
            Io::read(&ns, 0, ctrl.dma_alloc(512).unwrap()).with_len(4096),
        ),
        ("zero len", Io::read(&ns, 0, vec![0u8; 512]).with_len(0)),
        ("empty vec", Io::read(&ns, 0, Vec::<u8>::new())),
        ("not a block", Io::read(&ns, 0, vec![0u8; 700])),
        ("huge lba", Io::read(&ns, u64::MAX, vec![0u8; 512])),
        ("lba past end", Io::read(&ns, ns.blocks(), vec![0u8; 512])),
        ("lba + len wraps", Io::write(&ns, u64::MAX, vec![0u8; 4096])),
        ("raw", Io::read(&ns, 0, IoBuf::Raw)),
        ("raw with len", Io::read(&ns, 0, IoBuf::Raw).with_len(512)),
        (
            "usize::MAX len",
            Io::read(&ns, 0, vec![0u8; 512]).with_len(usize::MAX),
        ),
    ];
    for (what, io) in cases {
        let len = io_len(&io);
        match qp.submit(io) {
            Ok(()) => panic!("{what} accepted"),
            Err((e, io)) => {
                assert!(matches!(e, Error::Invalid(_)), "{what}: {e}");
                assert_eq!(io_len(&io), len);
            }
        }
    }
    let mut out = Vec::new();
    qp.poll(&mut out);
    assert!(out.is_empty());
    let mut z: [u8; 0] = [];
    assert!(qp.read(&ns, 0, &mut z).is_err());
    assert!(qp
        .read_vectored(&ns, 0, &mut [&mut z[..], &mut [0u8; 512][..]])
        .is_err());
    assert!(qp.write_zeroes(&ns, u64::MAX, 2).is_err());
    assert!(qp.deallocate(&ns, &[]).is_err());
    assert!(qp.deallocate(&ns, &[(0, u64::MAX)]).is_err());
    assert_eq!(
        sim.stats().io_commands,
        before,
        "nothing reached the device"
    );
}

fn io_len(io: &Io) -> usize {
    format!("{io:?}").len()
}

/// A DmaBuf of another controller's DMA space (another IOMMU) is plain
/// memory to this one: mapped per I/O, data right.
#[test]
fn dma_buf_of_another_space() {
    let (sim_a, ctrl_a) = open(Config::default());
    let (_sim_b, ctrl_b) = open(Config::default());
    let ns = ctrl_a.namespace(1).unwrap();
    let data = vec![0x5au8; 4096];
    sim_a.write_blocks(1, 3, &data).unwrap();
    let mut qp = ctrl_a.queue_pair(QueueConfig::default()).unwrap();
    qp.submit(Io::read(&ns, 3, ctrl_b.dma_alloc(4096).unwrap()))
        .map_err(|(e, _)| e)
        .unwrap();
    let mut out = Vec::new();
    while out.is_empty() {
        qp.poll(&mut out);
    }
    assert!(out[0].result.is_ok(), "{:?}", out[0].result);
    assert_eq!(out[0].buf.as_slice(), &data[..]);
}

/// A queue pair outliving its controller fails fast, never hangs.
#[test]
fn queue_pair_after_controller_drop() {
    let (_sim, ctrl) = open(Config::default());
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    drop(ctrl);
    let mut b = vec![0u8; 512];
    assert!(matches!(qp.read(&ns, 0, &mut b), Err(Error::Closed)));
    let (e, _) = qp.submit(Io::read(&ns, 0, vec![0u8; 512])).unwrap_err();
    assert!(matches!(e, Error::Closed), "{e}");
    assert!(qp.flush_cache(&ns).is_err());
    let mut out = Vec::new();
    assert_eq!(qp.wait(&mut out, Duration::from_millis(10)), 0);
}
