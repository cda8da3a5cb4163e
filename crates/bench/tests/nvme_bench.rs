//! nvme-bench against nvme-sim: every workload kind and buffer kind, exact
//! I/O counts, where the I/Os land, verify mode catching a lost write,
//! errors ending the run, bad input, and the command line's JSON, plot and
//! exit statuses.

use std::process::Command;
use std::time::Duration;

use nvme_bench::perf::{
    run, Buffers, Error, Options, Progress, Rw, SglMode, SimOptions, Stop, Target,
};
use nvme_sim::{FaultAction, FaultRule, Match, NamespaceConfig, SimController};
use nvme_vfio::nvme::cmd::{io, Status};

fn sim(size: u64, block: u32) -> Target {
    let o = SimOptions {
        size,
        block_size: block,
        ..SimOptions::default()
    };
    Target::sim(&o, 4).unwrap()
}

fn opts(rw: Rw, ios: u64) -> Options {
    Options {
        rw,
        qd: 8,
        stop: Stop::Ios(ios),
        ..Options::default()
    }
}

#[test]
fn every_workload_and_buffer_kind_runs_its_exact_count() {
    let t = sim(64 << 20, 512);
    for rw in [Rw::Read, Rw::Write, Rw::Randread, Rw::Randwrite, Rw::Randrw] {
        for buffers in [Buffers::Pool, Buffers::Registered, Buffers::User] {
            for sgl in [SglMode::Auto, SglMode::On, SglMode::Off] {
                let o = Options {
                    buffers,
                    sgl,
                    bs: 8192,
                    queues: 2,
                    ..opts(rw, 301)
                };
                let r = run(&t, &o, &Progress::default())
                    .unwrap_or_else(|e| panic!("{rw:?} {buffers:?} {sgl:?}: {e}"));
                let s = &r.result;
                assert_eq!(s.ios, 301, "{rw:?} {buffers:?}");
                assert_eq!(s.errors, 0);
                assert_eq!(s.bytes, 301 * 8192);
                assert_eq!(s.reads + s.writes, 301);
                assert_eq!(r.queues.len(), 2);
                assert_eq!(r.queues.iter().map(|q| q.ios).sum::<u64>(), 301);
                match rw {
                    Rw::Read | Rw::Randread => assert_eq!(s.writes, 0),
                    Rw::Write | Rw::Randwrite | Rw::ZonedWrite => assert_eq!(s.reads, 0),
                    Rw::Randrw => assert!(s.reads > 90 && s.writes > 90, "{s:?}"),
                }
                let l = s.latency_ns;
                assert!(l.min > 0 && l.min <= l.p50 && l.p50 <= l.p99 && l.p99 <= l.max);
                assert!(s.iops > 0.0 && s.cpu_ns_per_io > 0.0);
            }
        }
    }
}

/// Fewer threads than queue pairs: each thread polls its queue pairs as
/// one poll group. Every queue pair does its share of the exact count,
/// time-bound runs end on time, verify mode checks every block, and more
/// threads than queue pairs (or interrupts with poll groups) are refused.
#[test]
fn fewer_threads_than_queue_pairs_poll_groups() {
    let t = sim(64 << 20, 512);
    for (queues, threads) in [(4, 1), (4, 2), (3, 2)] {
        let o = Options {
            queues,
            threads,
            verify: true,
            ..opts(Rw::Randrw, 4001)
        };
        let r = run(&t, &o, &Progress::default())
            .unwrap_or_else(|e| panic!("{queues} queues, {threads} threads: {e}"));
        assert_eq!(r.result.ios, 4001);
        assert_eq!(r.result.errors, 0);
        assert_eq!(r.workload.threads, threads);
        assert_eq!(r.queues.len(), queues as usize);
        let mut qids: Vec<u16> = r.queues.iter().map(|q| q.qid).collect();
        qids.sort();
        qids.dedup();
        assert_eq!(
            qids.len(),
            queues as usize,
            "distinct queue pairs: {qids:?}"
        );
        for q in &r.queues {
            let share = 4001 / queues as u64;
            assert!(q.ios >= share && q.ios <= share + 1, "{q:?}");
        }
        let v = r.verify.expect("verify summary");
        assert!(v.mismatch.is_none());
        assert!(v.blocks_checked > 0);
    }
    let o = Options {
        queues: 2,
        threads: 1,
        stop: Stop::Time(Duration::from_millis(300)),
        ..opts(Rw::Randread, 0)
    };
    let start = std::time::Instant::now();
    let r = run(&t, &o, &Progress::default()).unwrap();
    assert!(r.result.ios > 0);
    assert!(start.elapsed() < Duration::from_secs(5));
    for (queues, threads, interrupts) in [(2, 3, false), (2, 1, true)] {
        let o = Options {
            queues,
            threads,
            interrupts,
            ..opts(Rw::Randread, 100)
        };
        match run(&t, &o, &Progress::default()) {
            Err(Error::Input(m)) => {
                assert!(m.contains("--threads") || m.contains("--interrupts"), "{m}")
            }
            other => panic!(
                "{queues} queues, {threads} threads: {:?}",
                other.map(|_| ())
            ),
        }
    }
}

