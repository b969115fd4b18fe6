//! The CPU backend: the reference kernels of `cpu/`, run on disjoint pieces in
//! parallel with rayon (batch rows for matmul and BCE, chunks for Adam), with all
//! buffers allocated once.

use crate::backend::Backend;
use crate::cpu::{self, MatmulParams};
use crate::plan::{Buf, Op, Sizes};
use anyhow::{ensure, Result};
use rayon::prelude::*;
use std::ops::Range;

pub struct CpuBackend {
    sizes: Sizes,
    data: Vec<u32>,
    idx: Vec<u32>,
    bufs: Vec<Vec<f32>>,
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
            idx: vec![0; idx_len],
            bufs,
        }
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
                cpu::gather_pixels(&mut x, &self.data, &self.idx, &p);
                self.put(Buf::X, x);
            }
            Op::Matmul { a, b, e, c, p } => {
                let mut cv = self.take(c);
                par_matmul(&mut cv, self.get(a), self.get(b), self.get(e), &p);
                self.put(c, cv);
            }
            Op::ReparamForward(p) => {
                let (mut z, mut eps) = (self.take(Buf::Z), self.take(Buf::Eps));
                let (mut kl, mut lpq) = (self.take(Buf::Kl), self.take(Buf::LogPq));
                cpu::reparam_forward(&mut z, &mut eps, &mut kl, &mut lpq, self.get(Buf::Head), &p);
                self.put(Buf::LogPq, lpq);
                self.put(Buf::Z, z);
                self.put(Buf::Eps, eps);
                self.put(Buf::Kl, kl);
            }
            Op::ReparamBackward(p) => {
                let mut dh = self.take(Buf::Dhead);
                cpu::reparam_backward(
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
                let (mut params, mut m, mut v) = (
                    self.take(Buf::Params),
                    self.take(Buf::AdamM),
                    self.take(Buf::AdamV),
                );
                par_adam(&mut params, self.get(Buf::Grads), &mut m, &mut v, &p);
                self.put(Buf::Params, params);
                self.put(Buf::AdamM, m);
                self.put(Buf::AdamV, v);
            }
        }
    }
}

/// Rows of C split into one band per thread; each band is `cpu::matmul` on a
/// shifted view (the same kernel, the same per-element arithmetic).
fn par_matmul(c: &mut [f32], a: &[f32], b: &[f32], e: &[f32], p: &MatmulParams) {
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
    let threads = rayon::current_num_threads().max(1);
    let flops = m * p.n as usize * p.k as usize;
    if threads == 1 || m < 2 * threads || flops < 1 << 18 {
        return cpu::matmul(c, a, b, e, p);
    }
    let band = m.div_ceil(threads);
    let c_si = p.c_si as usize;
    let c_off = p.c_off as usize;
    // C rows of band t live in c[c_off + t*band*c_si ..]; hand each band its own slice.
    let region = &mut c[c_off..c_off + (m - 1) * c_si + p.n as usize];
    let mut bands: Vec<(usize, &mut [f32])> = Vec::new();
    let mut rest = region;
    let mut i0 = 0;
    while i0 < m {
        let rows = band.min(m - i0);
        let take = if i0 + rows == m {
            rest.len()
        } else {
            rows * c_si
        };
        let (head, tail) = rest.split_at_mut(take);
        bands.push((i0, head));
        rest = tail;
        i0 += rows;
    }
    bands.into_par_iter().for_each(|(i0, cs)| {
        let rows = band.min(m - i0);
        let mut q = *p;
        q.m = rows as u32;
        q.a_off += (i0 * p.a_si as usize) as u32;
        q.c_off = 0;
        if p.flags & cpu::matmul::MM_MASK != 0 {
            q.e_off += (i0 * p.e_si as usize) as u32;
        }
        cpu::matmul(cs, a, b, e, &q);
    });
}

/// Rows of the BCE split across threads; each piece is `cpu::bce_logits`.
fn par_bce(bce: &mut [f32], logits: &mut [f32], x: &[f32], p: &cpu::BceParams) {
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
fn par_adam(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], p: &cpu::AdamParams) {
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

impl Backend for CpuBackend {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
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
        Ok(())
    }
    fn write_idx(&mut self, offset: usize, idx: &[u32]) -> Result<()> {
        ensure!(
            offset + idx.len() <= self.idx.len(),
            "write past the end of the index buffer"
        );
        self.idx[offset..offset + idx.len()].copy_from_slice(idx);
        Ok(())
    }
    fn run(&mut self, ops: &[Op]) -> Result<()> {
        for op in ops {
            self.exec(op);
        }
        Ok(())
    }
    fn read(&mut self, buf: Buf, range: Range<usize>) -> Result<Vec<f32>> {
        let b = &self.bufs[buf as usize];
        ensure!(range.end <= b.len(), "read past the end of {buf:?}");
        Ok(b[range].to_vec())
    }
}
