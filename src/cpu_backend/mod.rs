//! The CPU backend: the reference kernels of `cpu/`, run on disjoint pieces in
//! parallel with rayon (one band of rows per thread), with all buffers allocated once.
//!
//! It runs the same op lists as the GPU, with two fusions that change where the
//! work happens but not one bit of the result (each piece is the same reference
//! kernel on a band of rows, `tests/train_step.rs` checks fused against unfused):
//! - decoder output + BCE: each thread computes its band of logits and at once its
//!   BCE and gradient, while the band is in its cache;
//! - weight gradient + Adam: each thread computes its band of a layer's dW and at
//!   once the Adam update of those parameters (when the step's Adam op comes later
//!   in the same list and nothing in between reads those parameters); the Adam op
//!   then updates only what no fused product covered.
//!
//! And one substitution that changes rounding, not math: when a batch's pixels are
//! mostly zero, the first layer's forward product and weight gradient run on the
//! sparse kernels of `cpu_sparse` (the forward reads W1ᵀ, which the fused Adam of
//! W1 keeps current). Whole op lists run inside rayon's pool, so no step allocates
//! (`tests/alloc.rs`). Files: `fuse.rs` decides what may fuse, `par.rs` runs the
//! kernels in bands.

use crate::backend::Backend;
use crate::cpu::{self, AdamParams, MatmulParams};
use crate::cpu_sparse::{self, Csr, SPARSE_MAX_DENSITY};
use crate::plan::{Buf, Op, Sizes};
use anyhow::{ensure, Result};
use std::ops::Range;

mod fuse;
mod par;

use fuse::{fusable_adam, grad_ranges, overlaps};
use par::*;
use rayon::prelude::*;

pub struct CpuBackend {
    sizes: Sizes,
    data: Vec<u32>,
    /// whole images in the store: the bound on every image number in `idx`
    images: usize,
    idx: Vec<u32>,
    bufs: Vec<Vec<f32>>,
    /// parameter ranges already updated by a fused dW + Adam since the last Adam op
    adam_done: Vec<Range<usize>>,
    /// run every op on its own, no fusion (for tests and the benchmark's comparison)
    unfused: bool,
    /// how many times each fusion ran: (decoder output + BCE, dW + Adam)
    fused: (usize, usize),
    /// never use the sparse first-layer products (`cpu_sparse`)
    dense_only: bool,
    /// the nonzeros of X's first `x_rows` rows (0: not known since X was last written),
    /// and of Xᵀ when `xt_ok`
    x_csr: Csr,
    x_parts: Vec<Csr>,
    x_rows: usize,
    xt_csr: Csr,
    xt_ok: bool,
    /// W1ᵀ for the sparse forward, and which weights it is the transpose of
    /// (offset in Params, rows n, columns k) while it is current: the fused Adam of
    /// those weights refreshes it band by band, any other write to them clears this
    wt: Vec<f32>,
    wt_of: Option<(usize, usize, usize)>,
    /// how many products ran sparse
    sparse_runs: usize,
}

impl CpuBackend {
    pub fn new(store: &[u8], idx_len: usize, sizes: Sizes) -> Self {
        let bufs = Buf::ALL
            .iter()
            .map(|b| vec![0.0f32; b.len(&sizes)])
            .collect();
        CpuBackend {
            sizes,
            data: cpu::gather::pack_bytes(store),
            images: store.len() / sizes.dims.d.max(1),
            idx: vec![0; idx_len],
            bufs,
            adam_done: Vec::new(),
            fused: (0, 0),
            dense_only: crate::knobs::flag(crate::knobs::CPU_DENSE),
            x_csr: Csr::default(),
            x_parts: Vec::new(),
            x_rows: 0,
            xt_csr: Csr::default(),
            xt_ok: false,
            wt: Vec::new(),
            wt_of: None,
            sparse_runs: 0,
            unfused: crate::knobs::flag(crate::knobs::CPU_UNFUSED),
        }
    }

    /// Turn the two fusions off (`true`) or on (the default, unless the environment
    /// sets `VAE_OOD_CPU_UNFUSED`).
    pub fn set_unfused(&mut self, unfused: bool) {
        self.unfused = unfused;
    }

    /// How many times each fusion has run: (decoder output + BCE, dW + Adam).
    pub fn fusions(&self) -> (usize, usize) {
        self.fused
    }

    /// Never (`true`) or when the input is sparse enough (the default, unless the
    /// environment sets `VAE_OOD_CPU_DENSE`) use the sparse first-layer products.
    pub fn set_dense_only(&mut self, dense_only: bool) {
        self.dense_only = dense_only;
    }

