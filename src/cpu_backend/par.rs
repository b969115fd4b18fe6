//! The reference kernels run in parallel: one band of rows per rayon thread, each
//! band the same kernel on a shifted view (so the same per-element arithmetic),
//! with the pieces of every buffer handed out without allocating.

use crate::cpu::{self, AdamParams, MatmulParams};
use rayon::prelude::*;

/// Rows per band when `m` rows are split into one band per thread (a multiple of
/// `multiple`, so that bands hold whole images' draws).
pub(super) fn band_len(m: usize, multiple: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let multiple = multiple.max(1);
    (m.div_ceil(threads).div_ceil(multiple) * multiple).max(1)
}

/// The rows 0..m of a matrix in `buf` (row r at `off + r*stride`, `last` elements
/// of the last row used) as one mutable piece per band of `band` rows, each
/// starting at its band's first row: (first row, rows, piece). No allocation.
pub(super) fn bands_mut(
    buf: &mut [f32],
    off: usize,
    stride: usize,
    last: usize,
    m: usize,
    band: usize,
) -> impl IndexedParallelIterator<Item = (usize, usize, &mut [f32])> {
    let end = if m == 0 {
        off
    } else {
        off + (m - 1) * stride + last
    };
    buf[off..end]
        .par_chunks_mut(band * stride.max(1))
        .enumerate()
        .map(move |(t, piece)| (t * band, band.min(m - t * band), piece))
}

/// Rows of C split into one band per thread; each band is `cpu::matmul` on a
/// shifted view (the same kernel, the same per-element arithmetic).
pub(super) fn par_matmul(c: &mut [f32], a: &[f32], b: &[f32], e: &[f32], p: &MatmulParams) {
    let m = p.m as usize;
    if p.flags & cpu::matmul::MM_BIASGRAD != 0 {
        // the bias sums land outside C: do them once, then the product in bands
        cpu::matmul::bias_sums(c, a, p);
        let q = MatmulParams {
            flags: p.flags & !cpu::matmul::MM_BIASGRAD,
            ..*p
        };
        return par_matmul(c, a, b, e, &q);
    }
    let band = matmul_band(p);
    if band >= m {
        return cpu::matmul(c, a, b, e, p);
    }
    let (c_si, n) = (p.c_si as usize, p.n as usize);
    bands_mut(c, p.c_off as usize, c_si, n, m, band).for_each(|(i0, rows, cs)| {
        cpu::matmul(cs, a, b, e, &band_params(p, i0, rows));
    });
}

/// Rows of C per band for the product `p`: one band per thread, or all `m` rows
/// in one band when the product is too small to share out. Every banded product
/// (`par_matmul`, the fused `par_grad_adam`) must band by this: the GEMM crate
/// picks its kernels and blocking by shape, so a band of 3 rows and the same
/// rows inside a product of 37 need not give the same bits, and a fused and an
/// unfused run agree bit for bit only if they cut C the same way.
pub(super) fn matmul_band(p: &MatmulParams) -> usize {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    let threads = rayon::current_num_threads().max(1);
    if threads == 1 || m < 2 * threads || m * n * k < 1 << 18 {
        m.max(1)
    } else {
        band_len(m, 1)
    }
}

/// A buffer's base and length, to hand disjoint parts of it to threads.
#[derive(Clone, Copy)]
pub(super) struct SyncPtr(pub *mut f32, pub usize);
// SAFETY: only used where each thread writes its own disjoint elements (see uses)
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    pub fn get(self) -> (*mut f32, usize) {
        (self.0, self.1)
    }
}

/// `p` restricted to rows i0..i0+rows of C, with C starting at the band's first row.
pub(super) fn band_params(p: &MatmulParams, i0: usize, rows: usize) -> MatmulParams {
    let mut q = *p;
    q.m = rows as u32;
    q.a_off += (i0 * p.a_si as usize) as u32;
    q.c_off = 0;
    if p.flags & cpu::matmul::MM_MASK != 0 {
        q.e_off += (i0 * p.e_si as usize) as u32;
    }
    q
}

