//! A whole run as the user sees it: train with per-epoch lines like the seed's,
//! score every split, compute both protocols' metrics, and write `output/`.

use crate::backend::DeviceChoice;
use crate::fsutil::write_atomic;
use crate::metrics::{ood_metrics, OodMetrics};
use crate::plot;
use crate::train::{EpochPipeline, EpochStats, Experiment, SplitId, TrainConfig};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// Both evaluation protocols.
#[derive(Debug, Clone, Serialize)]
pub struct Protocols {
    /// the seed's: normals = the training images themselves (in-sample)
    pub seed: OodMetrics,
    /// normals = the test images of the other digits
    pub clean: OodMetrics,
}

impl Protocols {
    /// Both protocols from the −ELBO of every split.
    pub fn from_scores(scores: &HashMap<SplitId, Vec<f64>>) -> Result<Protocols> {
        let anomaly = &scores[&SplitId::TestAnomaly];
        Ok(Protocols {
            seed: ood_metrics(&scores[&SplitId::Train], anomaly).context("seed protocol")?,
            clean: ood_metrics(&scores[&SplitId::TestNormal], anomaly).context("clean protocol")?,
        })
    }

    /// The two lines a run prints.
    pub fn summary(&self, digit: u8) -> [String; 2] {
        let c = &self.clean;
        [
            format!("AUROC seed protocol  (training images vs test {digit}s): {:.4}", self.seed.auroc),
            format!(
                "AUROC clean protocol (test other digits vs test {digit}s): {:.4}   AUPR-in {:.4}  AUPR-out {:.4}  FPR@95%TPR {:.4}",
                c.auroc, c.aupr_in, c.aupr_out, c.fpr_at_95_tpr
            ),
        ]
    }
}

