//! Random, mostly malformed commands: every one gets a completion (an
//! error status where it is malformed), the controller never panics, never
//! hangs and keeps working.

mod common;

use common::{pattern, Driver, HostMem, PAGE, UNMAPPED};
use nvme_sim::Config;
use nvme_vfio::mem::Access;
use nvme_vfio::nvme::cmd::{admin, io, Command};

/// SplitMix64, seeded: the same commands on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// Where random data pointers point: away from the queue rings.
const DATA_IOVA: u64 = 0x2000_0000;
const DATA_LEN: u64 = 1 << 20;

fn pointer(r: &mut Rng) -> u64 {
    match r.below(6) {
        0 => 0,
        1 => UNMAPPED + r.below(1 << 20),
        2 => r.next(),
        3 => DATA_IOVA + r.below(DATA_LEN / PAGE) * PAGE,
        _ => (DATA_IOVA + r.below(DATA_LEN)) & !3,
    }
}

fn random_command(r: &mut Rng, opcodes: &[u8]) -> Command {
    let mut c = Command::new(r.pick(opcodes), r.pick(&[1, 1, 1, 0, 2, u32::MAX]));
    // Fused bits and PSDT, now and then.
    if r.below(8) == 0 {
        c.cdw0 |= (r.below(4) as u32) << 8;
    }
    c.cdw0 |= (r.pick(&[0, 0, 0, 1, 2, 3]) as u32) << 14;
    c.dptr = [pointer(r), pointer(r)];
    if c.cdw0 >> 14 & 3 != 0 && r.below(2) == 0 {
        // An SGL descriptor with a plausible type and length.
        let ty = r.below(16) << 60;
        c.dptr[1] = r.below(1 << 16) | ty;
    }
    for dw in [
        &mut c.cdw10,
        &mut c.cdw11,
        &mut c.cdw12,
        &mut c.cdw13,
        &mut c.cdw14,
        &mut c.cdw15,
    ] {
        *dw = match r.below(3) {
            0 => r.next() as u32,
            1 => r.below(16) as u32,
            _ => 0,
        };
    }
    if r.below(2) == 0 {
        // Mostly small transfers, so some of them are well formed.
        c.cdw12 &= 0xf;
    }
    c
}

#[test]
fn random_commands_always_complete_and_never_stop_the_controller() {
    let mut d = Driver::with_io_queue(Config::default().namespaces(&[
        nvme_sim::NamespaceConfig::new(1 << 16, 512),
        nvme_sim::NamespaceConfig::new(1 << 12, 4096),
    ]));
    let data = HostMem::new(
        d.sim.iommu(),
        DATA_IOVA,
        DATA_LEN as usize,
        Access::ReadWrite,
    );
    data.write(0, &pattern(DATA_LEN as usize, 1));
    // NVME_SIM_FUZZ_SEED picks another sequence.
    let seed = std::env::var("NVME_SIM_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let mut r = Rng(seed);
    // Admin commands that neither delete queues, nor re-point doorbells,
    // nor wait for ever (those are tested on their own).
    let admin_ops = [
        admin::IDENTIFY,
        admin::GET_LOG_PAGE,
        admin::SET_FEATURES,
        admin::GET_FEATURES,
        admin::CREATE_CQ,
        admin::CREATE_SQ,
        admin::ABORT,
        0x7f,
        0xc0,
    ];
    let io_ops = [
        io::READ,
        io::WRITE,
        io::FLUSH,
        io::WRITE_ZEROES,
        io::DSM,
        0x05,
        0x80,
    ];
    let mut failed = 0;
    for i in 0..1500 {
        let (qid, cmd) = if i % 4 == 0 {
            (0, random_command(&mut r, &admin_ops))
        } else {
            (1, random_command(&mut r, &io_ops))
        };
        // `run` checks the completion is this command's.
        let c = d.run(qid, cmd);
        failed += !c.status().is_success() as u32;
        assert!(!d.csts().fatal(), "CFS after {cmd:?}");
    }
    assert!(
        failed > 500,
        "most random commands are malformed ({failed})"
    );
    // The controller still does real work.
    let buf = d.alloc(PAGE);
    d.mem.write(buf, &pattern(512, 9));
    assert!(d.prp_rw(true, 1, 77, 1, buf, 512).is_success());
    let mut stored = [0u8; 512];
    d.sim.read_blocks(1, 77, &mut stored).unwrap();
    assert!(stored[..] == pattern(512, 9)[..]);
}
