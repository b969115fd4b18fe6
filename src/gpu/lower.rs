//! The lowering: a pure function from the op list of a run (`plan::Op`) to the
//! dispatches that run it — which kernel each op becomes, which ops share a
//! dispatch (gradient pairs, the weight-gradient triple, Adam with the next gather,
//! the BCE and latent kernels folded into products' epilogues and last blocks),
//! which split-K reduces fold into their reader, and what is refused where it
//! would be wrong ([`Fusions`] says what is on). `GpuBackend` (`backend.rs`) only
//! allocates the scratch buffers [`partial_len`], [`rowloss_len`] and
//! [`last_block_len`] size and records [`lower_all`]'s dispatches.
//! The fusions of products with their neighbours are in `lower/products.rs`, the
//! latent kernels and their folds in `lower/latent.rs`; the unit tests, which need
//! no GPU, in `lower/tests.rs`.

use super::context::Kernel;
use crate::cpu::matmul::{MatmulParams, MM_BIAS, MM_BIASGRAD, MM_MASK, MM_RELU};
use crate::cpu::{AdamParams, ReparamParams, LOSS_ELBO, NO_SLOT};
use crate::plan::{Buf, Op};
use std::ops::Range;

mod latent;
mod products;
#[cfg(test)]
mod tests;

use latent::*;
use products::*;

/// A resource a kernel binds: one of the f32 buffers, the image store or the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Res {
    F(Buf),
    Data,
    Idx,
    /// split-K partial sums (GPU only)
    Partial,
    /// the column tiles' shares of each row's BCE, (rows, ⌈d / 32⌉), from
    /// `matmul_bce` to `matmul_pair_loss` (GPU only)
    RowLoss,
    /// the last-block counters (`shaders/last_block.wgsl`, u32, each 0 between
    /// dispatches): a split `matmul_bce`'s tiles', (row tiles, column tiles), or
    /// `matmul_latent`'s, fc1's tiles' then its row bands' (GPU only)
    Counts,
    /// `matmul_latent`'s column tiles' shares of the head, (column tiles, B, 2L)
    /// f32 bits (GPU only)
    HeadParts,
}

/// Split a 1-D workgroup count over x and y (each ≤ 65535); kernels that can get
/// more than 65535 groups fold y back in (`adam.wgsl`).
fn groups_1d(n: usize) -> (u32, u32) {
    let x = n.clamp(1, 65535);
    (x as u32, n.div_ceil(x).max(1) as u32)
}

/// How many workgroups share K in a product (1 = no split). Skinny products have
/// few 32×32 output tiles, each walking all of K serially; splitting K over up to
/// 16 workgroups (≥ 32 each) shortens that chain at the cost of one small reduce
/// dispatch. Products that also write bias gradients are never split.
/// The workgroup count aimed for is 256, or `VAE_OOD_SPLIT_TARGET` (a tuning knob
/// for benchmarks; any value gives the same results up to rounding).
pub fn choose_splits(p: &MatmulParams) -> u32 {
    let target = split_target();
    let tiles = p.n.div_ceil(32) * p.m.div_ceil(32);
    if p.flags & MM_BIASGRAD != 0 || tiles >= target / 2 || p.k < 128 {
        return 1;
    }
    let want = (target / tiles.max(1)).clamp(1, 16);
    let kc = p.k.div_ceil(want).div_ceil(32) * 32;
    p.k.div_ceil(kc)
}

/// The workgroup count split-K products aim for: [`SPLIT_TARGET`], or
/// `VAE_OOD_SPLIT_TARGET`.
pub(super) fn split_target() -> u32 {
    static TARGET: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *TARGET.get_or_init(|| {
        crate::knobs::number(crate::knobs::SPLIT_TARGET, 1..=65_536)
            .map_or(SPLIT_TARGET, |v| v as u32)
    })
}

/// The default workgroup count split-K products aim for.
pub const SPLIT_TARGET: u32 = 256;

