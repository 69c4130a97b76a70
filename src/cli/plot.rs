//! `curves.png`: loss and the first metric per epoch, for training and validation.
//!
//! Text is drawn with the font in assets/fonts through ab_glyph, so the plot needs
//! no system font libraries.

use std::path::Path;
use std::sync::Once;

use kiln::History;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::io_error;

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-ascii.ttf");
const FAMILY: &str = "sans-serif";
const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const VAL_COLOR: RGBColor = RGBColor(255, 127, 14);

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in and known to parse; a failure would only lose the text.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// Draws the learning curves of `history` into a PNG at `path`.
pub fn curves(history: &History, path: &Path) -> kiln::Result<()> {
    draw(history, path).map_err(|e| io_error(path, std::io::Error::other(e.to_string())))
}

fn draw(history: &History, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    register_font();
    let root = BitMapBackend::new(path, (1100, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    panel(&left, history, "loss", "Loss")?;
    // Classifiers show accuracy; regression its first metric (MAE); several outputs the
    // first output's first metric, after its loss.
    let metric = history
        .epochs
        .first()
        .and_then(|e| e.metrics.iter().find(|(n, _)| !n.ends_with("_loss")))
        .map(|(n, _)| n.clone());
    if let Some(m) = metric {
        let title = match m.as_str() {
            "mae" | "mse" => m.to_uppercase(),
            _ => {
                let words = m.replace('_', " ");
                words[..1].to_uppercase() + &words[1..]
            }
        };
        panel(&right, history, &m, &title)?;
    }
    root.present()?;
    Ok(())
}

/// One chart: `name` and `val_name` against the epoch.
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    history: &History,
    name: &str,
    title: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let series = |key: &str| -> Vec<(f64, f64)> {
        history
            .epochs
            .iter()
            .filter_map(|e| Some((e.epoch as f64, e.get(key)?)))
            .filter(|(_, v)| v.is_finite())
            .collect()
    };
    // The legend goes where the curves are not: above falling ones, below rising ones.
    let falls = name.ends_with("loss") || name == "mse" || name == "mae";
    let train = series(name);
    let val = series(&format!("val_{name}"));
    let all = train.iter().chain(&val);
    let (x0, x1) = all
        .clone()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let (y0, y1) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.1), b.max(p.1))
    });
    if !x0.is_finite() {
        return Ok(());
    }
    let pad = ((y1 - y0) * 0.08).max(1e-3);
    // Enough decimals to tell the ticks of a narrow range apart.
    let decimals = (2.0 - ((y1 - y0).max(1e-6)).log10().floor()).clamp(2.0, 6.0) as usize;
    let (x0, x1) = (x0 - 0.2, x1.max(x0 + 1.0) + 0.2);

    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 22))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_labels(10)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.decimals$}"))
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (points, label, color) in [
        (train, "train", TRAIN_COLOR),
        (val, "validation", VAL_COLOR),
    ] {
        if points.is_empty() {
            continue;
        }
        let style = ShapeStyle::from(&color).stroke_width(2);
        chart
            .draw_series(LineSeries::new(points.clone(), style))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        // Dots keep a one-epoch run visible.
        chart.draw_series(
            points
                .iter()
                .map(|&p| Circle::new(p, 3, ShapeStyle::from(&color).filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(if falls {
            SeriesLabelPosition::UpperRight
        } else {
            SeriesLabelPosition::LowerRight
        })
        .draw()?;
    Ok(())
}

/// Draws `trials.png`: the validation metric of every trial with results against each
/// hyperparameter, one panel per hyperparameter.
pub fn trials(trials: &kiln::tune::Trials, path: &Path) -> kiln::Result<()> {
    draw_trials(trials, path).map_err(|e| io_error(path, std::io::Error::other(e.to_string())))
}

fn draw_trials(trials: &kiln::tune::Trials, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    register_font();
    let n = trials.params.len().max(1);
    let cols = n.min(3);
    let rows = n.div_ceil(cols);
    let root = BitMapBackend::new(path, (420 * cols as u32, 340 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let (name, value): (String, fn(&kiln::tune::TrialRow) -> Option<f64>) = if trials.maximizes() {
        (format!("val_{}", trials.metric), |r| r.metric)
    } else {
        ("val_loss".into(), |r| r.loss)
    };
    for (i, area) in root.split_evenly((rows, cols)).iter().enumerate() {
        let Some(&hyper) = trials.params.get(i) else {
            continue;
        };
        let points: Vec<(String, f64)> = trials
            .rows
            .iter()
            .filter_map(|r| Some((r.config.get(hyper)?.to_string(), value(r)?)))
            .filter(|(_, v)| v.is_finite())
            .collect();
        trial_panel(area, hyper.name(), &name, &points)?;
    }
    root.present()?;
    Ok(())
}

/// One hyperparameter's panel: names spread evenly, numbers on a log axis when they span
/// more than a factor of 20 (learning rates, penalties).
fn trial_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    hyper: &str,
    metric: &str,
    points: &[(String, f64)],
) -> Result<(), Box<dyn std::error::Error>> {
    if points.is_empty() {
        return Ok(());
    }
    let numbers: Option<Vec<f64>> = points.iter().map(|(x, _)| x.parse().ok()).collect();
    let mut names: Vec<String> = Vec::new();
    let (xs, log, names) = match numbers {
        Some(xs) => {
            let (lo, hi) = xs
                .iter()
                .fold((f64::INFINITY, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
            let log = lo > 0.0 && hi / lo > 20.0;
            let xs: Vec<f64> = xs
                .iter()
                .map(|&x| if log { x.log10() } else { x })
                .collect();
            (xs, log, names)
        }
        None => {
            for (x, _) in points {
                if !names.contains(x) {
                    names.push(x.clone());
                }
            }
            let xs: Vec<f64> = points
                .iter()
                .map(|(x, _)| names.iter().position(|n| n == x).unwrap_or(0) as f64)
                .collect();
            (xs, false, names)
        }
    };
    let ys: Vec<f64> = points.iter().map(|p| p.1).collect();
    let span = |v: &[f64]| {
        v.iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            })
    };
    let ((x0, x1), (y0, y1)) = (span(&xs), span(&ys));
    let xpad = ((x1 - x0) * 0.1).max(0.5);
    let ypad = ((y1 - y0) * 0.1).max(1e-3);
    let mut chart = ChartBuilder::on(area)
        .caption(hyper, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d((x0 - xpad)..(x1 + xpad), (y0 - ypad)..(y1 + ypad))?;
    let label = |x: &f64| {
        if names.is_empty() {
            return if log {
                format!("{:.0e}", 10f64.powf(*x))
            } else {
                format!("{x}")
            };
        }
        let i = x.round();
        match names.get(i as usize) {
            Some(n) if (x - i).abs() < 1e-6 && i >= 0.0 => n.clone(),
            _ => String::new(),
        }
    };
    chart
        .configure_mesh()
        .x_desc(hyper)
        .y_desc(metric)
        .x_labels(if names.is_empty() {
            6
        } else {
            names.len() * 2 + 1
        })
        .x_label_formatter(&label)
        .y_label_formatter(&|y| format!("{y:.3}"))
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    chart.draw_series(
        xs.iter()
            .zip(&ys)
            .map(|(&x, &y)| Circle::new((x, y), 4, ShapeStyle::from(&TRAIN_COLOR).filled())),
    )?;
    Ok(())
}
