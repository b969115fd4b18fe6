//! The experiment: data splits resident on the backend, the training loop (one
//! `Backend::run` per epoch), and batched scoring. Shared by both backends.

use crate::backend::{self, Backend, DeviceChoice, PendingRead};
use crate::dataset::{load_splits, Split, Splits, PIXELS};
use crate::model::{Dims, Layout};
use crate::plan::{self, AdamConfig, Batch, Buf, Op, Sizes};
use anyhow::{bail, ensure, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything that defines a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub data_dir: PathBuf,
    pub holdout_digit: u8,
    pub epochs: usize,
    pub batch_size: usize,
    pub adam: AdamConfig,
    pub seed: u64,
    pub hidden: usize,
    pub latent: usize,
    /// train on the first N images of the training split only
    pub train_limit: Option<usize>,
    /// images per scoring batch
    pub score_batch: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data_dir: PathBuf::from("data/mnist"),
            holdout_digit: 5,
            epochs: 20,
            batch_size: 128,
            adam: AdamConfig::default(),
            seed: 1,
            hidden: 400,
            latent: 20,
            train_limit: None,
            score_batch: 1024,
        }
    }
}

impl TrainConfig {
    /// Reject values that cannot train, with a one-line message.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.holdout_digit <= 9,
            "--holdout-digit must be 0..=9, got {}",
            self.holdout_digit
        );
        ensure!(self.epochs >= 1, "--epochs must be at least 1");
        ensure!(self.batch_size >= 1, "--batch-size must be at least 1");
        ensure!(
            self.batch_size <= 65_536,
            "--batch-size must be at most 65536"
        );
        ensure!(
            self.adam.lr.is_finite() && self.adam.lr > 0.0,
            "--lr must be a positive number, got {}",
            self.adam.lr
        );
        ensure!(
            self.hidden >= 1 && self.hidden <= 16_384,
            "--hidden must be in 1..=16384"
        );
        ensure!(
            self.latent >= 1 && self.latent <= 1024,
            "--latent must be in 1..=1024"
        );
        ensure!(
            self.train_limit != Some(0),
            "--train-limit must be at least 1"
        );
        ensure!(
            self.score_batch >= 1 && self.score_batch <= 16_384,
            "score batch must be in 1..=16384"
        );
        Ok(())
    }
    pub fn dims(&self) -> Dims {
        Dims {
            d: PIXELS,
            h: self.hidden,
            l: self.latent,
        }
    }
}

/// Which split a score belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitId {
    Train,
    TestNormal,
    TestAnomaly,
}

impl SplitId {
    pub const ALL: [SplitId; 3] = [SplitId::Train, SplitId::TestNormal, SplitId::TestAnomaly];
    pub fn name(self) -> &'static str {
        match self {
            SplitId::Train => "train",
            SplitId::TestNormal => "test_normal",
            SplitId::TestAnomaly => "test_anomaly",
        }
    }
    /// RNG stream for scoring ε: fixed per split, far above any training step number.
    pub fn stream(self) -> u32 {
        0xF000_0000 | self as u32
    }
}

/// Losses of one epoch, averaged per image (nats), as the seed prints them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct EpochStats {
    pub epoch: usize,
    pub train_loss: f64,
    pub anomaly_loss: f64,
    pub seconds: f64,
}

/// Header key of the training state's metadata (JSON of [`StateMeta`]).
const STATE_KEY: &str = "vae_ood.state";

/// What a training state keeps besides the three flat tensors.
#[derive(Serialize, Deserialize)]
struct StateMeta {
    step: u64,
    epoch: usize,
    /// ChaCha word position of the shuffle RNG (a u128, as a string for JSON)
    rng_word_pos: String,
    config: TrainConfig,
    history: Vec<EpochStats>,
}

/// A training state read back from the device, ready to be written.
pub struct Snapshot {
    layout: Layout,
    params: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    meta: StateMeta,
}

