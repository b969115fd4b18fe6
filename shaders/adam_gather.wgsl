// One training step's Adam (adam.wgsl) and the next step's pixel gather
// (gather.wgsl) in one dispatch: the two touch different buffers (params, grads,
// m, v; data, idx, x), so they need no barrier between them, and the step's chain
// of dependent dispatches is one shorter. Workgroups 0 .. GA − 1 (GA = ceil(n / 256))
// update parameters 256·w …; the rest gather elements 256·(w − GA) … . Dispatch
// (GA + ceil(rows·d / 256), 1, 1) — the backend fuses only when that is ≤ 65,535.
// Its CPU twin is cpu::adam then cpu::gather_pixels. Assembled with adam.wgsl and
// gather.wgsl, whose bindings it uses.

struct AdamGather { a: AdamParams, g: GatherParams }
@group(1) @binding(0) var<uniform> both: AdamGather;

@compute @workgroup_size(256)
fn adam_gather(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let ga = (both.a.n + 255u) / 256u;
    if (wg.x < ga) {
        adam_step(wg.x * 256u + li, both.a);
    } else {
        gather_one((wg.x - ga) * 256u + li, both.g);
    }
}
