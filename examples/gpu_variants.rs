//! MNIST training steps (batch 128, the reference model) on the GPU backend in the
//! variants that `bench/gpu.sh` compares, in turn, on whatever adapter wgpu picks:
//! the default (trusted shader modules: no index clamps, loop-bounding counters,
//! division guards or zeroed workgroup memory); checked modules
//! (`VAE_OOD_GPU_TRUSTED=0`); every check but the loop-bounding counters
//! (`=loops`); the matmul reading its next K step after the multiply, not before
//! (`VAE_OOD_GPU_PREFETCH=0`); bias gradients as a column of ones
//! (`VAE_OOD_GPU_ONES_COLUMN=1`); the latent kernels in workgroups of 256 threads
//! (`VAE_OOD_GPU_LATENT_THREADS`); with Adam in the triple
//! (`VAE_OOD_GPU_TRIPLE_ADAM=1`); the matmul on tensor cores
//! (`VAE_OOD_GPU_COOP=1`, where the adapter has them); double-buffered matmul tiles
//! (`VAE_OOD_GPU_DOUBLE_TILES=1`); the BCE kernel instead of the default's BCE in
//! fc4's split epilogue (`VAE_OOD_GPU_BCE_EPILOGUE=0`), also on tensor cores, and
//! the epilogue on the unsplit product (`VAE_OOD_GPU_BCE_SPLIT=0`); with early
//! reads (`VAE_OOD_GPU_EARLY_READS=1`), alone, with the tensor cores, and with
//! Adam in the triple; all of them (tensor cores, the BCE epilogue, split or not,
//! Adam in the triple, early reads: six dispatches per step); without the latent fusion, without the
//! weight-gradient triple, without the gather in fc1's product, without the
//! gradient pairs, without the folded reduces, and without all of them
//! (`VAE_OOD_GPU_UNFUSED=latent|triple|gather|pairs|reduces|1`); the latent forward
//! in fc1's product and the latent backward in fc4's gradient pair
//! (`VAE_OOD_GPU_LATENT_FC1=1`, `VAE_OOD_GPU_LATENT_PAIR=1`), alone and with all
//! the rest, and with all the rest
//! the triple's Adam tail in the next step's fc1 (`VAE_OOD_GPU_TAIL_FC1=1`), on the
//! tensor cores and on the FMA walk. Each round runs `steps`
//! steps in one run per variant; then two steps per variant with per-op timestamps
//! in the second (as inside an epoch; before 2026-11-27 a lone first step, whose
//! gather ran in fc1's dispatch) where the adapter has them. A kernel experiment, not part of the training path;
//! on lavapipe a step takes about a quarter of a second.
//!
//!   cargo run --release --example gpu_variants [rounds] [steps]
use rand::{Rng, SeedableRng};
use std::time::Instant;
use vae_ood::backend::Backend;
use vae_ood::gpu::{self, Coop, Fusions, GpuBackend, GpuOptions, ShaderChecks, Subgroups};
use vae_ood::model::Layout;
use vae_ood::plan::{self, Buf};

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3);
    let steps: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1);
    let b = 128;
    let (sizes, ops) = plan::reference_step(b);
    let (dims, lay) = (sizes.dims, Layout::new(sizes.dims));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    // MNIST-like bytes: ~19 % of pixels lit
    let store: Vec<u8> = (0..b * dims.d)
        .map(|_| {
            if rng.random::<f32>() < 0.19 {
                rng.random()
            } else {
                0
            }
        })
        .collect();
    let idx: Vec<u32> = (0..b as u32).collect();
    let mut backends = Vec::new();
    let all = Fusions::DEFAULT;
    let d = GpuOptions {
        subgroups: Subgroups::Auto,
        ..GpuOptions::default()
    };
    // the tensor cores with early reads, as the sweep's all_in configurations run
    let tc_early = GpuOptions {
        coop: Coop::Require,
        early_reads: true,
        ..d
    };
    let without = |f: fn(&mut Fusions)| {
        let mut x = all;
        f(&mut x);
        x
    };
    // every fusion that removes a dispatch (4 per step), with the triple's Adam tail
    // in the next step's fc1
    let all_in_tail = without(|f| {
        f.adam = true;
        f.latent_fc1 = true;
        f.latent_pair = true;
        f.tail_fc1 = true
    });
    use ShaderChecks::{All, NoLoopBounds};
    for (name, opts, f) in [
        ("default", d, all),
        ("checked", GpuOptions { checks: All, ..d }, all),
        (
            "no loop counters",
            GpuOptions {
                checks: NoLoopBounds,
                ..d
            },
            all,
        ),
        (
            "no prefetch",
            GpuOptions {
                prefetch: false,
                ..d
            },
            all,
        ),
        (
            "ones column",
            GpuOptions {
                ones_column: Some(true),
                ..d
            },
            all,
        ),
        (
            "latent 256",
            GpuOptions {
                latent_threads: Some(256),
                ..d
            },
            all,
        ),
        (
            "tensor cores",
            GpuOptions {
                coop: Coop::Require,
                ..d
            },
            all,
        ),
        (
            "double tiles",
            GpuOptions {
                double_tiles: true,
                ..d
            },
            all,
        ),
        ("bce kernel", d, without(|f| f.bce = false)),
        ("bce unsplit", d, without(|f| f.bce_split = false)),
        (
            "tensor cores, bce kernel",
            GpuOptions {
                coop: Coop::Require,
                ..d
            },
            without(|f| f.bce = false),
        ),
        (
            "early reads",
            GpuOptions {
                early_reads: true,
                ..d
            },
            all,
        ),
        ("tc, early", tc_early, all),
        (
            "adam tri, early",
            GpuOptions {
                early_reads: true,
                ..d
            },
            without(|f| f.adam = true),
        ),
        (
            "all in, bce unsplit",
            tc_early,
            without(|f| {
                f.adam = true;
                f.bce_split = false
            }),
        ),
        ("all in", tc_early, without(|f| f.adam = true)),
        ("latent in fc1", d, without(|f| f.latent_fc1 = true)),
        (
            "all in, latent in fc1",
            tc_early,
            without(|f| {
                f.adam = true;
                f.latent_fc1 = true
            }),
        ),
        ("latent in pair", d, without(|f| f.latent_pair = true)),
        (
            "all in, latent in fc1 and pair",
            tc_early,
            without(|f| {
                f.adam = true;
                f.latent_fc1 = true;
                f.latent_pair = true
            }),
        ),
        (
            "all in, latent in fc1 and pair, tail in fc1",
            tc_early,
            all_in_tail,
        ),
        (
            "all in on the fma walk, tail in fc1",
            GpuOptions {
                early_reads: true,
                ..d
            },
            all_in_tail,
        ),
        ("no latent fusion", d, without(|f| f.latent = false)),
        ("no triple", d, without(|f| f.triple = false)),
        ("adam in triple", d, without(|f| f.adam = true)),
        ("no gather in fc1", d, without(|f| f.gather = false)),
        ("no pairs", d, without(|f| f.pairs = false)),
        ("no folds", d, without(|f| f.reduces = false)),
        ("unfused", d, Fusions::NONE),
    ] {
        let a = gpu::select_adapter()?.ok_or_else(gpu::no_adapter_error)?;
        if let (Coop::Require, Err(why)) = (opts.coop, gpu::coop_support(&a)) {
            println!("{name}: not run: the adapter {why}");
            continue;
        }
        let mut be = GpuBackend::with_options(a, &store, idx.len(), sizes, opts)?;
        be.set_fusions(f);
        be.write_idx(0, &idx)?;
        be.write(Buf::Params, 0, &lay.init(1))?;
        be.write(Buf::AdamM, 0, &vec![0.0; lay.total])?;
        be.write(Buf::AdamV, 0, &vec![0.0; lay.total])?;
        be.run(&ops)?; // warm
        be.read(Buf::BatchLoss, 0..1)?;
        println!(
            "{name}: {}, {} dispatches per step",
            be.describe(),
            vae_ood::bench::dispatches_per_step(&be, &ops).unwrap_or(0)
        );
        backends.push((name, be));
    }
    let many: Vec<_> = (0..steps).flat_map(|_| ops.iter().copied()).collect();
    let mut ms = vec![Vec::new(); backends.len()];
    for _ in 0..rounds {
        for (i, (_, be)) in backends.iter_mut().enumerate() {
            let t = Instant::now();
            be.run(&many)?;
            be.read(Buf::BatchLoss, 0..1)?; // waits for the steps
            ms[i].push(t.elapsed().as_secs_f64() * 1e3 / steps as f64);
        }
    }
    for ((name, _), v) in backends.iter().zip(&ms) {
        let mut s = v.clone();
        s.sort_by(f64::total_cmp);
        println!(
            "{name:<16} {:.3} ms per training step, median of {rounds} rounds (min {:.3}, max {:.3})",
            s[s.len() / 2],
            s[0],
            s[s.len() - 1]
        );
    }
    // where the time goes, where the adapter has timestamps: the second of two more
    // steps per variant (as inside an epoch: its gather beside the first's Adam, or
    // in its fc1 with Adam in the triple; the latent forward in fc1 where
    // VAE_OOD_GPU_LATENT_FC1's fusion is on, and the latent backward in fc4's pair
    // where VAE_OOD_GPU_LATENT_PAIR's is)
    let two: Vec<_> = ops.iter().chain(&ops).copied().collect();
    for (name, be) in backends.iter_mut() {
        if let Some(ns) = be.run_timed(&two, ops.len()..two.len())? {
            let parts: Vec<String> = plan::TRAIN_STEP_OP_NAMES
                .iter()
                .zip(&ns)
                .map(|(n, t)| format!("{n} {:.1}", t * 1e-3))
                .collect();
            println!("{name:<16} µs per op: {}", parts.join(", "));
        }
    }
    Ok(())
}