/// One dispatch: kernel, bound resources (in `Kernel::bindings` order), workgroups.
pub(super) type Dispatch = (Kernel, Vec<Res>, (u32, u32, u32));

/// Output tiles of a product (its workgroups before K is split).
fn tiles(p: &MatmulParams) -> u32 {
    p.n.div_ceil(32).max(1) * p.m.div_ceil(32).max(1)
}

/// Byte offset of `matmul_gather`'s first index entry in its slot (`matmul.wgsl`'s
/// `Slot.gather`, after three `MatmulParams`, an `AdamParams` and the tail).
const GATHER_IDX_AT: usize = 240;

/// Where a kernel reads its input product from split-K partial sums instead of
/// the product's buffer (`shaders/split_source.wgsl`): the product's shape, shares
/// and epilogue. Byte 64 of the reading op's uniform slot; all zero (splits 0)
/// when it reads the buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SplitSource {
    splits: u32,
    m: u32,
    n: u32,
    flags: u32,
    e_off: u32,
    e_si: u32,
    _pad: [u32; 2],
}

/// Byte offset of the [`SplitSource`] in a uniform slot.
const SPLIT_SOURCE_AT: usize = 64;

/// Byte offset of the [`SplitSource`] in a latent kernel's slot (after two
/// `MatmulParams` and a `ReparamParams`).
const LATENT_SPLIT_SOURCE_AT: usize = 160;

/// Byte offset of the BCE kernel's loss output (on, out_off) in its uniform slot.
const BCE_LOSS_AT: usize = 32;

/// Byte offset of `Slot.tail` in a matmul kernel's uniform slot (after three
/// `MatmulParams` and an `AdamParams`): the triple's Adam tail, `matmul_bce`'s
/// (draws, write_grad, column tiles) and `matmul_pair_loss`'s (rows, column
/// tiles, out_off).
const SLOT_TAIL_AT: usize = 224;

/// A lowered op (or pair of ops).
struct Lowered {
    dispatches: Vec<Dispatch>,
    /// uniform bytes for the first op's slot
    bytes: Vec<u8>,
    /// ops consumed: 1, or 2 for a pair
    used: usize,
    /// when the last dispatch is a split-K reduce: the product's params (with its
    /// split count), epilogue buffer and output buffer
    reduce: Option<(MatmulParams, Buf, Buf)>,
}

/// Whether `rest[0]` can read the split product `q` (output buffer `c`, epilogue
/// operand `e`) from its partial sums instead of after a reduce: it is one of the
/// kernels with `split_source.wgsl`, it reads exactly that product — the whole of
/// C, laid out densely (offset 0, row stride n) — and the epilogue reads at most
/// the parameters (bound as the split epilogue operand), or it starts a latent
/// group (with `latent`, the latent fusion on) whose first product reads the whole
/// of C as dense rows of A (the latent kernels bind `e` itself).
fn absorbs(rest: &[Op], q: &MatmulParams, e: Buf, c: Buf, latent: bool) -> bool {
    let dense = dense_c(q, q.n);
    let params_only = q.flags & (MM_BIAS | MM_MASK) == 0 || e == Buf::Params;
    let reads_all = match rest.first() {
        Some(Op::Bce(p)) => params_only && c == Buf::Logits && p.rows == q.m && p.d == q.n,
        Some(Op::ReparamForward(p)) => {
            params_only && c == Buf::Head && p.images == q.m && 2 * p.l == q.n
        }
        Some(Op::ReparamBackward(p)) => {
            params_only && c == Buf::Dz && p.images * p.draws == q.m && p.l == q.n
        }
        Some(Op::Matmul { a, p, .. })
            if latent && lower_latent(rest, None, false, false, false).is_some() =>
        {
            matches!((*a, c), (Buf::H1, Buf::H1) | (Buf::Dh3, Buf::Dh3))
                && p.m == q.m
                && dense_a(p, q.n)
        }
        _ => false,
    };
    dense && reads_all && q.splits > 1
}

