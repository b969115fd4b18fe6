// Appended to matmul.wgsl (after last_block.wgsl) for matmul_latent,
// matmul_gather_latent and matmul_pair_latent: what the two levels of their latent
// tails share (matmul_latent.wgsl forward, matmul_latent_backward.wgsl backward).
// Level 1, in the last K share of each output tile of the product: the tile's 32 ×
// 32 stored values into workgroup memory (tile_to_lat), multiplied into its column
// tile's share of the band's small product (tile_share: the head forward, dz
// backward), stored to `parts` and counted in the row band (after_tile, in each
// file). Level 2, in the band's last tile: the shares added up (band_sums).

// the column tiles' shares of the small product, (column tiles, B, width), as f32
// bits: they cross workgroups inside the dispatch
@group(0) @binding(27) var<storage, read_write> parts: array<atomic<u32>>;

// [0, 1024): the tile's values (32 × 32), then the band's z or dz (32 × 32);
// [1024, 3072): the band's head or dhead rows (32 × 64). 12 KB in all
// (LATENT_TAIL_BYTES), so that the kernels fit beside the tensor-core walk's K
// steps of 32 in lavapipe's 32 KB, where they are tested
var<workgroup> lat: array<f32, 3072>;
const ZS: u32 = 0u;
const HD: u32 = 1024u;

// (nothing is read for the tile's elements before its after_tile)
struct AfterReads { none: u32 }

fn after_reads(w: Walk, lid: vec3<u32>, first_tile: bool) -> AfterReads {
    return AfterReads();
}

// The tile's stored values (0 outside C) into lat[0, 1024), row-major; ends with a
// barrier. Called by every thread of the workgroup.
fn tile_to_lat(lid: vec3<u32>, s: array<Stored, 6>) {
    let ii = lid.y * 2u;
    let jj = lid.x * 2u;
    lat[ii * 32u + jj] = select(0.0, s[0].v, s[0].at != NONE);
    lat[ii * 32u + jj + 1u] = select(0.0, s[1].v, s[1].at != NONE);
    lat[(ii + 1u) * 32u + jj] = select(0.0, s[2].v, s[2].at != NONE);
    lat[(ii + 1u) * 32u + jj + 1u] = select(0.0, s[3].v, s[3].at != NONE);
    workgroupBarrier();
}

// The tile's share of the small product with `width` outputs per row, from the
// tile's values in lat (its columns j are the small product's K) and B(j, o) =
// b[b_off + j·b_sp + o·b_sj]: parts[ct, i, o] = Σ_{j in the tile's columns}
// tile(i, j) B(j, o), summed in order j. Thread t: row t / 8 of the tile, outputs
// t % 8, + 8, …; then the stores before the count (storageBarrier).
fn tile_share(w: Walk, t: u32, width: u32, b_off: u32, b_sp: u32, b_sj: u32) {
    let ct = w.col0 / TILE;
    let rr = t / 8u;
    for (var o = t % 8u; o < width; o += 8u) {
        var v = 0.0;
        for (var k = 0u; k < TILE; k++) {
            let j = w.col0 + k;
            if (j < w.p.n) {
                v = fma(lat[rr * 32u + k], b[b_off + j * b_sp + o * b_sj], v);
            }
        }
        if (w.row0 + rr < w.p.m) {
            atomicStore(&parts[(ct * w.p.m + w.row0 + rr) * width + o], bitcast<u32>(v));
        }
    }
    storageBarrier();
}

// The band's small product (rows row0 …, `width` outputs each): thread t's outputs
// x = t + 256·k (k < 8: 32 rows × 64 at most; 0 past the band's rows · width), each
// the column tiles' shares added in order ct = 0, 1, …, four at a time: all 32
// loads of a trip issued before any add waits on one (a load's round trip is what
// this costs).
fn band_sums(w: Walk, t: u32, width: u32) -> array<f32, 8> {
    let n_out = min(TILE, w.p.m - w.row0) * width;
    let cts = col_tiles(w);
    var acc = array<f32, 8>();
    for (var c = 0u; c < cts; c += 4u) {
        var x = array<f32, 32>();
        for (var k = 0u; k < 8u; k++) {
            let out = t + 256u * k;
            let base = (w.row0 + out / width) * width + out % width;
            for (var q = 0u; q < 4u; q++) {
                if (out < n_out && c + q < cts) {
                    x[k * 4u + q] = bitcast<f32>(atomicLoad(&parts[(c + q) * w.p.m * width + base]));
                }
            }
        }
        for (var k = 0u; k < 8u; k++) {
            for (var q = 0u; q < 4u; q++) {
                if (c + q < cts) {
                    acc[k] += x[k * 4u + q];
                }
            }
        }
    }
    return acc;
}

// Column j of the band's product with K = k ≤ 64 (fc3's forward, the head's input
// gradient backward), for all 32 rows: acc[r] = Σ_p lat[base + r·stride + p] B(p, j),
// B(p, j) = b[b_off + p·b_sp + j·b_sj], each summed over p in order (fma) as
// cpu::matmul orders it. The k weights are loaded first (their round trips
// together), then each is multiplied into the 32 rows' sums side by side: no chain
// of k dependent fmas per row. Rows past the band's hold garbage (not stored).
fn band_column(base: u32, stride: u32, k: u32, b_off: u32, b_sp: u32, b_sj: u32, j: u32) -> array<f32, 32> {
    var wj: array<f32, 64>;
    for (var p = 0u; p < k; p++) {
        wj[p] = b[b_off + p * b_sp + j * b_sj];
    }
    var acc = array<f32, 32>();
    for (var p = 0u; p < k; p++) {
        let wv = wj[p];
        for (var r = 0u; r < 32u; r++) {
            acc[r] = fma(lat[base + r * stride + p], wv, acc[r]);
        }
    }
    return acc;
}
