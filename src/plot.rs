//! PNG charts and image grids.
//!
//! Charts are drawn with plotters into an in-memory RGB buffer, encoded with the
//! `png` crate and written atomically with [`crate::fsutil::write_atomic`]. Text
//! uses DejaVu Sans, embedded in the binary (`assets/DejaVuSans.ttf`, licence in
//! `assets/DejaVuSans-LICENSE.txt`) and registered with plotters as
//! `"sans-serif"` on first use, so no system font is needed.
//!
//! Non-finite values (NaN, ±∞) are never plotted: line series skip them, the
//! histogram counts them in its legend, and a non-finite cutoff is ignored.

use crate::fsutil::write_atomic;
use crate::metrics::Roc;
use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::path::Path;
use std::sync::OnceLock;

/// DejaVu Sans (Bitstream Vera licence, see assets/DejaVuSans-LICENSE.txt).
static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Size of every chart, in pixels.
pub const CHART_SIZE: (u32, u32) = (800, 600);

/// Side of one MNIST image, in pixels.
const SIDE: usize = 28;
/// Pixels in one MNIST image.
const PIXELS: usize = SIDE * SIDE;
/// Width of the separator lines of an image grid, in output pixels.
const SEP: usize = 2;
/// Grey level of the separator lines (and of empty cells) of an image grid.
const SEP_GREY: u8 = 128;
/// Refuse to build an image with more pixels than this.
const MAX_PIXELS: usize = 1 << 28;

const FONT: &str = "sans-serif";
// plotters' ab_glyph backend places each glyph at a whole pixel, so digits
// spaced by a fractional advance look unevenly spaced ("0.5 00"). DejaVu Sans
// digits advance 1303/2384 of the font size (and '.' and ' ' half that), so
// these sizes, k · 2384/1303 plus a hair, give whole-pixel digit advances
// (k = 14, 11, 9, 10).
const CAPTION_SIZE: f64 = 25.63;
const DESC_SIZE: f64 = 20.14;
const LABEL_SIZE: f64 = 16.48;
const LEGEND_SIZE: f64 = 18.31;
/// Most tick labels per axis.
const MAX_TICKS: usize = 10;

/// Colours for successive series (matplotlib's "tab10").
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];
const NORMAL_COLOUR: RGBColor = PALETTE[0];
const ANOMALY_COLOUR: RGBColor = PALETTE[1];
const CUTOFF_COLOUR: RGBColor = RGBColor(214, 39, 40);
const GRID_COLOUR: RGBColor = RGBColor(225, 225, 225);

/// Registers the embedded font with plotters exactly once.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok());
    if ok {
        Ok(())
    } else {
        bail!("the embedded DejaVu Sans font could not be loaded")
    }
}

/// Encodes 8-bit pixels (`Grayscale` or `Rgb`) as PNG.
fn encode_png(pixels: &[u8], width: u32, height: u32, colour: png::ColorType) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(colour);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().context("PNG encoding failed")?;
        w.write_image_data(pixels).context("PNG encoding failed")?;
        w.finish().context("PNG encoding failed")?;
    }
    Ok(out)
}

/// Draws a chart of [`CHART_SIZE`] with `draw` and writes it to `path` as PNG.
fn render_chart<F>(path: &Path, draw: F) -> Result<()>
where
    F: FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
{
    ensure_font()?;
    let (w, h) = CHART_SIZE;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(&root).with_context(|| format!("cannot draw {}", path.display()))?;
        root.present().map_err(plot_err)?;
    }
    let png = encode_png(&buf, w, h, png::ColorType::Rgb)?;
    write_atomic(path, &png)
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e}")
}

