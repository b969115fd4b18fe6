// Appended to matmul.wgsl for every matmul kernel: the 32×32 tile with 128 threads
// (`VAE_OOD_GPU_MATMUL_THREADS=128`: the host sets WGY = 8), 16 × 8 threads of four
// rows × two columns each, against the default 16 × 16 threads of 2 × 2. Per step
// of K a thread reads one vec4 of A (its four rows) and one vec2 of B, two
// workgroup-memory loads for eight fmas (the default: two for four), and each
// thread moves 16 elements of the tiles per K step (the default: 8). The same
// tiles, K shares and order of fmas into every output, so the same bits; the same
// grid, so the host lowers every product as before. (An earlier variant with 8 × 8
// threads of 4 × 4 ran every product 1.1–1.6× slower on an H100: too few threads
// to hide latency. This one keeps four warps per tile.)

// A's tile as vec4s of four rows: ta4[kk·ROW4 + i/4] holds A(i..i+3, kk) (rows of
// 8 vec4s padded by one). B's tile is matmul.wgsl's tb.
const ROW4: u32 = 9u;
var<workgroup> ta4: array<vec4<f32>, 288>; // 32 × ROW4

// As matmul.wgsl's tile, for workgroups of 16 × 8 threads.
fn tile_tall(q: u32, wg: vec3<u32>, lid: vec3<u32>) {
    let w = walk_of(q, wg);
    let p = w.p;
    var acc0 = vec4<f32>(); // C(i0, j0), C(i0, j0 + 1), C(i0 + 1, j0), C(i0 + 1, j0 + 1)
    var acc1 = vec4<f32>(); // the same for rows i0 + 2, i0 + 3
    var rs = vec4<f32>(); // row sums of A (flag 8), rows i0 .. i0 + 3
    if (w.sums) {
        k_walk_tall(true, w, lid, &acc0, &acc1, &rs);
    } else {
        k_walk_tall(false, w, lid, &acc0, &acc1, &rs);
    }
    let i0 = w.row0 + lid.y * 4u;
    let j0 = w.col0 + lid.x * 2u;
    if (p.splits > 1u) {
        let base = wg.z * p.m * p.n;
        store_partial(p, base, i0, j0, acc0.x);
        store_partial(p, base, i0, j0 + 1u, acc0.y);
        store_partial(p, base, i0 + 1u, j0, acc0.z);
        store_partial(p, base, i0 + 1u, j0 + 1u, acc0.w);
        store_partial(p, base, i0 + 2u, j0, acc1.x);
        store_partial(p, base, i0 + 2u, j0 + 1u, acc1.y);
        store_partial(p, base, i0 + 3u, j0, acc1.z);
        store_partial(p, base, i0 + 3u, j0 + 1u, acc1.w);
        return;
    }
    let s0 = store(q, p, w.ones, i0, j0, acc0.x);
    let s1 = store(q, p, w.ones, i0, j0 + 1u, acc0.y);
    let s2 = store(q, p, w.ones, i0 + 1u, j0, acc0.z);
    let s3 = store(q, p, w.ones, i0 + 1u, j0 + 1u, acc0.w);
    let s4 = store(q, p, w.ones, i0 + 2u, j0, acc1.x);
    let s5 = store(q, p, w.ones, i0 + 2u, j0 + 1u, acc1.y);
    let s6 = store(q, p, w.ones, i0 + 3u, j0, acc1.z);
    let s7 = store(q, p, w.ones, i0 + 3u, j0 + 1u, acc1.w);
    var b0 = Stored(NONE, 0.0);
    var b1 = Stored(NONE, 0.0);
    var b2 = Stored(NONE, 0.0);
    var b3 = Stored(NONE, 0.0);
    if ((p.flags & 8u) != 0u && w.sums && wg.x == 0u && lid.x == 0u) {
        b0 = row_sum(q, p, i0, rs.x);
        b1 = row_sum(q, p, i0 + 1u, rs.y);
        b2 = row_sum(q, p, i0 + 2u, rs.z);
        b3 = row_sum(q, p, i0 + 3u, rs.w);
    }
    after_tile(array<Stored, 6>(s0, s1, s2, s3, b0, b1));
    after_tile(array<Stored, 6>(s4, s5, s6, s7, b2, b3));
}

