//! `--plot`: the latency distribution as an SVG percentile curve (latency
//! against 1 - percentile on a log scale, the HdrHistogram way: the tail is
//! as visible as the median).

use std::fmt::Write as _;

use super::report::Report;

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
/// Decades of the x axis: percentiles 0, 90, 99, 99.9, 99.99, 99.999.
const DECADES: f64 = 5.0;

/// The latency distribution of `report` as an SVG document.
pub fn svg(report: &Report) -> String {
    let h = &report.histogram;
    let mut out = String::new();
    let w = &report.workload;
    let title = format!(
        "{} {:?} bs {} qd {} x {} queue(s), {:?} buffers: {:.0} IOPS",
        report.target.name, w.rw, w.bs, w.qd, w.queues, w.buffers, report.result.iops
    )
    .to_lowercase();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"20\" font-size=\"14\">{}</text>\n",
        escape(&title)
    );
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let _ = writeln!(
        out,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#888\"/>"
    );
    if h.is_empty() {
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\">no I/O completed</text>\n</svg>",
            LEFT + 10.0,
            TOP + 20.0
        );
        return out;
    }
    let max_us = (h.max() as f64 / 1000.0).max(0.001);
    let y_top = nice_ceiling(max_us);
    let x_of = |q: f64| {
        let d = (-(1.0 - q).max(1e-12).log10()).min(DECADES);
        LEFT + pw * d / DECADES
    };
    let y_of = |us: f64| TOP + ph - ph * (us / y_top).min(1.0);
    // Axes: percentile decades and five latency ticks.
    for d in 0..=DECADES as usize {
        let q = 1.0 - 10f64.powi(-(d as i32));
        let x = x_of(q);
        let label = match d {
            0 => "0%".to_string(),
            _ => format!("{}%", trim(100.0 * q)),
        };
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            TOP + ph,
            TOP + ph + 18.0
        );
    }
    for i in 0..=5 {
        let us = y_top * i as f64 / 5.0;
        let y = y_of(us);
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            trim(us)
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">percentile</text>\
         <text x=\"16\" y=\"{:.1}\" transform=\"rotate(-90 16 {:.1})\" text-anchor=\"middle\">latency (µs)</text>",
        LEFT + pw / 2.0,
        H - 10.0,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    // The curve: one point per step of a twentieth of a decade.
    let mut points = String::new();
    let steps = (DECADES * 20.0) as usize;
    for i in 0..=steps {
        let d = DECADES * i as f64 / steps as f64;
        let q = 1.0 - 10f64.powf(-d);
        let us = h.value_at_quantile(q) as f64 / 1000.0;
        let _ = write!(points, "{:.1},{:.1} ", x_of(q), y_of(us));
    }
    let _ = writeln!(
        out,
        "<polyline fill=\"none\" stroke=\"#1f5fbf\" stroke-width=\"2\" points=\"{}\"/>",
        points.trim_end()
    );
    let l = &report.result.latency_ns;
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\">p50 {} µs  p99 {} µs  p99.9 {} µs  max {} µs</text>\n</svg>",
        LEFT + 10.0,
        TOP + 18.0,
        trim(l.p50 as f64 / 1000.0),
        trim(l.p99 as f64 / 1000.0),
        trim(l.p99_9 as f64 / 1000.0),
        trim(l.max as f64 / 1000.0)
    );
    out
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

/// A number with at most three decimals and no trailing zeros.
fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_helpers() {
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(trim(99.9), "99.9");
        assert_eq!(trim(90.0), "90");
        assert_eq!(escape("a<b&c"), "a&lt;b&amp;c");
    }
}