impl Snapshot {
    /// Write the model (PyTorch names) to `model_path`, then the resumable state to
    /// `state_path`, each atomically (temp file + rename). In that order, so that
    /// once a state is on disk the model of its epoch (or a later one's, after a
    /// kill between the two writes of the next epoch) is too: `--resume` reads the
    /// state, and the model is never behind it.
    pub fn write(&self, state_path: &Path, model_path: &Path) -> Result<()> {
        let mut meta = HashMap::new();
        meta.insert(
            crate::evaluate::CONFIG_KEY.into(),
            serde_json::to_string(&self.meta.config)?,
        );
        meta.insert("vae_ood.epoch".into(), self.meta.epoch.to_string());
        crate::checkpoint::save(model_path, &self.layout, &self.params, meta)?;
        let mut md = HashMap::new();
        md.insert(STATE_KEY.to_string(), serde_json::to_string(&self.meta)?);
        let views = [
            ("params", &self.params),
            ("adam.m", &self.m),
            ("adam.v", &self.v),
        ]
        .into_iter()
        .map(|(name, t)| {
            Ok((
                name,
                TensorView::new(Dtype::F32, vec![t.len()], bytemuck::cast_slice(t))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
        let bytes = crate::checkpoint::serialize_sorted(views, md)?;
        crate::fsutil::write_atomic(state_path, &bytes)
    }

    pub fn params(&self) -> &[f32] {
        &self.params
    }
}

pub struct Experiment {
    pub cfg: TrainConfig,
    pub layout: Layout,
    pub splits: Splits,
    pub backend: Box<dyn Backend>,
    /// start of each split in the image store (train, test normal, test anomaly)
    bases: [usize; 3],
    /// Adam steps taken so far
    pub step: u64,
    /// epochs completed
    pub epoch: usize,
    /// epochs started (completed, plus those in flight)
    started: usize,
    /// when the last epoch finished
    finished_at: Option<Instant>,
    /// (epoch, when its start began, how long `start_epoch` took) of the epochs in
    /// flight: on a backend that runs an epoch inside `start_epoch` (the CPU,
    /// lavapipe) that is its running time, on a GPU its encoding
    start_costs: std::collections::VecDeque<(usize, Instant, std::time::Duration)>,
    shuffle_rng: rand_chacha::ChaCha8Rng,
}

/// An epoch submitted by [`Experiment::start_epoch`], its results not read yet.
pub struct EpochInFlight {
    /// its number, from 1
    epoch: usize,
    started: Instant,
    steps: usize,
    ops: usize,
    /// per-image training losses, the anomaly batches' sums
    losses: PendingRead,
    anomaly: PendingRead,
    /// parameters, Adam's m and v after it
    state: Option<[PendingRead; 3]>,
    /// Adam steps taken and the shuffle generator's position after it
    step: u64,
    rng_word_pos: u128,
}

impl EpochState {
    /// The parameters after the epoch, in layout order.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// Adam's first and second moments after the epoch.
    pub fn moments(&self) -> (&[f32], &[f32]) {
        (&self.m, &self.v)
    }
}

/// Training epochs two in flight: before an epoch's results are read back, the
/// epoch after it is already submitted ([`Experiment::start_epoch`]), so the GPU
/// runs on while the host reads results, writes checkpoints and encodes.
pub struct EpochPipeline {
    in_flight: std::collections::VecDeque<EpochInFlight>,
    until: usize,
    state: bool,
}

impl EpochPipeline {
    /// The epochs after those started so far, up to `until`; with `state`, each comes with its
    /// parameters and Adam's moments ([`EpochState`]).
    pub fn new(until: usize, state: bool) -> EpochPipeline {
        EpochPipeline {
            in_flight: Default::default(),
            until,
            state,
        }
    }

    /// The next epoch, finished ([`Experiment::finish_epoch`]); `None` after the
    /// last. An error (a failed submission, a diverged epoch) ends the training.
    pub fn next(
        &mut self,
        ex: &mut Experiment,
    ) -> Option<Result<(EpochStats, Option<EpochState>)>> {
        while self.in_flight.len() < 2 && ex.started < self.until {
            match ex.start_epoch(self.state) {
                Ok(e) => self.in_flight.push_back(e),
                Err(err) => return Some(Err(err)),
            }
        }
        let e = self.in_flight.pop_front()?;
        Some(ex.finish_epoch(e))
    }
}

/// The training state after an epoch, as [`Experiment::finish_epoch`] read it:
/// what a [`Snapshot`] holds besides the history.
pub struct EpochState {
    params: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    step: u64,
    epoch: usize,
    rng_word_pos: u128,
}

impl Experiment {
    /// Load the data, build the backend and initialise the parameters.
    pub fn new(cfg: TrainConfig, device: DeviceChoice, quiet: bool) -> Result<Experiment> {
        cfg.validate()?;
        let mut splits = load_splits(&cfg.data_dir, cfg.holdout_digit)?;
        if let Some(n) = cfg.train_limit {
            splits.train.truncate(n);
        }
        Self::with_splits(cfg, splits, device, quiet)
    }

    pub fn with_splits(
        cfg: TrainConfig,
        splits: Splits,
        device: DeviceChoice,
        quiet: bool,
    ) -> Result<Experiment> {
        cfg.validate()?;
        if splits.train.is_empty() {
            bail!("the training split is empty");
        }
        let dims = cfg.dims();
        let layout = Layout::new(dims);
        let parts: [&Split; 3] = [&splits.train, &splits.test_normal, &splits.test_anomaly];
        let mut store = Vec::with_capacity(parts.iter().map(|s| s.pixels.len()).sum());
        let mut bases = [0usize; 3];
        for (i, s) in parts.iter().enumerate() {
            bases[i] = store.len() / PIXELS;
            store.extend_from_slice(&s.pixels);
        }
        let n_total = store.len() / PIXELS;
        let n_train = splits.train.len();
        let largest_split = parts.iter().map(|s| s.len()).max().unwrap_or(0);
        let sizes = Sizes {
            dims,
            params: layout.total,
            max_images: cfg.batch_size.max(cfg.score_batch),
            max_rows: cfg.batch_size.max(cfg.score_batch),
            // an epoch's per-image training losses, then the anomaly set's scores
            sample_slots: (n_train + splits.test_anomaly.len())
                .max(largest_split)
                .max(1),
            // scoring with K draws uses up to one batch per image (K = score_batch);
            // training steps write no batch sums
            batch_slots: largest_split.max(1),
        };
        // index buffer: [epoch permutation of the training images | identity over the store]
        let idx_len = n_train + n_total;
        let mut backend = backend::create(device, &store, idx_len, sizes, quiet)?;
        let identity: Vec<u32> = (0..n_total as u32).collect();
        backend.write_idx(n_train, &identity)?;
        backend.write(Buf::Params, 0, &layout.init(cfg.seed))?;
        let zeros = vec![0.0f32; layout.total];
        backend.write(Buf::AdamM, 0, &zeros)?;
        backend.write(Buf::AdamV, 0, &zeros)?;
        let shuffle_rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed_5eed_5eed_5eed);
        Ok(Experiment {
            cfg,
            layout,
            splits,
            backend,
            bases,
            step: 0,
            epoch: 0,
            started: 0,
            finished_at: None,
            start_costs: Default::default(),
            shuffle_rng,
        })
    }

    pub fn split(&self, s: SplitId) -> &Split {
        match s {
            SplitId::Train => &self.splits.train,
            SplitId::TestNormal => &self.splits.test_normal,
            SplitId::TestAnomaly => &self.splits.test_anomaly,
        }
    }

    fn split_base(&self, s: SplitId) -> usize {
        self.bases[s as usize]
    }

    /// Forward-only ops scoring split `s` in batches with `draws` z samples per
    /// image (`mode`: LOSS_ELBO or LOSS_IWAE); batch j's sum goes to
    /// BatchLoss[slot0 + j], image i's score to SampleLoss[out0 + i]. A batch holds
    /// score_batch / draws images, so decoder rows never exceed score_batch; ε of
    /// image i, draw k depends only on (seed, split, i, k), not on the batching.
    fn score_ops(&self, s: SplitId, out0: usize, slot0: usize, draws: usize, mode: u32) -> Vec<Op> {
        let n = self.split(s).len();
        let o = self.layout.offsets();
        let idx0 = self.splits.train.len() + self.split_base(s);
        let per_batch = (self.cfg.score_batch / draws).max(1);
        let mut ops = Vec::new();
        for (j, start) in (0..n).step_by(per_batch).enumerate() {
            let bt = Batch {
                images: per_batch.min(n - start),
                draws,
                idx_off: idx0 + start,
                seed: self.cfg.seed as u32,
                stream: s.stream(),
                row_base: start as u32,
                out_off: out0 + start,
                slot: Some(slot0 + j),
                mode,
            };
            ops.extend(plan::forward_ops(self.layout.dims, &o, &bt, false));
        }
        ops
    }

    /// One epoch: shuffle, every training step, then the anomaly set's loss, all in
    /// one `run`; one readback of the per-image training losses (summed here in
    /// f64: the steps write no batch sums) and one of the anomaly batches' sums.
    pub fn train_epoch(&mut self) -> Result<EpochStats> {
        let e = self.start_epoch(false)?;
        Ok(self.finish_epoch(e)?.0)
    }

    /// Submit the next epoch (shuffle, every training step, the anomaly set's
    /// loss: one `run`) and queue the reads of its results behind it — with
    /// `state`, also the parameters and Adam's moments for a [`Snapshot`] — without
    /// waiting for any of it. The next epoch can be started before this one is
    /// finished ([`Self::finish_epoch`]): the GPU then never idles while the host
    /// reads results, writes checkpoints and encodes the next epoch.
    pub fn start_epoch(&mut self, state: bool) -> Result<EpochInFlight> {
        let started = Instant::now();
        let n = self.splits.train.len();
        let bs = self.cfg.batch_size;
        let mut perm: Vec<u32> = (0..n as u32).collect();
        perm.shuffle(&mut self.shuffle_rng);
        self.backend.write_idx(0, &perm)?;
        let o = self.layout.offsets();
        let mut ops = Vec::new();
        let steps = n.div_ceil(bs);
        for s in 0..steps {
            self.step += 1;
            let bt = Batch::train_step(s, n, bs, self.cfg.seed as u32, self.step as u32);
            ops.extend(plan::train_step_ops(
                self.layout.dims,
                &o,
                &bt,
                self.layout.total,
                &self.cfg.adam,
                self.step,
            ));
        }
        // (its per-image scores after the training images', its batch sums from 0)
        ops.extend(self.score_ops(SplitId::TestAnomaly, n, 0, 1, crate::cpu::LOSS_ELBO));
        let anom_batches = self
            .splits
            .test_anomaly
            .len()
            .div_ceil(self.cfg.score_batch);
        self.backend.run(&ops)?;
        let losses = self.backend.read_later(Buf::SampleLoss, 0..n)?;
        let anomaly = self.backend.read_later(Buf::BatchLoss, 0..anom_batches)?;
        let total = self.layout.total;
        let state = if state {
            Some([
                self.backend.read_later(Buf::Params, 0..total)?,
                self.backend.read_later(Buf::AdamM, 0..total)?,
                self.backend.read_later(Buf::AdamV, 0..total)?,
            ])
        } else {
            None
        };
        self.started += 1;
        self.start_costs
            .push_back((self.started, started, started.elapsed()));
        Ok(EpochInFlight {
            epoch: self.started,
            started,
            steps,
            ops: ops.len(),
            losses,
            anomaly,
            state,
            step: self.step,
            rng_word_pos: self.shuffle_rng.get_word_pos(),
        })
    }

    /// Wait for an epoch begun by [`Self::start_epoch`] (not for epochs started
    /// after it) and return its losses, and its state if asked for; an error if
    /// it diverged. Epochs finish in the order they were started.
    pub fn finish_epoch(&mut self, e: EpochInFlight) -> Result<(EpochStats, Option<EpochState>)> {
        ensure!(
            e.epoch == self.epoch + 1,
            "epoch {} finished out of order (after {})",
            e.epoch,
            self.epoch
        );
        let n = self.splits.train.len();
        let n_anom = self.splits.test_anomaly.len();
        let train_sum: f64 = (self.backend.collect(e.losses)?.iter())
            .map(|&v| v as f64)
            .sum();
        let anom_sum: f64 = (self.backend.collect(e.anomaly)?.iter())
            .map(|&v| v as f64)
            .sum();
        let state = match e.state {
            Some([p, m, v]) => Some(EpochState {
                params: self.backend.collect(p)?,
                m: self.backend.collect(m)?,
                v: self.backend.collect(v)?,
                step: e.step,
                epoch: e.epoch,
                rng_word_pos: e.rng_word_pos,
            }),
            None => None,
        };
        // The wall time this epoch took, where epochs in flight overlap: the time
        // since the later of its start and the previous epoch's end, less the time
        // spent starting later epochs in between, plus its own start if that came
        // before — so that a backend that runs an epoch while starting it (the CPU)
        // charges each epoch its own run, and a GPU the gap between two ends.
        let now = Instant::now();
        let from = self.finished_at.map_or(e.started, |t| t.max(e.started));
        let later: std::time::Duration = (self.start_costs.iter())
            .filter(|s| s.0 > e.epoch && s.1 >= from)
            .map(|s| s.2)
            .sum();
        let own = (self.start_costs.iter())
            .find(|s| s.0 == e.epoch)
            .filter(|s| s.1 < from)
            .map_or(std::time::Duration::ZERO, |s| s.2);
        self.start_costs.retain(|s| s.0 != e.epoch);
        self.finished_at = Some(now);
        let stats = EpochStats {
            epoch: e.epoch,
            train_loss: train_sum / n as f64,
            anomaly_loss: if n_anom > 0 {
                anom_sum / n_anom as f64
            } else {
                f64::NAN
            },
            seconds: ((now - from).saturating_sub(later) + own).as_secs_f64(),
        };
        if !stats.train_loss.is_finite() {
            bail!(
                "training diverged in epoch {}: the average loss is {} (try a smaller --lr)",
                stats.epoch,
                stats.train_loss
            );
        }
        self.epoch += 1;
        log::info!(
            "epoch {}: {} steps ({} ops) in {:.3} s, train loss {:.4}, anomaly loss {:.4}",
            stats.epoch,
            e.steps,
            e.ops,
            stats.seconds,
            stats.train_loss,
            stats.anomaly_loss
        );
        Ok((stats, state))
    }

    /// −ELBO of every image of split `s` (one z draw per image, fixed ε stream).
    pub fn score(&mut self, s: SplitId) -> Result<Vec<f32>> {
        self.score_with(s, 1, crate::cpu::LOSS_ELBO)
    }

    /// −log p̂(x) of every image of split `s`: the importance-weighted estimate
    /// with `draws` z samples per image (IWAE bound; tighter than −ELBO as K grows).
    pub fn score_iwae(&mut self, s: SplitId, draws: usize) -> Result<Vec<f32>> {
        self.score_with(s, draws, crate::cpu::LOSS_IWAE)
    }

    fn score_with(&mut self, s: SplitId, draws: usize, mode: u32) -> Result<Vec<f32>> {
        let n = self.split(s).len();
        ensure!(
            (1..=self.backend.sizes().max_rows).contains(&draws),
            "draws per image must be in 1..={}",
            self.backend.sizes().max_rows
        );
        if n == 0 {
            return Ok(Vec::new());
        }
        let ops = self.score_ops(s, 0, 0, draws, mode);
        self.backend.run(&ops)?;
        self.backend.read(Buf::SampleLoss, 0..n)
    }

    /// Decoder means σ(logits) of the first `n` images of split `s` (one z draw,
    /// the same ε as scoring), each 784 values in [0, 1].
    pub fn reconstruct(&mut self, s: SplitId, n: usize) -> Result<Vec<Vec<f32>>> {
        let n = n.min(self.split(s).len()).min(self.cfg.score_batch);
        let bt = Batch {
            images: n,
            draws: 1,
            idx_off: self.splits.train.len() + self.split_base(s),
            seed: self.cfg.seed as u32,
            stream: s.stream(),
            row_base: 0,
            out_off: 0,
            slot: Some(0),
            mode: crate::cpu::LOSS_ELBO,
        };
        let ops = plan::forward_ops(self.layout.dims, &self.layout.offsets(), &bt, false);
        self.backend.run(&ops)?;
        let d = self.layout.dims.d;
        let logits = self.backend.read(Buf::Logits, 0..n * d)?;
        Ok(logits
            .chunks(d)
            .map(|r| r.iter().map(|&t| 1.0 / (1.0 + (-t).exp())).collect())
            .collect())
    }

    /// Replace the parameters (e.g. from a checkpoint); `params` in layout order.
    pub fn set_params(&mut self, params: &[f32]) -> Result<()> {
        ensure!(
            params.len() == self.layout.total,
            "parameter count {} does not fit the model ({})",
            params.len(),
            self.layout.total
        );
        self.backend.write(Buf::Params, 0, params)
    }

    /// Everything needed to continue training exactly where it stands:
    /// parameters, Adam moments, step and epoch counters, the shuffle RNG's
    /// position, the epoch history and the config. Reading it back is the only
    /// device work; [`Snapshot::write`] can then run on another thread.
    /// The snapshot of the state after an epoch (from [`Self::finish_epoch`]),
    /// with the epoch history up to it.
    pub fn snapshot_of(&self, st: EpochState, history: &[EpochStats]) -> Snapshot {
        Snapshot {
            layout: self.layout.clone(),
            params: st.params,
            m: st.m,
            v: st.v,
            meta: StateMeta {
                step: st.step,
                epoch: st.epoch,
                rng_word_pos: st.rng_word_pos.to_string(),
                config: self.cfg.clone(),
                history: history.to_vec(),
            },
        }
    }

    /// Restore a state written by [`Snapshot::write`]; returns the
    /// epoch history. The config must match this run's except for `epochs`.
    pub fn load_state(&mut self, path: &Path) -> Result<Vec<EpochStats>> {
        let name = path.display();
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read training state {name} (nothing to resume)"))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow::anyhow!("{name}: not a valid training state ({e})"))?;
        let (_, header) =
            SafeTensors::read_metadata(&bytes).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let meta: StateMeta = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(STATE_KEY))
            .ok_or_else(|| anyhow::anyhow!("{name}: not a vae-ood training state"))
            .and_then(|s| {
                serde_json::from_str(s)
                    .with_context(|| format!("{name}: unreadable training state"))
            })?;
        let mut want = self.cfg.clone();
        want.epochs = meta.config.epochs;
        ensure!(
            serde_json::to_value(&want)? == serde_json::to_value(&meta.config)?,
            "{name}: saved for a different configuration ({}); only --epochs may change on --resume",
            serde_json::to_string(&meta.config)?
        );
        let n = self.layout.total;
        for (t, buf) in [
            ("params", Buf::Params),
            ("adam.m", Buf::AdamM),
            ("adam.v", Buf::AdamV),
        ] {
            let v = st
                .tensor(t)
                .map_err(|_| anyhow::anyhow!("{name}: tensor {t} is missing"))?;
            ensure!(
                v.dtype() == Dtype::F32 && v.shape() == [n],
                "{name}: tensor {t} has the wrong shape or dtype"
            );
            let vals: Vec<f32> = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            self.backend.write(buf, 0, &vals)?;
        }
        self.step = meta.step;
        self.epoch = meta.epoch;
        self.started = meta.epoch;
        let pos: u128 = meta
            .rng_word_pos
            .parse()
            .with_context(|| format!("{name}: bad RNG position"))?;
        self.shuffle_rng.set_word_pos(pos);
        Ok(meta.history)
    }

    pub fn params(&mut self) -> Result<Vec<f32>> {
        self.backend.read(Buf::Params, 0..self.layout.total)
    }
}
