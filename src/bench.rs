//! `vae-ood bench`: training and scoring throughput of the reference experiment on
//! one backend, with a per-kernel breakdown measured one of two ways:
//!
//! - **timestamps** (GPUs with `TIMESTAMP_QUERY | TIMESTAMP_QUERY_INSIDE_PASSES`,
//!   and the CPU): a whole training epoch run as in training (on the GPU one
//!   compute pass), with a timestamp taken between the ops of one step in the
//!   middle of it (GPU: a query set sized for one step, resolved and read back once
//!   per epoch; CPU: the host clock, with the CPU backend's fusions in place, a
//!   fused op's time charged to the first op of the fusion and the other reading
//!   0); the differences are each op's time inside a real step, averaged over
//!   `epochs` such epochs.
//! - **each op alone** (every backend): for each op of the training step (fc1
//!   forward, dW4, Adam, …), that op alone for every step of an epoch, recorded the
//!   same way as training. Kernel times do not depend on the values, so this
//!   measures each kernel with its dispatch cost; the parts add up to about the
//!   whole epoch.

use crate::backend::{Backend, DeviceChoice};
use crate::plan::{self, Batch, Buf};
use crate::train::{EpochPipeline, Experiment, SplitId, TrainConfig};
use anyhow::{anyhow, ensure, Result};
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
    /// GPU dispatches in one training step (absent on the CPU)
    pub dispatches_per_step: Option<usize>,
    /// how the breakdown was measured; absent without one
    pub breakdown_method: Option<BreakdownMethod>,
    /// (op, µs per step)
    pub breakdown_us_per_step: Vec<(String, f64)>,
}

/// How the per-kernel breakdown is measured (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BreakdownMethod {
    /// timestamps between the ops of a step inside a training epoch (GPU timestamp
    /// queries; the host clock on the CPU)
    Timestamps,
    /// each op alone for every step of an epoch, timed on the host
    EachOpAlone,
}

/// Which breakdown `bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Breakdown {
    /// timestamps where the backend has them, else each op alone
    Auto,
    /// timestamps (an error where the backend has none)
    Timestamps,
    /// each op alone
    EachOpAlone,
    /// none
    Off,
}

pub fn bench(
    mut cfg: TrainConfig,
    device: DeviceChoice,
    epochs: usize,
    warmup: usize,
    breakdown: Breakdown,
) -> Result<BenchResult> {
    cfg.epochs = epochs + warmup;
    let mut ex = Experiment::new(cfg.clone(), device, true)?;
    // decided first: asking for timestamps where there are none fails at once
    let method = match breakdown {
        Breakdown::Off => None,
        Breakdown::EachOpAlone => Some(BreakdownMethod::EachOpAlone),
        Breakdown::Timestamps => {
            ensure!(
                ex.backend.has_timestamps(),
                "--breakdown timestamps: {} has no timestamp queries inside compute passes",
                ex.backend.describe()
            );
            Some(BreakdownMethod::Timestamps)
        }
        Breakdown::Auto if ex.backend.has_timestamps() => Some(BreakdownMethod::Timestamps),
        Breakdown::Auto => Some(BreakdownMethod::EachOpAlone),
    };
    // where it is (stderr, a terminal only): on a software adapter such as
    // lavapipe the scoring alone takes minutes
    let stages = warmup + epochs + 2 + usize::from(method.is_some());
    let bar = crate::report::progress_bar(false, stages as u64, "bench: warm-up epochs");
    for _ in 0..warmup {
        ex.train_epoch()?;
        bar.inc(1);
    }
    bar.set_message("bench: timed epochs");
    // as `vae-ood` trains: the next epoch submitted before this one's results are
    // read (without the checkpoint reads)
    let t = Instant::now();
    let mut last = 0.0;
    let mut pipe = EpochPipeline::new(ex.epoch + epochs, false);
    while let Some(done) = pipe.next(&mut ex) {
        last = done?.0.train_loss;
        bar.inc(1);
    }
    let train_seconds = t.elapsed().as_secs_f64();
    let n = ex.splits.train.len();
    let steps = n.div_ceil(cfg.batch_size);

    // scoring: every split once (warm), then timed
    bar.set_message("bench: scoring −ELBO");
    let mut scored = 0;
    ex.score(SplitId::TestAnomaly)?;
    let t = Instant::now();
    for s in SplitId::ALL {
        scored += ex.score(s)?.len();
    }
    let score_seconds = t.elapsed().as_secs_f64();
    // importance-weighted score with K = 64 on the test set
    bar.inc(1);
    bar.set_message(format!("bench: scoring IWAE, K = {IWAE_K}"));
    ex.score_iwae(SplitId::TestAnomaly, IWAE_K)?;
    let t = Instant::now();
    let iwae_n = ex.score_iwae(SplitId::TestNormal, IWAE_K)?.len()
        + ex.score_iwae(SplitId::TestAnomaly, IWAE_K)?.len();
    let iwae_seconds = t.elapsed().as_secs_f64();

    bar.inc(1);
    if method.is_some() {
        bar.set_message("bench: per-kernel breakdown");
    }
    let parts = match method {
        None => Vec::new(),
        Some(m) => per_kernel(&mut ex, m, epochs.max(1))?,
    };
    bar.finish_and_clear();
    let dispatches_per_step = epoch_ops(&ex)
        .first()
        .and_then(|step| dispatches_per_step(&*ex.backend, step));
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
        dispatches_per_step,
        breakdown_method: method,
        breakdown_us_per_step: parts,
    })
}

