//! Line charts of memory over time, as SVG (the HTML report's plots), drawn by plotters' SVG
//! backend: bytes on the y axis in KiB/MiB/GiB, wall-clock times on the x axis. No font
//! backend: labels go out as `<text>` for the browser to render.
use plotters::prelude::*;

/// One line of a chart.
pub struct Line<'a> {
    /// Its name, in the legend.
    pub name: &'a str,
    /// Its colour.
    pub color: RGBColor,
    /// Dashed (a fitted or projected line) rather than solid (samples).
    pub dashed: bool,
    /// `(seconds, bytes)` points, in time order.
    pub points: Vec<(f64, f64)>,
}

/// Colours of the report: samples in strong colours, fits and levels lighter.
pub const RSS: RGBColor = RGBColor(0x55, 0x55, 0x55);
/// Private memory.
pub const PRIVATE: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
/// What the probes traced.
pub const TRACED: RGBColor = RGBColor(0xd6, 0x27, 0x28);
/// A fitted trend.
pub const FIT: RGBColor = RGBColor(0xff, 0x7f, 0x0e);

/// A chart of `lines` over `[x0, x1]` seconds, `size` pixels, titled `title`; `clock`
/// labels the x axis (seconds to a time of day). `None` when there is nothing to draw
/// (no line with two points, or a window of no length).
#[must_use]
pub fn chart(
    title: &str,
    lines: &[Line],
    size: (u32, u32),
    clock: &dyn Fn(f64) -> String,
) -> Option<String> {
    let points = || lines.iter().flat_map(|l| l.points.iter());
    let (x0, x1) =
        points().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.0), hi.max(p.0)));
    let top = points().map(|p| p.1).fold(0.0, f64::max);
    if x1.partial_cmp(&x0) != Some(std::cmp::Ordering::Greater)
        || !lines.iter().any(|l| l.points.len() >= 2)
    {
        return None;
    }
    // The y axis counts in one binary unit, so plotters' decimal ticks fall on round
    // numbers of it (1.5 MiB, not 1,572,864 bytes shown as 1.5 MiB and 976.6 KiB). Room
    // above the highest point for the legend (upper left), so it never covers a line.
    let (unit, unit_name) = unit_of(top.max(4096.0));
    let plot_px = f64::from(size.1.saturating_sub(CHROME_PX).max(40));
    #[expect(clippy::cast_precision_loss, reason = "a handful of lines")]
    let legend_px = LEGEND_ROW_PX * lines.len() as f64 + 12.0;
    let headroom = (legend_px / plot_px).min(0.6);
    let y1 = (top.max(4096.0) / unit) / (1.0 - headroom) * 1.05;
    let scaled: Vec<Line> = lines
        .iter()
        .map(|l| Line {
            name: l.name,
            color: l.color,
            dashed: l.dashed,
            points: l.points.iter().map(|&(x, y)| (x, y / unit)).collect(),
        })
        .collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        draw(&root, title, &scaled, (x0, x1, y1, unit_name), clock).ok()?;
        root.present().ok()?;
    }
    Some(svg)
}

/// Pixels of a chart that are not the plotting area: caption, time labels and margins.
const CHROME_PX: u32 = 58;
/// Pixels a line takes in the legend.
const LEGEND_ROW_PX: f64 = 19.0;

/// The binary unit `top` bytes are counted in: `(bytes in it, its name)`.
fn unit_of(top: f64) -> (f64, &'static str) {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut i = 0;
    while i + 1 < UNITS.len() && top >= 1024f64.powi(i32::try_from(i + 1).unwrap_or(0)) {
        i += 1;
    }
    (1024f64.powi(i32::try_from(i).unwrap_or(0)), UNITS[i])
}

