//! Every shader against its CPU twin (src/cpu/*.rs), on fresh random inputs, at
//! sizes that cross workgroup boundaries (37 rows, 53 and 129 columns against
//! 32×32 matmul tiles, 64- and 256-thread workgroups), with every output buffer
//! poisoned (NaN) before the kernel runs. Checks, for each kernel:
//! - the CPU twin wrote every element of the output region and nothing outside it;
//! - the GPU wrote the same region, equal to the CPU within a stated tolerance.
//!
//! Runs on lavapipe in CI; fails without an adapter (see tests/common).
// output regions are lists of ranges; most kernels write one
#![allow(clippy::single_range_in_vec_init)]

mod common;

use common::*;
use rand::Rng;
use std::ops::Range;
use vae_ood::backend::Backend;
use vae_ood::cpu::matmul::{MM_BIAS, MM_BIASGRAD, MM_MASK, MM_RELU};
use vae_ood::cpu::*;
use vae_ood::gpu::{choose_splits, Reduce};
use vae_ood::model::Dims;
use vae_ood::plan::{Buf, Op, Sizes};

const D: usize = 129;
const SIZES: Sizes = Sizes {
    dims: Dims { d: D, h: 67, l: 5 },
    params: 20_000,
    max_images: 300,
    max_rows: 600,
    sample_slots: 700,
    batch_slots: 9,
};
const N_IMAGES: usize = 50;

struct Case<'a> {
    name: &'a str,
    store: Vec<u8>,
    idx: Vec<u32>,
    inputs: Vec<(Buf, Vec<f32>)>,
    /// output buffer, the regions the kernel must write, atol, rtol
    outputs: Vec<(Buf, Vec<Range<usize>>, f32, f32)>,
    op: Op,
}

/// `c` on every backend (CPU, then GPU with portable and with subgroup reductions).
fn run_case(c: Case) {
    run_case_on(&mut all_backends(&c.store, c.idx.len(), SIZES), SIZES, &c);
}

/// `c` on backends created with `sizes` (the CPU one first; `c.store` is ignored:
/// the backends hold theirs).
fn run_case_on(backends: &mut [Box<dyn Backend>], sizes: Sizes, c: &Case) {
    let mut results: Vec<(String, Vec<Vec<f32>>)> = Vec::new();
    for be in backends.iter_mut() {
        be.write_idx(0, &c.idx).unwrap();
        for (b, v) in &c.inputs {
            be.write(*b, 0, v).unwrap();
        }
        for (b, ..) in &c.outputs {
            if !c.inputs.iter().any(|(i, _)| i == b) {
                be.write(*b, 0, &vec![f32::NAN; b.len(&sizes)]).unwrap();
            }
        }
        be.run(&[c.op]).unwrap();
        let outs = c
            .outputs
            .iter()
            .map(|(b, ..)| be.read(*b, 0..b.len(&sizes)).unwrap())
            .collect();
        results.push((be.describe(), outs));
    }
    let ran: Vec<&str> = results.iter().map(|r| r.0.as_str()).collect();
    eprintln!("{}: ran on {}", c.name, ran.join(" | "));
    let (_, cpu) = &results[0];
    let poisoned = |b: &Buf| !c.inputs.iter().any(|(i, _)| i == b);
    for ((b, region, ..), out) in c.outputs.iter().zip(cpu) {
        assert_written(&format!("{}: CPU {b:?}", c.name), out, region, poisoned(b));
    }
    for (desc, outs) in &results[1..] {
        for ((b, region, atol, rtol), (g, w)) in c.outputs.iter().zip(outs.iter().zip(cpu)) {
            assert_written(&format!("{}: {desc} {b:?}", c.name), g, region, poisoned(b));
            for r in region {
                assert_close(
                    &format!("{} {b:?} on {desc}", c.name),
                    &g[r.clone()],
                    &w[r.clone()],
                    *atol,
                    *rtol,
                );
            }
        }
    }
}

/// A kernel wrote every element of its output region (finite) and, where the
/// buffer was poisoned with NaN before it ran, nothing outside it.
#[track_caller]
fn assert_written(what: &str, out: &[f32], region: &[Range<usize>], poisoned: bool) {
    for (i, v) in out.iter().enumerate() {
        if region.iter().any(|r| r.contains(&i)) {
            assert!(v.is_finite(), "{what}[{i}] left unwritten ({v})");
        } else if poisoned {
            assert!(v.is_nan(), "{what}[{i}] written outside its output region");
        }
    }
}

fn random_store(rng: &mut impl Rng) -> Vec<u8> {
    (0..N_IMAGES * D).map(|_| rng.random()).collect()
}

// Matmul tolerance: f32 sums of up to 129 products of O(1) terms in a different
// order (tiles + fma on the GPU, sgemm blocking on the CPU); rounding error grows
// like √K·ε·Σ|terms| ≈ 1e-5, so 1e-4 absolute + 1e-4 relative has a 10× margin.
const MM_ATOL: f32 = 1e-4;
const MM_RTOL: f32 = 1e-4;

#[test]
fn matmul_linear_forward_bias_relu() {
    let mut rng = fresh_rng("matmul_linear_forward_bias_relu");
    let (m, k, n) = (37, 53, 129);
    let p = MatmulParams::linear(m, k, n, 100, 10_000, true);
    assert_eq!(p.flags, MM_BIAS | MM_RELU);
    run_case(Case {
        name: "matmul linear",
        store: random_store(&mut rng),
        idx: vec![0],
        inputs: vec![
            (Buf::X, uniform(&mut rng, Buf::X.len(&SIZES), -1.0, 1.0)),
            (Buf::Params, uniform(&mut rng, SIZES.params, -1.0, 1.0)),
        ],
        outputs: vec![(Buf::Logits, vec![0..m * n], MM_ATOL, MM_RTOL)],
        op: Op::Matmul {
            a: Buf::X,
            b: Buf::Params,
            e: Buf::Params,
            c: Buf::Logits,
            p,
        },
    });
}

#[test]
fn matmul_backward_input_masked() {
    let mut rng = fresh_rng("matmul_backward_input_masked");
    let (m, k, n) = (37, 53, 129);
    let p = MatmulParams::linear_backward_input(m, k, n, 100, true);
    assert_eq!(p.flags, MM_MASK);
    run_case(Case {
        name: "matmul backward input",
        store: random_store(&mut rng),
        idx: vec![0],
        inputs: vec![
            (
                Buf::Logits,
                uniform(&mut rng, Buf::Logits.len(&SIZES), -1.0, 1.0),
            ),
            (Buf::Params, uniform(&mut rng, SIZES.params, -1.0, 1.0)),
            // mask source: about half the entries ≤ 0
            (Buf::X, uniform(&mut rng, Buf::X.len(&SIZES), -1.0, 1.0)),
        ],
        outputs: vec![(Buf::H3, vec![0..m * k], MM_ATOL, MM_RTOL)],
        op: Op::Matmul {
            a: Buf::Logits,
            b: Buf::Params,
            e: Buf::X,
            c: Buf::H3,
            p,
        },
    });
}

#[test]
fn matmul_backward_weight_and_bias_at_offset() {
    let mut rng = fresh_rng("matmul_backward_weight_and_bias_at_offset");
    let (m, k, n) = (37, 53, 129);
    let (off, b_off) = (7, 9000);
    let p = MatmulParams::linear_backward_weight(m, k, n, off, b_off);
    assert_eq!(p.flags, MM_BIASGRAD);
    assert_eq!(choose_splits(&p), 1, "bias-gradient products are not split");
    run_case(Case {
        name: "matmul backward weight",
        store: random_store(&mut rng),
        idx: vec![0],
        inputs: vec![
            (
                Buf::Logits,
                uniform(&mut rng, Buf::Logits.len(&SIZES), -1.0, 1.0),
            ),
            (Buf::X, uniform(&mut rng, Buf::X.len(&SIZES), -1.0, 1.0)),
        ],
        // dW rows and the bias gradient (sums of 37 values: 1e-5 absolute)
        outputs: vec![(
            Buf::Grads,
            vec![off..off + n * k, b_off..b_off + n],
            MM_ATOL,
            MM_RTOL,
        )],
        op: Op::Matmul {
            a: Buf::Logits,
            b: Buf::X,
            e: Buf::Params,
            c: Buf::Grads,
            p,
        },
    });
    // the bias region separately: poisoning the whole buffer above already checks
    // that nothing else was written; here the values
    let mut rng2 = fresh_rng("bias part");
    let dy = uniform(&mut rng2, Buf::Logits.len(&SIZES), -1.0, 1.0);
    let x = uniform(&mut rng2, Buf::X.len(&SIZES), -1.0, 1.0);
    for mut be in all_backends(&[0; 4], 1, SIZES) {
        be.write(Buf::Logits, 0, &dy).unwrap();
        be.write(Buf::X, 0, &x).unwrap();
        be.write(Buf::Grads, 0, &vec![f32::NAN; SIZES.params])
            .unwrap();
        be.run(&[Op::Matmul {
            a: Buf::Logits,
            b: Buf::X,
            e: Buf::Params,
            c: Buf::Grads,
            p,
        }])
        .unwrap();
        let g = be.read(Buf::Grads, b_off..b_off + n).unwrap();
        let want: Vec<f32> = (0..n)
            .map(|j| (0..m).map(|i| dy[i * n + j]).sum())
            .collect();
        // 37 terms in [-1, 1], any order: |error| ≤ 37·ε·37 ≈ 1e-4
        assert_close(
            &format!("bias gradient on {}", be.describe()),
            &g,
            &want,
            1e-4,
            0.0,
        );
    }
}

#[test]
fn matmul_split_k_for_skinny_products() {
    let mut rng = fresh_rng("matmul_split_k_for_skinny_products");
    // forward with bias + ReLU: m 37, k 400, n 20 (2 output tiles: K split in 13)
    let p = MatmulParams::linear(37, 400, 20, 300, 19_000, true);
    assert!(choose_splits(&p) > 1, "this shape must exercise split-K");
    // K = 400 of O(1) terms: √400·ε·400 ≈ 5e-4
    run_case(Case {
        name: "matmul split-K linear",
        store: random_store(&mut rng),
        idx: vec![0],
        inputs: vec![
            (Buf::X, uniform(&mut rng, Buf::X.len(&SIZES), -1.0, 1.0)),
            (Buf::Params, uniform(&mut rng, SIZES.params, -1.0, 1.0)),
        ],
        outputs: vec![(Buf::Logits, vec![0..37 * 20], 1e-3, 1e-4)],
        op: Op::Matmul {
            a: Buf::X,
            b: Buf::Params,
            e: Buf::Params,
            c: Buf::Logits,
            p,
        },
    });
    // backward to the input with the ReLU mask: dX (37, 53) = dY (37, 129) · W (129, 53)
    // is not skinny enough; use dX (37, 20) = dY (37, 400) · W (400, 20)
    let p = MatmulParams::linear_backward_input(37, 20, 400, 100, true);
    assert!(choose_splits(&p) > 1);
    run_case(Case {
        name: "matmul split-K backward input",
        store: random_store(&mut rng),
        idx: vec![0],
        inputs: vec![
            (
                Buf::Logits,
                uniform(&mut rng, Buf::Logits.len(&SIZES), -1.0, 1.0),
            ),
            (Buf::Params, uniform(&mut rng, SIZES.params, -1.0, 1.0)),
            (Buf::X, uniform(&mut rng, Buf::X.len(&SIZES), -1.0, 1.0)),
        ],
        outputs: vec![(Buf::H3, vec![0..37 * 20], 1e-3, 1e-4)],
        op: Op::Matmul {
            a: Buf::Logits,
            b: Buf::Params,
            e: Buf::X,
            c: Buf::H3,
            p,
        },
    });
}

/// A layer's input gradient and weight gradient (same A = dY) run as one
/// `matmul_pair` dispatch on the GPU: against the CPU, which runs them one after
/// the other, with the input gradient split over K (then a reduce) and not, and
/// against the GPU running them as two dispatches.
#[test]
fn matmul_pair_input_and_weight_gradients() {
    use vae_ood::gpu::{self, GpuBackend};
    let mut rng = fresh_rng("matmul_pair_input_and_weight_gradients");
    // (rows m, layer input k, layer output n): dX (m, k) = dY (m, n) · W (n, k),
    // masked by the layer input X (m, k) > 0; dW (n, k) = dYᵀ · X, db = Σ_rows dY
    for (m, k, n) in [(37usize, 20usize, 400usize), (37, 53, 101)] {
        let (w_off, gw_off, gb_off) = (100, 9000, 18_500);
        let dx = MatmulParams::linear_backward_input(m, k, n, w_off, true);
        let dw = MatmulParams::linear_backward_weight(m, k, n, gw_off, gb_off);
        let ops = [
            Op::Matmul {
                a: Buf::Logits,
                b: Buf::Params,
                e: Buf::X,
                c: Buf::H3,
                p: dx,
            },
            Op::Matmul {
                a: Buf::Logits,
                b: Buf::X,
                e: Buf::Params,
                c: Buf::Grads,
                p: dw,
            },
        ];
        let split = choose_splits(&dx);
        assert_eq!(split > 1, n == 400, "split-K in the first case only");
        let dy = uniform(&mut rng, m * n, -1.0, 1.0);
        // a third of the mask zero
        let x = uniform(&mut rng, m * k, -0.5, 1.0);
        let w = uniform(&mut rng, SIZES.params, -1.0, 1.0);
        let run = |be: &mut dyn Backend| {
            be.write(Buf::Logits, 0, &dy).unwrap();
            be.write(Buf::X, 0, &x).unwrap();
            be.write(Buf::Params, 0, &w).unwrap();
            be.write(Buf::H3, 0, &vec![f32::NAN; Buf::H3.len(&SIZES)])
                .unwrap();
            be.write(Buf::Grads, 0, &vec![f32::NAN; SIZES.params])
                .unwrap();
            be.run(&ops).unwrap();
            (
                be.read(Buf::H3, 0..Buf::H3.len(&SIZES)).unwrap(),
                be.read(Buf::Grads, 0..SIZES.params).unwrap(),
            )
        };
        let (cpu_dx, cpu_g) = run(&mut *cpu_backend(&[0; 4], 1, SIZES));
        let Some(adapter) = gpu::select_adapter().unwrap() else {
            // fails unless VAE_OOD_SKIP_GPU_TESTS=1 (see common)
            assert!(gpu_backend(&[0; 4], 1, SIZES).is_none());
            return;
        };
        let mut gpu = GpuBackend::with_options(adapter, &[0; 4], 1, SIZES, test_options()).unwrap();
        let mut results = Vec::new();
        for pairs in [true, false] {
            gpu.set_fused(pairs);
            let want = if pairs { 1 } else { 2 } + (split > 1) as usize;
            assert_eq!(gpu.dispatches(&ops), want, "pairs {pairs}, split {split}");
            results.push(run(&mut gpu));
        }
        let dx_region = 0..m * k;
        let g_regions = [gw_off..gw_off + n * k, gb_off..gb_off + n];
        assert_written("CPU dX", &cpu_dx, std::slice::from_ref(&dx_region), true);
        assert_written("CPU grads", &cpu_g, &g_regions, true);
        // K up to 400 of O(1) terms: as the split-K test, 1e-3 + 1e-4 relative
        for (res, how) in results.iter().zip(["one pair dispatch", "two dispatches"]) {
            let what = format!("{m}×{k}×{n}, {how}");
            assert_written(
                &format!("{what}: dX"),
                &res.0,
                std::slice::from_ref(&dx_region),
                true,
            );
            assert_written(&format!("{what}: grads"), &res.1, &g_regions, true);
            assert_close(
                &format!("{what}: dX"),
                &res.0[dx_region.clone()],
                &cpu_dx[dx_region.clone()],
                1e-3,
                1e-4,
            );
            for r in &g_regions {
                assert_close(
                    &format!("{what}: dW, db"),
                    &res.1[r.clone()],
                    &cpu_g[r.clone()],
                    1e-3,
                    1e-4,
                );
            }
        }
        // the same tiles in the same order either way: the same bits
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&results[0].0), bits(&results[1].0), "dX, pair vs two");
        assert_eq!(
            bits(&results[0].1),
            bits(&results[1].1),
            "grads, pair vs two"
        );
    }
}