    /// How many products have run on the sparse kernels.
    pub fn sparse_runs(&self) -> usize {
        self.sparse_runs
    }

    /// Whether X's first `rows` rows are sparse enough for `cpu_sparse` (building
    /// their nonzero lists if X changed since).
    fn x_is_sparse(&mut self, rows: usize) -> bool {
        if self.dense_only || rows == 0 {
            return false;
        }
        if self.x_rows != rows {
            let d = self.sizes.dims.d;
            let x = &self.bufs[Buf::X as usize];
            self.x_csr
                .fill_from_dense_par(&mut self.x_parts, x, rows, d);
            self.x_rows = rows;
            self.xt_ok = false;
        }
        self.x_csr.density() <= SPARSE_MAX_DENSITY
    }

    /// Parameters in `r` changed (other than through a refresh of W1ᵀ).
    fn params_changed(&mut self, r: Range<usize>) {
        if let Some((off, n, k)) = self.wt_of {
            if overlaps(&r, &(off..off + n * k)) {
                self.wt_of = None;
            }
        }
    }

    fn x_changed(&mut self) {
        self.x_rows = 0;
        self.xt_ok = false;
    }

    /// The sparse kind of a product, if it has one and X is sparse now.
    fn sparse_kind(&mut self, op: &Op) -> Option<SparseKind> {
        let Op::Matmul { a, b, e, c, p } = *op else {
            return None;
        };
        let d = self.sizes.dims.d as u32;
        let bias_ok = p.flags & cpu::matmul::MM_BIAS == 0 || e == Buf::Params;
        let forward = a == Buf::X
            && b == Buf::Params
            && bias_ok
            && p.flags & !(cpu::matmul::MM_BIAS | cpu::matmul::MM_RELU) == 0
            && (p.a_off, p.a_si, p.a_sp, p.k) == (0, d, 1, d)
            && (p.b_sp, p.b_sj) == (1, d)
            && p.c_si == p.n
            && !matches!(c, Buf::X | Buf::Params);
        if forward && self.x_is_sparse(p.m as usize) {
            return Some(SparseKind::Forward);
        }
        let weight = b == Buf::X
            && c == Buf::Grads
            && p.flags == cpu::matmul::MM_BIASGRAD
            && (p.a_off, p.a_si, p.a_sp) == (0, 1, p.m)
            && (p.b_off, p.b_sp, p.b_sj, p.n) == (0, d, 1, d)
            && p.c_si == p.n
            && !matches!(
                a,
                Buf::X | Buf::Grads | Buf::Params | Buf::AdamM | Buf::AdamV
            );
        if weight && self.x_is_sparse(p.k as usize) {
            if !self.xt_ok {
                self.x_csr.transpose_into(&mut self.xt_csr);
                self.xt_ok = true;
            }
            return Some(SparseKind::WeightGrad);
        }
        None
    }

