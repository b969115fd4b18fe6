// Appended to matmul.wgsl (with matmul_operands.wgsl, matmul_partial_atomic.wgsl
// and normal.wgsl) for matmul_latent, the `matmul` entry point of this module, and
// (with matmul_gather_operands.wgsl instead) for matmul_gather_latent, its
// `matmul_gather`: fc1's forward product (h1 = ReLU(x W1ᵀ + b1), split over K; x
// read from the image store by the second) with the latent forward in its last
// workgroups, so that a training step runs no latent_forward dispatch
// (`VAE_OOD_GPU_LATENT_FC1=1`). Two levels of "last blocks" (examples/last_block.rs),
// nobody waiting for anybody:
//
//   1. the last of a tile's K shares to finish (last_split) adds the shares up and
//      stores its 32 × 32 tile of h1 (the product's epilogue, as matmul_reduce
//      would), then multiplies it into its column tile's share of the head,
//      parts[ct, i, o] = Σ_{j in the tile's columns} h1(i, j) W2(o, j), and
//      counts the tile in its row band;
//   2. the last of a band's column tiles (its 32 images) adds the shares in order
//      ct = 0, 1, … and the head's bias (head, (B, 2L)), draws ε and computes z, the
//      KL and log p − log q as latent.wgsl does, and fc3's product h3 = ReLU(z W3ᵀ
//      + b3) (each output summed over the L latents in order, as cpu::matmul).
//
// The shares of the head cross workgroups inside the dispatch, so they are atomics
// (f32 bits), as are the split-K partial sums. Its CPU twin is the op sequence it
// replaces: cpu::matmul (fc1), cpu::matmul (head), cpu::reparam_forward,
// cpu::matmul (fc3); the head sums in another order (by column tile), so results
// agree to rounding (tests/kernels.rs). One draw per image (training steps);
// 2L ≤ 64. u.p[0]: fc1, u.p[1]: the head product, u.p[2]: fc3's; u.tail: the
// ReparamParams' first half (images, l, draws, seed); u.gather: the gather's first
// index entry (matmul_gather_latent; 0 otherwise), then the second half's stream,
// row_base, eps_given.

@group(0) @binding(20) var<storage, read_write> head: array<f32>;
@group(0) @binding(21) var<storage, read_write> eps: array<f32>;
@group(0) @binding(22) var<storage, read_write> z: array<f32>;
@group(0) @binding(23) var<storage, read_write> kl: array<f32>;
@group(0) @binding(24) var<storage, read_write> logpq: array<f32>;
@group(0) @binding(25) var<storage, read_write> h3: array<f32>;
// (its counters, last_block.wgsl's: the tiles' (row tiles × column tiles of fc1,
// row-major), then the bands' (row tiles): band_count; the column tiles' shares of
// the head, (column tiles, B, 2L), in latent_tail.wgsl's `parts`, and its
// workgroup memory `lat`: h1's tile, then z at ZS and the head at HD; ε is read
// back from `eps`)

// The tile is done (h1 stored): its share of the head, then the band's tail if
// this is the band's last tile. Called by every thread of the workgroup.
fn after_tile(w: Walk, lid: vec3<u32>, s: array<Stored, 6>, r: AfterReads) {
    let t = lid.y * 16u + lid.x;
    tile_to_lat(lid, s);
    let qh = u.p[1];
    tile_share(w, t, qh.n, qh.b_off, qh.b_sp, qh.b_sj);
    if (count_in(band_count(w), col_tiles(w), t)) {
        band_tail(w, t);
    }
}

// The latent forward for the band's images (rows row0 … row0 + 31 of fc1).
fn band_tail(w: Walk, t: u32) {
    let qh = u.p[1];
    let qd = u.p[2];
    let two_l = qh.n;
    let l = u.tail.y;
    let row0 = w.row0;
    let rows = min(TILE, w.p.m - row0);
    // the head: the column tiles' shares in order, then the bias
    let n_out = rows * two_l;
    let acc = band_sums(w, t, two_l);
    for (var k = 0u; k < 8u; k++) {
        let out = t + 256u * k;
        if (out < n_out) {
            let r = out / two_l;
            let o = out % two_l;
            var v = acc[k];
            if ((qh.flags & 1u) != 0u) {
                v += e[qh.e_off + o];
            }
            if ((qh.flags & 2u) != 0u) {
                v = max(v, 0.0);
            }
            head[qh.c_off + (row0 + r) * qh.c_si + o] = v;
            lat[HD + r * 64u + o] = v;
        }
    }
    workgroupBarrier();
    // ε and z (one draw: row b, draw 0), as latent.wgsl
    for (var x = t; x < rows * l; x += 256u) {
        let r = x / l;
        let j = x % l;
        let b = row0 + r;
        let mu = lat[HD + r * 64u + j];
        let lv = lat[HD + r * 64u + l + j];
        var ev: f32;
        if (u.gather.w != 0u) {
            ev = eps[b * l + j];
        } else {
            ev = normal(u.tail.w, u.gather.y, u.gather.z + b, j);
        }
        let zv = mu + ev * exp(0.5 * lv);
        eps[b * l + j] = ev;
        z[b * l + j] = zv;
        lat[ZS + r * 32u + j] = zv;
    }
    // (z in workgroup memory, ε in `eps`, both this workgroup's)
    workgroupBarrier();
    storageBarrier();
    // the KL and log p − log q, one image per thread, in order j = 0, 1, … (as
    // reparam.wgsl's kl_term and pq_term)
    if (t < rows) {
        var acc = 0.0;
        var pq = 0.0;
        for (var j = 0u; j < l; j++) {
            let mu = lat[HD + t * 64u + j];
            let lv = lat[HD + t * 64u + l + j];
            acc += 1.0 + lv - mu * mu - exp(lv);
            let ev = eps[(row0 + t) * l + j];
            let zv = lat[ZS + t * 32u + j];
            pq += 0.5 * (ev * ev - zv * zv + lv);
        }
        kl[row0 + t] = -0.5 * acc;
        logpq[row0 + t] = pq;
    }
    // fc3: output j for every row of the band, its weights read once
    for (var j = t; j < qd.n; j += 256u) {
        var bias = 0.0;
        if ((qd.flags & 1u) != 0u) {
            bias = e[qd.e_off + j];
        }
        let acc = band_column(ZS, 32u, l, qd.b_off, qd.b_sp, qd.b_sj, j);
        for (var r = 0u; r < rows; r++) {
            var v = acc[r];
            v += bias;
            if ((qd.flags & 2u) != 0u) {
                v = max(v, 0.0);
            }
            h3[qd.c_off + (row0 + r) * qd.c_si + j] = v;
        }
    }
}