/// The bands of [`par_linear_bce`] for the decoder output product `mm` with `draws`
/// rows per image: `par_matmul`'s bands (so the logits have the unfused run's bits),
/// if they hold whole images' draws; else `None`, and the two ops run apart.
pub(super) fn linear_bce_band(mm: &MatmulParams, draws: usize) -> Option<usize> {
    let band = matmul_band(mm);
    (band >= mm.m as usize || band.is_multiple_of(draws.max(1))).then_some(band)
}

/// logits = h Wᵀ + b (the decoder output layer, `mm`) and then `cpu::bce_logits` on
/// the same rows, one band of whole images per thread (`band` from
/// [`linear_bce_band`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn par_linear_bce(
    logits: &mut [f32],
    bce: &mut [f32],
    h: &[f32],
    params: &[f32],
    x: &[f32],
    mm: &MatmulParams,
    bp: &cpu::BceParams,
    band: usize,
) {
    let (k, d, m) = (bp.draws as usize, bp.d as usize, mm.m as usize);
    bands_mut(logits, 0, d, d, m, band)
        .zip(bands_mut(bce, 0, 1, 1, m, band))
        .for_each(|((r0, rows, lc), (_, _, bc))| {
            cpu::matmul(lc, h, params, params, &band_params(mm, r0, rows));
            let q = cpu::BceParams {
                rows: rows as u32,
                ..*bp
            };
            cpu::bce_logits(bc, lc, &x[r0 / k * d..], &q);
        });
}

/// Called with (first row, rows, the updated weights of those rows) after the Adam
/// step of each band of a weight matrix.
pub(super) type AfterAdam<'a> = dyn Fn(usize, usize, &[f32]) + Sync + 'a;

/// The flat buffers Adam updates.
pub(super) struct AdamState<'a> {
    pub params: &'a mut [f32],
    pub grads: &'a mut [f32],
    pub m: &'a mut [f32],
    pub v: &'a mut [f32],
}

/// dW and db of a dense `linear_backward_weight` product `mm` into the gradient
/// buffer (`rows_of(band, i0, rows)` computes rows i0..i0+rows of dW into `band`;
/// `a` is dY for the bias sums), then, when `adam` is given, the Adam step of those
/// weights band by band (while each band is in its thread's cache) and of the bias.
pub(super) fn par_grad_adam(
    st: &mut AdamState,
    a: &[f32],
    mm: &MatmulParams,
    adam: Option<&AdamParams>,
    rows_of: &(dyn Fn(&mut [f32], usize, usize) + Sync),
    after_adam: Option<&AfterAdam<'_>>,
) {
    let (m, n) = (mm.m as usize, mm.n as usize);
    let (c_off, e_off) = (mm.c_off as usize, mm.e_off as usize);
    cpu::matmul::bias_sums(st.grads, a, mm);
    let band = matmul_band(mm);
    bands_mut(st.grads, c_off, n, n, m, band)
        .zip(bands_mut(st.params, c_off, n, n, m, band))
        .zip(bands_mut(st.m, c_off, n, n, m, band))
        .zip(bands_mut(st.v, c_off, n, n, m, band))
        .for_each(|((((i0, rows, g), (_, _, pr)), (_, _, mo)), (_, _, vo))| {
            rows_of(g, i0, rows);
            if let Some(adam) = adam {
                let ap = AdamParams {
                    n: (rows * n) as u32,
                    ..*adam
                };
                cpu::adam(pr, g, mo, vo, &ap);
                if let Some(f) = after_adam {
                    f(i0, rows, pr);
                }
            }
        });
    if let Some(adam) = adam {
        let ap = AdamParams {
            n: m as u32,
            ..*adam
        };
        let r = e_off..e_off + m;
        cpu::adam(
            &mut st.params[r.clone()],
            &st.grads[r.clone()],
            &mut st.m[r.clone()],
            &mut st.v[r],
            &ap,
        );
    }
}

