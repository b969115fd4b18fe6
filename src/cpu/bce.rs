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

/// logits: (R, d), x: (R / K, d); bce: (R) per-row sum. When `write_grad`, logits
/// are replaced in place by the gradient σ(t) − x of the summed loss.
pub fn bce_logits(bce: &mut [f32], logits: &mut [f32], x: &[f32], p: &BceParams) {
    let (d, kd) = (p.d as usize, p.draws as usize);
    for r in 0..p.rows as usize {
        let xr = &x[(r / kd) * d..(r / kd + 1) * d];
        let lr = &mut logits[r * d..(r + 1) * d];
        let mut acc = 0.0f32;
        for (t, &xv) in lr.iter_mut().zip(xr) {
            acc += bce_with_logits(*t, xv);
            if p.write_grad != 0 {
                *t = 1.0 / (1.0 + (-*t).exp()) - xv;
            }
        }
        bce[r] = acc;
    }
}
