//! Forecasts as an SVG (no fonts or system libraries needed): one small panel per series, up to
//! [`MAX_PANELS`] in a grid, each with the history, the forecast drawn on from the last history
//! point, the interval of a quantile forecast as a shaded band, and the actual values (a third
//! colour, with markers) when known, the series id as caption, and one legend under the title.
//! Written atomically.
//!
//! Times are plain numbers on the x axis (seconds since the epoch for dates); the caller labels
//! the ticks. Non-finite points are left out; a flat or one-point range is widened so that every
//! panel has an area.

use std::path::Path;

use plotters::prelude::*;

/// Panels drawn at most; further series are left out and the title says so.
pub(crate) const MAX_PANELS: usize = 6;
/// The size of one panel, in pixels.
const PANEL: (u32, u32) = (520, 340);
/// Room for the title and the legend above the grid.
const TITLE_H: u32 = 64;

const HISTORY: RGBColor = RGBColor(31, 119, 180);
const FORECAST: RGBColor = RGBColor(230, 110, 0);
const ACTUAL: RGBColor = RGBColor(44, 160, 44);
/// The interval band: the forecast's colour, light.
const BAND: RGBColor = RGBColor(250, 205, 160);

/// One column of one series to plot.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PlotSeries {
    /// The series id, the panel's caption.
    pub(crate) id: String,
    /// The target column, added to the caption when not empty.
    pub(crate) column: String,
    /// Times of the history values.
    pub(crate) history_t: Vec<f64>,
    /// The history, one value per time.
    pub(crate) history: Vec<f64>,
    /// Times of the forecast values.
    pub(crate) forecast_t: Vec<f64>,
    /// The forecast, one value per time.
    pub(crate) forecast: Vec<f64>,
    /// The actual values at the forecast times, when known.
    pub(crate) actual: Option<Vec<f64>>,
    /// The interval of a quantile forecast at the forecast times: its lower and upper bounds,
    /// and what it is called in the legend (`10%-90%`).
    pub(crate) band: Option<(Vec<f64>, Vec<f64>, String)>,
}

impl PlotSeries {
    /// Checks that every value has a time.
    fn check(&self) -> Result<(), String> {
        let pairs = [
            (
                "history",
                self.history.len(),
                "history_t",
                self.history_t.len(),
            ),
            (
                "forecast",
                self.forecast.len(),
                "forecast_t",
                self.forecast_t.len(),
            ),
            (
                "actual",
                self.actual.as_ref().map_or(self.forecast_t.len(), Vec::len),
                "forecast_t",
                self.forecast_t.len(),
            ),
            (
                "band lower",
                self.band
                    .as_ref()
                    .map_or(self.forecast_t.len(), |b| b.0.len()),
                "forecast_t",
                self.forecast_t.len(),
            ),
            (
                "band upper",
                self.band
                    .as_ref()
                    .map_or(self.forecast_t.len(), |b| b.1.len()),
                "forecast_t",
                self.forecast_t.len(),
            ),
        ];
        for (v, n, t, nt) in pairs {
            if n != nt {
                return Err(format!(
                    "series `{}` {v}: expected {nt} values (one per {t}), got {n}",
                    self.id
                ));
            }
        }
        Ok(())
    }

    fn caption(&self) -> String {
        if self.column.is_empty() {
            self.id.clone()
        } else {
            format!("{} ({})", self.id, self.column)
        }
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The finite points of `t` and `v`.
fn points(t: &[f64], v: &[f64]) -> Vec<(f64, f64)> {
    t.iter()
        .zip(v)
        .map(|(&t, &v)| (t, v))
        .filter(|(t, v)| t.is_finite() && v.is_finite())
        .collect()
}

/// `[lo, hi]` of `values` with a margin of `pad` of the span; a flat range is widened by a tenth
/// of its magnitude (or by 1 around 0), an empty one is `[0, 1]`.
fn range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        (0.0, 1.0)
    } else if hi > lo {
        let m = (hi - lo) * pad;
        (lo - m, hi + m)
    } else {
        let m = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - m, hi + m)
    }
}

/// Rows and columns of the grid for `n` panels: one row up to three, then two or three columns.
fn grid(n: usize) -> (usize, usize) {
    match n {
        0..=3 => (1, n.max(1)),
        4 => (2, 2),
        _ => (n.div_ceil(3), 3),
    }
}

