//! The `vae-ood` command line.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use vae_ood::backend::DeviceChoice;
use vae_ood::plan::AdamConfig;
use vae_ood::report;
use vae_ood::train::TrainConfig;

/// Train a VAE in WGSL compute shaders (or on the CPU) and flag out-of-distribution images.
#[derive(Parser, Debug)]
#[command(
    name = "vae-ood",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// training options (used when no subcommand is given: `train` is the default)
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train the reference experiment and evaluate it (the default)
    Train(TrainArgs),
    /// Evaluate a saved checkpoint on the MNIST splits: both protocols, scores.csv, metrics.json, plots
    Eval(EvalArgs),
    /// Score 28x28 PNG files, folders of PNGs or IDX image files with a saved checkpoint
    Score(ScoreArgs),
    /// List the GPU adapters wgpu can see
    Devices,
    /// Measure training and scoring speed of the reference experiment
    Bench(BenchArgs),
}

#[derive(Args, Debug, Clone)]
struct BenchArgs {
    /// Backend: auto, gpu or cpu
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Timed epochs
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Untimed warm-up epochs before them
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Train on the first N images only
    #[arg(long)]
    train_limit: Option<usize>,
    /// Skip the per-kernel breakdown (same as --breakdown off)
    #[arg(long)]
    no_breakdown: bool,
    /// How to measure the per-kernel breakdown: GPU timestamps where the adapter has
    /// them (auto), or each op alone over an epoch
    #[arg(long, value_enum, default_value_t = vae_ood::bench::Breakdown::Auto)]
    breakdown: vae_ood::bench::Breakdown,
    /// Print one JSON line instead of the table
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug, Clone)]
struct TrainArgs {
    /// Backend: auto (hardware GPU if present, else CPU), gpu (wgpu shaders, any adapter), cpu
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Folder with the four gzipped IDX files of MNIST (or Fashion-MNIST)
    #[arg(long, default_value = "data/mnist")]
    data: PathBuf,
    /// The digit held out of training and used as the anomaly class (0-9)
    #[arg(long, default_value_t = 5)]
    holdout_digit: u8,
    /// Training epochs
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Images per training batch
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Adam learning rate
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Seed for initialisation, shuffling and ε
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Latent dimension
    #[arg(long, default_value_t = 20)]
    latent: usize,
    /// Hidden layer width
    #[arg(long, default_value_t = 400)]
    hidden: usize,
    /// Train on the first N training images only (quick runs)
    #[arg(long)]
    train_limit: Option<usize>,
    /// Images per scoring batch
    #[arg(long, default_value_t = 1024)]
    score_batch: usize,
    /// Output folder
    #[arg(long, default_value = "output")]
    out: PathBuf,
    /// Print only errors
    #[arg(short, long)]
    quiet: bool,
    /// Continue from OUT/train_state.safetensors (written after every epoch) up to --epochs
    #[arg(long)]
    resume: bool,
}

impl TrainArgs {
    fn config(&self) -> TrainConfig {
        TrainConfig {
            data_dir: self.data.clone(),
            holdout_digit: self.holdout_digit,
            epochs: self.epochs,
            batch_size: self.batch_size,
            adam: AdamConfig {
                lr: self.lr,
                ..AdamConfig::default()
            },
            seed: self.seed,
            hidden: self.hidden,
            latent: self.latent,
            train_limit: self.train_limit,
            score_batch: self.score_batch,
        }
    }
}

fn main() {
    quiet_mesa_without_runtime_dir();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run() {
        // one line: the error and its causes joined
        let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("error: {}", msg.join(": "));
        std::process::exit(1);
    }
}

/// Mesa's Vulkan drivers print "error: XDG_RUNTIME_DIR is invalid or not set" on
/// every device probe when that variable is missing (containers, CI, cron). Give the
/// process a private one so that the only `error:` line a user sees is ours. Runs
/// first in `main`, before any thread exists.
fn quiet_mesa_without_runtime_dir() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("vae-ood-runtime-{uid}"));
    if std::fs::create_dir_all(&dir).is_ok()
        && std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).is_ok()
    {
        std::env::set_var("XDG_RUNTIME_DIR", &dir);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    vae_ood::knobs::check()?;
    match cli.command {
        None => train(&cli.train),
        Some(Command::Train(a)) => train(&a),
        Some(Command::Devices) => devices(),
        Some(Command::Eval(a)) => vae_ood::evaluate::eval(&a.options()),
        Some(Command::Score(a)) => vae_ood::evaluate::score(&a.options()),
        Some(Command::Bench(b)) => {
            let cfg = TrainConfig {
                train_limit: b.train_limit,
                ..TrainConfig::default()
            };
            let breakdown = if b.no_breakdown {
                vae_ood::bench::Breakdown::Off
            } else {
                b.breakdown
            };
            let r = vae_ood::bench::bench(cfg, b.device, b.epochs, b.warmup, breakdown)?;
            if b.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                vae_ood::bench::print(&r);
            }
            Ok(())
        }
    }
}

