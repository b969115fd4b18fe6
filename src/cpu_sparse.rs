//! Products with a mostly-zero input, for the CPU backend: MNIST pixels are ~81 %
//! zeros, so the first layer's forward product X·W1ᵀ and its weight gradient dYᵀ·X
//! touch a fifth of the multiply-adds when they walk only the nonzero pixels.
//!
//! These have no shader twin (the GPU runs the dense `shaders/matmul.wgsl`): they
//! are CPU-only alternatives to `cpu::matmul` for these two shapes, tested against
//! it (`tests/kernels.rs`), and chosen per batch when the input is sparse enough
//! ([`SPARSE_MAX_DENSITY`]). The sums skip exact zeros and run in another order
//! than the dense product, so results agree with it to rounding, not bit for bit.

use crate::cpu::with_avx2;

/// Above this fraction of nonzeros the dense GEMM is faster (walking a nonzero
/// reads its weights from cache without reuse, ~1.7× the cost of a dense
/// multiply-add on this kind of machine, so break-even is near 0.3; MNIST is at ~0.19,
/// Fashion-MNIST at ~0.5).
pub const SPARSE_MAX_DENSITY: f64 = 0.3;

/// Columns of C handled per register block (8 AVX2 registers of accumulators).
const W: usize = 64;

/// The nonzeros of a dense row-major matrix, row by row (compressed sparse rows).
#[derive(Debug, Clone, Default)]
pub struct Csr {
    pub rows: usize,
    pub cols: usize,
    /// row i's entries are `idx[ptr[i]..ptr[i+1]]` (column) and `val[..]`
    pub ptr: Vec<u32>,
    pub idx: Vec<u32>,
    pub val: Vec<f32>,
}

impl Csr {
    /// The nonzeros of x: (rows, cols), reusing this structure's allocations.
    pub fn fill_from_dense(&mut self, x: &[f32], rows: usize, cols: usize) {
        self.rows = rows;
        self.cols = cols;
        self.ptr.clear();
        self.idx.clear();
        self.val.clear();
        self.ptr.push(0);
        const STEP: usize = 16;
        for r in 0..rows {
            let row = &x[r * cols..(r + 1) * cols];
            for (q, chunk) in row.chunks(STEP).enumerate() {
                // skip all-zero runs with one vectorised test (most of an MNIST row)
                if chunk.iter().fold(false, |any, &v| any | (v != 0.0)) {
                    for (t, &v) in chunk.iter().enumerate() {
                        if v != 0.0 {
                            self.idx.push((q * STEP + t) as u32);
                            self.val.push(v);
                        }
                    }
                }
            }
            self.ptr.push(self.idx.len() as u32);
        }
    }

    /// The nonzeros of x: (rows, cols), built in parallel by row bands into
    /// `parts` (one per band, kept for their allocations) and joined into `self`.
    pub fn fill_from_dense_par(
        &mut self,
        parts: &mut Vec<Csr>,
        x: &[f32],
        rows: usize,
        cols: usize,
    ) {
        use rayon::prelude::*;
        let threads = rayon::current_num_threads().max(1);
        let band = rows.div_ceil(threads).max(1);
        parts.resize_with(rows.div_ceil(band), Csr::default);
        parts.par_iter_mut().enumerate().for_each(|(t, part)| {
            let r0 = t * band;
            let n = band.min(rows - r0);
            part.fill_from_dense(&x[r0 * cols..(r0 + n) * cols], n, cols);
        });
        self.rows = rows;
        self.cols = cols;
        self.ptr.clear();
        self.idx.clear();
        self.val.clear();
        self.ptr.push(0);
        for part in parts.iter() {
            let base = self.idx.len() as u32;
            self.ptr.extend(part.ptr[1..].iter().map(|&q| q + base));
            self.idx.extend_from_slice(&part.idx);
            self.val.extend_from_slice(&part.val);
        }
    }