#[test]
fn matmul_single_element_and_long_k() {
    let mut rng = fresh_rng("matmul_single_element_and_long_k");
    for (m, k, n) in [(1, 1, 1), (3, 600, 2), (65, 7, 33)] {
        run_case(Case {
            name: "matmul small",
            store: random_store(&mut rng),
            idx: vec![0],
            inputs: vec![
                (Buf::X, uniform(&mut rng, Buf::X.len(&SIZES), -1.0, 1.0)),
                (Buf::Params, uniform(&mut rng, SIZES.params, -1.0, 1.0)),
            ],
            // K = 600: error bound √600·ε·600 ≈ 2e-4 → 1e-3
            outputs: vec![(Buf::Logits, vec![0..m * n], 1e-3, 1e-4)],
            op: Op::Matmul {
                a: Buf::X,
                b: Buf::Params,
                e: Buf::Params,
                c: Buf::Logits,
                p: MatmulParams::linear(m, k, n, 0, 19_000, false),
            },
        });
    }
}

#[test]
fn gather_unpacks_bytes() {
    let mut rng = fresh_rng("gather_unpacks_bytes");
    let rows = 37;
    let idx: Vec<u32> = (0..rows + 3)
        .map(|_| rng.random_range(0..N_IMAGES as u32))
        .collect();
    run_case(Case {
        name: "gather",
        store: random_store(&mut rng),
        idx,
        inputs: vec![],
        // byte/255: WGSL division is within 2.5 ULP, so 1e-6 absolute on values ≤ 1
        outputs: vec![(Buf::X, vec![0..rows * D], 1e-6, 0.0)],
        op: Op::Gather(GatherParams {
            rows: rows as u32,
            d: D as u32,
            idx_off: 3,
            _pad: 0,
        }),
    });
}

fn reparam_params(eps_given: bool) -> ReparamParams {
    ReparamParams {
        images: 37,
        l: 5,
        draws: 3,
        seed: 12345,
        stream: 77,
        row_base: 1000,
        eps_given: eps_given as u32,
        _pad: 0,
    }
}

// ε: pcg4d integers are identical on both sides (if one bit differed, the normals
// would differ by O(1)); Box–Muller's log and cos on the GPU are not correctly
// rounded — Vulkan bounds cos's absolute error by 2⁻¹¹ on [−π, π] — so normals of
// magnitude ≤ 5.6 agree within 3e-3, and z = μ + ε·σ (σ ≤ 1.65 here) within 5e-3.
#[test]
fn reparam_forward_draws_same_noise() {
    let mut rng = fresh_rng("reparam_forward_draws_same_noise");
    let p = reparam_params(false);
    let (b, l, k) = (37, 5, 3);
    run_case(Case {
        name: "reparam_forward",
        store: random_store(&mut rng),
        idx: vec![0],
        inputs: vec![(
            Buf::Head,
            uniform(&mut rng, Buf::Head.len(&SIZES), -3.0, 1.0),
        )],
        outputs: vec![
            (Buf::Eps, vec![0..b * k * l], 3e-3, 0.0),
            (Buf::Z, vec![0..b * k * l], 5e-3, 0.0),
            // KL: exp(lv) on both sides, 5 terms: relative 1e-5
            (Buf::Kl, vec![0..b], 1e-5, 1e-5),
            // log p(z) − log q(z|x): squares of ε and z carry their tolerances
            (Buf::LogPq, vec![0..b * k], 5e-2, 1e-3),
        ],
        op: Op::ReparamForward(p),
    });
}

#[test]
fn reparam_forward_given_noise() {
    let mut rng = fresh_rng("reparam_forward_given_noise");
    let p = reparam_params(true);
    let (b, l, k) = (37, 5, 3);
    run_case(Case {
        name: "reparam_forward eps_given",
        store: random_store(&mut rng),
        idx: vec![0],
        inputs: vec![
            (
                Buf::Head,
                uniform(&mut rng, Buf::Head.len(&SIZES), -3.0, 1.0),
            ),
            (Buf::Eps, uniform(&mut rng, Buf::Eps.len(&SIZES), -3.0, 3.0)),
        ],
        // exp on the GPU is within 3 ULP: 1e-5 relative
        outputs: vec![
            (Buf::Z, vec![0..b * k * l], 1e-5, 1e-5),
            (Buf::Kl, vec![0..b], 1e-5, 1e-5),
            (Buf::LogPq, vec![0..b * k], 1e-4, 1e-5),
        ],
        op: Op::ReparamForward(p),
    });
}

/// The forward kernel splits an image's latents and then its draws over 64
/// threads: 70 latents (threads take two), 67 draws (the same), and the batch's
/// noise drawn, so every ε, z, KL and log p − log q crosses those boundaries.
#[test]
fn reparam_forward_many_latents_and_draws() {
    let mut rng = fresh_rng("reparam_forward_many_latents_and_draws");
    for (b, l, k) in [(3, 70, 2), (4, 3, 67)] {
        let p = ReparamParams {
            images: b as u32,
            l: l as u32,
            draws: k as u32,
            ..reparam_params(false)
        };
        let head = uniform(&mut rng, Buf::Head.len(&SIZES), -3.0, 1.0);
        assert!(b * 2 * l <= head.len() && b * k * l <= Buf::Eps.len(&SIZES));
        run_case(Case {
            name: &format!("reparam_forward B={b} L={l} K={k}"),
            store: random_store(&mut rng),
            idx: vec![0],
            inputs: vec![(Buf::Head, head)],
            // as reparam_forward_draws_same_noise; KL and log p − log q sum 70
            // terms here, so their absolute tolerances scale with that
            outputs: vec![
                (Buf::Eps, vec![0..b * k * l], 3e-3, 0.0),
                (Buf::Z, vec![0..b * k * l], 5e-3, 0.0),
                (Buf::Kl, vec![0..b], 1e-4, 1e-5),
                (Buf::LogPq, vec![0..b * k], 5e-1, 1e-3),
            ],
            op: Op::ReparamForward(p),
        });
        // and the backward pass, one thread per (image, latent): 210 or 12 threads
        // (67 draws summed: 1e-4 absolute)
        let name = format!("reparam_backward B={b} L={l} K={k}");
        run_case(reparam_backward_case(&mut rng, &name, p, 1e-4));
    }
}

#[test]
fn reparam_backward_matches() {
    let mut rng = fresh_rng("reparam_backward_matches");
    let p = reparam_params(false);
    run_case(reparam_backward_case(&mut rng, "reparam_backward", p, 1e-5));
}

/// `reparam_backward` with `p` on fresh head, ε and dz: dhead of p.images images
/// compared to `atol` absolute and 1e-5 relative.
fn reparam_backward_case<'a>(
    rng: &mut impl Rng,
    name: &'a str,
    p: ReparamParams,
    atol: f32,
) -> Case<'a> {
    let (b, l) = (p.images as usize, p.l as usize);
    Case {
        name,
        store: random_store(rng),
        idx: vec![0],
        inputs: vec![
            (Buf::Head, uniform(rng, Buf::Head.len(&SIZES), -3.0, 1.0)),
            (Buf::Eps, uniform(rng, Buf::Eps.len(&SIZES), -3.0, 3.0)),
            (Buf::Dz, uniform(rng, Buf::Dz.len(&SIZES), -2.0, 2.0)),
        ],
        outputs: vec![(Buf::Dhead, vec![0..b * 2 * l], atol, 1e-5)],
        op: Op::ReparamBackward(p),
    }
}

// BCE: GPU log(1 + exp(−|t|)) vs CPU ln_1p differ by ≤ 1e-7 per pixel (the value
// is ≤ ln 2); a row sums 129 terms up to 100 (logits of ±100 are included), so
// sums agree within 1e-3 + 1e-5 relative. Gradient σ(t) − x: within 1e-6.
fn bce_case(rng: &mut impl Rng, write_grad: bool) -> Case<'static> {
    let (rows, k) = (111, 3);
    let mut logits = uniform(rng, Buf::Logits.len(&SIZES), -8.0, 8.0);
    for (i, v) in logits.iter_mut().enumerate().take(rows * D) {
        match i % 17 {
            0 => *v = 100.0,
            1 => *v = -100.0,
            2 => *v = 0.0,
            _ => {}
        }
    }
    let mut x = uniform(rng, Buf::X.len(&SIZES), 0.0, 1.0);
    for (i, v) in x.iter_mut().enumerate() {
        match i % 5 {
            0 => *v = 0.0,
            1 => *v = 1.0,
            _ => {}
        }
    }
    let mut outputs = vec![(Buf::Bce, vec![0..rows], 1e-3, 1e-5)];
    if write_grad {
        outputs.push((Buf::Logits, vec![0..rows * D], 1e-6, 0.0));
    }
    Case {
        name: if write_grad {
            "bce_logits grad"
        } else {
            "bce_logits"
        },
        store: random_store(rng),
        idx: vec![0],
        inputs: vec![(Buf::Logits, logits), (Buf::X, x)],
        outputs,
        op: Op::Bce(BceParams {
            rows: rows as u32,
            d: D as u32,
            draws: k as u32,
            write_grad: write_grad as u32,
        }),
    }
}

#[test]
fn bce_logits_with_extreme_logits() {
    let mut rng = fresh_rng("bce_logits_with_extreme_logits");
    run_case(bce_case(&mut rng, true));
    run_case(bce_case(&mut rng, false));
}

#[test]
fn loss_reduce_per_image_and_batch() {
    let mut rng = fresh_rng("loss_reduce_per_image_and_batch");
    let (images, k) = (300, 2);
    run_case(Case {
        name: "loss_reduce",
        store: random_store(&mut rng),
        idx: vec![0],
        inputs: vec![
            (
                Buf::Bce,
                uniform(&mut rng, Buf::Bce.len(&SIZES), 50.0, 300.0),
            ),
            (Buf::Kl, uniform(&mut rng, Buf::Kl.len(&SIZES), 0.0, 30.0)),
        ],
        outputs: vec![
            (Buf::SampleLoss, vec![17..17 + images], 1e-4, 1e-6),
            // a sum of 300 values ≈ 200 in a tree vs in sequence: ~1e-6 relative
            (Buf::BatchLoss, vec![4..5], 0.0, 1e-5),
        ],
        op: Op::Loss(LossParams {
            images: images as u32,
            draws: k as u32,
            out_off: 17,
            slot: 4,
            mode: LOSS_ELBO,
            _pad: [0; 3],
        }),
    });
}

#[test]
fn loss_reduce_importance_weighted() {
    let mut rng = fresh_rng("loss_reduce_importance_weighted");
    let (images, k) = (9, 64);
    run_case(Case {
        name: "loss_reduce iwae",
        store: random_store(&mut rng),
        idx: vec![0],
        inputs: vec![
            (
                Buf::Bce,
                uniform(&mut rng, Buf::Bce.len(&SIZES), 50.0, 300.0),
            ),
            (
                Buf::LogPq,
                uniform(&mut rng, Buf::LogPq.len(&SIZES), -40.0, 5.0),
            ),
        ],
        // logsumexp of 64 terms after subtracting the max: GPU exp/log within a few
        // ULP, so 1e-4 absolute on values of 50-300 nats
        outputs: vec![
            (Buf::SampleLoss, vec![3..3 + images], 1e-4, 1e-6),
            (Buf::BatchLoss, vec![2..3], 0.0, 1e-5),
        ],
        op: Op::Loss(LossParams {
            images: images as u32,
            draws: k as u32,
            out_off: 3,
            slot: 2,
            mode: LOSS_IWAE,
            _pad: [0; 3],
        }),
    });
}

/// Fresh random Adam inputs over `n` parameters: parameters in ±1, gradients in
/// ±10, first moments in ±1, second moments in [0, 2).
fn adam_state(rng: &mut impl Rng, n: usize) -> [(Buf, Vec<f32>); 4] {
    [
        (Buf::Params, uniform(rng, n, -1.0, 1.0)),
        (Buf::Grads, uniform(rng, n, -10.0, 10.0)),
        (Buf::AdamM, uniform(rng, n, -1.0, 1.0)),
        (Buf::AdamV, uniform(rng, n, 0.0, 2.0)),
    ]
}

#[test]
fn adam_matches_at_first_and_later_steps() {
    let mut rng = fresh_rng("adam_matches_at_first_and_later_steps");
    for t in [1u64, 7] {
        let n = SIZES.params;
        run_case(Case {
            name: "adam",
            store: random_store(&mut rng),
            idx: vec![0],
            inputs: adam_state(&mut rng, n).to_vec(),
            // same formula; GPU sqrt and division are within 3 ULP: relative 1e-5 on
            // m, v and the update (which is ≤ lr·|m|/√v, added to |p| ≤ 1)
            outputs: vec![
                (Buf::Params, vec![0..n], 1e-6, 1e-5),
                (Buf::AdamM, vec![0..n], 1e-6, 1e-5),
                (Buf::AdamV, vec![0..n], 1e-6, 1e-5),
            ],
            op: Op::Adam(AdamParams::at_step(n, 1e-3, 0.9, 0.999, 1e-8, t)),
        });
    }
}

/// Ops that the GPU runs as one dispatch, run by `run` (which returns the buffers
/// `outs`) on a GPU backend over `store` with the fusion on and off (one dispatch,
/// then one per op, counted): the two must end with the same bits in every one of
/// `outs`, since each value is computed the same way. Returns both results,
/// fused first; `None` without an adapter (which fails unless
/// VAE_OOD_SKIP_GPU_TESTS=1, see common).
fn gpu_one_dispatch_and_apart<const N: usize>(
    store: &[u8],
    idx_len: usize,
    ops: &[Op],
    outs: &[Buf; N],
    run: impl Fn(&mut dyn Backend) -> [Vec<f32>; N],
) -> Option<[[Vec<f32>; N]; 2]> {
    gpu_fused_and_apart(store, idx_len, ops, (1, ops.len()), outs, run)
}

/// [`gpu_one_dispatch_and_apart`] where the ops take `counts` dispatches (fused,
/// apart), split-K reduces included.
fn gpu_fused_and_apart<const N: usize>(
    store: &[u8],
    idx_len: usize,
    ops: &[Op],
    counts: (usize, usize),
    outs: &[Buf; N],
    run: impl Fn(&mut dyn Backend) -> [Vec<f32>; N],
) -> Option<[[Vec<f32>; N]; 2]> {
    use vae_ood::gpu::{self, GpuBackend};
    let Some(adapter) = gpu::select_adapter().unwrap() else {
        assert!(gpu_backend(store, idx_len, SIZES).is_none());
        return None;
    };
    let mut gpu = GpuBackend::with_options(adapter, store, idx_len, SIZES, test_options()).unwrap();
    let results = [true, false].map(|fused| {
        gpu.set_fused(fused);
        assert_eq!(gpu.dispatches(ops), if fused { counts.0 } else { counts.1 });
        run(&mut gpu)
    });
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (i, b) in outs.iter().enumerate() {
        assert_eq!(
            bits(&results[0][i]),
            bits(&results[1][i]),
            "{b:?}: one dispatch vs two"
        );
    }
    Some(results)
}

