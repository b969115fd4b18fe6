//! CPU twin of `shaders/adam.wgsl`: one Adam step over the whole flat parameter
//! buffer, with PyTorch's bias correction.

use bytemuck::{Pod, Zeroable};

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq, Default)]
pub struct AdamParams {
    /// number of parameters
    pub n: u32,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// 1 − β1^t and 1 − β2^t for this step t (computed on the host in f64)
    pub bc1: f32,
    pub bc2: f32,
    /// where the range of parameters a kernel updates begins, [first, n): read only
    /// by `matmul_gather_adam` (`shaders/matmul_gather_adam.wgsl`, the triple's
    /// Adam tail in the next step's fc1 dispatch, with n the range's end); 0, and
    /// unread, everywhere else (`adam` updates all of its slices)
    pub first: u32,
}

impl AdamParams {
    /// Parameters for step `t` (1-based, as PyTorch counts).
    pub fn at_step(n: usize, lr: f32, beta1: f32, beta2: f32, eps: f32, t: u64) -> Self {
        AdamParams {
            n: n as u32,
            lr,
            beta1,
            beta2,
            eps,
            bc1: (1.0 - (beta1 as f64).powf(t as f64)) as f32,
            bc2: (1.0 - (beta2 as f64).powf(t as f64)) as f32,
            first: 0,
        }
    }
}

super::with_avx2! {
    /// PyTorch `torch.optim.Adam` (amsgrad off, no weight decay), per element:
    /// m = β1 m + (1−β1) g;  v = β2 v + (1−β2) g²;
    /// p −= (lr / bc1) · m / (√v / √bc2 + eps).
    pub fn adam(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], p: &AdamParams)
        => adam_body
}

#[inline(always)]
fn adam_body(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], p: &AdamParams) {
    let n = p.n as usize;
    let step = p.lr / p.bc1;
    let sqrt_bc2 = p.bc2.sqrt();
    let it = params[..n]
        .iter_mut()
        .zip(&grads[..n])
        .zip(&mut m[..n])
        .zip(&mut v[..n]);
    for (((pi, &g), mi), vi) in it {
        *mi = p.beta1 * *mi + (1.0 - p.beta1) * g;
        *vi = p.beta2 * *vi + (1.0 - p.beta2) * g * g;
        *pi -= step * *mi / (vi.sqrt() / sqrt_bc2 + p.eps);
    }
}
