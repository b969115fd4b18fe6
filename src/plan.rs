//! What a training step or a scoring batch does, as a list of kernel launches.
//!
//! Both backends execute the same [`Op`] lists: the CPU backend calls the reference
//! kernels in `cpu/`, the GPU backend records one dispatch per op (all steps of an
//! epoch in one compute pass). So "GPU equals CPU" reduces to "each shader equals
//! its twin", which the tests check kernel by kernel.

use crate::cpu::{AdamParams, BceParams, GatherParams, LossParams, MatmulParams, ReparamParams};
use crate::model::{Dims, Offsets};

/// The f32 buffers a plan reads and writes. The image store (`data`, u32-packed bytes)
/// and the index buffer (`idx`, u32) are separate, see [`Op::Gather`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Buf {
    /// flat parameters (P)
    Params,
    /// flat gradients (P)
    Grads,
    /// Adam first and second moments (P)
    AdamM,
    AdamV,
    /// inputs (B, D)
    X,
    /// encoder hidden, after ReLU (B, H)
    H1,
    /// encoder head [μ | log σ²] (B, 2L)
    Head,
    /// noise and latent samples (B·K, L)
    Eps,
    Z,
    /// decoder hidden, after ReLU (B·K, H)
    H3,
    /// decoder logits (B·K, D); overwritten by their gradient when training
    Logits,
    /// gradients of the activations
    Dh3,
    Dz,
    Dhead,
    Dh1,
    /// per-row reconstruction loss (B·K) and per-image KL (B)
    Bce,
    Kl,
    /// per-row log p(z) − log q(z|x) (B·K), for importance weights
    LogPq,
    /// per-image −ELBO, at the image's position in the epoch or split
    SampleLoss,
    /// one sum per batch
    BatchLoss,
}

impl Buf {
    pub const ALL: [Buf; 20] = [
        Buf::Params,
        Buf::Grads,
        Buf::AdamM,
        Buf::AdamV,
        Buf::X,
        Buf::H1,
        Buf::Head,
        Buf::Eps,
        Buf::Z,
        Buf::H3,
        Buf::Logits,
        Buf::Dh3,
        Buf::Dz,
        Buf::Dhead,
        Buf::Dh1,
        Buf::Bce,
        Buf::Kl,
        Buf::LogPq,
        Buf::SampleLoss,
        Buf::BatchLoss,
    ];

    /// Number of f32 elements for this buffer.
    pub fn len(self, s: &Sizes) -> usize {
        let Dims { d, h, l } = s.dims;
        let (b, r) = (s.max_images, s.max_rows);
        match self {
            Buf::Params | Buf::Grads | Buf::AdamM | Buf::AdamV => s.params,
            Buf::X => b * d,
            Buf::H1 | Buf::Dh1 => b * h,
            Buf::Head | Buf::Dhead => b * 2 * l,
            Buf::Eps | Buf::Z | Buf::Dz => r * l,
            Buf::H3 | Buf::Dh3 => r * h,
            Buf::Logits => r * d,
            Buf::Bce | Buf::LogPq => r,
            Buf::Kl => b,
            Buf::SampleLoss => s.sample_slots,
            Buf::BatchLoss => s.batch_slots,
        }
    }
}

/// Buffer sizes a backend allocates once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizes {
    pub dims: Dims,
    pub params: usize,
    /// most images in one batch (training or scoring)
    pub max_images: usize,
    /// most decoder rows in one batch (images × draws)
    pub max_rows: usize,
    /// per-image loss slots (the largest epoch or split)
    pub sample_slots: usize,
    /// per-batch loss slots (the most batches in one run)
    pub batch_slots: usize,
}

/// One kernel launch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    /// X ← data[idx[..]] / 255
    Gather(GatherParams),
    /// c ← epilogue(a · b) with e the bias or ReLU mask (and, for weight
    /// gradients, the bias gradient into c as well)
    Matmul {
        a: Buf,
        b: Buf,
        e: Buf,
        c: Buf,
        p: MatmulParams,
    },
    /// Head → Z, Eps, Kl, LogPq
    ReparamForward(ReparamParams),
    /// Dz, Eps, Head → Dhead
    ReparamBackward(ReparamParams),
    /// Logits, X → Bce (and Logits ← gradient)
    Bce(BceParams),
    /// Bce, Kl, LogPq → SampleLoss, BatchLoss
    Loss(LossParams),
    /// Params, Grads → Params, AdamM, AdamV
    Adam(AdamParams),
}