/// A training step's Adam and the next step's pixel gather run as one `adam_gather`
/// dispatch on the GPU: against the CPU (which runs `adam` then `gather_pixels`) and
/// against the GPU running them as two dispatches. The update spans many
/// workgroups and the gather a partial last one (37 × 129 pixels), so workgroup
/// numbers cross from one half of the dispatch to the other.
#[test]
fn adam_and_next_gather_in_one_dispatch() {
    let mut rng = fresh_rng("adam_and_next_gather_in_one_dispatch");
    let n = SIZES.params;
    let rows = 37;
    let store = random_store(&mut rng);
    let idx: Vec<u32> = (0..rows + 5)
        .map(|_| rng.random_range(0..N_IMAGES as u32))
        .collect();
    let ops = [
        Op::Adam(AdamParams::at_step(n, 1e-3, 0.9, 0.999, 1e-8, 3)),
        Op::Gather(GatherParams {
            rows: rows as u32,
            d: D as u32,
            idx_off: 5,
            _pad: 0,
        }),
    ];
    let inputs = adam_state(&mut rng, n);
    let outs = [Buf::Params, Buf::AdamM, Buf::AdamV, Buf::X];
    let run = |be: &mut dyn Backend| {
        be.write_idx(0, &idx).unwrap();
        for (b, v) in &inputs {
            be.write(*b, 0, v).unwrap();
        }
        be.write(Buf::X, 0, &vec![f32::NAN; Buf::X.len(&SIZES)])
            .unwrap();
        be.run(&ops).unwrap();
        outs.map(|b| be.read(b, 0..b.len(&SIZES)).unwrap())
    };
    let cpu = run(&mut *cpu_backend(&store, idx.len(), SIZES));
    let x_region = 0..rows * D;
    assert_written("CPU x", &cpu[3], std::slice::from_ref(&x_region), true);
    let Some(results) = gpu_one_dispatch_and_apart(&store, idx.len(), &ops, &outs, run) else {
        return;
    };
    for (res, how) in results.iter().zip(["one dispatch", "two dispatches"]) {
        // as adam_matches_at_first_and_later_steps and gather_unpacks_bytes
        for (i, b) in outs.iter().enumerate().take(3) {
            assert_close(&format!("{b:?}, {how}"), &res[i], &cpu[i], 1e-6, 1e-5);
        }
        assert_written(
            &format!("x, {how}"),
            &res[3],
            std::slice::from_ref(&x_region),
            true,
        );
        assert_close(
            &format!("x, {how}"),
            &res[3][x_region.clone()],
            &cpu[3][x_region.clone()],
            1e-6,
            0.0,
        );
    }
}

/// The BCE kernel with its reads issued early (`VAE_OOD_GPU_EARLY_READS=1`: each
/// thread reads its next four columns' logits and pixels together, then adds them in
/// the usual order) gives the default's bits: rows of 7, 784 and 1031 pixels (one
/// column per thread; four for some; five: a second round of reads with one), with
/// and without the gradient, the logits given or read from the split-K sums of the
/// decoder product before it (37 rows, K = 300: split), two draws per image.
#[test]
fn bce_with_early_reads_gives_the_same_bits() {
    use vae_ood::gpu::{self, Fusions, GpuBackend, GpuOptions};
    let mut rng = fresh_rng("bce_with_early_reads_gives_the_same_bits");
    let Some(adapter) = gpu::select_adapter().unwrap() else {
        assert!(gpu_backend(&[0; 4], 1, SIZES).is_none());
        return;
    };
    for d in [7usize, 784, 1031] {
        let dims = Dims { d, h: 300, l: 2 };
        let (images, draws) = (37, 2);
        let rows = images * draws;
        let sizes = run_sizes(dims, images, draws, 1);
        let lay = vae_ood::model::Layout::new(dims);
        let o = lay.offsets();
        let fc4 = MatmulParams::linear(rows, dims.h, d, o.w4, o.b4, false);
        assert!(choose_splits(&fc4) > 1, "d = {d}: the product splits K");
        let mm = Op::Matmul {
            a: Buf::H3,
            b: Buf::Params,
            e: Buf::Params,
            c: Buf::Logits,
            p: fc4,
        };
        let bce = |write_grad| {
            Op::Bce(BceParams {
                rows: rows as u32,
                d: d as u32,
                draws: draws as u32,
                write_grad,
            })
        };
        let inputs = [
            (Buf::Params, uniform(&mut rng, lay.total, -0.2, 0.2)),
            (Buf::H3, uniform(&mut rng, rows * dims.h, 0.0, 1.0)),
            (Buf::X, uniform(&mut rng, images * d, 0.0, 1.0)),
        ];
        let logits = uniform(&mut rng, rows * d, -8.0, 8.0);
        let mut bes = [false, true].map(|early_reads| {
            let opts = GpuOptions {
                early_reads,
                ..GpuOptions::default()
            };
            let mut be =
                GpuBackend::with_options(adapter.clone(), &[0; 4], 1, sizes, opts).unwrap();
            assert_eq!(be.describe().contains("early reads"), early_reads);
            be.set_fusions(Fusions::DEFAULT);
            be
        });
        for (ops, given) in [
            (vec![bce(0)], true),
            (vec![bce(1)], true),
            (vec![mm, bce(0)], false),
            (vec![mm, bce(1)], false),
        ] {
            let what = format!("d = {d}, {ops:?}");
            // the product's split sums are read by the BCE: no reduce dispatch
            assert_eq!(bes[0].dispatches(&ops), ops.len(), "{what}");
            let [late, early] = [0, 1].map(|i| {
                let be = &mut bes[i];
                for (b, v) in &inputs {
                    be.write(*b, 0, v).unwrap();
                }
                if given {
                    be.write(Buf::Logits, 0, &logits).unwrap();
                } else {
                    be.write(Buf::Logits, 0, &vec![f32::NAN; rows * d]).unwrap();
                }
                be.write(Buf::Bce, 0, &vec![f32::NAN; rows]).unwrap();
                be.run(&ops).unwrap();
                [Buf::Bce, Buf::Logits].map(|b| be.read(b, 0..b.len(&sizes)).unwrap())
            });
            assert_written(&format!("{what}: bce"), &late[0], &[0..rows], true);
            assert_written(&format!("{what}: logits"), &late[1], &[0..rows * d], !given);
            for (b, (l, e)) in ["bce", "logits"].iter().zip(late.iter().zip(&early)) {
                let same = l.iter().zip(e).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{what}: {b} differs with early reads");
            }
        }
    }
}

/// A training step's per-image −ELBO (one draw, no batch sum: `NO_SLOT`) is
/// written by the BCE kernel on the GPU, with no loss dispatch of its own: against
/// the CPU (which runs `bce_logits` then `loss_reduce`) and against the GPU running
/// the two; the batch-sum buffer is left alone by all of them.
#[test]
fn bce_writes_the_training_loss_in_one_dispatch() {
    let mut rng = fresh_rng("bce_writes_the_training_loss_in_one_dispatch");
    let (images, out_off) = (37, 11);
    let ops = [
        Op::Bce(BceParams {
            rows: images as u32,
            d: D as u32,
            draws: 1,
            write_grad: 1,
        }),
        Op::Loss(LossParams {
            images: images as u32,
            draws: 1,
            out_off: out_off as u32,
            slot: NO_SLOT,
            mode: LOSS_ELBO,
            _pad: [0; 3],
        }),
    ];
    let inputs = [
        (
            Buf::Logits,
            uniform(&mut rng, Buf::Logits.len(&SIZES), -8.0, 8.0),
        ),
        (Buf::X, uniform(&mut rng, Buf::X.len(&SIZES), 0.0, 1.0)),
        (Buf::Kl, uniform(&mut rng, Buf::Kl.len(&SIZES), 0.0, 30.0)),
    ];
    let outs = [Buf::Bce, Buf::Logits, Buf::SampleLoss, Buf::BatchLoss];
    let run = |be: &mut dyn Backend| {
        for (b, v) in &inputs {
            be.write(*b, 0, v).unwrap();
        }
        for b in [Buf::Bce, Buf::SampleLoss, Buf::BatchLoss] {
            be.write(b, 0, &vec![f32::NAN; b.len(&SIZES)]).unwrap();
        }
        be.run(&ops).unwrap();
        outs.map(|b| be.read(b, 0..b.len(&SIZES)).unwrap())
    };
    let cpu = run(&mut *cpu_backend(&[0; 4], 1, SIZES));
    let loss_region = out_off..out_off + images;
    assert_written("CPU bce", &cpu[0], &[0..images], true);
    assert_written(
        "CPU losses",
        &cpu[2],
        std::slice::from_ref(&loss_region),
        true,
    );
    assert!(cpu[3].iter().all(|v| v.is_nan()), "CPU wrote a batch sum");
    let Some(results) = gpu_one_dispatch_and_apart(&[0; 4], 1, &ops, &outs, run) else {
        return;
    };
    for (res, how) in results.iter().zip(["one dispatch", "two dispatches"]) {
        // as bce_logits_with_extreme_logits (sums of 129 terms) and loss_reduce
        assert_written(&format!("bce, {how}"), &res[0], &[0..images], true);
        assert_close(
            &format!("bce, {how}"),
            &res[0][..images],
            &cpu[0][..images],
            1e-3,
            1e-5,
        );
        let g = 0..images * D;
        assert_close(
            &format!("dlogits, {how}"),
            &res[1][g.clone()],
            &cpu[1][g],
            1e-6,
            0.0,
        );
        assert_written(
            &format!("losses, {how}"),
            &res[2],
            std::slice::from_ref(&loss_region),
            true,
        );
        assert_close(
            &format!("losses, {how}"),
            &res[2][loss_region.clone()],
            &cpu[2][loss_region.clone()],
            1e-3,
            1e-5,
        );
        assert!(
            res[3].iter().all(|v| v.is_nan()),
            "{how}: wrote a batch sum"
        );
    }
}

/// Adversarial inputs: logits of ±1e4 (recon → exactly 0 or 1) and log σ² of ±60
/// (σ² ≈ 1e26 or 1e-26) give finite losses, noise, latents and gradients on every
/// backend, equal between backends (f32 has room for e^60; at log σ² ≳ 88 the KL is
/// +∞ mathematically, which the training loop reports as divergence).
#[test]
fn extreme_logits_and_logvar_stay_finite() {
    let mut rng = fresh_rng("extreme_logits_and_logvar_stay_finite");
    let (b, l) = (37usize, 5usize);
    let mut head = uniform(&mut rng, Buf::Head.len(&SIZES), -3.0, 1.0);
    for i in 0..b {
        for j in 0..l {
            head[i * 2 * l + l + j] = if (i + j) % 2 == 0 { 60.0 } else { -60.0 };
            head[i * 2 * l + j] = if i % 3 == 0 { 1e4 } else { head[i * 2 * l + j] };
        }
    }
    run_case(Case {
        name: "reparam_forward extreme",
        store: random_store(&mut rng),
        idx: vec![0],
        inputs: vec![(Buf::Head, head.clone())],
        // z reaches μ + ε·e^30 ≈ 1e13: relative tolerance (GPU exp is within 3 ULP)
        outputs: vec![
            (Buf::Z, vec![0..b * 3 * l], 1e-3, 1e-3),
            (Buf::Kl, vec![0..b], 1e-3, 1e-5),
        ],
        op: Op::ReparamForward(ReparamParams {
            images: b as u32,
            l: l as u32,
            draws: 3,
            seed: 5,
            stream: 1,
            row_base: 0,
            eps_given: 0,
            _pad: 0,
        }),
    });
    run_case(Case {
        name: "reparam_backward extreme",
        store: random_store(&mut rng),
        idx: vec![0],
        inputs: vec![
            (Buf::Head, head),
            (Buf::Eps, uniform(&mut rng, Buf::Eps.len(&SIZES), -3.0, 3.0)),
            (Buf::Dz, uniform(&mut rng, Buf::Dz.len(&SIZES), -2.0, 2.0)),
        ],
        outputs: vec![(Buf::Dhead, vec![0..b * 2 * l], 1e-3, 1e-5)],
        op: Op::ReparamBackward(ReparamParams {
            images: b as u32,
            l: l as u32,
            draws: 3,
            seed: 5,
            stream: 1,
            row_base: 0,
            eps_given: 0,
            _pad: 0,
        }),
    });
    let rows = 37;
    let logits: Vec<f32> = (0..Buf::Logits.len(&SIZES))
        .map(|i| if i % 2 == 0 { 1e4 } else { -1e4 })
        .collect();
    let x: Vec<f32> = (0..Buf::X.len(&SIZES))
        .map(|i| [0.0, 1.0, 0.5][i % 3])
        .collect();
    run_case(Case {
        name: "bce extreme",
        store: random_store(&mut rng),
        idx: vec![0],
        inputs: vec![(Buf::Logits, logits), (Buf::X, x)],
        // sums of 129 terms of size up to 1e4: relative 1e-6
        outputs: vec![
            (Buf::Bce, vec![0..rows], 1e-2, 1e-6),
            (Buf::Logits, vec![0..rows * D], 1e-6, 0.0),
        ],
        op: Op::Bce(BceParams {
            rows: rows as u32,
            d: D as u32,
            draws: 1,
            write_grad: 1,
        }),
    });
}

