//! Namespaces formatted with metadata and end-to-end protection on QEMU's
//! controller, through real VFIO: six namespaces (scripts/test.sh's
//! `protection` scenario, `scripts/vm/run.sh --ns-opts`):
//!
//! | nsid | QEMU nvme-ns | layout |
//! |---:|---|---|
//! | 1 | `ms=8` | separate metadata, no PI |
//! | 2 | `ms=8,mset=1,pi=1` | extended LBAs, type 1 |
//! | 3 | `ms=8,pi=2` | separate, type 2 |
//! | 4 | `ms=16,pi=3,pil=1` | separate, type 3, PI in the first 8 bytes |
//! | 5 | `ms=16,pi=1,pif=2` | separate, type 1, 64-bit guard (CRC-64) |
//! | 6 | `ms=16,pi=1,mset=1` | extended, type 1, PI in the last 8 bytes |
//!
//! Each runs the checks of `pi/mod.rs`, which also run against nvme-sim:
//! round trips with the driver's tuples, the controller's tuples checked
//! by the driver's CRCs, guard, application and reference tag errors by
//! status, transfers split into several commands, asynchronous requests.
//! Elsewhere the test says it is skipped.

use nvme_vfio::ctrl::{Config, Controller, Guard, PiType};

mod pi;

const NVME: &str = "0000:00:03.0";

#[test]
fn namespaces_with_metadata_and_protection_on_qemus_controller() {
    if std::env::var("NVME_VM_SCENARIO").as_deref() != Ok("protection") {
        eprintln!(
            "skipped: needs the VM's protection scenario (namespaces with ms, pi, pif, pil, mset)"
        );
        return;
    }
    assert_eq!(
        std::env::var("VM_GUEST").as_deref(),
        Ok("1"),
        "the protection scenario runs in the VM"
    );
    let ctrl = Controller::open(NVME, Config::default()).expect("bring-up");
    let sep = false;
    let ext = true;
    let expect = [
        (1, 8, sep, None),
        (2, 8, ext, Some((PiType::Type1, Guard::Crc16, false))),
        (3, 8, sep, Some((PiType::Type2, Guard::Crc16, false))),
        (4, 16, sep, Some((PiType::Type3, Guard::Crc16, true))),
        (5, 16, sep, Some((PiType::Type1, Guard::Crc64, false))),
        (6, 16, ext, Some((PiType::Type1, Guard::Crc16, false))),
    ];
    pi::check_namespaces(&ctrl, &expect);
}
