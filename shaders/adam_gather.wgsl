// One training step's Adam (adam.wgsl) and the next step's pixel gather
// (gather.wgsl) in one dispatch: the two touch different buffers (params, grads,
// m, v; data, idx, x), so they need no barrier between them, and the step's chain
// of dependent dispatches is one shorter. Workgroups 0 .. GA − 1 update parameters
// (W = per.x parameters per thread: 1, or 4 with VAE_OOD_GPU_ADAM_WIDE=1; GA =
// ceil(n / (256·W))): thread li of workgroup w those at 256·W·w + li + 256·j, j < W;
// the rest gather elements 256·(w − GA) … . Dispatch (GA + ceil(rows·d / 256), 1, 1)
// — the backend fuses only when that is ≤ 65,535. Its CPU twin is cpu::adam then
// cpu::gather_pixels. Assembled with adam.wgsl and gather.wgsl, whose bindings it
// uses.

struct AdamGather { a: AdamParams, g: GatherParams, per: vec4<u32> }
@group(1) @binding(0) var<uniform> both: AdamGather;

@compute @workgroup_size(256)
fn adam_gather(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let w = select(1u, 4u, both.per.x == 4u);
    let ga = (both.a.n + 256u * w - 1u) / (256u * w);
    if (wg.x < ga) {
        if (w == 4u) {
            adam_four(wg.x * 1024u + li, both.a);
        } else {
            adam_step(wg.x * 256u + li, both.a);
        }
    } else {
        gather_one((wg.x - ga) * 256u + li, both.g);
    }
}

// Parameters i, i + 256, i + 512 and i + 768 (those below n), every read issued
// before the first write (the buffers may alias as far as the driver knows, so a
// step after another would wait for the other's writes before its reads).
fn adam_four(i: u32, p: AdamParams) {
    var g: array<f32, 4>;
    var q: array<f32, 4>;
    var m0: array<f32, 4>;
    var v0: array<f32, 4>;
    for (var j = 0u; j < 4u; j++) {
        let at = i + 256u * j;
        if (at < p.n) {
            g[j] = grads[at];
            q[j] = params[at];
            m0[j] = m[at];
            v0[j] = v[at];
        }
    }
    for (var j = 0u; j < 4u; j++) {
        let at = i + 256u * j;
        if (at < p.n) {
            let r = adam_update(g[j], q[j], m0[j], v0[j], p);
            params[at] = r.x;
            m[at] = r.y;
            v[at] = r.z;
        }
    }
}
