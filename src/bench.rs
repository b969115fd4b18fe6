//! `vae-ood bench`: training and scoring throughput of the reference experiment on
//! one backend, with a per-kernel breakdown.
//!
//! The breakdown runs, for each op of the training step (fc1 forward, dW4, Adam,
//! …), that op alone for every step of an epoch, recorded the same way as
//! training (one compute pass on the GPU). Kernel times do not depend on the
//! values, so this measures each kernel with its dispatch cost, on every backend
//! and without timestamp queries; the parts add up to about the whole epoch.

use crate::backend::DeviceChoice;
use crate::plan::{self, Batch, Buf};
use crate::train::{Experiment, SplitId, TrainConfig};
use anyhow::Result;
use serde::Serialize;
use std::time::Instant;

/// Draws per image for the importance-weighted scoring benchmark.
pub const IWAE_K: usize = 64;

#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub device: String,
    pub backend: String,
    pub epochs: usize,
    pub warmup: usize,
    pub train_images: usize,
    pub steps_per_epoch: usize,
    pub train_seconds: f64,
    pub samples_per_s: f64,
    pub us_per_step: f64,
    pub score_images_per_s: f64,
    pub iwae_k: usize,
    pub iwae_images_per_s: f64,
    pub final_avg_loss: f64,
    /// (op, µs per step)
    pub breakdown_us_per_step: Vec<(String, f64)>,
}

pub fn bench(
    mut cfg: TrainConfig,
    device: DeviceChoice,
    epochs: usize,
    warmup: usize,
    breakdown: bool,
) -> Result<BenchResult> {
    cfg.epochs = epochs + warmup;
    let mut ex = Experiment::new(cfg.clone(), device, true)?;
    for _ in 0..warmup {
        ex.train_epoch()?;
    }
    let t = Instant::now();
    let mut last = 0.0;
    for _ in 0..epochs {
        last = ex.train_epoch()?.train_loss;
    }
    let train_seconds = t.elapsed().as_secs_f64();
    let n = ex.splits.train.len();
    let steps = n.div_ceil(cfg.batch_size);

    // scoring: every split once (warm), then timed
    let mut scored = 0;
    ex.score(SplitId::TestAnomaly)?;
    let t = Instant::now();
    for s in SplitId::ALL {
        scored += ex.score(s)?.len();
    }
    let score_seconds = t.elapsed().as_secs_f64();
    // importance-weighted score with K = 64 on the test set
    ex.score_iwae(SplitId::TestAnomaly, IWAE_K)?;
    let t = Instant::now();
    let iwae_n = ex.score_iwae(SplitId::TestNormal, IWAE_K)?.len()
        + ex.score_iwae(SplitId::TestAnomaly, IWAE_K)?.len();
    let iwae_seconds = t.elapsed().as_secs_f64();

    let mut parts = Vec::new();
    if breakdown {
        let o = ex.layout.offsets();
        let bs = cfg.batch_size;
        let all: Vec<Vec<plan::Op>> = (0..steps)
            .map(|s| {
                let bt = Batch {
                    images: bs.min(n - s * bs),
                    draws: 1,
                    idx_off: s * bs,
                    seed: 1,
                    stream: s as u32 + 1,
                    row_base: 0,
                    out_off: s * bs,
                    slot: s,
                    mode: crate::cpu::LOSS_ELBO,
                };
                plan::train_step_ops(
                    ex.layout.dims,
                    &o,
                    &bt,
                    ex.layout.total,
                    &cfg.adam,
                    s as u64 + 1,
                )
            })
            .collect();
        for (i, name) in plan::TRAIN_STEP_OP_NAMES.iter().enumerate() {
            let ops: Vec<plan::Op> = all.iter().map(|st| st[i]).collect();
            ex.backend.run(&ops)?; // warm (pipelines, bind groups)
            ex.backend.read(Buf::BatchLoss, 0..1)?;
            let t = Instant::now();
            ex.backend.run(&ops)?;
            ex.backend.read(Buf::BatchLoss, 0..1)?;
            parts.push((
                name.to_string(),
                t.elapsed().as_secs_f64() * 1e6 / steps as f64,
            ));
        }
    }
    Ok(BenchResult {
        device: ex.backend.kind().to_string(),
        backend: ex.backend.describe(),
        epochs,
        warmup,
        train_images: n,
        steps_per_epoch: steps,
        train_seconds,
        samples_per_s: (n * epochs) as f64 / train_seconds,
        us_per_step: train_seconds * 1e6 / (steps * epochs) as f64,
        score_images_per_s: scored as f64 / score_seconds,
        iwae_k: IWAE_K,
        iwae_images_per_s: iwae_n as f64 / iwae_seconds,
        final_avg_loss: last,
        breakdown_us_per_step: parts,
    })
}

pub fn print(r: &BenchResult) {
    println!("vae-ood bench: {}", r.backend);
    println!(
        "train: {} epochs of {} images ({} steps/epoch) after {} warm-up: {:.3} s, {:.0} samples/s, {:.1} µs/step, final avg loss {:.4}",
        r.epochs, r.train_images, r.steps_per_epoch, r.warmup, r.train_seconds, r.samples_per_s, r.us_per_step, r.final_avg_loss
    );
    println!(
        "score: −ELBO (1 draw) {:.0} images/s; IWAE (K = {}) {:.0} images/s",
        r.score_images_per_s, r.iwae_k, r.iwae_images_per_s
    );
    if !r.breakdown_us_per_step.is_empty() {
        let total: f64 = r.breakdown_us_per_step.iter().map(|p| p.1).sum();
        println!(
            "per-kernel breakdown (each op alone over one epoch, µs per step; sum {total:.1}):"
        );
        for (name, us) in &r.breakdown_us_per_step {
            println!("  {name:<12} {us:>9.2} µs  {:>5.1}%", 100.0 * us / total);
        }
    }
}