/// The dispatches of `op` (with `next`, the op after it, when the two run as one:
/// with `fuse.pairs`, a layer's two gradient products, see [`pairable`], a step's
/// Adam and the next step's gather, `adam_gather.wgsl`, or a BCE and a training
/// step's loss, `bce.wgsl`; with `fuse.gather`, a gather and the product that
/// reads it, [`gather_product`]) and the parameter bytes they read (one uniform
/// slot).
fn lower(op: &Op, next: Option<&Op>, fuse: Fusions) -> Lowered {
    use bytemuck::bytes_of;
    let f = Res::F;
    if let (true, Some(next)) = (fuse.gather, next) {
        if let Some(low) = gather_product(op, next) {
            return low;
        }
    }
    let next = next.filter(|_| fuse.pairs);
    if let (Some(next), Op::Matmul { a, b, c, p, .. }) = (next, op) {
        if let (
            Some(e),
            Op::Matmul {
                a: a1,
                c: c1,
                p: p1,
                ..
            },
        ) = (pairable(op, next), next)
        {
            let mut q0 = *p;
            q0.splits = choose_splits(p);
            let mut q1 = *p1;
            q1.splits = 1;
            // one workgroup per tile, no spare ones (pairable bounds the count)
            let groups = pair_groups(p, p1);
            let mut d = vec![(
                Kernel::MatmulPair,
                vec![f(*a), f(*b), f(e), f(*c), Res::Partial, f(*c1), f(*a1)],
                (groups, 1, 1),
            )];
            if q0.splits > 1 {
                d.push(reduce_dispatch(&q0, e, *c));
            }
            let mut bytes = bytes_of(&q0).to_vec();
            bytes.extend_from_slice(bytes_of(&q1));
            return Lowered {
                dispatches: d,
                bytes,
                used: 2,
                reduce: (q0.splits > 1).then_some((q0, e, *c)),
            };
        }
    }
    if let (Op::Bce(pb), Some(Op::Loss(pl))) = (op, next) {
        // a training step's per-image −ELBO written by the BCE kernel: one draw per
        // image, no batch sum (shaders/bce.wgsl)
        if pl.mode == LOSS_ELBO
            && pl.slot == NO_SLOT
            && pl.draws == 1
            && pb.draws == 1
            && pl.images == pb.rows
        {
            let (dispatches, mut bytes) = lower_one(op);
            bytes.resize(BCE_LOSS_AT, 0);
            bytes.extend_from_slice(bytes_of(&[1u32, pl.out_off, 0, 0]));
            debug_assert_eq!(dispatches.len(), 1);
            return Lowered {
                dispatches,
                bytes,
                used: 2,
                reduce: None,
            };
        }
    }
    if let (Op::Adam(pa), Some(Op::Gather(pg))) = (op, next) {
        // a step's Adam and the next step's gather: one dispatch (adam_gather.wgsl)
        let ga = pa.n.div_ceil(256);
        let gg = (pg.rows * pg.d).div_ceil(256);
        if ga + gg <= 65_535 {
            let mut bytes = bytes_of(pa).to_vec();
            bytes.extend_from_slice(bytes_of(pg));
            return Lowered {
                dispatches: vec![(
                    Kernel::AdamGather,
                    vec![
                        f(Buf::Params),
                        f(Buf::Grads),
                        f(Buf::AdamM),
                        f(Buf::AdamV),
                        Res::Data,
                        Res::Idx,
                        f(Buf::X),
                    ],
                    (ga + gg, 1, 1),
                )],
                bytes,
                used: 2,
                reduce: None,
            };
        }
    }
    let (dispatches, bytes) = lower_one(op);
    let reduce = match op {
        Op::Matmul { e, c, p, .. } if choose_splits(p) > 1 => {
            let mut q = *p;
            q.splits = choose_splits(p);
            Some((q, *e, *c))
        }
        _ => None,
    };
    Lowered {
        dispatches,
        bytes,
        used: 1,
        reduce,
    }
}

