//! Using a saved checkpoint without training: `vae-ood eval` (score the MNIST
//! splits again, both protocols, metrics and plots) and `vae-ood score` (score
//! arbitrary 28x28 images).
//!
//! The layer sizes always come from the checkpoint's tensors. The rest of the
//! configuration (data folder, held-out digit, seed, training-image limit,
//! scoring batch) comes from the `vae_ood.config` JSON that training stores in
//! the checkpoint's header, where present, else from [`TrainConfig::default`];
//! every value can be overridden. With nothing overridden, `eval` rebuilds the
//! exact splits and ε streams of the training run, so on the same backend its
//! `scores.csv` equals the one training wrote.
//!
//! Nothing is written until everything has been loaded and scored, and every
//! file is written atomically, so a bad input never damages an output folder.

use crate::backend::DeviceChoice;
use crate::checkpoint::{self, Checkpoint};
use crate::dataset::{Split, Splits, PIXELS};
use crate::fsutil::write_atomic;
use crate::metrics::roc_curve;
use crate::plot;
use crate::report::{score_all, write_scores_csv, Protocols};
use crate::train::{Experiment, SplitId, TrainConfig};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Metadata key under which training stores its [`TrainConfig`] as JSON.
pub const CONFIG_KEY: &str = "vae_ood.config";

/// The label given to images of unknown class (the `score` inputs).
pub const UNKNOWN_LABEL: u8 = 255;

/// A checkpoint read for inference, with the configuration it was trained with.
pub struct LoadedModel {
    pub checkpoint: Checkpoint,
    /// The stored training configuration with `hidden` and `latent` set from the
    /// tensors, or the defaults (with those sizes) if none was stored.
    pub config: TrainConfig,
    /// Whether `config` came from the checkpoint (false: defaults).
    pub config_stored: bool,
}

/// Read a checkpoint for a 784-pixel model. `hidden` / `latent`, when given,
/// must match the checkpoint's sizes (else a one-line error naming both).
pub fn load_model(
    path: &Path,
    hidden: Option<usize>,
    latent: Option<usize>,
    quiet: bool,
) -> Result<LoadedModel> {
    let ck = checkpoint::load(path, None)?;
    let d = ck.layout.dims;
    let name = path.display();
    if d.d != PIXELS {
        bail!(
            "{name}: checkpoint is for {}-pixel inputs ({}-{}-{} model), but vae-ood scores 28x28 = {PIXELS}-pixel images",
            d.d,
            d.d,
            d.h,
            d.l
        );
    }
    for (flag, want, got) in [("--hidden", hidden, d.h), ("--latent", latent, d.l)] {
        if let Some(w) = want {
            if w != got {
                bail!(
                    "{name}: checkpoint is for a {}-{}-{} model, but {flag} {w} was asked for",
                    d.d,
                    d.h,
                    d.l
                );
            }
        }
    }
    let stored = match ck.metadata.get(CONFIG_KEY) {
        Some(json) => match serde_json::from_str::<TrainConfig>(json) {
            Ok(c) => Some(c),
            Err(e) => {
                if !quiet {
                    eprintln!("note: {name}: ignoring unreadable {CONFIG_KEY} metadata ({e}); using the defaults");
                }
                None
            }
        },
        None => None,
    };
    let config_stored = stored.is_some();
    let mut config = stored.unwrap_or_default();
    config.hidden = d.h;
    config.latent = d.l;
    config.epochs = config.epochs.max(1);
    Ok(LoadedModel {
        checkpoint: ck,
        config,
        config_stored,
    })
}

/// What `vae-ood eval` needs; `None` means "as stored in the checkpoint".
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub checkpoint: PathBuf,
    pub data: Option<PathBuf>,
    pub holdout_digit: Option<u8>,
    pub seed: Option<u64>,
    pub score_batch: Option<usize>,
    pub train_limit: Option<usize>,
    /// Score every training image, ignoring a stored training-image limit.
    pub full_train: bool,
    pub hidden: Option<usize>,
    pub latent: Option<usize>,
    pub device: DeviceChoice,
    pub out: PathBuf,
    pub quiet: bool,
}