/// `(min, max)` of the finite values, or `None` if there are none.
fn finite_range<'a>(values: impl IntoIterator<Item = &'a f64>) -> Option<(f64, f64)> {
    values
        .into_iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// Widens `(lo, hi)` by `frac` of its width on each side (by 1 if it is empty).
fn pad_range((lo, hi): (f64, f64), frac: f64) -> (f64, f64) {
    let pad = if hi > lo { (hi - lo) * frac } else { 1.0 };
    (lo - pad, hi + pad)
}

/// Splits a series into runs of finite points, so NaNs make gaps in a line.
fn finite_runs(points: impl IntoIterator<Item = (f64, f64)>) -> Vec<Vec<(f64, f64)>> {
    let mut runs = vec![Vec::new()];
    for (x, y) in points {
        if x.is_finite() && y.is_finite() {
            runs.last_mut().expect("never empty").push((x, y));
        } else if !runs.last().expect("never empty").is_empty() {
            runs.push(Vec::new());
        }
    }
    runs.retain(|r| !r.is_empty());
    runs
}

/// Short, readable number for a legend: 1 decimal from 10 up, else 2 or 3.
fn fmt_num(v: f64) -> String {
    if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A tick-label formatter for an axis over `lo..hi` with at most `max_ticks`
/// ticks: plotters puts ticks every 1, 2 or 5 × 10^k (the smallest such step
/// giving at most `max_ticks` ticks), so every label gets the decimals that
/// step needs, no more ("100", "0.025").
fn tick_formatter(lo: f64, hi: f64, max_ticks: usize) -> impl Fn(&f64) -> String {
    let mut step = f64::NAN;
    if hi > lo && max_ticks > 0 {
        let mut exp = (hi - lo).log10().floor() as i32 - 3;
        'search: while exp < 400 {
            for m in [1.0, 2.0, 5.0] {
                let s = m * 10f64.powi(exp);
                if (hi / s).floor() - (lo / s).ceil() + 1.0 <= max_ticks as f64 {
                    step = s;
                    break 'search;
                }
            }
            exp += 1;
        }
    }
    let decimals = if step.is_finite() {
        (-step.log10().floor()).clamp(0.0, 12.0) as usize
    } else {
        3
    };
    move |v: &f64| {
        let v = if step.is_finite() && v.abs() < step * 1e-6 {
            0.0
        } else {
            *v
        };
        format!("{v:.decimals$}")
    }
}

/// One curve of [`plot_roc`].
pub struct RocSeries<'a> {
    /// Legend text; the AUROC is appended.
    pub label: &'a str,
    pub roc: &'a Roc,
    pub auroc: f64,
}

/// Writes ROC curves to `path` as an 800×600 PNG: one line per series (the
/// legend shows its label and AUROC), the chance diagonal dashed in grey,
/// both axes from 0 to 1.
///
/// Errors if `curves` is empty or a curve's `fpr` and `tpr` differ in length.
pub fn plot_roc(path: &Path, title: &str, curves: &[RocSeries]) -> Result<()> {
    if curves.is_empty() {
        bail!("no ROC curve to plot");
    }
    for c in curves {
        if c.roc.fpr.len() != c.roc.tpr.len() {
            bail!(
                "ROC curve '{}' has {} FPR but {} TPR values",
                c.label,
                c.roc.fpr.len(),
                c.roc.tpr.len()
            );
        }
    }
    render_chart(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, CAPTION_SIZE))
            .margin(20)
            .x_label_area_size(55)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("False positive rate")
            .y_desc("True positive rate")
            .x_labels(11)
            .y_labels(11)
            .x_label_formatter(&|v| format!("{v:.1}"))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .label_style((FONT, LABEL_SIZE))
            .axis_desc_style((FONT, DESC_SIZE))
            .bold_line_style(GRID_COLOUR)
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(plot_err)?;
        let grey = RGBColor(140, 140, 140);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, 0.0), (1.0, 1.0)],
                8,
                6,
                grey.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label("chance (AUROC 0.500)")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], grey.stroke_width(2))
            });
        for (i, c) in curves.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let runs = finite_runs(c.roc.fpr.iter().copied().zip(c.roc.tpr.iter().copied()));
            for (k, run) in runs.into_iter().enumerate() {
                let series = chart
                    .draw_series(LineSeries::new(run, colour.stroke_width(3)))
                    .map_err(plot_err)?;
                if k == 0 {
                    series
                        .label(format!("{} (AUROC {:.3})", c.label, c.auroc))
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(3))
                        });
                }
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT, LEGEND_SIZE))
            .legend_area_size(34)
            .margin(12)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        Ok(())
    })
}

