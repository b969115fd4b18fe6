//! How much faster could the CPU backend's products get? The five large products
//! of a training step (128 × 784 × 400 in each orientation) are ~85 % of a CPU
//! step, and each runs as `cpu::matmul` (the gemm crate) on one band of rows per
//! thread. This times `cpu::matmul` single-threaded on each of those shapes, dense
//! (training runs fc1's forward and weight gradient sparse, `sparse_micro`), beside
//! the same call on a 1024³ product — the gemm crate's best case on these cores —
//! and prints each shape's GFLOP/s as a share of it, and of the core's peak (a loop
//! of independent AVX2 fused multiply-adds on registers, where the CPU has them).
//! A share near 100 % of the 1024³ rate means the product is as fast as the GEMM
//! gets on this machine, and what is left to win is outside the products. Runs are interleaved (`rounds` of every shape in turn, the
//! median kept), as the shared dev machines drift by ±15 % within minutes. A kernel
//! experiment, not part of the training path.
//!
//!   cargo run --release --example gemm_headroom [rounds]
use std::time::Instant;
use vae_ood::cpu::{self, MatmulParams};

/// One product: its name, its params, and A, B, C sized for them.
struct Case {
    name: &'static str,
    p: MatmulParams,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    flops: f64,
}

fn case(name: &'static str, p: MatmulParams, a_len: usize, b_len: usize, c_len: usize) -> Case {
    // deterministic values in ±0.05 (the values do not change a GEMM's speed)
    let fill = |n: usize, s: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * s) % 1000) as f32 * 1e-4 - 0.05)
            .collect()
    };
    Case {
        name,
        flops: 2.0 * p.m as f64 * p.n as f64 * p.k as f64,
        a: fill(a_len, 7919),
        b: fill(b_len, 104_729),
        c: vec![0.0; c_len],
        p,
    }
}

/// Seconds per call of `c`'s product, over enough calls for ~0.2 s.
fn time(c: &mut Case) -> f64 {
    let reps = (4e10 / c.flops).clamp(3.0, 2000.0) as usize;
    cpu::matmul(&mut c.c, &c.a, &c.b, &c.b, &c.p);
    let t = Instant::now();
    for _ in 0..reps {
        cpu::matmul(&mut c.c, &c.a, &c.b, &c.b, &c.p);
    }
    t.elapsed().as_secs_f64() / reps as f64
}

/// FLOP/s of one core issuing only independent 8-wide fused multiply-adds (two
/// flops per lane): the most any f32 kernel can do here. `None` without AVX2+FMA.
fn fma_peak() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        const CHAINS: usize = 12; // more than FMA latency × ports: never stalls
        const ITERS: usize = 20_000_000;
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run() -> f32 {
            use std::arch::x86_64::*;
            let mut acc = [_mm256_set1_ps(0.0); CHAINS];
            let (x, y) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
            for _ in 0..ITERS {
                for a in acc.iter_mut() {
                    *a = _mm256_fmadd_ps(*a, x, y);
                }
            }
            let mut out = [0.0f32; 8];
            let sum = acc
                .iter()
                .fold(_mm256_set1_ps(0.0), |s, &a| _mm256_add_ps(s, a));
            _mm256_storeu_ps(out.as_mut_ptr(), sum);
            out.iter().sum()
        }
        let t = Instant::now();
        // SAFETY: AVX2 and FMA detected above
        let sink = unsafe { run() };
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(sink);
        return Some((ITERS * CHAINS * 8 * 2) as f64 / secs);
    }
    None
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let (b, d, h) = (128, 784, 400);
    let dense = |p: MatmulParams| MatmulParams { flags: 0, ..p };
    let big = 1024;
    let mut cases = [
        // C (1024, 1024) = A (1024, 1024) · B (1024, 1024), all row-major: the
        // reference
        case(
            "1024³ (reference)",
            MatmulParams {
                m: big as u32,
                n: big as u32,
                k: big as u32,
                a_si: big as u32,
                a_sp: 1,
                b_sp: big as u32,
                b_sj: 1,
                c_si: big as u32,
                ..Default::default()
            },
            big * big,
            big * big,
            big * big,
        ),
        // h1 (B, H) = x (B, D) · W1ᵀ
        case(
            "fc1 fwd 128×784→400",
            dense(MatmulParams::linear(b, d, h, 0, 0, false)),
            b * d,
            h * d,
            b * h,
        ),
        // logits (B, D) = h3 (B, H) · W4ᵀ
        case(
            "fc4 fwd 128×400→784",
            dense(MatmulParams::linear(b, h, d, 0, 0, false)),
            b * h,
            d * h,
            b * d,
        ),
        // dh3 (B, H) = dlogits (B, D) · W4
        case(
            "fc4 dX 128×784→400",
            MatmulParams::linear_backward_input(b, h, d, 0, false),
            b * d,
            d * h,
            b * h,
        ),
        // dW4 (D, H) = dlogitsᵀ (D, B) · h3 (B, H)
        case(
            "fc4 dW 784×128→400",
            dense(MatmulParams::linear_backward_weight(b, h, d, 0, 0)),
            b * d,
            b * h,
            d * h,
        ),
        // dW1 (H, D) = dh1ᵀ (H, B) · x (B, D)
        case(
            "fc1 dW 400×128→784",
            dense(MatmulParams::linear_backward_weight(b, d, h, 0, 0)),
            b * h,
            b * d,
            h * d,
        ),
    ];
    let mut secs = vec![Vec::new(); cases.len()];
    let mut peaks = Vec::new();
    for _ in 0..rounds {
        peaks.extend(fma_peak());
        for (c, s) in cases.iter_mut().zip(&mut secs) {
            s.push(time(c));
        }
    }
    let median = |s: &mut Vec<f64>| {
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let gflops: Vec<(f64, f64)> = cases
        .iter()
        .zip(&mut secs)
        .map(|(c, s)| {
            let t = median(s);
            (t, c.flops / t / 1e9)
        })
        .collect();
    let reference = gflops[0].1;
    let peak = (!peaks.is_empty()).then(|| median(&mut peaks) / 1e9);
    println!("single thread, median of {rounds} interleaved rounds");
    if let Some(p) = peak {
        println!("core peak (AVX2 FMA only)            {p:>7.1} GFLOP/s");
    }
    for (c, (t, g)) in cases.iter().zip(&gflops) {
        let of_peak = peak.map_or(String::new(), |p| {
            format!(", {:.0} % of peak", 100.0 * g / p)
        });
        println!(
            "{:<22} {:>9.1} µs {:>7.1} GFLOP/s {:>5.0} % of 1024³{of_peak}",
            c.name,
            t * 1e6,
            g,
            100.0 * g / reference
        );
    }
}
