// The K walk of matmul.wgsl's tiles on tensor cores (`VAE_OOD_GPU_COOP=1`, devices
// with cooperative matrices of f16 into f32): the same 32×32 tile per workgroup of
// 256 threads and the same global reads (fetch_a4, fetch_b4, prefetched as there),
// but the tiles go to workgroup memory as f16 and K is done by F×F×F multiply-adds
// of cooperative matrices, not by fma steps on every thread. Its CPU twin is
// cpu::matmul on operands rounded to f16 (cpu::round_to_f16): a product of two f16
// values is exact in f32, so the two differ by the order of the f32 sums only. The
// row sums of A (flag 8, a bias gradient) stay f32 sums of the unrounded values.
//
// Replaces matmul_walk.wgsl; the fragment shape (CoopA, CoopB, CoopC and their
// size F: coop16.wgsl, or coop8.wgsl on devices with 8×8×8 only) opens the module.
// A K step is KS = 32·KR of K (KR, 1, 2 or 4, set by the host:
// `VAE_OOD_GPU_COOP_STEP`): each thread reads KR times the FMA walk's eight values
// before the one barrier of the step — the multiply-adds take so little time that
// a step costs about one global read's latency, whatever its length. The tile is
// (32/F)² blocks of F×F; each block's K step is split in two halves, so there are
// JOBS = 2·(32/F)² jobs (8 for F = 16, 32 for F = 8), each a block and a half step,
// KS/(2F) multiply-adds. SG, the subgroup size, is set by the host (one size with
// 256/SG ≥ JOBS subgroups): subgroup g holds invocations g·SG .. g·SG + SG − 1 in
// local_invocation_index order, as every Vulkan driver assigns them; subgroup
// g < JOBS owns job g, any others repeat job g % JOBS and discard it — every
// subgroup must run the same cooperative operations (uniform control flow).
override SG: u32 = 32u;
override KR: u32 = 2u;
const KR_MAX: u32 = 4u;
const BPR: u32 = 32u / F; // blocks per row of the tile
const NB: u32 = BPR * BPR; // blocks
const JOBS: u32 = 2u * NB;

// f16 tiles, both row-major: ha[sa + ii·AROW + kk] = A(row0 + ii, k0 + kk) (32 × KS),
// hb[sb + kk·BROW + jj] = B(k0 + kk, col0 + jj) (KS × 32). Rows of KS + 8 and 40
// halves: 16-byte-aligned rows whose 8-row groups fall on distinct banks. Two of
// each, sa = 0 or ATILE (sb = 0 or BTILE) in turn: a K step stashes into one while
// no subgroup can still be reading it (all passed the barrier after their reads of
// the step before it), so one barrier per K step, not two as in matmul_walk.wgsl.
override KS: u32 = 32u * KR;
override AROW: u32 = KS + 8u;
const BROW: u32 = 40u;
override ATILE: u32 = 32u * AROW;
override BTILE: u32 = KS * BROW;
override HA_LEN: u32 = 2u * ATILE;
override HB_LEN: u32 = 2u * BTILE;
var<workgroup> ha: array<f16, HA_LEN>;
var<workgroup> hb: array<f16, HB_LEN>;
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
    // where this subgroup's A and B blocks start in a tile (its first multiply-add)
    let at_a = (blk / BPR) * F * AROW + kh * (KS / 2u);
    let at_b = kh * (KS / 2u) * BROW + (blk % BPR) * F;
    let stride_a = AROW;
    let stride_b = BROW;
    var cm = CoopC();
    // the thread's A elements summed over K (flag 8): one partial per tile position
    var rsv = vec4<f32>();
    // the thread's reads of a K step: (fast, slow + 8q) of each sub-step r of 32
    var ra: array<vec4<f32>, KR_MAX>;
    var rb: array<vec4<f32>, KR_MAX>;
    for (var r = 0u; r < KR; r++) {
        ra[r] = fetch_a4(w, w.k_begin + r * TILE, fast, slow);
        rb[r] = fetch_b4(w, w.k_begin + r * TILE, fast, slow);
    }
    var sa = 0u;
    var sb = 0u;
    for (var k0 = w.k_begin; k0 < w.k_end; k0 += KS) {
        for (var r = 0u; r < KR; r++) {
            stash_h4(true, w.a_t, sa + r * TILE, fast, slow, ra[r]);
            stash_h4(false, w.b_t, sb + r * TILE * BROW, fast, slow, rb[r]);
            if (sums) {
                rsv += ra[r];
            }
        }
        workgroupBarrier();
        if (PREFETCH) {
            for (var r = 0u; r < KR; r++) {
                ra[r] = fetch_a4(w, k0 + KS + r * TILE, fast, slow);
                rb[r] = fetch_b4(w, k0 + KS + r * TILE, fast, slow);
            }
        }
        for (var c = 0u; c < KS / 2u / F; c++) {
            let ia = sa + at_a + c * F;
            let ib = sb + at_b + c * F * BROW;
            let ma = coopLoadT<CoopA>(&ha[ia], stride_a);
            let mb = coopLoadT<CoopB>(&hb[ib], stride_b);
            cm = coopMultiplyAdd(ma, mb, cm);
        }
        sa = ATILE - sa;
        sb = BTILE - sb;
        if (!PREFETCH) {
            for (var r = 0u; r < KR; r++) {
                ra[r] = fetch_a4(w, k0 + KS + r * TILE, fast, slow);
                rb[r] = fetch_b4(w, k0 + KS + r * TILE, fast, slow);
            }
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
            var sum = vec2<f32>();
            for (var kk = 0u; kk < TILE; kk++) {
                sum += vec2<f32>(hc[ii * TILE + kk], hc[(ii + 1u) * TILE + kk]);
            }
            *rs = sum;
        }
    }
}

// Thread t's four elements (fast, slow + 8q), q = 0..3, of a 32 × 32 part of an
// operand's tile into ha (is_a; the part's first column at s) or hb (its first row
// at s) as f16.
fn stash_h4(is_a: bool, transposed: bool, s: u32, fast: u32, slow: u32, v: vec4<f32>) {
    stash_h(is_a, transposed, s, fast, slow, v.x);
    stash_h(is_a, transposed, s, fast, slow + 8u, v.y);
    stash_h(is_a, transposed, s, fast, slow + 16u, v.z);
    stash_h(is_a, transposed, s, fast, slow + 24u, v.w);
}

fn stash_h(is_a: bool, transposed: bool, s: u32, fast: u32, slow: u32, v: f32) {
    // (row, column) of the element in its tile: (ii, kk) for A, (kk, jj) for B
    let rc = tile_at(transposed, fast, slow);
    if (is_a) {
        ha[s + rc.x * AROW + rc.y] = f16(v);
    } else {
        hb[s + rc.x * BROW + rc.y] = f16(v);
    }
}

// A's partial row sum at its tile position (ii, kk) into hc[ii·32 + kk].
fn put_rs(a_t: bool, fast: u32, slow: u32, v: f32) {
    let ik = tile_at(a_t, fast, slow);
    hc[ik.x * TILE + ik.y] = v;
}