/// Writes the training curve to `path` as an 800×600 PNG: the average −ELBO
/// (loss, nats per image) per epoch, x = epoch 1..n, for the training set and,
/// if `anomaly_loss` is not empty, for the anomaly set, plus an optional
/// horizontal cutoff line (labelled with its value).
///
/// Errors if `train_loss` is empty, if `anomaly_loss` is neither empty nor as
/// long as `train_loss`, or if no value is finite.
pub fn plot_elbo(
    path: &Path,
    train_loss: &[f64],
    anomaly_loss: &[f64],
    cutoff: Option<f64>,
) -> Result<()> {
    if train_loss.is_empty() {
        bail!("no training loss to plot");
    }
    if !anomaly_loss.is_empty() && anomaly_loss.len() != train_loss.len() {
        bail!(
            "{} training losses but {} anomaly losses (one per epoch each expected)",
            train_loss.len(),
            anomaly_loss.len()
        );
    }
    let cutoff = cutoff.filter(|c| c.is_finite());
    let Some(range) = finite_range(train_loss.iter().chain(anomaly_loss).chain(&cutoff)) else {
        bail!("no finite loss to plot");
    };
    let (y_lo, y_hi) = pad_range(range, 0.08);
    let n = train_loss.len();
    let x_hi = (n as f64).max(2.0);
    let x_pad = (x_hi - 1.0) * 0.02;
    let title = if anomaly_loss.is_empty() {
        "Average −ELBO per epoch (training set)"
    } else {
        "Average −ELBO per epoch: training set vs anomaly set"
    };
    let y_fmt = tick_formatter(y_lo, y_hi, MAX_TICKS);
    render_chart(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, CAPTION_SIZE))
            .margin(20)
            .x_label_area_size(55)
            .y_label_area_size(80)
            .build_cartesian_2d((1.0 - x_pad)..(x_hi + x_pad), y_lo..y_hi)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("−ELBO (nats per image)")
            .x_labels(n.clamp(2, 12))
            .x_label_formatter(&|v| {
                if (v - v.round()).abs() < 1e-9 {
                    format!("{v:.0}")
                } else {
                    String::new()
                }
            })
            .y_labels(MAX_TICKS)
            .y_label_formatter(&y_fmt)
            .label_style((FONT, LABEL_SIZE))
            .axis_desc_style((FONT, DESC_SIZE))
            .bold_line_style(GRID_COLOUR)
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(plot_err)?;
        let sets = [
            ("training set", train_loss, NORMAL_COLOUR),
            ("anomaly set", anomaly_loss, ANOMALY_COLOUR),
        ];
        for (label, losses, colour) in sets {
            if losses.is_empty() {
                continue;
            }
            let pts = losses.iter().enumerate().map(|(i, &l)| ((i + 1) as f64, l));
            for (k, run) in finite_runs(pts).into_iter().enumerate() {
                if n <= 60 {
                    chart
                        .draw_series(run.iter().map(|&p| Circle::new(p, 4, colour.filled())))
                        .map_err(plot_err)?;
                }
                let series = chart
                    .draw_series(LineSeries::new(run, colour.stroke_width(3)))
                    .map_err(plot_err)?;
                if k == 0 {
                    series.label(label).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(3))
                    });
                }
            }
        }
        if let Some(c) = cutoff {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(1.0 - x_pad, c), (x_hi + x_pad, c)],
                    10,
                    6,
                    CUTOFF_COLOUR.stroke_width(2),
                ))
                .map_err(plot_err)?
                .label(format!("cutoff {} nats", fmt_num(c)))
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], CUTOFF_COLOUR.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, LEGEND_SIZE))
            .legend_area_size(34)
            .margin(12)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        Ok(())
    })
}

