// Twin of cpu::adam (src/cpu/adam.rs): one PyTorch Adam step over the flat buffer.
// m = β1 m + (1−β1) g;  v = β2 v + (1−β2) g²;  p −= (lr / bc1) · m / (√v / √bc2 + eps)
// with bc1 = 1 − β1^t, bc2 = 1 − β2^t from the host. One thread per parameter.
// adam_step is also called by adam_gather.wgsl (this file is assembled into its module).

struct AdamParams { n: u32, lr: f32, beta1: f32, beta2: f32, eps: f32, bc1: f32, bc2: f32, _pad: u32 }

@group(0) @binding(0) var<storage, read_write> params: array<f32>;
@group(0) @binding(1) var<storage, read> grads: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(1) @binding(0) var<uniform> adam_p: AdamParams;

@compute @workgroup_size(256)
fn adam(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    adam_step(gid.x + gid.y * nwg.x * 256u, adam_p);
}

// Parameter i (none when i ≥ n).
fn adam_step(i: u32, p: AdamParams) {
    if (i >= p.n) {
        return;
    }
    let g = grads[i];
    let mi = p.beta1 * m[i] + (1.0 - p.beta1) * g;
    let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    params[i] -= (p.lr / p.bc1) * mi / (sqrt(vi) / sqrt(p.bc2) + p.eps);
}
