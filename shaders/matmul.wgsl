// Twin of cpu::matmul (src/cpu/matmul.rs).
// C (m, n) = epilogue(A (m, k) · B (k, n)) with arbitrary strides (element offsets):
//   A(i, p) = a[a_off + i*a_si + p*a_sp], B(p, j) = b[b_off + p*b_sp + j*b_sj],
//   C(i, j) = c[c_off + i*c_si + j].
// Flags: 1 add bias e[e_off + j]; 2 ReLU; 4 multiply by mask e[e_off + i*e_si + j] > 0;
//        8 also write the row sums of A to c[e_off + i] (the bias gradient next to dW).
//
// matmul: one 32×32 tile of C per workgroup of 16×16 threads (2×2 outputs each); K is
// consumed 32 at a time through workgroup memory, loaded so that consecutive threads
// read consecutive addresses whichever operand is transposed (a thread's eight global
// reads of a K step issued before it stores any of them). The K walk itself —
// k_walk, the tiles in workgroup memory and the multiply — is appended from
// matmul_walk.wgsl (f32 fmas, every device) or matmul_walk_coop.wgsl (cooperative
// matrices, f16 operands: tensor cores, `VAE_OOD_GPU_COOP=1`). Dispatch
// (ceil(n/32), ceil(m/32), splits). With splits > 1 (skinny products whose few
// workgroups would each walk a long K), workgroup z sums only its share of K and
// writes raw partial sums to `partial` (splits, m, n); matmul_reduce then adds the
// shares and applies the epilogue with split_sum (split_source.wgsl, appended to
// this module, bound to the same partial sums and epilogue operand; dispatch
// ceil(m*n/256)).
//
// matmul_pair: two independent products in one dispatch — a layer's input gradient
// (problem 0, u.p[0], as matmul: B from b, mask from e, C into c or split into
// partial) and its weight gradient (problem 1, u.p[1]: A from a1 — the same buffer
// as a here —, B read from e, C and bias gradient into c2, never split); or two
// weight gradients of different layers (problem 0 with its bias gradient into c).
// Workgroups 0 .. G0 − 1 (G0 = tiles ×
// splits of problem 0) take problem 0, the rest problem 1; dispatch (G0 + G1, 1, 1).
// One dispatch and one barrier
// instead of two, and the two products run side by side. Its CPU twin is the two
// cpu::matmul calls.
//
// matmul_triple: three independent, unsplit products into one buffer (three layers'
// weight gradients: problem 2 with A from a2, B from b2, C into c2, as problem 1),
// workgroups in the order of the problems; dispatch (G0 + G1 + G2, 1, 1). Its CPU
// twin is the three cpu::matmul calls.
//
// matmul_triple_adam (matmul_adam.wgsl): the triple with a training step's Adam in
// its epilogue, and extra workgroups for the parameters the triple does not write.
// matmul_gather (matmul_gather_operands.wgsl): a product whose A is a batch of
// images read straight from the packed image store, x written on the way.
//
// Where problem q reads A and B: load_a and load_b, appended from
// matmul_operands.wgsl (a, b; a1, e) for matmul, matmul_pair and matmul_reduce,
// from matmul_triple_operands.wgsl (those and a2, b2) for the triples, or from
// matmul_gather_operands.wgsl, so that each kernel binds no more storage buffers
// than it uses. What happens to the elements a thread stored, at the end of its
// tile: after_tile, from matmul_store.wgsl (nothing), matmul_adam.wgsl (their
// Adam steps) or matmul_bce.wgsl (their BCE and its gradient: matmul_bce, the
// decoder-output product of `VAE_OOD_GPU_BCE_EPILOGUE=1`); what it reads, by
// after_reads from the same file (before the K walk with EARLY, else after it).
// matmul_pair_loss (matmul_loss.wgsl): a pair with extra workgroups that finish
// that BCE's loss.
// adam_update.wgsl (AdamParams, named by the uniform) is appended to every module.
struct Params {
    m: u32, n: u32, k: u32, flags: u32,
    a_off: u32, a_si: u32, a_sp: u32,
    b_off: u32, b_sp: u32, b_sj: u32,
    c_off: u32, c_si: u32,
    e_off: u32, e_si: u32,
    splits: u32, _pad: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
// (bindings 1 and 2, B and the epilogue operand e (bias or mask): matmul_be.wgsl,
// read-only, appended; or matmul_be_rw.wgsl, read-write, for matmul_gather_adam,
// which writes the parameters they are views of)
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
// (binding 4, the split-K partial sums (splits, m, n): put_partial and
// get_partial, from matmul_partial.wgsl, or matmul_partial_atomic.wgsl for
// matmul_bce, appended)
@group(0) @binding(6) var<storage, read_write> c2: array<f32>;
// A of problem 1 of a pair (bound to a's buffer again for a lone product)
@group(0) @binding(7) var<storage, read> a1: array<f32>;
// The op's uniform slot (256 bytes): p[0], the product (problem 0 of a pair); p[1],
// p[2]: problems 1 and 2 of a pair or a triple; for matmul_triple_adam the Adam
// step and the range [tail.x, tail.y) it updates in extra workgroups; for
// matmul_gather the first index entry of the batch (gather.x).
struct Slot { p: array<Params, 3>, adam: AdamParams, tail: vec4<u32>, gather: vec4<u32> }
@group(1) @binding(0) var<uniform> u: Slot;

const TILE: u32 = 32u;
// Software pipelining (a pipeline constant the host always sets: on unless
// `VAE_OOD_GPU_PREFETCH=0`): a thread issues its reads of the next K step before
// the multiply of this one, not after it. Same values into the same tiles, so the
// same bits; 0.97× the time per training step on an H100.
override PREFETCH: bool = true;
// The bias gradient as a column of ones (a pipeline constant the host always sets:
// on with `VAE_OOD_GPU_ONES_COLUMN=1`): a product that writes its bias gradient
// (flag 8) gets it as an extra column n of C, with B(p, n) = 1 (fetch_b), so that
// fma(A(i, p), 1, acc) adds exactly what rs += A(i, p) added, in the same order —
// the same bits — and the multiply of every product drops rs's two adds per four
// fmas. Only where column n lies in the last tile's padding (n % 32 ≠ 0) and K is
// not split; elsewhere the row sums run as before (and, with ONES off, always).
override ONES: bool = false;
// Early reads (a pipeline constant the host always sets: on with
// `VAE_OOD_GPU_EARLY_READS=1`): an unsplit product's thread reads its epilogue's
// operands (bias, mask) and what after_tile will read (after_reads: the BCE's
// pixels, Adam's parameters and moments) before the K walk, so that they arrive
// during the walk instead of adding their round trips after it. The same values:
// the same bits.
override EARLY: bool = false;
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
    let p = u.p[q];
    return vec3<u32>((p.n + TILE - 1u) / TILE, (p.m + TILE - 1u) / TILE, max(p.splits, 1u));
}