    /// Fraction of entries that are nonzero.
    pub fn density(&self) -> f64 {
        self.idx.len() as f64 / (self.rows * self.cols).max(1) as f64
    }

    /// The same matrix transposed (so its rows are this one's columns), into `out`.
    pub fn transpose_into(&self, out: &mut Csr) {
        out.rows = self.cols;
        out.cols = self.rows;
        out.ptr.clear();
        out.ptr.resize(self.cols + 1, 0);
        for &c in &self.idx {
            out.ptr[c as usize + 1] += 1;
        }
        for c in 0..self.cols {
            out.ptr[c + 1] += out.ptr[c];
        }
        out.idx.resize(self.idx.len(), 0);
        out.val.resize(self.idx.len(), 0.0);
        // ptr[c] serves as column c's insertion cursor (no scratch allocation) and
        // ends at column c's end, the start of c + 1; shifted back below
        for r in 0..self.rows {
            for e in self.ptr[r] as usize..self.ptr[r + 1] as usize {
                let c = self.idx[e] as usize;
                let at = out.ptr[c] as usize;
                out.idx[at] = r as u32;
                out.val[at] = self.val[e];
                out.ptr[c] += 1;
            }
        }
        for c in (0..self.cols).rev() {
            out.ptr[c + 1] = out.ptr[c];
        }
        out.ptr[0] = 0;
    }

    fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.ptr[r] as usize, self.ptr[r + 1] as usize);
        (&self.idx[a..b], &self.val[a..b])
    }
}

/// Columns j0..j0+rows of wt: (k, n) = w: (n, k)ᵀ from those rows of w, given as
/// `w_band` (rows j0.. of w, row stride k); `wt` points at a (k, n) buffer of
/// `wt_len` elements. The CPU backend transposes W1 in row bands across threads
/// with it, and refreshes W1ᵀ band by band right after Adam updated W1.
///
/// # Safety
/// `wt` must be valid for `wt_len` elements, and no other thread may access
/// columns j0..j0+rows of it meanwhile (other columns may be written concurrently).
pub unsafe fn transpose_band_into(
    wt: *mut f32,
    wt_len: usize,
    w_band: &[f32],
    n: usize,
    k: usize,
    j0: usize,
    rows: usize,
) {
    assert!(j0 + rows <= n && wt_len >= k * n && w_band.len() >= rows * k);
    #[cfg(target_arch = "x86_64")]
    if fma::available() && rows.is_multiple_of(8) && k.is_multiple_of(8) {
        for jb in (0..rows).step_by(8) {
            for pb in (0..k).step_by(8) {
                // SAFETY: AVX2 present; the 8×8 source block is inside w_band
                // (asserted), the destination block inside wt's columns j0..j0+rows
                unsafe {
                    fma::transpose8(
                        w_band.as_ptr().add(jb * k + pb),
                        k,
                        wt.add(pb * n + j0 + jb),
                        n,
                    )
                };
            }
        }
        return;
    }
    for j in 0..rows {
        for p in 0..k {
            // SAFETY: p·n + j0 + j < k·n ≤ wt_len; column j0 + j is this caller's
            unsafe { *wt.add(p * n + j0 + j) = w_band[j * k + p] };
        }
    }
}

