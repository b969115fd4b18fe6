// Twin of cpu::adam (src/cpu/adam.rs): one PyTorch Adam step over the flat buffer,
// one thread per parameter (the formula: adam_update.wgsl, appended to this module).
// adam_step is also called by adam_gather.wgsl (this file is assembled into its module).

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
    let r = adam_update(grads[i], params[i], m[i], v[i], p);
    params[i] = r.x;
    m[i] = r.y;
    v[i] = r.z;
}
