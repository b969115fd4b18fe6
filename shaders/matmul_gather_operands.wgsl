// Appended to matmul.wgsl (with matmul_store.wgsl) for matmul_gather: a product
// whose A (rows, d) is a batch of images read straight from the packed image
// store, A(i, kk) = data[idx[gather.x + i]·d + kk] / 255 (d = k), unpacked by
// pixel.wgsl as gather.wgsl's x is; the workgroups of the first column of tiles (wg.x = 0, every K
// share) also write each element they read to x (rows, d), so that x holds the
// batch for the kernels after it, every element written once. One dispatch
// instead of a gather and a product; its CPU twin is cpu::gather_pixels then
// cpu::matmul. B is read from b; a, a1 are not bound. Dispatch as matmul.

@group(0) @binding(15) var<storage, read> gather_data: array<u32>;
@group(0) @binding(16) var<storage, read> gather_idx: array<u32>;
@group(0) @binding(17) var<storage, read_write> gather_x: array<f32>;

// the image numbers of the workgroup's 32 rows, read once (not once per K step)
var<workgroup> tile_images: array<u32, 32>;
var<private> first_row: u32;
var<private> writes_x: bool;

@compute @workgroup_size(16, 16)
fn matmul_gather(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    gather_tile(wg, lid);
}

// Workgroup wg's tile of the product (wg in its grid: (ceil(n/32), ceil(m/32),
// splits)), its 32 image numbers read first. Called by every thread of the
// workgroup (matmul_gather, and matmul_gather_adam's product workgroups).
fn gather_tile(wg: vec3<u32>, lid: vec3<u32>) {
    let p = u.p[0];
    first_row = wg.y * TILE;
    writes_x = wg.x == 0u;
    let t = lid.y * 16u + lid.x;
    if (t < TILE && first_row + t < p.m) {
        tile_images[t] = gather_idx[u.gather.x + first_row + t];
    }
    workgroupBarrier();
    tile(0u, wg, lid);
}

// A(i, kk): pixel kk of the batch's image i (fetch_a reads only i < m, kk < k).
fn load_a(q: u32, p: Params, i: u32, kk: u32) -> f32 {
    let at = tile_images[i - first_row] * p.k + kk;
    let v = pixel(gather_data[at / 4u], at);
    if (writes_x) {
        gather_x[i * p.k + kk] = v;
    }
    return v;
}

fn load_b(q: u32, at: u32) -> f32 {
    return b[at];
}