/// The workgroup reductions (bce's per-row sum, loss_reduce's batch sum) in both
/// variants, at lengths below, at and across the 256-thread workgroup and the
/// subgroup sizes (1, 7, 255, 256, 257, 784, 1031 pixels; 1 to 601 images), on one
/// set of backends per variant (creating one compiles every pipeline).
#[test]
fn reductions_across_workgroup_and_subgroup_boundaries() {
    let mut rng = fresh_rng("reductions_across_workgroup_and_subgroup_boundaries");
    let sizes = Sizes {
        dims: Dims {
            d: 1031,
            h: 3,
            l: 2,
        },
        params: 16,
        max_images: 601,
        max_rows: 1202,
        sample_slots: 700,
        batch_slots: 4,
    };
    let mut backends = all_backends(&[0; 4], 1, sizes);
    let gpus = backends.len() - 1;
    assert!(
        gpus == 0 || gpus == Reduce::ALL.len(),
        "expected the GPU in both reduction variants"
    );
    for d in [1usize, 7, 255, 256, 257, 784, 1031] {
        for (rows, draws) in [(1usize, 1usize), (5, 2)] {
            let logits = uniform(&mut rng, Buf::Logits.len(&sizes), -8.0, 8.0);
            let x = uniform(&mut rng, Buf::X.len(&sizes), 0.0, 1.0);
            run_case_on(
                &mut backends,
                sizes,
                &Case {
                    name: &format!("bce_logits d={d} rows={rows}"),
                    store: vec![],
                    // no gather: the store holds no image to index
                    idx: vec![],
                    inputs: vec![(Buf::Logits, logits), (Buf::X, x)],
                    // terms in [0, 8.0004]; the CPU sums in 8 sequential partial sums,
                    // the GPU in a tree or by subgroups: rows of d = 1031 sum to ~2600,
                    // where one ULP is 2.4e-4; 100 random draws differed by ≤ 2 ULP
                    // (4.9e-4) on both variants, so 1e-3 + 1e-5 relative
                    outputs: vec![(Buf::Bce, vec![0..rows], 1e-3, 1e-5)],
                    op: Op::Bce(BceParams {
                        rows: rows as u32,
                        d: d as u32,
                        draws: draws as u32,
                        write_grad: 0,
                    }),
                },
            );
        }
    }
    for (images, draws, mode) in [
        (1usize, 1usize, LOSS_ELBO),
        (3, 2, LOSS_ELBO),
        (255, 1, LOSS_ELBO),
        (256, 2, LOSS_ELBO),
        (257, 2, LOSS_IWAE),
        (601, 2, LOSS_ELBO),
    ] {
        run_case_on(
            &mut backends,
            sizes,
            &Case {
                name: &format!("loss_reduce images={images} draws={draws} mode={mode}"),
                store: vec![],
                // no gather: the store holds no image to index
                idx: vec![],
                inputs: vec![
                    (
                        Buf::Bce,
                        uniform(&mut rng, Buf::Bce.len(&sizes), 50.0, 300.0),
                    ),
                    (Buf::Kl, uniform(&mut rng, Buf::Kl.len(&sizes), 0.0, 30.0)),
                    (
                        Buf::LogPq,
                        uniform(&mut rng, Buf::LogPq.len(&sizes), -40.0, 5.0),
                    ),
                ],
                outputs: vec![
                    // per image: as in loss_reduce_importance_weighted
                    (Buf::SampleLoss, vec![5..5 + images], 1e-4, 1e-6),
                    // ≤ 601 positive values ≈ 200 summed in sequence (CPU) or a tree /
                    // by subgroups (GPU): over 100 random draws of 601 images the CPU
                    // sum was within 8e-7 relative of an f64 sum, the GPU's (both
                    // variants) within 1.3e-7; 1e-5 as in loss_reduce_per_image_and_batch
                    (Buf::BatchLoss, vec![3..4], 0.0, 1e-5),
                ],
                op: Op::Loss(LossParams {
                    images: images as u32,
                    draws: draws as u32,
                    out_off: 5,
                    slot: 3,
                    mode,
                    _pad: [0; 3],
                }),
            },
        );
    }
}

/// The batch of the latent tests: `b` images of `k` draws, ε keyed by seed 7,
/// stream 3 and a first image 500.
fn latent_batch(b: usize, k: usize) -> vae_ood::plan::Batch {
    vae_ood::plan::Batch {
        images: b,
        draws: k,
        idx_off: 0,
        seed: 7,
        stream: 3,
        row_base: 500,
        out_off: 0,
        slot: None,
        mode: LOSS_ELBO,
    }
}

/// What the latent forward writes for `b` images of `k` draws (hidden `h`, `l`
/// latents), the region, and the tolerance against the CPU: products of up to 300
/// terms of O(0.1) as MM_ATOL/MM_RTOL, of 129 terms of O(0.2) (h1) 1e-4 as well; z
/// and the KL through exp (3 ULP) of a head that carries MM_ATOL; h3 = relu(z W3ᵀ +
/// b3) carries z's error times Σ|W3 row| ≤ 20 × 0.2. With ε drawn, ε and z as
/// reparam_forward_draws_same_noise (3e-3, 5e-3: GPU log and cos), and h3 and
/// log p − log q carry those (×4 and ×2·|z|·l).
fn latent_forward_outs(
    b: usize,
    k: usize,
    h: usize,
    l: usize,
    eps_given: bool,
) -> [(Buf, usize, f32); 7] {
    let (eps_tol, z_tol, h3_tol, pq_tol) = if eps_given {
        (0.0, 2e-4, 1e-3, 1e-3)
    } else {
        (3e-3, 5e-3, 2e-2, 2.0)
    };
    [
        (Buf::H1, b * h, MM_ATOL),
        (Buf::Head, b * 2 * l, MM_ATOL),
        (Buf::Eps, b * k * l, eps_tol),
        (Buf::Z, b * k * l, z_tol),
        (Buf::Kl, b, 1e-4),
        (Buf::LogPq, b * k, pq_tol),
        (Buf::H3, b * k * h, h3_tol),
    ]
}

/// The latent forward in fc1's product (`matmul_latent`, `VAE_OOD_GPU_LATENT_FC1=1`:
/// the last K share of each fc1 tile stores its h1 and its share of the head, the
/// last tile of each band of 32 images the head, ε, z, the KL, log p − log q and
/// h3): one dispatch for the four ops, against the CPU running them op by op and
/// the GPU's latent kernel — and with the batch's gather before them
/// (`matmul_gather_latent`: fc1 reads the image store, x written on the way): one
/// dispatch for the five. 37 images (a band of 32 and one of 5) and 261 (9 bands);
/// 129 inputs (fc1 splits K); hidden 67 (three column tiles, the last holding
/// three columns) and 150; l = 5 and 20 (a head of 40: five per thread); ε given
/// and drawn (the same counter-based normals as the latent kernel's). (On tensor
/// cores: `tensor_core_walk_against_its_twin`.)
#[test]
fn latent_forward_in_fc1s_product() {
    let mut rng = fresh_rng("latent_forward_in_fc1s_product");
    check_latent_in_fc1(&mut rng, None);
}

/// [`latent_forward_in_fc1s_product`] on backends opened with `opts` (None: the
/// default). With options (the tensor-core walk, whose fc1 reads f16 operands) the
/// GPU's results are compared with the same GPU's latent kernel only.
fn check_latent_in_fc1(rng: &mut rand::rngs::StdRng, opts: Option<vae_ood::gpu::GpuOptions>) {
    use vae_ood::gpu::{self, Fusions, GpuBackend, Kernel};
    use vae_ood::model::Layout;
    use vae_ood::plan;
    for (b, h, l, eps_given, gather) in [
        (37, 67, 5, true, false),
        (261, 150, 20, true, false),
        (37, 67, 5, false, false),
        (261, 150, 20, false, false),
        (37, 67, 5, true, true),
        (261, 150, 20, false, true),
    ] {
        let dims = Dims { d: 129, h, l };
        let lay = Layout::new(dims);
        let sizes = run_sizes(dims, b, 1, 1);
        // (the batch's index entries from 3 on: the gather's first entry is read
        // from the slot)
        let bt = plan::Batch {
            idx_off: 3,
            ..latent_batch(b, 1)
        };
        // (gather,) fc1 fwd, head fwd, reparam fwd, fc3 fwd
        let first = !gather as usize;
        let mut ops: Vec<Op> =
            plan::forward_ops(dims, &lay.offsets(), &bt, true)[first..5].to_vec();
        for op in &mut ops {
            if let Op::ReparamForward(p) = op {
                p.eps_given = eps_given as u32;
            }
        }
        let Op::Matmul { p: fc1, .. } = ops[1 - first] else {
            unreachable!()
        };
        assert!(choose_splits(&fc1) > 1, "fc1 splits K");
        // with the gather: b images of the store in reverse order after three entries
        // of image 0; without: x given
        let store: Vec<u8> = (0..b * dims.d).map(|_| rng.random()).collect();
        let idx: Vec<u32> = [0; 3].into_iter().chain((0..b as u32).rev()).collect();
        let inputs = [
            (Buf::Params, uniform(rng, lay.total, -0.2, 0.2)),
            (Buf::X, uniform(rng, b * dims.d, 0.0, 1.0)),
            (Buf::Eps, uniform(rng, b * l, -3.0, 3.0)),
        ];
        let given = |buf: Buf| match buf {
            Buf::Eps => eps_given,
            Buf::X => !gather,
            _ => true,
        };
        // (the tolerances of latent_forward_and_backward_in_one_dispatch_each: the
        // head summed tile by tile, then over the tiles, is another order)
        let outs = latent_forward_outs(b, 1, h, l, eps_given);
        let run = |be: &mut dyn Backend| {
            be.write_idx(0, &idx).unwrap();
            for (buf, v) in &inputs {
                if given(*buf) {
                    be.write(*buf, 0, v).unwrap();
                }
            }
            for buf in outs.iter().map(|o| o.0).chain([Buf::X]) {
                if !given(buf) || !inputs.iter().any(|i| i.0 == buf) {
                    be.write(buf, 0, &vec![f32::NAN; buf.len(&sizes)]).unwrap();
                }
            }
            be.run(&ops).unwrap();
            let mut got: Vec<Vec<f32>> = outs
                .iter()
                .map(|(buf, ..)| be.read(*buf, 0..buf.len(&sizes)).unwrap())
                .collect();
            got.push(be.read(Buf::X, 0..b * dims.d).unwrap());
            got
        };
        let name = format!("{b} images, hidden {h}, l {l}, eps given {eps_given}, gather {gather}");
        let cpu = run(&mut *cpu_backend(&store, idx.len(), sizes));
        for (v, (buf, n, _)) in cpu.iter().zip(&outs) {
            assert_written(&format!("{name}: CPU {buf:?}"), v, &[0..*n], true);
        }
        let Some(adapter) = gpu::select_adapter().unwrap() else {
            assert!(gpu_backend(&store, idx.len(), sizes).is_none());
            return;
        };
        let mut gpu = match opts {
            Some(o) => GpuBackend::with_options(adapter, &store, idx.len(), sizes, o).unwrap(),
            None => {
                GpuBackend::with_options(adapter, &store, idx.len(), sizes, test_options()).unwrap()
            }
        };
        let kernel = if gather {
            Kernel::MatmulGatherLatent
        } else {
            Kernel::MatmulLatent
        };
        assert!(gpu.context().has(kernel), "{}", gpu.describe());
        let mut got = Vec::new();
        for latent_fc1 in [false, true] {
            let f = Fusions {
                latent_fc1,
                ..Fusions::DEFAULT
            };
            // one dispatch, or fc1's product (with the gather) and the latent kernel
            let want_n = if latent_fc1 { 1 } else { 2 };
            let how = format!("{name}, latent forward in fc1 {latent_fc1}");
            let how = fusion_on(
                &mut gpu,
                f,
                "the latent forward in fc1's product",
                latent_fc1,
                &ops,
                want_n,
                &how,
            );
            let g = run(&mut gpu);
            // against the CPU, or (on tensor cores) the latent kernel's run
            let want = if opts.is_none() {
                &cpu
            } else {
                got.first().unwrap_or(&cpu)
            };
            if opts.is_none() || latent_fc1 {
                assert_outs_close(&how, &g, want, &outs);
            }
            // x as given: exact; gathered, the store's pixels / 255: WGSL division is
            // within 2.5 ULP (NVIDIA's differs from the CPU's correctly rounded one),
            // so 1e-6 absolute on values ≤ 1, as gather_unpacks_bytes; the GPU's two
            // runs, one pixel function, must agree bit for bit (below)
            if gather {
                assert_close(&format!("{how}: x"), &g[7], &cpu[7], 1e-6, 0.0);
            } else {
                assert!(g[7] == cpu[7], "{how}: x");
            }
            // again: the same bits (each counter back at 0 for the next dispatch)
            assert!(run(&mut gpu) == g, "{how}: a second run differs");
            got.push(g);
        }
        // h1 is fc1's split sums through its epilogue either way: the same bits;
        // so are ε drawn (the same counter-based normals)
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(&got[0][0]), bits(&got[1][0]), "{name}: h1");
        assert_eq!(bits(&got[0][2]), bits(&got[1][2]), "{name}: ε");
        assert_eq!(bits(&got[0][7]), bits(&got[1][7]), "{name}: x");
    }
}

/// `gpu` with fusions `f`, whose description names `note` exactly when `on`, and
/// which runs `ops` in `want_n` dispatches; `how` with the description, for
/// messages.
fn fusion_on(
    gpu: &mut vae_ood::gpu::GpuBackend,
    f: vae_ood::gpu::Fusions,
    note: &str,
    on: bool,
    ops: &[Op],
    want_n: usize,
    how: &str,
) -> String {
    gpu.set_fusions(f);
    let how = format!("{how} on {}", gpu.describe());
    assert_eq!(gpu.describe().contains(note), on, "{how}");
    assert_eq!(gpu.dispatches(ops), want_n, "{how}");
    how
}

/// Each output of `outs` (buffer, elements, absolute tolerance) in `got` written
/// and close to `want`'s.
fn assert_outs_close(how: &str, got: &[Vec<f32>], want: &[Vec<f32>], outs: &[(Buf, usize, f32)]) {
    for ((buf, n, atol), (g, w)) in outs.iter().zip(got.iter().zip(want)) {
        assert_written(&format!("{how} {buf:?}"), g, &[0..*n], true);
        assert_close(
            &format!("{how} {buf:?}"),
            &g[..*n],
            &w[..*n],
            *atol,
            MM_RTOL,
        );
    }
}

/// The latent backward in fc4's gradient pair (`matmul_pair_latent`,
/// `VAE_OOD_GPU_LATENT_PAIR=1`: the last K share of each tile of dh3 stores it and
/// its column tile's share of dz, the last tile of each band of 32 images finishes
/// dz and runs the reparameterisation backward and the head's input gradient)
/// against the six CPU ops it replaces (fc4's input and weight gradients, fc3's,
/// the reparameterisation backward, the head's input gradient) and the latent
/// kernel. 37 images (two bands, the second of 5 rows) and 261 (nine); 129 pixels
/// (fc4's input gradient splits K); hidden 67 (three column tiles, the last of
/// three columns) and 150; l = 5 and 20 (dz outputs 3 and 1 per thread of a
/// tile's row). (On tensor cores: `tensor_core_walk_against_its_twin`.)
#[test]
fn latent_backward_in_fc4s_pair() {
    let mut rng = fresh_rng("latent_backward_in_fc4s_pair");
    check_latent_in_pair(&mut rng, None);
}

