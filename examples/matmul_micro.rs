//! Time the reference step's matmul shapes alone on the GPU backend (whatever adapter
//! wgpu picks): first the floor, a one-workgroup dispatch (the gather of one image)
//! run `reps` times in one submission, each waiting for the last (they write one
//! buffer); then each product likewise; then each layer's input and weight
//! gradients, as one `matmul_pair` dispatch and as two (alternating, three rounds).
//! Times are µs per dispatch or product, barriers included. A kernel experiment for
//! comparing matmul variants, not part of the training path.
//!
//! With `ksweep` as the second argument it times instead three output shapes over a
//! range of K (each unsplit: run it with `VAE_OOD_SPLIT_TARGET=1`) and fits a line:
//! µs per 32 of K (a tile's K step, its cost once the pipeline is full) and the
//! fixed cost (launch, first loads, epilogue, drain) — whether the products are
//! bound by their K steps or by what surrounds them, and what a matmul variant
//! changes of each.
//!
//!   cargo run --release --example matmul_micro [reps] [ksweep]
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
    let ksweep = std::env::args().nth(2).as_deref() == Some("ksweep");
    let init: Vec<f32> = (0..Buf::Logits.len(&sizes))
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.4)
        .collect();
    for buf in [
        Buf::X,
        Buf::H1,
        Buf::H3,
        Buf::Logits,
        Buf::Dhead,
        Buf::Dh3,
        Buf::Dh1,
    ] {
        be.write(buf, 0, &init[..buf.len(&sizes)])?;
    }
    be.write(Buf::Params, 0, &lay.init(1))?;
    be.write_idx(0, &vec![0; b])?;
    if ksweep {
        return k_sweep(&mut be, &lay, reps);
    }
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

/// Products of four output shapes — 128 × 400 (52 tiles, as fc1's forward), 128 ×
/// 784 (100, as fc4's), 400 × 784 (325) with A as stored and as fc1's weight gradient
/// reads it (A transposed, bias gradient too; K is the batch, so up to 128) — over
/// K from 32 up, each `reps` times in one submission (each waiting for the last),
/// µs per product; then per shape the least-squares line through them: µs per 32
/// of K and the fixed cost at K = 0.
fn k_sweep(be: &mut GpuBackend, lay: &Layout, reps: usize) -> anyhow::Result<()> {
    use vae_ood::cpu::MatmulParams;
    use vae_ood::model::Offsets;
    let o = lay.offsets();
    // (name, A, B, C, params for K = k, largest K)
    type Shape = (
        &'static str,
        Buf,
        Buf,
        Buf,
        fn(u32, &Offsets) -> MatmulParams,
        u32,
    );
    let shapes: [Shape; 4] = [
        // x (128, k) · W1ᵀ (k, 400) → h1
        (
            "128x400",
            Buf::X,
            Buf::Params,
            Buf::H1,
            |k, o| MatmulParams::linear(128, k as usize, 400, o.w1, o.b1, false),
            784,
        ),
        // h1 (128, k) · W4ᵀ (k, 784) → logits
        (
            "128x784",
            Buf::H1,
            Buf::Params,
            Buf::Logits,
            |k, o| MatmulParams::linear(128, k as usize, 784, o.w4, o.b4, false),
            400,
        ),
        // W4 as A (400, k) · W1 as B (k, 784) → grads
        (
            "400x784",
            Buf::Params,
            Buf::Params,
            Buf::Grads,
            |k, o| MatmulParams {
                m: 400,
                n: 784,
                k,
                a_off: o.w4 as u32,
                a_si: k,
                a_sp: 1,
                b_off: o.w1 as u32,
                b_sp: 784,
                b_sj: 1,
                c_si: 784,
                ..Default::default()
            },
            384,
        ),
        // fc1's weight gradient over k images: dh1ᵀ (400, k) · x (k, 784) → dW1, db1
        (
            "400x784 dW",
            Buf::Dh1,
            Buf::X,
            Buf::Grads,
            |k, o| MatmulParams::linear_backward_weight(k as usize, 784, 400, o.w1, o.b1),
            128,
        ),
    ];
    for (name, a, b, c, params, k_max) in shapes {
        let mut points = Vec::new();
        for k in [32u32, 64, 128, 192, 256, 384, 512, 784]
            .into_iter()
            .filter(|&k| k <= k_max)
        {
            let op = Op::Matmul {
                a,
                b,
                e: Buf::Params,
                c,
                p: params(k, &o),
            };
            let run: Vec<Op> = vec![op; reps];
            be.run(&run)?;
            be.read(Buf::BatchLoss, 0..1)?;
            let t = Instant::now();
            be.run(&run)?;
            be.read(Buf::BatchLoss, 0..1)?;
            let us = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
            println!(
                "{name} K {k:>3}: {us:>7.1} µs per product ({} dispatches each)",
                be.dispatches(&[op])
            );
            points.push((k as f64 / 32.0, us));
        }
        let n = points.len() as f64;
        let (sx, sy) = points
            .iter()
            .fold((0.0, 0.0), |s, p| (s.0 + p.0, s.1 + p.1));
        let (mx, my) = (sx / n, sy / n);
        let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let sxx: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
        let slope = sxy / sxx;
        println!(
            "{name}: {slope:.2} µs per 32 of K, {:.1} µs fixed",
            my - slope * mx
        );
    }
    Ok(())
}
