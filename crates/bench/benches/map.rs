//! Time per request of map + PRP/SGL build, ours beside the scatterlist
//! baseline, for each case of `nvme_bench::CASES`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use nvme_bench::{Fixture, CASES};

fn map_build(c: &mut Criterion) {
    for case in CASES {
        let mut g = c.benchmark_group(case.name);
        let mut f = Fixture::new(case);
        g.bench_function("ours", |b| b.iter(|| black_box(f.ours())));
        g.bench_function("baseline", |b| b.iter(|| black_box(f.baseline())));
        g.finish();
    }
}

criterion_group!(benches, map_build);
criterion_main!(benches);