/// Which GPU fusions are on ([`Fusions::DEFAULT`]: all but Adam in the triple;
/// `VAE_OOD_GPU_UNFUSED` = `1`, `pairs`, `reduces`, `latent`, `triple` or
/// `gather` switches them off, `VAE_OOD_GPU_TRIPLE_ADAM=1` puts Adam in the
/// triple, for comparison).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fusions {
    /// a layer's input and weight gradients as one `matmul_pair` ([`pairable`]),
    /// a step's Adam and the next step's gather as one `adam_gather`, and a
    /// training step's loss written by the BCE kernel
    pub pairs: bool,
    /// a split-K reduce folded into the kernel that reads the product ([`absorbs`])
    pub reduces: bool,
    /// the products around the latent code and the reparameterisation as one
    /// `latent_forward` and one `latent_backward` dispatch ([`lower_latent`])
    pub latent: bool,
    /// three independent weight gradients as one `matmul_triple` ([`triple`]):
    /// with the latent fusion, fc3's (which the latent group moves after its
    /// backward kernel) with the head's and fc1's
    pub triple: bool,
    /// a training step's Adam in the epilogue of the triple before it, as one
    /// `matmul_triple_adam` ([`triple_adam`]; needs the triple). Off by default:
    /// on an H100 the seven dispatches of a step took 96.4 µs, the eight with
    /// Adam beside the next gather 90.2 (medians of 5 interleaved runs,
    /// bench/results/h100-2026-11-26.md): the epilogue's Adam lengthens the
    /// triple by more than a dispatch costs
    pub adam: bool,
    /// with `adam` and the latent fusion: the parameters the triple's Adam does not
    /// update (its tail: fc4's) in extra workgroups of the latent backward kernel
    /// before it (`latent_backward_adam`, where that kernel reads none of them), so
    /// that no tail workgroups wait behind the triple's tiles (not with
    /// `latent_pair`, which leaves no latent backward kernel: the tail stays in the
    /// triple)
    pub latent_adam: bool,
    /// a batch's gather in the loads of the product that reads it, as one
    /// `matmul_gather` ([`gather_product`])
    pub gather: bool,
    /// a training step's BCE and its gradient in the epilogue of the unsplit
    /// decoder-output product (`matmul_bce`), its loss finished in extra
    /// workgroups of fc4's gradient pair (`matmul_pair_loss`; [`bce_epilogue`],
    /// needs `pairs`): one dispatch fewer per step. On by default, on the split
    /// product (`bce_split`; `VAE_OOD_GPU_BCE_EPILOGUE=0`: the BCE kernel, as
    /// [`Fusions::BCE_KERNEL`]); it sums each row's BCE in another order than the
    /// BCE kernel (the losses move by rounding, nothing else)
    pub bce: bool,
    /// with `bce`: the decoder-output product split over K as it is without the
    /// epilogue, the last of each output tile's K shares to store its partial
    /// sums adding them up and running the epilogue (`shaders/matmul_bce.wgsl`,
    /// `last_split`): the same logits and gradients as the split product and the
    /// BCE kernel, bit for bit, without the unsplit product's longer K walk (its
    /// partial sums atomics: `shaders/matmul_partial_atomic.wgsl`). On by
    /// default (`VAE_OOD_GPU_BCE_SPLIT=0`: the unsplit product's epilogue): on an
    /// NVIDIA H200 (2026-11-27, medians of 5 interleaved rounds, three calls)
    /// 0.963–0.968 × the BCE kernel's time per step, the same weights and AUROCs
    pub bce_split: bool,
    /// with `latent`: a training step's latent forward (the head product, the
    /// reparameterisation, fc3's product) in the last workgroups of fc1's split
    /// product (`matmul_latent`, [`latent_into_fc1`]): one dispatch fewer per
    /// step. Off by default (`VAE_OOD_GPU_LATENT_FC1=1`): on an NVIDIA H200
    /// (2026-11-27) 1.45 × the time per step with the latent kernel (the one
    /// dispatch took 85 µs, fc1's product and the latent kernel 19 + 18); it sums
    /// the head in another order than the latent kernel
    pub latent_fc1: bool,
    /// with `latent` and `pairs`: a training step's latent backward (fc3's input
    /// gradient, the reparameterisation backward, the head's input gradient) in
    /// the last workgroups of fc4's gradient pair, which finishes its input
    /// gradient's tiles itself (`matmul_pair_latent`, [`latent_into_pair`]): one
    /// dispatch fewer per step. Off by default (`VAE_OOD_GPU_LATENT_PAIR=1`): on an
    /// NVIDIA H200 (2026-11-27) 1.37 × the time per step with the latent kernel
    /// (the pair took 69 µs, the pair and the latent kernel 25 + 15); it sums dz
    /// in another order than the latent kernel
    pub latent_pair: bool,
    /// with `adam` and `latent_fc1`: where the triple keeps a tail of parameters
    /// its Adam epilogue does not reach (fc4's, with `latent_pair`), that tail
    /// updated in extra workgroups of the next training step's fc1 dispatch
    /// instead (`matmul_gather_adam`, [`tail_into_fc1`]), where that dispatch
    /// directly follows the triple in the run; a run's last step keeps its tail.
    /// The same bits. Off by default (`VAE_OOD_GPU_TAIL_FC1=1`): 1.9× the default's
    /// time per step inside the four-dispatch configurations (H200, 2026-11-27)
    pub tail_fc1: bool,
}

