//! Passthrough of application-built admin and I/O commands with driver
//! buffers (one page, two pages, a PRP list), and log pages read at any
//! offset and length.

mod common;
use std::time::Duration;

use nvme_sim::{Config, SimController};
use nvme_vfio::ctrl::{Controller, QueueConfig};
use nvme_vfio::nvme::cmd::{admin, io, log_page, Command};
use nvme_vfio::Error;

fn open() -> (SimController, Controller) {
    common::driver::open(Config::default(), Duration::from_secs(30), true)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// Identify through admin passthrough returns what the driver's own
/// Identify read; the buffer comes back.
#[test]
fn admin_passthrough_with_a_data_buffer() {
    let (_sim, ctrl) = open();
    let mut cmd = Command::new(admin::IDENTIFY, 0);
    cmd.cdw10 = 1; // CNS 01h: the controller
    let buf = ctrl.dma_alloc(4096).unwrap();
    let (dw0, buf) = ctrl.admin_passthru(cmd, Some((buf, 4096))).unwrap();
    assert_eq!(dw0, 0);
    let buf = buf.expect("the buffer comes back");
    assert_eq!(&buf.as_slice()[..4096], &ctrl.identify().0[..]);
    // Get Features (Number of Queues) without data: dword 0 is the result.
    let mut cmd = Command::new(admin::GET_FEATURES, 0);
    cmd.cdw10 = 0x07;
    let (dw0, none) = ctrl.admin_passthru(cmd, None).unwrap();
    assert!(none.is_none());
    assert!(
        (dw0 & 0xffff) + 1 >= u32::from(ctrl.io_queues()),
        "{dw0:#x}"
    );
    // An unknown opcode fails with its status named.
    match ctrl.admin_passthru(Command::new(0xc3, 0), None) {
        Err(e @ Error::Command { .. }) => {
            assert!(e.to_string().contains("Invalid Command Opcode"), "{e}")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

/// Log pages at an offset and of a length: the SMART log read whole and
/// from byte 4 matches `smart_log`; a length that is not a multiple of 4
/// is refused before anything is sent.
#[test]
fn log_pages_at_any_offset_and_length() {
    let (_sim, ctrl) = open();
    let whole = ctrl
        .get_log_page(log_page::SMART, 0xffff_ffff, 0, 0, 512)
        .unwrap();
    assert_eq!(whole.len(), 512);
    assert_eq!(whole, ctrl.smart_log().unwrap().to_bytes().to_vec());
    let part = ctrl
        .get_log_page(log_page::SMART, 0xffff_ffff, 0, 4, 64)
        .unwrap();
    assert_eq!(part, whole[4..68].to_vec());
    assert!(matches!(
        ctrl.get_log_page(log_page::SMART, 0xffff_ffff, 0, 0, 6),
        Err(Error::Invalid(_))
    ));
}

/// I/O passthrough: a write of one page, two pages and sixteen pages (a
/// PRP list) and reads of them back, with the driver's buffers; Flush
/// without data.
#[test]
fn io_passthrough_one_two_and_many_pages() {
    let (_sim, ctrl) = open();
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let bs = ns.block_size() as usize;
    for len in [4096usize, 8192, 65536] {
        let data = pattern(len);
        let mut buf = ctrl.dma_alloc(len).unwrap();
        buf.as_mut_slice()[..len].copy_from_slice(&data);
        let mut w = Command::new(io::WRITE, ns.id());
        w.cdw10 = 64;
        w.cdw12 = (len / bs - 1) as u32;
        qp.io_passthru(&ns, w, Some((buf, len))).unwrap();
        let mut r = Command::new(io::READ, ns.id());
        r.cdw10 = 64;
        r.cdw12 = (len / bs - 1) as u32;
        let buf = ctrl.dma_alloc(len).unwrap();
        let back = qp.io_passthru(&ns, r, Some((buf, len))).unwrap().unwrap();
        assert!(back.as_slice()[..len] == data[..], "{len} bytes");
        let mut b = vec![0u8; len];
        qp.read(&ns, 64, &mut b).unwrap();
        assert!(b == data, "{len} bytes, read by the driver");
    }
    assert!(qp
        .io_passthru(&ns, Command::new(io::FLUSH, ns.id()), None)
        .unwrap()
        .is_none());
    // A read of 16 blocks (8 KiB) into a 4 KiB buffer: refused before
    // anything is sent.
    let mut r = Command::new(io::READ, ns.id());
    r.cdw12 = 15;
    let buf = ctrl.dma_alloc(4096).unwrap();
    assert!(matches!(
        qp.io_passthru(&ns, r, Some((buf, 4096))),
        Err(Error::Invalid(_))
    ));
}

/// The safe passthrough takes the transfer length from the command, not
/// from the caller: a command that would move more than the buffer holds
/// is refused, so the device never writes past it into a neighbour.
#[test]
fn a_transfer_longer_than_the_buffer_is_refused() {
    let (_sim, ctrl) = open();
    let small = ctrl.dma_alloc(512).unwrap();
    let mut victim = ctrl.dma_alloc(512).unwrap();
    victim.as_mut_slice().fill(0xaa);
    let mut cmd = Command::new(admin::IDENTIFY, 0);
    cmd.cdw10 = 1;
    match ctrl.admin_passthru(cmd, Some((small, 512))) {
        Err(Error::Invalid(m)) => assert!(m.contains("4096"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let mut r = Command::new(io::READ, ns.id());
    r.cdw12 = 7;
    let small = ctrl.dma_alloc(512).unwrap();
    assert!(matches!(
        qp.io_passthru(&ns, r, Some((small, 512))),
        Err(Error::Invalid(_))
    ));
    assert!(victim.as_slice().iter().all(|&b| b == 0xaa));
}

/// The caller's data pointer, metadata pointer and PSDT never reach the
/// device: without a buffer, a command that moves data is refused; with
/// one, the driver's data pointer replaces the caller's.
#[test]
fn the_callers_data_pointer_never_reaches_the_device() {
    let (_sim, ctrl) = open();
    let mut victim = ctrl.dma_alloc(4096).unwrap();
    victim.as_mut_slice().fill(0xaa);
    let mut cmd = Command::new(admin::IDENTIFY, 0);
    cmd.cdw10 = 1;
    cmd.dptr = [victim.iova().raw(), 0];
    assert!(matches!(
        ctrl.admin_passthru(cmd, None),
        Err(Error::Invalid(_))
    ));
    let buf = ctrl.dma_alloc(4096).unwrap();
    let (_, back) = ctrl.admin_passthru(cmd, Some((buf, 4096))).unwrap();
    assert_eq!(&back.unwrap().as_slice()[..4096], &ctrl.identify().0[..]);
    assert!(
        victim.as_slice().iter().all(|&b| b == 0xaa),
        "the victim untouched"
    );
}

/// Commands that would give the controller memory or take the driver's
/// own state are refused by the safe passthrough.
#[test]
fn commands_that_take_the_drivers_state_are_refused() {
    let (_sim, ctrl) = open();
    for op in [
        admin::CREATE_SQ,
        admin::CREATE_CQ,
        admin::DELETE_SQ,
        admin::DELETE_CQ,
        admin::ASYNC_EVENT,
        admin::DOORBELL_BUFFER_CONFIG,
    ] {
        assert!(
            matches!(
                ctrl.admin_passthru(Command::new(op, 0), None),
                Err(Error::Invalid(_))
            ),
            "opcode {op:#x}"
        );
    }
    for fid in [0x07u32, 0x0b, 0x0d] {
        let mut c = Command::new(admin::SET_FEATURES, 0);
        c.cdw10 = fid;
        let buf = ctrl.dma_alloc(4096).unwrap();
        assert!(
            matches!(
                ctrl.admin_passthru(c, Some((buf, 4096))),
                Err(Error::Invalid(_))
            ),
            "feature {fid:#x}"
        );
    }
    // The controller still works.
    assert!(ctrl.smart_log().is_ok());
}

/// Format NVM to the namespace's own LBA format erases its data; to a
/// format it lacks fails with Invalid Format, the data kept.
#[test]
fn format_nvm_erases_and_checks_the_format() {
    let (_sim, ctrl) = open();
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let data = pattern(4096);
    qp.write(&ns, 8, &data, false).unwrap();
    match ctrl.format_nvm(1, 15, 0) {
        Err(e @ Error::Command { .. }) => assert!(e.to_string().contains("Invalid Format"), "{e}"),
        other => panic!("{other:?}"),
    }
    let mut back = vec![0u8; 4096];
    qp.read(&ns, 8, &mut back).unwrap();
    assert!(back == data, "a refused format erases nothing");
    let lbaf = u8::from(ns.block_size() == 4096);
    ctrl.format_nvm(1, lbaf, 0).unwrap();
    qp.read(&ns, 8, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0), "formatted");
    assert!(matches!(ctrl.format_nvm(1, 64, 0), Err(Error::Invalid(_))));
}

/// The firmware slot log parses from the controller's page.
#[test]
fn the_firmware_slot_log() {
    let (_sim, ctrl) = open();
    let f = ctrl.firmware_log().unwrap();
    assert_eq!(f.active_slot, 1);
    assert_eq!(f.revisions[0].as_deref(), Some(env!("CARGO_PKG_VERSION")));
}
