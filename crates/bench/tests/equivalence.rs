//! The baseline and our path must build the same data pointer for every
//! benchmark case, or the comparison means nothing; and both must leave
//! nothing mapped.

use nvme_bench::{Fixture, CASES};

#[test]
fn ours_and_baseline_agree_on_every_case() {
    for c in CASES {
        let mut f = Fixture::new(c);
        for _ in 0..3 {
            let a = f.ours();
            let b = f.baseline();
            assert_eq!(a, b, "{}", c.name);
        }
        assert_eq!(
            (f.mapper.live_links(), f.mapper.live_iovas()),
            (0, 0),
            "{}",
            c.name
        );
        let calls = f.mapper.calls();
        if c.registered {
            assert_eq!(calls.syscalls(), 0, "{}", c.name);
        } else {
            assert!(calls.link > 0, "{}", c.name);
        }
        // Ours keeps a fixed small state; the baseline a table entry per
        // segment.
        assert!(f.ours_state_bytes() <= 64, "{}", c.name);
        assert_eq!(f.baseline_state_bytes(), 32 * c.segments, "{}", c.name);
    }
}