impl Fusions {
    /// The default: all on but Adam in the triple (see [`Fusions::adam`]), with
    /// the BCE epilogue on the split product ([`Fusions::bce_split`]) and without
    /// the fusions not timed faster on a GPU.
    pub const DEFAULT: Fusions = Fusions {
        adam: false,
        bce: true,
        bce_split: true,
        ..Fusions::ALL
    };
    /// The default until 2026-11-27: the BCE kernel its own dispatch, not in fc4's
    /// epilogue (`VAE_OOD_GPU_BCE_EPILOGUE=0`); every buffer but the BCE and the
    /// losses bit for bit the default's.
    pub const BCE_KERNEL: Fusions = Fusions {
        bce: false,
        bce_split: false,
        ..Fusions::DEFAULT
    };
    /// All on but the BCE epilogue (the fusions whose results do not depend on
    /// them, bit for bit, with the latent fusion's order of sums).
    pub const ALL: Fusions = Fusions {
        pairs: true,
        reduces: true,
        latent: true,
        triple: true,
        adam: true,
        latent_adam: true,
        gather: true,
        bce: false,
        bce_split: false,
        latent_fc1: false,
        latent_pair: false,
        tail_fc1: false,
    };
    /// All off: every op its own dispatches.
    pub const NONE: Fusions = Fusions {
        pairs: false,
        reduces: false,
        latent: false,
        triple: false,
        adam: false,
        latent_adam: false,
        gather: false,
        bce: false,
        bce_split: false,
        latent_fc1: false,
        latent_pair: false,
        tail_fc1: false,
    };

    pub fn from_env() -> Fusions {
        Fusions {
            pairs: !crate::knobs::gpu_unfused("pairs"),
            reduces: !crate::knobs::gpu_unfused("reduces"),
            latent: !crate::knobs::gpu_unfused("latent"),
            triple: !crate::knobs::gpu_unfused("triple"),
            // (opt-in; `VAE_OOD_GPU_UNFUSED=1` switches it off all the same: "adam"
            // is no part name of its own, `knobs::check` rejects it)
            adam: crate::knobs::flag(crate::knobs::GPU_TRIPLE_ADAM)
                && !crate::knobs::flag(crate::knobs::GPU_UNFUSED),
            // (it acts only with `adam` and `latent`, which the switches set)
            latent_adam: true,
            gather: !crate::knobs::gpu_unfused("gather"),
            bce: crate::knobs::flag_unless_zero(crate::knobs::GPU_BCE_EPILOGUE)
                && !crate::knobs::flag(crate::knobs::GPU_UNFUSED),
            bce_split: crate::knobs::flag_unless_zero(crate::knobs::GPU_BCE_SPLIT),
            latent_fc1: crate::knobs::flag(crate::knobs::GPU_LATENT_FC1),
            latent_pair: crate::knobs::flag(crate::knobs::GPU_LATENT_PAIR),
            tail_fc1: crate::knobs::flag(crate::knobs::GPU_TAIL_FC1),
        }
    }

