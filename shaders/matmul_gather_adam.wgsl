// Appended to matmul.wgsl (with matmul_be_rw.wgsl, matmul_gather_operands.wgsl,
// matmul_latent.wgsl and the rest of matmul_gather_latent's files) for
// matmul_gather_adam: matmul_gather_latent — a training step's gather, fc1's
// product and the latent forward in its last blocks — with the previous step's
// Adam for the parameters [adam.first, adam.n) in extra workgroups
// (`VAE_OOD_GPU_TAIL_FC1=1`). With Adam in the triple (matmul_adam.wgsl) and the
// latent backward in fc4's gradient pair, those are the triple's tail, fc4's
// parameters: their gradients are final once the pair has run, and nothing reads
// them, their gradients or their moments between the triple and the next step's
// fc4 forward — so they can be updated beside the next step's fc1 instead of
// making the triple's last workgroups wait. The backend moves the tail here only
// where this dispatch directly follows the triple and its products read none of
// those parameters (`tail_into_fc1`, src/gpu/lower/products.rs); a run's last step keeps
// its tail in the triple.
//
// Workgroups with wg.z < splits run matmul_gather_latent's tile; the layers after
// them (wg.z ≥ splits, numbered w = ((wg.z − splits)·gy + wg.y)·gx + wg.x) update
// parameters first + 1024·w …, four per thread, every read before the first write
// (as matmul_adam.wgsl's tail). u.adam is the triple's Adam step (its n the end
// of the range). Its CPU twin is cpu::adam over the range (before the step's
// gather: the two touch nothing in common), then matmul_gather_latent's op
// sequence. Dispatch (ceil(n/32), ceil(m/32), splits + extra layers).

@group(0) @binding(12) var<storage, read> tail_grads: array<f32>;
@group(0) @binding(13) var<storage, read_write> tail_m: array<f32>;
@group(0) @binding(14) var<storage, read_write> tail_v: array<f32>;

// (the host's ADAM_TAIL_PER_GROUP, src/gpu/lower/products.rs, as matmul_adam.wgsl's)
const TAIL_PER_GROUP: u32 = 1024u;

@compute @workgroup_size(16, 16)
fn matmul_gather_adam(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = grid(0u);
    if (wg.z < g.z) {
        gather_tile(wg, lid);
    } else {
        let w = ((wg.z - g.z) * g.y + wg.y) * g.x + wg.x;
        let i = u.adam.first + w * TAIL_PER_GROUP + lid.y * 16u + lid.x;
        let o0 = tail_read(i);
        let o1 = tail_read(i + 256u);
        let o2 = tail_read(i + 512u);
        let o3 = tail_read(i + 768u);
        tail_write(i, o0);
        tail_write(i + 256u, o1);
        tail_write(i + 512u, o2);
        tail_write(i + 768u, o3);
    }
}

// (gradient, p, m, v) of parameter i (zeros past the range's end).
fn tail_read(i: u32) -> vec4<f32> {
    if (i >= u.adam.n) {
        return vec4<f32>();
    }
    return vec4<f32>(tail_grads[i], b[i], tail_m[i], tail_v[i]);
}

// Parameter i's Adam step from its gradient and old (p, m, v) in o.
fn tail_write(i: u32, o: vec4<f32>) {
    if (i < u.adam.n) {
        let r = adam_update(o.x, o.y, o.z, o.w, u.adam);
        b[i] = r.x;
        tail_m[i] = r.y;
        tail_v[i] = r.z;
    }
}