    /// A product on the sparse kernels (`kind` from [`Self::sparse_kind`]), with the
    /// Adam step of its weights right after when `adam` is given.
    fn exec_sparse(&mut self, op: &Op, kind: SparseKind, adam: Option<&AdamParams>) {
        let Op::Matmul { a, c, p, .. } = *op else {
            unreachable!("sparse_kind accepts only matmuls")
        };
        self.sparse_runs += 1;
        let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
        match kind {
            SparseKind::Forward => {
                let mut wt = std::mem::take(&mut self.wt);
                let mut cv = self.take(c);
                let params = &self.bufs[Buf::Params as usize];
                let key = (p.b_off as usize, n, k);
                if self.wt_of != Some(key) {
                    // W1ᵀ: (k, n) from W1: (n, k), one band of W1's rows (W1ᵀ's
                    // columns) per thread, 8 rows at a time where it can
                    wt.resize(k * n, 0.0);
                    let wp = SyncPtr(wt.as_mut_ptr(), wt.len());
                    let band = band_len(n, 8);
                    let w1 = &params[p.b_off as usize..p.b_off as usize + n * k];
                    w1.par_chunks(band * k).enumerate().for_each(|(t, w_band)| {
                        let (ptr, len) = wp.get();
                        // SAFETY: wt is borrowed by nothing else here, and each band
                        // writes only its own columns
                        unsafe {
                            cpu_sparse::transpose_band_into(
                                ptr,
                                len,
                                w_band,
                                n,
                                k,
                                t * band,
                                w_band.len() / k,
                            )
                        };
                    });
                    self.wt_of = Some(key);
                }
                let bias: &[f32] = if p.flags & cpu::matmul::MM_BIAS != 0 {
                    &params[p.e_off as usize..p.e_off as usize + n]
                } else {
                    &[]
                };
                let relu = p.flags & cpu::matmul::MM_RELU != 0;
                let (x, wt_ref) = (&self.x_csr, &wt);
                bands_mut(&mut cv, p.c_off as usize, n, n, m, band_len(m, 1)).for_each(
                    |(r0, rows, cs)| {
                        cpu_sparse::linear_sparse(cs, x, r0, rows, wt_ref, n, bias, relu);
                    },
                );
                self.put(c, cv);
                self.wt = wt;
            }
            SparseKind::WeightGrad => {
                // when W1ᵀ is current for these weights, refresh each band of it
                // right after Adam updated that band (still in cache)
                let refresh = adam.is_some() && self.wt_of == Some((p.c_off as usize, m, n));
                let wt = SyncPtr(self.wt.as_mut_ptr(), self.wt.len());
                self.with_adam_state(|st, me| {
                    let (dy, xt) = (me.get(a), &me.xt_csr);
                    let rows_of = |g: &mut [f32], i0: usize, rows: usize| {
                        cpu_sparse::weight_grad_sparse(g, dy, m, xt, i0, i0 + rows);
                    };
                    let after = |i0: usize, rows: usize, w_band: &[f32]| {
                        // SAFETY: nothing else touches wt during par_grad_adam, and
                        // each band writes only its own columns i0..i0+rows
                        let (ptr, len) = wt.get();
                        unsafe {
                            cpu_sparse::transpose_band_into(ptr, len, w_band, m, n, i0, rows)
                        };
                    };
                    let after: Option<&AfterAdam<'_>> = if refresh { Some(&after) } else { None };
                    par_grad_adam(st, dy, &p, adam, &rows_of, after);
                });
                if adam.is_some() {
                    self.adam_done.extend(grad_ranges(&p));
                    if !refresh {
                        self.params_changed(p.c_off as usize..p.c_off as usize + m * n);
                    }
                }
            }
        }
    }

    /// Run `f` on the flat buffers Adam updates, taken out of `self` meanwhile (so
    /// that `f` may read every other buffer through the `&Self` it is given).
    fn with_adam_state<R>(&mut self, f: impl FnOnce(&mut AdamState, &Self) -> R) -> R {
        let mut params = self.take(Buf::Params);
        let mut grads = self.take(Buf::Grads);
        let (mut m, mut v) = (self.take(Buf::AdamM), self.take(Buf::AdamV));
        let mut st = AdamState {
            params: &mut params,
            grads: &mut grads,
            m: &mut m,
            v: &mut v,
        };
        let r = f(&mut st, self);
        self.put(Buf::Params, params);
        self.put(Buf::Grads, grads);
        self.put(Buf::AdamM, m);
        self.put(Buf::AdamV, v);
        r
    }

    fn take(&mut self, b: Buf) -> Vec<f32> {
        std::mem::take(&mut self.bufs[b as usize])
    }
    fn put(&mut self, b: Buf, v: Vec<f32>) {
        self.bufs[b as usize] = v;
    }
    fn get(&self, b: Buf) -> &[f32] {
        &self.bufs[b as usize]
    }