/// The SVG of the first [`MAX_PANELS`] of `series`, x ticks labelled by `x_label`.
pub(crate) fn forecast_svg_string(
    title: &str,
    series: &[PlotSeries],
    x_label: &dyn Fn(f64) -> String,
) -> Result<String, String> {
    if series.is_empty() {
        return Err("series: expected at least one to plot, got none".into());
    }
    for s in series {
        s.check()?;
    }
    let shown = &series[..series.len().min(MAX_PANELS)];
    let title = if shown.len() < series.len() {
        format!("{title} (first {} of {} series)", shown.len(), series.len())
    } else {
        title.to_string()
    };
    let (rows, cols) = grid(shown.len());
    let size = (PANEL.0 * cols as u32, PANEL.1 * rows as u32 + TITLE_H);
    let tick = |v: &f64| x_label(*v);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (head, body) = root.split_vertically(TITLE_H);
        head.titled(&title, ("sans-serif", 24)).map_err(err)?;
        // one legend for all panels, centred under the title
        let mut keys = vec![
            ("history", HISTORY.stroke_width(2)),
            ("forecast", FORECAST.stroke_width(2)),
        ];
        if shown.iter().any(|s| s.actual.is_some()) {
            keys.push(("actual", ACTUAL.stroke_width(2)));
        }
        let band_name = shown
            .iter()
            .find_map(|s| s.band.as_ref().map(|b| b.2.clone()));
        if let Some(name) = &band_name {
            keys.push((name.as_str(), BAND.stroke_width(8)));
        }
        let mut x = (size.0 as i32 - 110 * keys.len() as i32) / 2;
        for (name, style) in keys {
            head.draw(&PathElement::new(vec![(x, 48), (x + 24, 48)], style))
                .map_err(err)?;
            let font = ("sans-serif", 15).into_font();
            head.draw(&Text::new(name, (x + 30, 41), font))
                .map_err(err)?;
            x += 110;
        }
        for (s, area) in shown.iter().zip(body.split_evenly((rows, cols))) {
            let history = points(&s.history_t, &s.history);
            let mut forecast = points(&s.forecast_t, &s.forecast);
            let mut actual = s
                .actual
                .as_ref()
                .map(|a| points(&s.forecast_t, a))
                .unwrap_or_default();
            // the forecast (and the actual values) go on from the last history point
            let start = history.last().copied();
            if let Some(p) = start {
                forecast.insert(0, p);
                if s.actual.is_some() {
                    actual.insert(0, p);
                }
            }
            // the band's finite points, upper bounds then lower ones backwards: a polygon
            let band: Vec<(f64, f64)> = s
                .band
                .as_ref()
                .map(|(lo, hi, _)| {
                    let upper = points(&s.forecast_t, hi);
                    let mut lower = points(&s.forecast_t, lo);
                    lower.reverse();
                    if upper.len() == lower.len() {
                        upper.into_iter().chain(lower).collect()
                    } else {
                        Vec::new()
                    }
                })
                .unwrap_or_default();
            let all = || history.iter().chain(&forecast).chain(&actual).chain(&band);
            let (x0, x1) = range(all().map(|p| p.0), 0.0);
            let (y0, y1) = range(all().map(|p| p.1), 0.05);

            let mut chart = ChartBuilder::on(&area)
                .caption(s.caption(), ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_labels(4)
                .y_labels(5)
                .x_label_formatter(&tick)
                .light_line_style(RGBColor(235, 235, 235))
                .label_style(("sans-serif", 13))
                .draw()
                .map_err(err)?;
            // where the forecast starts
            if let Some((t, _)) = start {
                chart
                    .draw_series(LineSeries::new([(t, y0), (t, y1)], RGBColor(170, 170, 170)))
                    .map_err(err)?;
            }
            if band.len() >= 2 {
                chart
                    .draw_series([Polygon::new(band.clone(), BAND.mix(0.6).filled())])
                    .map_err(err)?;
            }
            if let [p] = history[..] {
                chart
                    .draw_series([Circle::new(p, 3, HISTORY.filled())])
                    .map_err(err)?;
            }
            chart
                .draw_series(LineSeries::new(
                    history.iter().copied(),
                    HISTORY.stroke_width(2),
                ))
                .map_err(err)?;
            chart
                .draw_series(LineSeries::new(
                    forecast.iter().copied(),
                    FORECAST.stroke_width(2),
                ))
                .map_err(err)?;
            if s.actual.is_some() {
                chart
                    .draw_series(LineSeries::new(
                        actual.iter().copied(),
                        ACTUAL.stroke_width(2),
                    ))
                    .map_err(err)?;
                chart
                    .draw_series(
                        actual
                            .iter()
                            .skip(usize::from(start.is_some()))
                            .map(|&p| Circle::new(p, 3, ACTUAL.filled())),
                    )
                    .map_err(err)?;
            }
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Writes [`forecast_svg_string`] to `path` atomically.
pub(crate) fn forecast_svg(
    path: &Path,
    title: &str,
    series: &[PlotSeries],
    x_label: &dyn Fn(f64) -> String,
) -> Result<(), String> {
    let svg = forecast_svg_string(title, series, x_label)?;
    runtime::fs::write_atomic(path, svg.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(id: &str, history: Vec<f64>, forecast: Vec<f64>, actual: bool) -> PlotSeries {
        let n = history.len();
        PlotSeries {
            id: id.into(),
            column: "load".into(),
            history_t: (0..n).map(|t| t as f64 * 3600.0).collect(),
            forecast_t: (n..n + forecast.len()).map(|t| t as f64 * 3600.0).collect(),
            actual: actual.then(|| forecast.iter().map(|v| v + 0.5).collect()),
            band: None,
            history,
            forecast,
        }
    }

    #[test]
    fn a_quantile_forecast_draws_its_interval_as_a_band_in_the_legend() {
        let mut s = series("q", vec![1.0, 2.0, 3.0], vec![3.5, 4.0], true);
        s.band = Some((vec![3.0, 3.2], vec![4.0, 4.9], "10%-90%".into()));
        let svg = forecast_svg_string("quantiles", &[s.clone()], &hours).unwrap();
        assert!(svg.contains("10%-90%"), "the legend names the interval");
        let fill = format!("fill=\"#{:02X}{:02X}{:02X}\"", BAND.0, BAND.1, BAND.2);
        assert_eq!(
            svg.lines()
                .filter(|l| l.starts_with("<polygon") && l.contains(&fill))
                .count(),
            1,
            "one band"
        );
        s.band = Some((vec![3.0], vec![4.0, 4.9], "10%-90%".into()));
        assert!(
            forecast_svg_string("t", &[s], &hours)
                .unwrap_err()
                .contains("band lower")
        );
    }

    fn hours(v: f64) -> String {
        format!("{}h", v / 3600.0)
    }

    #[test]
    fn writes_one_panel_per_series_with_lines_and_captions() {
        let dir = std::env::temp_dir().join(format!("carry-forecast-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("forecast.svg");
        let wave: Vec<f64> = (0..24).map(|t| (t as f64 / 3.0).sin()).collect();
        let plot = [
            series("north-1", wave.clone(), vec![0.1, 0.2, 0.3], true),
            series("south-2", wave, vec![1.0, 0.5], false),
            series("east-3", (0..10).map(f64::from).collect(), vec![10.0], true),
        ];
        forecast_svg(&path, "forecast <test>", &plot, &hours).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "an SVG document");
        assert!(svg.trim_end().ends_with("</svg>"), "a complete one");
        for id in ["north-1 (load)", "south-2 (load)", "east-3 (load)"] {
            assert!(svg.contains(id), "the plot has a panel for {id}");
        }
        for text in [
            "history",
            "forecast",
            "actual",
            "forecast &lt;test&gt;",
            "\n0h\n",
        ] {
            assert!(svg.contains(text), "the plot shows {text}");
        }
        // a line of each kind per panel (two with actual values), and one in the legend
        let lines = |colour: RGBColor| {
            let stroke = format!(
                "stroke=\"#{:02X}{:02X}{:02X}\"",
                colour.0, colour.1, colour.2
            );
            svg.lines()
                .filter(|l| l.starts_with("<polyline") && l.contains(&stroke))
                .count()
        };
        assert_eq!(lines(HISTORY), 3 + 1);
        assert_eq!(lines(FORECAST), 3 + 1);
        assert_eq!(lines(ACTUAL), 2 + 1);
        // nothing left behind but the file
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn degenerate_ranges_and_bad_points_do_not_panic() {
        let plot = [
            series("one-point", vec![2.0], vec![], false),
            series("flat", vec![5.0; 8], vec![5.0, 5.0], true),
            series("zero", vec![0.0; 3], vec![0.0], false),
            series("empty", vec![], vec![f64::NAN], true),
            series("nan", vec![1.0, f64::NAN, f64::INFINITY], vec![2.0], false),
        ];
        let svg = forecast_svg_string("degenerate", &plot, &hours).unwrap();
        for p in &plot {
            assert!(svg.contains(&p.id), "a panel for {}", p.id);
        }
        assert!(!svg.contains("NaN"), "no NaN coordinates");
    }

    #[test]
    fn more_series_than_panels_are_left_out_and_the_title_says_so() {
        let plot: Vec<PlotSeries> = (0..8)
            .map(|i| series(&format!("s{i}"), vec![1.0, 2.0], vec![3.0], false))
            .collect();
        let svg = forecast_svg_string("many", &plot, &hours).unwrap();
        assert!(svg.contains("many (first 6 of 8 series)"));
        assert!(svg.contains("s5 (load)") && !svg.contains("s6 (load)"));
    }

    #[test]
    fn a_value_without_a_time_is_refused() {
        let mut s = series("x", vec![1.0, 2.0], vec![3.0], true);
        s.history_t.pop();
        let e = forecast_svg_string("t", &[s], &hours).unwrap_err();
        assert_eq!(
            e,
            "series `x` history: expected 1 values (one per history_t), got 2"
        );
        assert!(forecast_svg_string("t", &[], &hours).is_err());
    }

    #[test]
    fn grids_stay_small() {
        assert_eq!(grid(1), (1, 1));
        assert_eq!(grid(3), (1, 3));
        assert_eq!(grid(4), (2, 2));
        assert_eq!(grid(5), (2, 3));
        assert_eq!(grid(6), (2, 3));
    }
}
