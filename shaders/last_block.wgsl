// Appended to matmul.wgsl for matmul_bce, matmul_latent and matmul_pair_latent:
// the counters of the "last block" pattern (examples/last_block.rs), and
// last_split, with which a split product's tiles are finished by their last K
// share. A workgroup that has stored its part (and passed a storageBarrier after
// its stores) adds one to a counter; the one that brings it to the total does the
// follow-on work, reading the others' parts (atomics:
// matmul_partial_atomic.wgsl), and resets the counter to 0 for the next dispatch.
// Nobody waits for anybody, so any number of workgroups may run.

// (each kernel's counters: matmul_bce's tiles; matmul_latent's and
// matmul_pair_latent's tiles, then bands)
@group(0) @binding(26) var<storage, read_write> counts: array<atomic<u32>>;
// (four words, not one, though only [0] is used: every workgroup variable of a
// module with the tensor-core walk is a multiple of 16 bytes, so none can leave
// the walk's f16 tiles off the 16-byte alignment cooperative-matrix loads need,
// whatever order the driver lays them out in. With a lone u32 here, on an NVIDIA
// H200 (2026-11-27), the walk in these modules stored zeros for some tiles (h1 in
// tests/kernels.rs) and training with the BCE epilogue went NaN in its first
// step; with four words every GPU test passed there and those runs trained)
var<workgroup> count_ws: array<u32, 4>;

// Thread t of the workgroup (all call it): adds one to counter `at` from thread 0;
// whether it reached `total` (then resets it), the same for the whole workgroup,
// which then sees the parts stored before the others' counts.
fn count_in(at: u32, total: u32, t: u32) -> bool {
    if (t == 0u) {
        let last = atomicAdd(&counts[at], 1u) + 1u == total;
        if (last) {
            atomicStore(&counts[at], 0u);
        }
        count_ws[0] = select(0u, 1u, last);
    }
    let last = workgroupUniformLoad(&count_ws[0]) == 1u;
    if (last) {
        // the others' stores, which came before their counts
        storageBarrier();
    }
    return last;
}

// Output tiles of problem w per row.
fn col_tiles(w: Walk) -> u32 {
    return (w.p.n + TILE - 1u) / TILE;
}

// The counter of w's row band (its 32 rows), after the tiles' counters: for two
// levels (matmul_latent, matmul_pair_latent), where a tile's last share counts the
// tile in its band and the band's last tile finishes the band.
fn band_count(w: Walk) -> u32 {
    return col_tiles(w) * ((w.p.m + TILE - 1u) / TILE) + w.row0 / TILE;
}

// Whether this workgroup (K share wg.z of tile (wg.x, wg.y)) is the last of its
// tile's w.p.splits shares to have stored its partial sums: then the others' are
// visible to its atomic loads (the partial sums are atomics in these modules:
// matmul_partial_atomic.wgsl). Counter wg.y · column tiles + wg.x. Called by the
// whole workgroup after its stores.
fn last_split(w: Walk, wg: vec3<u32>, lid: vec3<u32>) -> bool {
    // this workgroup's stores before its count (device scope in naga)
    storageBarrier();
    return count_in(wg.y * col_tiles(w) + wg.x, w.p.splits, lid.y * 16u + lid.x);
}