impl Op {
    /// Every element the op's kernel may read or write lies inside its buffer, the
    /// index entries it reads inside the `idx_len` of the index buffer, and its
    /// divisors are non-zero. The GPU backend checks every op before recording it,
    /// because its shaders are compiled without wgpu's runtime bounds checks (see
    /// [`crate::gpu::build_pipeline`]); image numbers in the index buffer are checked
    /// where they are written. The error names the op and the first range that does
    /// not fit.
    pub fn check(&self, s: &Sizes, idx_len: usize) -> Result<(), String> {
        use crate::cpu::matmul::{MM_BIAS, MM_BIASGRAD, MM_MASK};
        // `count` elements from element 0 must fit `buf` (counts in u64: no overflow)
        let fits = |what: &str, buf: Buf, count: u64| -> Result<(), String> {
            let len = buf.len(s) as u64;
            if count > len {
                return Err(format!(
                    "{self:?}: {what} needs {count} elements of {buf:?}, which has {len}"
                ));
            }
            Ok(())
        };
        let nonzero = |what: &str, v: u32| -> Result<(), String> {
            if v == 0 {
                return Err(format!("{self:?}: {what} is 0"));
            }
            Ok(())
        };
        let u = |v: u32| v as u64;
        match *self {
            Op::Gather(p) => {
                let (rows, d) = (u(p.rows), u(p.d));
                fits("x", Buf::X, rows * d)?;
                if rows > 0 && u(p.idx_off) + rows > idx_len as u64 {
                    return Err(format!(
                        "{self:?}: index entries {}..{} past the {idx_len} of the index buffer",
                        p.idx_off,
                        u(p.idx_off) + rows
                    ));
                }
                // image numbers are checked against the store for `dims.d` pixels each
                if d > s.dims.d as u64 {
                    return Err(format!(
                        "{self:?}: {d} pixels per image, the store has {}",
                        s.dims.d
                    ));
                }
            }
            Op::Matmul { a, b, e, c, p } => {
                let (m, n, k) = (u(p.m), u(p.n), u(p.k));
                if m > 0 && n > 0 {
                    // one past the last element touched: off + (rows−1)·stride + (cols−1)·stride + 1
                    let last = |off: u32, i: u64, si: u32, j: u64, sj: u32| {
                        u(off) + (i - 1) * u(si) + (j - 1) * u(sj) + 1
                    };
                    if k > 0 {
                        fits("A", a, last(p.a_off, m, p.a_si, k, p.a_sp))?;
                        fits("B", b, last(p.b_off, k, p.b_sp, n, p.b_sj))?;
                    }
                    fits("C", c, last(p.c_off, m, p.c_si, n, 1))?;
                    if p.flags & MM_BIAS != 0 {
                        fits("the bias", e, u(p.e_off) + n)?;
                    }
                    if p.flags & MM_MASK != 0 {
                        fits("the mask", e, last(p.e_off, m, p.e_si, n, 1))?;
                    }
                    if p.flags & MM_BIASGRAD != 0 {
                        fits("the bias gradient", c, u(p.e_off) + m)?;
                    }
                }
            }
            Op::ReparamForward(p) | Op::ReparamBackward(p) => {
                let (b, l, k) = (u(p.images), u(p.l), u(p.draws));
                fits("the head", Buf::Head, b * 2 * l)?;
                fits("ε", Buf::Eps, b * k * l)?;
                if let Op::ReparamForward(_) = self {
                    fits("z", Buf::Z, b * k * l)?;
                    fits("the KL", Buf::Kl, b)?;
                    fits("log p − log q", Buf::LogPq, b * k)?;
                } else {
                    fits("dz", Buf::Dz, b * k * l)?;
                    fits("the head gradient", Buf::Dhead, b * 2 * l)?;
                }
            }
            Op::Bce(p) => {
                let (rows, d) = (u(p.rows), u(p.d));
                if rows > 0 {
                    nonzero("draws", p.draws)?;
                    fits("the logits", Buf::Logits, rows * d)?;
                    fits("x", Buf::X, rows.div_ceil(u(p.draws)) * d)?;
                    fits("the BCE", Buf::Bce, rows)?;
                }
            }
            Op::Loss(p) => {
                let (b, k) = (u(p.images), u(p.draws));
                if b > 0 {
                    nonzero("draws", p.draws)?;
                }
                fits("the BCE", Buf::Bce, b * k)?;
                fits("log p − log q", Buf::LogPq, b * k)?;
                fits("the KL", Buf::Kl, b)?;
                fits("per-image losses", Buf::SampleLoss, u(p.out_off) + b)?;
                if p.slot != crate::cpu::NO_SLOT {
                    fits("the batch sum", Buf::BatchLoss, u(p.slot) + 1)?;
                }
            }
            Op::Adam(p) => {
                for buf in [Buf::Params, Buf::Grads, Buf::AdamM, Buf::AdamV] {
                    fits("Adam", buf, u(p.n))?;
                }
            }
        }
        Ok(())
    }
}

