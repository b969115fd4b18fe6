// Twin of cpu::matmul (src/cpu/matmul.rs).
// C (m, n) = epilogue(A (m, k) · B (k, n)) with arbitrary strides (element offsets):
//   A(i, p) = a[a_off + i*a_si + p*a_sp], B(p, j) = b[b_off + p*b_sp + j*b_sj],
//   C(i, j) = c[c_off + i*c_si + j].
// Flags: 1 add bias e[e_off + j]; 2 ReLU; 4 multiply by mask e[e_off + i*e_si + j] > 0;
//        8 also write the row sums of A to c[e_off + i] (the bias gradient next to dW).
//
// matmul: one 32×32 tile of C per workgroup of 16×16 threads (2×2 outputs each); K is
// consumed 32 at a time through workgroup memory, loaded so that consecutive threads
// read consecutive addresses whichever operand is transposed, and stored as pairs so
// that each step of the multiply reads a thread's two A values and two B values with
// one load each (two loads per four FMAs, not four: half the time on lavapipe,
// examples/matmul_micro.rs). Dispatch
// (ceil(n/32), ceil(m/32), splits). With splits > 1 (skinny products whose few
// workgroups would each walk a long K), workgroup z sums only its share of K and
// writes raw partial sums to `partial` (splits, m, n); matmul_reduce then adds the
// shares and applies the epilogue (dispatch ceil(m*n/256)).
//
// matmul_pair: two independent products in one dispatch — a layer's input gradient
// (problem 0, pp[0], as matmul: B from b, mask from e, C into c or split into
// partial) and its weight gradient (problem 1, pp[1]: the same A, B read from e,
// C and bias gradient into c2, never split). Workgroups 0 .. G0 − 1 (G0 = tiles ×
// splits of problem 0) take problem 0, the rest problem 1; dispatch (G0 + G1, 1, 1).
// One dispatch and one barrier
// instead of two, and the two products run side by side. Its CPU twin is the two
// cpu::matmul calls.
struct Params {
    m: u32, n: u32, k: u32, flags: u32,
    a_off: u32, a_si: u32, a_sp: u32,
    b_off: u32, b_sp: u32, b_sj: u32,
    c_off: u32, c_si: u32,
    e_off: u32, e_si: u32,
    splits: u32, _pad: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> e: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read_write> partial: array<f32>;
@group(0) @binding(5) var<storage, read> partial_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> c2: array<f32>;
// pp[0]: the product (problem 0 of a pair); pp[1]: problem 1 of a pair
@group(1) @binding(0) var<uniform> pp: array<Params, 2>;

const TILE: u32 = 32u;
// Tiles in workgroup memory as pairs, both indexed [kk][pair], rows of ROW pairs (34
// floats: the padding spreads the strided stores of a transposed load over the banks):
// ta[kk·ROW + i/2] holds A(i, kk) for rows i, i+1 of a pair; tb[kk·ROW + j/2] holds
// B(kk, j) for columns j, j+1. The multiply then reads a thread's two rows and two
// columns with one load each.
const ROW: u32 = 17u;
var<workgroup> ta: array<vec2<f32>, 544>; // 32 × ROW
var<workgroup> tb: array<vec2<f32>, 544>;

fn split_len(p: Params) -> u32 {
    let s = max(p.splits, 1u);
    return ((p.k + s - 1u) / s + TILE - 1u) / TILE * TILE;
}

@compute @workgroup_size(16, 16)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    tile(0u, wg, lid);
}

// workgroups of problem q: (x, y, z) = (ceil(n/32), ceil(m/32), max(splits, 1))
fn grid(q: u32) -> vec3<u32> {
    let p = pp[q];
    return vec3<u32>((p.n + TILE - 1u) / TILE, (p.m + TILE - 1u) / TILE, max(p.splits, 1u));
}

@compute @workgroup_size(16, 16)
fn matmul_pair(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    // the dispatch is exactly (G0 + G1, 1, 1) (the backend pairs only products with
    // G0 + G1 ≤ 65535), so every workgroup has a tile, and no early return sits in
    // front of the barriers (lavapipe ran the pair 1.2× slower with one)
    var w = wg.x;
    var q = 0u;
    var g = grid(0u);
    if (w >= g.x * g.y * g.z) {
        w -= g.x * g.y * g.z;
        q = 1u;
        g = grid(1u);
    }
    let at = vec3<u32>(w % g.x, (w / g.x) % g.y, w / (g.x * g.y));
    tile(q, at, lid);
}

