//! Runs one mapping benchmark case a given number of times, for instruction
//! counting under callgrind (see scripts/bench-map.sh), or prints the cases'
//! formats and per-request state sizes.
//!
//! Usage: map-cost CASE ours|baseline ITERATIONS
//!        map-cost --info
//!        map-cost --list

use std::hint::black_box;
use std::process::ExitCode;

use nvme_bench::{case, Fixture, CASES};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--list") {
        for c in CASES {
            println!("{}", c.name);
        }
        return ExitCode::SUCCESS;
    }
    if args.first().map(String::as_str) == Some("--info") {
        println!(
            "{:<18} {:>6} {:>16} {:>16}",
            "case", "format", "ours state B", "baseline state B"
        );
        for c in CASES {
            let mut f = Fixture::new(c);
            let format = f.format();
            let ours = f.ours_state_bytes();
            let base = f.baseline_state_bytes();
            println!(
                "{:<18} {:>6} {:>16} {:>16}",
                c.name,
                format!("{format:?}"),
                ours,
                base
            );
        }
        return ExitCode::SUCCESS;
    }
    let (Some(name), Some(which), Some(iters)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("usage: map-cost CASE ours|baseline ITERATIONS | map-cost --info");
        eprintln!("cases: {}", CASES.map(|c| c.name).join(" "));
        return ExitCode::from(2);
    };
    let Some(c) = case(name) else {
        eprintln!(
            "unknown case {name}; cases: {}",
            CASES.map(|c| c.name).join(" ")
        );
        return ExitCode::from(2);
    };
    let Ok(iters) = iters.parse::<u64>() else {
        eprintln!("ITERATIONS must be a number, got {iters}");
        return ExitCode::from(2);
    };
    let mut f = Fixture::new(c);
    match which.as_str() {
        "ours" => (0..iters).for_each(|_| {
            black_box(f.ours());
        }),
        "baseline" => (0..iters).for_each(|_| {
            black_box(f.baseline());
        }),
        other => {
            eprintln!("unknown path {other}: ours or baseline");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
