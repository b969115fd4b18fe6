//! CPU twin of `shaders/bce.wgsl`: Bernoulli cross-entropy of the decoder logits
//! against the pixels, summed per row, and its gradient.

use bytemuck::{Pod, Zeroable};

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq, Default)]
pub struct BceParams {
    /// decoder rows R = B·K
    pub rows: u32,
    /// pixels per row (784)
    pub d: u32,
    /// draws per image K: row r compares against image r / K
    pub draws: u32,
    /// 1: overwrite `logits` with dLoss/dlogit = σ(logit) − x (training); 0: leave them
    pub write_grad: u32,
}

/// Numerically stable BCE with logits for one pixel:
/// −[x log σ(t) + (1−x) log(1−σ(t))] = max(t, 0) − t·x + log(1 + e^{−|t|}).
/// Finite for every finite logit, unlike log(sigmoid) which hits log 0 at |t| ≳ 17
/// (PyTorch's `binary_cross_entropy` on sigmoid outputs clamps log at −100 instead).
#[inline]
pub fn bce_with_logits(t: f32, x: f32) -> f32 {
    t.max(0.0) - t * x + (-t.abs()).exp().ln_1p()
}

/// e^x for x ≤ 0, branch-free so the BCE loop vectorises: x = n·ln 2 + r with
/// |r| ≤ ½ ln 2, e^r from its Taylor polynomial to r⁷ (truncation < 1e-8 relative),
/// 2ⁿ from the exponent bits. Within 2e-7 relative of `f32::exp`; 0 below −87.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting it rounds to an integer
    let x = x.max(-87.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let poly = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // n as an integer without a float-to-int conversion (Rust's saturating `as`
    // does not vectorise): t = 1.5·2²³ + n keeps ROUND's exponent, so the
    // difference of the bit patterns is n (here −126 ≤ n ≤ 0)
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    poly * scale
}

/// ln(1 + e) for e ∈ [0, 1], branch-free: with u = e / (2 + e) ∈ [0, ⅓],
/// ln(1 + e) = 2·atanh(u) = 2(u + u³/3 + u⁵/5 + …), summed to u¹⁹ (the rest is
/// < 1e-10). Accurate in relative terms for small e too.
#[inline(always)]
pub fn ln_1p_unit(e: f32) -> f32 {
    let u = e / (2.0 + e);
    let u2 = u * u;
    let s = 1.0
        + u2 * (1.0 / 3.0
            + u2 * (1.0 / 5.0
                + u2 * (1.0 / 7.0
                    + u2 * (1.0 / 9.0
                        + u2 * (1.0 / 11.0
                            + u2 * (1.0 / 13.0
                                + u2 * (1.0 / 15.0 + u2 * (1.0 / 17.0 + u2 * (1.0 / 19.0)))))))));
    2.0 * u * s
}

super::with_avx2! {
    /// logits: (R, d), x: (R / K, d); bce: (R) per-row sum of [`bce_with_logits`]
    /// (computed with the vectorisable [`exp_nonpositive`] and [`ln_1p_unit`]).
    /// When `write_grad`, logits are replaced in place by the gradient σ(t) − x of the
    /// summed loss, with σ(t) = 1/(1+e) for t ≥ 0 and e/(1+e) for t < 0, e = e^{−|t|}.
    pub fn bce_logits(bce: &mut [f32], logits: &mut [f32], x: &[f32], p: &BceParams)
        => bce_logits_body
}

#[inline(always)]
fn bce_logits_body(bce: &mut [f32], logits: &mut [f32], x: &[f32], p: &BceParams) {
    // two copies of the loop: a store under a run-time condition would become a
    // masked store, which is slow on some CPUs
    if p.write_grad != 0 {
        bce_rows::<true>(bce, logits, x, p)
    } else {
        bce_rows::<false>(bce, logits, x, p)
    }
}

#[inline(always)]
fn bce_rows<const GRAD: bool>(bce: &mut [f32], logits: &mut [f32], x: &[f32], p: &BceParams) {
    let (d, kd) = (p.d as usize, p.draws as usize);
    for r in 0..p.rows as usize {
        let xr = &x[(r / kd) * d..(r / kd + 1) * d];
        let lr = &mut logits[r * d..(r + 1) * d];
        // LANES independent partial sums so the loop vectorises (a single f32
        // accumulator would force sequential adds), two vectors' worth so that two
        // polynomial chains overlap
        const LANES: usize = 16;
        let mut acc = [0.0f32; LANES];
        let mut lc = lr.chunks_exact_mut(LANES);
        let mut xc = xr.chunks_exact(LANES);
        for (tl, xl) in (&mut lc).zip(&mut xc) {
            for k in 0..LANES {
                let (t, xv) = (tl[k], xl[k]);
                // one exp serves the loss and σ(t): e = e^{−|t|}
                let e = exp_nonpositive(-t.abs());
                acc[k] += t.max(0.0) - t * xv + ln_1p_unit(e);
                if GRAD {
                    let inv = 1.0 / (1.0 + e);
                    tl[k] = if t >= 0.0 { inv } else { e * inv } - xv;
                }
            }
        }
        let mut tail = 0.0f32;
        for (t, &xv) in lc.into_remainder().iter_mut().zip(xc.remainder()) {
            let e = exp_nonpositive(-t.abs());
            tail += t.max(0.0) - *t * xv + ln_1p_unit(e);
            if GRAD {
                let inv = 1.0 / (1.0 + e);
                *t = if *t >= 0.0 { inv } else { e * inv } - xv;
            }
        }
        let acc = acc.iter().sum::<f32>() + tail;
        bce[r] = acc;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_and_log1p_match_std() {
        let mut worst = (0.0f32, 0.0f32);
        for i in 0..=200_000 {
            let x = -90.0 * i as f32 / 200_000.0;
            let (f, s) = (exp_nonpositive(x), x.exp());
            if x > -87.0 {
                let rel = ((f - s) / s).abs();
                worst.0 = worst.0.max(rel);
            } else {
                assert!(f.abs() <= 1.7e-38, "exp({x}) = {f}");
            }
            let e = i as f32 / 200_000.0;
            let (g, t) = (ln_1p_unit(e), e.ln_1p());
            worst.1 = worst.1.max(if t > 0.0 {
                ((g - t) / t).abs()
            } else {
                g.abs()
            });
        }
        assert!(worst.0 < 4e-7, "exp relative error {}", worst.0);
        assert!(worst.1 < 4e-7, "ln_1p relative error {}", worst.1);
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

    #[test]
    fn kernel_matches_the_plain_formula() {
        let d = 50;
        let logits: Vec<f32> = (0..2 * d).map(|i| (i as f32 - 50.0) * 0.7).collect();
        let x: Vec<f32> = (0..d).map(|i| (i % 7) as f32 / 6.0).collect();
        let mut l = logits.clone();
        let mut bce = [0.0f32; 2];
        bce_logits(
            &mut bce,
            &mut l,
            &x,
            &BceParams {
                rows: 2,
                d: d as u32,
                draws: 2,
                write_grad: 1,
            },
        );
        for r in 0..2 {
            let want: f32 = (0..d)
                .map(|c| bce_with_logits(logits[r * d + c], x[c]))
                .sum();
            assert!(
                (bce[r] - want).abs() <= 1e-4 * want.abs().max(1.0),
                "{} vs {want}",
                bce[r]
            );
            for c in 0..d {
                let t = logits[r * d + c];
                let g = 1.0 / (1.0 + (-t).exp()) - x[c];
                assert!((l[r * d + c] - g).abs() < 1e-6, "grad at {c}");
            }
        }
    }
}
