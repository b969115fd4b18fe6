// The K walk of matmul.wgsl's tiles on tensor cores (`VAE_OOD_GPU_COOP=1`, devices
// with cooperative matrices of f16 into f32): the same 32×32 tile per workgroup of
// 256 threads and the same global reads (fetch_a4, fetch_b4, prefetched as there),
// but the tiles go to workgroup memory as f16 and each K step of 32 is done by
// F×F×F multiply-adds of cooperative matrices, not by 32 fma steps per thread.
// Its CPU twin is cpu::matmul on operands rounded to f16 (cpu::round_to_f16): a
// product of two f16 values is exact in f32, so the two differ by the order of
// the f32 sums only. The row sums of A (flag 8, a bias gradient) stay f32 sums of
// the unrounded values.
//
// Replaces matmul_walk.wgsl; the fragment shape (CoopA, CoopB, CoopC and their
// size F: coop16.wgsl, or coop8.wgsl on devices with 8×8×8 only) opens the module.
// The tile is (32/F)² blocks of F×F; each block's K step is split in two halves of
// 16, so there are J = 2·(32/F)² jobs (8 for F = 16, 32 for F = 8), each a block and
// a half, doing 16/F multiply-adds per K step. SG, the subgroup size, is set by the
// host (one size with 256/SG ≥ J subgroups): subgroup g holds invocations g·SG ..
// g·SG + SG − 1 in local_invocation_index order, as every Vulkan driver assigns
// them; subgroup g < J owns job g, any others repeat job g % J and discard it —
// every subgroup must run the same cooperative operations (uniform control flow).
override SG: u32 = 32u;
const BPR: u32 = 32u / F; // blocks per row of the tile
const NB: u32 = BPR * BPR; // blocks
const JOBS: u32 = 2u * NB;

// f16 tiles, both row-major: ha[ii·HROW + kk] = A(row0 + ii, k0 + kk), hb[kk·HROW + jj]
// = B(k0 + kk, col0 + jj). 40 halves a row (80 bytes): 16-byte-aligned rows whose
// 8-row groups fall on distinct banks.
const HROW: u32 = 40u;
var<workgroup> ha: array<f16, 1280>; // 32 × HROW
var<workgroup> hb: array<f16, 1280>;
// The jobs' F×F sums after the walk, hc[r·F² + ii·F + jj] for job r = kh·NB + block
// (the first K half's 1024 values, then the second's), and one block more that
// subgroups without a job store to; then (reused) the row sums' partials.
var<workgroup> hc: array<f32, 2304>;

fn k_walk(sums: bool, w: Walk, lid: vec3<u32>, acc: ptr<function, vec4<f32>>,
          rs: ptr<function, vec2<f32>>) {
    let t = lid.y * 16u + lid.x;
    let fast = t % TILE;
    let slow = t / TILE;
    let g = t / SG;
    let job = g % JOBS;
    let kh = job / NB;
    let blk = job % NB;
    // where this subgroup's A and B blocks start in ha, hb (its first chunk)
    let at_a = (blk / BPR) * F * HROW + kh * 16u;
    let at_b = kh * 16u * HROW + (blk % BPR) * F;
    let stride = HROW;
    var cm = CoopC();
    // the thread's A elements summed over K (flag 8): one partial per tile position
    var rsv = vec4<f32>();
    var ra = fetch_a4(w, w.k_begin, fast, slow);
    var rb = fetch_b4(w, w.k_begin, fast, slow);
    for (var k0 = w.k_begin; k0 < w.k_end; k0 += TILE) {
        stash_h4(true, w.a_t, fast, slow, ra);
        stash_h4(false, w.b_t, fast, slow, rb);
        if (sums) {
            rsv += ra;
        }
        workgroupBarrier();
        if (PREFETCH) {
            ra = fetch_a4(w, k0 + TILE, fast, slow);
            rb = fetch_b4(w, k0 + TILE, fast, slow);
        }
        for (var c = 0u; c < 16u / F; c++) {
            let ia = at_a + c * F;
            let ib = at_b + c * F * HROW;
            let ma = coopLoadT<CoopA>(&ha[ia], stride);
            let mb = coopLoadT<CoopB>(&hb[ib], stride);
            cm = coopMultiplyAdd(ma, mb, cm);
        }
        workgroupBarrier();
        if (!PREFETCH) {
            ra = fetch_a4(w, k0 + TILE, fast, slow);
            rb = fetch_b4(w, k0 + TILE, fast, slow);
        }
    }
    var region = JOBS;
    if (g < JOBS) {
        region = job;
    }
    let at_c = region * F * F;
    let stride_c = F;
    coopStoreT(cm, &hc[at_c], stride_c);
    workgroupBarrier();
    // the thread's 2×2 outputs: rows 2·lid.y, +1, columns 2·lid.x, +1 of the tile
    // (one block), each the sum of the two K halves
    let ii = lid.y * 2u;
    let jj = lid.x * 2u;
    let o = ((ii / F) * BPR + jj / F) * F * F + (ii % F) * F + jj % F;
    let h = NB * F * F; // 1024: the second half's
    *acc = vec4<f32>(
        hc[o] + hc[o + h],
        hc[o + 1u] + hc[o + h + 1u],
        hc[o + F] + hc[o + h + F],
        hc[o + F + 1u] + hc[o + h + F + 1u],
    );
    if (sums) {
        // the partials by tile position (ii, kk), hc[ii·32 + kk], then row sums
        workgroupBarrier();
        put_rs(w.a_t, fast, slow, rsv.x);
        put_rs(w.a_t, fast, slow + 8u, rsv.y);
        put_rs(w.a_t, fast, slow + 16u, rsv.z);
        put_rs(w.a_t, fast, slow + 24u, rsv.w);
        workgroupBarrier();
        if (lid.x == 0u) {
            var s = vec2<f32>();
            for (var kk = 0u; kk < TILE; kk++) {
                s += vec2<f32>(hc[ii * TILE + kk], hc[(ii + 1u) * TILE + kk]);
            }
            *rs = s;
        }
    }
}

// Thread t's four elements of an operand's tile (fast, slow + 8r), r = 0..3, into
// ha (is_a) or hb as f16.
fn stash_h4(is_a: bool, transposed: bool, fast: u32, slow: u32, v: vec4<f32>) {
    stash_h(is_a, transposed, fast, slow, v.x);
    stash_h(is_a, transposed, fast, slow + 8u, v.y);
    stash_h(is_a, transposed, fast, slow + 16u, v.z);
    stash_h(is_a, transposed, fast, slow + 24u, v.w);
}

fn stash_h(is_a: bool, transposed: bool, fast: u32, slow: u32, v: f32) {
    // (row, column) of the element in its tile: (ii, kk) for A, (kk, jj) for B
    let rc = tile_at(transposed, fast, slow);
    if (is_a) {
        ha[rc.x * HROW + rc.y] = f16(v);
    } else {
        hb[rc.x * HROW + rc.y] = f16(v);
    }
}

// A's partial row sum at its tile position (ii, kk) into hc[ii·32 + kk].
fn put_rs(a_t: bool, fast: u32, slow: u32, v: f32) {
    let ik = tile_at(a_t, fast, slow);
    hc[ik.x * TILE + ik.y] = v;
}