    /// In words for `describe` ("" for [`Fusions::DEFAULT`]).
    pub(super) fn note(self) -> String {
        let off: Vec<&str> = [
            (self.pairs, "gradient pairs"),
            (self.reduces, "folded reduces"),
            (self.latent, "latent fusion"),
            (self.triple, "weight-gradient triple"),
            (self.gather, "gather in the first product"),
        ]
        .iter()
        .filter(|f| !f.0)
        .map(|f| f.1)
        .collect();
        // (with the latent backward in fc4's pair the tail stays in the triple)
        let tail_in_latent = self.latent && self.latent_adam && !(self.latent_pair && self.pairs);
        let tail_in_fc1 = self.latent && self.latent_fc1 && self.tail_fc1 && !tail_in_latent;
        let mut extra = match (self.adam, tail_in_latent, tail_in_fc1) {
            (true, true, _) => ", Adam in the triple (its tail in the latent backward)",
            (true, false, true) => ", Adam in the triple (its tail in the next step's fc1)",
            (true, false, false) => ", Adam in the triple",
            _ => "",
        }
        .to_string();
        if self.latent && self.latent_fc1 {
            extra.push_str(", the latent forward in fc1's product");
        }
        if self.latent && self.pairs && self.latent_pair {
            extra.push_str(", the latent backward in fc4's gradient pair");
        }
        // (the default, the split product's: unsaid; the epilogue needs the pairs)
        if !(self.bce && self.pairs) {
            extra.push_str(", the BCE kernel (not in fc4's epilogue)");
        } else if !self.bce_split {
            extra.push_str(", BCE in the unsplit fc4's epilogue");
        }
        match off.len() {
            0 => extra,
            5 => ", unfused".to_string(),
            _ => format!(", no {}{extra}", off.join(", no ")),
        }
    }
}