/// [`latent_backward_in_fc4s_pair`] on backends opened with `opts` (None: the
/// default). With options (the tensor-core walk, whose products read f16 operands)
/// the GPU's results are compared with the same GPU's latent kernel only.
fn check_latent_in_pair(rng: &mut rand::rngs::StdRng, opts: Option<vae_ood::gpu::GpuOptions>) {
    use vae_ood::gpu::{self, Fusions, GpuBackend, Kernel};
    use vae_ood::model::Layout;
    use vae_ood::plan;
    for (b, h, l) in [(37, 67, 5), (261, 150, 20)] {
        let dims = Dims { d: 129, h, l };
        let lay = Layout::new(dims);
        let o = lay.offsets();
        let sizes = run_sizes(dims, b, 1, 1);
        // fc4 dX, fc4 dW, fc3 dX, fc3 dW, reparam bwd, head dX
        let ops: Vec<Op> = plan::backward_ops(dims, &o, &latent_batch(b, 1))[..6].to_vec();
        let Op::Matmul { p: dx, .. } = ops[0] else {
            unreachable!()
        };
        assert!(choose_splits(&dx) > 1, "fc4's input gradient splits K");
        let relu = |v: Vec<f32>| v.into_iter().map(|x| x.max(0.0)).collect::<Vec<f32>>();
        let inputs = [
            (Buf::Params, uniform(rng, lay.total, -0.2, 0.2)),
            (Buf::Logits, uniform(rng, b * dims.d, -1.0, 1.0)),
            (Buf::H3, relu(uniform(rng, b * h, -1.0, 1.0))),
            (Buf::H1, relu(uniform(rng, b * h, -1.0, 1.0))),
            (Buf::Head, uniform(rng, b * 2 * l, -3.0, 1.0)),
            (Buf::Eps, uniform(rng, b * l, -3.0, 3.0)),
            (Buf::Z, uniform(rng, b * l, -3.0, 3.0)),
        ];
        // (the tolerances of latent_forward_and_backward_in_one_dispatch_each: dz
        // summed tile by tile, then over the tiles, is another order)
        let outs = [
            (Buf::Dh3, b * h, MM_ATOL),
            (Buf::Dz, b * l, MM_ATOL),
            (Buf::Dhead, b * 2 * l, 1e-3),
            (Buf::Dh1, b * h, 1e-3),
        ];
        // the parts of Grads written: fc4's and fc3's weight and bias gradients
        let dw = [
            o.w4..o.w4 + dims.d * h,
            o.b4..o.b4 + dims.d,
            o.w3..o.w3 + h * l,
            o.b3..o.b3 + h,
        ];
        let run = |be: &mut dyn Backend| {
            be.write_idx(0, &[0]).unwrap();
            for (buf, v) in &inputs {
                be.write(*buf, 0, v).unwrap();
            }
            for (buf, ..) in &outs {
                be.write(*buf, 0, &vec![f32::NAN; buf.len(&sizes)]).unwrap();
            }
            be.write(Buf::Grads, 0, &vec![f32::NAN; lay.total]).unwrap();
            be.run(&ops).unwrap();
            let mut got: Vec<Vec<f32>> = outs
                .iter()
                .map(|(buf, ..)| be.read(*buf, 0..buf.len(&sizes)).unwrap())
                .collect();
            got.push(be.read(Buf::Grads, 0..lay.total).unwrap());
            got
        };
        let store = vec![0u8; dims.d];
        let name = format!("{b} images, hidden {h}, l {l}");
        let cpu = run(&mut *cpu_backend(&store, 1, sizes));
        for (v, (buf, n, _)) in cpu.iter().zip(&outs) {
            assert_written(&format!("{name}: CPU {buf:?}"), v, &[0..*n], true);
        }
        assert_written(&format!("{name}: CPU grads"), &cpu[4], &dw, true);
        let Some(adapter) = gpu::select_adapter().unwrap() else {
            assert!(gpu_backend(&store, 1, sizes).is_none());
            return;
        };
        let mut gpu = match opts {
            Some(o) => GpuBackend::with_options(adapter, &store, 1, sizes, o).unwrap(),
            None => GpuBackend::with_options(adapter, &store, 1, sizes, test_options()).unwrap(),
        };
        assert!(
            gpu.context().has(Kernel::MatmulPairLatent),
            "{}",
            gpu.describe()
        );
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        let mut got = Vec::new();
        for latent_pair in [false, true] {
            let f = Fusions {
                latent_pair,
                ..Fusions::DEFAULT
            };
            // the pair, (the latent kernel,) fc3's weight gradient
            let want_n = if latent_pair { 2 } else { 3 };
            let how = format!("{name}, latent backward in the pair {latent_pair}");
            let note = "the latent backward in fc4's gradient pair";
            let how = fusion_on(&mut gpu, f, note, latent_pair, &ops, want_n, &how);
            let g = run(&mut gpu);
            // against the CPU, or (on tensor cores) the latent kernel's run
            let want = if opts.is_none() {
                &cpu
            } else {
                got.first().unwrap_or(&cpu)
            };
            if opts.is_none() || latent_pair {
                assert_outs_close(&how, &g, want, &outs);
                assert_written(&format!("{how} grads"), &g[4], &dw, true);
                for r in &dw {
                    let what = format!("{how} dW {r:?}");
                    assert_close(
                        &what,
                        &g[4][r.clone()],
                        &want[4][r.clone()],
                        MM_ATOL,
                        MM_RTOL,
                    );
                }
            }
            // again: the same bits (each counter back at 0 for the next dispatch;
            // Grads' unwritten NaNs compared as bits)
            let again = run(&mut gpu);
            assert!(
                again.iter().map(|v| bits(v)).eq(g.iter().map(|v| bits(v))),
                "{how}: a second run differs"
            );
            got.push(g);
        }
        // dh3 is the split sums through their mask either way, and the weight
        // gradients read it and the same operands: the same bits; dz is summed in
        // another order, and so differs (the fused kernel ran)
        assert_eq!(bits(&got[0][0]), bits(&got[1][0]), "{name}: dh3");
        assert_eq!(bits(&got[0][4]), bits(&got[1][4]), "{name}: grads");
        assert_ne!(bits(&got[0][1]), bits(&got[1][1]), "{name}: dz");
    }
}

/// The ops around the latent code — head product, reparameterisation, fc3 product
/// forward; fc3 input and weight gradients, reparameterisation and head input
/// gradient backward — run on the GPU as one `latent_forward` and one
/// `latent_backward` dispatch (plus the weight gradient's own), against the CPU
/// running them op by op, and against the GPU running them unfused. The products
/// before them (fc1 forward; fc4's gradient pair) split K here (129 inputs), and
/// the latent kernels read their rows from the split sums (the reduce folded):
/// bit for bit what the unfolded run stores.
///
/// Shapes: (h, l) = (67, 5) splits every product over several threads per output
/// (G = 25, 3, 51 and 3 of 256); (300, 20) has more outputs than threads in the
/// fc3 product and the dh1 product (G = 1, each thread two outputs or one), and
/// 12 threads per dz output. Three draws per image (rows b·3 + k), 37 images.
/// The kernels with their epilogue operands read early (`VAE_OOD_GPU_EARLY_READS`:
/// bias, mask, the first draw's ε) give the same bits: with G = 1 a thread's second
/// output reads its operands late, and later draws their ε.
#[test]
fn latent_forward_and_backward_in_one_dispatch_each() {
    use vae_ood::gpu::{self, Fusions, GpuBackend, GpuOptions};
    use vae_ood::model::Layout;
    use vae_ood::plan;
    let mut rng = fresh_rng("latent_forward_and_backward_in_one_dispatch_each");
    // workgroups of 256 threads (300 outputs: more than the threads, a loop over
    // them) and of the most the adapter allows (1024 on lavapipe: shares of every
    // output summed by several threads)
    for (h, l, eps_given, threads) in [
        (67, 5, true, None),
        (300, 20, true, Some(256)),
        (300, 20, true, None),
        (67, 5, false, None),
    ] {
        let dims = Dims { d: 129, h, l };
        let (b, k) = (37, 3);
        let lay = Layout::new(dims);
        let sizes = run_sizes(dims, b, k, 1);
        let bt = latent_batch(b, k);
        let o = lay.offsets();
        // fc1 fwd, head fwd, reparam fwd, fc3 fwd
        let mut fwd: Vec<Op> = plan::forward_ops(dims, &o, &bt, true)[1..5].to_vec();
        // fc4 dX, fc4 dW, fc3 dX, fc3 dW, reparam bwd, head dX
        let bwd: Vec<Op> = plan::backward_ops(dims, &o, &bt)[..6].to_vec();
        for op in &mut fwd {
            if let Op::ReparamForward(p) = op {
                p.eps_given = eps_given as u32;
            }
        }
        for (ops, at) in [(&fwd, 0), (&bwd, 0)] {
            let Op::Matmul { p, .. } = ops[at] else {
                unreachable!()
            };
            assert!(
                choose_splits(&p) > 1,
                "the product before the latent ops splits K"
            );
        }
        // weights ~ PyTorch's init scale; activations ReLU outputs (about half zeros)
        let params: Vec<f32> = uniform(&mut rng, lay.total, -0.2, 0.2);
        let relu = |v: Vec<f32>| v.into_iter().map(|x| x.max(0.0)).collect::<Vec<f32>>();
        let inputs_fwd = vec![
            (Buf::Params, params.clone()),
            (Buf::X, uniform(&mut rng, b * dims.d, 0.0, 1.0)),
            (Buf::Eps, uniform(&mut rng, b * k * l, -3.0, 3.0)),
        ];
        let inputs_bwd = vec![
            (Buf::Params, params),
            (Buf::Logits, uniform(&mut rng, b * k * dims.d, -1.0, 1.0)),
            (Buf::H3, relu(uniform(&mut rng, b * k * h, -1.0, 1.0))),
            (Buf::H1, relu(uniform(&mut rng, b * h, -1.0, 1.0))),
            (Buf::Head, uniform(&mut rng, b * 2 * l, -3.0, 1.0)),
            (Buf::Eps, uniform(&mut rng, b * k * l, -3.0, 3.0)),
            (Buf::Z, uniform(&mut rng, b * k * l, -3.0, 3.0)),
        ];
        // what each direction writes, the region, and the tolerance against the CPU
        let out_fwd = latent_forward_outs(b, k, h, l, eps_given);
        let out_bwd = [
            (Buf::Dh3, b * k * h, MM_ATOL),
            (Buf::Dz, b * k * l, MM_ATOL),
            (Buf::Dhead, b * 2 * l, 1e-3),
            (Buf::Dh1, b * h, 1e-3),
        ];
        let run = |be: &mut dyn Backend,
                   ops: &[Op],
                   inputs: &[(Buf, Vec<f32>)],
                   outs: &[(Buf, usize, f32)]| {
            be.write_idx(0, &[0]).unwrap();
            for (buf, v) in inputs {
                be.write(*buf, 0, v).unwrap();
            }
            for (buf, ..) in outs {
                if !inputs.iter().any(|(i, _)| i == buf) {
                    be.write(*buf, 0, &vec![f32::NAN; buf.len(&sizes)]).unwrap();
                }
            }
            be.write(Buf::Grads, 0, &vec![f32::NAN; lay.total]).unwrap();
            be.run(ops).unwrap();
            let mut got: Vec<Vec<f32>> = outs
                .iter()
                .map(|(buf, ..)| be.read(*buf, 0..buf.len(&sizes)).unwrap())
                .collect();
            got.push(be.read(Buf::Grads, 0..lay.total).unwrap());
            got
        };
        let store = vec![0u8; dims.d];
        let mut cpu = cpu_backend(&store, 1, sizes);
        let want_fwd = run(&mut *cpu, &fwd, &inputs_fwd, &out_fwd);
        let want_bwd = run(&mut *cpu, &bwd, &inputs_bwd, &out_bwd);
        let name = format!("latent h={h} l={l} eps_given={eps_given} threads={threads:?}");
        for (v, (buf, n, _)) in want_fwd.iter().zip(&out_fwd) {
            let poisoned = !inputs_fwd.iter().any(|(i, _)| i == buf);
            assert_written(&format!("{name}: CPU {buf:?}"), v, &[0..*n], poisoned);
        }
        for (v, (buf, n, _)) in want_bwd.iter().zip(&out_bwd) {
            assert_written(&format!("{name}: CPU {buf:?}"), v, &[0..*n], true);
        }
        // the weight gradients (and bias gradients) of fc4 and fc3 are the only parts
        // of Grads written
        let dw = [
            o.w4..o.w4 + dims.d * h,
            o.b4..o.b4 + dims.d,
            o.w3..o.w3 + h * l,
            o.b3..o.b3 + h,
        ];
        let bwd_grads = want_bwd.len() - 1;
        assert_written(
            &format!("{name}: CPU grads"),
            &want_bwd[bwd_grads],
            &dw,
            true,
        );
        let Some(adapter) = gpu::select_adapter().unwrap() else {
            assert!(gpu_backend(&store, 1, sizes).is_none());
            return;
        };
        let opts = GpuOptions {
            latent_threads: threads,
            ..GpuOptions::default()
        };
        let mut gpu = GpuBackend::with_options(adapter, &store, 1, sizes, opts).unwrap();
        assert_eq!(
            gpu.describe().contains("latent kernels of 256 threads"),
            threads == Some(256),
            "{name}: {}",
            gpu.describe()
        );
        let mut folded_or_not = Vec::new();
        for (latent, reduces) in [(true, true), (true, false), (false, true)] {
            gpu.set_fusions(Fusions {
                latent,
                reduces,
                ..Fusions::ALL
            });
            let how = format!("{name}, GPU latent fusion {latent}, folds {reduces}");
            if latent {
                // the product, then the latent kernel (the split product's reduce
                // between them when not folded); backward the fc4 pair, the latent
                // kernel and fc3's weight gradient
                let reduce = !reduces as usize;
                assert_eq!(gpu.dispatches(&fwd), 2 + reduce, "{how}: forward");
                assert_eq!(gpu.dispatches(&bwd), 3 + reduce, "{how}: backward");
            } else {
                assert!(gpu.dispatches(&fwd) >= 4 && gpu.dispatches(&bwd) >= 4);
            }
            let mut results = Vec::new();
            for (ops, inputs, outs, want) in [
                (&fwd, &inputs_fwd, &out_fwd[..], &want_fwd),
                (&bwd, &inputs_bwd, &out_bwd[..], &want_bwd),
            ] {
                let got = run(&mut gpu, ops, inputs, outs);
                for ((buf, n, atol), (g, w)) in outs.iter().zip(got.iter().zip(want)) {
                    let poisoned = !inputs.iter().any(|(i, _)| i == buf);
                    assert_written(&format!("{how} {buf:?}"), g, &[0..*n], poisoned);
                    assert_close(
                        &format!("{how} {buf:?}"),
                        &g[..*n],
                        &w[..*n],
                        *atol,
                        MM_RTOL,
                    );
                }
                let (g, w) = (got.last().unwrap(), want.last().unwrap());
                let dw_written = if outs[0].0 == Buf::Dh3 { &dw[..] } else { &[] };
                assert_written(&format!("{how} grads"), g, dw_written, true);
                for r in dw_written {
                    let what = format!("{how} dW {r:?}");
                    assert_close(&what, &g[r.clone()], &w[r.clone()], MM_ATOL, MM_RTOL);
                }
                results.push(got);
            }
            if latent {
                folded_or_not.push(results);
            }
        }
        // a folded reduce stores what the reduce dispatch would have: the same bits
        let bits = |v: &Vec<Vec<f32>>| {
            v.iter()
                .map(|x| x.iter().map(|f| f.to_bits()).collect::<Vec<u32>>())
                .collect::<Vec<_>>()
        };
        let (folded, not) = (&folded_or_not[0], &folded_or_not[1]);
        for (dir, (a, b)) in folded.iter().zip(not).enumerate() {
            assert!(bits(a) == bits(b), "{name}: folded vs not, direction {dir}");
        }
        // with the epilogue operands read early (`EARLY`), folded and not: the same
        // values, so the same bits
        let adapter = gpu::select_adapter()
            .unwrap()
            .expect("the adapter found above");
        let opts = GpuOptions {
            early_reads: true,
            ..opts
        };
        let mut early = GpuBackend::with_options(adapter, &store, 1, sizes, opts).unwrap();
        assert!(early.describe().contains("early reads"), "{name}");
        for (reduces, want) in [(true, folded), (false, not)] {
            early.set_fusions(Fusions {
                latent: true,
                reduces,
                ..Fusions::ALL
            });
            let got = [
                run(&mut early, &fwd, &inputs_fwd, &out_fwd),
                run(&mut early, &bwd, &inputs_bwd, &out_bwd),
            ];
            for (dir, (a, b)) in got.iter().zip(want).enumerate() {
                assert!(
                    bits(a) == bits(b),
                    "{name}: early reads, folds {reduces}, direction {dir}"
                );
            }
        }
    }
}