#[test]
fn the_mix_sets_the_share_of_reads() {
    let t = sim(64 << 20, 4096);
    let o = Options {
        mix: 80,
        ..opts(Rw::Randrw, 4000)
    };
    let r = run(&t, &o, &Progress::default()).unwrap();
    let reads = r.result.reads as f64 / 4000.0;
    assert!((0.75..0.85).contains(&reads), "{reads} reads");
}

#[test]
fn sequential_writes_cover_the_range_once_at_the_right_lbas() {
    let t = sim(16 << 20, 512);
    // 64 KiB I/Os over a 4 MiB range from byte 1 MiB: 64 units, two queues
    // striding through them.
    let o = Options {
        rw: Rw::Write,
        bs: 64 << 10,
        offset: 1 << 20,
        size: Some(4 << 20),
        queues: 2,
        verify: true,
        ..opts(Rw::Write, 64)
    };
    let r = run(&t, &o, &Progress::default()).unwrap();
    let v = r.verify.unwrap();
    assert_eq!(v.mismatch, None);
    assert_eq!(v.blocks_written, 8192);
    assert_eq!(v.blocks_checked, 8192, "everything written was read back");
    let s = t.sim_controller().unwrap();
    let mut block = vec![0u8; 512];
    for lba in [2048u64, 2049, 4000, 10239] {
        s.read_blocks(1, lba, &mut block).unwrap();
        let field = u64::from_le_bytes(block[..8].try_into().unwrap());
        assert_eq!(field, lba, "block {lba} carries its own LBA");
    }
    // Nothing outside the range was written.
    for lba in [2047u64, 10240] {
        s.read_blocks(1, lba, &mut block).unwrap();
        assert!(block.iter().all(|&b| b == 0), "block {lba} untouched");
    }
}

#[test]
fn verify_mode_checks_a_read_workload_and_a_mixed_one() {
    let t = sim(8 << 20, 4096);
    for rw in [Rw::Randread, Rw::Randrw, Rw::Read] {
        let o = Options {
            verify: true,
            queues: 3,
            qd: 16,
            stop: Stop::Time(Duration::from_millis(300)),
            ..opts(rw, 0)
        };
        let r = run(&t, &o, &Progress::default()).unwrap();
        let v = r.verify.unwrap();
        assert_eq!(v.mismatch, None, "{rw:?}");
        assert!(
            v.blocks_checked > 0 && v.blocks_written > 0,
            "{rw:?}: {v:?}"
        );
        assert!(r.result.ios > 0);
    }
}

#[test]
fn verify_mode_reports_a_lost_write_with_its_lba() {
    let config = nvme_sim::Config::default().namespaces(&[NamespaceConfig::new(4096, 4096)]);
    let s = SimController::new(config).unwrap();
    // The 5th write completes successfully without writing anything.
    s.inject(FaultRule::nth(
        Match::io().opcode(io::WRITE),
        5,
        FaultAction::Status(Status::SUCCESS),
    ));
    let t = Target::with_sim(s, 1).unwrap();
    let o = Options {
        qd: 1,
        verify: true,
        ..opts(Rw::Write, 100)
    };
    let r = run(&t, &o, &Progress::default()).unwrap();
    let m = r.verify.unwrap().mismatch.expect("the lost write is found");
    assert!(m.starts_with("LBA 4: "), "{m}");
    let out = r.result.error;
    assert_eq!(out, None, "the device reported no error");
}