/// Images split across threads; each piece is `cpu::gather_pixels`.
pub(super) fn par_gather(x: &mut [f32], data: &[u32], idx: &[u32], p: &cpu::GatherParams) {
    let (d, m) = (p.d as usize, p.rows as usize);
    bands_mut(x, 0, d, d, m, band_len(m, 1)).for_each(|(r0, rows, xs)| {
        let q = cpu::GatherParams {
            rows: rows as u32,
            idx_off: p.idx_off + r0 as u32,
            ..*p
        };
        cpu::gather_pixels(xs, data, idx, &q);
    });
}

/// Images split across threads; each piece is `cpu::reparam_forward` on a sub-batch
/// (its RNG key `row_base` shifted by the piece's first image, so ε is unchanged).
pub(super) fn par_reparam_forward(
    z: &mut [f32],
    eps: &mut [f32],
    kl: &mut [f32],
    logpq: &mut [f32],
    head: &[f32],
    p: &cpu::ReparamParams,
) {
    let (l, k, b) = (p.l as usize, p.draws as usize, p.images as usize);
    let band = band_len(b, 1);
    bands_mut(z, 0, k * l, k * l, b, band)
        .zip(bands_mut(eps, 0, k * l, k * l, b, band))
        .zip(bands_mut(kl, 0, 1, 1, b, band))
        .zip(bands_mut(logpq, 0, k, k, b, band))
        .for_each(|((((b0, nb, z), (_, _, e)), (_, _, kl)), (_, _, lpq))| {
            let q = cpu::ReparamParams {
                images: nb as u32,
                row_base: p.row_base + b0 as u32,
                ..*p
            };
            cpu::reparam_forward(z, e, kl, lpq, &head[b0 * 2 * l..], &q);
        });
}

/// Images split across threads; each piece is `cpu::reparam_backward` on a
/// sub-batch (its rows of dz and ε, its images' head).
pub(super) fn par_reparam_backward(
    dhead: &mut [f32],
    dz: &[f32],
    eps: &[f32],
    head: &[f32],
    p: &cpu::ReparamParams,
) {
    let (l, k, b) = (p.l as usize, p.draws as usize, p.images as usize);
    bands_mut(dhead, 0, 2 * l, 2 * l, b, band_len(b, 1)).for_each(|(b0, nb, dh)| {
        let q = cpu::ReparamParams {
            images: nb as u32,
            ..*p
        };
        let r0 = b0 * k * l;
        cpu::reparam_backward(dh, &dz[r0..], &eps[r0..], &head[b0 * 2 * l..], &q);
    });
}

/// Rows of the BCE split across threads; each piece is `cpu::bce_logits`.
pub(super) fn par_bce(bce: &mut [f32], logits: &mut [f32], x: &[f32], p: &cpu::BceParams) {
    let (rows, d, k) = (p.rows as usize, p.d as usize, p.draws as usize);
    // pieces hold whole images' draws so that row r / K indexes the piece's x
    let chunk = k * 16;
    bce[..rows]
        .par_chunks_mut(chunk)
        .zip(logits[..rows * d].par_chunks_mut(chunk * d))
        .enumerate()
        .for_each(|(i, (bc, lc))| {
            let q = cpu::BceParams {
                rows: bc.len() as u32,
                ..*p
            };
            let img0 = i * chunk / k;
            cpu::bce_logits(bc, lc, &x[img0 * d..], &q);
        });
}

/// Adam over chunks of the flat buffer; each chunk is `cpu::adam`.
pub(super) fn par_adam(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    p: &cpu::AdamParams,
) {
    const CHUNK: usize = 1 << 14;
    let n = p.n as usize;
    params[..n]
        .par_chunks_mut(CHUNK)
        .zip(grads[..n].par_chunks(CHUNK))
        .zip(m[..n].par_chunks_mut(CHUNK))
        .zip(v[..n].par_chunks_mut(CHUNK))
        .for_each(|(((pp, g), mm), vv)| {
            let q = cpu::AdamParams {
                n: pp.len() as u32,
                ..*p
            };
            cpu::adam(pp, g, mm, vv, &q);
        });
}