/// Two layers' weight gradients — different A and B, both into Grads (weights and
/// biases at disjoint offsets) — as one `matmul_pair` dispatch (problem 1's A from
/// the pair's a1 binding), against the CPU and against two dispatches (same bits).
/// 37 rows; 53 × 29 and 20 × 67 gradients: partial tiles in both problems.
#[test]
fn matmul_pair_two_weight_gradients() {
    weight_gradients_in_one_dispatch(
        "matmul_pair_two_weight_gradients",
        &[
            (Buf::Logits, Buf::X, 53, 29, 100, 2000),
            (Buf::Dh3, Buf::H1, 20, 67, 3000, 4400),
        ],
    );
}

/// Three layers' weight gradients as one `matmul_triple` dispatch (problem 2's A
/// and B from the triple's own a2 and b2 bindings), against the CPU and against
/// three dispatches (same bits): 53 × 29, 20 × 67 and 10 × 41 gradients of 37
/// rows, the last bias gradient right after the first weights.
#[test]
fn matmul_triple_three_weight_gradients() {
    weight_gradients_in_one_dispatch(
        "matmul_triple_three_weight_gradients",
        &[
            (Buf::Logits, Buf::X, 53, 29, 100, 2000),
            (Buf::Dh3, Buf::H1, 20, 67, 3000, 4400),
            (Buf::Dhead, Buf::Z, 10, 41, 5000, 100 + 53 * 29),
        ],
    );
}

/// Weight gradients dW (n, k) = dYᵀ X and db of 37 rows, one per (dY buffer, X
/// buffer, n, k, weight offset, bias offset) into Grads, on fresh random inputs:
/// the CPU, then the GPU in one dispatch and one per product.
fn weight_gradients_in_one_dispatch(name: &str, specs: &[(Buf, Buf, usize, usize, usize, usize)]) {
    let mut rng = fresh_rng(name);
    let m = 37;
    let ops: Vec<Op> = specs
        .iter()
        .map(|&(a, b, n, k, w, bias)| Op::Matmul {
            a,
            b,
            e: Buf::Params,
            c: Buf::Grads,
            p: MatmulParams::linear_backward_weight(m, k, n, w, bias),
        })
        .collect();
    let inputs: Vec<(Buf, Vec<f32>)> = specs
        .iter()
        .flat_map(|&(a, b, n, k, ..)| [(a, m * n, -1.0, 1.0), (b, m * k, 0.0, 1.0)])
        .map(|(buf, len, lo, hi)| (buf, uniform(&mut rng, len, lo, hi)))
        .collect();
    let run = |be: &mut dyn Backend| {
        for (buf, v) in &inputs {
            be.write(*buf, 0, v).unwrap();
        }
        be.write(Buf::Grads, 0, &vec![f32::NAN; SIZES.params])
            .unwrap();
        be.run(&ops).unwrap();
        be.read(Buf::Grads, 0..SIZES.params).unwrap()
    };
    let regions: Vec<Range<usize>> = specs
        .iter()
        .flat_map(|&(_, _, n, k, w, bias)| [w..w + n * k, bias..bias + n])
        .collect();
    let cpu = run(&mut *cpu_backend(&[0; 4], 1, SIZES));
    assert_written("CPU grads", &cpu, &regions, true);
    // one dispatch, then one per product, with the same bits (or None: no adapter,
    // see common)
    let Some(results) = gpu_one_dispatch_and_apart(&[0; 4], 1, &ops, &[Buf::Grads], |be| [run(be)])
    else {
        return;
    };
    for ([res], how) in results.iter().zip(["one dispatch", "one dispatch each"]) {
        assert_written(&format!("grads, {how}"), res, &regions, true);
        for r in &regions {
            // sums of 37 O(1) terms: as MM_ATOL/MM_RTOL
            let what = format!("dW, db {r:?}, {how}");
            assert_close(&what, &res[r.clone()], &cpu[r.clone()], MM_ATOL, MM_RTOL);
        }
    }
}

/// IWAE scoring with K = 64 draws per image, the whole forward as `forward_ops`
/// builds it (gather, fc1, the latent block walking 64 draws per workgroup, fc4,
/// BCE, the importance-weighted loss), on the GPU with the latent fusion and
/// without, against the CPU: per-image −log p̂(x) and the batch sum.
#[test]
fn iwae_scoring_with_64_draws_through_the_latent_block() {
    use vae_ood::gpu::{self, Fusions, GpuBackend};
    use vae_ood::model::Layout;
    use vae_ood::plan::{self, Batch};
    let mut rng = fresh_rng("iwae_scoring_with_64_draws_through_the_latent_block");
    let dims = Dims { d: D, h: 67, l: 5 };
    let (b, k) = (7, 64);
    let lay = Layout::new(dims);
    let sizes = run_sizes(dims, b, k, 1);
    let store = random_store(&mut rng);
    let idx: Vec<u32> = (0..b)
        .map(|_| rng.random_range(0..N_IMAGES as u32))
        .collect();
    let bt = Batch {
        images: b,
        draws: k,
        idx_off: 0,
        seed: 11,
        stream: 5,
        row_base: 40,
        out_off: 0,
        slot: Some(0),
        mode: LOSS_IWAE,
    };
    // ε given (the same on both sides), so that only rounding separates them
    let mut ops = plan::forward_ops(dims, &lay.offsets(), &bt, false);
    for op in &mut ops {
        if let Op::ReparamForward(p) = op {
            p.eps_given = 1;
        }
    }
    let eps = uniform(&mut rng, b * k * dims.l, -2.5, 2.5);
    let params = lay.init(rng.random());
    let run = |be: &mut dyn Backend| {
        be.write_idx(0, &idx).unwrap();
        be.write(Buf::Params, 0, &params).unwrap();
        be.write(Buf::Eps, 0, &eps).unwrap();
        be.write(Buf::SampleLoss, 0, &vec![f32::NAN; b]).unwrap();
        be.write(Buf::BatchLoss, 0, &[f32::NAN]).unwrap();
        be.run(&ops).unwrap();
        (
            be.read(Buf::SampleLoss, 0..b).unwrap(),
            be.read(Buf::BatchLoss, 0..1).unwrap(),
        )
    };
    let cpu = run(&mut *cpu_backend(&store, idx.len(), sizes));
    assert_written("CPU scores", &cpu.0, &[0..b], true);
    let Some(adapter) = gpu::select_adapter().unwrap() else {
        assert!(gpu_backend(&store, idx.len(), sizes).is_none());
        return;
    };
    let mut gpu =
        GpuBackend::with_options(adapter, &store, idx.len(), sizes, test_options()).unwrap();
    for latent in [true, false] {
        gpu.set_fusions(Fusions {
            latent,
            ..Fusions::ALL
        });
        let got = run(&mut gpu);
        let how = format!("GPU, latent fusion {latent}");
        // ~90 nats per image, each draw's log-weight a sum over 129 pixels and 5
        // latents in f32 (rounding ~1e-5 of 90) through a log-mean-exp of 64 terms
        // (exp and log within a few ULP): 1e-3 absolute is a 100× margin, and
        // dropping or repeating one draw of 64 moves a score by far more
        assert_close(&format!("{how} scores"), &got.0, &cpu.0, 1e-3, 1e-6);
        assert_close(&format!("{how} batch sum"), &got.1, &cpu.1, 7e-3, 1e-6);
    }
}

/// The gather of `rows` images of `d` pixels (index entries 5..) and the product
/// that reads them: x (rows, d) · Wᵀ (d, n) + bias, ReLU → h1, W at 300.
fn gather_and_product(rows: usize, d: usize, n: usize) -> [Op; 2] {
    [
        Op::Gather(GatherParams {
            rows: rows as u32,
            d: d as u32,
            idx_off: 5,
            _pad: 0,
        }),
        Op::Matmul {
            a: Buf::X,
            b: Buf::Params,
            e: Buf::Params,
            c: Buf::H1,
            p: MatmulParams::linear(rows, d, n, 300, 300 + n * d, true),
        },
    ]
}

/// A batch's gather read by the product after it (fc1's forward) straight from the
/// image store, x written on the way, as one `matmul_gather` dispatch (and the
/// product's split-K reduce): against the CPU (`gather_pixels`, then `matmul`) and
/// against the GPU running the gather on its own (same bits). 37 rows of 129
/// pixels (K split in five shares, a partial last one) into 67 ReLU units, and of
/// 100 pixels (not split); x and the product are poisoned first.
#[test]
fn gather_read_by_the_product_in_one_dispatch() {
    let mut rng = fresh_rng("gather_read_by_the_product_in_one_dispatch");
    let (rows, n) = (37, 67);
    let store = random_store(&mut rng);
    let idx: Vec<u32> = (0..rows + 5)
        .map(|_| rng.random_range(0..N_IMAGES as u32))
        .collect();
    for (d, splits) in [(D, 5), (100, 1)] {
        let ops = gather_and_product(rows, d, n);
        let Op::Matmul { p: product, .. } = ops[1] else {
            unreachable!()
        };
        assert_eq!(choose_splits(&product), splits);
        let params = uniform(&mut rng, SIZES.params, -0.2, 0.2);
        let outs = [Buf::X, Buf::H1];
        let run = |be: &mut dyn Backend| {
            be.write_idx(0, &idx).unwrap();
            be.write(Buf::Params, 0, &params).unwrap();
            for b in outs {
                be.write(b, 0, &vec![f32::NAN; b.len(&SIZES)]).unwrap();
            }
            be.run(&ops).unwrap();
            outs.map(|b| be.read(b, 0..b.len(&SIZES)).unwrap())
        };
        let cpu = run(&mut *cpu_backend(&store, idx.len(), SIZES));
        let regions = [0..rows * d, 0..rows * n];
        for (i, b) in outs.iter().enumerate() {
            assert_written(&format!("CPU {b:?}"), &cpu[i], &regions[i..=i], true);
        }
        // fused: the product (and its reduce); apart: the gather too
        let reduce = (splits > 1) as usize;
        let counts = (1 + reduce, 2 + reduce);
        let Some(results) = gpu_fused_and_apart(&store, idx.len(), &ops, counts, &outs, run) else {
            return;
        };
        for (res, how) in results.iter().zip(["one dispatch", "apart"]) {
            for (i, b) in outs.iter().enumerate() {
                let what = format!("{b:?} of {d} pixels, {how}");
                assert_written(&what, &res[i], &regions[i..=i], true);
                let r = regions[i].clone();
                // x: as gather_unpacks_bytes; the product: as MM_ATOL/MM_RTOL
                let (atol, rtol) = if i == 0 {
                    (1e-6, 0.0)
                } else {
                    (MM_ATOL, MM_RTOL)
                };
                assert_close(&what, &res[i][r.clone()], &cpu[i][r], atol, rtol);
            }
        }
    }
}

/// A training step's last three weight gradients and its Adam step as one
/// `matmul_triple_adam` dispatch: the triple's gradients get their Adam step in
/// its epilogue, the parameters it does not write (the tail: at the end of the
/// buffer, 16,630 of them over 17 workgroups, the last one partial; or between
/// the first and second product's regions) in workgroups after its tiles. Against
/// the CPU (three `matmul`, then `adam`) and against the GPU running the four
/// apart (same bits): gradients, parameters and both moments, on fresh random
/// values everywhere (the tail's gradients are the ones given).
#[test]
fn weight_gradients_and_adam_in_one_dispatch() {
    let mut rng = fresh_rng("weight_gradients_and_adam_in_one_dispatch");
    let m = 37;
    // (dY, X, n, k, weight offset, bias offset) per product, Adam's n
    type Spec = [(Buf, Buf, usize, usize, usize, usize); 3];
    let at_end: Spec = [
        (Buf::Logits, Buf::X, 53, 29, 0, 53 * 29),
        (Buf::Dh3, Buf::H1, 20, 67, 1590, 1590 + 20 * 67),
        (Buf::Dhead, Buf::Z, 10, 41, 2950, 2950 + 410),
    ];
    let between: Spec = [
        (Buf::Logits, Buf::X, 53, 29, 0, 53 * 29),
        (Buf::Dh3, Buf::H1, 20, 67, 5000, 5000 + 20 * 67),
        (Buf::Dhead, Buf::Z, 10, 41, 6360, 6360 + 410),
    ];
    for (specs, n) in [(at_end, SIZES.params), (between, 6780)] {
        let adam = AdamParams::at_step(n, 1e-3, 0.9, 0.999, 1e-8, 3);
        let mut ops: Vec<Op> = specs
            .iter()
            .map(|&(a, b, rows, k, w, bias)| Op::Matmul {
                a,
                b,
                e: Buf::Params,
                c: Buf::Grads,
                p: MatmulParams::linear_backward_weight(m, k, rows, w, bias),
            })
            .collect();
        ops.push(Op::Adam(adam));
        let p = SIZES.params;
        let mut inputs: Vec<(Buf, Vec<f32>)> = specs
            .iter()
            .flat_map(|&(a, b, rows, k, ..)| [(a, m * rows, -1.0, 1.0), (b, m * k, 0.0, 1.0)])
            .map(|(buf, len, lo, hi)| (buf, uniform(&mut rng, len, lo, hi)))
            .collect();
        inputs.extend(adam_state(&mut rng, p));
        let outs = [Buf::Grads, Buf::Params, Buf::AdamM, Buf::AdamV];
        let run = |be: &mut dyn Backend| {
            for (buf, v) in &inputs {
                be.write(*buf, 0, v).unwrap();
            }
            be.run(&ops).unwrap();
            outs.map(|b| be.read(b, 0..p).unwrap())
        };
        let cpu = run(&mut *cpu_backend(&[0; 4], 1, SIZES));
        let Some(results) = gpu_one_dispatch_and_apart(&[0; 4], 1, &ops, &outs, run) else {
            return;
        };
        for (res, how) in results.iter().zip(["one dispatch", "apart"]) {
            // gradients: sums of 37 O(1) terms, as MM_ATOL/MM_RTOL (|g| ≤ 37, within
            // 1e-4 + 1e-4·37 ≈ 4e-3 of the CPU's). m moves by (1 − β1) of that, 4e-4;
            // v by (1 − β2)·2|g| of it, 3e-4; the update (≤ lr·|m̂|/√v̂, a few lr) by
            // a relative 1e-3 of that at most: 1e-5 on the parameters, plus their
            // rounding (1e-6 relative on |p| ≤ 1)
            for (i, (atol, rtol)) in [(MM_ATOL, MM_RTOL), (1e-5, 1e-6), (4e-4, 1e-5), (3e-4, 1e-5)]
                .into_iter()
                .enumerate()
            {
                let what = format!("{:?}, Adam over {n}, {how}", outs[i]);
                assert_close(&what, &res[i][..n], &cpu[i][..n], atol, rtol);
                // past Adam's n, every buffer as it was given
                assert_eq!(res[i][n..], cpu[i][n..], "{what} past n");
            }
        }
        // the parameters moved (by ~lr each, 100× the tolerance above, so that the
        // comparison would have caught a parameter Adam left alone; a few may not
        // move where m̂ cancels to ~0)
        let given = &inputs[inputs.len() - 4].1;
        let moved = (0..n).filter(|&i| results[0][1][i] != given[i]).count();
        assert!(moved * 100 >= n * 99, "{moved} of {n} parameters moved");
    }
}

