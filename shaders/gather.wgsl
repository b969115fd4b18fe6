// Twin of cpu::gather_pixels (src/cpu/gather.rs).
// x: (rows, d) = data[idx[idx_off + r]] / 255, data = image bytes packed 4 per u32
// (little-endian). One thread per output element, linear index over a 2-D grid of
// 256-thread workgroups; dispatch groups_1d(ceil(rows·d / 256)).
// gather_one is also called by adam_gather.wgsl (this file is assembled into its module).

struct GatherParams { rows: u32, d: u32, idx_off: u32, _pad: u32 }

@group(0) @binding(4) var<storage, read> data: array<u32>;
@group(0) @binding(5) var<storage, read> idx: array<u32>;
@group(0) @binding(6) var<storage, read_write> x: array<f32>;
@group(1) @binding(0) var<uniform> gather_p: GatherParams;

@compute @workgroup_size(256)
fn gather_pixels(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    gather_one(gid.x + gid.y * nwg.x * 256u, gather_p);
}

// Element t of x (none when t ≥ rows·d).
fn gather_one(t: u32, p: GatherParams) {
    if (t >= p.rows * p.d) {
        return;
    }
    let r = t / p.d;
    let c = t % p.d;
    let i = idx[p.idx_off + r] * p.d + c;
    x[t] = pixel(data[i / 4u], i);
}
