//! A hand-made SVG of energy and magnetization over the annealing steps.

use std::fmt::Write as _;

use kiln_ising::anneal::TracePoint;

const WIDTH: f64 = 800.0;
const PANEL: f64 = 220.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 50.0;

/// An SVG document with two panels, energy (top) and magnetization (bottom), against the step.
pub fn svg(trace: &[TracePoint], title: &str) -> String {
    let height = TOP + 2.0 * PANEL + GAP + 40.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    let last_step = trace.last().map_or(1, |p| p.step.max(1)) as f64;
    let energy: Vec<(f64, f64)> = trace.iter().map(|p| (p.step as f64, p.energy)).collect();
    let mag: Vec<(f64, f64)> = trace
        .iter()
        .map(|p| (p.step as f64, p.magnetization))
        .collect();
    panel(&mut out, TOP, "energy", "#c0392b", &energy, last_step, None);
    panel(
        &mut out,
        TOP + PANEL + GAP,
        "magnetization",
        "#2471a3",
        &mag,
        last_step,
        Some((-1.0, 1.0)),
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">step</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        height - 8.0
    );
    out.push_str("</svg>\n");
    out
}

fn panel(
    out: &mut String,
    top: f64,
    label: &str,
    colour: &str,
    points: &[(f64, f64)],
    last_step: f64,
    fixed: Option<(f64, f64)>,
) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let (mut lo, mut hi) = fixed.unwrap_or_else(|| {
        points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &(_, y)| {
                (l.min(y), h.max(y))
            })
    });
    if !lo.is_finite() || !hi.is_finite() {
        (lo, hi) = (-1.0, 1.0);
    }
    if hi - lo < 1e-12 {
        lo -= 1.0;
        hi += 1.0;
    }
    let x_of = |s: f64| LEFT + plot_w * s / last_step;
    let y_of = |v: f64| top + PANEL - PANEL * (v - lo) / (hi - lo);
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL}" fill="none" stroke="#888"/>"##
    );
    for k in 0..=4 {
        let v = lo + (hi - lo) * k as f64 / 4.0;
        let y = y_of(v);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            tick(v)
        );
        let s = last_step * k as f64 / 4.0;
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x_of(s),
            top + PANEL + 16.0,
            s.round()
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" fill="{colour}" font-size="13">{label}</text>"#,
        LEFT + 6.0,
        top - 6.0
    );
    let mut path = String::with_capacity(points.len() * 16);
    for (k, &(s, v)) in points.iter().enumerate() {
        let _ = write!(
            path,
            "{}{:.2},{:.2}",
            if k == 0 { "M" } else { " L" },
            x_of(s),
            y_of(v)
        );
    }
    let _ = writeln!(
        out,
        r#"<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>"#
    );
}

fn tick(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
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
    fn svg_has_both_series() {
        let trace: Vec<TracePoint> = (0..=10)
            .map(|s| TracePoint {
                step: s,
                beta: 0.1,
                energy: -(s as f64),
                magnetization: s as f64 / 10.0,
            })
            .collect();
        let doc = svg(&trace, "a <test>");
        assert!(doc.starts_with("<svg"));
        assert!(doc.trim_end().ends_with("</svg>"));
        assert_eq!(doc.matches("<path").count(), 2);
        assert!(doc.contains("energy") && doc.contains("magnetization"));
        assert!(doc.contains("a &lt;test&gt;"));
        // An empty or flat trace still yields a valid document.
        assert!(svg(&[], "empty").contains("</svg>"));
    }
}