    fn exec(&mut self, op: &Op) {
        match *op {
            Op::Gather(p) => {
                let mut x = self.take(Buf::X);
                par_gather(&mut x, &self.data, &self.idx, &p);
                self.put(Buf::X, x);
                self.x_changed();
            }
            Op::Matmul { a, b, e, c, p } => {
                if c == Buf::Params {
                    self.params_changed(0..usize::MAX);
                }
                let mut cv = self.take(c);
                par_matmul(&mut cv, self.get(a), self.get(b), self.get(e), &p);
                self.put(c, cv);
            }
            Op::ReparamForward(p) => {
                let (mut z, mut eps) = (self.take(Buf::Z), self.take(Buf::Eps));
                let (mut kl, mut lpq) = (self.take(Buf::Kl), self.take(Buf::LogPq));
                par_reparam_forward(&mut z, &mut eps, &mut kl, &mut lpq, self.get(Buf::Head), &p);
                self.put(Buf::LogPq, lpq);
                self.put(Buf::Z, z);
                self.put(Buf::Eps, eps);
                self.put(Buf::Kl, kl);
            }
            Op::ReparamBackward(p) => {
                let mut dh = self.take(Buf::Dhead);
                par_reparam_backward(
                    &mut dh,
                    self.get(Buf::Dz),
                    self.get(Buf::Eps),
                    self.get(Buf::Head),
                    &p,
                );
                self.put(Buf::Dhead, dh);
            }
            Op::Bce(p) => {
                let (mut bce, mut logits) = (self.take(Buf::Bce), self.take(Buf::Logits));
                par_bce(&mut bce, &mut logits, self.get(Buf::X), &p);
                self.put(Buf::Bce, bce);
                self.put(Buf::Logits, logits);
            }
            Op::Loss(p) => {
                let (mut s, mut bl) = (self.take(Buf::SampleLoss), self.take(Buf::BatchLoss));
                let (bce, kl, lpq) = (self.get(Buf::Bce), self.get(Buf::Kl), self.get(Buf::LogPq));
                cpu::loss_reduce(&mut s, &mut bl, bce, kl, lpq, &p);
                self.put(Buf::SampleLoss, s);
                self.put(Buf::BatchLoss, bl);
            }
            Op::Adam(p) => {
                // the parts no fused dW + Adam has updated this step
                let mut done = std::mem::take(&mut self.adam_done);
                done.sort_unstable_by_key(|r| r.start);
                for r in adam_gaps(&done, p.n as usize) {
                    self.params_changed(r);
                }
                self.with_adam_state(|st, _| {
                    for r in adam_gaps(&done, p.n as usize) {
                        let q = AdamParams {
                            n: r.len() as u32,
                            ..p
                        };
                        par_adam(
                            &mut st.params[r.start..],
                            &st.grads[r.start..],
                            &mut st.m[r.start..],
                            &mut st.v[r.start..],
                            &q,
                        );
                    }
                });
                done.clear(); // keep the allocation for the next step
                self.adam_done = done;
            }
        }
    }

    /// Run `ops` in order, fusing where they allow, and write into `ns` the
    /// nanoseconds each op of `timed` took (a fused pair's time goes to its first op).
    /// The whole list runs on one of rayon's workers: parallel loops started from a
    /// worker split without allocating, those started from outside the pool
    /// allocate to inject their jobs.
    fn run_list(&mut self, ops: &[Op], timed: Range<usize>, ns: &mut [f64]) {
        rayon::scope(|_| {
            let mut i = 0;
            while i < ops.len() {
                let t = std::time::Instant::now();
                let used = self.exec_at(ops, i);
                if timed.contains(&i) {
                    ns[i - timed.start] = t.elapsed().as_secs_f64() * 1e9;
                }
                i += used;
            }
        });
    }

    /// Run `ops[i]`, fused with what follows where it can be; returns how many ops
    /// that consumed (1, or 2 for decoder output + BCE).
    fn exec_at(&mut self, ops: &[Op], i: usize) -> usize {
        if !self.unfused {
            if let (
                Op::Matmul {
                    a,
                    b: Buf::Params,
                    e: Buf::Params,
                    c: Buf::Logits,
                    p,
                },
                Some(Op::Bce(bp)),
            ) = (ops[i], ops.get(i + 1))
            {
                let dense = p.c_off == 0 && p.c_si == p.n && p.n == bp.d && p.m == bp.rows;
                let band = linear_bce_band(&p, bp.draws as usize);
                let plain = p.flags == cpu::matmul::MM_BIAS && a != Buf::Logits && a != Buf::Bce;
                if let (true, true, Some(band)) = (dense, plain, band) {
                    self.exec_linear_bce(&p, a, bp, band);
                    self.fused.0 += 1;
                    return 2;
                }
            }
        }
        let adam = if self.unfused {
            None
        } else {
            fusable_adam(ops, i)
        };
        if let Some(kind) = self.sparse_kind(&ops[i]) {
            self.exec_sparse(&ops[i], kind, adam.as_ref());
            self.fused.1 += adam.is_some() as usize;
            return 1;
        }
        if let (
            Op::Matmul {
                a,
                b,
                c: Buf::Grads,
                p,
                ..
            },
            Some(adam),
        ) = (ops[i], adam)
        {
            let unaliased = [a, b]
                .iter()
                .all(|x| !matches!(x, Buf::Params | Buf::Grads | Buf::AdamM | Buf::AdamV));
            if unaliased {
                self.exec_grad_adam(a, b, &p, &adam);
                self.fused.1 += 1;
                return 1;
            }
        }
        self.exec(&ops[i]);
        1
    }