/// −ELBO of every image of every split, with a progress bar (images) on a terminal.
pub(crate) fn score_all(ex: &mut Experiment, quiet: bool) -> Result<HashMap<SplitId, Vec<f64>>> {
    let total: usize = SplitId::ALL.iter().map(|&s| ex.split(s).len()).sum();
    let bar = progress_bar(quiet, total as u64, "images scored");
    let mut out = HashMap::new();
    for s in SplitId::ALL {
        out.insert(s, to_f64(&ex.score(s)?));
        bar.inc(ex.split(s).len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

#[derive(Serialize)]
struct MetricsFile<'a> {
    config: &'a TrainConfig,
    backend: String,
    device: &'a str,
    epochs: &'a [EpochStats],
    protocols: &'a Protocols,
    timing: Timing,
}

#[derive(Serialize, Clone, Copy)]
struct Timing {
    setup_seconds: f64,
    train_seconds: f64,
    score_seconds: f64,
    train_samples_per_second: f64,
}

pub(crate) fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Train, evaluate and write every output file into `out`.
/// The resumable training state in the output folder.
pub const STATE_FILE: &str = "train_state.safetensors";

/// A progress bar on stderr; hidden when quiet or when stderr is not a terminal.
/// Print through `bar.suspend(|| println!(..))` so lines and bar don't mix.
pub(crate) fn progress_bar(quiet: bool, len: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(len)
    } else {
        // no terminal: print the lines, draw no bar
        indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::hidden())
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise}, eta {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}

/// Train (or, with `resume`, continue from `out/train_state.safetensors`), evaluate
/// and write every output file into `out`.
pub fn train_and_report(
    cfg: TrainConfig,
    device: DeviceChoice,
    out: &Path,
    quiet: bool,
    resume: bool,
) -> Result<()> {
    let t0 = Instant::now();
    let mut ex = Experiment::new(cfg.clone(), device, quiet)?;
    let say = |s: String| {
        if !quiet {
            println!("{s}");
        }
    };
    say(format!(
        "vae-ood: {} | train {} images (digit {} held out), test {} normal + {} anomalies | {}-{}-{} VAE",
        ex.backend.describe(),
        ex.splits.train.len(),
        cfg.holdout_digit,
        ex.splits.test_normal.len(),
        ex.splits.test_anomaly.len(),
        cfg.dims().d,
        cfg.hidden,
        cfg.latent
    ));
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output folder {}", out.display()))?;
    let setup = t0.elapsed().as_secs_f64();

    let state_path = out.join(STATE_FILE);
    let model_path = out.join("model.safetensors");
    let mut epochs = Vec::new();
    if resume {
        epochs = ex.load_state(&state_path)?;
        say(format!(
            "resumed from {} after epoch {}",
            state_path.display(),
            ex.epoch
        ));
        if ex.epoch >= cfg.epochs {
            say(format!(
                "(already trained {} of {} epochs)",
                ex.epoch, cfg.epochs
            ));
        }
    }

    let t1 = Instant::now();
    let bar = progress_bar(quiet, cfg.epochs as u64, "epochs");
    bar.set_position(ex.epoch as u64);
    // Epochs are pipelined: the next one is submitted before this one's results
    // (losses, parameters, Adam's moments: copies queued right behind it) are
    // read back, so the GPU does not idle while the host reads them, writes the
    // checkpoint and encodes the next epoch. After every epoch its state is
    // written on a writer thread: a crash, Ctrl-C or SIGKILL loses at most the
    // epochs in flight (two), and a diverged epoch never overwrites the last good
    // files.
    let mut writer: Option<std::thread::JoinHandle<Result<()>>> = None;
    let epochs_before = ex.epoch;
    let mut pipe = EpochPipeline::new(cfg.epochs, true);
    while let Some(done) = pipe.next(&mut ex) {
        let (st, state) = match done {
            Ok(done) => done,
            Err(e) => {
                if let Some(w) = writer.take() {
                    let _ = w.join();
                }
                let note = if ex.epoch == epochs_before && !resume {
                    "no checkpoint was written".to_string()
                } else {
                    format!(
                        "the last good checkpoint (epoch {}) is {}",
                        ex.epoch,
                        model_path.display()
                    )
                };
                bail!("{e:#}; {note}");
            }
        };
        bar.suspend(|| {
            say(format!(
                "====> Epoch: {} Average loss: {:.4}",
                st.epoch, st.train_loss
            ));
            say(format!(
                "====> Anomaly set loss: {:.4}  ({:.2} s)",
                st.anomaly_loss, st.seconds
            ));
        });
        bar.inc(1);
        epochs.push(st);
        let snap = ex.snapshot_of(
            state.ok_or_else(|| anyhow::anyhow!("epoch state not read"))?,
            &epochs,
        );
        if let Some(w) = writer.take() {
            w.join()
                .map_err(|_| anyhow::anyhow!("checkpoint writer panicked"))??;
        }
        let (sp, mp) = (state_path.clone(), model_path.clone());
        writer = Some(std::thread::spawn(move || snap.write(&sp, &mp)));
    }
    if let Some(w) = writer.take() {
        w.join()
            .map_err(|_| anyhow::anyhow!("checkpoint writer panicked"))??;
    }
    bar.finish_and_clear();
    let train_seconds = t1.elapsed().as_secs_f64();
    let trained_now = ex.epoch - epochs_before;

    let t2 = Instant::now();
    let scores = score_all(&mut ex, quiet)?;
    let score_seconds = t2.elapsed().as_secs_f64();
    let protocols = Protocols::from_scores(&scores)?;
    for line in protocols.summary(cfg.holdout_digit) {
        say(line);
    }

    // files (model.safetensors was written after the last epoch)
    write_atomic(
        &out.join("config.json"),
        serde_json::to_string_pretty(&cfg)?.as_bytes(),
    )?;
    write_scores_csv(&out.join("scores.csv"), &ex, &scores)?;
    let n_train_total = ex.splits.train.len() * trained_now;
    let timing = Timing {
        setup_seconds: setup,
        train_seconds,
        score_seconds,
        train_samples_per_second: n_train_total as f64 / train_seconds,
    };
    let backend = ex.backend.describe();
    let mf = MetricsFile {
        config: &cfg,
        backend: backend.clone(),
        device: ex.backend.kind(),
        epochs: &epochs,
        protocols: &protocols,
        timing,
    };
    write_atomic(
        &out.join("metrics.json"),
        serde_json::to_string_pretty(&mf)?.as_bytes(),
    )?;
    write_plots(out, &mut ex, &epochs, &scores, &protocols)?;
    say(format!(
        "train {:.2} s ({:.0} samples/s), score {:.2} s, total {:.2} s; wrote {}/{{metrics.json,scores.csv,config.json,model.safetensors,*.png}}",
        train_seconds,
        timing.train_samples_per_second,
        score_seconds,
        t0.elapsed().as_secs_f64(),
        out.display()
    ));
    Ok(())
}

pub(crate) fn write_scores_csv(
    path: &Path,
    ex: &Experiment,
    scores: &HashMap<SplitId, Vec<f64>>,
) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["split", "index", "label", "score_neg_elbo"])?;
    for s in SplitId::ALL {
        let sp = ex.split(s);
        for (i, v) in scores[&s].iter().enumerate() {
            w.write_record([
                s.name().to_string(),
                sp.source_index[i].to_string(),
                sp.labels[i].to_string(),
                format!("{v}"),
            ])?;
        }
    }
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("csv: {e}"))?;
    write_atomic(path, &bytes)
}

fn write_plots(
    out: &Path,
    ex: &mut Experiment,
    epochs: &[EpochStats],
    scores: &HashMap<SplitId, Vec<f64>>,
    p: &Protocols,
) -> Result<()> {
    crate::evaluate::write_eval_plots(out, ex, scores, p)?;
    let tr: Vec<f64> = epochs.iter().map(|e| e.train_loss).collect();
    let an: Vec<f64> = epochs.iter().map(|e| e.anomaly_loss).collect();
    plot::plot_elbo(
        &out.join("elbo.png"),
        &tr,
        &an,
        Some(p.clean.youden_threshold),
    )
}
