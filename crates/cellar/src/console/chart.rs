//! Line charts as inline SVG, drawn on the server: no script, nothing fetched.

use maud::{html, Markup};

const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 120.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 18.0;

/// How a chart's values read.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    Seconds,
    PerSecond,
    Ratio,
    Count,
}

impl Unit {
    pub fn format(self, v: f64) -> String {
        match self {
            Unit::Seconds => super::duration_text(v),
            Unit::PerSecond => format!("{}/s", compact(v)),
            Unit::Ratio => format!("{:.0}%", v * 100.0),
            Unit::Count => compact(v),
        }
    }
}

/// `1234567` as `1.2M`, small values as they are.
pub fn compact(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A chart titled `title` of `points` (`(ms since the epoch, value)`, oldest first).
pub fn line(title: &str, unit: Unit, points: &[(i64, f64)]) -> Markup {
    let latest = points.last().map(|(_, v)| unit.format(*v));
    html! {
        figure.chart {
            figcaption {
                (title)
                @if let Some(latest) = latest { " " span.latest { "now " (latest) } }
            }
            @if points.len() < 2 {
                p.empty { "Not enough samples yet: the server samples its metrics every 10 s." }
            } @else {
                (svg(unit, points))
            }
        }
    }
}

fn svg(unit: Unit, points: &[(i64, f64)]) -> Markup {
    let (t0, t1) = (points[0].0, points[points.len() - 1].0);
    let max = points.iter().map(|(_, v)| *v).fold(0.0_f64, f64::max);
    let max = match unit {
        Unit::Ratio => 1.0,
        _ if max <= 0.0 => 1.0,
        _ => max * 1.1,
    };
    let span = (t1 - t0).max(1) as f64;
    let plot_w = WIDTH - LEFT - 4.0;
    let plot_h = HEIGHT - BOTTOM - 6.0;
    let x = |t: i64| LEFT + (t - t0) as f64 / span * plot_w;
    let y = |v: f64| 6.0 + plot_h - (v / max).clamp(0.0, 1.0) * plot_h;
    let mut path = String::with_capacity(points.len() * 16);
    for (i, (t, v)) in points.iter().enumerate() {
        let op = if i == 0 { 'M' } else { 'L' };
        path.push_str(&format!("{op}{:.1},{:.1} ", x(*t), y(*v)));
    }
    let since = format!("{} ago", super::duration_text((t1 - t0) as f64 / 1000.0));
    let view_box = format!("0 0 {WIDTH} {HEIGHT}");
    html! {
        svg viewBox=(view_box) role="img" preserveAspectRatio="none" {
            line.axis x1=(LEFT) y1=(y(0.0)) x2=(WIDTH - 4.0) y2=(y(0.0)) {}
            line.gridline x1=(LEFT) y1=(y(max)) x2=(WIDTH - 4.0) y2=(y(max)) {}
            text.label x=(LEFT - 4.0) y=(y(max) + 4.0) text-anchor="end" { (unit.format(max)) }
            text.label x=(LEFT - 4.0) y=(y(0.0)) text-anchor="end" { (unit.format(0.0)) }
            text.label x=(LEFT) y=(HEIGHT - 2.0) { (since) }
            text.label x=(WIDTH - 4.0) y=(HEIGHT - 2.0) text-anchor="end" { "now" }
            path.series d=(path) {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_needs_two_points_and_draws_every_one() {
        let one = line("lag", Unit::Count, &[(0, 3.0)]).into_string();
        assert!(one.contains("Not enough samples"), "{one}");
        let three = line(
            "lag",
            Unit::Count,
            &[(0, 3.0), (10_000, 5.0), (20_000, 0.0)],
        )
        .into_string();
        assert_eq!(three.matches(" L").count(), 2, "{three}");
        assert!(three.contains("<svg"), "{three}");
        assert!(three.contains("now 0"), "{three}");
    }

    #[test]
    fn numbers_are_compact() {
        assert_eq!(compact(1_234_567.0), "1.2M");
        assert_eq!(compact(12_345.0), "12.3k");
        assert_eq!(compact(42.0), "42");
        assert_eq!(compact(0.25), "0.25");
    }
}
