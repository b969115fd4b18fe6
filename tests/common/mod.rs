//! Shared test helpers: backends to run one test body on, random data, comparison.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use vae_ood::backend::Backend;
use vae_ood::cpu_backend::CpuBackend;
use vae_ood::gpu::{self, Coop, GpuBackend, GpuOptions, Reduce, ShaderChecks, Subgroups};
use vae_ood::plan::Sizes;

/// Set to 1 to let GPU tests pass without an adapter (for users without Vulkan).
/// CI never sets it: there a missing adapter fails the GPU tests.
pub const SKIP_ENV: &str = "VAE_OOD_SKIP_GPU_TESTS";

/// Set to 1 to make the tensor-core tests (`tensor_core_walk_against_its_twin`,
/// `the_persistent_step_on_the_tensor_cores_gives_its_dispatches_bits`) fail where
/// the adapter has no cooperative matrices it can use (bench/device-check.sh sets
/// it on the GPU machines, whose tensor cores the walk is for;
/// tools/coop-lavapipe.sh on a Mesa ≥ 25.1 lavapipe). Without it, such an adapter
/// (CI's Mesa 22 lavapipe) gets what can be checked there instead, and the test
/// says the tensor-core part did not run.
pub const REQUIRE_COOP_ENV: &str = "VAE_OOD_TEST_REQUIRE_COOP";

/// The wgpu backend on whatever adapter wgpu picks (lavapipe in CI), with the
/// options of the environment but the FMA walk unless `VAE_OOD_GPU_COOP=1` asks
/// for the tensor cores ([`test_options`]). Panics when there is none, unless
/// VAE_OOD_SKIP_GPU_TESTS=1, in which case it returns None and the test says it
/// skipped.
pub fn gpu_backend(store: &[u8], idx_len: usize, sizes: Sizes) -> Option<Box<dyn Backend>> {
    match gpu::select_adapter().expect("adapter selection") {
        Some(a) => Some(Box::new(
            GpuBackend::with_options(a, store, idx_len, sizes, test_options())
                .expect("GPU backend"),
        )),
        None => {
            if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
                eprintln!("SKIPPED: no GPU adapter and {SKIP_ENV}=1");
                None
            } else {
                panic!(
                    "no GPU adapter found: install mesa-vulkan-drivers libvulkan1 (lavapipe), or set {SKIP_ENV}=1 to skip GPU tests"
                );
            }
        }
    }
}

/// The environment's options ([`GpuOptions::from_env`]) with the FMA walk where
/// the program would choose the tensor cores by itself (`VAE_OOD_GPU_COOP` unset):
/// the tests compare f32 products with their CPU twins within f32 tolerances, which
/// f16 operands would not meet; the tensor-core walk has a test of its own with its
/// own tolerances (`tests/kernels.rs`, `tensor_core_walk_against_its_twin`).
pub fn test_options() -> GpuOptions {
    let env = GpuOptions::from_env();
    GpuOptions {
        coop: match env.coop {
            Coop::Auto => Coop::Off,
            c => c,
        },
        ..env
    }
}

pub fn cpu_backend(store: &[u8], idx_len: usize, sizes: Sizes) -> Box<dyn Backend> {
    Box::new(CpuBackend::new(store, idx_len, sizes))
}

/// The wgpu backend with the workgroup reductions of variant `r`, whatever
/// VAE_OOD_NO_SUBGROUPS says. `Reduce::Subgroup` requires the adapter to offer
/// `Features::SUBGROUP` (lavapipe, the CI adapter, does) and panics otherwise.
/// None (test skipped) only as `gpu_backend`: no adapter and VAE_OOD_SKIP_GPU_TESTS=1.
pub fn gpu_variant(
    store: &[u8],
    idx_len: usize,
    sizes: Sizes,
    r: Reduce,
) -> Option<Box<dyn Backend>> {
    let a = match gpu::select_adapter().expect("adapter selection") {
        Some(a) => a,
        None => return gpu_backend(store, idx_len, sizes), // skips or panics
    };
    let subgroups = match r {
        Reduce::Portable => Subgroups::Off,
        Reduce::Subgroup => {
            assert!(
                a.features().contains(wgpu::Features::SUBGROUP),
                "GPU adapter {} does not offer Features::SUBGROUP: the subgroup reductions cannot be tested on it",
                a.get_info().name
            );
            Subgroups::Require
        }
    };
    let be = GpuBackend::with_options(
        a,
        store,
        idx_len,
        sizes,
        GpuOptions {
            subgroups,
            checks: ShaderChecks::All,
            ..GpuOptions::default()
        },
    )
    .expect("GPU backend");
    let want = match r {
        Reduce::Portable => "portable reductions",
        Reduce::Subgroup => "subgroup reductions",
    };
    assert!(be.describe().contains(want), "{}", be.describe());
    Some(Box::new(be))
}