/// Shared-bin histogram of one set: `(counts, finite values, non-finite values)`.
fn bin_counts(values: &[f64], lo: f64, width: f64, bins: usize) -> (Vec<usize>, usize, usize) {
    let mut counts = vec![0usize; bins];
    let mut finite = 0;
    for &v in values {
        if v.is_finite() {
            let i = (((v - lo) / width).floor().max(0.0) as usize).min(bins - 1);
            counts[i] += 1;
            finite += 1;
        }
    }
    (counts, finite, values.len() - finite)
}

/// Writes a histogram of the scores of `normal` and `anomaly` to `path` as an
/// 800×600 PNG: two overlaid semi-transparent histograms on shared bins,
/// normalised to densities (area 1 each) so sets of different sizes compare,
/// an optional vertical cutoff line, and a legend with the counts. The x axis
/// is "score (−ELBO, nats)".
///
/// Errors if neither set has a finite score. One set may be empty.
pub fn plot_score_hist(
    path: &Path,
    title: &str,
    normal: &[f64],
    anomaly: &[f64],
    cutoff: Option<f64>,
) -> Result<()> {
    let Some((lo, hi)) = finite_range(normal.iter().chain(anomaly)) else {
        bail!("no finite score to plot");
    };
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 0.5, hi + 0.5)
    };
    let n_finite = normal
        .iter()
        .chain(anomaly)
        .filter(|v| v.is_finite())
        .count();
    // Rice rule, clamped to a readable number of bars.
    let bins = ((2.0 * (n_finite as f64).cbrt()).ceil() as usize).clamp(10, 80);
    let width = (hi - lo) / bins as f64;
    let cutoff = cutoff.filter(|c| c.is_finite());
    let (x_lo, x_hi) = pad_range(
        (lo.min(cutoff.unwrap_or(lo)), hi.max(cutoff.unwrap_or(hi))),
        0.03,
    );

    struct Set {
        label: String,
        density: Vec<f64>,
        colour: RGBColor,
        empty: bool,
    }
    let mut sets = Vec::new();
    for (name, values, colour) in [
        ("normal", normal, NORMAL_COLOUR),
        ("anomaly", anomaly, ANOMALY_COLOUR),
    ] {
        let (counts, finite, bad) = bin_counts(values, lo, width, bins);
        let label = if bad > 0 {
            format!("{name} (n = {finite}; {bad} non-finite not shown)")
        } else {
            format!("{name} (n = {finite})")
        };
        let density = counts
            .iter()
            .map(|&c| {
                if finite > 0 {
                    c as f64 / (finite as f64 * width)
                } else {
                    0.0
                }
            })
            .collect();
        sets.push(Set {
            label,
            density,
            colour,
            empty: finite == 0,
        });
    }
    let y_max = sets
        .iter()
        .flat_map(|s| s.density.iter().copied())
        .fold(0.0, f64::max);
    // Headroom for the legend.
    let y_hi = if y_max > 0.0 { y_max * 1.3 } else { 1.0 };

    let x_fmt = tick_formatter(x_lo, x_hi, MAX_TICKS);
    let y_fmt = tick_formatter(0.0, y_hi, MAX_TICKS);
    render_chart(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, CAPTION_SIZE))
            .margin(20)
            .x_label_area_size(55)
            .y_label_area_size(80)
            .build_cartesian_2d(x_lo..x_hi, 0f64..y_hi)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("score (−ELBO, nats)")
            .y_desc("density")
            .x_labels(MAX_TICKS)
            .y_labels(MAX_TICKS)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .label_style((FONT, LABEL_SIZE))
            .axis_desc_style((FONT, DESC_SIZE))
            .bold_line_style(GRID_COLOUR)
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(plot_err)?;
        for s in &sets {
            let colour = s.colour;
            let bars = s
                .density
                .iter()
                .enumerate()
                .filter(|(_, d)| **d > 0.0)
                .map(|(i, &d)| {
                    let x0 = lo + i as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width, d)], colour.mix(0.4).filled())
                });
            chart
                .draw_series(bars)
                .map_err(plot_err)?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 7), (x + 22, y + 7)], colour.mix(0.55).filled())
                });
            if s.empty {
                continue;
            }
            // Solid outline of the histogram as a step line.
            let mut outline = vec![(lo, 0.0)];
            for (i, &d) in s.density.iter().enumerate() {
                let x0 = lo + i as f64 * width;
                outline.push((x0, d));
                outline.push((x0 + width, d));
            }
            outline.push((hi, 0.0));
            chart
                .draw_series(LineSeries::new(outline, colour.stroke_width(2)))
                .map_err(plot_err)?;
        }
        if let Some(c) = cutoff {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(c, 0.0), (c, y_hi)],
                    10,
                    6,
                    CUTOFF_COLOUR.stroke_width(2),
                ))
                .map_err(plot_err)?
                .label(format!("cutoff {} nats", fmt_num(c)))
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 22, y)], CUTOFF_COLOUR.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, LEGEND_SIZE))
            .legend_area_size(34)
            .margin(12)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        Ok(())
    })
}

