//! A/B timing of two CPU-backend variants in one process, epochs interleaved, so
//! that a busy or drifting machine slows both alike (a kernel experiment, not part
//! of the training path).
//!
//!   cargo run --release --example cpu_ab -- VAE_OOD_CPU_UNFUSED [rounds]
//!
//! Variant B is built with the environment variable set to 1, variant A without it;
//! both train the reference experiment from the same seed. Prints each round's epoch
//! times and the median of the per-round ratios B / A.
use std::time::Instant;
use vae_ood::backend::DeviceChoice;
use vae_ood::train::{Experiment, TrainConfig};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let var = args.next().unwrap_or_else(|| "VAE_OOD_CPU_UNFUSED".into());
    let rounds: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let make = |on: bool| {
        // SAFETY: single-threaded here (no other thread reads the environment yet)
        unsafe {
            if on {
                std::env::set_var(&var, "1")
            } else {
                std::env::remove_var(&var)
            }
        }
        Experiment::new(TrainConfig::default(), DeviceChoice::Cpu, true)
    };
    let (mut a, mut b) = (make(false)?, make(true)?);
    a.train_epoch()?; // warm-up
    b.train_epoch()?;
    let mut ratios = Vec::new();
    for r in 0..rounds {
        let t = Instant::now();
        let sa = a.train_epoch()?;
        let ta = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let sb = b.train_epoch()?;
        let tb = t.elapsed().as_secs_f64();
        println!(
            "round {r}: A {ta:.3} s (loss {:.4})  B [{var}=1] {tb:.3} s (loss {:.4})  B/A {:.3}",
            sa.train_loss,
            sb.train_loss,
            tb / ta
        );
        ratios.push(tb / ta);
    }
    ratios.sort_by(f64::total_cmp);
    println!("median B/A over {rounds} rounds: {:.3}", ratios[rounds / 2]);
    Ok(())
}