/// [`Op::check`] for every op of a run: the first misfit as one error.
pub fn check_ops(ops: &[Op], s: &Sizes, idx_len: usize) -> anyhow::Result<()> {
    for op in ops {
        op.check(s, idx_len)
            .map_err(|e| anyhow::anyhow!("op not run: {e}"))?;
    }
    Ok(())
}

/// Every image number written to the index names an image of the store.
pub fn check_idx(idx: &[u32], images: usize) -> anyhow::Result<()> {
    if let Some(&bad) = idx.iter().find(|&&i| i as usize >= images) {
        anyhow::bail!("image {bad} in the index: the store holds {images}");
    }
    Ok(())
}

/// Where a batch's images come from and where its losses go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Batch {
    /// images in the batch
    pub images: usize,
    /// z draws per image (1 when training)
    pub draws: usize,
    /// first entry of the index buffer for this batch
    pub idx_off: usize,
    /// RNG key of ε
    pub seed: u32,
    pub stream: u32,
    pub row_base: u32,
    /// per-image losses go to SampleLoss[out_off..], the batch sum to
    /// BatchLoss[slot] (None: no batch sum)
    pub out_off: usize,
    pub slot: Option<usize>,
    /// what SampleLoss receives: LOSS_ELBO (−ELBO) or LOSS_IWAE (−log p̂(x) over the draws)
    pub mode: u32,
}

impl Batch {
    /// Training step `s` of an epoch over `n` images (the first `n` entries of the
    /// index buffer) in batches of `bs`: images s·bs.. (fewer in the last batch), one
    /// draw, ε keyed by (`seed`, `stream`), −ELBO per image to SampleLoss[s·bs..]
    /// and no batch sum (the host adds up the epoch's per-image losses).
    pub fn train_step(s: usize, n: usize, bs: usize, seed: u32, stream: u32) -> Batch {
        Batch {
            images: bs.min(n - s * bs),
            draws: 1,
            idx_off: s * bs,
            seed,
            stream,
            row_base: 0,
            out_off: s * bs,
            slot: None,
            mode: crate::cpu::LOSS_ELBO,
        }
    }
}

/// Forward pass and loss for one batch: gather, encoder, reparameterisation,
/// decoder, BCE (+ its gradient when `train`), per-image loss.
pub fn forward_ops(dims: Dims, o: &Offsets, bt: &Batch, train: bool) -> Vec<Op> {
    let Dims { d, h, l } = dims;
    let (b, k) = (bt.images, bt.draws);
    let r = b * k;
    let rp = ReparamParams {
        images: b as u32,
        l: l as u32,
        draws: k as u32,
        seed: bt.seed,
        stream: bt.stream,
        row_base: bt.row_base,
        ..Default::default()
    };
    let lin = |a, c, m, kin, n, w, bias, relu| Op::Matmul {
        a,
        b: Buf::Params,
        e: Buf::Params,
        c,
        p: MatmulParams::linear(m, kin, n, w, bias, relu),
    };
    vec![
        Op::Gather(GatherParams {
            rows: b as u32,
            d: d as u32,
            idx_off: bt.idx_off as u32,
            _pad: 0,
        }),
        lin(Buf::X, Buf::H1, b, d, h, o.w1, o.b1, true),
        lin(Buf::H1, Buf::Head, b, h, 2 * l, o.w2, o.b2, false),
        Op::ReparamForward(rp),
        lin(Buf::Z, Buf::H3, r, l, h, o.w3, o.b3, true),
        lin(Buf::H3, Buf::Logits, r, h, d, o.w4, o.b4, false),
        Op::Bce(BceParams {
            rows: r as u32,
            d: d as u32,
            draws: k as u32,
            write_grad: train as u32,
        }),
        Op::Loss(LossParams {
            images: b as u32,
            draws: k as u32,
            out_off: bt.out_off as u32,
            slot: bt.slot.map_or(crate::cpu::NO_SLOT, |s| s as u32),
            mode: bt.mode,
            _pad: [0; 3],
        }),
    ]
}

