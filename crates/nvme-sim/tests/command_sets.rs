//! I/O command sets: the driver enables every command set the controller
//! has (CC.CSS = 110b) or NVM alone, finds each namespace's command set
//! (descriptor list, per command set namespace lists, CNS 08h), reads a
//! zoned namespace's zones and reads from it (`zoned.rs` has the zone
//! commands and writes). The model's side: a zoned namespace is active
//! only with CC.CSS = 110b, and takes writes only at a zone's write
//! pointer.

mod common;

use std::time::Duration;

use nvme_sim::{Config, NamespaceConfig, SimController};
use nvme_vfio::ctrl::{CommandSet, Controller, Io, NamespaceEntry, QueueConfig};
use nvme_vfio::nvme::cmd::{cns, io, Command};
use nvme_vfio::nvme::identify::IDENTIFY_LEN;
use nvme_vfio::nvme::iocs::{IdentifyZonedNamespace, NamespaceIds};
use nvme_vfio::nvme::regs::{css, offset, Cc, Registers};
use nvme_vfio::Error;

use common::{pattern, st, Driver, PAGE};

/// Zone size of the zoned namespace, in 512-byte blocks (512 KiB).
const ZONE: u64 = 1024;

/// Namespace 1: NVM, 64 MiB. Namespace 2: zoned, 8 zones, at most 6 open
/// and 10 active.
fn two_namespaces() -> Config {
    Config::default().namespaces(&[
        NamespaceConfig::new(128 << 10, 512),
        NamespaceConfig::new(8 * ZONE, 512)
            .zoned(ZONE)
            .zone_limits(6, 10),
    ])
}

fn open(config: Config) -> (SimController, Controller) {
    common::driver::open(config, Duration::from_secs(30), true)
}

fn cc_css(sim: &SimController) -> u8 {
    Cc(sim.read32(offset::CC)).css()
}

#[test]
fn the_driver_enables_every_command_set_and_finds_each_namespaces() {
    let (sim, ctrl) = open(two_namespaces());
    assert!(ctrl.io_command_sets(), "CAP.CSS bit 6 is set");
    assert_eq!(cc_css(&sim), css::ALL_IO, "CC.CSS = 110b");

    let nvm = ctrl.namespace(1).unwrap();
    assert_eq!(nvm.command_set(), CommandSet::Nvm);
    assert!(!nvm.is_zoned() && nvm.zones().is_none());

    let zoned = ctrl.namespace(2).unwrap();
    assert_eq!(zoned.command_set(), CommandSet::Zoned);
    assert!(zoned.is_zoned());
    assert_eq!((zoned.blocks(), zoned.block_size()), (8 * ZONE, 512));
    let z = zoned.zones().expect("the zoned namespace's zones");
    assert_eq!(z.zone_blocks(), ZONE);
    assert_eq!(z.max_open(), Some(6));
    assert_eq!(z.max_active(), Some(10));
    assert!(!z.reads_cross_zones());

    assert_eq!(
        ctrl.list_namespaces().unwrap(),
        vec![
            NamespaceEntry {
                nsid: 1,
                command_set: CommandSet::Nvm
            },
            NamespaceEntry {
                nsid: 2,
                command_set: CommandSet::Zoned
            },
        ]
    );
    assert_eq!(ctrl.active_namespaces().unwrap(), vec![1, 2]);
    assert_eq!(ctrl.active_namespaces_of(CommandSet::Nvm).unwrap(), vec![1]);
    assert_eq!(
        ctrl.active_namespaces_of(CommandSet::Zoned).unwrap(),
        vec![2]
    );
    // A command set the controller does not have: its status.
    assert!(matches!(
        ctrl.active_namespaces_of(CommandSet::KeyValue),
        Err(Error::Command { .. })
    ));

    let info = ctrl.namespace_info(2).unwrap();
    assert_eq!(info.command_set, CommandSet::Zoned);
    assert_eq!(info.zones(), Some(*z));
    let ids = info.ids.expect("descriptor list");
    assert_eq!(ids.csi, Some(2));
    assert!(ids.uuid.is_some());
    let ind = info
        .independent
        .expect("CNS 08h on a controller with I/O command sets");
    assert!(ind.ready() && !ind.write_protected());
    assert_eq!(info.identify.unwrap().nsze(), 8 * ZONE);
    assert!(ctrl.namespace_info(1).unwrap().zoned.is_none());

    assert!(matches!(
        ctrl.namespace(3),
        Err(Error::NoNamespace { nsid: 3 })
    ));
    assert!(matches!(
        ctrl.namespace_info(3),
        Err(Error::NoNamespace { nsid: 3 })
    ));
    assert!(matches!(
        ctrl.namespace(0),
        Err(Error::NoNamespace { nsid: 0 })
    ));
}

