// Appended to matmul.wgsl for every matmul kernel: the 64×64 tile, for the large
// unsplit products of a pair or a triple whose params carry flag 16 (the host sets
// it with `VAE_OOD_GPU_TILE64=1` where both sides are ≥ 256: the 400 × 784 weight
// gradients of fc1 and fc4). The same 16 × 16 threads as the 32×32 tile, each
// with 2 × 2 outputs in each of the four 32×32 quadrants (rows 2·ly, 2·ly + 1 and
// 32 + those; columns likewise from lx), so that a step of the multiply reads four
// pairs (two of A, two of B) for sixteen fmas: half the workgroup-memory traffic
// per fma of the 32×32 tile, whose weight gradients were bound by it (1.64 µs per
// 32 of K on 325 workgroups against 0.75 on ≤ 132, H100). K goes 16 at a time, so
// that both operands fit matmul.wgsl's ta and tb (16 × ROW64 pairs each): no
// workgroup memory beyond WebGPU's default 16 KB. Every output is one thread's
// fmas over K in order from 0, and every row sum one thread's adds in order, as
// in the 32×32 tile: the same bits.

// pairs per step of K in ta / tb (32 pairs of rows or columns, one of padding)
const ROW64: u32 = 33u;
const KS64: u32 = 16u;

// One 64×64 tile (wg.x, wg.y) of problem q (never split: K from 0 to p.k).
fn tile64(q: u32, wg: vec3<u32>, lid: vec3<u32>) {
    let p = params_of(q);
    let row0 = wg.y * 64u;
    let col0 = wg.x * 64u;
    // quadrant sums: acc[r][c] for row half r, column half c, each as matmul.wgsl's
    // acc (C(i, j), C(i, j + 1), C(i + 1, j), C(i + 1, j + 1))
    var acc = array<vec4<f32>, 4>();
    var rs = vec4<f32>(); // row sums (flag 8): rows 2·ly, 2·ly + 1, 32 + 2·ly, 33 + 2·ly
    if ((p.flags & 8u) != 0u) {
        k_walk64(true, q, p, row0, col0, lid, &acc, &rs);
    } else {
        k_walk64(false, q, p, row0, col0, lid, &acc, &rs);
    }
    let i0 = row0 + lid.y * 2u;
    let j0 = col0 + lid.x * 2u;
    let bias = (p.flags & 8u) != 0u && wg.x == 0u && lid.x == 0u;
    row64(q, p, i0, j0, acc[0].xy, acc[1].xy, bias, rs.x);
    row64(q, p, i0 + 1u, j0, acc[0].zw, acc[1].zw, bias, rs.y);
    row64(q, p, i0 + 32u, j0, acc[2].xy, acc[3].xy, bias, rs.z);
    row64(q, p, i0 + 33u, j0, acc[2].zw, acc[3].zw, bias, rs.w);
}

// Row i's four outputs of a thread (columns j0, j0 + 1 in `near`, j0 + 32, j0 + 33
// in `far`) and, with `bias`, its bias gradient s, stored; then after_tile.
fn row64(q: u32, p: Params, i: u32, j0: u32, near: vec2<f32>, far: vec2<f32>, bias: bool, s: f32) {
    let s0 = store(q, p, false, i, j0, near.x);
    let s1 = store(q, p, false, i, j0 + 1u, near.y);
    let s2 = store(q, p, false, i, j0 + 32u, far.x);
    let s3 = store(q, p, false, i, j0 + 33u, far.y);
    var b = Stored(NONE, 0.0);
    if (bias) {
        b = row_sum(q, p, i, s);
    }
    after_tile(array<Stored, 6>(s0, s1, s2, s3, b, Stored(NONE, 0.0)));
}

// The K walk of a 64×64 tile, 16 of K per step: thread t moves elements t + 256·r,
// r = 0..3, of each operand's 64 × 16 tile, consecutive threads along the operand's
// contiguous side (as matmul.wgsl's k_walk), all eight reads issued before the
// first store.
fn k_walk64(sums: bool, q: u32, p: Params, row0: u32, col0: u32, lid: vec3<u32>,
            acc: ptr<function, array<vec4<f32>, 4>>, rs: ptr<function, vec4<f32>>) {
    let t = lid.y * 16u + lid.x;
    let a_t = p.a_si == 1u && p.a_sp != 1u; // A stored transposed: rows fastest
    let b_t = p.b_sp == 1u && p.b_sj != 1u; // B stored transposed: K fastest
    var ra = fetch_a64(q, p, row0, 0u, a_t, t);
    var rb = fetch_b64(q, p, col0, 0u, b_t, t);
    for (var k0 = 0u; k0 < p.k; k0 += KS64) {
        stash_a64(a_t, t, ra);
        stash_b64(b_t, t, rb);
        workgroupBarrier();
        if (PREFETCH) {
            ra = fetch_a64(q, p, row0, k0 + KS64, a_t, t);
            rb = fetch_b64(q, p, col0, k0 + KS64, b_t, t);
        }
        // unrolled by hand, 4 steps of kk per trip (as matmul.wgsl's k_walk)
        for (var kk = 0u; kk < KS64; kk += 4u) {
            mac64(sums, acc, rs, kk, lid);
            mac64(sums, acc, rs, kk + 1u, lid);
            mac64(sums, acc, rs, kk + 2u, lid);
            mac64(sums, acc, rs, kk + 3u, lid);
        }
        workgroupBarrier();
        if (!PREFETCH) {
            ra = fetch_a64(q, p, row0, k0 + KS64, a_t, t);
            rb = fetch_b64(q, p, col0, k0 + KS64, b_t, t);
        }
    }
}