#[derive(Serialize)]
struct EvalMetricsFile<'a> {
    /// always "eval": these metrics come from a saved checkpoint, not a training run
    mode: &'static str,
    checkpoint: String,
    /// "checkpoint" if the configuration was stored in the checkpoint, else "defaults"
    config_source: &'static str,
    config: &'a TrainConfig,
    backend: String,
    device: &'a str,
    protocols: &'a Protocols,
    timing: EvalTiming,
}

#[derive(Serialize, Clone, Copy)]
struct EvalTiming {
    setup_seconds: f64,
    score_seconds: f64,
    score_samples_per_second: f64,
}

/// The configuration `eval` runs with: the checkpoint's, overridden by `o`.
fn eval_config(m: &LoadedModel, o: &EvalOptions) -> TrainConfig {
    let mut cfg = m.config.clone();
    if let Some(d) = &o.data {
        cfg.data_dir = d.clone();
    }
    if let Some(h) = o.holdout_digit {
        cfg.holdout_digit = h;
    }
    if let Some(s) = o.seed {
        cfg.seed = s;
    }
    if let Some(b) = o.score_batch {
        cfg.score_batch = b;
    }
    if o.full_train {
        cfg.train_limit = None;
    }
    if o.train_limit.is_some() {
        cfg.train_limit = o.train_limit;
    }
    cfg
}

/// `vae-ood eval`: score the three splits with a saved checkpoint, print both
/// protocols' AUROC, and write metrics.json, scores.csv, roc.png,
/// score_hist.png, recon_normal.png and recon_anomaly.png into `o.out`.
pub fn eval(o: &EvalOptions) -> Result<()> {
    let t0 = Instant::now();
    let model = load_model(&o.checkpoint, o.hidden, o.latent, o.quiet)?;
    let cfg = eval_config(&model, o);
    let mut ex = Experiment::new(cfg.clone(), o.device, o.quiet)?;
    ex.set_params(&model.checkpoint.params)?;
    let say = |s: String| {
        if !o.quiet {
            println!("{s}");
        }
    };
    say(format!(
        "vae-ood eval: {} | checkpoint {} ({}-{}-{} VAE, config {}) | train {} images (digit {} held out), test {} normal + {} anomalies",
        ex.backend.describe(),
        o.checkpoint.display(),
        cfg.dims().d,
        cfg.hidden,
        cfg.latent,
        if model.config_stored { "from the checkpoint" } else { "defaults" },
        ex.splits.train.len(),
        cfg.holdout_digit,
        ex.splits.test_normal.len(),
        ex.splits.test_anomaly.len(),
    ));
    let setup = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let scores = score_all(&mut ex, o.quiet)?;
    let score_seconds = t1.elapsed().as_secs_f64();
    let protocols = Protocols::from_scores(&scores)?;
    for line in protocols.summary(cfg.holdout_digit) {
        say(line);
    }

    let out = &o.out;
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output folder {}", out.display()))?;
    write_scores_csv(&out.join("scores.csv"), &ex, &scores)?;
    let n_scored: usize = scores.values().map(|v| v.len()).sum();
    let backend = ex.backend.describe();
    let mf = EvalMetricsFile {
        mode: "eval",
        checkpoint: o.checkpoint.display().to_string(),
        config_source: if model.config_stored {
            "checkpoint"
        } else {
            "defaults"
        },
        config: &cfg,
        backend,
        device: ex.backend.kind(),
        protocols: &protocols,
        timing: EvalTiming {
            setup_seconds: setup,
            score_seconds,
            score_samples_per_second: n_scored as f64 / score_seconds.max(1e-9),
        },
    };
    write_atomic(
        &out.join("metrics.json"),
        serde_json::to_string_pretty(&mf)?.as_bytes(),
    )?;
    write_eval_plots(out, &mut ex, &scores, &protocols)?;
    say(format!(
        "scored {} images in {:.2} s, total {:.2} s; wrote {}/{{metrics.json,scores.csv,roc.png,score_hist.png,recon_normal.png,recon_anomaly.png}}",
        n_scored,
        score_seconds,
        t0.elapsed().as_secs_f64(),
        out.display()
    ));
    Ok(())
}