/// The whole lowering of `ops`: for each dispatch (uniform slot = op index,
/// kernel, resources, workgroups), and each op's uniform bytes (empty for an op
/// without a slot of its own). With `fuse.pairs`, a layer's gradient products run
/// as pairs; with `fuse.reduces`, a split-K reduce followed by a kernel that
/// [`absorbs`] it is dropped, that kernel reading the partial sums (a
/// [`SplitSource`] in its slot); with `fuse.latent`, the ops around the latent
/// code run as [`lower_latent`] groups them. Slots increase along the plan.
pub(super) fn lower_all(ops: &[Op], fuse: Fusions) -> (Vec<(usize, Dispatch)>, Vec<Vec<u8>>) {
    let mut plan = Vec::with_capacity(ops.len() * 2);
    let mut slots = vec![Vec::new(); ops.len()];
    // a split product's shares and epilogue operand, for the kernel after it to read
    let mut source: Option<(SplitSource, Buf)> = None;
    let mut i = 0;
    while i < ops.len() {
        if fuse.latent {
            // (Adam's tail in the latent backward kernel, where that kernel is not to
            // be folded into fc4's pair: otherwise the tail stays in the triple)
            let pair = fuse.latent_pair && fuse.pairs;
            let adam_here = fuse.latent_adam && !pair;
            if let Some(g) = lower_latent(&ops[i..], source, fuse.triple, fuse.adam, adam_here) {
                if fuse.latent_fc1 && latent_into_fc1(&mut plan, &mut slots, ops, i, &g, source) {
                    source = None;
                    i += g.used;
                    continue;
                }
                // (folded: the latent kernel's slot and dispatch dropped)
                let first =
                    (pair && latent_into_pair(&mut plan, &mut slots, ops, i, &g, source)) as usize;
                source = None;
                for (at, bytes) in g.slots.into_iter().skip(first) {
                    slots[i + at] = bytes;
                }
                plan.extend(
                    g.dispatches
                        .into_iter()
                        .skip(first)
                        .map(|(at, d)| (i + at, d)),
                );
                i += g.used;
                continue;
            }
        }
        if let (true, [o0, o1, o2, ..]) = (fuse.triple, &ops[i..]) {
            let adam = ops.get(i + 3).filter(|_| fuse.adam);
            if let Some((d, bytes, with_adam, _)) = triple([o0, o1, o2], adam, None) {
                // (no split sums wait for a product: absorbs folds only into the
                // kernels that read them)
                debug_assert!(source.is_none());
                slots[i] = bytes;
                plan.push((i, d));
                i += 3 + with_adam as usize;
                continue;
            }
        }
        // with the BCE epilogue: the decoder-output product, its BCE and loss as one
        // dispatch here, then fc4's gradient pair (op `at`) finishing the loss
        let bce = (fuse.bce && fuse.pairs && source.is_none())
            .then(|| bce_epilogue(&ops[i..], fuse.bce_split))
            .flatten();
        let (mut low, at) = match bce {
            Some((d, bytes, tail)) => {
                slots[i] = bytes;
                plan.push((i, d));
                let mut low = lower(&ops[i + 3], ops.get(i + 4), fuse);
                with_loss_tail(&mut low, tail);
                (low, i + 3)
            }
            None => (lower(&ops[i], ops.get(i + 1), fuse), i),
        };
        let mut bytes = std::mem::take(&mut low.bytes);
        if let Some((src, _)) = source.take() {
            // (only BCE and reparameterisation ops read split sums here: their params
            // end before byte 64)
            debug_assert!(bytes.len() <= SPLIT_SOURCE_AT);
            bytes.resize(SPLIT_SOURCE_AT, 0);
            bytes.extend_from_slice(bytemuck::bytes_of(&src));
        }
        slots[at] = bytes;
        let after = at + low.used;
        if let (true, Some((q, e, c))) = (fuse.reduces, low.reduce) {
            if absorbs(&ops[after..], &q, e, c, fuse.latent) {
                let reduce = low.dispatches.pop();
                debug_assert!(matches!(reduce, Some((Kernel::MatmulReduce, ..))));
                let src = SplitSource {
                    splits: q.splits,
                    m: q.m,
                    n: q.n,
                    flags: q.flags,
                    e_off: q.e_off,
                    e_si: q.e_si,
                    _pad: [0; 2],
                };
                source = Some((src, e));
            }
        }
        plan.extend(low.dispatches.into_iter().map(|d| (at, d)));
        i = after;
    }
    if fuse.tail_fc1 && fuse.adam && fuse.latent && fuse.latent_fc1 {
        tail_into_fc1(&mut plan, &mut slots);
    }
    (plan, slots)
}

/// A product `q` (its split count chosen) as `kernel` with resources `res`: one
/// workgroup per 32×32 tile and K share, then its split-K reduce if it is split
/// (epilogue operand `e`, output `c`).
fn product_dispatches(
    kernel: Kernel,
    res: Vec<Res>,
    q: &MatmulParams,
    e: Buf,
    c: Buf,
) -> Vec<Dispatch> {
    let grid = (q.n.div_ceil(32).max(1), q.m.div_ceil(32).max(1), q.splits);
    let mut d = vec![(kernel, res, grid)];
    if q.splits > 1 {
        d.push(reduce_dispatch(q, e, c));
    }
    d
}

/// The reduce dispatch after a split product `q` (epilogue operand `e`, output `c`).
fn reduce_dispatch(q: &MatmulParams, e: Buf, c: Buf) -> Dispatch {
    let (x, y) = groups_1d(((q.m * q.n) as usize).div_ceil(256));
    (
        Kernel::MatmulReduce,
        vec![Res::Partial, Res::F(e), Res::F(c), Res::F(c)],
        (x, y, 1),
    )
}

