// One parameter's PyTorch Adam step, on values (adam.wgsl runs it over the flat
// buffer; matmul_adam.wgsl in the epilogue of a weight-gradient product). Its CPU
// twin is the loop body of cpu::adam (src/cpu/adam.rs):
// m = β1 m + (1−β1) g;  v = β2 v + (1−β2) g²;  p −= (lr / bc1) · m / (√v / √bc2 + eps)
// with bc1 = 1 − β1^t, bc2 = 1 − β2^t from the host.

// (`first`: where the parameters of matmul_gather_adam's Adam tail begin, [first, n);
// 0 and unread elsewhere)
struct AdamParams { n: u32, lr: f32, beta1: f32, beta2: f32, eps: f32, bc1: f32, bc2: f32, first: u32 }

// (p, m, v) after the step, from gradient g and the old p, m and v.
fn adam_update(g: f32, p_old: f32, m_old: f32, v_old: f32, a: AdamParams) -> vec3<f32> {
    let mi = a.beta1 * m_old + (1.0 - a.beta1) * g;
    let vi = a.beta2 * v_old + (1.0 - a.beta2) * g * g;
    return vec3<f32>(p_old - (a.lr / a.bc1) * mi / (sqrt(vi) / sqrt(a.bc2) + a.eps), mi, vi);
}