/// The plots that need no training history: roc.png (both protocols),
/// score_hist.png (clean protocol, Youden cutoff), recon_normal.png and
/// recon_anomaly.png (8 test inputs over their reconstructions).
pub fn write_eval_plots(
    out: &Path,
    ex: &mut Experiment,
    scores: &HashMap<SplitId, Vec<f64>>,
    p: &Protocols,
) -> Result<()> {
    let anomaly = &scores[&SplitId::TestAnomaly];
    let roc_seed = roc_curve(&scores[&SplitId::Train], anomaly);
    let roc_clean = roc_curve(&scores[&SplitId::TestNormal], anomaly);
    let d = ex.cfg.holdout_digit;
    plot::plot_roc(
        &out.join("roc.png"),
        &format!("ROC: digit {d} as anomaly (score = −ELBO)"),
        &[
            plot::RocSeries {
                label: "clean: test normals vs test anomalies",
                roc: &roc_clean,
                auroc: p.clean.auroc,
            },
            plot::RocSeries {
                label: "seed: training images vs test anomalies",
                roc: &roc_seed,
                auroc: p.seed.auroc,
            },
        ],
    )?;
    plot::plot_score_hist(
        &out.join("score_hist.png"),
        &format!("−ELBO of test images: other digits vs digit {d}"),
        &scores[&SplitId::TestNormal],
        anomaly,
        Some(p.clean.youden_threshold),
    )?;
    for (s, file) in [
        (SplitId::TestNormal, "recon_normal.png"),
        (SplitId::TestAnomaly, "recon_anomaly.png"),
    ] {
        let n = ex.split(s).len().min(8);
        if n == 0 {
            continue;
        }
        let recon = ex.reconstruct(s, n)?;
        let inputs: Vec<Vec<f32>> = (0..n).map(|i| ex.split(s).to_f32(i)).collect();
        plot::write_image_grid(&out.join(file), &[inputs, recon], 4)?;
    }
    Ok(())
}

/// What `vae-ood score` needs.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    pub checkpoint: PathBuf,
    pub inputs: Vec<PathBuf>,
    pub out: PathBuf,
    pub seed: Option<u64>,
    pub hidden: Option<usize>,
    pub latent: Option<usize>,
    pub device: DeviceChoice,
    pub quiet: bool,
}

/// −ELBO of each image with the model in `model` (one z draw per image, the ε
/// stream of the training split: image `i` gets row `i`, so an image scored at
/// position `i` gets the same score it had at position `i` of the training
/// split of a run with the same seed).
pub fn score_images(
    model: &LoadedModel,
    images: &[(String, [u8; PIXELS])],
    seed: Option<u64>,
    device: DeviceChoice,
    quiet: bool,
) -> Result<Vec<f32>> {
    if images.is_empty() {
        bail!("no input images given");
    }
    let n = images.len();
    if u32::try_from(n).is_err() {
        bail!("too many input images ({n})");
    }
    let mut cfg = model.config.clone();
    if let Some(s) = seed {
        cfg.seed = s;
    }
    let empty = |name: &str| Split {
        name: name.to_string(),
        pixels: Vec::new(),
        labels: Vec::new(),
        source_index: Vec::new(),
    };
    let mut pixels = Vec::with_capacity(n * PIXELS);
    for (_, px) in images {
        pixels.extend_from_slice(px);
    }
    let splits = Splits {
        train: Split {
            name: "input".to_string(),
            pixels,
            labels: vec![UNKNOWN_LABEL; n],
            source_index: (0..n as u32).collect(),
        },
        test_normal: empty("test_normal"),
        test_anomaly: empty("test_anomaly"),
        holdout_digit: cfg.holdout_digit,
    };
    let mut ex = Experiment::with_splits(cfg, splits, device, quiet)?;
    ex.set_params(&model.checkpoint.params)?;
    ex.score(SplitId::Train)
}

