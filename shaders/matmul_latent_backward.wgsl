// Appended to matmul.wgsl (with matmul_operands.wgsl, matmul_partial_atomic.wgsl,
// last_block.wgsl, latent_tail.wgsl and matmul_loss.wgsl) for matmul_pair_latent,
// the `matmul_pair_loss` entry point of this module: fc4's gradient pair (as
// matmul_pair: problem 0 its input gradient dh3 = (dlogits W4) ⊙ [h3 > 0], split
// over K; problem 1 its weight gradient) with the latent backward in the last
// workgroups of problem 0, so that a training step runs no latent_backward
// dispatch (`VAE_OOD_GPU_LATENT_PAIR=1`). The backward
// counterpart of matmul_latent.wgsl, with the same two levels of last blocks:
//
//   1. the last of a dh3 tile's K shares to finish (last_split) adds the shares up
//      and stores its 32 × 32 tile of dh3 (the product's epilogue, as matmul_reduce
//      would), then multiplies it into its column tile's share of dz,
//      parts[ct, i, o] = Σ_{j in the tile's columns} dh3(i, j) W3(j, o), and
//      counts the tile in its row band;
//   2. the last of a band's column tiles (its 32 images) adds the shares in order
//      ct = 0, 1, … (dz, (B, L)), runs the reparameterisation backward as
//      latent.wgsl does (dhead, (B, 2L), from the KL's gradient, ε and the head),
//      and the head's input gradient dh1 = (dhead W2) ⊙ [h1 > 0] (each output
//      summed over the 2L head outputs in order, as cpu::matmul).
//
// With u.tail.x > 0 (the BCE in fc4's epilogue, `VAE_OOD_GPU_BCE_EPILOGUE` or
// `_SPLIT`) workgroups after the pair's tiles finish the per-image losses as
// matmul_pair_loss's do (matmul_loss.wgsl; none without). The shares of dz cross
// workgroups inside the dispatch, so they are atomics (f32 bits), as are the
// split-K partial sums. Its CPU twin is the op sequence it replaces: the pair's two
// cpu::matmul calls, cpu::matmul (fc3 dX), cpu::reparam_backward, cpu::matmul
// (head dX; fc3's weight gradient, which the latent group moves after these, runs
// in the next dispatch); dz sums in another order (by column tile), so results
// agree to rounding (tests/kernels.rs). One draw per image (training steps); L ≤ 32.
// u.p[0], u.p[1]: the pair; u.p[2]: the head's input gradient (A: dhead, dense;
// mask from h1); u.gather: fc3's input gradient, (b_off, b_sp, b_sj, L) of W3 (A:
// dh3 as problem 0 stores it, C: dz dense).

@group(0) @binding(28) var<storage, read> head: array<f32>;
@group(0) @binding(29) var<storage, read> eps: array<f32>;
@group(0) @binding(30) var<storage, read> h1: array<f32>;
@group(0) @binding(31) var<storage, read_write> dz: array<f32>;
@group(0) @binding(32) var<storage, read_write> dhead: array<f32>;
@group(0) @binding(33) var<storage, read_write> dh1: array<f32>;
// (its counters, last_block.wgsl's: the tiles' of problem 0, then the bands':
// band_count; the column tiles' shares of dz, (column tiles, B, L), in
// latent_tail.wgsl's `parts`, and its workgroup memory `lat`: dh3's tile, then dz
// at ZS and dhead at HD)

// A tile of dh3 is done (stored): its share of dz, then the band's tail if this is
// the band's last tile. Nothing for the weight gradient's tiles (problem 1).
// Called by every thread of the workgroup.
fn after_tile(w: Walk, lid: vec3<u32>, s: array<Stored, 6>, r: AfterReads) {
    if (w.q != 0u) {
        return;
    }
    let t = lid.y * 16u + lid.x;
    tile_to_lat(lid, s);
    let qz = u.gather;
    tile_share(w, t, qz.w, qz.x, qz.y, qz.z);
    if (count_in(band_count(w), col_tiles(w), t)) {
        band_tail(w, t);
    }
}

// The latent backward for the band's images (rows row0 … row0 + 31 of dh3).
fn band_tail(w: Walk, t: u32) {
    let qx = u.p[2];
    let l = u.gather.w;
    let two_l = 2u * l;
    let row0 = w.row0;
    let rows = min(TILE, w.p.m - row0);
    // dz: the column tiles' shares in order (32 rows × 32 at most: k < 4)
    let n_out = rows * l;
    let acc = band_sums(w, t, l);
    for (var k = 0u; k < 4u; k++) {
        let out = t + 256u * k;
        if (out < n_out) {
            let r = out / l;
            let o = out % l;
            dz[(row0 + r) * l + o] = acc[k];
            lat[ZS + r * 32u + o] = acc[k];
        }
    }
    workgroupBarrier();
    // the head's gradient (one draw: row i), as latent.wgsl: the KL's gradient, then
    // dz's through z = μ + ε σ
    for (var x = t; x < rows * l; x += 256u) {
        let r = x / l;
        let j = x % l;
        let i = row0 + r;
        let mu = head[i * two_l + j];
        let lv = head[i * two_l + l + j];
        let half_sd = 0.5 * exp(0.5 * lv);
        let g = lat[ZS + r * 32u + j];
        let gmu = mu + g;
        let glv = 0.5 * (exp(lv) - 1.0) + g * eps[i * l + j] * half_sd;
        dhead[i * two_l + j] = gmu;
        dhead[i * two_l + l + j] = glv;
        lat[HD + r * 64u + j] = gmu;
        lat[HD + r * 64u + l + j] = glv;
    }
    workgroupBarrier();
    // dh1: output j for every row of the band, its weights read once
    for (var j = t; j < qx.n; j += 256u) {
        let acc = band_column(HD, 64u, two_l, qx.b_off, qx.b_sp, qx.b_sj, j);
        for (var r = 0u; r < rows; r++) {
            var v = acc[r];
            let i = row0 + r;
            if ((qx.flags & 4u) != 0u && h1[qx.e_off + i * qx.e_si + j] <= 0.0) {
                v = 0.0;
            }
            dh1[qx.c_off + i * qx.c_si + j] = v;
        }
    }
}