/// Every backend: the CPU one, then the GPU one in both reduction variants
/// (portable, subgroup) when an adapter is available (see `gpu_backend`).
pub fn all_backends(store: &[u8], idx_len: usize, sizes: Sizes) -> Vec<Box<dyn Backend>> {
    let mut v = vec![cpu_backend(store, idx_len, sizes)];
    for r in Reduce::ALL {
        if let Some(g) = gpu_variant(store, idx_len, sizes, r) {
            v.push(g);
        }
    }
    v
}

/// A fresh RNG: seeded from the clock unless VAE_OOD_TEST_SEED is set; the seed is
/// printed so a failure can be replayed.
pub fn fresh_rng(name: &str) -> rand::rngs::StdRng {
    let seed = std::env::var("VAE_OOD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{name}: VAE_OOD_TEST_SEED={seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

pub fn uniform(rng: &mut impl Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// Assert |a − b| ≤ atol + rtol·|b| element-wise, reporting the worst element.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0.0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.is_finite() == w.is_finite(),
            "{what}[{i}]: got {g}, want {w}"
        );
        if !g.is_finite() {
            continue; // both poisoned (untouched): compared by the caller's region checks
        }
        let err = (g - w).abs() - (atol + rtol * w.abs());
        if err > worst.1 || err.is_nan() {
            worst = (i, err);
        }
    }
    let (i, e) = worst;
    assert!(
        e <= 0.0,
        "{what}[{i}]: got {}, want {} (|diff| {} > atol {atol} + rtol {rtol}·|want|)",
        got[i],
        want[i],
        (got[i] - want[i]).abs()
    );
}

use vae_ood::model::{Dims, Layout};
use vae_ood::plan::{self, AdamConfig, Batch, Op};

/// Sizes for a tiny model and batch (no image store needed).
pub fn tiny_sizes(dims: Dims, b: usize) -> Sizes {
    run_sizes(dims, b, 1, 1)
}

/// Buffers for a run of `batches` batches of `b` images each with up to `draws` z
/// draws per image: one loss slot per image and per batch.
pub fn run_sizes(dims: Dims, b: usize, draws: usize, batches: usize) -> Sizes {
    Sizes {
        dims,
        params: Layout::new(dims).total,
        max_images: b,
        max_rows: b * draws,
        sample_slots: batches * b,
        batch_slots: batches,
    }
}

/// A training step on inputs already in X and noise already in Eps: the real
/// `plan::train_step_ops` without its Gather op, with ε read from Eps. With
/// `adam: None`, forward and backward only.
pub fn step_ops_given(dims: Dims, b: usize, adam: Option<(AdamConfig, u64)>) -> Vec<Op> {
    let lay = Layout::new(dims);
    let bt = Batch::train_step(0, b, b, 0, 0);
    let (cfg, t) = adam.unwrap_or((AdamConfig::default(), 1));
    let mut ops = plan::train_step_ops(dims, &lay.offsets(), &bt, lay.total, &cfg, t);
    assert!(matches!(ops[0], Op::Gather(_)));
    ops.remove(0);
    for op in ops.iter_mut() {
        if let Op::ReparamForward(p) = op {
            p.eps_given = 1;
        }
    }
    if adam.is_none() {
        assert!(matches!(ops.last(), Some(Op::Adam(_))));
        ops.pop();
    }
    ops
}

/// `len` image bytes, each drawn uniformly with probability `nonzero`, else 0
/// (MNIST has ~0.19 of its pixels nonzero).
pub fn image_bytes(rng: &mut impl Rng, len: usize, nonzero: f64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            if rng.random_bool(nonzero) {
                rng.random()
            } else {
                0
            }
        })
        .collect()
}

/// `n` random image ids below `n_img`.
pub fn random_idx(rng: &mut impl Rng, n: usize, n_img: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..n_img as u32)).collect()
}

/// The CPU backend with `idx` written, `params` loaded and Adam's moments zeroed:
/// ready for training steps.
pub fn cpu_backend_ready(store: &[u8], idx: &[u32], sizes: Sizes, params: &[f32]) -> CpuBackend {
    use vae_ood::plan::Buf;
    let mut be = CpuBackend::new(store, idx.len(), sizes);
    be.write_idx(0, idx).unwrap();
    be.write(Buf::Params, 0, params).unwrap();
    be.write(Buf::AdamM, 0, &vec![0.0; params.len()]).unwrap();
    be.write(Buf::AdamV, 0, &vec![0.0; params.len()]).unwrap();
    be
}

/// `steps` training steps of `b` images each as one op list (an epoch's shape):
/// step s reads idx[s·b..], draws noise stream s + 1 of `seed`, writes loss slot s,
/// and takes Adam step t0 + s + 1 with the default hyper-parameters.
pub fn train_steps_ops(dims: Dims, b: usize, steps: usize, seed: u32, t0: u64) -> Vec<Op> {
    let lay = Layout::new(dims);
    (0..steps)
        .flat_map(|s| {
            let bt = Batch::train_step(s, steps * b, b, seed, s as u32 + 1);
            let o = lay.offsets();
            plan::train_step_ops(
                dims,
                &o,
                &bt,
                lay.total,
                &AdamConfig::default(),
                t0 + s as u64 + 1,
            )
        })
        .collect()
}
