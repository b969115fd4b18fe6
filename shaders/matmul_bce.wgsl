// Appended to matmul.wgsl (with matmul_operands.wgsl) for matmul_bce, the
// `matmul` entry point of this module: the decoder-output product (logits = h3 W4ᵀ
// + b4) with the BCE kernel as its epilogue, so that a training step runs no BCE
// dispatch (`VAE_OOD_GPU_BCE_EPILOGUE=1`). Unsplit, or (`VAE_OOD_GPU_BCE_SPLIT=1`)
// split over K as the product is without the epilogue: each K share's workgroup
// stores its partial sums and counts itself in its tile's counter, and the last of
// a tile's shares to count (last_split) adds them up — the same logits, bit for
// bit, as the split product and the BCE kernel's split_sum — and runs the
// epilogue, so no workgroup waits for another and none walks all of K. Its CPU twin is the op
// sequence it replaces: cpu::matmul, then cpu::bce_logits (src/cpu/bce.rs), whose
// per-element loss and gradient it computes as bce.wgsl does, from the logit
// l = C(i, j) the tile stored and x(i, j) = x[(i / draws) · n + j]:
//   loss = max(l, 0) − l·x + log(1 + e^{−|l|}),  with write_grad c[i, j] ← σ(l) − x.
// A row's loss is summed in two stages (another order than bce.wgsl's, so results
// agree with the CPU to rounding, tests/kernels.rs): each tile writes its share,
// the sum over its 32 columns (per thread its two, then the 16 threads of the row
// in order), to rowloss[i · T + wg.x] (T = ⌈n / 32⌉ column tiles); the
// `matmul_pair_loss` tail in the next dispatch (matmul_loss.wgsl) adds a row's T
// shares and the KL. u.tail = (draws, write_grad, T, 0).

@group(0) @binding(18) var<storage, read> x: array<f32>;
@group(0) @binding(19) var<storage, read_write> rowloss: array<f32>;
// (a split product's tiles are finished by their last K share: last_split, from
// last_block.wgsl, with the partial sums as atomics: matmul_partial_atomic.wgsl)

// one share per thread (rows i0 of the tile's threads, then rows i0 + 1), four to a
// vector: thread t's at row_shares[t / 4][t % 4], so a row's 16 are four loads
var<workgroup> row_shares: array<vec4<f32>, 64>;

// The pixels x(i, j) of a thread's four elements (i0, j0), (i0, j0 + 1),
// (i0 + 1, j0), (i0 + 1, j0 + 1), 0 outside C; read before the K walk with EARLY.
struct AfterReads { x: vec4<f32> }

fn after_reads(w: Walk, lid: vec3<u32>, first_tile: bool) -> AfterReads {
    let n = w.p.n;
    let i0 = w.row0 + lid.y * 2u;
    let j0 = w.col0 + lid.x * 2u;
    var r = AfterReads(vec4<f32>());
    for (var k = 0u; k < 4u; k++) {
        let i = i0 + k / 2u;
        let j = j0 + k % 2u;
        if (i < w.p.m && j < n) {
            r.x[k] = x[(i / u.tail.x) * n + j];
        }
    }
    return r;
}

// The loss of stored element s, C(i, j) with pixel xv (0 for none), and its
// gradient into c.
fn bce_element(s: Stored, xv: f32) -> f32 {
    if (s.at == NONE) {
        return 0.0;
    }
    let l = s.v;
    let ex = exp(-abs(l));
    if (u.tail.y != 0u) {
        var sig = 1.0 / (1.0 + ex);
        if (l < 0.0) {
            sig = ex / (1.0 + ex);
        }
        c[s.at] = sig - xv;
    }
    return max(l, 0.0) - l * xv + log(1.0 + ex);
}

// Row ii of the tile: the sum of its 16 threads' shares, in order (thread `first`
// .. first + 15 of row_shares).
fn tile_row_share(w: Walk, ii: u32, first: u32) {
    let i = w.row0 + ii;
    if (i < w.p.m) {
        var t = 0.0;
        for (var k = 0u; k < 4u; k++) {
            let v = row_shares[first / 4u + k];
            t += v.x;
            t += v.y;
            t += v.z;
            t += v.w;
        }
        rowloss[i * u.tail.z + w.col0 / TILE] = t;
    }
}

// A thread's four elements (i0, j0), (i0, j0 + 1), (i0 + 1, j0), (i0 + 1, j0 + 1):
// their BCE (pixels from after_reads), then the tile's row shares. Called by every
// thread of the workgroup (the barriers below are in uniform control flow).
fn after_tile(w: Walk, lid: vec3<u32>, s: array<Stored, 6>, r: AfterReads) {
    let top = bce_element(s[0], r.x.x) + bce_element(s[1], r.x.y);
    let bottom = bce_element(s[2], r.x.z) + bce_element(s[3], r.x.w);
    let t = lid.y * 16u + lid.x;
    row_shares[t / 4u][t % 4u] = top;
    workgroupBarrier();
    if (t < 16u) {
        tile_row_share(w, 2u * t, t * 16u);
    }
    workgroupBarrier();
    row_shares[t / 4u][t % 4u] = bottom;
    workgroupBarrier();
    if (t < 16u) {
        tile_row_share(w, 2u * t + 1u, t * 16u);
    }
}
