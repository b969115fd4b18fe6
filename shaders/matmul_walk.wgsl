// The K walk of matmul.wgsl's tiles on the FMA units (appended to matmul.wgsl for
// every matmul kernel unless the tensor-core walk, matmul_walk_coop.wgsl, is used):
// both operands' 32×32 tiles in workgroup memory as f32 pairs, each thread
// multiplying its 2×2 outputs. Its CPU twin is cpu::matmul (src/cpu/matmul.rs).
// The tiles are stored as pairs so that each step of the multiply reads a thread's
// two A values and two B values with one load each (two loads per four FMAs, not
// four: half the time on lavapipe, examples/matmul_micro.rs), and the multiply runs
// 8 steps of kk per trip (wgpu puts a loop-bounding counter in every loop, which can
// keep a driver from unrolling it).

// Tiles in workgroup memory as pairs, both indexed [kk][pair], rows of ROW pairs (34
// floats: the padding spreads the strided stores of a transposed load over the banks):
// ta[kk·ROW + i/2] holds A(i, kk) for rows i, i+1 of a pair; tb[kk·ROW + j/2] holds
// B(kk, j) for columns j, j+1. The multiply then reads a thread's two rows and two
// columns with one load each.
// TILES (a pipeline constant the host always sets: 2 with `VAE_OOD_GPU_DOUBLE_TILES=1`,
// else 1): with 2, two of each at s = 0 or 544 in turn, as in matmul_walk_coop.wgsl —
// a K step stashes into one while no thread can still be reading it (all passed
// the barrier after their multiply of the step before it), so one barrier per K
// step instead of two, for 17.4 KB of workgroup memory instead of 8.7. The same
// values into the same sums in the same order: the same bits.
const ROW: u32 = 17u;
const TLEN: u32 = 544u; // 32 × ROW
override TILES: u32 = 1u;
override T_LEN: u32 = TLEN * TILES;
var<workgroup> ta: array<vec2<f32>, T_LEN>;
var<workgroup> tb: array<vec2<f32>, T_LEN>;

// The K walk of a tile: A and B tiles through workgroup memory, 32 of K at a time,
// into the thread's four sums acc and, with `sums`, the row sums rs (flag 8).
fn k_walk(sums: bool, w: Walk, lid: vec3<u32>, acc: ptr<function, vec4<f32>>,
          rs: ptr<function, vec2<f32>>) {
    // Thread t moves tile elements (fast, slow) = (t % 32, t / 32 + 8r), r = 0..3, of
    // each operand (ra, rb): all eight reads from global memory are issued before
    // the first store to workgroup memory, so their latencies overlap (a loop over r
    // would leave that to the driver's unroller, which wgpu's loop-bounding counter
    // can stop).
    let t = lid.y * 16u + lid.x;
    let fast = t % TILE;
    let slow = t / TILE;
    var ra = fetch_a4(w, w.k_begin, fast, slow);
    var rb = fetch_b4(w, w.k_begin, fast, slow);
    var s = 0u; // the tiles this K step uses (TILES = 2: 0 or TLEN in turn)
    for (var k0 = w.k_begin; k0 < w.k_end; k0 += TILE) {
        stash4(true, w.a_t, s, fast, slow, ra);
        stash4(false, w.b_t, s, fast, slow, rb);
        workgroupBarrier();
        if (PREFETCH) {
            // the next K step's reads in flight during this step's multiply
            ra = fetch_a4(w, k0 + TILE, fast, slow);
            rb = fetch_b4(w, k0 + TILE, fast, slow);
        }
        // unrolled by hand, 8 steps of kk per trip: the loop-bounding counter wgpu adds to
        // every loop (and any driver that will not unroll past it) costs once per 8
        for (var kk = 0u; kk < TILE; kk += 8u) {
            let ia = s + kk * ROW + lid.y; // rows 2·lid.y, +1
            let ib = s + kk * ROW + lid.x; // columns 2·lid.x, +1
            if (sums) {
                mac(acc, rs, ta[ia], tb[ib]);
                mac(acc, rs, ta[ia + ROW], tb[ib + ROW]);
                mac(acc, rs, ta[ia + 2u * ROW], tb[ib + 2u * ROW]);
                mac(acc, rs, ta[ia + 3u * ROW], tb[ib + 3u * ROW]);
                mac(acc, rs, ta[ia + 4u * ROW], tb[ib + 4u * ROW]);
                mac(acc, rs, ta[ia + 5u * ROW], tb[ib + 5u * ROW]);
                mac(acc, rs, ta[ia + 6u * ROW], tb[ib + 6u * ROW]);
                mac(acc, rs, ta[ia + 7u * ROW], tb[ib + 7u * ROW]);
            } else {
                mul_add(acc, ta[ia], tb[ib]);
                mul_add(acc, ta[ia + ROW], tb[ib + ROW]);
                mul_add(acc, ta[ia + 2u * ROW], tb[ib + 2u * ROW]);
                mul_add(acc, ta[ia + 3u * ROW], tb[ib + 3u * ROW]);
                mul_add(acc, ta[ia + 4u * ROW], tb[ib + 4u * ROW]);
                mul_add(acc, ta[ia + 5u * ROW], tb[ib + 5u * ROW]);
                mul_add(acc, ta[ia + 6u * ROW], tb[ib + 6u * ROW]);
                mul_add(acc, ta[ia + 7u * ROW], tb[ib + 7u * ROW]);
            }
        }
        if (TILES == 1u) {
            workgroupBarrier();
        } else {
            s = TLEN - s;
        }
        if (!PREFETCH) {
            ra = fetch_a4(w, k0 + TILE, fast, slow);
            rb = fetch_b4(w, k0 + TILE, fast, slow);
        }
    }
}

// Thread t's four elements (fast, slow + 8r), r = 0..3, of an operand's tile into
// ta (is_a) or tb, the tile at s (as matmul_walk_coop.wgsl's stash_h4).
fn stash4(is_a: bool, transposed: bool, s: u32, fast: u32, slow: u32, v: vec4<f32>) {
    stash(is_a, transposed, s, fast, slow, v.x);
    stash(is_a, transposed, s, fast, slow + 8u, v.y);
    stash(is_a, transposed, s, fast, slow + 16u, v.z);
    stash(is_a, transposed, s, fast, slow + 24u, v.w);
}

fn stash(is_a: bool, transposed: bool, s: u32, fast: u32, slow: u32, v: f32) {
    // (row, column) of the element in its tile: (ii, kk) for A, (kk, jj) for B
    let rc = tile_at(transposed, fast, slow);
    if (is_a) {
        ta[s + rc.y * ROW + rc.x / 2u][rc.x % 2u] = v;
    } else {
        tb[s + rc.x * ROW + rc.y / 2u][rc.y % 2u] = v;
    }
}

// One step of the multiply: a thread's two A values av (rows i0, i0 + 1) times its
// two B values bv (columns j0, j0 + 1) into the four sums, each one fma as before.
fn mac(acc: ptr<function, vec4<f32>>, rs: ptr<function, vec2<f32>>, av: vec2<f32>, bv: vec2<f32>) {
    *acc = fma(av.xxyy, bv.xyxy, *acc);
    *rs += av;
}

// mac without the row sums
fn mul_add(acc: ptr<function, vec4<f32>>, av: vec2<f32>, bv: vec2<f32>) {
    *acc = fma(av.xxyy, bv.xyxy, *acc);
}