/// Backward pass of the summed batch loss into Grads (every entry overwritten).
/// Requires the forward of the same batch with `train` (Logits hold dLoss/dlogits).
pub fn backward_ops(dims: Dims, o: &Offsets, bt: &Batch) -> Vec<Op> {
    let Dims { d, h, l } = dims;
    let (b, k) = (bt.images, bt.draws);
    let r = b * k;
    let dw = |a, bb, m, kin, n, w, bias| Op::Matmul {
        a,
        b: bb,
        e: Buf::Params,
        c: Buf::Grads,
        p: MatmulParams::linear_backward_weight(m, kin, n, w, bias),
    };
    let dx = |a, mask, c, m, kin, n, w, masked| Op::Matmul {
        a,
        b: Buf::Params,
        e: mask,
        c,
        p: MatmulParams::linear_backward_input(m, kin, n, w, masked),
    };
    // Each layer's input gradient comes before its weight gradient, so that once a
    // weight gradient is known nothing later in the pass reads that weight: the CPU
    // backend applies Adam to each layer right after its weight gradient, while it
    // is still in cache (see `cpu_backend`).
    vec![
        // fc4: logits = h3 W4ᵀ + b4
        dx(Buf::Logits, Buf::H3, Buf::Dh3, r, h, d, o.w4, true),
        dw(Buf::Logits, Buf::H3, r, h, d, o.w4, o.b4),
        // fc3: h3 = relu(z W3ᵀ + b3)
        dx(Buf::Dh3, Buf::Params, Buf::Dz, r, l, h, o.w3, false),
        dw(Buf::Dh3, Buf::Z, r, l, h, o.w3, o.b3),
        // z = μ + ε σ, plus KL
        Op::ReparamBackward(ReparamParams {
            images: b as u32,
            l: l as u32,
            draws: k as u32,
            seed: bt.seed,
            stream: bt.stream,
            row_base: bt.row_base,
            ..Default::default()
        }),
        // head: [μ | log σ²] = h1 W2ᵀ + b2
        dx(Buf::Dhead, Buf::H1, Buf::Dh1, b, h, 2 * l, o.w2, true),
        dw(Buf::Dhead, Buf::H1, b, h, 2 * l, o.w2, o.b2),
        // fc1: h1 = relu(x W1ᵀ + b1)
        dw(Buf::Dh1, Buf::X, b, d, h, o.w1, o.b1),
    ]
}

/// Adam hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// A label for each op of [`train_step_ops`], in order (for benchmarks and logs).
pub const TRAIN_STEP_OP_NAMES: [&str; 17] = [
    "gather x",
    "fc1 fwd",
    "head fwd",
    "reparam fwd",
    "fc3 fwd",
    "fc4 fwd",
    "bce+grad",
    "loss reduce",
    "fc4 dX",
    "fc4 dW+db",
    "fc3 dX",
    "fc3 dW+db",
    "reparam bwd",
    "head dX",
    "head dW+db",
    "fc1 dW+db",
    "adam",
];

/// One full training step: forward, backward, Adam step number `t` (1-based).
pub fn train_step_ops(
    dims: Dims,
    o: &Offsets,
    bt: &Batch,
    n_params: usize,
    adam: &AdamConfig,
    t: u64,
) -> Vec<Op> {
    let mut ops = forward_ops(dims, o, bt, true);
    ops.extend(backward_ops(dims, o, bt));
    ops.push(Op::Adam(AdamParams::at_step(
        n_params, adam.lr, adam.beta1, adam.beta2, adam.eps, t,
    )));
    ops
}

