//! A plain SVG line chart per metric (value against N, one line per mode),
//! written without a plotting library: a few dozen elements.

use std::fmt::Write as _;

const W: f64 = 460.0;
const H: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 7] = [
    "#444444", "#1f77b4", "#17becf", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd",
];

/// One line: a label and its (N, value) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(usize, f64)>,
}

/// One panel: a title, a y-axis label and its lines.
pub struct Panel {
    pub title: String,
    pub unit: String,
    pub series: Vec<Series>,
}

fn x_of(n: usize, lo: f64, hi: f64) -> f64 {
    let v = (n.max(1) as f64).log10();
    let span = (hi - lo).max(1.0);
    LEFT + (v - lo) / span * (W - LEFT - RIGHT)
}

fn y_of(v: f64, max: f64) -> f64 {
    TOP + (1.0 - v / max) * (H - TOP - BOTTOM)
}

fn panel(out: &mut String, p: &Panel, dx: f64) {
    let ns: Vec<usize> = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|(n, _)| *n))
        .collect();
    let lo = ns
        .iter()
        .map(|&n| (n.max(1) as f64).log10())
        .fold(f64::INFINITY, f64::min);
    let hi = ns
        .iter()
        .map(|&n| (n.max(1) as f64).log10())
        .fold(0.0, f64::max);
    let lo = if lo.is_finite() { lo } else { 0.0 };
    let top = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|(_, v)| *v))
        .fold(0.0, f64::max)
        * 1.1;
    let top = if top > 0.0 { top } else { 1.0 };
    let _ = writeln!(out, r#"<g transform="translate({dx},0)">"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        W / 2.0,
        p.title
    );
    // Axes and grid.
    let (x0, x1, y0, y1) = (LEFT, W - RIGHT, TOP, H - BOTTOM);
    let _ = writeln!(
        out,
        r#"<path d="M{x0},{y0} L{x0},{y1} L{x1},{y1}" stroke="black" fill="none"/>"#
    );
    for k in 0..=4 {
        let v = top * f64::from(k) / 4.0;
        let y = y_of(v, top);
        let _ = writeln!(
            out,
            r##"<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#dddddd"/><text x="{}" y="{}" text-anchor="end" font-size="11">{:.0}</text>"##,
            x0 - 4.0,
            y + 4.0,
            v
        );
    }
    let mut ticks = ns.clone();
    ticks.sort_unstable();
    ticks.dedup();
    for n in ticks {
        let x = x_of(n, lo, hi);
        let _ = writeln!(
            out,
            r#"<text x="{x}" y="{}" text-anchor="middle" font-size="11">{n}</text>"#,
            y1 + 16.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="12">Services (N, log scale)</text>"#,
        (x0 + x1) / 2.0,
        y1 + 36.0
    );
    let _ = writeln!(
        out,
        r#"<text x="16" y="{}" text-anchor="middle" font-size="12" transform="rotate(-90 16 {})">{}</text>"#,
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        p.unit
    );
    for (i, s) in p.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(n, v)| format!("{:.1},{:.1}", x_of(n, lo, hi), y_of(v, top)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" stroke="{color}" stroke-width="2" fill="none"/>"#,
            path.join(" ")
        );
        for &(n, v) in &s.points {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                x_of(n, lo, hi),
                y_of(v, top)
            );
        }
    }
}

/// The panels side by side with one shared legend below.
pub fn svg(panels: &[Panel]) -> String {
    let legend: Vec<&str> = panels
        .first()
        .map(|p| p.series.iter().map(|s| s.label.as_str()).collect())
        .unwrap_or_default();
    let height = H + 20.0 + 18.0 * legend.len() as f64;
    let width = W * panels.len() as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, p) in panels.iter().enumerate() {
        panel(&mut out, p, W * i as f64);
        out.push_str("</g>\n");
    }
    for (i, label) in legend.iter().enumerate() {
        let y = H + 10.0 + 18.0 * i as f64;
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            out,
            r#"<rect x="{LEFT}" y="{}" width="14" height="4" fill="{color}"/><text x="{}" y="{}" font-size="12">{label}</text>"#,
            y - 4.0,
            LEFT + 20.0,
            y
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numeric attribute `name` of the element text `el`.
    fn attr(el: &str, name: &str) -> f64 {
        let value = el.split(&format!("{name}=\"")).nth(1).expect("attribute");
        value.split('"').next().unwrap().parse().expect("a number")
    }

    #[test]
    fn every_point_is_drawn_inside_its_panel() {
        let panels = vec![Panel {
            title: "conn/s".into(),
            unit: "connections/s".into(),
            series: vec![
                Series {
                    label: "a".into(),
                    points: vec![(1, 100.0), (1000, 80.0), (10_000, 50.0)],
                },
                Series {
                    label: "b".into(),
                    points: vec![(1, 90.0), (100_000, 90.0)],
                },
            ],
        }];
        let s = svg(&panels);
        assert_eq!(s.matches("<circle").count(), 5);
        assert_eq!(s.matches("<polyline").count(), 2);
        for c in s.split("<circle").skip(1) {
            let (cx, cy) = (attr(c, "cx"), attr(c, "cy"));
            assert!((LEFT..=W - RIGHT).contains(&cx), "x {cx}");
            assert!((TOP..=H - BOTTOM).contains(&cy), "y {cy}");
        }
        // The largest value sits below the top (10% headroom), N=1 at the left.
        assert!(s.contains(&format!("cx=\"{LEFT:.1}\"")));
    }
}
