//! A hand-written SVG line chart: two series over the same categories, one
//! on a left axis and one on a right axis. Enough for `--sweep`; no plotting
//! crate needed.

use std::fmt::Write as _;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 90.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 70.0;
/// Horizontal grid lines (and labels) per axis.
const TICKS: usize = 5;

/// A line of values, one per category.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    /// Legend and axis title, e.g. `throughput (ops/s)`.
    pub name: &'a str,
    /// Stroke colour.
    pub color: &'a str,
    /// One value per category; non-finite values are drawn as 0.
    pub values: &'a [f64],
}

/// Two series over shared categories.
#[derive(Debug, Clone, Copy)]
pub struct Chart<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// Title of the x axis.
    pub x_title: &'a str,
    /// Category labels along the x axis, left to right.
    pub categories: &'a [String],
    /// Series drawn against the left axis.
    pub left: Series<'a>,
    /// Series drawn against the right axis.
    pub right: Series<'a>,
}

/// Renders `chart` as a standalone SVG document.
pub fn render(chart: &Chart<'_>) -> String {
    let mut canvas = Canvas::new(chart);
    canvas.header();
    canvas.grid();
    canvas.axes();
    canvas.lines();
    canvas.legend();
    canvas.svg.push_str("</svg>\n");
    canvas.svg
}

/// The document being written, and the geometry every part shares.
struct Canvas<'a> {
    chart: &'a Chart<'a>,
    svg: String,
    plot_w: f64,
    plot_h: f64,
    /// The plot's bottom-left corner.
    x0: f64,
    y0: f64,
    /// The top of each axis, rounded up to a readable number.
    left_max: f64,
    right_max: f64,
}

// Writing to a String cannot fail: the results of `writeln!` are ignored.
impl<'a> Canvas<'a> {
    fn new(chart: &'a Chart<'a>) -> Canvas<'a> {
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        Canvas {
            chart,
            svg: String::new(),
            plot_w,
            plot_h,
            x0: LEFT,
            y0: TOP + plot_h,
            left_max: nice_ceiling(max_of(chart.left.values)),
            right_max: nice_ceiling(max_of(chart.right.values)),
        }
    }

    /// Where category `i` sits along the x axis.
    fn x_at(&self, i: usize) -> f64 {
        let n = self.chart.categories.len();
        if n <= 1 {
            LEFT + self.plot_w / 2.0
        } else {
            LEFT + self.plot_w * i as f64 / (n - 1) as f64
        }
    }

    fn header(&mut self) {
        let _ = writeln!(
            self.svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            self.svg,
            r#"<rect width="100%" height="100%" fill="white"/>"#
        );
        let _ = writeln!(
            self.svg,
            r#"<text x="{}" y="28" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
            WIDTH / 2.0,
            escape(self.chart.title)
        );
    }

    /// Grid lines and the two value axes' tick labels.
    fn grid(&mut self) {
        let (x0, y0, chart) = (self.x0, self.y0, self.chart);
        for tick in 0..=TICKS {
            let fraction = tick as f64 / TICKS as f64;
            let y = y0 - self.plot_h * fraction;
            let _ = writeln!(
                self.svg,
                r##"<line x1="{x0}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
                x0 + self.plot_w
            );
            let _ = writeln!(
                self.svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="{}">{}</text>"#,
                x0 - 8.0,
                y + 4.0,
                chart.left.color,
                format_tick(self.left_max * fraction)
            );
            let _ = writeln!(
                self.svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="start" fill="{}">{}</text>"#,
                x0 + self.plot_w + 8.0,
                y + 4.0,
                chart.right.color,
                format_tick(self.right_max * fraction)
            );
        }
    }

    /// The frame, category ticks and labels, and the axis titles.
    fn axes(&mut self) {
        let (x0, y0, chart) = (self.x0, self.y0, self.chart);
        let _ = writeln!(
            self.svg,
            r#"<path d="M{x0} {TOP} V{y0} H{:.1} V{TOP}" fill="none" stroke="black"/>"#,
            x0 + self.plot_w
        );
        for (i, category) in chart.categories.iter().enumerate() {
            let x = self.x_at(i);
            let _ = writeln!(
                self.svg,
                r#"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{:.1}" stroke="black"/>"#,
                y0 + 5.0
            );
            let _ = writeln!(
                self.svg,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                y0 + 20.0,
                escape(category)
            );
        }
        let _ = writeln!(
            self.svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + self.plot_w / 2.0,
            HEIGHT - 22.0,
            escape(chart.x_title)
        );
        for (series, x, angle) in [(&chart.left, 22.0, -90), (&chart.right, WIDTH - 22.0, 90)] {
            let y = TOP + self.plot_h / 2.0;
            let _ = writeln!(
                self.svg,
                r#"<text x="{x:.1}" y="{y:.1}" text-anchor="middle" fill="{}" transform="rotate({angle} {x:.1} {y:.1})">{}</text>"#,
                series.color,
                escape(series.name)
            );
        }
    }

    /// The two lines, with a dot on every point.
    fn lines(&mut self) {
        let chart = self.chart;
        let n = chart.categories.len();
        for (series, max) in [(&chart.left, self.left_max), (&chart.right, self.right_max)] {
            let points: Vec<(f64, f64)> = series
                .values
                .iter()
                .take(n)
                .enumerate()
                .map(|(i, v)| (self.x_at(i), self.y0 - self.plot_h * finite(*v) / max))
                .collect();
            let mut attr = String::new();
            for (i, (x, y)) in points.iter().enumerate() {
                let _ = write!(attr, "{}{x:.1},{y:.1}", if i == 0 { "" } else { " " });
            }
            let _ = writeln!(
                self.svg,
                r#"<polyline points="{attr}" fill="none" stroke="{}" stroke-width="2.5"/>"#,
                series.color
            );
            for (x, y) in points {
                let _ = writeln!(
                    self.svg,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{}"/>"#,
                    series.color
                );
            }
        }
    }

    /// The legend, top left inside the plot, on a backdrop so lines under
    /// it do not cross the text.
    fn legend(&mut self) {
        let _ = writeln!(
            self.svg,
            r##"<rect x="{:.1}" y="{:.1}" width="190" height="44" fill="white" fill-opacity="0.85" stroke="#ccc"/>"##,
            LEFT + 6.0,
            TOP + 4.0
        );
        for (row, series) in [&self.chart.left, &self.chart.right]
            .into_iter()
            .enumerate()
        {
            let y = TOP + 16.0 + 18.0 * row as f64;
            let _ = writeln!(
                self.svg,
                r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="2.5"/>"#,
                LEFT + 12.0,
                LEFT + 36.0,
                series.color
            );
            let _ = writeln!(
                self.svg,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                LEFT + 42.0,
                y + 4.0,
                escape(series.name)
            );
        }
    }
}

fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v.max(0.0)
    } else {
        0.0
    }
}

fn max_of(values: &[f64]) -> f64 {
    values.iter().copied().map(finite).fold(0.0, f64::max)
}

/// The smallest 1, 2, 2.5 or 5 × 10^k at or above `v` (1 for an empty or
/// all-zero series), so tick labels come out round.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|step| step * magnitude)
        .find(|candidate| *candidate >= v * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude)
}

/// `1.5M`, `250k`, `12`, `0.25`: short labels for axis ticks.
fn format_tick(v: f64) -> String {
    let (scaled, suffix) = if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let text = format!("{scaled:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{suffix}")
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that every tag is closed in order, returning the tag names in
    /// document order.
    fn balanced_tags(svg: &str) -> Result<Vec<String>, String> {
        let mut open: Vec<String> = Vec::new();
        let mut seen = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').ok_or("unterminated tag")? + start;
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                match open.pop() {
                    Some(expected) if expected == name => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
            } else {
                let name = tag
                    .split_whitespace()
                    .next()
                    .ok_or("empty tag")?
                    .trim_end_matches('/');
                seen.push(name.to_owned());
                if !tag.ends_with('/') {
                    open.push(name.to_owned());
                }
            }
        }
        if open.is_empty() {
            Ok(seen)
        } else {
            Err(format!("unclosed {open:?}"))
        }
    }

    fn chart_svg(categories: &[String], left: &[f64], right: &[f64]) -> String {
        render(&Chart {
            title: "sweep <max-connections> & more",
            x_title: "max-connections",
            categories,
            left: Series {
                name: "throughput (ops/s)",
                color: "#1f77b4",
                values: left,
            },
            right: Series {
                name: "p99 (ms)",
                color: "#d62728",
                values: right,
            },
        })
    }

    #[test]
    fn chart_is_well_formed_with_one_point_per_category() {
        let categories: Vec<String> = ["1", "2", "4", "8", "16"].map(String::from).to_vec();
        let svg = chart_svg(
            &categories,
            &[1e5, 2e5, 3.5e5, 3.9e5, 4e5],
            &[0.9, 0.7, 0.5, 0.6, f64::NAN],
        );
        let tags = balanced_tags(&svg).unwrap();
        assert_eq!(tags.first().map(String::as_str), Some("svg"));
        assert_eq!(tags.iter().filter(|t| *t == "polyline").count(), 2);
        for line in svg.lines().filter(|l| l.starts_with("<polyline")) {
            let points = line.split('"').nth(1).unwrap();
            assert_eq!(points.split(' ').count(), 5, "{line}");
            for point in points.split(' ') {
                let (x, y) = point.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!(
                    (0.0..=WIDTH).contains(&x) && (0.0..=HEIGHT).contains(&y),
                    "{point}"
                );
            }
        }
        assert!(svg.contains("sweep &lt;max-connections&gt; &amp; more"));
        assert!(svg.contains(">400k<"), "left axis ticks every 100k");
    }

    #[test]
    fn degenerate_charts_still_render() {
        let one = vec!["1".to_owned()];
        assert!(balanced_tags(&chart_svg(&one, &[0.0], &[0.0])).is_ok());
        assert!(balanced_tags(&chart_svg(&[], &[], &[])).is_ok());
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_ceiling(393_000.0), 500_000.0);
        assert_eq!(nice_ceiling(200_000.0), 200_000.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(2.2), 2.5);
        assert_eq!(format_tick(1_500_000.0), "1.5M");
        assert_eq!(format_tick(250_000.0), "250k");
        assert_eq!(format_tick(0.25), "0.25");
        assert_eq!(format_tick(0.0), "0");
    }
}