/// The per-kernel breakdown of a training step on `ex`'s backend: (op name, µs per
/// step) for every name of `plan::TRAIN_STEP_OP_NAMES`, in order, measured by
/// `method` (with timestamps: the mean over `reps` epochs). Runs real training
/// steps (the parameters change).
pub fn per_kernel(
    ex: &mut Experiment,
    method: BreakdownMethod,
    reps: usize,
) -> Result<Vec<(String, f64)>> {
    let all = epoch_ops(ex);
    match method {
        BreakdownMethod::Timestamps => by_timestamps(ex, &all, reps),
        BreakdownMethod::EachOpAlone => each_op_alone(ex, &all),
    }
}

/// The ops of every training step of an epoch over the (shuffled) training split.
pub fn epoch_ops(ex: &Experiment) -> Vec<Vec<plan::Op>> {
    let o = ex.layout.offsets();
    let bs = ex.cfg.batch_size;
    let n = ex.splits.train.len();
    let steps = n.div_ceil(bs);
    (0..steps)
        .map(|s| {
            let bt = Batch::train_step(s, n, bs, 1, s as u32 + 1);
            plan::train_step_ops(
                ex.layout.dims,
                &o,
                &bt,
                ex.layout.total,
                &ex.cfg.adam,
                s as u64 + 1,
            )
        })
        .collect()
}

/// GPU dispatches per training step inside a run of steps: two steps' less one
/// step's, since a step's last op may share a dispatch with the next step's first
/// (`None` for the CPU backend).
pub fn dispatches_per_step(be: &dyn Backend, step: &[plan::Op]) -> Option<usize> {
    let two: Vec<plan::Op> = step.iter().chain(step).copied().collect();
    Some(be.dispatches(&two)? - be.dispatches(step)?)
}

/// Each op alone for every step of an epoch (warm run, then timed): µs per step.
fn each_op_alone(ex: &mut Experiment, all: &[Vec<plan::Op>]) -> Result<Vec<(String, f64)>> {
    let mut parts = Vec::new();
    for (i, name) in plan::TRAIN_STEP_OP_NAMES.iter().enumerate() {
        let ops: Vec<plan::Op> = all.iter().map(|st| st[i]).collect();
        ex.backend.run(&ops)?; // warm (pipelines, bind groups)
        ex.backend.read(Buf::BatchLoss, 0..1)?;
        let t = Instant::now();
        ex.backend.run(&ops)?;
        ex.backend.read(Buf::BatchLoss, 0..1)?;
        parts.push((
            name.to_string(),
            t.elapsed().as_secs_f64() * 1e6 / all.len() as f64,
        ));
    }
    Ok(parts)
}

/// Whole epochs as in training, the middle step timed by GPU timestamps: one warm
/// epoch, then the mean over `reps` epochs of each op's time in that step, µs.
fn by_timestamps(
    ex: &mut Experiment,
    all: &[Vec<plan::Op>],
    reps: usize,
) -> Result<Vec<(String, f64)>> {
    let per_step = plan::TRAIN_STEP_OP_NAMES.len();
    let ops: Vec<plan::Op> = all.iter().flatten().copied().collect();
    let mid = all.len() / 2;
    let timed = mid * per_step..(mid + 1) * per_step;
    let mut sum = vec![0.0; per_step];
    for rep in 0..=reps {
        let ns = ex
            .backend
            .run_timed(&ops, timed.clone())?
            .ok_or_else(|| anyhow!("{} has no timestamps", ex.backend.describe()))?;
        ensure!(
            ns.len() == per_step,
            "{} timestamps for {per_step} ops",
            ns.len()
        );
        if rep > 0 {
            // rep 0 warms pipelines and bind groups
            for (s, v) in sum.iter_mut().zip(&ns) {
                *s += v;
            }
        }
    }
    Ok(plan::TRAIN_STEP_OP_NAMES
        .iter()
        .zip(sum)
        .map(|(name, ns)| (name.to_string(), ns * 1e-3 / reps as f64))
        .collect())
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
    if let Some(d) = r.dispatches_per_step {
        println!("GPU dispatches per training step: {d}");
    }
    if !r.breakdown_us_per_step.is_empty() {
        let total: f64 = r.breakdown_us_per_step.iter().map(|p| p.1).sum();
        let how = match r.breakdown_method {
            Some(BreakdownMethod::Timestamps) if r.device == "cpu" => {
                "host clock between the ops of a step inside a training epoch; a fused op's time is charged to the first op of its fusion, the other reads 0"
            }
            Some(BreakdownMethod::Timestamps) => {
                "GPU timestamps between the dispatches of a step inside a training epoch; an op that runs inside another op's dispatch (the second of a gradient pair, fc1 fwd reading the images in the gather's dispatch, Adam in the epilogue of fc3 dW's weight-gradient triple (or else the gather next to the previous step's Adam), the loss inside the BCE, the reparameterisation and fc3 fwd inside head fwd's latent_forward, the reparameterisation and head dX inside fc3 dX's latent_backward) reads 0, its time charged to the last op before it with a dispatch; a folded split-K reduce is timed with the op that reads the product"
            }
            _ => "each op alone over one epoch",
        };
        println!("per-kernel breakdown ({how}, µs per step; sum {total:.1}):");
        for (name, us) in &r.breakdown_us_per_step {
            println!("  {name:<12} {us:>9.2} µs  {:>5.1}%", 100.0 * us / total);
        }
    }
}