/// C rows r0..r0+rows (written to `c` from its start, row stride n) =
/// act(X[r] · W1ᵀ + bias): the dense `MatmulParams::linear` forward with X
/// sparse. `wt` is W1ᵀ: (k, n); bias: (n) or empty; ReLU when `relu`.
#[allow(clippy::too_many_arguments)]
pub fn linear_sparse(
    c: &mut [f32],
    x: &Csr,
    r0: usize,
    rows: usize,
    wt: &[f32],
    n: usize,
    bias: &[f32],
    relu: bool,
) {
    assert!(x.rows >= r0 + rows && wt.len() >= x.cols * n && c.len() >= rows * n);
    assert!(bias.is_empty() || bias.len() >= n);
    #[cfg(target_arch = "x86_64")]
    if fma::available() {
        // column blocks outermost: the block's slab of W1ᵀ (k × 64 floats, 200 KB
        // for MNIST) stays in cache while every row walks its nonzeros through it
        let mut j0 = 0;
        while j0 + W <= n {
            for i in 0..rows {
                let (idx, val) = x.row(r0 + i);
                let mut acc = [0.0f32; W];
                // SAFETY: FMA present (checked); every index is < x.cols, so each
                // row read wt[p*n + j0 .. + W] lies inside wt (asserted above)
                unsafe { fma::block(&mut acc, idx, val, wt.as_ptr(), n, j0) };
                epilogue(&mut c[i * n + j0..i * n + j0 + W], &acc, bias, j0, relu);
            }
            j0 += W;
        }
        for i in 0..rows {
            let (idx, val) = x.row(r0 + i);
            let out = &mut c[i * n..(i + 1) * n];
            if j0 < n {
                let w = n - j0;
                let mut acc = [0.0f32; W];
                block_portable(&mut acc, w, idx, val, wt, n, j0);
                epilogue(&mut out[j0..], &acc[..w], bias, j0, relu);
            }
        }
        return;
    }
    linear_sparse_portable(c, x, r0, rows, wt, n, bias, relu)
}

/// acc[t] = Σ_e val[e] · m[idx[e]·stride + off + t] for t < w ≤ 64: the portable
/// twin of `fma::block` (separate multiply and add), shared by both products.
#[inline(always)]
fn block_portable(
    acc: &mut [f32; W],
    w: usize,
    idx: &[u32],
    val: &[f32],
    m: &[f32],
    stride: usize,
    off: usize,
) {
    if w == W {
        for (&p, &v) in idx.iter().zip(val) {
            let row: &[f32; W] = m[p as usize * stride + off..][..W].try_into().unwrap();
            for t in 0..W {
                acc[t] += v * row[t];
            }
        }
    } else {
        for (&p, &v) in idx.iter().zip(val) {
            for (a, &r) in acc[..w]
                .iter_mut()
                .zip(&m[p as usize * stride + off..][..w])
            {
                *a += v * r;
            }
        }
    }
}

#[inline(always)]
fn epilogue(out: &mut [f32], acc: &[f32], bias: &[f32], j0: usize, relu: bool) {
    for (t, (o, &a)) in out.iter_mut().zip(acc).enumerate() {
        let mut s = a;
        if !bias.is_empty() {
            s += bias[j0 + t];
        }
        if relu {
            s = s.max(0.0);
        }
        *o = s;
    }
}

