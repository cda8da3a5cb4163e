//! The optional commands of the NVM command set through the driver:
//! Compare, Verify, Write Uncorrectable, Copy and Dataset Management, each
//! blocking and asynchronous; their refusals before submission (a command
//! the controller does not support, a range outside the namespace, a
//! limit of the controller or the namespace, a zoned namespace), and the
//! statuses the controller answers with, by name (Compare Failure,
//! Unrecovered Read Error with its LBA in the error log, Command Size Limit
//! Exceeded). The model's side: what it advertises (ONCS, OCFS, the
//! Commands Supported and Effects log, the limits) and enforces.

mod common;

use std::time::Duration;

use nvme_sim::{Config, CopyLimits, NamespaceConfig, NvmLimitsConfig, SimController};
use nvme_vfio::ctrl::{
    Controller, CopyRange, DsmAttributes, DsmRange, Io, IoBuf, Namespace, Op, OptionalCommand,
    QueueConfig, QueuePair,
};
use nvme_vfio::nvme::cmd::{io, Command};
use nvme_vfio::nvme::nvm::context;
use nvme_vfio::Error;

use common::driver::wait_all;
use common::pattern;

fn open(config: Config) -> (SimController, Controller) {
    common::driver::open(config, Duration::from_secs(30), true)
}

fn setup(config: Config) -> (SimController, Controller, Namespace, QueuePair) {
    let (sim, ctrl) = open(config);
    let ns = ctrl.namespace(1).unwrap();
    let qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    (sim, ctrl, ns, qp)
}

/// The status type and code of a failed command's error.
fn sct_sc(e: &Error) -> (u8, u8) {
    let s = e
        .status()
        .unwrap_or_else(|| panic!("not a command error: {e}"));
    (s.sct(), s.sc())
}

fn read(qp: &mut QueuePair, ns: &Namespace, lba: u64, blocks: usize) -> Vec<u8> {
    let mut b = vec![0u8; blocks * 512];
    qp.read(ns, lba, &mut b).unwrap();
    b
}

/// I/O commands the model executed so far.
fn io_commands(sim: &SimController) -> u64 {
    sim.stats().io_commands
}

#[test]
fn the_controller_reports_every_optional_command_and_its_limits() {
    let (_sim, ctrl, ns, _qp) = setup(Config::default());
    for c in OptionalCommand::ALL {
        assert!(ctrl.supports(c), "{c}");
    }
    // ONCS: Compare, Write Uncorrectable, DSM, Write Zeroes, Verify, Copy.
    assert_eq!(ctrl.identify().oncs(), 0x18f);
    assert_eq!(ctrl.identify().ocfs() & 1, 1, "Copy descriptor format 0");
    let limits = ctrl.nvm_limits();
    assert_eq!(limits.verify_bytes, Some(512 << 10), "QEMU's VSL of 7");
    assert_eq!(limits.write_uncorrectable_bytes, None);
    assert_eq!(limits.dsm_ranges, 256);
    assert_eq!(
        ns.copy_limits(),
        CopyLimits {
            mssrl: 128,
            mcl: 128,
            msrc: 127
        }
    );
}