// One step kk of the multiply: the thread's two pairs of rows and two pairs of
// columns, sixteen fmas (and, with `sums`, its four rows into the row sums).
fn mac64(sums: bool, acc: ptr<function, array<vec4<f32>, 4>>, rs: ptr<function, vec4<f32>>,
         kk: u32, lid: vec3<u32>) {
    let a0 = ta[kk * ROW64 + lid.y];
    let a1 = ta[kk * ROW64 + 16u + lid.y];
    let b0 = tb[kk * ROW64 + lid.x];
    let b1 = tb[kk * ROW64 + 16u + lid.x];
    (*acc)[0] = fma(a0.xxyy, b0.xyxy, (*acc)[0]);
    (*acc)[1] = fma(a0.xxyy, b1.xyxy, (*acc)[1]);
    (*acc)[2] = fma(a1.xxyy, b0.xyxy, (*acc)[2]);
    (*acc)[3] = fma(a1.xxyy, b1.xyxy, (*acc)[3]);
    if (sums) {
        *rs += vec4<f32>(a0, a1);
    }
}

// Element e of A's 64 × 16 tile for K step k0 as matmul.wgsl's fetch_a reads it:
// (fast, slow) = (kk, ii) = (e % 16, e / 16), or (ii, kk) = (e % 64, e / 64) when A
// is stored transposed.
fn fast_slow_a64(a_t: bool, e: u32) -> vec2<u32> {
    if (a_t) {
        return vec2<u32>(e % 64u, e / 64u);
    }
    return vec2<u32>(e % KS64, e / KS64);
}

// B's 16 × 64 tile likewise: (fast, slow) = (jj, kb) = (e % 64, e / 64), or (kb,
// jj) = (e % 16, e / 16) when B is stored transposed.
fn fast_slow_b64(b_t: bool, e: u32) -> vec2<u32> {
    if (b_t) {
        return vec2<u32>(e % KS64, e / KS64);
    }
    return vec2<u32>(e % 64u, e / 64u);
}

fn fetch_a64(q: u32, p: Params, row0: u32, k0: u32, a_t: bool, t: u32) -> vec4<f32> {
    var v: vec4<f32>;
    for (var r = 0u; r < 4u; r++) {
        let fs = fast_slow_a64(a_t, t + 256u * r);
        v[r] = fetch_a(q, p, row0, k0, p.k, a_t, fs.x, fs.y);
    }
    return v;
}

fn fetch_b64(q: u32, p: Params, col0: u32, k0: u32, b_t: bool, t: u32) -> vec4<f32> {
    var v: vec4<f32>;
    for (var r = 0u; r < 4u; r++) {
        let fs = fast_slow_b64(b_t, t + 256u * r);
        v[r] = fetch_b(q, p, col0, k0, p.k, b_t, false, fs.x, fs.y);
    }
    return v;
}

// A's elements into ta as pairs of rows: ta[kk·ROW64 + ii/2][ii % 2] = A(row0 + ii, k0 + kk).
fn stash_a64(a_t: bool, t: u32, v: vec4<f32>) {
    for (var r = 0u; r < 4u; r++) {
        let fs = fast_slow_a64(a_t, t + 256u * r);
        let ik = tile_at(a_t, fs.x, fs.y);
        ta[ik.y * ROW64 + ik.x / 2u][ik.x % 2u] = v[r];
    }
}

// B's elements into tb as pairs of columns: tb[kb·ROW64 + jj/2][jj % 2] = B(k0 + kb, col0 + jj).
fn stash_b64(b_t: bool, t: u32, v: vec4<f32>) {
    for (var r = 0u; r < 4u; r++) {
        let fs = fast_slow_b64(b_t, t + 256u * r);
        let kj = tile_at(b_t, fs.x, fs.y);
        tb[kj.x * ROW64 + kj.y / 2u][kj.y % 2u] = v[r];
    }
}
