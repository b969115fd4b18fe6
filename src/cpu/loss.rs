//! CPU twin of `shaders/loss.wgsl`: per-image loss (−ELBO) and the batch sum.

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
    /// which entry of `batch_loss` receives the batch sum
    pub slot: u32,
}

/// sample_loss[out_off + b] = mean_k bce[b·K + k] + kl[b]  (−ELBO of image b);
/// batch_loss[slot] = Σ_b of those. bce: (B·K), kl: (B).
pub fn loss_reduce(
    sample_loss: &mut [f32],
    batch_loss: &mut [f32],
    bce: &[f32],
    kl: &[f32],
    p: &LossParams,
) {
    let kd = p.draws as usize;
    let mut total = 0.0f32;
    for b in 0..p.images as usize {
        let rec: f32 = bce[b * kd..(b + 1) * kd].iter().sum::<f32>() / kd as f32;
        let v = rec + kl[b];
        sample_loss[p.out_off as usize + b] = v;
        total += v;
    }
    batch_loss[p.slot as usize] = total;
}