/// A tick's value in its unit: `1.5 MiB`, `200 KiB` (no trailing zeros).
fn tick(v: f64, unit: &str) -> String {
    let text = format!("{v:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} {unit}")
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn draw(
    root: &Area,
    title: &str,
    lines: &[Line],
    (x0, x1, y1, unit): (f64, f64, f64, &str),
    clock: &dyn Fn(f64) -> String,
) -> Result<(), Box<dyn std::error::Error>> {
    root.fill(&WHITE)?;
    let mut c = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 15))
        .margin(8)
        // Room for the last time label, centred on the right edge.
        .margin_right(32)
        .x_label_area_size(26)
        .y_label_area_size(72)
        .build_cartesian_2d(x0..x1, 0f64..y1)?;
    let bytes = |v: &f64| tick(*v, unit);
    let time = |t: &f64| clock(*t);
    c.configure_mesh()
        .x_labels(6)
        .y_labels(5)
        .x_label_formatter(&time)
        .y_label_formatter(&bytes)
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for l in lines.iter().filter(|l| !l.points.is_empty()) {
        let style = ShapeStyle::from(&l.color).stroke_width(if l.dashed { 1 } else { 2 });
        let drawn = if l.dashed {
            c.draw_series(DashedLineSeries::new(l.points.iter().copied(), 6, 4, style))?
        } else {
            c.draw_series(LineSeries::new(l.points.iter().copied(), style))?
        };
        let color = l.color;
        drawn.label(l.name).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 16, y)], ShapeStyle::from(&color).stroke_width(2))
        });
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.2))
        .draw()?;
    Ok(())
}

/// The straight line through `points` with slope `rate` (per second) that the points sit
/// around, placed as the trend classifier places it (`trend::intercept`): its two ends, at
/// the first and last point's time.
#[must_use]
pub fn fitted(points: &[(f64, f64)], rate: f64) -> Vec<(f64, f64)> {
    let (Some(first), Some(last)) = (points.first(), points.last()) else { return Vec::new() };
    let b = crate::analysis::trend::intercept(points, rate);
    vec![(first.0, b + rate * first.0), (last.0, b + rate * last.0)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(t: f64) -> String {
        format!("t+{t:.0}s")
    }

    #[test]
    fn draws_lines_with_units_and_times() {
        let points: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), f64::from(i) * 1e6)).collect();
        let fit = fitted(&points, 1e6);
        assert_eq!(fit, vec![(0.0, 0.0), (9.0, 9e6)]);
        let lines = [
            Line { name: "private", color: PRIVATE, dashed: false, points },
            Line { name: "trend", color: FIT, dashed: true, points: fit },
        ];
        let svg = chart("Process <memory>", &lines, (600, 240), &clock).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
        assert!(svg.contains("Process &lt;memory&gt;"), "title escaped");
        assert!(svg.contains("MiB") && svg.contains("t+0s"), "units and times: {svg}");
        // plotters writes each label on a line of its own inside <text>.
        assert!(svg.contains("\nprivate\n</text>") && svg.contains("\ntrend\n</text>"), "{svg}");
        assert!(svg.matches("<polyline").count() >= 2 || svg.contains("<path"), "{svg}");
    }

    #[test]
    fn ticks_are_round_numbers_of_one_unit() {
        assert_eq!(unit_of(1000.0), (1.0, "B"));
        assert_eq!(unit_of(1024.0), (1024.0, "KiB"));
        assert_eq!(unit_of(3.0 * 1024.0 * 1024.0), (1024.0 * 1024.0, "MiB"));
        assert_eq!(tick(1.5, "MiB"), "1.5 MiB");
        assert_eq!(tick(200.0, "KiB"), "200 KiB");
        assert_eq!(tick(0.0, "B"), "0 B");
        // A million bytes: counted in KiB, on round ticks (not 976.6 KiB).
        let points = vec![(0.0, 0.0), (10.0, 1e6)];
        let lines = [Line { name: "x", color: TRACED, dashed: false, points }];
        let svg = chart("t", &lines, (600, 240), &clock).unwrap();
        assert!(svg.contains("\n500 KiB\n</text>") && !svg.contains("976.6"), "{svg}");
    }

    #[test]
    fn nothing_to_draw() {
        let one = [Line { name: "x", color: RSS, dashed: false, points: vec![(1.0, 5.0)] }];
        assert!(chart("t", &one, (300, 200), &clock).is_none());
        assert!(chart("t", &[], (300, 200), &clock).is_none());
        assert!(fitted(&[], 1.0).is_empty());
    }
}