fn train(a: &TrainArgs) -> Result<()> {
    report::train_and_report(a.config(), a.device, &a.out, a.quiet, a.resume)
}

fn devices() -> Result<()> {
    let list = vae_ood::gpu::list_adapters();
    if list.is_empty() {
        println!(
            "no GPU adapters found (apt-get install mesa-vulkan-drivers libvulkan1 for Vulkan)"
        );
    }
    for (a, f) in list {
        let summary = if vae_ood::gpu::backend_used(a.backend) {
            f.summary()
        } else {
            format!("not used: {}", vae_ood::gpu::GL_NOT_USED)
        };
        println!(
            "{:?}\t{:?}\t{}\t{} {}\t{}",
            a.backend, a.device_type, a.name, a.driver, a.driver_info, summary
        );
    }
    Ok(())
}

#[derive(Args, Debug, Clone)]
struct EvalArgs {
    /// The checkpoint written by training (model.safetensors); its tensors give the layer sizes
    #[arg(long)]
    checkpoint: PathBuf,
    /// Folder with the four gzipped IDX files [default: the checkpoint's training data folder, else data/mnist]
    #[arg(long)]
    data: Option<PathBuf>,
    /// The digit treated as the anomaly class, 0-9 [default: the checkpoint's, else 5]
    #[arg(long)]
    holdout_digit: Option<u8>,
    /// Seed of the scoring ε [default: the checkpoint's, else 1]
    #[arg(long)]
    seed: Option<u64>,
    /// Score only the first N training images [default: the checkpoint's --train-limit, else all]
    #[arg(long, conflicts_with = "full_train")]
    train_limit: Option<usize>,
    /// Score every training image even if the checkpoint was trained with --train-limit
    #[arg(long)]
    full_train: bool,
    /// Images per scoring batch [default: the checkpoint's, else 1024]
    #[arg(long)]
    score_batch: Option<usize>,
    #[command(flatten)]
    model: ModelArgs,
    /// Output folder for metrics.json, scores.csv, roc.png, score_hist.png, recon_*.png
    #[arg(long, default_value = "output/eval")]
    out: PathBuf,
    /// Print only errors
    #[arg(short, long)]
    quiet: bool,
}

impl EvalArgs {
    fn options(&self) -> vae_ood::evaluate::EvalOptions {
        vae_ood::evaluate::EvalOptions {
            checkpoint: self.checkpoint.clone(),
            data: self.data.clone(),
            holdout_digit: self.holdout_digit,
            seed: self.seed,
            score_batch: self.score_batch,
            train_limit: self.train_limit,
            full_train: self.full_train,
            hidden: self.model.hidden,
            latent: self.model.latent,
            device: self.model.device,
            out: self.out.clone(),
            quiet: self.quiet,
        }
    }
}

/// Checks on the checkpoint and the backend, shared by `eval` and `score`.
#[derive(Args, Debug, Clone)]
struct ModelArgs {
    /// Refuse a checkpoint whose hidden layer width is not this
    #[arg(long)]
    hidden: Option<usize>,
    /// Refuse a checkpoint whose latent dimension is not this
    #[arg(long)]
    latent: Option<usize>,
    /// Backend: auto (hardware GPU if present, else CPU), gpu (wgpu shaders, any adapter), cpu
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
}

#[derive(Args, Debug, Clone)]
struct ScoreArgs {
    /// The checkpoint written by training (model.safetensors)
    #[arg(long)]
    checkpoint: PathBuf,
    /// 28x28 PNG files, folders (their *.png files, sorted by name) and IDX image files (.gz or plain)
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// CSV file to write, one `name,score_neg_elbo` row per image in input order (replaced atomically)
    #[arg(long, default_value = "output/score.csv")]
    out: PathBuf,
    /// Seed of the scoring ε [default: the checkpoint's, else 1]
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    model: ModelArgs,
    /// Print only errors
    #[arg(short, long)]
    quiet: bool,
}

impl ScoreArgs {
    fn options(&self) -> vae_ood::evaluate::ScoreOptions {
        vae_ood::evaluate::ScoreOptions {
            checkpoint: self.checkpoint.clone(),
            inputs: self.inputs.clone(),
            out: self.out.clone(),
            seed: self.seed,
            hidden: self.model.hidden,
            latent: self.model.latent,
            device: self.model.device,
            quiet: self.quiet,
        }
    }
}