/// The first training step (Adam step 1) of the reference model on a batch of `b`
/// images (index entries 0..b), and buffer sizes that hold exactly it: what kernel
/// experiments and lowering tests run.
pub fn reference_step(b: usize) -> (Sizes, Vec<Op>) {
    let dims = Dims::MNIST;
    let lay = crate::model::Layout::new(dims);
    let sizes = Sizes {
        dims,
        params: lay.total,
        max_images: b,
        max_rows: b,
        sample_slots: b,
        batch_slots: 1,
    };
    let ops = train_step_ops(
        dims,
        &lay.offsets(),
        &Batch::train_step(0, b, b, 1, 0),
        lay.total,
        &AdamConfig::default(),
        1,
    );
    (sizes, ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Layout;

    #[test]
    fn every_step_op_has_a_name() {
        let dims = Dims::MNIST;
        let lay = Layout::new(dims);
        let bt = Batch {
            images: 3,
            draws: 1,
            idx_off: 0,
            seed: 0,
            stream: 0,
            row_base: 0,
            out_off: 0,
            slot: Some(0),
            mode: 0,
        };
        let ops = train_step_ops(
            dims,
            &lay.offsets(),
            &bt,
            lay.total,
            &AdamConfig::default(),
            1,
        );
        assert_eq!(ops.len(), TRAIN_STEP_OP_NAMES.len());
        assert!(matches!(ops[0], Op::Gather(_)) && matches!(ops[16], Op::Adam(_)));
    }

    /// Sizes that hold exactly one batch of `b` images with `k` draws.
    fn exact_sizes(dims: Dims, params: usize, b: usize, k: usize) -> Sizes {
        Sizes {
            dims,
            params,
            max_images: b,
            max_rows: b * k,
            sample_slots: b,
            batch_slots: 1,
        }
    }

    /// The ops vae-ood builds fit buffers sized exactly for them; one element
    /// fewer anywhere, or a shifted offset, is an error naming the op.
    #[test]
    fn op_check_accepts_exact_fits_and_rejects_overruns() {
        let dims = Dims { d: 53, h: 37, l: 3 };
        let lay = Layout::new(dims);
        let (b, k) = (19, 4);
        let score = Batch {
            images: b,
            draws: k,
            idx_off: 0,
            seed: 0,
            stream: 0,
            row_base: 0,
            out_off: 0,
            slot: Some(0),
            mode: crate::cpu::LOSS_IWAE,
        };
        let train = train_step_ops(
            dims,
            &lay.offsets(),
            &Batch::train_step(0, b, b, 0, 0),
            lay.total,
            &AdamConfig::default(),
            1,
        );
        let scoring = forward_ops(dims, &lay.offsets(), &score, false);
        for (ops, k) in [(&train, 1), (&scoring, k)] {
            let exact = exact_sizes(dims, lay.total, b, k);
            // every op fits, and fails when its buffers lose one image, one decoder
            // row or one parameter
            let short = [
                exact_sizes(dims, lay.total - 1, b, k),
                exact_sizes(dims, lay.total, b - 1, k),
                Sizes {
                    max_rows: b * k - 1,
                    ..exact
                },
            ];
            for op in ops {
                op.check(&exact, b).unwrap();
                assert!(
                    short.iter().any(|s| op.check(s, b).is_err()),
                    "{op:?} passed every short size"
                );
            }
        }
        let (ops, exact) = (train, exact_sizes(dims, lay.total, b, 1));
        // offsets past the end
        let Op::Matmul {
            a,
            b: bb,
            e,
            c,
            mut p,
        } = ops[1]
        else {
            panic!("op 1 is fc1")
        };
        p.c_off += 1;
        let e1 = Op::Matmul { a, b: bb, e, c, p }
            .check(&exact, b)
            .unwrap_err();
        assert!(e1.contains("C needs") && e1.contains("H1"), "{e1}");
        let Op::Gather(mut g) = ops[0] else {
            panic!("op 0 is the gather")
        };
        g.idx_off = 1;
        let e2 = Op::Gather(g).check(&exact, b).unwrap_err();
        assert!(e2.contains("index entries 1..20"), "{e2}");
        let Op::Loss(mut l) = ops[7] else {
            panic!("op 7 is the loss")
        };
        l.slot = 1;
        assert!(Op::Loss(l)
            .check(&exact, b)
            .unwrap_err()
            .contains("BatchLoss"));
        l.slot = 0;
        l.draws = 0;
        assert!(Op::Loss(l)
            .check(&exact, b)
            .unwrap_err()
            .contains("draws is 0"));
    }
}
