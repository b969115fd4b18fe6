//! CPU twin of `shaders/loss.wgsl`: per-image score (−ELBO, or the
//! importance-weighted −log p̂(x) over K draws) and the batch sum.

use bytemuck::{Pod, Zeroable};

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq, Default)]
pub struct LossParams {
    /// images in the batch (B)
    pub images: u32,
    /// draws per image (K)
    pub draws: u32,
    /// where this batch's per-image losses go in `sample_loss`
    pub out_off: u32,
    /// which entry of `batch_loss` receives the batch sum ([`NO_SLOT`]: none)
    pub slot: u32,
    /// [`LOSS_ELBO`] or [`LOSS_IWAE`]
    pub mode: u32,
    pub _pad: [u32; 3],
}

/// `slot` of a batch whose sum is not wanted (training steps: the host adds up the
/// per-image losses of the epoch instead), so that on the GPU the per-image losses
/// can come from the BCE kernel with no dispatch of their own (`shaders/bce.wgsl`).
pub const NO_SLOT: u32 = u32::MAX;

/// −ELBO: mean over the K draws of the reconstruction term, plus the analytic KL.
pub const LOSS_ELBO: u32 = 0;
/// −log p̂(x), the importance-weighted estimate with K draws:
/// −(logsumexp_k(log w_k) − ln K), log w_k = logpq_k − bce_k.
pub const LOSS_IWAE: u32 = 1;

/// Per image b (bce, logpq: (B·K), kl: (B)):
/// - ELBO mode: sample_loss[out_off + b] = mean_k bce[b·K + k] + kl[b]  (−ELBO);
/// - IWAE mode: sample_loss[out_off + b] = −(logsumexp_k(logpq_k − bce_k) − ln K),
///   the max subtracted before exponentiating;
///
/// and batch_loss[slot] = Σ_b of those (unless slot is [`NO_SLOT`]).
pub fn loss_reduce(
    sample_loss: &mut [f32],
    batch_loss: &mut [f32],
    bce: &[f32],
    kl: &[f32],
    logpq: &[f32],
    p: &LossParams,
) {
    let kd = p.draws as usize;
    let mut total = 0.0f32;
    for b in 0..p.images as usize {
        let v = if p.mode == LOSS_IWAE {
            let w = |k: usize| logpq[b * kd + k] - bce[b * kd + k];
            let mx = (0..kd).map(w).fold(f32::NEG_INFINITY, f32::max);
            let s: f32 = (0..kd).map(|k| (w(k) - mx).exp()).sum();
            -(mx + s.ln() - (kd as f32).ln())
        } else {
            let rec: f32 = bce[b * kd..(b + 1) * kd].iter().sum::<f32>() / kd as f32;
            rec + kl[b]
        };
        sample_loss[p.out_off as usize + b] = v;
        total += v;
    }
    if p.slot != NO_SLOT {
        batch_loss[p.slot as usize] = total;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iwae_is_a_stable_logsumexp() {
        // two images, K = 3; weights log w = logpq − bce
        let bce = [100.0f32, 101.0, 102.0, 1000.0, 1000.0, 1000.0];
        let logpq = [-1.0f32, -2.0, 0.5, 3.0, 3.0, 3.0];
        let (mut s, mut bl) = ([0.0f32; 2], [0.0f32; 1]);
        let p = LossParams {
            images: 2,
            draws: 3,
            mode: LOSS_IWAE,
            ..Default::default()
        };
        loss_reduce(&mut s, &mut bl, &bce, &[0.0; 2], &logpq, &p);
        let lw = [-101.0f64, -103.0, -101.5];
        let m = -101.0f64;
        let want0 = -(m + lw.iter().map(|w| (w - m).exp()).sum::<f64>().ln() - 3f64.ln());
        assert!((s[0] as f64 - want0).abs() < 1e-4, "{} vs {want0}", s[0]);
        // equal weights: −log p̂ = −log w exactly, even at −997 where exp underflows
        assert!((s[1] - 997.0).abs() < 1e-3, "{}", s[1]);
        assert!((bl[0] - (s[0] + s[1])).abs() < 1e-3);
    }

    #[test]
    fn elbo_mode_averages_draws_and_adds_kl() {
        let (mut s, mut bl) = ([0.0f32; 1], [0.0f32; 1]);
        let p = LossParams {
            images: 1,
            draws: 2,
            mode: LOSS_ELBO,
            ..Default::default()
        };
        loss_reduce(&mut s, &mut bl, &[10.0, 20.0], &[3.0], &[0.0, 0.0], &p);
        assert_eq!(s[0], 18.0);
        assert_eq!(bl[0], 18.0);
    }
}