    /// fc4 forward and the BCE that follows it, band by band.
    fn exec_linear_bce(&mut self, mm: &MatmulParams, a: Buf, bce: &cpu::BceParams, band: usize) {
        let (mut logits, mut out) = (self.take(Buf::Logits), self.take(Buf::Bce));
        par_linear_bce(
            &mut logits,
            &mut out,
            self.get(a),
            self.get(Buf::Params),
            self.get(Buf::X),
            mm,
            bce,
            band,
        );
        self.put(Buf::Logits, logits);
        self.put(Buf::Bce, out);
    }

    /// A weight gradient and the Adam step of those weights and their bias.
    fn exec_grad_adam(&mut self, a: Buf, b: Buf, mm: &MatmulParams, adam: &AdamParams) {
        let q = MatmulParams {
            flags: mm.flags & !cpu::matmul::MM_BIASGRAD,
            ..*mm
        };
        self.with_adam_state(|st, me| {
            let (av, bv) = (me.get(a), me.get(b));
            let rows_of = |g: &mut [f32], i0: usize, rows: usize| {
                cpu::matmul(g, av, bv, av, &band_params(&q, i0, rows));
            };
            par_grad_adam(st, av, mm, Some(adam), &rows_of, None);
        });
        self.adam_done.extend(grad_ranges(mm));
        for r in grad_ranges(mm) {
            self.params_changed(r);
        }
    }
}

/// The non-empty ranges of 0..n that the sorted ranges `done` leave uncovered.
fn adam_gaps(done: &[Range<usize>], n: usize) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut start = 0;
    done.iter()
        .cloned()
        .chain(std::iter::once(n..n))
        .filter_map(move |r| {
            let gap = start..r.start;
            start = start.max(r.end);
            (!gap.is_empty()).then_some(gap)
        })
}

/// Which sparse kernel of `cpu_sparse` a product runs on.
#[derive(Debug, Clone, Copy)]
enum SparseKind {
    /// X·Wᵀ (+ bias, ReLU) with X sparse
    Forward,
    /// dYᵀ·X (+ bias sums) with X sparse
    WeightGrad,
}

impl Backend for CpuBackend {
    fn describe(&self) -> String {
        format!(
            "cpu ({} threads{}{})",
            rayon::current_num_threads(),
            if self.unfused { ", unfused" } else { "" },
            if self.dense_only {
                ", dense first layer"
            } else {
                ""
            }
        )
    }
    fn kind(&self) -> &'static str {
        "cpu"
    }
    fn sizes(&self) -> &Sizes {
        &self.sizes
    }
    fn write(&mut self, buf: Buf, offset: usize, data: &[f32]) -> Result<()> {
        let b = &mut self.bufs[buf as usize];
        ensure!(
            offset + data.len() <= b.len(),
            "write past the end of {buf:?}"
        );
        b[offset..offset + data.len()].copy_from_slice(data);
        if buf == Buf::X {
            self.x_changed();
        }
        if buf == Buf::Params {
            self.params_changed(offset..offset + data.len());
        }
        Ok(())
    }
    fn write_idx(&mut self, offset: usize, idx: &[u32]) -> Result<()> {
        ensure!(
            offset + idx.len() <= self.idx.len(),
            "write past the end of the index buffer"
        );
        crate::plan::check_idx(idx, self.images)?;
        self.idx[offset..offset + idx.len()].copy_from_slice(idx);
        Ok(())
    }
    fn run(&mut self, ops: &[Op]) -> Result<()> {
        // the same checks as the GPU backend: one error, not a panic inside a kernel
        crate::plan::check_ops(ops, &self.sizes, self.idx.len())?;
        self.run_list(ops, 0..0, &mut []);
        Ok(())
    }
    /// The CPU's "timestamps" are the host clock read between ops, in place inside
    /// the real op list, fusions included: a fused pair's time is charged to its
    /// first op (the second reads 0), and each weight gradient's time includes the
    /// Adam update fused into it.
    fn has_timestamps(&self) -> bool {
        true
    }
    fn run_timed(&mut self, ops: &[Op], timed: Range<usize>) -> Result<Option<Vec<f64>>> {
        crate::plan::check_ops(ops, &self.sizes, self.idx.len())?;
        let mut ns = vec![0.0; timed.len()];
        self.run_list(ops, timed, &mut ns);
        Ok(Some(ns))
    }
    fn read(&mut self, buf: Buf, range: Range<usize>) -> Result<Vec<f32>> {
        let b = &self.bufs[buf as usize];
        ensure!(range.end <= b.len(), "read past the end of {buf:?}");
        Ok(b[range].to_vec())
    }
}
