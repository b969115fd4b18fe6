//! Time the reference step's matmul shapes alone on the GPU backend (whatever adapter
//! wgpu picks): first the floor, a one-workgroup dispatch (the gather of one image)
//! run `reps` times in one submission, each waiting for the last (they write one
//! buffer); then each product likewise; then each layer's input and weight
//! gradients, as one `matmul_pair` dispatch and as two (alternating, three rounds).
//! Times are µs per dispatch or product, barriers included. A kernel experiment for
//! comparing matmul variants, not part of the training path.
//!
//!   cargo run --release --example matmul_micro [reps]
use std::time::Instant;
use vae_ood::backend::Backend;
use vae_ood::gpu::{self, GpuBackend};
use vae_ood::model::Layout;
use vae_ood::plan::{self, Buf, Op};

fn main() -> anyhow::Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(4);
    let b = 128;
    let (sizes, ops) = plan::reference_step(b);
    let lay = Layout::new(sizes.dims);
    let store = vec![0u8; b * sizes.dims.d];
    let a = gpu::select_adapter()?.ok_or_else(gpu::no_adapter_error)?;
    let mut be = GpuBackend::new(a, &store, b, sizes)?;
    be.set_fused(false);
    println!("{}", be.describe());
    let init: Vec<f32> = (0..Buf::Logits.len(&sizes))
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.4)
        .collect();
    for buf in [Buf::X, Buf::H1, Buf::H3, Buf::Logits, Buf::Dhead, Buf::Dh3] {
        be.write(buf, 0, &init[..buf.len(&sizes)])?;
    }
    be.write(Buf::Params, 0, &lay.init(1))?;
    be.write_idx(0, &vec![0; b])?;
    let floor = Op::Gather(vae_ood::cpu::GatherParams {
        rows: 1,
        d: sizes.dims.d as u32,
        idx_off: 0,
        _pad: 0,
    });
    for (name, op) in plan::TRAIN_STEP_OP_NAMES.iter().zip(&ops) {
        let (name, op) = match op {
            Op::Gather(_) => ("floor", &floor),
            Op::Matmul { .. } => (*name, op),
            _ => continue,
        };
        let run: Vec<Op> = vec![*op; reps];
        be.run(&run)?;
        be.read(Buf::BatchLoss, 0..1)?;
        let t = Instant::now();
        be.run(&run)?;
        be.read(Buf::BatchLoss, 0..1)?;
        println!(
            "{name:<10} {:>7.1} µs per product ({} dispatches each)",
            t.elapsed().as_secs_f64() * 1e6 / reps as f64,
            be.dispatches(&[*op])
        );
    }
    // the three (dX, dW) pairs of the backward pass: ops 8..9, 10..11, 13..14
    for (name, at) in [("fc4", 8), ("fc3", 10), ("head", 13)] {
        let run: Vec<Op> = (0..reps).flat_map(|_| [ops[at], ops[at + 1]]).collect();
        let mut us = [0.0f64; 2];
        for _ in 0..3 {
            for (v, fused) in [true, false].into_iter().enumerate() {
                be.set_fused(fused);
                be.run(&run)?;
                be.read(Buf::BatchLoss, 0..1)?;
                let t = Instant::now();
                be.run(&run)?;
                be.read(Buf::BatchLoss, 0..1)?;
                us[v] += t.elapsed().as_secs_f64() * 1e6 / reps as f64 / 3.0;
            }
        }
        println!(
            "{name} dX + dW: {:.1} µs as one pair, {:.1} µs as two dispatches",
            us[0], us[1]
        );
    }
    Ok(())
}