#[test]
fn a_controller_without_io_command_sets_is_enabled_for_nvm_only() {
    let (sim, ctrl) = open(Config::default().io_command_sets(false));
    assert!(!ctrl.io_command_sets());
    assert_eq!(cc_css(&sim), css::NVM, "CC.CSS = 000b");
    let ns = ctrl.namespace(1).unwrap();
    assert_eq!(ns.command_set(), CommandSet::Nvm);
    // Version 1.4 without I/O command sets: no CNS 08h asked for.
    assert!(ctrl.identify_namespace_independent(1).unwrap().is_none());
    assert!(ctrl.namespace_info(1).unwrap().ids.is_none());
    assert!(matches!(
        ctrl.active_namespaces_of(CommandSet::Nvm),
        Err(Error::Unsupported(_))
    ));
    assert_eq!(
        ctrl.list_namespaces().unwrap(),
        vec![NamespaceEntry {
            nsid: 1,
            command_set: CommandSet::Nvm
        }]
    );
    // I/O works as before.
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let data = pattern(4096, 3);
    qp.write(&ns, 8, &data, false).unwrap();
    let mut back = vec![0u8; 4096];
    qp.read(&ns, 8, &mut back).unwrap();
    assert_eq!(back, data);
}

#[test]
fn a_zoned_namespace_reads() {
    let (sim, ctrl) = open(two_namespaces());
    let ns = ctrl.namespace(2).unwrap();
    let data = pattern(64 << 10, 7);
    let lba = 3 * ZONE + 16;
    sim.write_blocks(2, lba, &data).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let mut back = vec![0u8; data.len()];
    qp.read(&ns, lba, &mut back).unwrap();
    assert!(back == data, "blocking read of the zoned namespace");
    // Asynchronous, into a DMA buffer.
    qp.submit(Io::read(&ns, lba, ctrl.dma_alloc(4096).unwrap()).with_len(4096))
        .map_err(|(e, _)| e)
        .unwrap();
    let done = common::driver::wait_all(&mut qp, 1);
    let (buf, r) = done.into_iter().next().unwrap().into_parts();
    r.unwrap();
    assert_eq!(&buf.as_slice()[..4096], &data[..4096]);
}

/// The test driver with CC.CSS = `css`, I/O queue 1 of 64 entries.
fn raw_driver(config: Config, css: u8) -> Driver {
    let mut d = Driver::new_disabled(config);
    d.program_admin(32);
    d.sim.write32(offset::CC, Driver::cc().with_css(css).0);
    common::wait_for("CSTS.RDY = 1", || d.csts().ready());
    d.create_io_queue(1, 64);
    d
}

/// Identify `cmd` into fresh test memory: its status and data.
fn identify(d: &mut Driver, cmd: Command) -> (nvme_vfio::nvme::cmd::Status, Vec<u8>) {
    let buf = d.alloc(PAGE);
    let c = d.admin(cmd, Some(buf));
    (c.status(), d.mem.bytes(buf, IDENTIFY_LEN))
}

fn id_list(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .take_while(|&id| id != 0)
        .collect()
}

#[test]
fn the_model_answers_the_command_set_identify_values() {
    let mut d = raw_driver(two_namespaces(), css::ALL_IO);
    let (s, b) = identify(&mut d, Command::identify(cns::NAMESPACE_DESCRIPTORS, 2));
    assert!(s.is_success());
    assert_eq!(
        NamespaceIds::parse(&b).command_set(),
        Some(CommandSet::Zoned)
    );
    let (s, b) = identify(&mut d, Command::identify(cns::NAMESPACE_DESCRIPTORS, 1));
    assert!(s.is_success());
    assert_eq!(NamespaceIds::parse(&b).command_set(), Some(CommandSet::Nvm));
    let (s, _) = identify(&mut d, Command::identify(cns::NAMESPACE_DESCRIPTORS, 3));
    assert_eq!(st(s), (0, 0x0b, true), "inactive NSID");

    let (s, b) = identify(&mut d, Command::identify_csi(cns::CSI_NAMESPACE, 2, 2));
    assert!(s.is_success());
    let mut z = IdentifyZonedNamespace::default();
    z.0.copy_from_slice(&b);
    assert_eq!(z.zone_size(0), Some(ZONE));
    assert_eq!(
        z.zone_size(1),
        Some(ZONE / 8),
        "the same zones in 4 KiB blocks"
    );
    assert_eq!((z.mor(), z.mar()), (5, 9));
    let (s, _) = identify(&mut d, Command::identify_csi(cns::CSI_NAMESPACE, 1, 2));
    assert_eq!(st(s), (0, 0x02, true), "zoned data of an NVM namespace");
    let (s, b) = identify(&mut d, Command::identify_csi(cns::CSI_NAMESPACE, 1, 0));
    assert!(s.is_success() && b.iter().all(|&x| x == 0));
    let (s, _) = identify(&mut d, Command::identify_csi(cns::CSI_CONTROLLER, 0, 2));
    assert!(s.is_success());
    let (s, _) = identify(&mut d, Command::identify_csi(cns::CSI_CONTROLLER, 0, 1));
    assert_eq!(
        st(s),
        (0, 0x02, true),
        "Key Value: not a command set it has"
    );

    let (s, b) = identify(
        &mut d,
        Command::identify_csi(cns::CSI_ACTIVE_NAMESPACES, 0, 2),
    );
    assert!(s.is_success());
    assert_eq!(id_list(&b), vec![2]);
    let (s, b) = identify(
        &mut d,
        Command::identify_csi(cns::CSI_ACTIVE_NAMESPACES, 1, 0),
    );
    assert!(s.is_success());
    assert!(id_list(&b).is_empty(), "no NVM namespace above 1");
    let (s, b) = identify(&mut d, Command::identify(cns::ACTIVE_NAMESPACES, 0));
    assert!(s.is_success());
    assert_eq!(id_list(&b), vec![1, 2]);

    let (s, b) = identify(&mut d, Command::identify(cns::INDEPENDENT_NAMESPACE, 2));
    assert!(s.is_success());
    assert_eq!(b[14], 1, "NSTAT: ready");
    let (s, b) = identify(&mut d, Command::identify(cns::INDEPENDENT_NAMESPACE, 9));
    assert!(
        s.is_success() && b.iter().all(|&x| x == 0),
        "inactive: zeroes"
    );
}

