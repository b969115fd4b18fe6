//! Host time to record and submit one training epoch's command buffer (all 427
//! steps in one compute pass) on the GPU backend — the part of an epoch the GPU
//! waits for, since each epoch is recorded after the previous one's loss is read
//! back. Measured on whatever adapter wgpu picks (a kernel experiment, not part of
//! the training path; on lavapipe it times one rep and exits without waiting for
//! the slow execution).
//!
//!   cargo run --release --example encode_cost [reps]
use std::time::Instant;
use vae_ood::backend::DeviceChoice;
use vae_ood::train::{Experiment, TrainConfig};

fn main() -> anyhow::Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3);
    // the whole epoch as one submission (what is timed is the host's part; pieces
    // would wait for a slow software adapter between them)
    // SAFETY: no other thread exists yet to read the environment
    unsafe { std::env::set_var(vae_ood::knobs::GPU_CHUNK, "0") };
    let cfg = TrainConfig::default();
    let mut ex = Experiment::new(cfg, DeviceChoice::Gpu, true)?;
    let steps = ex.splits.train.len().div_ceil(ex.cfg.batch_size);
    let ops: Vec<vae_ood::plan::Op> = vae_ood::bench::epoch_ops(&ex)
        .into_iter()
        .flatten()
        .collect();
    println!(
        "{}: {} ops in {steps} steps",
        ex.backend.describe(),
        ops.len()
    );
    // (on a software adapter a second rep would wait for the first epoch's
    // execution, hours on lavapipe: one rep there)
    let software =
        vae_ood::gpu::select_adapter()?.is_some_and(|a| vae_ood::gpu::is_software(&a.get_info()));
    let reps = if software { 1 } else { reps };
    for r in 0..reps {
        let t = Instant::now();
        ex.backend.run(&ops)?;
        let dt = t.elapsed().as_secs_f64();
        println!(
            "rep {r}: record + submit {:.1} ms ({:.2} µs per op, {:.1} µs per step)",
            dt * 1e3,
            dt * 1e6 / ops.len() as f64,
            dt * 1e6 / steps as f64
        );
    }
    // do not wait for a software adapter to execute it all
    std::process::exit(0)
}