#[test]
fn compare_succeeds_on_equal_data_and_names_a_mismatch_with_its_lba() {
    let (_sim, ctrl, ns, mut qp) = setup(Config::default());
    let data = pattern(16 * 512, 3);
    qp.write(&ns, 100, &data, false).unwrap();
    // Any memory: user memory, a DMA buffer, an odd address (copied
    // through a DMA buffer without byte-aligned SGLs).
    qp.compare(&ns, 100, &data).unwrap();
    let mut dma = ctrl.dma_alloc(data.len()).unwrap();
    dma.as_mut_slice()[..data.len()].copy_from_slice(&data);
    qp.compare(&ns, 100, &dma.as_slice()[..data.len()]).unwrap();
    let mut odd = vec![0u8; data.len() + 1];
    odd[1..].copy_from_slice(&data);
    qp.compare(&ns, 100, &odd[1..]).unwrap();
    // Longer than the maximum transfer (128 KiB): several commands.
    let long = pattern(1 << 20, 4);
    qp.write(&ns, 4096, &long, false).unwrap();
    qp.compare(&ns, 4096, &long).unwrap();

    let mut other = data.clone();
    other[5 * 512 + 7] ^= 0x40;
    let e = qp.compare(&ns, 100, &other).unwrap_err();
    assert_eq!(sct_sc(&e), (2, 0x85));
    let text = e.to_string();
    assert!(
        text.starts_with("Compare failed: Compare Failure (SCT 0x2, SC 0x85, do not retry"),
        "{text}"
    );
    assert!(
        text.contains("the data did not match in a Compare command"),
        "{text}"
    );
    let entry = e.error_log().expect("the error log entry of the failure");
    assert_eq!(entry.lba, 105, "the first block that differs");
    assert_eq!(entry.opcode, io::COMPARE);
    // In a long compare, the mismatch is in one of its waves or commands.
    let mut long_other = long.clone();
    long_other[(1 << 20) - 1] ^= 1;
    let e = qp.compare(&ns, 4096, &long_other).unwrap_err();
    assert_eq!(sct_sc(&e), (2, 0x85), "{e}");
    // Refused before submission: past the end, not whole blocks, empty.
    let e = qp.compare(&ns, ns.blocks() - 1, &data).unwrap_err();
    assert!(
        matches!(e, Error::Invalid(ref m) if m.contains("past the end")),
        "{e}"
    );
    assert!(matches!(
        qp.compare(&ns, 0, &data[..100]),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(qp.compare(&ns, 0, &[]), Err(Error::Invalid(_))));
}

#[test]
fn write_uncorrectable_blocks_fail_reads_until_written() {
    let (_sim, _ctrl, ns, mut qp) = setup(Config::default());
    let data = pattern(32 * 512, 9);
    qp.write(&ns, 192, &data, false).unwrap();
    qp.verify(&ns, 0, 4096).unwrap();
    qp.write_uncorrectable(&ns, 200, 4).unwrap();

    let mut buf = vec![0u8; 16 * 512];
    let e = qp.read(&ns, 192, &mut buf).unwrap_err();
    assert_eq!(sct_sc(&e), (2, 0x81));
    assert!(e.to_string().contains("Unrecovered Read Error"), "{e}");
    assert_eq!(e.error_log().map(|l| l.lba), Some(200));
    let e = qp.verify(&ns, 190, 20).unwrap_err();
    assert_eq!(sct_sc(&e), (2, 0x81));
    assert!(
        e.to_string()
            .starts_with("Verify failed: Unrecovered Read Error"),
        "{e}"
    );
    assert_eq!(e.error_log().map(|l| l.lba), Some(200));
    let e = qp.compare(&ns, 192, &data).unwrap_err();
    assert_eq!(sct_sc(&e), (2, 0x81), "a compare reads the blocks too");
    // The blocks around are fine.
    assert_eq!(read(&mut qp, &ns, 192, 8), data[..8 * 512]);
    assert_eq!(read(&mut qp, &ns, 204, 4), data[12 * 512..16 * 512]);
    qp.verify(&ns, 204, 100).unwrap();

    // Written again, each way: a write, Write Zeroes, a deallocation.
    qp.write(&ns, 200, &data[..512], false).unwrap();
    qp.write_zeroes(&ns, 201, 1).unwrap();
    qp.deallocate(&ns, &[(202, 1)]).unwrap();
    let e = qp.verify(&ns, 200, 4).unwrap_err();
    assert_eq!(e.error_log().map(|l| l.lba), Some(203), "{e}");
    qp.write(&ns, 203, &data[..512], false).unwrap();
    qp.verify(&ns, 192, 32).unwrap();
    let back = read(&mut qp, &ns, 200, 4);
    assert_eq!(back[..512], data[..512]);
    assert!(back[512..3 * 512].iter().all(|&b| b == 0));

    // Refused before submission: outside the namespace, empty.
    assert!(matches!(
        qp.write_uncorrectable(&ns, ns.blocks(), 1),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(qp.verify(&ns, 0, 0), Err(Error::Invalid(_))));
    assert!(matches!(
        qp.verify(&ns, u64::MAX, 2),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn verify_and_write_uncorrectable_are_split_at_their_size_limits() {
    // VSL 1 and WUSL 2: 8 KiB (16 blocks) and 16 KiB (32 blocks).
    let config = Config::default().nvm_limits(NvmLimitsConfig {
        vsl: 1,
        wusl: 2,
        ..NvmLimitsConfig::default()
    });
    let (sim, ctrl, ns, mut qp) = setup(config);
    let l = ctrl.nvm_limits();
    assert_eq!(
        (l.verify_bytes, l.write_uncorrectable_bytes),
        (Some(8192), Some(16384))
    );
    let before = io_commands(&sim);
    qp.verify(&ns, 0, 100).unwrap();
    assert_eq!(io_commands(&sim) - before, 7, "100 blocks, 16 per Verify");
    let before = io_commands(&sim);
    qp.write_uncorrectable(&ns, 1000, 100).unwrap();
    assert_eq!(io_commands(&sim) - before, 4, "100 blocks, 32 per command");
    let e = qp.verify(&ns, 900, 200).unwrap_err();
    assert_eq!(e.error_log().map(|l| l.lba), Some(1000), "{e}");
    // A long one runs in waves of the queue pair's depth, and a failure
    // names its wave.
    let mut small = ctrl
        .queue_pair(QueueConfig {
            depth: 4,
            ..QueueConfig::default()
        })
        .unwrap();
    let e = small.verify(&ns, 0, 2000).unwrap_err();
    match &e {
        Error::At { lba, blocks, .. } => assert_eq!((*lba, *blocks), (960, 48), "{e}"),
        e => panic!("{e}"),
    }
    assert_eq!(sct_sc(&e), (2, 0x81));
    // Over the limit, the controller itself refuses (as QEMU's does).
    let e = qp
        .io_passthru(&ns, Command::verify(1, 0, 17), None)
        .unwrap_err();
    assert_eq!(sct_sc(&e), (0, 0x02), "{e}");
}

#[test]
fn copy_copies_its_source_ranges_in_order() {
    let (_sim, _ctrl, ns, mut qp) = setup(Config::default());
    let a = pattern(4 * 512, 1);
    let b = pattern(8 * 512, 2);
    let c = pattern(512, 3);
    qp.write(&ns, 10, &a, false).unwrap();
    qp.write(&ns, 50, &b, false).unwrap();
    qp.write(&ns, 90, &c, false).unwrap();
    let sources = [
        CopyRange::new(10, 4),
        CopyRange::new(50, 8),
        CopyRange::new(90, 1),
    ];
    qp.copy(&ns, &sources, 1000).unwrap();
    let want: Vec<u8> = [&a[..], &b[..], &c[..]].concat();
    assert_eq!(read(&mut qp, &ns, 1000, 13), want);
    // Overlapping source and destination: the sources as they were.
    qp.copy(&ns, &[CopyRange::new(1000, 8)], 1004).unwrap();
    assert_eq!(read(&mut qp, &ns, 1004, 8), want[..8 * 512]);
    // The destination's uncorrectable marks go; a source's fails the copy.
    qp.write_uncorrectable(&ns, 2000, 2).unwrap();
    qp.copy(&ns, &[CopyRange::new(10, 2)], 2000).unwrap();
    qp.verify(&ns, 2000, 2).unwrap();
    qp.write_uncorrectable(&ns, 11, 1).unwrap();
    let e = qp.copy(&ns, &sources, 3000).unwrap_err();
    assert_eq!(sct_sc(&e), (2, 0x81), "{e}");
    assert!(
        e.to_string()
            .starts_with("Copy failed: Unrecovered Read Error"),
        "{e}"
    );
    assert_eq!(e.error_log().map(|l| l.lba), Some(11));
}

#[test]
fn copy_limits_are_checked_before_submission() {
    // At most 3 source ranges, 8 blocks each, 16 in all.
    let limits = CopyLimits {
        mssrl: 8,
        mcl: 16,
        msrc: 2,
    };
    let (sim, ctrl, ns, mut qp) = setup(Config::default().copy_limits(limits));
    assert_eq!(ns.copy_limits(), limits);
    qp.copy(
        &ns,
        &[
            CopyRange::new(0, 8),
            CopyRange::new(8, 4),
            CopyRange::new(12, 4),
        ],
        100,
    )
    .unwrap();
    let before = io_commands(&sim);
    let r = |lba, blocks| CopyRange::new(lba, blocks);
    let over = |e: Error, what: &str, requested: u64, max: u64, limit: &str| match e {
        Error::OverLimit {
            what: w,
            requested: r,
            max: m,
            limit: l,
        } => {
            assert_eq!((w, r, m), (what, requested, max), "{l}");
            assert!(l.contains(limit), "{l}");
        }
        e => panic!("{e}"),
    };
    let e = qp.copy(&ns, &[r(0, 1); 4], 100).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Copy source ranges: 4, over the limit of 3 (Identify Namespace MSRC)"
    );
    over(e, "Copy source ranges", 4, 3, "MSRC");
    let e = qp.copy(&ns, &[r(0, 9)], 100).unwrap_err();
    over(e, "Copy source range length in blocks", 9, 8, "MSSRL");
    let e = qp
        .copy(&ns, &[r(0, 8), r(8, 8), r(16, 1)], 100)
        .unwrap_err();
    over(e, "Copy length in blocks", 17, 16, "MCL");
    let e = qp.copy(&ns, &[r(0, 1); 300], 100).unwrap_err();
    over(e, "Copy source ranges", 300, 256, "NR");
    let e = qp.copy(&ns, &[r(ns.blocks() - 1, 2)], 100).unwrap_err();
    assert!(
        matches!(e, Error::Invalid(ref m) if m.contains("past the end")),
        "{e}"
    );
    let e = qp.copy(&ns, &[r(0, 4)], ns.blocks() - 3).unwrap_err();
    assert!(
        matches!(e, Error::Invalid(ref m) if m.contains("past the end")),
        "{e}"
    );
    assert!(matches!(qp.copy(&ns, &[], 100), Err(Error::Invalid(_))));
    assert!(matches!(
        qp.copy(&ns, &[r(0, 0)], 100),
        Err(Error::Invalid(_))
    ));
    // The same, asynchronously: refused, the request back.
    let (e, io) = qp.submit(Io::copy(&ns, &[r(0, 9)], 100)).unwrap_err();
    over(e, "Copy source range length in blocks", 9, 8, "MSSRL");
    assert_eq!(io.into_buf().len(), 32);
    assert_eq!(io_commands(&sim), before, "nothing was submitted");

    // The controller enforces them too: Command Size Limit Exceeded, by
    // name (through passthrough, which checks no limits).
    let mut list = zeroed_dma(&ctrl, 4 * 32);
    for (i, d) in list.as_mut_slice().chunks_exact_mut(32).take(4).enumerate() {
        d.copy_from_slice(&r(i as u64, 1).to_bytes());
    }
    let cmd = Command::copy(1, 100, 4);
    let e = qp.io_passthru(&ns, cmd, Some((list, 4 * 32))).unwrap_err();
    assert_eq!(sct_sc(&e), (1, 0x83));
    assert!(
        e.to_string()
            .contains("Command Size Limit Exceeded (SCT 0x1, SC 0x83"),
        "{e}"
    );
}

/// A zeroed DMA buffer of `len` bytes.
fn zeroed_dma(ctrl: &Controller, len: usize) -> nvme_vfio::mem::DmaBuf {
    let mut b = ctrl.dma_alloc(len).unwrap();
    b.as_mut_slice().fill(0);
    b
}

#[test]
fn dataset_management_takes_many_ranges_with_attributes() {
    let (sim, _ctrl, ns, mut qp) = setup(Config::default());
    let data = pattern(600 * 2 * 512, 5);
    qp.write(&ns, 0, &data, false).unwrap();
    // 300 ranges of one block, every other block, with context
    // attributes: two commands (256 + 44).
    let ranges: Vec<DsmRange> = (0..300)
        .map(|i| {
            DsmRange::new(2 * i, 1).with_attributes(
                context::access_frequency(2)
                    | context::SEQUENTIAL_READ
                    | context::command_access_size(8),
            )
        })
        .collect();
    // Hints only: nothing changes.
    let hints = DsmAttributes {
        deallocate: false,
        integral_read: true,
        integral_write: true,
    };
    let before = io_commands(&sim);
    qp.dataset_management(&ns, &ranges, hints).unwrap();
    assert_eq!(io_commands(&sim) - before, 2);
    assert_eq!(read(&mut qp, &ns, 0, 600), data[..600 * 512]);
    let all = DsmAttributes {
        deallocate: true,
        ..hints
    };
    qp.dataset_management(&ns, &ranges, all).unwrap();
    let back = read(&mut qp, &ns, 0, 600);
    for (i, (got, want)) in back.chunks(512).zip(data.chunks(512)).enumerate() {
        if i % 2 == 0 {
            assert!(got.iter().all(|&b| b == 0), "block {i} deallocated");
        } else {
            assert_eq!(got, want, "block {i} kept");
        }
    }
    // Asynchronously: one command of up to 256 ranges, its list back.
    let io = Io::dataset_management(&ns, &[DsmRange::new(601, 3)], DsmAttributes::DEALLOCATE);
    qp.submit(io.tag(5)).map_err(|(e, _)| e).unwrap();
    let d = wait_all(&mut qp, 1).pop().unwrap();
    assert_eq!(d.tag, 5);
    d.result.unwrap();
    assert!(matches!(d.buf, IoBuf::Vec(ref v) if v.len() == 16));
    assert!(read(&mut qp, &ns, 601, 3).iter().all(|&b| b == 0));
    let many: Vec<DsmRange> = (0..257).map(|i| DsmRange::new(i, 1)).collect();
    let (e, _) = qp
        .submit(Io::dataset_management(
            &ns,
            &many,
            DsmAttributes::DEALLOCATE,
        ))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::OverLimit {
                requested: 257,
                max: 256,
                ..
            }
        ),
        "{e}"
    );
    // Refused before submission: a range outside the namespace (nothing
    // deallocated), an empty one, none.
    let before = io_commands(&sim);
    let bad = [DsmRange::new(1199, 1), DsmRange::new(ns.blocks(), 1)];
    assert!(matches!(
        qp.dataset_management(&ns, &bad, DsmAttributes::DEALLOCATE),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        qp.dataset_management(&ns, &[DsmRange::new(0, 0)], hints),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        qp.dataset_management(&ns, &[], hints),
        Err(Error::Invalid(_))
    ));
    assert_eq!(io_commands(&sim), before);
    assert_eq!(read(&mut qp, &ns, 1199, 1), data[1199 * 512..1200 * 512]);
}

#[test]
fn deallocation_limits_split_or_refuse() {
    // At most 16 ranges, of 64 blocks each, 512 blocks in all, per
    // deallocating Dataset Management.
    let config = Config::default().nvm_limits(NvmLimitsConfig {
        dmrl: 16,
        dmrsl: 64,
        dmsl: 512,
        ..NvmLimitsConfig::default()
    });
    let (sim, ctrl, ns, mut qp) = setup(config);
    let l = ctrl.nvm_limits();
    assert_eq!(
        (l.dsm_ranges, l.dsm_range_blocks, l.dsm_blocks),
        (16, Some(64), Some(512))
    );
    let ranges: Vec<DsmRange> = (0..40).map(|i| DsmRange::new(100 * i, 2)).collect();
    let before = io_commands(&sim);
    qp.dataset_management(&ns, &ranges, DsmAttributes::DEALLOCATE)
        .unwrap();
    assert_eq!(io_commands(&sim) - before, 3, "40 ranges, 16 per command");
    let big: Vec<DsmRange> = (0..10).map(|i| DsmRange::new(100 * i, 60)).collect();
    let before = io_commands(&sim);
    qp.dataset_management(&ns, &big, DsmAttributes::DEALLOCATE)
        .unwrap();
    assert_eq!(io_commands(&sim) - before, 2, "600 blocks, 512 per command");
    let e = qp
        .dataset_management(&ns, &[DsmRange::new(0, 65)], DsmAttributes::DEALLOCATE)
        .unwrap_err();
    assert!(
        matches!(e, Error::OverLimit { requested: 65, max: 64, limit, .. } if limit.contains("DMRSL")),
        "{e}"
    );
    // Hints are not limited; a plain deallocation is split to fit.
    let hints = DsmAttributes {
        integral_read: true,
        ..DsmAttributes::default()
    };
    qp.dataset_management(&ns, &[DsmRange::new(0, 1000)], hints)
        .unwrap();
    let data = pattern(1000 * 512, 8);
    qp.write(&ns, 0, &data, false).unwrap();
    let before = io_commands(&sim);
    qp.deallocate(&ns, &[(0, 1000)]).unwrap();
    assert_eq!(
        io_commands(&sim) - before,
        2,
        "16 pieces of at most 64 blocks, at most 512 blocks per command"
    );
    assert!(read(&mut qp, &ns, 0, 1000).iter().all(|&b| b == 0));
    // The controller enforces them too.
    let mut list = zeroed_dma(&ctrl, 16);
    list.as_mut_slice()[..16].copy_from_slice(&DsmRange::new(0, 65).to_bytes());
    let e = qp
        .io_passthru(&ns, Command::deallocate(1, 1), Some((list, 16)))
        .unwrap_err();
    assert_eq!(sct_sc(&e), (1, 0x83), "{e}");
}

#[test]
fn unsupported_commands_are_refused_before_submission() {
    let config = Config::default()
        .compare(false)
        .verify(false)
        .write_uncorrectable(false)
        .copy(false)
        .dataset_management(false)
        .write_zeroes(false);
    let (sim, ctrl, ns, mut qp) = setup(config);
    assert_eq!(ctrl.identify().oncs(), 0);
    for c in OptionalCommand::ALL {
        assert!(!ctrl.supports(c), "{c}");
    }
    let before = io_commands(&sim);
    let unsupported = |r: Result<(), Error>, command: OptionalCommand| match r {
        Err(Error::UnsupportedCommand { command: c }) => {
            assert_eq!(c, command);
            let e = Error::UnsupportedCommand { command: c };
            assert_eq!(
                e.to_string(),
                format!(
                    "the controller does not support the {} command (Identify Controller ONCS)",
                    command.name()
                )
            );
        }
        r => panic!("{command}: {r:?}"),
    };
    let data = vec![0u8; 4096];
    unsupported(qp.compare(&ns, 0, &data), OptionalCommand::Compare);
    unsupported(qp.verify(&ns, 0, 8), OptionalCommand::Verify);
    unsupported(
        qp.write_uncorrectable(&ns, 0, 8),
        OptionalCommand::WriteUncorrectable,
    );
    unsupported(
        qp.copy(&ns, &[CopyRange::new(0, 8)], 100),
        OptionalCommand::Copy,
    );
    unsupported(
        qp.dataset_management(&ns, &[DsmRange::new(0, 8)], DsmAttributes::DEALLOCATE),
        OptionalCommand::DatasetManagement,
    );
    unsupported(
        qp.deallocate(&ns, &[(0, 8)]),
        OptionalCommand::DatasetManagement,
    );
    unsupported(qp.write_zeroes(&ns, 0, 8), OptionalCommand::WriteZeroes);
    for (io, command) in [
        (Io::compare(&ns, 0, data.clone()), OptionalCommand::Compare),
        (Io::verify(&ns, 0, 8), OptionalCommand::Verify),
        (
            Io::write_uncorrectable(&ns, 0, 8),
            OptionalCommand::WriteUncorrectable,
        ),
        (
            Io::copy(&ns, &[CopyRange::new(0, 8)], 100),
            OptionalCommand::Copy,
        ),
    ] {
        let (e, io) = qp.submit(io).unwrap_err();
        unsupported(Err(e), command);
        drop(io);
    }
    assert_eq!(io_commands(&sim), before, "nothing reached the controller");
    // Reads and writes go on.
    qp.write(&ns, 0, &data, false).unwrap();
    assert_eq!(read(&mut qp, &ns, 0, 8), data);
}

#[test]
fn verify_listed_only_in_the_effects_log_is_supported() {
    // As on QEMU's controller: ONCS leaves Verify out, the Commands
    // Supported and Effects log lists it.
    let (_sim, ctrl, ns, mut qp) = setup(Config::default().verify_in_oncs(false));
    assert_eq!(ctrl.identify().oncs() & (1 << 7), 0);
    assert!(ctrl.supports(OptionalCommand::Verify));
    qp.verify(&ns, 0, 64).unwrap();
    // Without the log, ONCS is all there is.
    let config = Config::default().verify_in_oncs(false).effects_log(false);
    let (_sim, ctrl, ns, mut qp) = setup(config);
    assert!(!ctrl.supports(OptionalCommand::Verify));
    assert!(ctrl.supports(OptionalCommand::Copy));
    assert!(matches!(
        qp.verify(&ns, 0, 64),
        Err(Error::UnsupportedCommand {
            command: OptionalCommand::Verify
        })
    ));
}

#[test]
fn a_zoned_namespace_refuses_write_uncorrectable_and_copy() {
    let config = Config::default().namespaces(&[
        NamespaceConfig::new(128 << 10, 512),
        NamespaceConfig::new(8 << 10, 512).zoned(1024),
    ]);
    let (sim, ctrl) = open(config);
    let zns = ctrl.namespace(2).unwrap();
    assert!(zns.is_zoned());
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let before = io_commands(&sim);
    assert!(matches!(
        qp.write_uncorrectable(&zns, 0, 1),
        Err(Error::ZonedNamespace { nsid: 2 })
    ));
    assert!(matches!(
        qp.copy(&zns, &[CopyRange::new(0, 1)], 0),
        Err(Error::ZonedNamespace { nsid: 2 })
    ));
    let (e, _) = qp.submit(Io::write_uncorrectable(&zns, 0, 1)).unwrap_err();
    assert!(matches!(e, Error::ZonedNamespace { nsid: 2 }), "{e}");
    let (e, _) = qp
        .submit(Io::copy(&zns, &[CopyRange::new(0, 1)], 0))
        .unwrap_err();
    assert!(matches!(e, Error::ZonedNamespace { nsid: 2 }), "{e}");
    assert_eq!(io_commands(&sim), before);
    // Reading commands work: an empty zone reads as zeroes.
    qp.compare(&zns, 0, &[0u8; 4096]).unwrap();
    qp.verify(&zns, 0, 1024).unwrap();
    qp.dataset_management(&zns, &[DsmRange::new(0, 8)], DsmAttributes::DEALLOCATE)
        .unwrap();
}

#[test]
fn asynchronous_requests_of_every_optional_command() {
    let (_sim, ctrl, ns, mut qp) = setup(Config::default());
    let data = pattern(8 * 512, 6);
    qp.write(&ns, 300, &data, false).unwrap();
    let mut other = data.clone();
    other[0] ^= 1;
    let requests = [
        Io::compare(&ns, 300, data.clone()).tag(1),
        Io::compare(&ns, 300, other).tag(2),
        // 3000 blocks: three Verify commands (1024 blocks at most each).
        Io::verify(&ns, 0, 3000).tag(3),
        Io::write_uncorrectable(&ns, 5000, 2).tag(4),
        Io::copy(&ns, &[CopyRange::new(300, 8)], 6000).tag(5),
        Io::dataset_management(&ns, &[DsmRange::new(7000, 1)], DsmAttributes::DEALLOCATE).tag(6),
        // A Compare of a DMA buffer, its first 4 blocks (with_len).
        {
            let mut b = ctrl.dma_alloc(8 * 512).unwrap();
            b.as_mut_slice()[..8 * 512].copy_from_slice(&data);
            Io::compare(&ns, 300, b).with_len(4 * 512).tag(7)
        },
    ];
    for io in requests {
        qp.submit(io).map_err(|(e, _)| e).unwrap();
    }
    let mut done = wait_all(&mut qp, 7);
    done.sort_by_key(|d| d.tag);
    let tags: Vec<u64> = done.iter().map(|d| d.tag).collect();
    assert_eq!(tags, [1, 2, 3, 4, 5, 6, 7]);
    let mut it = done.into_iter();
    let d = it.next().unwrap();
    d.result.unwrap();
    assert!(
        matches!(d.buf, IoBuf::Vec(ref v) if v == &data),
        "the buffer is back"
    );
    let d = it.next().unwrap();
    assert_eq!(sct_sc(&d.result.unwrap_err()), (2, 0x85));
    let d = it.next().unwrap();
    d.result.unwrap();
    assert!(matches!(d.buf, IoBuf::Raw));
    for d in it {
        d.result.unwrap_or_else(|e| panic!("tag {}: {e}", d.tag));
    }
    assert_eq!(read(&mut qp, &ns, 6000, 8), data);
    let e = qp.verify(&ns, 5000, 2).unwrap_err();
    assert_eq!(sct_sc(&e), (2, 0x81));
    // A Verify longer than the queue pair can ever have in flight.
    let mut small = ctrl
        .queue_pair(QueueConfig {
            depth: 4,
            ..QueueConfig::default()
        })
        .unwrap();
    let (e, _) = small.submit(Io::verify(&ns, 0, 5000)).unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    // submit_raw takes reads, writes and compares only.
    let seg = blk_dma::HostSeg::from_slice(&data);
    // SAFETY: refused before anything is submitted (the test checks), so
    // `data` is never lent to the device.
    let r = unsafe { qp.submit_raw(Op::Verify, &ns, 0, &[seg], 9) };
    assert!(
        matches!(r, Err(Error::Invalid(ref m)) if m.contains("submit_raw")),
        "{r:?}"
    );
}
