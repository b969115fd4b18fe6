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
/// costs about as much as a dense multiply-add at peak; MNIST is at ~0.19,
/// Fashion-MNIST at ~0.5).
pub const SPARSE_MAX_DENSITY: f64 = 0.35;

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
        for r in 0..rows {
            for (c, &v) in x[r * cols..(r + 1) * cols].iter().enumerate() {
                if v != 0.0 {
                    self.idx.push(c as u32);
                    self.val.push(v);
                }
            }
            self.ptr.push(self.idx.len() as u32);
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
        let mut next: Vec<u32> = out.ptr[..self.cols].to_vec();
        out.idx.resize(self.idx.len(), 0);
        out.val.resize(self.idx.len(), 0.0);
        for r in 0..self.rows {
            for e in self.ptr[r] as usize..self.ptr[r + 1] as usize {
                let c = self.idx[e] as usize;
                let at = next[c] as usize;
                out.idx[at] = r as u32;
                out.val[at] = self.val[e];
                next[c] += 1;
            }
        }
    }

    fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.ptr[r] as usize, self.ptr[r + 1] as usize);
        (&self.idx[a..b], &self.val[a..b])
    }
}

with_avx2! {
    /// Rows p0..p1 of wt: (k, n) = w: (n, k)ᵀ, written to `wt` from its start (row
    /// stride n); w at `w[w_off..]`. In 16×16 tiles so reads and writes stay in cache.
    pub fn transpose_rows(wt: &mut [f32], w: &[f32], w_off: usize, n: usize, k: usize, p0: usize, p1: usize)
        => transpose_rows_body
}

#[inline(always)]
fn transpose_rows_body(wt: &mut [f32], w: &[f32], w_off: usize, n: usize, k: usize, p0: usize, p1: usize) {
    const T: usize = 16;
    for pb in (p0..p1).step_by(T) {
        let pe = (pb + T).min(p1);
        for jb in (0..n).step_by(T) {
            let je = (jb + T).min(n);
            for j in jb..je {
                let src = &w[w_off + j * k + pb..w_off + j * k + pe];
                for (p, &v) in (pb..pe).zip(src) {
                    wt[(p - p0) * n + j] = v;
                }
            }
        }
    }
}

with_avx2! {
    /// C rows r0..r0+rows (written to `c` from its start, row stride n) =
    /// act(X[r] · W1ᵀ + bias): the dense `MatmulParams::linear` forward with X
    /// sparse. `wt` is W1ᵀ: (k, n); bias: (n) or empty; ReLU when `relu`.
    pub fn linear_sparse(c: &mut [f32], x: &Csr, r0: usize, rows: usize, wt: &[f32], n: usize, bias: &[f32], relu: bool)
        => linear_sparse_body
}

#[inline(always)]
fn linear_sparse_body(c: &mut [f32], x: &Csr, r0: usize, rows: usize, wt: &[f32], n: usize, bias: &[f32], relu: bool) {
    for i in 0..rows {
        let (idx, val) = x.row(r0 + i);
        let out = &mut c[i * n..(i + 1) * n];
        let mut j0 = 0;
        while j0 < n {
            let w = W.min(n - j0);
            let mut acc = [0.0f32; W];
            if w == W {
                for (&p, &v) in idx.iter().zip(val) {
                    let row: &[f32; W] = wt[p as usize * n + j0..][..W].try_into().unwrap();
                    for t in 0..W {
                        acc[t] += v * row[t];
                    }
                }
            } else {
                for (&p, &v) in idx.iter().zip(val) {
                    let row = &wt[p as usize * n + j0..][..w];
                    for t in 0..w {
                        acc[t] += v * row[t];
                    }
                }
            }
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

with_avx2! {
    /// dW rows j0..j1 (written to `dw` from its start, row stride k) = dYᵀ·X for the
    /// dense `MatmulParams::linear_backward_weight` shape with X sparse, given as
    /// `xt` = Xᵀ (one row per input column p: the batch rows b where X(b, p) ≠ 0).
    /// dy: (B, n_out) row-major; dW(j, p) = Σ_b dy[b, j] · X(b, p).
    pub fn weight_grad_sparse(dw: &mut [f32], dy: &[f32], n_out: usize, xt: &Csr, j0: usize, j1: usize)
        => weight_grad_sparse_body
}

#[inline(always)]
fn weight_grad_sparse_body(dw: &mut [f32], dy: &[f32], n_out: usize, xt: &Csr, j0: usize, j1: usize) {
    let k = xt.rows;
    let mut js = j0;
    while js < j1 {
        let w = W.min(j1 - js);
        for p in 0..k {
            let (idx, val) = xt.row(p);
            let mut acc = [0.0f32; W];
            if w == W {
                for (&b, &v) in idx.iter().zip(val) {
                    let row: &[f32; W] = dy[b as usize * n_out + js..][..W].try_into().unwrap();
                    for t in 0..W {
                        acc[t] += v * row[t];
                    }
                }
            } else {
                for (&b, &v) in idx.iter().zip(val) {
                    let row = &dy[b as usize * n_out + js..][..w];
                    for t in 0..w {
                        acc[t] += v * row[t];
                    }
                }
            }
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

    #[test]
    fn csr_round_trip_and_transpose() {
        let (r, c) = (5, 7);
        let x: Vec<f32> = (0..r * c)
            .map(|i| if i % 3 == 0 { i as f32 } else { 0.0 })
            .collect();
        let mut s = Csr::default();
        s.fill_from_dense(&x, r, c);
        assert_eq!(s.idx.len(), x.iter().filter(|v| **v != 0.0).count());
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