/// `VAE_OOD_GPU_ONES_COLUMN=1`: the matmul gets a weight gradient's bias gradient
/// as an extra column of ones in B (in the padding of the last tile, where the
/// gradient has k % 32 ≠ 0 columns) instead of row sums beside the multiply, and
/// keeps the row sums where there is no padding (k = 64) — with the same bits as
/// without it, on one product each, three in one `matmul_triple` and two in one
/// `matmul_pair`, and within MM_ATOL/MM_RTOL of the CPU; every buffer poisoned, so
/// nothing is written outside the gradients.
#[test]
fn bias_gradient_as_a_column_of_ones() {
    use vae_ood::gpu::{self, GpuBackend, GpuOptions};
    let mut rng = fresh_rng("bias_gradient_as_a_column_of_ones");
    let m = 37;
    // (dY buffer, X buffer, n, k, weight offset, bias offset)
    let specs = [
        (Buf::Logits, Buf::X, 53, 29, 100, 2000),
        (Buf::Dh3, Buf::H1, 20, 64, 3000, 4400),
        (Buf::Dhead, Buf::Z, 10, 41, 5000, 100 + 53 * 29),
    ];
    let op = |&(a, b, n, k, w, bias): &(Buf, Buf, usize, usize, usize, usize)| Op::Matmul {
        a,
        b,
        e: Buf::Params,
        c: Buf::Grads,
        p: MatmulParams::linear_backward_weight(m, k, n, w, bias),
    };
    let inputs: Vec<(Buf, Vec<f32>)> = specs
        .iter()
        .flat_map(|&(a, b, n, k, ..)| [(a, m * n, -1.0, 1.0), (b, m * k, 0.0, 1.0)])
        .map(|(buf, len, lo, hi)| (buf, uniform(&mut rng, len, lo, hi)))
        .collect();
    let run = |be: &mut dyn Backend, ops: &[Op]| {
        for (buf, v) in &inputs {
            be.write(*buf, 0, v).unwrap();
        }
        be.write(Buf::Grads, 0, &vec![f32::NAN; SIZES.params])
            .unwrap();
        be.run(ops).unwrap();
        be.read(Buf::Grads, 0..SIZES.params).unwrap()
    };
    let regions = |specs: &[(Buf, Buf, usize, usize, usize, usize)]| -> Vec<Range<usize>> {
        specs
            .iter()
            .flat_map(|&(_, _, n, k, w, bias)| [w..w + n * k, bias..bias + n])
            .collect()
    };
    let Some(adapter) = gpu::select_adapter().unwrap() else {
        assert!(gpu_backend(&[0; 4], 1, SIZES).is_none());
        return;
    };
    // (unset is off on the FMA walk: the row sums)
    let mut gpus = [None, Some(true)].map(|ones_column| {
        let opts = GpuOptions {
            ones_column,
            ..GpuOptions::default()
        };
        GpuBackend::with_options(adapter.clone(), &[0; 4], 1, SIZES, opts).unwrap()
    });
    assert!(!gpus[0].describe().contains("ones column"));
    assert!(
        gpus[1].describe().contains("as a ones column"),
        "{}",
        gpus[1].describe()
    );
    // one product each (k = 29: the ones column; k = 64: the row sums), the triple
    // (both ways in one dispatch), and the first two as a pair
    let cases: [(&str, Vec<_>, usize); 4] = [
        ("k = 29 alone", specs[..1].to_vec(), 1),
        ("k = 64 alone", specs[1..2].to_vec(), 1),
        ("triple", specs.to_vec(), 1),
        ("pair", specs[..2].to_vec(), 1),
    ];
    for (what, sp, dispatches) in cases {
        let ops: Vec<Op> = sp.iter().map(op).collect();
        let reg = regions(&sp);
        let cpu = run(&mut *cpu_backend(&[0; 4], 1, SIZES), &ops);
        assert_written(&format!("{what}: CPU grads"), &cpu, &reg, true);
        let [off, on] = [0, 1].map(|g| {
            assert_eq!(gpus[g].dispatches(&ops), dispatches, "{what}");
            run(&mut gpus[g], &ops)
        });
        assert_written(&format!("{what}: GPU grads, ones column"), &on, &reg, true);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(&on) == bits(&off),
            "{what}: a column of ones changed bits"
        );
        for r in &reg {
            assert_close(
                &format!("{what} {r:?}, ones column"),
                &on[r.clone()],
                &cpu[r.clone()],
                MM_ATOL,
                MM_RTOL,
            );
        }
    }
}

/// The tensor-core K walk (`matmul_walk_coop.wgsl`, `VAE_OOD_GPU_COOP=1`) against
/// its CPU twin, `matmul` on operands rounded to f16, in every matmul kernel:
/// alone with bias and ReLU (37 × 129 → 67: partial blocks in every direction),
/// split over K (37 × 400 → 20), masked input gradient, a layer's pair, three
/// weight gradients in one dispatch, and the gather read by fc1's product. On
/// inputs that are f16 values already (the store's pixels 0 or 255) the walk must
/// match `matmul` within the f32 tolerances of the FMA walk. On inputs that are
/// not, it must match `matmul` on the rounded operands, and differ from the
/// unrounded product (the tensor cores really ran). The bias gradient there is, by
/// default, a column of ones in the walk (`VAE_OOD_GPU_ONES_COLUMN` unset: on on the
/// tensor cores), so it matches the twin's sums of the rounded A and moves from
/// the unrounded one; with the ones column off, a row sum of the unrounded A, it
/// matches the unrounded one. The default also gives the latent kernels 512
/// threads there (where the adapter allows them). With early reads
/// (`VAE_OOD_GPU_EARLY_READS=1`: bias and mask before the walk) every case gives the
/// same bits as without.
#[test]
fn tensor_core_walk_against_its_twin() {
    use vae_ood::gpu::{self, coop_support, GpuBackend, GpuOptions};
    let mut rng = fresh_rng("tensor_core_walk_against_its_twin");
    let Some(adapter) = gpu::select_adapter().unwrap() else {
        assert!(gpu_backend(&[0; 4], 1, SIZES).is_none());
        return;
    };
    let name = adapter.get_info().name;
    let coop = GpuOptions {
        coop: gpu::Coop::Require,
        ..GpuOptions::default()
    };
    let store: Vec<u8> = (0..N_IMAGES * D)
        .map(|_| if rng.random_bool(0.3) { 255 } else { 0 })
        .collect();
    let idx: Vec<u32> = (0..42)
        .map(|_| rng.random_range(0..N_IMAGES as u32))
        .collect();
    let (frag, sg) = match coop_support(&adapter) {
        Ok(s) => s,
        Err(why) => {
            assert!(
                std::env::var(REQUIRE_COOP_ENV).as_deref() != Ok("1"),
                "{REQUIRE_COOP_ENV}=1 but GPU adapter {name} {why}"
            );
            // the switch is refused with the reason, in one line
            let e = GpuBackend::with_options(adapter.clone(), &store, idx.len(), SIZES, coop)
                .err()
                .expect("VAE_OOD_GPU_COOP=1 on an adapter without tensor cores must fail");
            let msg = e.to_string();
            assert!(
                msg.contains("VAE_OOD_GPU_COOP=1") && msg.contains(&why) && !msg.contains('\n'),
                "{msg}"
            );
            // and the program's default (tensor cores where offered) opens the FMA
            // walk here, saying nothing of tensor cores in use
            let auto = GpuOptions {
                coop: gpu::Coop::Auto,
                ..coop
            };
            let be = GpuBackend::with_options(adapter, &store, idx.len(), SIZES, auto).unwrap();
            assert!(!be.describe().contains("tensor cores"), "{}", be.describe());
            // (nor the ones column, the tensor cores' default only)
            assert!(!be.describe().contains("ones column"), "{}", be.describe());
            eprintln!(
                "NOT RUN: the tensor-core walk's parity (GPU adapter {name} {why}); its refusal was checked instead ({REQUIRE_COOP_ENV}=1 makes this a failure)"
            );
            return;
        }
    };
    // every K step the walk takes (VAE_OOD_GPU_COOP_STEP) where the adapter has the
    // workgroup memory for it; where not, opening it must fail in one line
    let most = adapter.limits().max_compute_workgroup_storage_size;
    let mut gpus = Vec::new();
    for step in [32, 64, 128] {
        let opts = GpuOptions {
            coop_step: step,
            ..coop
        };
        let be = GpuBackend::with_options(adapter.clone(), &store, idx.len(), SIZES, opts);
        // the program's default (Coop::Auto) at this step: the tensor cores where
        // the step fits, else the FMA walk (after a notice), not an error
        let auto = GpuOptions {
            coop: gpu::Coop::Auto,
            ..opts
        };
        let auto = GpuBackend::with_options(adapter.clone(), &store, idx.len(), SIZES, auto)
            .unwrap()
            .describe();
        assert_eq!(
            auto.contains("tensor cores ("),
            gpu::coop_workgroup_bytes(step) <= most,
            "K steps of {step}, auto: {auto}"
        );
        if gpu::coop_workgroup_bytes(step) > most {
            let msg = be
                .err()
                .expect("a step beyond the workgroup memory")
                .to_string();
            assert!(
                msg.contains("VAE_OOD_GPU_COOP_STEP") && !msg.contains('\n'),
                "{msg}"
            );
            eprintln!("K steps of {step}: need more workgroup memory than {name} has ({most} bytes); refused");
            continue;
        }
        let be = be.unwrap();
        let says = format!(
            "tensor cores ({frag}x{frag}x{frag} f16 -> f32, subgroups of {sg}, K steps of {step})"
        );
        assert!(be.describe().contains(&says), "{}", be.describe());
        gpus.push(be);
    }
    // steps of 32 and 64 fit every adapter the walk runs on (lavapipe: 32,768 bytes)
    assert!(gpus.len() >= 2, "K steps of 32 and 64 must run");
    // the tensor cores' defaults: the bias gradients as a column of ones, and the
    // latent kernels in workgroups of 512 threads (256 where the adapter allows fewer)
    let allowed = {
        let l = adapter.limits();
        l.max_compute_invocations_per_workgroup
            .min(l.max_compute_workgroup_size_x)
    };
    let threads = if allowed >= 512 { 512 } else { 256 };
    for gpu in &gpus {
        let on = gpu.describe();
        assert!(on.contains("bias gradients as a ones column"), "{on}");
        assert!(
            on.contains(&format!("latent kernels of {threads} threads")),
            "{on}"
        );
    }
    // K steps of 64 with the epilogues' reads before the walk (VAE_OOD_GPU_EARLY_READS)
    let early_opts = GpuOptions {
        coop_step: 64,
        early_reads: true,
        ..coop
    };
    let mut early =
        GpuBackend::with_options(adapter.clone(), &store, idx.len(), SIZES, early_opts).unwrap();
    let mut cpu = cpu_backend(&store, idx.len(), SIZES);
    // inputs into every backend, outputs poisoned, the ops, the outputs read back
    let run = |be: &mut dyn Backend, inputs: &[(Buf, Vec<f32>)], outs: &[Buf], ops: &[Op]| {
        be.write_idx(0, &idx).unwrap();
        for (b, v) in inputs {
            be.write(*b, 0, v).unwrap();
        }
        for b in outs {
            be.write(*b, 0, &vec![f32::NAN; b.len(&SIZES)]).unwrap();
        }
        be.run(ops).unwrap();
        outs.iter()
            .map(|b| be.read(*b, 0..b.len(&SIZES)).unwrap())
            .collect::<Vec<_>>()
    };
    let rounded = |v: &[f32]| {
        let mut r = v.to_vec();
        round_to_f16(&mut r);
        r
    };
    let halves = |rng: &mut rand::rngs::StdRng, n: usize, lo: f32, hi: f32| {
        rounded(&uniform(rng, n, lo, hi))
    };
    let mm = |a, b, e, c, p| Op::Matmul { a, b, e, c, p };
    let fwd_split = MatmulParams::linear(37, 400, 20, 300, 19_000, true);
    assert!(choose_splits(&fwd_split) > 1);
    let wg = |a, b, n, k, w, bias| {
        mm(
            a,
            b,
            Buf::Params,
            Buf::Grads,
            MatmulParams::linear_backward_weight(37, k, n, w, bias),
        )
    };
    // (what, ops, output buffers and their regions, K's largest)
    type Outs = Vec<(Buf, Vec<Range<usize>>)>;
    let cases: Vec<(&str, Vec<Op>, Outs, usize)> = vec![
        (
            "forward, bias + ReLU",
            vec![mm(
                Buf::X,
                Buf::Params,
                Buf::Params,
                Buf::Logits,
                MatmulParams::linear(37, D, 67, 300, 19_000, true),
            )],
            vec![(Buf::Logits, vec![0..37 * 67])],
            D,
        ),
        (
            "forward split over K",
            vec![mm(Buf::X, Buf::Params, Buf::Params, Buf::Logits, fwd_split)],
            vec![(Buf::Logits, vec![0..37 * 20])],
            400,
        ),
        (
            "input gradient, masked",
            vec![mm(
                Buf::Logits,
                Buf::Params,
                Buf::X,
                Buf::H3,
                MatmulParams::linear_backward_input(37, 53, 101, 100, true),
            )],
            vec![(Buf::H3, vec![0..37 * 53])],
            101,
        ),
        (
            "pair: input and weight gradients",
            vec![
                mm(
                    Buf::Logits,
                    Buf::Params,
                    Buf::X,
                    Buf::H3,
                    MatmulParams::linear_backward_input(37, 53, 101, 100, true),
                ),
                wg(Buf::Logits, Buf::X, 101, 53, 9000, 18_500),
            ],
            vec![
                (Buf::H3, vec![0..37 * 53]),
                (Buf::Grads, vec![9000..9000 + 101 * 53, 18_500..18_601]),
            ],
            101,
        ),
        (
            "triple: three weight gradients",
            vec![
                wg(Buf::Logits, Buf::X, 53, 29, 100, 2000),
                wg(Buf::Dh3, Buf::H1, 20, 64, 3000, 4400),
                wg(Buf::Dhead, Buf::Z, 10, 41, 5000, 100 + 53 * 29),
            ],
            vec![(
                Buf::Grads,
                vec![
                    100..100 + 53 * 29,
                    2000..2053,
                    3000..3000 + 20 * 64,
                    4400..4420,
                    5000..5410,
                    1637..1647,
                ],
            )],
            37,
        ),
        (
            "gather read by the product",
            gather_and_product(37, D, 67).to_vec(),
            vec![(Buf::X, vec![0..37 * D]), (Buf::H1, vec![0..37 * 67])],
            D,
        ),
    ];
    for (what, ops, outs, k) in &cases {
        let mut inputs: Vec<(Buf, Vec<f32>)> = Vec::new();
        for b in [
            Buf::X,
            Buf::Logits,
            Buf::Dh3,
            Buf::H1,
            Buf::Dhead,
            Buf::Z,
            Buf::Params,
        ] {
            if !outs.iter().any(|(o, _)| *o == b) {
                let lim = if b == Buf::Params { 0.5 } else { 1.0 };
                inputs.push((b, halves(&mut rng, b.len(&SIZES), -lim, lim)));
            }
        }
        let bufs: Vec<Buf> = outs.iter().map(|o| o.0).collect();
        let want = run(&mut *cpu, &inputs, &bufs, ops);
        for gpu in gpus.iter_mut() {
            let got = run(gpu, &inputs, &bufs, ops);
            let on = gpu.describe();
            // f32 sums of up to K products of f16 values (exact in f32) in another
            // order: as MM_ATOL / MM_RTOL, and the split-K tests' 1e-3 beyond K = 129
            let atol = if *k > D { 1e-3 } else { MM_ATOL };
            for ((b, region), (g, w)) in outs.iter().zip(got.iter().zip(&want)) {
                assert_written(&format!("{what}: CPU {b:?}"), w, region, true);
                assert_written(&format!("{what}: {on} {b:?}"), g, region, true);
                for r in region {
                    let at = format!("{what}: {b:?}[{r:?}] on {on}");
                    assert_close(&at, &g[r.clone()], &w[r.clone()], atol, MM_RTOL);
                }
            }
        }
        // early reads: the same bits as K steps of 64 without
        let late = run(&mut gpus[1], &inputs, &bufs, ops);
        let got = run(&mut early, &inputs, &bufs, ops);
        for ((b, _), (g, l)) in outs.iter().zip(got.iter().zip(&late)) {
            let same = g.iter().zip(l).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{what}: {b:?} differs with early reads");
        }
    }
    // inputs that are not f16 values: the walk rounds A and B (to nearest), not
    // the bias gradient's row sums of A
    let (m, k, n) = (37, 53, 101);
    let ops = [
        mm(
            Buf::Logits,
            Buf::Params,
            Buf::X,
            Buf::H3,
            MatmulParams::linear_backward_input(m, k, n, 100, false),
        ),
        wg(Buf::Logits, Buf::X, n, k, 9000, 18_500),
    ];
    let dy = uniform(&mut rng, Buf::Logits.len(&SIZES), -1.0, 1.0);
    let x = uniform(&mut rng, Buf::X.len(&SIZES), -1.0, 1.0);
    let w = uniform(&mut rng, SIZES.params, -0.5, 0.5);
    let outs = [Buf::H3, Buf::Grads];
    let plain = vec![
        (Buf::Logits, dy.clone()),
        (Buf::X, x.clone()),
        (Buf::Params, w.clone()),
    ];
    let halved = vec![
        (Buf::Logits, rounded(&dy)),
        (Buf::X, rounded(&x)),
        (Buf::Params, rounded(&w)),
    ];
    let got = run(&mut gpus[0], &plain, &outs, &ops);
    let twin = run(&mut *cpu, &halved, &outs, &ops);
    let exact = run(&mut *cpu, &plain, &outs, &ops);
    // (K steps of 32 with the row sums: the ones column switched off)
    let sums_opts = GpuOptions {
        coop_step: 32,
        ones_column: Some(false),
        ..coop
    };
    let mut sums = GpuBackend::with_options(adapter, &store, idx.len(), SIZES, sums_opts).unwrap();
    assert!(
        !sums.describe().contains("ones column"),
        "{}",
        sums.describe()
    );
    let got_sums = run(&mut sums, &plain, &outs, &ops);
    let (dx, dw, db) = (0..m * k, 9000..9000 + n * k, 18_500..18_500 + n);
    assert_close(
        "dX on tensor cores vs its twin",
        &got[0][dx.clone()],
        &twin[0][dx.clone()],
        MM_ATOL,
        MM_RTOL,
    );
    assert_close(
        "dW on tensor cores vs its twin",
        &got[1][dw.clone()],
        &twin[1][dw.clone()],
        MM_ATOL,
        MM_RTOL,
    );
    // (n = 101: column n lies in the last tile's padding, K = 37 is not split —
    // where the ones column applies)
    assert_close(
        "db on tensor cores, ones column, vs its twin",
        &got[1][db.clone()],
        &twin[1][db.clone()],
        MM_ATOL,
        MM_RTOL,
    );
    assert_close(
        "db on tensor cores, row sums, vs f32 row sums",
        &got_sums[1][db.clone()],
        &exact[1][db.clone()],
        MM_ATOL,
        MM_RTOL,
    );
    // the rest as with the ones column
    for (what, g, w) in [
        ("dX", &got_sums[0][dx.clone()], &got[0][dx.clone()]),
        ("dW", &got_sums[1][dw.clone()], &got[1][dw.clone()]),
    ] {
        assert!(
            g.iter()
                .zip(w.iter())
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what} with row sums differs from {what} with the ones column"
        );
    }
    // f16 operands move a product by ~2⁻¹¹·√K·|terms| ≈ 1e-3; f32 sums by ~1e-6
    let far = |g: &[f32], e: &[f32]| {
        g.iter()
            .zip(e)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    };
    let moved = far(&got[0][dx.clone()], &exact[0][dx]);
    assert!(
        moved > 1e-4,
        "dX on tensor cores is the unrounded product (moved {moved}): were the operands rounded?"
    );
    // 37 rounded terms of |dY| ≤ 1 in each of 101 sums: ~2.5e-3 at most
    let moved = far(&got[1][db.clone()], &exact[1][db]);
    assert!(
        moved > 1e-4,
        "db with the ones column is the unrounded row sum (moved {moved}): did the walk sum the column?"
    );
    // the latent forward in fc1's product and the latent backward in fc4's pair
    // on K steps of 32 (where they fit beside the walk: lavapipe's 32 KB of
    // workgroup memory), against the latent kernels
    let step_32 = GpuOptions {
        coop_step: 32,
        ..coop
    };
    check_latent_in_fc1(&mut rng, Some(step_32));
    check_latent_in_pair(&mut rng, Some(step_32));
    // the BCE epilogue and the loss in fc4's pair on every K step
    for gpu in gpus.iter_mut() {
        for h in [67, 150] {
            for rows in [37, 261] {
                check_bce_epilogue(&mut rng, gpu, rows, h, true);
            }
        }
    }
}

