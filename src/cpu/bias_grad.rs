//! CPU twin of `shaders/bias_grad.wgsl`: the bias gradient of a linear layer.

use bytemuck::{Pod, Zeroable};

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq, Default)]
pub struct BiasGradParams {
    /// rows of dY summed over (the batch)
    pub m: u32,
    /// columns (the layer's outputs)
    pub n: u32,
    /// where the bias gradient goes in `g`
    pub g_off: u32,
    pub _pad: u32,
}

/// g[g_off + j] = Σ_i dy[i*n + j]; dy: (m, n).
pub fn bias_grad(g: &mut [f32], dy: &[f32], p: &BiasGradParams) {
    let (m, n, off) = (p.m as usize, p.n as usize, p.g_off as usize);
    let out = &mut g[off..off + n];
    out.fill(0.0);
    for i in 0..m {
        for (o, v) in out.iter_mut().zip(&dy[i * n..(i + 1) * n]) {
            *o += v;
        }
    }
}
