//! CPU twin of `shaders/reparam.wgsl`: z = μ + ε·σ with counter-based ε, the
//! analytic KL term per image, and the backward pass to the encoder head.

use crate::rng::normal;
use bytemuck::{Pod, Zeroable};

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq, Default)]
pub struct ReparamParams {
    /// images in the batch (B)
    pub images: u32,
    /// latent size (L)
    pub l: u32,
    /// draws of z per image (K); decoder rows are R = B·K, row r = b·K + k
    pub draws: u32,
    /// RNG key: seed, stream (the training step, or a scoring stream id) and the
    /// index of the batch's first image within its stream (so ε for an image does
    /// not depend on how the images were batched)
    pub seed: u32,
    pub stream: u32,
    pub row_base: u32,
    /// 1: read ε from `eps` instead of drawing it (fixtures, fixed-noise scoring)
    pub eps_given: u32,
    pub _pad: u32,
}

/// head: (B, 2L) = [μ | log σ²] per image.
/// z, eps: (B·K, L); kl: (B) = −½ Σ_j (1 + log σ² − μ² − σ²);
/// logpq: (B·K) = log p(z) − log q(z|x) = Σ_j (−½ z² + ½ ε² + ½ log σ²) per draw
/// (the log 2π terms cancel): the prior/posterior part of an importance weight.
/// ε for (image b, draw k, latent j) = normal(seed, stream, row_base + b, k·L + j),
/// or the value already in `eps` when `eps_given`.
pub fn reparam_forward(
    z: &mut [f32],
    eps: &mut [f32],
    kl: &mut [f32],
    logpq: &mut [f32],
    head: &[f32],
    p: &ReparamParams,
) {
    let (l, kd) = (p.l as usize, p.draws as usize);
    for b in 0..p.images as usize {
        let h = &head[b * 2 * l..(b + 1) * 2 * l];
        logpq[b * kd..(b + 1) * kd].fill(0.0);
        let mut acc = 0.0f32;
        for j in 0..l {
            let (mu, lv) = (h[j], h[l + j]);
            acc += 1.0 + lv - mu * mu - lv.exp();
            let sd = (0.5 * lv).exp();
            for k in 0..kd {
                let r = (b * kd + k) * l + j;
                let e = if p.eps_given != 0 {
                    eps[r]
                } else {
                    normal(p.seed, p.stream, p.row_base + b as u32, (k * l + j) as u32)
                };
                eps[r] = e;
                z[r] = mu + e * sd;
                logpq[b * kd + k] += 0.5 * (e * e - z[r] * z[r] + lv);
            }
        }
        kl[b] = -0.5 * acc;
    }
}

/// dhead: (B, 2L) from dz: (B·K, L), the upstream gradient of the decoder loss
/// summed over the K draws, plus the KL gradient (dKL/dμ = μ, dKL/dlog σ² = ½(σ² − 1)).
pub fn reparam_backward(
    dhead: &mut [f32],
    dz: &[f32],
    eps: &[f32],
    head: &[f32],
    p: &ReparamParams,
) {
    let (l, kd) = (p.l as usize, p.draws as usize);
    for b in 0..p.images as usize {
        for j in 0..l {
            let (mu, lv) = (head[b * 2 * l + j], head[b * 2 * l + l + j]);
            let half_sd = 0.5 * (0.5 * lv).exp();
            let (mut gmu, mut glv) = (mu, 0.5 * (lv.exp() - 1.0));
            for k in 0..kd {
                let r = (b * kd + k) * l + j;
                gmu += dz[r];
                glv += dz[r] * eps[r] * half_sd;
            }
            dhead[b * 2 * l + j] = gmu;
            dhead[b * 2 * l + l + j] = glv;
        }
    }
}
