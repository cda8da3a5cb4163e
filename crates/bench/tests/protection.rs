//! nvme-bench's end-to-end protection (`--pi`) against nvme-sim
//! namespaces formatted with protection information: the controller's
//! (PRACT) and the driver's, over separate and extended metadata, with
//! verify mode checking the data; a damaged block caught; the refusals.

use std::process::Command;

use nvme_bench::perf::{
    run, Buffers, Error, Options, PiMode, Progress, Rw, SimOptions, Stop, Target,
};

fn sim(kind: &str) -> Target {
    let o = SimOptions {
        size: 16 << 20,
        block_size: 512,
        ns_kind: Some(kind.into()),
        ..SimOptions::default()
    };
    Target::sim(&o, 2).unwrap()
}

fn opts(pi: PiMode) -> Options {
    Options {
        rw: Rw::Randrw,
        bs: 8192,
        qd: 8,
        stop: Stop::Ios(1500),
        verify: true,
        pi,
        ..Options::default()
    }
}

#[test]
fn controller_and_driver_protection_verify_on_separate_and_extended_metadata() {
    for kind in [
        "pi1",
        "pi2-ext",
        "pi3-first",
        "pi1-crc64",
        "pi1-ms16",
        "pi1-ms16-ext",
        "pi1-crc64-ext",
    ] {
        let t = sim(kind);
        for pi in [PiMode::Controller, PiMode::Driver] {
            for buffers in [Buffers::Pool, Buffers::User] {
                let o = Options {
                    buffers,
                    ..opts(pi)
                };
                let r = run(&t, &o, &Progress::default())
                    .unwrap_or_else(|e| panic!("{kind} {pi:?} {buffers:?}: {e}"));
                let why = format!("{kind} {pi:?} {buffers:?}: {:?}", r.result.error);
                assert_eq!(r.result.errors, 0, "{why}");
                assert_eq!(r.result.ios, 1500, "{why}");
                assert_eq!(r.workload.pi, pi, "{why}");
                let v = r.verify.as_ref().unwrap();
                assert!(v.mismatch.is_none(), "{why}: {:?}", v.mismatch);
                assert!(v.blocks_checked > 0, "{why}");
            }
        }
    }
}

#[test]
fn driver_protection_catches_a_damaged_block() {
    let t = sim("pi1");
    let fill = Options {
        rw: Rw::Write,
        bs: 4096,
        qd: 4,
        size: Some(64 << 10),
        stop: Stop::Ios(16),
        pi: PiMode::Driver,
        ..Options::default()
    };
    let r = run(&t, &fill, &Progress::default()).unwrap();
    assert_eq!(r.result.errors, 0, "{:?}", r.result.error);
    // A data byte of LBA 21: its guard no longer matches.
    t.sim_controller().unwrap().corrupt(1, 21, 100).unwrap();
    let read = Options {
        rw: Rw::Read,
        pi: PiMode::Driver,
        ..fill
    };
    let r = run(&t, &read, &Progress::default()).unwrap();
    assert!(r.result.errors >= 1);
    let e = r.result.error.unwrap();
    assert!(
        e.contains("read of 4096 bytes at LBA 16") && e.contains("Guard"),
        "{e}"
    );
}

#[test]
fn protection_is_refused_where_it_does_not_apply_and_needed_where_it_does() {
    let cases = [
        ("nvm", PiMode::Controller, Buffers::Pool, "--pi controller: namespace 1 is formatted without protection information"),
        ("meta8", PiMode::Driver, Buffers::Pool, "--pi driver: namespace 1 is formatted without protection information (8 bytes of metadata per block)"),
        ("meta8", PiMode::None, Buffers::Pool, "without protection information: nvme-bench moves metadata only as protection information"),
        ("pi1", PiMode::None, Buffers::Pool, "run it with --pi controller"),
        ("pi2-ext", PiMode::None, Buffers::Pool, "run it with --pi controller"),
        ("pi1", PiMode::Controller, Buffers::Registered, "needs --buffers pool or user"),
    ];
    for (kind, pi, buffers, why) in cases {
        let o = Options {
            buffers,
            ..opts(pi)
        };
        match run(&sim(kind), &o, &Progress::default()) {
            Err(Error::Input(m)) => assert!(m.contains(why), "{kind}: {m:?} lacks {why:?}"),
            other => panic!("{kind} {pi:?}: {other:?}"),
        }
    }
}

#[test]
fn the_command_line_reports_the_mode() {
    let bench = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_nvme-bench"))
            .args([
                "--sim",
                "--sim-size",
                "16m",
                "--sim-block-size",
                "512",
                "--ios",
                "500",
            ])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = bench(&[
        "--sim-ns",
        "pi2-ext",
        "--pi",
        "driver",
        "--rw",
        "randwrite",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["workload"]["pi"], "driver");
    assert_eq!(j["workload"]["metadata_size"], 8);
    let (code, out, err) = bench(&["--sim-ns", "pi1-crc64", "--pi", "controller", "--verify"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("protection information: controller (PRACT), 16 bytes of metadata per block"),
        "{out}"
    );
    let (code, _, err) = bench(&["--sim-ns", "pi1"]);
    assert_eq!(code, 2);
    assert!(err.contains("run it with --pi controller"), "{err}");
    let (code, _, err) = bench(&["--sim-ns", "frob"]);
    assert_eq!(code, 2);
    assert!(err.contains("simulated namespace"), "{err}");
    let (code, out, err) = bench(&["--json"]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["workload"]["pi"], "none");
}