with_avx2! {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear_sparse_portable(c: &mut [f32], x: &Csr, r0: usize, rows: usize, wt: &[f32], n: usize, bias: &[f32], relu: bool)
        => linear_sparse_body
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn linear_sparse_body(
    c: &mut [f32],
    x: &Csr,
    r0: usize,
    rows: usize,
    wt: &[f32],
    n: usize,
    bias: &[f32],
    relu: bool,
) {
    for i in 0..rows {
        let (idx, val) = x.row(r0 + i);
        let out = &mut c[i * n..(i + 1) * n];
        let mut j0 = 0;
        while j0 < n {
            let w = W.min(n - j0);
            let mut acc = [0.0f32; W];
            block_portable(&mut acc, w, idx, val, wt, n, j0);
            for t in 0..w {
                let mut s = acc[t];
                if !bias.is_empty() {
                    s += bias[j0 + t];
                }
                if relu {
                    s = s.max(0.0);
                }
                out[j0 + t] = s;
            }
            j0 += w;
        }
    }
}

/// dW rows j0..j1 (written to `dw` from its start, row stride k) = dYᵀ·X for the
/// dense `MatmulParams::linear_backward_weight` shape with X sparse, given as
/// `xt` = Xᵀ (one row per input column p: the batch rows b where X(b, p) ≠ 0).
/// dy: (B, n_out) row-major; dW(j, p) = Σ_b dy[b, j] · X(b, p).
pub fn weight_grad_sparse(
    dw: &mut [f32],
    dy: &[f32],
    n_out: usize,
    xt: &Csr,
    j0: usize,
    j1: usize,
) {
    let k = xt.rows;
    assert!(j1 <= n_out && dy.len() >= xt.cols * n_out && dw.len() >= (j1 - j0) * k);
    #[cfg(target_arch = "x86_64")]
    if fma::available() {
        let mut js = j0;
        while js + W <= j1 {
            for p in 0..k {
                let (idx, val) = xt.row(p);
                let mut acc = [0.0f32; W];
                // SAFETY: FMA present (checked); every index b is < xt.cols, so each
                // read dy[b*n_out + js .. + W] lies inside dy (js + W ≤ n_out)
                unsafe { fma::block(&mut acc, idx, val, dy.as_ptr(), n_out, js) };
                for (t, &a) in acc.iter().enumerate() {
                    dw[(js - j0 + t) * k + p] = a;
                }
            }
            js += W;
        }
        if js < j1 {
            weight_grad_sparse_portable(&mut dw[(js - j0) * k..], dy, n_out, xt, js, j1);
        }
        return;
    }
    weight_grad_sparse_portable(dw, dy, n_out, xt, j0, j1)
}

with_avx2! {
    pub(crate) fn weight_grad_sparse_portable(dw: &mut [f32], dy: &[f32], n_out: usize, xt: &Csr, j0: usize, j1: usize)
        => weight_grad_sparse_body
}

/// The inner block of both sparse products with AVX2 FMA intrinsics: 64 sums held
/// in eight 256-bit registers across the whole list of nonzeros.
#[cfg(target_arch = "x86_64")]
mod fma {
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// The 8×8 block at `src` (row stride `ss`) transposed to `dst` (row stride `ds`).
    ///
    /// # Safety
    /// AVX2 must be present and both 8×8 blocks in bounds.
    #[target_feature(enable = "avx2")]
    pub unsafe fn transpose8(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let out = [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ];
        for (i, o) in out.iter().enumerate() {
            _mm256_storeu_ps(dst.add(i * ds), *o);
        }
    }

    /// acc[t] = Σ_e val[e] · m[idx[e]·stride + off + t], t < 64.
    ///
    /// # Safety
    /// AVX2 and FMA must be present, and m[idx[e]·stride + off .. + 64] in bounds
    /// for every e.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn block(
        acc: &mut [f32; 64],
        idx: &[u32],
        val: &[f32],
        m: *const f32,
        stride: usize,
        off: usize,
    ) {
        let mut a = [_mm256_setzero_ps(); 8];
        for (&p, &v) in idx.iter().zip(val) {
            let r = m.add(p as usize * stride + off);
            let vv = _mm256_set1_ps(v);
            for (q, aq) in a.iter_mut().enumerate() {
                *aq = _mm256_fmadd_ps(vv, _mm256_loadu_ps(r.add(8 * q)), *aq);
            }
        }
        for (q, aq) in a.iter().enumerate() {
            _mm256_storeu_ps(acc.as_mut_ptr().add(8 * q), *aq);
        }
    }
}