/// The dispatches of one op and the parameter bytes they read.
fn lower_one(op: &Op) -> (Vec<Dispatch>, Vec<u8>) {
    use bytemuck::bytes_of;
    use Buf::*;
    let f = Res::F;
    let one =
        |k, res, (x, y): (u32, u32), bytes: &[u8]| (vec![(k, res, (x, y, 1))], bytes.to_vec());
    match op {
        Op::Gather(p) => one(
            Kernel::Gather,
            vec![Res::Data, Res::Idx, f(X)],
            groups_1d((p.rows * p.d).div_ceil(256) as usize),
            bytes_of(p),
        ),
        Op::Matmul { a, b, e, c, p } => {
            let mut q = *p;
            q.splits = choose_splits(p);
            let res = vec![f(*a), f(*b), f(*e), f(*c), Res::Partial, f(*c), f(*a)];
            let d = product_dispatches(Kernel::Matmul, res, &q, *e, *c);
            (d, bytes_of(&q).to_vec())
        }
        Op::ReparamForward(p) => one(
            Kernel::ReparamForward,
            vec![
                f(Head),
                f(Z),
                f(Eps),
                f(Kl),
                f(LogPq),
                Res::Partial,
                f(Params),
            ],
            (p.images.max(1), 1),
            bytes_of(p),
        ),
        Op::ReparamBackward(p) => one(
            Kernel::ReparamBackward,
            vec![f(Dz), f(Eps), f(Head), f(Dhead), Res::Partial, f(Params)],
            groups_1d(((p.images * p.l) as usize).div_ceil(64)),
            bytes_of(p),
        ),
        Op::Bce(p) => one(
            Kernel::Bce,
            vec![
                f(X),
                f(Logits),
                f(Bce),
                f(Kl),
                f(SampleLoss),
                Res::Partial,
                f(Params),
            ],
            (p.rows.max(1), 1),
            bytes_of(p),
        ),
        Op::Loss(p) => one(
            Kernel::Loss,
            vec![f(Bce), f(Kl), f(SampleLoss), f(BatchLoss), f(LogPq)],
            (1, 1),
            bytes_of(p),
        ),
        Op::Adam(p) => one(
            Kernel::Adam,
            vec![f(Params), f(Grads), f(AdamM), f(AdamV)],
            groups_1d((p.n as usize).div_ceil(256)),
            bytes_of(p),
        ),
    }
}

/// Last-block counters (u32) and f32 shares of the head or dz that `ops` may need:
/// for every BCE, the tiles of the product before it (`matmul_bce`); for every
/// product into H1 or Dh3, its tiles and row bands, and its column tiles' shares of
/// a head or dz of up to 64 outputs per row (`matmul_latent`,
/// `matmul_pair_latent`).
pub(super) fn last_block_len(ops: &[Op]) -> (usize, usize) {
    let tiles = |m: u32, n: u32| (m.div_ceil(32) as usize, n.div_ceil(32) as usize);
    ops.iter()
        .map(|op| match op {
            Op::Bce(p) => {
                let (rows, cols) = tiles(p.rows, p.d);
                (rows * cols, 0)
            }
            Op::Matmul {
                c: Buf::H1 | Buf::Dh3,
                p,
                ..
            } => {
                let (rows, cols) = tiles(p.m, p.n);
                (cols * rows + rows, cols * p.m as usize * 64)
            }
            _ => (0, 0),
        })
        .fold((0, 0), |a, b| (a.0.max(b.0), a.1.max(b.1)))
}

/// f32 elements of the BCE's row shares that `ops` may need (`matmul_bce`).
pub(super) fn rowloss_len(ops: &[Op]) -> usize {
    ops.iter()
        .map(|op| match op {
            Op::Bce(p) => (p.rows * p.d.div_ceil(32)) as usize,
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

/// f32 elements of split-K scratch that `ops` need.
pub(super) fn partial_len(ops: &[Op]) -> usize {
    ops.iter()
        .map(|op| match op {
            Op::Matmul { p, .. } => {
                let s = choose_splits(p);
                if s > 1 {
                    (s * p.m * p.n) as usize
                } else {
                    0
                }
            }
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}