/// The ops a training step runs from the decoder's hidden layer to fc4's
/// gradients, for `rows` images of the test's D pixels and hidden width `h`: the
/// decoder-output product (logits = h3 W4ᵀ + b4), the BCE with its gradient, the
/// per-image −ELBO (one draw, no batch sum, to SampleLoss[out_off..]), and fc4's
/// input and weight gradients (W4 and b4 at [`fc4_at`]; their gradients at the
/// same offsets of Grads).
fn decoder_output_ops(rows: usize, h: usize, out_off: usize) -> [Op; 5] {
    let (w4, b4) = fc4_at(h);
    [
        Op::Matmul {
            a: Buf::H3,
            b: Buf::Params,
            e: Buf::Params,
            c: Buf::Logits,
            p: MatmulParams::linear(rows, h, D, w4, b4, false),
        },
        Op::Bce(BceParams {
            rows: rows as u32,
            d: D as u32,
            draws: 1,
            write_grad: 1,
        }),
        Op::Loss(LossParams {
            images: rows as u32,
            draws: 1,
            out_off: out_off as u32,
            slot: NO_SLOT,
            mode: LOSS_ELBO,
            _pad: [0; 3],
        }),
        Op::Matmul {
            a: Buf::Logits,
            b: Buf::Params,
            e: Buf::H3,
            c: Buf::Dh3,
            p: MatmulParams::linear_backward_input(rows, h, D, w4, true),
        },
        Op::Matmul {
            a: Buf::Logits,
            b: Buf::H3,
            e: Buf::Params,
            c: Buf::Grads,
            p: MatmulParams::linear_backward_weight(rows, h, D, w4, b4),
        },
    ]
}

/// The BCE and its gradient in the epilogue of the decoder-output product
/// (`matmul_bce`, the default) and the loss finished in extra
/// workgroups of fc4's gradient pair (`matmul_pair_loss`): against the CPU (which
/// runs the five ops one after the other) and against the GPU with the BCE kernel.
/// 37 and 261 images (the loss tail in one and in two workgroups) of 129 pixels
/// (five column tiles, the last one holding one column), hidden width 67: the
/// product and fc4's input gradient cross tile boundaries and the input gradient
/// splits K. Hidden width 150: the product splits K too (5 shares, the last one
/// of 22), and the epilogue runs on it split (the default) as well as unsplit
/// (`VAE_OOD_GPU_BCE_SPLIT=0`). (On tensor cores: `tensor_core_walk_against_its_twin`.)
#[test]
fn bce_in_the_decoder_products_epilogue() {
    use vae_ood::gpu::{self, GpuBackend};
    let mut rng = fresh_rng("bce_in_the_decoder_products_epilogue");
    let Some(adapter) = gpu::select_adapter().unwrap() else {
        // fails unless VAE_OOD_SKIP_GPU_TESTS=1 (see common)
        assert!(gpu_backend(&[0; 4], 1, SIZES).is_none());
        return;
    };
    let mut gpu = GpuBackend::with_options(adapter, &[0; 4], 1, SIZES, test_options()).unwrap();
    for h in [67, 150] {
        for rows in [37, 261] {
            check_bce_epilogue(&mut rng, &mut gpu, rows, h, false);
        }
    }
}

/// [`bce_in_the_decoder_products_epilogue`] for `rows` images of hidden width `h`
/// on `gpu`; with
/// `f16`, on the tensor-core walk: h3 and the parameters are f16 values (so that
/// the products' operands are what the CPU reads), and fc4's gradients, whose
/// operand σ(l) − x the walk rounds to f16, are held to a looser bound.
fn check_bce_epilogue(
    rng: &mut rand::rngs::StdRng,
    gpu: &mut vae_ood::gpu::GpuBackend,
    rows: usize,
    h: usize,
    f16: bool,
) {
    use vae_ood::gpu::Fusions;
    let out_off = 11;
    let ops = decoder_output_ops(rows, h, out_off);
    let (Op::Matmul { p: fwd, .. }, Op::Matmul { p: dx, .. }) = (ops[0], ops[3]) else {
        unreachable!()
    };
    assert!(choose_splits(&dx) > 1, "fc4's input gradient splits K");
    let split = choose_splits(&fwd) > 1;
    assert_eq!(split, h > 128, "the product splits K where K ≥ 128");
    let b4 = fc4_at(h).1;
    let round = |mut v: Vec<f32>| {
        if f16 {
            round_to_f16(&mut v);
        }
        v
    };
    // a third of h3 zero (the ReLU mask of the input gradient)
    let h3: Vec<f32> = uniform(rng, Buf::H3.len(&SIZES), -0.5, 1.0)
        .into_iter()
        .map(|v| v.max(0.0))
        .collect();
    let inputs = [
        (Buf::H3, round(h3)),
        (Buf::Params, round(uniform(rng, SIZES.params, -0.5, 0.5))),
        (Buf::X, uniform(rng, Buf::X.len(&SIZES), 0.0, 1.0)),
        (Buf::Kl, uniform(rng, Buf::Kl.len(&SIZES), 0.0, 30.0)),
    ];
    let outs = [
        Buf::Logits,
        Buf::Bce,
        Buf::SampleLoss,
        Buf::Dh3,
        Buf::Grads,
        Buf::BatchLoss,
    ];
    let run = |be: &mut dyn Backend| {
        for (b, v) in &inputs {
            be.write(*b, 0, v).unwrap();
        }
        for b in outs {
            be.write(b, 0, &vec![f32::NAN; b.len(&SIZES)]).unwrap();
        }
        be.run(&ops).unwrap();
        outs.map(|b| be.read(b, 0..b.len(&SIZES)).unwrap())
    };
    let cpu = run(&mut *cpu_backend(&[0; 4], 1, SIZES));
    let regions: [Vec<Range<usize>>; 6] = [
        vec![0..rows * D],
        vec![0..rows],
        vec![out_off..out_off + rows],
        vec![0..rows * h],
        vec![100..100 + D * h, b4..b4 + D],
        vec![],
    ];
    for ((b, r), w) in outs.iter().zip(&regions).zip(&cpu) {
        assert_written(&format!("{rows} rows: CPU {b:?}"), w, r, true);
    }
    let on = gpu.describe();
    let mut results = Vec::new();
    // the epilogue on the unsplit product, on the split one, and the BCE kernel
    let ways = [(true, false), (true, true), (false, false)];
    for (bce, bce_split) in ways {
        gpu.set_fusions(Fusions {
            bce,
            bce_split,
            ..Fusions::DEFAULT
        });
        // matmul_bce and matmul_pair_loss; or the product, the BCE (with the
        // loss) and the pair; then the input gradient's split-K reduce
        let want = if bce { 3 } else { 4 };
        assert_eq!(
            gpu.dispatches(&ops),
            want,
            "{rows} rows, BCE epilogue {bce}"
        );
        // (the split product's epilogue, the default, goes unsaid)
        let says = gpu.describe();
        let note = match (bce, bce_split) {
            (false, _) => Some("the BCE kernel"),
            (true, false) => Some("BCE in the unsplit fc4's epilogue"),
            (true, true) => None,
        };
        for n in ["the BCE kernel", "BCE in the unsplit fc4's epilogue"] {
            assert_eq!(says.contains(n), note == Some(n), "{says}");
        }
        results.push(run(gpu));
    }
    // Tolerances: the logits are sums of 67 products (MM_ATOL), their gradients
    // σ(l) − x move by at most a quarter of that; each row's BCE sums 129 terms of
    // O(1) (bce_logits_with_extreme_logits: 1e-3 + 1e-5 relative), the KL added in
    // f32; fc4's gradients are products of K up to 261 of O(1) terms (the split-K
    // tests' 1e-3 + 1e-4 relative) — on tensor cores of σ(l) − x rounded to f16
    // (≤ 2⁻¹² absolute for |σ − x| ≤ 1) times weights ≤ 0.5 or h3 ≤ 1: at most
    // 129 · 2⁻¹² · 0.5 ≈ 0.016 for the input gradient, 261 · 2⁻¹² ≈ 0.064 for the
    // weight gradient's worst case (about √K times less in practice).
    let grads = if f16 { (0.07, 1e-4) } else { (1e-3, 1e-4) };
    let tol = [
        (MM_ATOL, MM_RTOL),
        (1e-3, 1e-5),
        (1e-3, 1e-5),
        grads,
        grads,
        (0.0, 0.0),
    ];
    let hows = ["BCE epilogue", "BCE epilogue, split K", "BCE kernel"];
    for (res, how) in results.iter().zip(hows) {
        for (((b, r), (atol, rtol)), (g, w)) in
            outs.iter().zip(&regions).zip(tol).zip(res.iter().zip(&cpu))
        {
            let what = format!("{rows} rows, {how} on {on}: {b:?}");
            assert_written(&what, g, r, true);
            for r in r {
                assert_close(&what, &g[r.clone()], &w[r.clone()], atol, rtol);
            }
        }
    }
    // The epilogue on the split product: the same logits as the BCE kernel's (the
    // shares added in the same order) and so the same gradient (the same
    // expression of them), and the same fc4 gradients from it, bit for bit; so
    // the unsplit one where the product does not split (the same tiles); the BCE
    // sums in another order (close, above).
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for i in [0, 3, 4] {
        for (w, how) in [(1, "split K"), (0, "unsplit")] {
            if w == 0 && split {
                continue;
            }
            assert_eq!(
                bits(&results[w][i]),
                bits(&results[2][i]),
                "{rows} rows, hidden {h} on {on}: {:?}, BCE epilogue ({how}) vs BCE kernel",
                outs[i]
            );
        }
    }
    if split {
        // (the unsplit product sums K in another order: were the logits its own?)
        assert_ne!(bits(&results[0][0]), bits(&results[2][0]));
    }
}

/// Where [`decoder_output_ops`] puts W4 and b4 (and their gradients) for hidden
/// width `h`: W4 at 100, b4 at 9000 or after W4.
fn fc4_at(h: usize) -> (usize, usize) {
    (100, 9000.max(100 + D * h))
}