// One 32×32 tile (wg.x, wg.y) of problem q, K share wg.z. The branches on q are
// uniform over the workgroup.
fn tile(q: u32, wg: vec3<u32>, lid: vec3<u32>) {
    // (not pp[q]: lavapipe treats a uniform array read at a run-time index as
    // varying per invocation, and ran the pair 1.3× slower with it)
    var p = pp[0];
    if (q == 1u) {
        p = pp[1];
    }
    let row0 = wg.y * TILE;
    let col0 = wg.x * TILE;
    let t = lid.y * 16u + lid.x;
    let kc = split_len(p);
    let k_begin = wg.z * kc;
    let k_end = min(p.k, k_begin + kc);
    let a_t = p.a_si == 1u && p.a_sp != 1u; // A stored transposed: walk i fastest
    let b_t = p.b_sp == 1u && p.b_sj != 1u; // B stored transposed: walk p fastest
    var acc00 = 0.0;
    var acc01 = 0.0;
    var acc10 = 0.0;
    var acc11 = 0.0;
    var rs0 = 0.0; // row sums of A (flag 8)
    var rs1 = 0.0;
    for (var k0 = k_begin; k0 < k_end; k0 += TILE) {
        for (var r = 0u; r < 4u; r++) {
            let idx = t + r * 256u;
            let fast = idx % TILE;
            let slow = idx / TILE;
            // A tile element (ii, kk)
            var ii = slow;
            var kk = fast;
            if (a_t) {
                ii = fast;
                kk = slow;
            }
            var va = 0.0;
            if (row0 + ii < p.m && k0 + kk < k_end) {
                va = a[p.a_off + (row0 + ii) * p.a_si + (k0 + kk) * p.a_sp];
            }
            ta[kk * ROW + ii / 2u][ii % 2u] = va;
            // B tile element (kk, jj)
            var kb = slow;
            var jj = fast;
            if (b_t) {
                kb = fast;
                jj = slow;
            }
            var vb = 0.0;
            if (k0 + kb < k_end && col0 + jj < p.n) {
                let at = p.b_off + (k0 + kb) * p.b_sp + (col0 + jj) * p.b_sj;
                if (q == 0u) {
                    vb = b[at];
                } else {
                    vb = e[at];
                }
            }
            tb[kb * ROW + jj / 2u][jj % 2u] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE; kk++) {
            let av = ta[kk * ROW + lid.y]; // rows 2·lid.y, +1
            let bv = tb[kk * ROW + lid.x]; // columns 2·lid.x, +1
            acc00 = fma(av.x, bv.x, acc00);
            acc01 = fma(av.x, bv.y, acc01);
            acc10 = fma(av.y, bv.x, acc10);
            acc11 = fma(av.y, bv.y, acc11);
            rs0 += av.x;
            rs1 += av.y;
        }
        workgroupBarrier();
    }
    let i0 = row0 + lid.y * 2u;
    let j0 = col0 + lid.x * 2u;
    if (p.splits > 1u) {
        let base = wg.z * p.m * p.n;
        store_partial(p, base, i0, j0, acc00);
        store_partial(p, base, i0, j0 + 1u, acc01);
        store_partial(p, base, i0 + 1u, j0, acc10);
        store_partial(p, base, i0 + 1u, j0 + 1u, acc11);
        return;
    }
    store(q, p, i0, j0, acc00);
    store(q, p, i0, j0 + 1u, acc01);
    store(q, p, i0 + 1u, j0, acc10);
    store(q, p, i0 + 1u, j0 + 1u, acc11);
    if ((p.flags & 8u) != 0u && wg.x == 0u && lid.x == 0u) {
        if (i0 < p.m) {
            put(q, p.e_off + i0, rs0);
        }
        if (i0 + 1u < p.m) {
            put(q, p.e_off + i0 + 1u, rs1);
        }
    }
}

// C of problem q: c, or c2 for problem 1 of a pair
fn put(q: u32, at: u32, v: f32) {
    if (q == 0u) {
        c[at] = v;
    } else {
        c2[at] = v;
    }
}

fn store_partial(p: Params, base: u32, i: u32, j: u32, v: f32) {
    if (i < p.m && j < p.n) {
        partial[base + i * p.n + j] = v;
    }
}

@compute @workgroup_size(256)
fn matmul_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = pp[0];
    let t = gid.x + gid.y * nwg.x * 256u;
    if (t >= p.m * p.n) {
        return;
    }
    var v = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        v += partial_in[s * p.m * p.n + t];
    }
    store(0u, p, t / p.n, t % p.n, v);
}

fn store(q: u32, p: Params, i: u32, j: u32, v_in: f32) {
    if (i >= p.m || j >= p.n) {
        return;
    }
    var v = v_in;
    if ((p.flags & 1u) != 0u) {
        v += e[p.e_off + j];
    }
    if ((p.flags & 2u) != 0u) {
        v = max(v, 0.0);
    }
    if ((p.flags & 4u) != 0u) {
        if (e[p.e_off + i * p.e_si + j] <= 0.0) {
            v = 0.0;
        }
    }
    put(q, p.c_off + i * p.c_si + j, v);
}
