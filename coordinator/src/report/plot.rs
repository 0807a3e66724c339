//! The loss curve of a run as an SVG (no fonts or system libraries needed): training loss per
//! step and validation loss per epoch on a log axis whose ticks are labelled across the whole
//! range (1, 2 and 5 of every decade, or every decade when there are many), both series in the
//! legend, and epoch boundaries marked. Written atomically.

use std::path::Path;

use plotters::prelude::*;

/// A point of the plot: step, loss, and the epoch the step belongs to.
pub(crate) type Point = (u64, f64, u64);

/// Tick values for a log axis over `[lo, hi]`: 1, 2 and 5 times each power of ten (only the
/// powers when the range spans more than four decades; 1, 1.5, 2, 3, 5 and 7 when that gives
/// fewer than four ticks).
pub(crate) fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo > 0.0 && hi >= lo) {
        return Vec::new();
    }
    let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let pick = |steps: &[f64]| {
        let mut out = Vec::new();
        for e in a..=b {
            for m in steps {
                let v = m * 10f64.powi(e);
                if v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9) {
                    out.push(v);
                }
            }
        }
        out
    };
    let out = pick(if b - a > 4 { &[1.0] } else { &[1.0, 2.0, 5.0] });
    if out.len() >= 4 {
        out
    } else {
        pick(&[1.0, 1.5, 2.0, 3.0, 5.0, 7.0])
    }
}

/// A tick label: plain decimals from 0.001 to 99999, else `2e-5`.
pub(crate) fn tick_label(v: f64) -> String {
    if (1e-3..1e5).contains(&v) {
        let s = format!("{v:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        let e = v.log10().floor();
        let m = v / 10f64.powf(e);
        format!("{}e{}", tick_label(m), e as i32)
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The SVG of training loss `loss` (per step) and validation loss `val` (per epoch end).
pub(crate) fn loss_svg(loss: &[Point], val: &[Point]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let max_step = loss
            .iter()
            .chain(val)
            .map(|p| p.0)
            .max()
            .unwrap_or(1)
            .max(1);
        let (lo, hi) = loss
            .iter()
            .chain(val)
            .map(|p| p.1)
            .filter(|v| *v > 0.0 && v.is_finite())
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        let (lo, hi) = if lo.is_finite() && hi > lo {
            (lo / 1.15, hi * 1.15)
        } else if lo.is_finite() {
            (lo / 2.0, lo * 2.0)
        } else {
            (1e-3, 1.0)
        };
        let (ly0, ly1) = (lo.log10(), hi.log10());
        let mut chart = ChartBuilder::on(&root)
            .caption("loss (mean squared error, log scale)", ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0u64..max_step + 1, ly0..ly1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .y_labels(0)
            .disable_y_mesh()
            .draw()
            .map_err(err)?;
        // the log axis: a grid line and a label at every tick
        for t in log_ticks(lo, hi) {
            let y = t.log10();
            chart
                .draw_series(LineSeries::new(
                    [(0, y), (max_step + 1, y)],
                    RGBColor(225, 225, 225),
                ))
                .map_err(err)?;
            let (px, py) = chart.backend_coord(&(0, y));
            root.draw(&Text::new(
                tick_label(t),
                (px - 62, py - 7),
                ("sans-serif", 13).into_font(),
            ))
            .map_err(err)?;
        }
        // epoch boundaries: the first step of every epoch after the first
        let mut last_epoch = None;
        for &(step, _, epoch) in loss {
            if last_epoch.is_some_and(|e| e != epoch) {
                chart
                    .draw_series(LineSeries::new(
                        [(step, ly0), (step, ly1)],
                        RGBColor(150, 150, 150).stroke_width(1),
                    ))
                    .map_err(err)?;
                let (px, py) = chart.backend_coord(&(step, ly1));
                root.draw(&Text::new(
                    format!("epoch {epoch}"),
                    (px + 3, py + 3),
                    ("sans-serif", 12)
                        .into_font()
                        .color(&RGBColor(110, 110, 110)),
                ))
                .map_err(err)?;
            }
            last_epoch = Some(epoch);
        }
        let log = |p: &Point| (p.0, p.1.max(lo).log10());
        chart
            .draw_series(LineSeries::new(loss.iter().map(log), &BLUE))
            .map_err(err)?
            .label("training loss (per step)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        if !val.is_empty() {
            chart
                .draw_series(LineSeries::new(val.iter().map(log), RED.stroke_width(2)))
                .map_err(err)?
                .label("validation loss (per epoch)")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
            chart
                .draw_series(val.iter().map(|p| Circle::new(log(p), 3, RED.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Writes [`loss_svg`] to `path` atomically.
pub(crate) fn write_loss_plot(path: &Path, loss: &[Point], val: &[Point]) -> Result<(), String> {
    let svg = loss_svg(loss, val)?;
    runtime::fs::write_atomic(path, svg.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_axis_is_labelled_across_its_whole_range() {
        let t: Vec<String> = log_ticks(0.0015, 0.2).into_iter().map(tick_label).collect();
        assert_eq!(t, ["0.002", "0.005", "0.01", "0.02", "0.05", "0.1", "0.2"]);
        let t: Vec<String> = log_ticks(0.03, 0.2).into_iter().map(tick_label).collect();
        assert_eq!(t, ["0.03", "0.05", "0.07", "0.1", "0.15", "0.2"]);
        let t: Vec<String> = log_ticks(3e-7, 40.0).into_iter().map(tick_label).collect();
        assert_eq!(
            t,
            ["1e-6", "1e-5", "1e-4", "0.001", "0.01", "0.1", "1", "10"]
        );
        let loss: Vec<Point> = (0..40)
            .map(|s| (s, 0.2 * (-(s as f64) / 8.0).exp() + 0.0015, s / 20))
            .collect();
        let val = vec![(19, 0.004, 0), (39, 0.0019, 1)];
        let svg = loss_svg(&loss, &val).unwrap();
        for label in [
            "0.002",
            "0.005",
            "0.01",
            "0.1",
            "training loss",
            "validation loss",
            "epoch 1",
        ] {
            assert!(svg.contains(label), "the plot shows {label}");
        }
    }
}