/// Builds the grey pixels of an image grid: `(pixels, width, height)`.
fn image_grid_pixels<R, I>(rows: &[R], scale: u32) -> Result<(Vec<u8>, usize, usize)>
where
    R: AsRef<[I]>,
    I: AsRef<[f32]>,
{
    if scale == 0 {
        bail!("image grid scale must be at least 1");
    }
    let cols = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
    if cols == 0 {
        bail!("image grid has no image");
    }
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.as_ref().iter().enumerate() {
            let len = img.as_ref().len();
            if len != PIXELS {
                bail!("image at row {r}, column {c} has {len} values, expected {PIXELS} (28×28)");
            }
        }
    }
    let cell = SIDE * scale as usize;
    let dims = |n: usize| n.checked_mul(cell + SEP).and_then(|v| v.checked_add(SEP));
    let (width, height) = match (dims(cols), dims(rows.len())) {
        (Some(w), Some(h)) if w.checked_mul(h).is_some_and(|p| p <= MAX_PIXELS) => (w, h),
        _ => bail!(
            "image grid of {} × {cols} images at scale {scale} is too large",
            rows.len()
        ),
    };
    let mut pixels = vec![SEP_GREY; width * height];
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.as_ref().iter().enumerate() {
            let img = img.as_ref();
            let (x0, y0) = (SEP + c * (cell + SEP), SEP + r * (cell + SEP));
            for y in 0..cell {
                let line = &mut pixels[(y0 + y) * width + x0..][..cell];
                for (x, px) in line.iter_mut().enumerate() {
                    *px = grey_level(img[(y / scale as usize) * SIDE + x / scale as usize]);
                }
            }
        }
    }
    Ok((pixels, width, height))
}

/// Maps an intensity in [0, 1] to 0..=255 (clamped; NaN → 0).
fn grey_level(v: f32) -> u8 {
    if v.is_nan() {
        0
    } else {
        (v.clamp(0.0, 1.0) * 255.0).round() as u8
    }
}