#[test]
fn the_models_zones_take_writes_at_their_write_pointer_only() {
    let mut d = raw_driver(two_namespaces(), css::ALL_IO);
    let buf = d.alloc(64 << 10);
    d.mem.write(buf, &pattern(64 << 10, 5));
    // Not at the write pointer (0): Zone Invalid Write.
    assert_eq!(st(d.prp_rw(true, 2, 5, 8, buf, 4096)), (1, 0xbc, true));
    // At it: written, and the pointer moves on.
    assert!(d.prp_rw(true, 2, 0, 8, buf, 4096).is_success());
    assert_eq!(st(d.prp_rw(true, 2, 0, 8, buf, 4096)), (1, 0xbc, true));
    assert!(d.prp_rw(true, 2, 8, 8, buf, 4096).is_success());
    // Past the zone's end: Zone Boundary Error.
    let mut wz = Command::write_zeroes(2, 16, (ZONE - 15) as u32, false);
    wz.nsid = 2;
    assert_eq!(st(d.run(1, wz).status()), (1, 0xb8, true));
    // A read across a zone boundary: Zone Boundary Error; inside one: fine.
    assert_eq!(
        st(d.prp_rw(false, 2, ZONE - 4, 8, buf, 4096)),
        (1, 0xb8, true)
    );
    assert!(d.prp_rw(false, 2, 0, 16, buf, 8192).is_success());
    let mut back = vec![0u8; 4096];
    d.sim.read_blocks(2, 0, &mut back).unwrap();
    assert_eq!(back, pattern(64 << 10, 5)[..4096]);
    // The NVM namespace takes writes anywhere.
    assert!(d.prp_rw(true, 1, 5, 8, buf, 4096).is_success());
    assert_eq!(d.sim.stats().write_commands, 3);
}

#[test]
fn with_cc_css_nvm_a_zoned_namespace_is_inactive() {
    let mut d = raw_driver(two_namespaces(), css::NVM);
    let (s, b) = identify(&mut d, Command::identify(cns::ACTIVE_NAMESPACES, 0));
    assert!(s.is_success());
    assert_eq!(id_list(&b), vec![1]);
    let (s, b) = identify(&mut d, Command::identify(cns::NAMESPACE, 2));
    assert!(s.is_success() && b.iter().all(|&x| x == 0));
    let buf = d.alloc(PAGE);
    assert_eq!(st(d.prp_rw(false, 2, 0, 8, buf, 4096)), (0, 0x0b, true));
    let mut c = Command::new(io::FLUSH, 2);
    c.nsid = 2;
    assert_eq!(st(d.run(1, c).status()), (0, 0x0b, true));
}

#[test]
fn the_model_refuses_cc_css_110b_without_io_command_sets() {
    let mut d = Driver::new_disabled(Config::default().io_command_sets(false));
    d.program_admin(32);
    d.sim
        .write32(offset::CC, Driver::cc().with_css(css::ALL_IO).0);
    common::wait_for("CSTS.CFS = 1", || d.csts().fatal());
    assert!(!d.csts().ready());
}

#[test]
fn zoned_configurations_are_checked() {
    let bad = [
        Config::default().namespaces(&[NamespaceConfig::new(1000, 512).zoned(300)]),
        Config::default().namespaces(&[NamespaceConfig::new(1024, 512).zoned(0)]),
        Config::default()
            .namespaces(&[NamespaceConfig::new(1024, 512).zoned(512)])
            .io_command_sets(false),
        Config::default()
            .namespaces(&[NamespaceConfig::new(1024, 512).zoned(512).zone_limits(4, 2)]),
    ];
    for c in bad {
        assert!(SimController::new(c.clone()).is_err(), "{:?}", c.namespaces);
    }
}
