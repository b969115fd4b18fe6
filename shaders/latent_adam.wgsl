// Appended to latent.wgsl (with adam_update.wgsl) for latent_backward_adam:
// latent_backward with a training step's Adam for the parameters [tail.x, tail.y)
// in extra workgroups — with Adam in the triple (`VAE_OOD_GPU_TRIPLE_ADAM=1`), the
// parameters the triple does not write (fc4's: their gradients are final once fc4's
// gradient pair has run, and nothing after it reads them before the next step), so
// that the triple has no tail of its own to wait for. Workgroups 0 .. B − 1 run
// latent_backward's image b; workgroup B + w updates parameters tail.x + 1024·w …
// (WG threads, 1024 / WG each, reads before writes). The backend moves the tail
// here only where latent_backward reads none of those parameters
// (src/gpu/lower/latent.rs, `lower_latent`). Its CPU twin is latent_backward's op sequence, then
// cpu::adam over the tail. Dispatch (B + ceil((tail.y − tail.x) / 1024), 1, 1).

@group(0) @binding(0) var<storage, read_write> params: array<f32>;
@group(0) @binding(14) var<storage, read> adam_grads: array<f32>;
@group(0) @binding(15) var<storage, read_write> adam_m: array<f32>;
@group(0) @binding(16) var<storage, read_write> adam_v: array<f32>;

const TAIL_PER_GROUP: u32 = 1024u;

@compute @workgroup_size(WG)
fn latent_backward_adam(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    if (wg.x < u.rp.images) {
        backward_image(wg.x, lid.x);
    } else {
        let first = u.tail.x + (wg.x - u.rp.images) * TAIL_PER_GROUP;
        for (var i = first + lid.x; i < min(first + TAIL_PER_GROUP, u.tail.y); i += WG) {
            let r = adam_update(adam_grads[i], params[i], adam_m[i], adam_v[i], u.adam);
            params[i] = r.x;
            adam_m[i] = r.y;
            adam_v[i] = r.z;
        }
    }
}
