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
#[command(name = "vae-ood", version, about, args_conflicts_with_subcommands = true)]
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
    /// List the GPU adapters wgpu can see
    Devices,
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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run() {
        // one line: the error and its causes joined
        let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("error: {}", msg.join(": "));
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => train(&cli.train),
        Some(Command::Train(a)) => train(&a),
        Some(Command::Devices) => devices(),
    }
}

fn train(a: &TrainArgs) -> Result<()> {
    report::train_and_report(a.config(), a.device, &a.out, a.quiet)
}

fn devices() -> Result<()> {
    let list = vae_ood::gpu::list_adapters();
    if list.is_empty() {
        println!("no GPU adapters found (apt-get install mesa-vulkan-drivers libvulkan1 for Vulkan)");
    }
    for a in list {
        println!("{:?}\t{:?}\t{}\t{} {}", a.backend, a.device_type, a.name, a.driver, a.driver_info);
    }
    Ok(())
}