// As matmul.wgsl's k_walk: thread t (of 128) moves tile elements (fast, slow) =
// (t % 32, t / 32 + 4r), r = 0..7, of each operand, all sixteen reads issued before
// the first store to workgroup memory.
fn k_walk_tall(sums: bool, w: Walk, lid: vec3<u32>, acc0: ptr<function, vec4<f32>>,
               acc1: ptr<function, vec4<f32>>, rs: ptr<function, vec4<f32>>) {
    let t = lid.y * 16u + lid.x;
    let fast = t % TILE;
    let slow = t / TILE;
    var ra0 = fetch_a4(w, w.k_begin, fast, slow, 4u);
    var ra1 = fetch_a4(w, w.k_begin, fast, slow + 16u, 4u);
    var rb0 = fetch_b4(w, w.k_begin, fast, slow, 4u);
    var rb1 = fetch_b4(w, w.k_begin, fast, slow + 16u, 4u);
    for (var k0 = w.k_begin; k0 < w.k_end; k0 += TILE) {
        stash_a4_tall(w.a_t, fast, slow, ra0);
        stash_a4_tall(w.a_t, fast, slow + 16u, ra1);
        stash_b4(w.b_t, fast, slow, 4u, rb0);
        stash_b4(w.b_t, fast, slow + 16u, 4u, rb1);
        workgroupBarrier();
        if (PREFETCH) {
            ra0 = fetch_a4(w, k0 + TILE, fast, slow, 4u);
            ra1 = fetch_a4(w, k0 + TILE, fast, slow + 16u, 4u);
            rb0 = fetch_b4(w, k0 + TILE, fast, slow, 4u);
            rb1 = fetch_b4(w, k0 + TILE, fast, slow + 16u, 4u);
        }
        for (var kk = 0u; kk < TILE; kk += 8u) {
            let ia = kk * ROW4 + lid.y; // rows 4·lid.y .. + 3
            let ib = kk * ROW + lid.x; // columns 2·lid.x, + 1
            if (sums) {
                mac_tall(acc0, acc1, rs, ta4[ia], tb[ib]);
                mac_tall(acc0, acc1, rs, ta4[ia + ROW4], tb[ib + ROW]);
                mac_tall(acc0, acc1, rs, ta4[ia + 2u * ROW4], tb[ib + 2u * ROW]);
                mac_tall(acc0, acc1, rs, ta4[ia + 3u * ROW4], tb[ib + 3u * ROW]);
                mac_tall(acc0, acc1, rs, ta4[ia + 4u * ROW4], tb[ib + 4u * ROW]);
                mac_tall(acc0, acc1, rs, ta4[ia + 5u * ROW4], tb[ib + 5u * ROW]);
                mac_tall(acc0, acc1, rs, ta4[ia + 6u * ROW4], tb[ib + 6u * ROW]);
                mac_tall(acc0, acc1, rs, ta4[ia + 7u * ROW4], tb[ib + 7u * ROW]);
            } else {
                mul_add_tall(acc0, acc1, ta4[ia], tb[ib]);
                mul_add_tall(acc0, acc1, ta4[ia + ROW4], tb[ib + ROW]);
                mul_add_tall(acc0, acc1, ta4[ia + 2u * ROW4], tb[ib + 2u * ROW]);
                mul_add_tall(acc0, acc1, ta4[ia + 3u * ROW4], tb[ib + 3u * ROW]);
                mul_add_tall(acc0, acc1, ta4[ia + 4u * ROW4], tb[ib + 4u * ROW]);
                mul_add_tall(acc0, acc1, ta4[ia + 5u * ROW4], tb[ib + 5u * ROW]);
                mul_add_tall(acc0, acc1, ta4[ia + 6u * ROW4], tb[ib + 6u * ROW]);
                mul_add_tall(acc0, acc1, ta4[ia + 7u * ROW4], tb[ib + 7u * ROW]);
            }
        }
        workgroupBarrier();
        if (!PREFETCH) {
            ra0 = fetch_a4(w, k0 + TILE, fast, slow, 4u);
            ra1 = fetch_a4(w, k0 + TILE, fast, slow + 16u, 4u);
            rb0 = fetch_b4(w, k0 + TILE, fast, slow, 4u);
            rb1 = fetch_b4(w, k0 + TILE, fast, slow + 16u, 4u);
        }
    }
}

// One step of the multiply: four A values (rows i0 .. i0 + 3) times two B values
// (columns j0, j0 + 1) into the eight sums, each one fma as in matmul.wgsl's mac.
fn mac_tall(acc0: ptr<function, vec4<f32>>, acc1: ptr<function, vec4<f32>>,
            rs: ptr<function, vec4<f32>>, av: vec4<f32>, bv: vec2<f32>) {
    *acc0 = fma(av.xxyy, bv.xyxy, *acc0);
    *acc1 = fma(av.zzww, bv.xyxy, *acc1);
    *rs += av;
}

// mac_tall without the row sums
fn mul_add_tall(acc0: ptr<function, vec4<f32>>, acc1: ptr<function, vec4<f32>>,
                av: vec4<f32>, bv: vec2<f32>) {
    *acc0 = fma(av.xxyy, bv.xyxy, *acc0);
    *acc1 = fma(av.zzww, bv.xyxy, *acc1);
}

// Elements (fast, slow + 4r), r = 0..3, of A's tile into ta4.
fn stash_a4_tall(a_t: bool, fast: u32, slow: u32, v: vec4<f32>) {
    stash_a_tall(a_t, fast, slow, v.x);
    stash_a_tall(a_t, fast, slow + 4u, v.y);
    stash_a_tall(a_t, fast, slow + 8u, v.z);
    stash_a_tall(a_t, fast, slow + 12u, v.w);
}

fn stash_a_tall(a_t: bool, fast: u32, slow: u32, v: f32) {
    let ik = tile_at(a_t, fast, slow);
    ta4[ik.y * ROW4 + ik.x / 4u][ik.x % 4u] = v;
}