@compute @workgroup_size(16, 16)
fn matmul_pair(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    // the dispatch is exactly (G0 + G1, 1, 1) (the backend pairs only products with
    // G0 + G1 ≤ 65535), so every workgroup has a tile, and no early return sits in
    // front of the barriers (lavapipe ran the pair 1.2× slower with one)
    pair_tile(wg.x, lid);
}

// Workgroup w_in < G0 + G1 of a pair: its problem's tile and K share.
fn pair_tile(w_in: u32, lid: vec3<u32>) {
    var w = w_in;
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

@compute @workgroup_size(16, 16)
fn matmul_triple(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    // exactly (G0 + G1 + G2, 1, 1) workgroups, every one with a tile (as matmul_pair)
    triple_tile(wg.x, lid);
}

// Workgroups of the three problems of a triple, G0 + G1 + G2 (none is split).
fn triple_groups() -> u32 {
    let g0 = grid(0u);
    let g1 = grid(1u);
    let g2 = grid(2u);
    return g0.x * g0.y + g1.x * g1.y + g2.x * g2.y;
}

// Workgroup w < G0 + G1 + G2 of a triple: its problem's tile (z is 0: no split).
fn triple_tile(w_in: u32, lid: vec3<u32>) {
    var w = w_in;
    var q = 0u;
    var g = grid(0u);
    if (w >= g.x * g.y) {
        w -= g.x * g.y;
        q = 1u;
        g = grid(1u);
        if (w >= g.x * g.y) {
            w -= g.x * g.y;
            q = 2u;
            g = grid(2u);
        }
    }
    tile(q, vec3<u32>(w % g.x, w / g.x, 0u), lid);
}

// What a workgroup's tile walks: problem q (params p), the tile's first row and
// column, its share of K, whether A and B are stored transposed, and how it gets
// a bias gradient (flag 8): as column n of C (`ones`, see ONES) or as row sums in
// the multiply (`sums`; with ONES off, always). Uniform over the workgroup.
struct Walk {
    q: u32,
    p: Params,
    row0: u32,
    col0: u32,
    k_begin: u32,
    k_end: u32,
    a_t: bool,
    b_t: bool,
    ones: bool,
    sums: bool,
}

// The walk of tile (wg.x, wg.y) of problem q, K share wg.z.
fn walk_of(q: u32, wg: vec3<u32>) -> Walk {
    // (not u.p[q]: lavapipe treats a uniform array read at a run-time index as
    // varying per invocation, and ran the pair 1.3× slower with it)
    var p = u.p[0];
    if (q == 1u) {
        p = u.p[1];
    } else if (q == 2u) {
        p = u.p[2];
    }
    let kc = split_len(p);
    let k_begin = wg.z * kc;
    let ones = ONES && (p.flags & 8u) != 0u && p.n % TILE != 0u && p.splits <= 1u;
    return Walk(
        q,
        p,
        wg.y * TILE,
        wg.x * TILE,
        k_begin,
        min(p.k, k_begin + kc),
        p.a_si == 1u && p.a_sp != 1u, // A stored transposed: walk i fastest
        p.b_sp == 1u && p.b_sj != 1u, // B stored transposed: walk p fastest
        ones,
        !ONES || ((p.flags & 8u) != 0u && !ones),
    );
}

// One 32×32 tile (wg.x, wg.y) of problem q, K share wg.z. The branches on q are
// uniform over the workgroup.
fn tile(q: u32, wg: vec3<u32>, lid: vec3<u32>) {
    let w = walk_of(q, wg);
    let p = w.p;
    let early = EARLY && p.splits <= 1u;
    var ee = EarlyEpilogue(vec2<f32>(), vec4<f32>());
    var ar = AfterReads();
    if (early) {
        ee = early_epilogue(w, lid);
        ar = after_reads(w, lid, wg.x == 0u);
    }
    var acc = vec4<f32>(); // C(i0, j0), C(i0, j0 + 1), C(i0 + 1, j0), C(i0 + 1, j0 + 1)
    var rs = vec2<f32>(); // row sums of A (flag 8) for rows i0, i0 + 1
    // the K walk, its multiply with or without the row sums: two calls with a
    // constant, so that each inlined copy has no branch in its multiply
    if (w.sums) {
        k_walk(true, w, lid, &acc, &rs);
    } else {
        k_walk(false, w, lid, &acc, &rs);
    }
    let i0 = w.row0 + lid.y * 2u;
    let j0 = w.col0 + lid.x * 2u;
    if (p.splits > 1u) {
        let base = wg.z * p.m * p.n;
        store_partial(p, base, i0, j0, acc.x);
        store_partial(p, base, i0, j0 + 1u, acc.y);
        store_partial(p, base, i0 + 1u, j0, acc.z);
        store_partial(p, base, i0 + 1u, j0 + 1u, acc.w);
        // done, unless this module finishes the tile in the last of its K shares to
        // finish (last_split: matmul_bce's split product; uniform over the
        // workgroup), which then adds up the shares' sums as matmul_reduce would
        if (!last_split(w, wg, lid)) {
            return;
        }
        acc = split_totals(p, i0, j0);
    }
    let s0 = store(q, p, w.ones, i0, j0, acc.x, early, ee.bias.x, ee.mask.x);
    let s1 = store(q, p, w.ones, i0, j0 + 1u, acc.y, early, ee.bias.y, ee.mask.y);
    let s2 = store(q, p, w.ones, i0 + 1u, j0, acc.z, early, ee.bias.x, ee.mask.z);
    let s3 = store(q, p, w.ones, i0 + 1u, j0 + 1u, acc.w, early, ee.bias.y, ee.mask.w);
    var b0 = Stored(NONE, 0.0);
    var b1 = Stored(NONE, 0.0);
    if ((p.flags & 8u) != 0u && w.sums && wg.x == 0u && lid.x == 0u) {
        b0 = row_sum(q, p, i0, rs.x);
        b1 = row_sum(q, p, i0 + 1u, rs.y);
    }
    if (!early) {
        ar = after_reads(w, lid, wg.x == 0u);
    }
    after_tile(w, lid, array<Stored, 6>(s0, s1, s2, s3, b0, b1), ar);
}

// The epilogue operands of a thread's elements, read early: the bias of its
// columns j0, j0 + 1 and the mask values of (i0, j0), (i0, j0 + 1), (i0 + 1, j0),
// (i0 + 1, j0 + 1) (0 where the product has none or the element is outside C).
struct EarlyEpilogue { bias: vec2<f32>, mask: vec4<f32> }

fn early_epilogue(w: Walk, lid: vec3<u32>) -> EarlyEpilogue {
    let p = w.p;
    let i0 = w.row0 + lid.y * 2u;
    let j0 = w.col0 + lid.x * 2u;
    var r = EarlyEpilogue(vec2<f32>(), vec4<f32>());
    for (var d = 0u; d < 2u; d++) {
        if ((p.flags & 1u) != 0u && j0 + d < p.n) {
            r.bias[d] = e[p.e_off + j0 + d];
        }
    }
    for (var k = 0u; k < 4u; k++) {
        let i = i0 + k / 2u;
        let j = j0 + k % 2u;
        if ((p.flags & 4u) != 0u && i < p.m && j < p.n) {
            r.mask[k] = e[p.e_off + i * p.e_si + j];
        }
    }
    return r;
}

// Where a thread's elements go (as store and row_sum put them; NONE: nowhere): its
// four of C, then the bias gradients of rows i0 and i0 + 1 (first_tile: the tile
// is in column 0, whose threads of column 0 store them). For after_reads.
fn stored_ats(w: Walk, lid: vec3<u32>, first_tile: bool) -> array<u32, 6> {
    let p = w.p;
    let i0 = w.row0 + lid.y * 2u;
    let j0 = w.col0 + lid.x * 2u;
    var r = array<u32, 6>(
        element_at(p, w.ones, i0, j0),
        element_at(p, w.ones, i0, j0 + 1u),
        element_at(p, w.ones, i0 + 1u, j0),
        element_at(p, w.ones, i0 + 1u, j0 + 1u),
        NONE,
        NONE,
    );
    if ((p.flags & 8u) != 0u && w.sums && first_tile && lid.x == 0u) {
        for (var d = 0u; d < 2u; d++) {
            if (i0 + d < p.m) {
                r[4u + d] = p.e_off + i0 + d;
            }
        }
    }
    return r;
}

// Where store puts C(i, j) (NONE: outside C).
fn element_at(p: Params, ones: bool, i: u32, j: u32) -> u32 {
    if (ones && i < p.m && j == p.n) {
        return p.e_off + i;
    }
    if (i >= p.m || j >= p.n) {
        return NONE;
    }
    return p.c_off + i * p.c_si + j;
}

// Row i's bias gradient v, stored (none past the last row).
fn row_sum(q: u32, p: Params, i: u32, v: f32) -> Stored {
    if (i >= p.m) {
        return Stored(NONE, 0.0);
    }
    put(q, p.e_off + i, v);
    return Stored(p.e_off + i, v);
}

// An element a thread stored: where in its output buffer, and the value (at = NONE:
// none, outside the matrix).
struct Stored { at: u32, v: f32 }
const NONE: u32 = 0xffffffffu;

// Tile element (fast, slow) of A: A(row0 + ii, k0 + kk) with (ii, kk) = (slow, fast),
// or (fast, slow) when A is stored transposed, so that consecutive threads read
// consecutive addresses; 0 outside the matrix or the K share. Read from problem q's
// A (load_a).
fn fetch_a(q: u32, p: Params, row0: u32, k0: u32, k_end: u32, a_t: bool, fast: u32, slow: u32) -> f32 {
    let ik = tile_at(a_t, fast, slow);
    let ii = ik.x;
    let kk = ik.y;
    if (row0 + ii < p.m && k0 + kk < k_end) {
        return load_a(q, p, row0 + ii, k0 + kk);
    }
    return 0.0;
}

// Four elements of A's tile for K step k0: (fast, slow + 8r), r = 0..3.
fn fetch_a4(w: Walk, k0: u32, fast: u32, slow: u32) -> vec4<f32> {
    return vec4<f32>(
        fetch_a(w.q, w.p, w.row0, k0, w.k_end, w.a_t, fast, slow),
        fetch_a(w.q, w.p, w.row0, k0, w.k_end, w.a_t, fast, slow + 8u),
        fetch_a(w.q, w.p, w.row0, k0, w.k_end, w.a_t, fast, slow + 16u),
        fetch_a(w.q, w.p, w.row0, k0, w.k_end, w.a_t, fast, slow + 24u),
    );
}

// Tile element (fast, slow) of B: B(k0 + kb, col0 + jj) with (kb, jj) = (slow, fast),
// or (fast, slow) when B is stored transposed; read from problem q's B (load_b).
// With `ones`, column n is 1 (the bias gradient's column, see ONES).
fn fetch_b(q: u32, p: Params, col0: u32, k0: u32, k_end: u32, b_t: bool, ones: bool, fast: u32, slow: u32) -> f32 {
    let kj = tile_at(b_t, fast, slow);
    let kb = kj.x;
    let jj = kj.y;
    if (k0 + kb < k_end && col0 + jj < p.n) {
        return load_b(q, p.b_off + (k0 + kb) * p.b_sp + (col0 + jj) * p.b_sj);
    }
    if (ones && k0 + kb < k_end && col0 + jj == p.n) {
        return 1.0;
    }
    return 0.0;
}

// Four elements of B's tile for K step k0: (fast, slow + 8r), r = 0..3.
fn fetch_b4(w: Walk, k0: u32, fast: u32, slow: u32) -> vec4<f32> {
    return vec4<f32>(
        fetch_b(w.q, w.p, w.col0, k0, w.k_end, w.b_t, w.ones, fast, slow),
        fetch_b(w.q, w.p, w.col0, k0, w.k_end, w.b_t, w.ones, fast, slow + 8u),
        fetch_b(w.q, w.p, w.col0, k0, w.k_end, w.b_t, w.ones, fast, slow + 16u),
        fetch_b(w.q, w.p, w.col0, k0, w.k_end, w.b_t, w.ones, fast, slow + 24u),
    );
}

// The (row, column) within an operand's tile of a thread's element (fast, slow):
// (slow, fast), or (fast, slow) for an operand stored transposed, so that
// consecutive threads read consecutive addresses either way.
fn tile_at(transposed: bool, fast: u32, slow: u32) -> vec2<u32> {
    if (transposed) {
        return vec2<u32>(fast, slow);
    }
    return vec2<u32>(slow, fast);
}

// C of problem q: c, or c2 for problems 1 and 2 of a pair or a triple
fn put(q: u32, at: u32, v: f32) {
    if (q == 0u) {
        c[at] = v;
    } else {
        c2[at] = v;
    }
}

fn store_partial(p: Params, base: u32, i: u32, j: u32, v: f32) {
    if (i < p.m && j < p.n) {
        put_partial(base + i * p.n + j, v);
    }
}

// The split-K sums of a thread's four elements C(i0, j0), C(i0, j0 + 1),
// C(i0 + 1, j0), C(i0 + 1, j0 + 1) (0 outside C): each adds the shares s = 0, 1, …
// in order from 0, as split_sum does, so each is bit for bit the sum matmul_reduce
// would take. Only for a tile's last share (last_split), which reads the others'
// partial sums: four shares' loads of the four elements issued together, then
// added (a load's round trip is the cost here, and an add waiting on a load
// would hold back the loads after it).
fn split_totals(p: Params, i0: u32, j0: u32) -> vec4<f32> {
    let mn = p.m * p.n;
    var at = array<u32, 4>();
    var ok = array<bool, 4>();
    for (var k = 0u; k < 4u; k++) {
        let i = i0 + k / 2u;
        let j = j0 + k % 2u;
        at[k] = i * p.n + j;
        ok[k] = i < p.m && j < p.n;
    }
    var v = vec4<f32>();
    var s = 0u;
    for (; s + 4u <= p.splits; s += 4u) {
        var x = array<vec4<f32>, 4>();
        for (var q = 0u; q < 4u; q++) {
            for (var k = 0u; k < 4u; k++) {
                if (ok[k]) {
                    x[q][k] = get_partial((s + q) * mn + at[k]);
                }
            }
        }
        v += x[0];
        v += x[1];
        v += x[2];
        v += x[3];
    }
    for (; s < p.splits; s++) {
        var x = vec4<f32>();
        for (var k = 0u; k < 4u; k++) {
            if (ok[k]) {
                x[k] = get_partial(s * mn + at[k]);
            }
        }
        v += x;
    }
    return v;
}

@compute @workgroup_size(256)
fn matmul_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = u.p[0];
    let t = gid.x + gid.y * nwg.x * 256u;
    if (t >= p.m * p.n) {
        return;
    }
    let src = SplitSource(p.splits, p.m, p.n, p.flags, p.e_off, p.e_si, 0u, 0u);
    put(0u, p.c_off + (t / p.n) * p.c_si + t % p.n, split_sum(src, t));
}

// C(i, j) = epilogue(v_in) of problem q, and where it went (none outside C); with
// `ones`, column n is the bias gradient, stored as it is. With `early`, the bias
// and the mask value are those read before the walk.
fn store(q: u32, p: Params, ones: bool, i: u32, j: u32, v_in: f32, early: bool, bias: f32, mask: f32) -> Stored {
    if (ones && i < p.m && j == p.n) {
        put(q, p.e_off + i, v_in);
        return Stored(p.e_off + i, v_in);
    }
    if (i >= p.m || j >= p.n) {
        return Stored(NONE, 0.0);
    }
    var v = v_in;
    if ((p.flags & 1u) != 0u) {
        if (early) {
            v += bias;
        } else {
            v += e[p.e_off + j];
        }
    }
    if ((p.flags & 2u) != 0u) {
        v = max(v, 0.0);
    }
    if ((p.flags & 4u) != 0u) {
        var h = mask;
        if (!early) {
            h = e[p.e_off + i * p.e_si + j];
        }
        if (h <= 0.0) {
            v = 0.0;
        }
    }
    let at = p.c_off + i * p.c_si + j;
    put(q, at, v);
    return Stored(at, v);
}
