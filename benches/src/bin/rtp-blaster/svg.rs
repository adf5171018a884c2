//! A latency percentile plot as a self-contained SVG (no plotting dependency).
//!
//! The x axis is the HdrHistogram convention, `log10(1 / (1 - q))`, so 90%, 99%, 99.9%... are
//! evenly spaced and the tail, where relays differ, gets most of the width; the y axis is
//! logarithmic because loopback medians are tens of microseconds and tails can be milliseconds.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One curve per (label, histogram of nanoseconds); empty histograms are skipped.
pub fn latency_plot(curves: &[(String, Histogram<u64>)]) -> String {
    let curves: Vec<&(String, Histogram<u64>)> =
        curves.iter().filter(|(_, h)| !h.is_empty()).collect();
    // Beyond 1/count the percentiles only repeat the maximum, so stop the axis there.
    let max_count = curves.iter().map(|(_, h)| h.len()).max().unwrap_or(1);
    let x_max = (max_count as f64).log10().clamp(1.0, 6.0).ceil();
    let min_us = curves
        .iter()
        .map(|(_, h)| h.min().max(1) as f64 / 1000.0)
        .fold(f64::INFINITY, f64::min);
    let max_us = curves
        .iter()
        .map(|(_, h)| h.max().max(1) as f64 / 1000.0)
        .fold(0.0, f64::max);
    let (y_lo, y_hi) = if curves.is_empty() {
        (0.0, 1.0)
    } else {
        let lo = min_us.max(0.001).log10().floor();
        (lo, max_us.max(0.001).log10().ceil().max(lo + 1.0))
    };
    let pw = WIDTH - LEFT - RIGHT;
    let ph = HEIGHT - TOP - BOTTOM;
    let px = |x: f64| LEFT + pw * x / x_max;
    let py = |us: f64| TOP + ph * (1.0 - (us.max(1e-3).log10() - y_lo) / (y_hi - y_lo));

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">rtp-blaster one-way latency by percentile</text>"#,
        LEFT + pw / 2.0
    );
    // Grid: one vertical line per nine, one horizontal line per decade.
    for k in 0..=(x_max as u32) {
        let x = px(f64::from(k));
        // 90%, 99%, 99.9%...: exactly k nines, printed with k - 2 decimals.
        let label = match k {
            0 => "0%".to_owned(),
            k => format!(
                "{:.*}%",
                k.saturating_sub(2) as usize,
                100.0 - 100.0 / 10f64.powi(k as i32)
            ),
        };
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            TOP + ph,
            TOP + ph + 18.0
        );
    }
    let mut d = y_lo;
    while d <= y_hi + 1e-9 {
        let us = 10f64.powf(d);
        let y = py(us);
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            crate::report::dur(us)
        );
        d += 1.0;
    }
    let _ = writeln!(
        s,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#333\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">percentile</text>\
         <text x=\"16\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {:.1})\">one-way latency</text>",
        LEFT + pw / 2.0,
        HEIGHT - 14.0,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    for (i, (label, h)) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut points = String::new();
        let steps = (x_max * 50.0) as u32;
        for k in 0..=steps {
            let x = x_max * f64::from(k) / f64::from(steps);
            let q = 1.0 - 10f64.powf(-x);
            let us = h.value_at_quantile(q) as f64 / 1000.0;
            let _ = write!(points, "{:.1},{:.1} ", px(x), py(us));
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/>"#,
            points.trim_end()
        );
        let ly = TOP + 10.0 + 18.0 * i as f64;
        let lx = LEFT + pw + 12.0;
        let _ = writeln!(
            s,
            "<line x1=\"{lx:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{color}\" stroke-width=\"3\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            lx + 22.0,
            lx + 28.0,
            ly + 4.0,
            escape(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_curves_and_empty_input() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
        for v in [20_000u64, 25_000, 30_000, 2_000_000] {
            h.record(v).expect("in range");
        }
        let svg = latency_plot(&[("a<b".into(), h)]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("<polyline") && svg.contains("a&lt;b"));
        let empty = latency_plot(&[]);
        assert!(empty.contains("</svg>") && !empty.contains("<polyline"));
    }
}