/// `vae-ood score`: score PNGs / folders of PNGs / IDX image files and write
/// `name,score_neg_elbo` rows (input order) to `o.out`, atomically.
pub fn score(o: &ScoreOptions) -> Result<()> {
    let t0 = Instant::now();
    let model = load_model(&o.checkpoint, o.hidden, o.latent, o.quiet)?;
    let images = crate::images::collect_inputs(&o.inputs)?;
    let scores = score_images(&model, &images, o.seed, o.device, o.quiet)?;
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["name", "score_neg_elbo"])?;
    for ((name, _), s) in images.iter().zip(&scores) {
        w.write_record([name.clone(), format!("{}", *s as f64)])?;
    }
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("csv: {e}"))?;
    write_atomic(&o.out, &bytes)?;
    if !o.quiet {
        println!(
            "scored {} images with {} in {:.2} s; wrote {}",
            scores.len(),
            o.checkpoint.display(),
            t0.elapsed().as_secs_f64(),
            o.out.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Dims, Layout};

    fn write_ck(dir: &Path, dims: Dims, meta: HashMap<String, String>) -> PathBuf {
        let lay = Layout::new(dims);
        let p = dir.join("m.safetensors");
        checkpoint::save(&p, &lay, &lay.init(7), meta).unwrap();
        p
    }

    #[test]
    fn config_from_checkpoint_or_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let dims = Dims {
            d: PIXELS,
            h: 16,
            l: 3,
        };
        let p = write_ck(dir.path(), dims, HashMap::new());
        let m = load_model(&p, None, None, true).unwrap();
        assert!(!m.config_stored);
        assert_eq!(
            (
                m.config.hidden,
                m.config.latent,
                m.config.seed,
                m.config.holdout_digit
            ),
            (16, 3, 1, 5)
        );
        let e = load_model(&p, Some(400), None, true)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("784-16-3") && e.contains("--hidden 400"), "{e}");
        assert!(load_model(&p, Some(16), Some(3), true).is_ok());

        let cfg = TrainConfig {
            seed: 9,
            holdout_digit: 3,
            train_limit: Some(10),
            ..TrainConfig::default()
        };
        let meta = HashMap::from([(CONFIG_KEY.to_string(), serde_json::to_string(&cfg).unwrap())]);
        let p = write_ck(dir.path(), dims, meta);
        let m = load_model(&p, None, None, true).unwrap();
        assert!(m.config_stored);
        assert_eq!(
            (m.config.hidden, m.config.seed, m.config.holdout_digit),
            (16, 9, 3)
        );
        let mut o = EvalOptions {
            checkpoint: p.clone(),
            data: None,
            holdout_digit: Some(4),
            seed: None,
            score_batch: None,
            train_limit: None,
            full_train: false,
            hidden: None,
            latent: None,
            device: DeviceChoice::Cpu,
            out: dir.path().join("o"),
            quiet: true,
        };
        let c = eval_config(&m, &o);
        assert_eq!((c.holdout_digit, c.seed, c.train_limit), (4, 9, Some(10)));
        o.full_train = true;
        assert_eq!(eval_config(&m, &o).train_limit, None);

        // wrong input size
        let p = write_ck(dir.path(), Dims { d: 100, h: 8, l: 2 }, HashMap::new());
        let e = load_model(&p, None, None, true).err().unwrap().to_string();
        assert!(e.contains("100-pixel"), "{e}");
    }

    #[test]
    fn score_images_is_position_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_ck(
            dir.path(),
            Dims {
                d: PIXELS,
                h: 16,
                l: 3,
            },
            HashMap::new(),
        );
        let m = load_model(&p, None, None, true).unwrap();
        let imgs: Vec<(String, [u8; PIXELS])> = (0..5u8)
            .map(|i| (format!("i{i}"), [i * 40; PIXELS]))
            .collect();
        let a = score_images(&m, &imgs, None, DeviceChoice::Cpu, true).unwrap();
        let b = score_images(&m, &imgs, None, DeviceChoice::Cpu, true).unwrap();
        assert_eq!(a.len(), 5);
        assert_eq!(a, b);
        assert!(a.iter().all(|s| s.is_finite() && *s > 0.0));
        // a prefix scores the same (row i's ε does not depend on the batch)
        let c = score_images(&m, &imgs[..2], None, DeviceChoice::Cpu, true).unwrap();
        assert_eq!(&a[..2], &c[..]);
        assert!(score_images(&m, &[], None, DeviceChoice::Cpu, true).is_err());
    }
}