#[test]
fn a_failed_io_ends_the_run_and_is_reported_with_its_lba() {
    let config = nvme_sim::Config::default().namespaces(&[NamespaceConfig::new(4096, 4096)]);
    let s = SimController::new(config).unwrap();
    s.inject(FaultRule::nth(
        Match::io(),
        50,
        FaultAction::Status(Status::new(2, 0x81, true)),
    ));
    let t = Target::with_sim(s, 1).unwrap();
    let r = run(&t, &opts(Rw::Read, 10_000), &Progress::default()).unwrap();
    assert_eq!(r.result.errors, 1);
    let e = r.result.error.unwrap();
    assert!(e.starts_with("read of 4096 bytes at LBA "), "{e}");
    assert!(r.result.ios < 10_000, "the run stopped early");
}

#[test]
fn a_time_bound_run_stops_on_time() {
    let t = sim(64 << 20, 4096);
    let o = Options {
        stop: Stop::Time(Duration::from_millis(200)),
        ..Options::default()
    };
    let p = Progress::default();
    let r = run(&t, &o, &p).unwrap();
    assert!(
        r.result.seconds >= 0.2 && r.result.seconds < 5.0,
        "{}",
        r.result.seconds
    );
    assert_eq!(p.ios(), r.result.ios, "progress counted every I/O");
    assert_eq!(p.bytes(), r.result.bytes);
}

#[test]
fn bad_workloads_are_refused_with_a_reason() {
    let t = sim(1 << 20, 4096);
    let cases: Vec<(Options, &str)> = vec![
        (
            Options {
                bs: 1000,
                ..Options::default()
            },
            "multiple of the 4096-byte block size",
        ),
        (
            Options {
                offset: 4 << 20,
                ..Options::default()
            },
            "--offset",
        ),
        (
            Options {
                size: Some(2 << 20),
                ..Options::default()
            },
            "does not fit",
        ),
        (
            Options {
                qd: 0,
                ..Options::default()
            },
            "--qd",
        ),
        (
            Options {
                qd: 2000,
                ..Options::default()
            },
            "queue entries",
        ),
        (
            Options {
                queues: 9,
                ..Options::default()
            },
            "--queues 9",
        ),
        (
            Options {
                mix: 101,
                ..Options::default()
            },
            "percentage",
        ),
        (
            Options {
                nsid: 7,
                ..Options::default()
            },
            "namespace 7",
        ),
        (
            Options {
                stop: Stop::Ios(0),
                ..Options::default()
            },
            "--ios",
        ),
        (
            Options {
                interrupts: true,
                ..Options::default()
            },
            "--interrupts",
        ),
        (
            Options {
                bs: 1 << 20,
                size: Some(1 << 20),
                queues: 2,
                ..Options::default()
            },
            "fewer than --queues",
        ),
    ];
    for (o, why) in cases {
        match run(&t, &o, &Progress::default()) {
            Err(Error::Input(m)) => assert!(m.contains(why), "{m:?} lacks {why:?}"),
            other => panic!("{why}: {other:?}"),
        }
    }
    // A namespace too large to track: 512 GiB of 4 KiB units on one queue.
    let big = Target::sim(
        &SimOptions {
            size: 512 << 30,
            null: true,
            ..SimOptions::default()
        },
        1,
    )
    .unwrap();
    let o = Options {
        verify: true,
        ..Options::default()
    };
    match run(&big, &o, &Progress::default()) {
        Err(Error::Input(m)) => assert!(m.contains("--size"), "{m}"),
        other => panic!("{other:?}"),
    }
}