#[inline(always)]
fn weight_grad_sparse_body(
    dw: &mut [f32],
    dy: &[f32],
    n_out: usize,
    xt: &Csr,
    j0: usize,
    j1: usize,
) {
    let k = xt.rows;
    let mut js = j0;
    while js < j1 {
        let w = W.min(j1 - js);
        for p in 0..k {
            let (idx, val) = xt.row(p);
            let mut acc = [0.0f32; W];
            block_portable(&mut acc, w, idx, val, dy, n_out, js);
            for t in 0..w {
                dw[(js - j0 + t) * k + p] = acc[t];
            }
        }
        js += w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{self, MatmulParams};
    use rand::{Rng, SeedableRng};

    /// A fresh seed per run (printed), so every run draws new inputs.
    fn rng(name: &str) -> rand::rngs::StdRng {
        let seed: u64 = rand::rng().random();
        eprintln!("{name}: seed {seed}");
        rand::rngs::StdRng::seed_from_u64(seed)
    }

    /// (rows, cols) with ~`density` nonzeros in [0, 1] (some exact 1s, like pixels).
    fn sparse(rng: &mut impl Rng, rows: usize, cols: usize, density: f64) -> Vec<f32> {
        (0..rows * cols)
            .map(|_| {
                if rng.random_bool(density) {
                    if rng.random_bool(0.3) {
                        1.0
                    } else {
                        rng.random()
                    }
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// Sums of k products of O(1) terms in another order: within 1e-5 relative to
    /// the sum of magnitudes (f32 rounding of both sums, and FMA on one side).
    fn close(got: f32, want: f32, mag: f32) -> bool {
        (got - want).abs() <= 1e-5 * mag.max(1.0)
    }

    #[test]
    fn linear_sparse_matches_the_dense_matmul() {
        let mut r = rng("linear_sparse_matches_the_dense_matmul");
        // n = 129: two 64-wide register blocks and a 1-wide tail; rows 3..40 of 41
        for &(m, k, n, relu, bias) in &[
            (41, 53, 129, true, true),
            (9, 37, 64, false, false),
            (5, 16, 7, true, true),
        ] {
            let x = sparse(&mut r, m, k, 0.2);
            let w: Vec<f32> = (0..n * k + n).map(|_| r.random_range(-1.0..1.0)).collect();
            let mut dense = vec![f32::NAN; m * n];
            let mut p = MatmulParams::linear(m, k, n, 0, n * k, relu);
            if !bias {
                p.flags &= !cpu::matmul::MM_BIAS;
            }
            cpu::matmul(&mut dense, &x, &w, &w, &p);
            let mut csr = Csr::default();
            csr.fill_from_dense(&x, m, k);
            let mut wt = vec![f32::NAN; k * n];
            // SAFETY: wt holds k·n elements and nothing else touches it
            unsafe { transpose_band_into(wt.as_mut_ptr(), wt.len(), &w, n, k, 0, n) };
            let (r0, rows) = (3.min(m - 1), m - 3.min(m - 1));
            // poisoned output, one guard row past the end
            type F = fn(&mut [f32], &Csr, usize, usize, &[f32], usize, &[f32], bool);
            // the dispatching entry point (FMA intrinsics on x86-64 with AVX2) and the
            // portable loops
            for f in [linear_sparse as F, linear_sparse_portable as F] {
                let mut c = vec![f32::NAN; (rows + 1) * n];
                let b: &[f32] = if bias { &w[n * k..] } else { &[] };
                f(&mut c, &csr, r0, rows, &wt, n, b, relu);
                for i in 0..rows {
                    for j in 0..n {
                        let mag: f32 = (0..k)
                            .map(|q| (x[(r0 + i) * k + q] * w[j * k + q]).abs())
                            .sum();
                        let (g, want) = (c[i * n + j], dense[(r0 + i) * n + j]);
                        assert!(
                            close(g, want, mag),
                            "({m},{k},{n}) C({}, {j}) = {g}, dense {want}",
                            r0 + i
                        );
                    }
                }
                assert!(
                    c[rows * n..].iter().all(|v| v.is_nan()),
                    "wrote past its rows"
                );
            }
        }
    }

    #[test]
    fn weight_grad_sparse_matches_the_dense_matmul() {
        let mut r = rng("weight_grad_sparse_matches_the_dense_matmul");
        // dW (n_out, k) = dYᵀ (n_out, B) · X (B, k); rows j0..j1 cross a 64 block
        for &(b, k, n_out, j0, j1) in &[(37, 53, 140, 5, 134), (16, 29, 64, 0, 64), (3, 8, 9, 2, 9)]
        {
            let x = sparse(&mut r, b, k, 0.2);
            let dy: Vec<f32> = (0..b * n_out).map(|_| r.random_range(-1.0..1.0)).collect();
            let mut dense = vec![f32::NAN; n_out * k + n_out];
            let p = MatmulParams::linear_backward_weight(b, k, n_out, 0, n_out * k);
            cpu::matmul(&mut dense, &dy, &x, &x, &p);
            let (mut csr, mut xt) = (Csr::default(), Csr::default());
            csr.fill_from_dense(&x, b, k);
            csr.transpose_into(&mut xt);
            type F = fn(&mut [f32], &[f32], usize, &Csr, usize, usize);
            for f in [weight_grad_sparse as F, weight_grad_sparse_portable as F] {
                let mut dw = vec![f32::NAN; (j1 - j0 + 1) * k];
                f(&mut dw, &dy, n_out, &xt, j0, j1);
                for j in j0..j1 {
                    for q in 0..k {
                        let mag: f32 = (0..b)
                            .map(|i| (dy[i * n_out + j] * x[i * k + q]).abs())
                            .sum();
                        let (g, want) = (dw[(j - j0) * k + q], dense[j * k + q]);
                        assert!(
                            close(g, want, mag),
                            "({b},{k},{n_out}) dW({j}, {q}) = {g}, dense {want}"
                        );
                    }
                }
                assert!(
                    dw[(j1 - j0) * k..].iter().all(|v| v.is_nan()),
                    "wrote past its rows"
                );
            }
        }
    }

    #[test]
    fn band_transpose_writes_its_columns_only() {
        // (n, k) = (24, 40): AVX2 blocks for the 16-row band, scalar for the 5-row one
        let (n, k) = (24, 40);
        let w: Vec<f32> = (0..n * k).map(|i| i as f32).collect();
        for (j0, rows) in [(8, 16), (3, 5)] {
            let mut wt = vec![f32::NAN; k * n];
            // SAFETY: wt has k·n elements and nothing else touches it
            unsafe { transpose_band_into(wt.as_mut_ptr(), wt.len(), &w[j0 * k..], n, k, j0, rows) };
            for p in 0..k {
                for j in 0..n {
                    let v = wt[p * n + j];
                    if (j0..j0 + rows).contains(&j) {
                        assert_eq!(v, w[j * k + p], "({p}, {j})");
                    } else {
                        assert!(v.is_nan(), "wrote outside its columns at ({p}, {j})");
                    }
                }
            }
        }
    }

    #[test]
    fn csr_round_trip_and_transpose() {
        let (r, c) = (5, 7);
        let x: Vec<f32> = (0..r * c)
            .map(|i| if i % 3 == 0 { i as f32 } else { 0.0 })
            .collect();
        let mut s = Csr::default();
        s.fill_from_dense(&x, r, c);
        assert_eq!(s.idx.len(), x.iter().filter(|v| **v != 0.0).count());
        let (mut par, mut parts) = (Csr::default(), Vec::new());
        par.fill_from_dense_par(&mut parts, &x, r, c);
        assert_eq!((&par.ptr, &par.idx, &par.val), (&s.ptr, &s.idx, &s.val));
        let mut t = Csr::default();
        s.transpose_into(&mut t);
        assert_eq!((t.rows, t.cols), (c, r));
        for p in 0..c {
            let (idx, val) = t.row(p);
            let want: Vec<(u32, f32)> = (0..r)
                .filter(|&b| x[b * c + p] != 0.0)
                .map(|b| (b as u32, x[b * c + p]))
                .collect();
            let got: Vec<(u32, f32)> = idx.iter().copied().zip(val.iter().copied()).collect();
            assert_eq!(got, want, "column {p}");
        }
    }
}