/// Writes a grid of 28×28 grey images to `path` as an 8-bit greyscale PNG.
///
/// `rows[r][c]` is the image in row `r`, column `c`: 784 intensities in
/// [0, 1], row-major (values outside are clamped, NaN shows black). Any
/// nesting that derefs to slices works, e.g. `&[Vec<[f32; 784]>]` or
/// `&[&[&[f32]]]`. Each image is upscaled `scale` times (nearest neighbour);
/// images are separated and framed by 2-pixel mid-grey lines; rows shorter
/// than the longest leave grey cells. The PNG is
/// `cols·(28·scale + 2) + 2` wide and `rows·(28·scale + 2) + 2` high.
///
/// Errors (never panics) if an image is not 784 values long, there is no
/// image, `scale` is 0, or the result would be absurdly large.
pub fn write_image_grid<R, I>(path: &Path, rows: &[R], scale: u32) -> Result<()>
where
    R: AsRef<[I]>,
    I: AsRef<[f32]>,
{
    let (pixels, w, h) = image_grid_pixels(rows, scale)?;
    let png = encode_png(&pixels, w as u32, h as u32, png::ColorType::Grayscale)?;
    write_atomic(path, &png)
}

/// Writes inputs (top row) over their reconstructions (bottom row) as a
/// greyscale PNG grid, see [`write_image_grid`]. Typically 8 of each.
///
/// Errors if there are no inputs or `inputs` and `recons` differ in number,
/// besides the errors of [`write_image_grid`].
pub fn write_recon_grid(
    path: &Path,
    inputs: &[&[f32]],
    recons: &[&[f32]],
    scale: u32,
) -> Result<()> {
    if inputs.is_empty() {
        bail!("no input image for the reconstruction grid");
    }
    if inputs.len() != recons.len() {
        bail!(
            "{} inputs but {} reconstructions for the reconstruction grid",
            inputs.len(),
            recons.len()
        );
    }
    write_image_grid(path, &[inputs, recons], scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{auroc, roc_curve};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Decodes a PNG file: `(pixels, width, height, colour type)`.
    fn decode(path: &Path) -> (Vec<u8>, u32, u32, png::ColorType) {
        let bytes = std::fs::read(path).unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (buf, info.width, info.height, info.color_type)
    }

    /// Asserts an 800×600 RGB chart with more than a handful of colours.
    fn assert_chart(path: &Path) {
        let (px, w, h, ct) = decode(path);
        assert_eq!((w, h), CHART_SIZE);
        assert_eq!(ct, png::ColorType::Rgb);
        let mut colours: Vec<&[u8]> = px.chunks(3).collect();
        colours.sort_unstable();
        colours.dedup();
        assert!(colours.len() > 10, "only {} colours", colours.len());
        // Anti-aliased text leaves many grey levels, a sign the font rendered.
        let greys = colours
            .iter()
            .filter(|c| c[0] == c[1] && c[1] == c[2])
            .count();
        assert!(greys > 20, "only {greys} grey levels: text missing?");
        assert!(!crate::fsutil::temp_path(path).exists());
    }

    /// Normal-ish scores around `mean`.
    fn scores(rng: &mut StdRng, n: usize, mean: f64, sd: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let s: f64 = (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0;
                mean + sd * s
            })
            .collect()
    }

    /// A 28×28 "digit": a ring.
    fn ring(r0: f32) -> Vec<f32> {
        (0..PIXELS)
            .map(|i| {
                let (x, y) = ((i % SIDE) as f32 - 13.5, (i / SIDE) as f32 - 13.5);
                let d = (x * x + y * y).sqrt();
                (1.0 - (d - r0).abs() / 2.5).clamp(0.0, 1.0)
            })
            .collect()
    }

    /// The folder for the example charts: $VAE_OOD_PLOT_DIR, or a temp dir.
    fn out_dir() -> (Option<tempfile::TempDir>, std::path::PathBuf) {
        match std::env::var_os("VAE_OOD_PLOT_DIR") {
            Some(d) => (None, d.into()),
            None => {
                let t = tempfile::tempdir().unwrap();
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        }
    }

    #[test]
    fn roc_chart() {
        let (_keep, dir) = out_dir();
        let mut rng = StdRng::seed_from_u64(1);
        let normal = scores(&mut rng, 2000, 100.0, 15.0);
        let close = scores(&mut rng, 300, 120.0, 20.0);
        let far = scores(&mut rng, 300, 180.0, 30.0);
        let (r1, r2) = (roc_curve(&normal, &close), roc_curve(&normal, &far));
        let p = dir.join("roc.png");
        plot_roc(
            &p,
            "ROC: held-out digit 1 vs Fashion-MNIST",
            &[
                RocSeries {
                    label: "digit 1",
                    roc: &r1,
                    auroc: auroc(&normal, &close),
                },
                RocSeries {
                    label: "Fashion-MNIST",
                    roc: &r2,
                    auroc: auroc(&normal, &far),
                },
            ],
        )
        .unwrap();
        assert_chart(&p);
        assert!(plot_roc(&dir.join("none.png"), "x", &[]).is_err());
        let bad = Roc {
            fpr: vec![0.0, 1.0],
            tpr: vec![0.0],
            thresholds: vec![1.0, 0.0],
        };
        let e = plot_roc(
            &dir.join("bad.png"),
            "x",
            &[RocSeries {
                label: "bad",
                roc: &bad,
                auroc: 0.5,
            }],
        );
        assert!(e.is_err());
        assert!(!dir.join("bad.png").exists());
    }

    #[test]
    fn elbo_chart() {
        let (_keep, dir) = out_dir();
        let train: Vec<f64> = (1..=30).map(|e| 95.0 + 120.0 / e as f64).collect();
        let anomaly: Vec<f64> = (1..=30).map(|e| 150.0 + 140.0 / e as f64).collect();
        let p = dir.join("elbo.png");
        plot_elbo(&p, &train, &anomaly, Some(131.7)).unwrap();
        assert_chart(&p);
        // One epoch, no anomaly set, a NaN and no cutoff: still fine.
        let p1 = dir.join("elbo_one.png");
        plot_elbo(&p1, &[210.0], &[], None).unwrap();
        assert_chart(&p1);
        plot_elbo(&p1, &[210.0, f64::NAN, 150.0], &[], Some(f64::NAN)).unwrap();
        assert!(plot_elbo(&p1, &[], &[], None).is_err());
        assert!(plot_elbo(&p1, &[1.0, 2.0], &[1.0], None).is_err());
        assert!(plot_elbo(&p1, &[f64::NAN], &[], None).is_err());
    }

    #[test]
    fn score_histogram() {
        let (_keep, dir) = out_dir();
        let mut rng = StdRng::seed_from_u64(2);
        let normal = scores(&mut rng, 9000, 100.0, 15.0);
        let mut anomaly = scores(&mut rng, 1000, 150.0, 25.0);
        anomaly.push(f64::NAN);
        let p = dir.join("hist.png");
        plot_score_hist(
            &p,
            "Scores on the test set: normal digits vs held-out digit 1",
            &normal,
            &anomaly,
            Some(131.7),
        )
        .unwrap();
        assert_chart(&p);
        // All-equal scores, an empty set, a cutoff far outside the data.
        let p2 = dir.join("hist_flat.png");
        plot_score_hist(&p2, "flat", &[5.0; 10], &[], Some(50.0)).unwrap();
        assert_chart(&p2);
        assert!(plot_score_hist(&p2, "x", &[], &[], None).is_err());
        assert!(plot_score_hist(&p2, "x", &[f64::NAN], &[f64::INFINITY], None).is_err());
    }

    #[test]
    fn image_grid_layout_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = [0.0f32; PIXELS];
        a[3 * SIDE + 5] = 0.5; // row 3, column 5 → 128 (0.5·255 = 127.5 rounds up)
        a[27 * SIDE + 27] = 1.0;
        let mut b = [0.25f32; PIXELS];
        b[0] = 2.0; // clamped to 255
        b[1] = f32::NAN; // black
        let rows = vec![vec![a, b], vec![b]];
        let scale = 3;
        let p = dir.path().join("grid.png");
        write_image_grid(&p, &rows, scale).unwrap();
        let (px, w, h, ct) = decode(&p);
        assert_eq!(ct, png::ColorType::Grayscale);
        let cell = 28 * scale as usize;
        assert_eq!(
            (w as usize, h as usize),
            (2 * (cell + 2) + 2, 2 * (cell + 2) + 2)
        );
        let at = |x: usize, y: usize| px[y * w as usize + x];
        // Image (0,0) starts at (2,2); its pixel (x=5,y=3) covers 3×3 output pixels.
        for dy in 0..3 {
            for dx in 0..3 {
                assert_eq!(at(2 + 15 + dx, 2 + 9 + dy), 128);
            }
        }
        assert_eq!(at(2 + 14, 2 + 9), 0);
        assert_eq!(at(2 + cell - 1, 2 + cell - 1), 255);
        // Image (0,1) starts at x = 2 + cell + 2.
        let x1 = 2 + cell + 2;
        assert_eq!(at(x1, 2), 255);
        assert_eq!(at(x1 + 3, 2), 0);
        assert_eq!(at(x1 + 6, 2), 64); // 0.25·255 = 63.75
                                       // Separators, frame and the empty cell (row 1, column 1) are grey.
        assert_eq!(at(0, 0), SEP_GREY);
        assert_eq!(at(2 + cell, 40), SEP_GREY);
        assert_eq!(at(2 + cell + 1, 40), SEP_GREY);
        assert_eq!(at(40, 2 + cell), SEP_GREY);
        assert_eq!(at(x1 + 10, 2 + cell + 2 + 10), SEP_GREY);
        // Row 1 column 0 is image b.
        assert_eq!(at(2 + 10, 2 + cell + 2 + 10), 64);
        let distinct: std::collections::BTreeSet<u8> = px.iter().copied().collect();
        assert!(distinct.len() > 1);
    }

    #[test]
    fn image_grid_accepts_slices_and_rejects_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.png");
        let img = vec![0.5f32; PIXELS];
        let short = vec![0.5f32; 783];
        let row: Vec<&[f32]> = vec![&img, &img];
        write_image_grid(&p, &[row.as_slice()], 1).unwrap();
        let (_, w, h, _) = decode(&p);
        assert_eq!((w, h), (2 * 30 + 2, 32));
        let bad: Vec<&[f32]> = vec![&img, &short];
        let e = write_image_grid(&p, &[bad.as_slice()], 1).unwrap_err();
        assert!(e.to_string().contains("783"), "{e}");
        assert!(write_image_grid(&p, &[row.as_slice()], 0).is_err());
        let empty: [&[&[f32]]; 0] = [];
        assert!(write_image_grid(&p, &empty, 1).is_err());
        assert!(write_image_grid(&p, &[row.as_slice()], u32::MAX).is_err());
    }

    #[test]
    fn recon_grid() {
        let (_keep, dir) = out_dir();
        let inputs: Vec<Vec<f32>> = (0..8).map(|i| ring(4.0 + i as f32)).collect();
        let recons: Vec<Vec<f32>> = inputs
            .iter()
            .map(|v| v.iter().map(|x| 0.8 * x + 0.05).collect())
            .collect();
        let ins: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
        let outs: Vec<&[f32]> = recons.iter().map(|v| v.as_slice()).collect();
        let p = dir.join("recon.png");
        write_recon_grid(&p, &ins, &outs, 4).unwrap();
        let (px, w, h, _) = decode(&p);
        let cell = 28 * 4;
        assert_eq!(
            (w as usize, h as usize),
            (8 * (cell + 2) + 2, 2 * (cell + 2) + 2)
        );
        // Reconstruction of image 3, pixel (x=13, y=0) in the bottom row.
        let v = recons[3][13];
        let (x, y) = (2 + 3 * (cell + 2) + 13 * 4, 2 + cell + 2);
        assert_eq!(px[y * w as usize + x], grey_level(v));
        assert!(write_recon_grid(&p, &ins, &outs[..7], 4).is_err());
        assert!(write_recon_grid(&p, &[], &[], 4).is_err());
    }
}