fn nvme_bench(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nvme-bench"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_command_line_prints_json_of_the_documented_schema_and_a_plot() {
    let dir = std::env::temp_dir().join(format!("nvme-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plot = dir.join("lat.svg");
    let (code, out, err) = nvme_bench(&[
        "--sim",
        "--sim-size",
        "64m",
        "--rw",
        "randrw",
        "--mix",
        "70",
        "--bs",
        "16k",
        "--qd",
        "4",
        "--queues",
        "2",
        "--ios",
        "2000",
        "--verify",
        "--json",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["schema"], "nvme-bench/1");
    assert_eq!(j["target"]["kind"], "sim");
    assert_eq!(j["workload"]["rw"], "randrw");
    assert_eq!(j["workload"]["bs"], 16384);
    assert_eq!(j["workload"]["queues"], 2);
    assert_eq!(j["result"]["ios"], 2000);
    for k in ["min", "mean", "p50", "p90", "p99", "p99_9", "max"] {
        assert!(j["result"]["latency_ns"][k].as_f64().unwrap() > 0.0, "{k}");
    }
    for k in [
        "iops",
        "mib_per_s",
        "cpu_ns_per_io",
        "sq_doorbells_per_io",
        "seconds",
    ] {
        assert!(j["result"][k].as_f64().unwrap() > 0.0, "{k}");
    }
    assert_eq!(j["queues"].as_array().unwrap().len(), 2);
    assert!(j["verify"]["mismatch"].is_null());
    assert!(j["verify"]["blocks_checked"].as_u64().unwrap() > 0);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("<polyline") && svg.contains("99.9%"));
    std::fs::remove_dir_all(&dir).unwrap();

    // Text output.
    let (code, out, _) = nvme_bench(&["--sim", "--sim-null", "--ios", "1000", "--qd", "8"]);
    assert_eq!(code, 0);
    assert!(out.contains("IOPS") && out.contains("latency (µs)") && out.contains("p99.9"));
}

#[test]
fn the_command_line_exits_2_on_bad_input_with_one_line() {
    for args in [
        &["--sim", "--bs", "1000", "--ios", "10"][..],
        &["--sim", "--bs", "4x"],
        &["--sim", "--interrupts", "--ios", "10"],
        &["--ios", "10"],
        &["--device", "0000:99:00.0", "--ios", "10"],
        &["--sim", "--sim-block-size", "1024"],
    ] {
        let (code, out, err) = nvme_bench(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}");
        assert!(
            !err.trim().is_empty() && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

/// The driver's log goes to stderr at the level RUST_LOG asks for;
/// warnings and errors only by default.
#[test]
fn the_drivers_log_is_on_stderr_at_the_rust_log_level() {
    let run = |level: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nvme-bench"));
        c.args([
            "--sim",
            "--sim-size",
            "16m",
            "--ios",
            "100",
            "--no-progress",
        ]);
        c.env_remove("RUST_LOG");
        if let Some(l) = level {
            c.env("RUST_LOG", l);
        }
        let out = c.output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(Some("info")).contains("controller up: nvme-sim"));
    assert!(!run(None).contains("controller up"));
}

/// A zoned namespace of `size` bytes in zones of `zone` bytes (4 KiB
/// blocks, at most 8 open and 14 active zones).
fn zoned_sim(size: u64, zone: u64) -> Target {
    let o = SimOptions {
        size,
        zone_size: Some(zone),
        ..SimOptions::default()
    };
    Target::sim(&o, 4).unwrap()
}

#[test]
fn zoned_writes_append_zone_by_zone_and_reset_zones_as_they_wrap() {
    use nvme_vfio::ctrl::{QueueConfig, ReportFilter, ZoneState};
    // 8 zones of 256 KiB (64 I/Os of 4 KiB each); 2 queue pairs own 4
    // zones each: 1000 appends per queue pair go round them almost 4
    // times, resetting each zone before it is written again.
    let t = zoned_sim(2 << 20, 256 << 10);
    for threads in [0, 1] {
        let o = Options {
            rw: Rw::ZonedWrite,
            qd: 16,
            queues: 2,
            threads,
            verify: true,
            ..opts(Rw::ZonedWrite, 2000)
        };
        let r = run(&t, &o, &Progress::default()).unwrap();
        assert_eq!(
            (r.result.writes, r.result.reads, r.result.errors),
            (2000, 0, 0)
        );
        assert_eq!(r.result.error, None);
        // 1000 appends per queue: 15 full zones and then some; every zone
        // but the first 4 of each queue's was reset first.
        assert_eq!(
            r.result.zone_resets,
            2 * (1000 / 64 - 3),
            "threads {threads}"
        );
        let v = r.verify.unwrap();
        assert_eq!(v.mismatch, None);
        assert_eq!(v.blocks_written, 2000);
        // What the last pass wrote of each zone is read back: 4 zones per
        // queue, the last one in part.
        assert_eq!(v.blocks_checked, 2 * (3 * 64 + 1000 % 64));
        assert_eq!(r.workload.blocks, 512);
    }
    // The model's zones after the run: the full ones and the one the last
    // appends were in, resources released as the zones filled.
    let ctrl = t.controller();
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let zones = qp.report_zones(&ns, 0, ReportFilter::All, 100).unwrap();
    let states: Vec<_> = zones.iter().map(|z| z.state).collect();
    let open = states.iter().filter(|s| s.is_open()).count();
    assert_eq!(open, 2, "{states:?}");
    assert_eq!(states.iter().filter(|&&s| s == ZoneState::Full).count(), 6);
}

#[test]
fn zoned_write_verify_catches_an_append_that_lies_about_its_lba() {
    let config = nvme_sim::Config::default().namespaces(&[NamespaceConfig::new(1024, 4096)
        .zoned(256)
        .zone_limits(8, 14)]);
    let s = SimController::new(config).unwrap();
    // The 3rd append says it landed at LBA 0, where the first one did.
    s.inject(FaultRule::nth(
        Match::io().opcode(io::ZONE_APPEND),
        3,
        FaultAction::Corrupt(nvme_sim::CqeCorruption::Result(0)),
    ));
    let t = Target::with_sim(s, 1).unwrap();
    let o = Options {
        qd: 1,
        verify: true,
        ..opts(Rw::ZonedWrite, 100)
    };
    let r = run(&t, &o, &Progress::default()).unwrap();
    let m = r.verify.unwrap().mismatch.expect("the lie is found");
    assert_eq!(m, "LBA 0: two appends landed there");
}

#[test]
fn zoned_workloads_are_refused_with_a_reason() {
    let zoned = zoned_sim(4 << 20, 1 << 20);
    let nvm = sim(4 << 20, 4096);
    let z = |o: Options| Options {
        rw: Rw::ZonedWrite,
        ..o
    };
    let cases: Vec<(&Target, Options, &str)> = vec![
        (
            &nvm,
            z(Options::default()),
            "needs a zoned namespace (namespace 1 is NVM)",
        ),
        (
            &zoned,
            opts(Rw::Randwrite, 10),
            "namespace 1 is zoned: write it with --rw zoned-write",
        ),
        (
            &zoned,
            Options {
                verify: true,
                ..opts(Rw::Randread, 10)
            },
            "write it with --rw zoned-write",
        ),
        (
            &zoned,
            z(Options {
                bs: 384 << 10,
                ..Options::default()
            }),
            "must divide the zone capacity of 1048576 bytes",
        ),
        (
            &zoned,
            z(Options {
                buffers: Buffers::Registered,
                ..Options::default()
            }),
            "--buffers pool or user",
        ),
        (
            &zoned,
            z(Options {
                offset: 64 << 10,
                ..Options::default()
            }),
            "multiple of the zone size (1048576 bytes)",
        ),
        (
            &zoned,
            z(Options {
                size: Some(3 << 19),
                queues: 2,
                ..Options::default()
            }),
            "holds 1 whole zones",
        ),
        (
            &zoned,
            z(Options {
                bs: 2 << 20,
                ..Options::default()
            }),
            "over the Zone Append size limit",
        ),
    ];
    for (t, o, want) in cases {
        match run(t, &o, &Progress::default()) {
            Err(Error::Input(m)) => assert!(m.contains(want), "{m} (wanted {want})"),
            other => panic!("{want}: {other:?}"),
        }
    }
    // Five queue pairs would keep up to 10 zones open, over the 8 allowed.
    let many = SimOptions {
        size: 64 << 20,
        zone_size: Some(1 << 20),
        ..SimOptions::default()
    };
    let t = Target::sim(&many, 5).unwrap();
    let o = Options {
        queues: 5,
        ..z(Options::default())
    };
    match run(&t, &o, &Progress::default()) {
        Err(Error::Input(m)) => assert!(m.contains("2 zones open per queue pair"), "{m}"),
        other => panic!("{other:?}"),
    }
}
