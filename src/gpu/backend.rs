//! `GpuBackend`: the buffers of [`Buf`] as wgpu storage buffers, the image store
//! resident on the GPU as packed bytes, and `run`, which records every op of an
//! epoch (all steps) into one command encoder and one compute pass. Each op reads
//! its parameters from its own 256-byte slot of one uniform buffer (dynamic
//! offset), written once per `run`; bind groups are created once and cached.
//! `run_timed` (for `vae-ood bench`) records the same pass with timestamps written
//! between the dispatches of chosen ops, into a query set kept across calls.

use super::context::{GpuContext, GpuOptions, Kernel, UNIFORM_BYTES};
use crate::backend::{Backend, Pending, PendingRead};
use crate::cpu::matmul::{MatmulParams, MM_BIAS, MM_BIASGRAD, MM_MASK, MM_RELU};
use crate::cpu::{AdamParams, ReparamParams, LOSS_ELBO, NO_SLOT};
use crate::plan::{Buf, Op, Sizes};
use anyhow::{anyhow, ensure, Result};
use std::collections::HashMap;
use std::ops::Range;

/// A resource a kernel binds: one of the f32 buffers, the image store or the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Res {
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

pub struct GpuBackend {
    ctx: GpuContext,
    sizes: Sizes,
    bufs: Vec<wgpu::Buffer>,
    data: wgpu::Buffer,
    idx: wgpu::Buffer,
    uniforms: wgpu::Buffer,
    uniform_bg: wgpu::BindGroup,
    partial: wgpu::Buffer,
    rowloss: wgpu::Buffer,
    counts: wgpu::Buffer,
    head_parts: wgpu::Buffer,
    slots: usize,
    stride: usize,
    bind_group_index: HashMap<(Kernel, Vec<Res>), usize>,
    bind_groups: Vec<wgpu::BindGroup>,
    /// timestamp query set and its readback buffers, created on first `run_timed`
    timing: Option<Timing>,
    /// ops in a run's first submission (0: the whole run in one); see [`Self::record`]
    submit_chunk: usize,
    /// whole images in the store: the bound on every image number in `idx`
    images: usize,
    /// entries of `idx`
    idx_len: usize,
    /// the GPU fusions ([`Fusions`]): ops run two to a dispatch (a layer's input
    /// and weight gradients, [`pairable`]; a step's Adam with the next step's
    /// gather; a training step's BCE with its loss), and split-K reduces folded
    /// into the kernel that reads the product ([`absorbs`])
    fusions: Fusions,
}

/// A query set of `len` timestamps, the buffer it resolves into and a mappable copy.
struct Timing {
    len: u32,
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    staging: wgpu::Buffer,
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
fn split_target() -> u32 {
    static TARGET: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *TARGET.get_or_init(|| {
        crate::knobs::number(crate::knobs::SPLIT_TARGET, 1..=65_536)
            .map_or(SPLIT_TARGET, |v| v as u32)
    })
}

/// The default workgroup count split-K products aim for.
pub const SPLIT_TARGET: u32 = 256;

/// One dispatch: kernel, bound resources (in `Kernel::bindings` order), workgroups.
type Dispatch = (Kernel, Vec<Res>, (u32, u32, u32));

/// Output tiles of a product (its workgroups before K is split).
fn tiles(p: &MatmulParams) -> u32 {
    p.n.div_ceil(32).max(1) * p.m.div_ceil(32).max(1)
}

/// Workgroups of a `matmul_pair` dispatch of products `p0` (split as
/// [`choose_splits`] says) and `p1` (never split): one per tile and K share.
fn pair_groups(p0: &MatmulParams, p1: &MatmulParams) -> u32 {
    tiles(p0) * choose_splits(p0) + tiles(p1)
}

/// Whether `first` and `second` can run as one `matmul_pair` dispatch: a layer's
/// input gradient and then its weight gradient, as `plan::backward_ops` lists them
/// (they share A), or two independent products such as two layers' weight
/// gradients. The second reads no bias or mask (its B takes the pair's `e`
/// binding, which must then be the first's mask or unused), has no K split, and
/// neither reads what the other writes; where both write one buffer (two weight
/// gradients into Grads) their regions, bias gradients included, do not overlap;
/// their tiles fit one dispatch row (≤ 65,535 workgroups). Returns the buffer
/// bound at `e`.
fn pairable(first: &Op, second: &Op) -> Option<Buf> {
    let (
        Op::Matmul {
            a: a0,
            b: b0,
            e: e0,
            c: c0,
            p: p0,
        },
        Op::Matmul {
            a: a1,
            b: b1,
            c: c1,
            p: p1,
            ..
        },
    ) = (first, second)
    else {
        return None;
    };
    let reads_e0 = p0.flags & (MM_BIAS | MM_MASK) != 0;
    let ok = p1.flags & (MM_BIAS | MM_MASK) == 0
        && choose_splits(p1) == 1
        && pair_groups(p0, p1) <= 65_535
        && (!reads_e0 || e0 == b1)
        && ![*a1, *b1].contains(c0)
        && (c0 != c1 || disjoint(&written(p0), &written(p1)))
        && ![*a0, *b0].contains(c1)
        && !(reads_e0 && e0 == c1);
    ok.then_some(*b1)
}

/// The element ranges of its output buffer a product writes: C's span, and the
/// bias gradient's with MM_BIASGRAD.
fn written(p: &MatmulParams) -> Vec<Range<u64>> {
    let (m, n) = (p.m as u64, p.n as u64);
    if m == 0 || n == 0 {
        return Vec::new();
    }
    let c0 = p.c_off as u64;
    let mut r = Vec::with_capacity(2);
    r.push(c0..c0 + (m - 1) * p.c_si as u64 + n);
    if p.flags & MM_BIASGRAD != 0 {
        r.push(p.e_off as u64..p.e_off as u64 + m);
    }
    r
}

fn disjoint(x: &[Range<u64>], y: &[Range<u64>]) -> bool {
    x.iter()
        .all(|a| y.iter().all(|b| a.end <= b.start || b.end <= a.start))
}

/// Three products as one `matmul_triple` dispatch, and the uniform bytes of its
/// slot (the three params), where they may run side by side in any order: each
/// reads no bias or mask (the triple's bindings hold only their A and B), none
/// is split, all three write one buffer in pairwise disjoint regions (bias
/// gradients included) that none of them reads, and their tiles fit one dispatch
/// row. Three layers' weight gradients are such products. With `adam` (the op
/// after the three) an Adam step that [`triple_adam`] allows, the dispatch is a
/// `matmul_triple_adam` that runs it too, and the flag returned is true. With
/// `tail_away` (the parameter ranges the dispatch before the triple reads, which
/// offers to run the tail, and the most parameters it can take), a non-empty tail
/// disjoint from them and no longer is left out of the triple and returned with
/// Adam's params, for that dispatch to update.
fn triple(
    ops: [&Op; 3],
    adam: Option<&Op>,
    tail_away: Option<(&[Range<u64>], u32)>,
) -> Option<(Dispatch, Vec<u8>, bool, Option<MovedTail>)> {
    let mut ab = Vec::with_capacity(3);
    let mut qs = Vec::with_capacity(3);
    let mut out = None;
    for op in ops {
        let Op::Matmul { a, b, c, p, .. } = *op else {
            return None;
        };
        if p.flags & (MM_BIAS | MM_MASK) != 0 || choose_splits(&p) != 1 {
            return None;
        }
        if *out.get_or_insert(c) != c {
            return None;
        }
        ab.push((a, b));
        let mut q = p;
        q.splits = 1;
        qs.push(q);
    }
    let c = out?;
    let regions: Vec<Vec<Range<u64>>> = qs.iter().map(written).collect();
    let groups: u32 = qs.iter().map(tiles).sum();
    let ok = ab.iter().all(|&(a, b)| a != c && b != c)
        && disjoint(&regions[0], &regions[1])
        && disjoint(&regions[0], &regions[2])
        && disjoint(&regions[1], &regions[2])
        && groups <= 65_535;
    if !ok {
        return None;
    }
    let f = Res::F;
    let mut res = vec![
        f(ab[0].0),
        f(ab[0].1),
        f(ab[1].1),
        f(c),
        Res::Partial,
        f(c),
        f(ab[1].0),
        f(ab[2].0),
        f(ab[2].1),
    ];
    let mut bytes: Vec<u8> = qs.iter().flat_map(bytemuck::bytes_of).copied().collect();
    let reads: Vec<Buf> = ab.iter().flat_map(|&(a, b)| [a, b]).collect();
    if let Some((pa, tail)) = adam.and_then(|op| triple_adam(op, c, &reads, &qs, &regions)) {
        let away = tail_away.filter(|&(reads, most)| {
            let t = tail.start as u64..tail.end as u64;
            !t.is_empty()
                && t.end - t.start <= most as u64
                && disjoint(std::slice::from_ref(&t), reads)
        });
        let (kept, moved) = match away {
            Some(_) => (tail.end..tail.end, Some((pa, tail))),
            None => (tail, None),
        };
        let tail_groups = (kept.end - kept.start).div_ceil(ADAM_TAIL_PER_GROUP);
        if groups + tail_groups <= 65_535 {
            res.extend([f(Buf::Params), f(Buf::AdamM), f(Buf::AdamV)]);
            bytes.extend_from_slice(bytemuck::bytes_of(&pa));
            bytes.extend_from_slice(bytemuck::bytes_of(&[kept.start, kept.end, 0, 0]));
            let d = (Kernel::MatmulTripleAdam, res, (groups + tail_groups, 1, 1));
            return Some((d, bytes, true, moved));
        }
    }
    Some((
        (Kernel::MatmulTriple, res, (groups, 1, 1)),
        bytes,
        false,
        None,
    ))
}

/// A triple's Adam tail run elsewhere ([`triple`]'s `tail_away`): Adam's params
/// and the parameters of the tail.
type MovedTail = (AdamParams, Range<u32>);

/// Parameters `latent_backward_adam` updates per workgroup after the images'
/// (`latent_adam.wgsl`'s TAIL_PER_GROUP).
const LATENT_ADAM_PER_GROUP: u32 = 1024;

/// Byte offset of the Adam step and its tail in a latent kernel's slot (after the
/// [`SplitSource`]).
const LATENT_ADAM_AT: usize = LATENT_SPLIT_SOURCE_AT + 32;

/// The elements of B a product reads, as one span (from its first to its last).
fn b_span(q: &MatmulParams) -> Range<u64> {
    let last = q.b_off as u64
        + (q.k.max(1) as u64 - 1) * q.b_sp as u64
        + (q.n.max(1) as u64 - 1) * q.b_sj as u64;
    q.b_off as u64..last + 1
}

/// Parameters `matmul_triple_adam` updates per workgroup after the triple's tiles
/// (`matmul_adam.wgsl`'s TAIL_PER_GROUP).
const ADAM_TAIL_PER_GROUP: u32 = 1024;

/// Whether a triple's products `qs` (writing `regions` of `c`, reading `reads`)
/// and `op`, the Adam step after them, can run as one `matmul_triple_adam`: `op`
/// is Adam over n parameters, `c` is the gradients it reads, no product reads the
/// parameters or the moments, each writes its C densely (row stride n, so that
/// the region it writes is every element of its span), and the parameters the
/// products do not write form one range (the tail, possibly empty). Returns
/// Adam's params and the tail.
fn triple_adam(
    op: &Op,
    c: Buf,
    reads: &[Buf],
    qs: &[MatmulParams],
    regions: &[Vec<Range<u64>>],
) -> Option<(AdamParams, Range<u32>)> {
    let Op::Adam(pa) = *op else {
        return None;
    };
    let moments = [Buf::Params, Buf::AdamM, Buf::AdamV];
    if c != Buf::Grads
        || reads.iter().any(|b| moments.contains(b))
        || qs.iter().any(|q| q.c_si != q.n)
    {
        return None;
    }
    let mut spans: Vec<Range<u64>> = regions.iter().flatten().cloned().collect();
    spans.sort_by_key(|r| r.start);
    // the gaps in [0, n) between the spans (which are disjoint): at most one
    let n = pa.n as u64;
    let mut gaps = Vec::new();
    let mut at = 0;
    for r in &spans {
        if r.end > n {
            return None;
        }
        if r.start > at {
            gaps.push(at..r.start);
        }
        at = r.end;
    }
    if n > at {
        gaps.push(at..n);
    }
    let tail = match gaps.as_slice() {
        [] => 0..0,
        [g] => g.start as u32..g.end as u32,
        _ => return None,
    };
    Some((pa, tail))
}

/// A batch's gather and the product after it that reads the gathered x as its
/// whole A (dense rows of d pixels from offset 0, every row: the encoder's first
/// product) as one `matmul_gather` dispatch, then the product's split-K reduce
/// if it is split. The slot holds the product's params and, at
/// [`GATHER_IDX_AT`], the gather's first index entry.
fn gather_product(op: &Op, next: &Op) -> Option<Lowered> {
    let (
        Op::Gather(g),
        Op::Matmul {
            a: Buf::X,
            b,
            e,
            c,
            p,
        },
    ) = (op, next)
    else {
        return None;
    };
    let ok = g.rows > 0
        && p.m == g.rows
        && p.k == g.d
        && p.n > 0
        && p.a_off == 0
        && p.a_si == g.d
        && p.a_sp == 1
        && ![*b, *e, *c].contains(&Buf::X);
    if !ok {
        return None;
    }
    let f = Res::F;
    let mut q = *p;
    q.splits = choose_splits(p);
    let res = vec![
        f(*b),
        f(*e),
        f(*c),
        Res::Partial,
        f(*c),
        Res::Data,
        Res::Idx,
        f(Buf::X),
    ];
    let dispatches = product_dispatches(Kernel::MatmulGather, res, &q, *e, *c);
    let mut bytes = bytemuck::bytes_of(&q).to_vec();
    bytes.resize(GATHER_IDX_AT, 0);
    bytes.extend_from_slice(bytemuck::bytes_of(&[g.idx_off, 0, 0, 0]));
    Some(Lowered {
        dispatches,
        bytes,
        used: 2,
        reduce: (q.splits > 1).then_some((q, *e, *c)),
    })
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

/// With [`Fusions::latent_fc1`]: the latent forward `ops[i..i + 3]` (the head
/// product, the reparameterisation, fc3's product: `g`, reading the split sums
/// `src` of the product before it, if split) folded into that product, op i − 1
/// and the last dispatch of `plan`, as one `matmul_latent`
/// (`shaders/matmul_latent.wgsl`) — or, where the batch's gather runs in that
/// product (`matmul_gather`, ops i − 2 and i − 1: [`gather_product`]), one
/// `matmul_gather_latent` — where it is fc1's: a bias-and-ReLU product of B rows
/// written densely into H1 from the parameters, read whole by the head product;
/// one draw per image, 2L ≤ 64. Its slot holds fc1's, the head's and fc3's
/// products and the reparameterisation, whose second half follows the gather's
/// first index entry (0 without a gather) at [`GATHER_IDX_AT`]. Returns whether it
/// did.
fn latent_into_fc1(
    plan: &mut [(usize, Dispatch)],
    slots: &mut [Vec<u8>],
    ops: &[Op],
    i: usize,
    g: &Group,
    src: Option<(SplitSource, Buf)>,
) -> bool {
    use bytemuck::bytes_of;
    let [(_, (Kernel::LatentForward, ..))] = &g.dispatches[..] else {
        return false;
    };
    let [Op::Matmul { p: qh, .. }, Op::ReparamForward(rp), Op::Matmul { p: qd, .. }, ..] =
        &ops[i..]
    else {
        return false;
    };
    let Some((at, (kernel, res, grid))) = plan.last_mut() else {
        return false;
    };
    let f = Res::F;
    // the product alone (op i − 1), or with the gather before it (ops i − 2, i − 1:
    // gather_product)
    let gather = *kernel == Kernel::MatmulGather;
    let fits = match *kernel {
        Kernel::Matmul => {
            *at + 1 == i
                && res[..4] == [f(Buf::X), f(Buf::Params), f(Buf::Params), f(Buf::H1)]
                && slots[*at].len() == 64
        }
        Kernel::MatmulGather => {
            *at + 2 == i
                && res[..3] == [f(Buf::Params), f(Buf::Params), f(Buf::H1)]
                && slots[*at].len() == GATHER_IDX_AT + 16
        }
        _ => false,
    };
    if !fits {
        return false;
    }
    let q1: MatmulParams = *bytemuck::from_bytes(&slots[*at][..64]);
    // (split: its sums are what the latent kernel would read; unsplit: no reduce
    // between)
    let splits = src.map_or(1, |(s, _)| s.splits);
    let ok = q1.splits.max(1) == splits
        && grid.2 == splits
        && q1.flags == MM_BIAS | MM_RELU
        && dense_c(&q1, q1.n)
        && dense_a(qh, q1.n)
        && q1.m == rp.images
        && rp.draws == 1
        && 2 * rp.l <= 64
        && qh.n == 2 * rp.l;
    if !ok {
        return false;
    }
    *kernel = if gather {
        Kernel::MatmulGatherLatent
    } else {
        Kernel::MatmulLatent
    };
    res.extend([
        f(Buf::Head),
        f(Buf::Eps),
        f(Buf::Z),
        f(Buf::Kl),
        f(Buf::LogPq),
        f(Buf::H3),
        Res::Counts,
        Res::HeadParts,
    ]);
    let bytes = &mut slots[*at];
    let idx: [u8; 4] = if gather {
        bytes[GATHER_IDX_AT..GATHER_IDX_AT + 4]
            .try_into()
            .expect("the index entry")
    } else {
        [0; 4]
    };
    bytes.truncate(64);
    bytes.extend_from_slice(bytes_of(qh));
    bytes.extend_from_slice(bytes_of(qd));
    bytes.resize(SLOT_TAIL_AT, 0);
    bytes.extend_from_slice(bytes_of(&[rp.images, rp.l, rp.draws, rp.seed]));
    bytes.extend_from_slice(&idx);
    bytes.extend_from_slice(bytes_of(&[rp.stream, rp.row_base, rp.eps_given]));
    true
}

/// With [`Fusions::latent_pair`]: the latent backward `ops[i..i + 4]` (fc3's input
/// gradient, its weight gradient — which the group `g` runs after, in its own
/// dispatch or the triple —, the reparameterisation backward, the head's input
/// gradient; `g`'s first dispatch a plain `latent_backward`, reading the split
/// sums `src` of the product before it, if split) folded into fc4's gradient pair
/// before it, ops i − 2 and i − 1 and the last dispatch of `plan`, as one
/// `matmul_pair_latent` (`shaders/matmul_latent_backward.wgsl`) where the pair's
/// input gradient is what fc3's reads: its product, from the parameters, written
/// densely into Dh3 and read whole; one draw per image, L ≤ 32. The pair's slot
/// keeps its two products and its loss tail (`matmul_pair_loss`'s, or none), and
/// gets the head's input gradient as its third product and fc3's weights (offset,
/// strides) and L at [`GATHER_IDX_AT`]. Returns whether it did.
fn latent_into_pair(
    plan: &mut [(usize, Dispatch)],
    slots: &mut [Vec<u8>],
    ops: &[Op],
    i: usize,
    g: &Group,
    src: Option<(SplitSource, Buf)>,
) -> bool {
    use bytemuck::bytes_of;
    let [(_, (Kernel::LatentBackward, ..)), ..] = &g.dispatches[..] else {
        return false;
    };
    let [Op::Matmul { p: qz, .. }, _, Op::ReparamBackward(rp), Op::Matmul { p: qx, .. }, ..] =
        &ops[i..]
    else {
        return false;
    };
    let Some((at, (kernel, res, _))) = plan.last_mut() else {
        return false;
    };
    let f = Res::F;
    let loss = *kernel == Kernel::MatmulPairLoss;
    let want = if loss { SLOT_TAIL_AT + 16 } else { 128 };
    if *at + 2 != i
        || !matches!(*kernel, Kernel::MatmulPair | Kernel::MatmulPairLoss)
        || res[1] != f(Buf::Params)
        || res[3] != f(Buf::Dh3)
        || slots[*at].len() != want
    {
        return false;
    }
    let q0: MatmulParams = *bytemuck::from_bytes(&slots[*at][..64]);
    // (split: its sums are what the latent kernel would read, the reduce folded
    // into it; unsplit: no reduce between)
    let splits = src.map_or(1, |(s, _)| s.splits);
    let ok = q0.splits.max(1) == splits
        && dense_c(&q0, q0.n)
        && dense_a(qz, q0.n)
        && q0.m == rp.images
        && rp.draws == 1
        && rp.l <= 32
        && qz.n == rp.l
        && qx.k == 2 * rp.l;
    if !ok {
        return false;
    }
    *kernel = Kernel::MatmulPairLatent;
    if !loss {
        // (named by the loss's code, unread without a loss tail)
        res.extend([Res::RowLoss, f(Buf::Kl), f(Buf::Bce), f(Buf::SampleLoss)]);
    }
    res.extend([
        Res::Counts,
        Res::HeadParts,
        f(Buf::Head),
        f(Buf::Eps),
        f(Buf::H1),
        f(Buf::Dz),
        f(Buf::Dhead),
        f(Buf::Dh1),
    ]);
    let bytes = &mut slots[*at];
    let tail: [u8; 16] = if loss {
        bytes[SLOT_TAIL_AT..].try_into().expect("the loss tail")
    } else {
        [0; 16]
    };
    bytes.truncate(128);
    bytes.extend_from_slice(bytes_of(qx));
    bytes.resize(SLOT_TAIL_AT, 0);
    bytes.extend_from_slice(&tail);
    debug_assert_eq!(bytes.len(), GATHER_IDX_AT);
    bytes.extend_from_slice(bytes_of(&[qz.b_off, qz.b_sp, qz.b_sj, rp.l]));
    true
}

/// Byte offset of the BCE kernel's loss output (on, out_off) in its uniform slot.
const BCE_LOSS_AT: usize = 32;

/// Byte offset of `Slot.tail` in a matmul kernel's uniform slot (after three
/// `MatmulParams` and an `AdamParams`): the triple's Adam tail, `matmul_bce`'s
/// (draws, write_grad, column tiles) and `matmul_pair_loss`'s (rows, column
/// tiles, out_off).
const SLOT_TAIL_AT: usize = 224;

/// A training step's decoder-output product, its BCE and its loss (`rest[0..3]`)
/// as one `matmul_bce` dispatch (`shaders/matmul_bce.wgsl`), where fc4's gradient
/// pair follows (`rest[3..5]`, [`pairable`]) to finish the loss in its extra
/// workgroups ([`with_loss_tail`]): the product is logits = A·B + bias (no other
/// epilogue), written densely into Logits, which it does not read, and read whole by
/// the BCE (with its gradient, one draw per row), whose loss is a training step's
/// (−ELBO, one draw, no batch sum); the pair touches none of the buffers the loss
/// tail reads or writes (the KL, the BCE, the per-image losses). The product runs
/// unsplit, or with `split` ([`Fusions::bce_split`]) split as [`choose_splits`]
/// says, the last of each tile's K shares finishing it (its counters in
/// `Res::Counts`). Returns its dispatch, its slot's bytes and the pair's loss
/// tail (rows, column tiles, out_off).
fn bce_epilogue(rest: &[Op], split: bool) -> Option<(Dispatch, Vec<u8>, [u32; 4])> {
    use bytemuck::bytes_of;
    let [Op::Matmul {
        a,
        b,
        e,
        c: Buf::Logits,
        p,
    }, Op::Bce(pb), Op::Loss(pl), dx @ Op::Matmul {
        a: xa,
        b: xb,
        e: xe,
        c: xc,
        p: px,
    }, dw @ Op::Matmul {
        a: wa,
        b: wb,
        e: we,
        c: wc,
        p: pw,
    }, ..] = rest
    else {
        return None;
    };
    let mut q = *p;
    q.splits = if split { choose_splits(p) } else { 1 };
    let col_tiles = q.n.div_ceil(32);
    let loss_groups = pb.rows.div_ceil(256);
    let loss_bufs = [Buf::Kl, Buf::Bce, Buf::SampleLoss];
    let ok = q.flags == MM_BIAS
        && dense_c(&q, q.n)
        && ![a, b, e].contains(&&Buf::Logits)
        && q.m == pb.rows
        && q.n == pb.d
        && q.m.div_ceil(32) <= 65_535
        && pb.write_grad == 1
        && pb.draws == 1
        && pl.mode == LOSS_ELBO
        && pl.slot == NO_SLOT
        && pl.draws == 1
        && pl.images == pb.rows
        && pairable(dx, dw).is_some()
        && pair_groups(px, pw) + loss_groups <= 65_535
        && ![xa, xb, xe, xc, wa, wb, we, wc]
            .iter()
            .any(|b| loss_bufs.contains(b));
    if !ok {
        return None;
    }
    let f = Res::F;
    let res = vec![
        f(*a),
        f(*b),
        f(*e),
        f(Buf::Logits),
        Res::Partial,
        f(Buf::Logits),
        f(*a),
        f(Buf::X),
        Res::RowLoss,
        Res::Counts,
    ];
    let d = (
        Kernel::MatmulBce,
        res,
        (col_tiles, q.m.div_ceil(32), q.splits),
    );
    let mut bytes = bytes_of(&q).to_vec();
    bytes.resize(SLOT_TAIL_AT, 0);
    bytes.extend_from_slice(bytes_of(&[pb.draws, pb.write_grad, col_tiles, 0]));
    Some((d, bytes, [pb.rows, col_tiles, pl.out_off, 0]))
}

/// fc4's gradient pair `low` (lowered by [`lower`]) as `matmul_pair_loss`: the
/// loss `tail` (rows, column tiles, out_off) that [`bce_epilogue`] left finished in
/// extra workgroups, one row per thread.
fn with_loss_tail(low: &mut Lowered, tail: [u32; 4]) {
    let (k, res, groups) = &mut low.dispatches[0];
    assert_eq!(
        *k,
        Kernel::MatmulPair,
        "bce_epilogue matches only before a pair"
    );
    *k = Kernel::MatmulPairLoss;
    let f = Res::F;
    res.extend([Res::RowLoss, f(Buf::Kl), f(Buf::Bce), f(Buf::SampleLoss)]);
    groups.0 += tail[0].div_ceil(256);
    low.bytes.resize(SLOT_TAIL_AT, 0);
    low.bytes.extend_from_slice(bytemuck::bytes_of(&tail));
}

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
    /// needs `pairs`): one dispatch fewer per step. Off by default
    /// (`VAE_OOD_GPU_BCE_EPILOGUE=1`): not yet timed on a GPU; it sums each
    /// row's BCE in another order than the BCE kernel
    pub bce: bool,
    /// with `bce`: the decoder-output product split over K as it is without the
    /// epilogue, the last of each output tile's K shares to store its partial
    /// sums adding them up and running the epilogue (`shaders/matmul_bce.wgsl`,
    /// `last_split`): the same logits and gradients as the split product and the
    /// BCE kernel, bit for bit, without the unsplit product's longer K walk (its
    /// partial sums atomics: `shaders/matmul_partial_atomic.wgsl`). Off by
    /// default (`VAE_OOD_GPU_BCE_SPLIT=1`): not yet timed on a GPU
    pub bce_split: bool,
    /// with `latent`: a training step's latent forward (the head product, the
    /// reparameterisation, fc3's product) in the last workgroups of fc1's split
    /// product (`matmul_latent`, [`latent_into_fc1`]): one dispatch fewer per
    /// step. Off by default (`VAE_OOD_GPU_LATENT_FC1=1`): not yet timed on a GPU;
    /// it sums the head in another order than the latent kernel
    pub latent_fc1: bool,
    /// with `latent` and `pairs`: a training step's latent backward (fc3's input
    /// gradient, the reparameterisation backward, the head's input gradient) in
    /// the last workgroups of fc4's gradient pair, which finishes its input
    /// gradient's tiles itself (`matmul_pair_latent`, [`latent_into_pair`]): one
    /// dispatch fewer per step. Off by default (`VAE_OOD_GPU_LATENT_PAIR=1`): not
    /// yet timed on a GPU; it sums dz in another order than the latent kernel
    pub latent_pair: bool,
}

impl Fusions {
    /// The default: all on but Adam in the triple (see [`Fusions::adam`]) and
    /// the BCE epilogue ([`Fusions::bce`]).
    pub const DEFAULT: Fusions = Fusions {
        adam: false,
        ..Fusions::ALL
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
            bce: (crate::knobs::flag(crate::knobs::GPU_BCE_EPILOGUE)
                || crate::knobs::flag(crate::knobs::GPU_BCE_SPLIT))
                && !crate::knobs::flag(crate::knobs::GPU_UNFUSED),
            bce_split: crate::knobs::flag(crate::knobs::GPU_BCE_SPLIT),
            latent_fc1: crate::knobs::flag(crate::knobs::GPU_LATENT_FC1),
            latent_pair: crate::knobs::flag(crate::knobs::GPU_LATENT_PAIR),
        }
    }

    /// In words for `describe` ("" for [`Fusions::DEFAULT`]).
    fn note(self) -> String {
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
        let mut extra = match (self.adam, self.adam && tail_in_latent) {
            (true, true) => ", Adam in the triple (its tail in the latent backward)",
            (true, false) => ", Adam in the triple",
            _ => "",
        }
        .to_string();
        if self.latent && self.latent_fc1 {
            extra.push_str(", the latent forward in fc1's product");
        }
        if self.latent && self.pairs && self.latent_pair {
            extra.push_str(", the latent backward in fc4's gradient pair");
        }
        if self.bce {
            extra.push_str(if self.bce_split {
                ", BCE in fc4's epilogue (split K, the last share finishing each tile)"
            } else {
                ", BCE in fc4's epilogue"
            });
        }
        match off.len() {
            0 => extra,
            5 => ", unfused".to_string(),
            _ => format!(", no {}{extra}", off.join(", no ")),
        }
    }
}

/// The most hidden units (`latent.wgsl`'s HMAX) and latents (LMAX) the fused
/// latent kernels hold in workgroup memory; larger models run unfused.
pub const MAX_HIDDEN: u32 = 1024;
pub const MAX_LATENT: u32 = 64;

/// Ops lowered together out of order: dispatches, each with the offset of the op
/// whose uniform slot it reads, the bytes of those slots (by offset), and how many
/// ops are covered.
struct Group {
    dispatches: Vec<(usize, Dispatch)>,
    slots: Vec<(usize, Vec<u8>)>,
    used: usize,
}

/// Whether `q` reads A as dense rows of `width` from offset 0 (the layout the
/// reparameterisation writes z and dhead in, which the fused kernels keep in
/// workgroup memory instead), or writes C so (where it reads head and dz).
fn dense_a(q: &MatmulParams, width: u32) -> bool {
    q.a_off == 0 && q.a_si == width && q.a_sp == 1 && q.k == width
}
fn dense_c(q: &MatmulParams, width: u32) -> bool {
    q.c_off == 0 && q.c_si == width && q.n == width
}

/// The products around the latent code as one dispatch per direction
/// (`shaders/latent.wgsl`), when `rest` starts with
/// - the forward run `plan::forward_ops` builds: the head product (H1 → Head, bias),
///   `ReparamForward`, the fc3 product (Z → H3, bias and ReLU): one
///   `latent_forward` in the head product's slot;
/// - or the backward run `plan::backward_ops` builds: fc3's input gradient (Dh3 →
///   Dz, no epilogue), fc3's weight gradient, `ReparamBackward`, the head's input
///   gradient (Dhead → Dh1, masked by H1): one `latent_backward` in the first slot,
///   then the weight gradient's own dispatches (it reads and writes nothing the
///   other three touch, so it may run after them) — or, with `join` (the triple
///   fusion on), the weight gradient and the next two ops (the head's and fc1's
///   weight gradients) as one `matmul_triple` in its slot where [`triple`] allows.
///
/// The images of a batch must fit one dispatch row and the model the kernels'
/// workgroup memory ([`MAX_HIDDEN`], [`MAX_LATENT`]: every row read or written
/// there, and every product's output count, at least 1 so that the kernels'
/// threads-per-output division has a divisor); rows are read and written
/// where the ops say, except the head, z, dz and dhead, which must be the dense
/// (B·K, width) layouts the reparameterisation uses.
fn lower_latent(
    rest: &[Op],
    src: Option<(SplitSource, Buf)>,
    join: bool,
    adam: bool,
    adam_here: bool,
) -> Option<Group> {
    use bytemuck::bytes_of;
    let f = Res::F;
    // the split product the first product's A row is read from (absorbs), and its
    // epilogue operand; otherwise unread bindings
    let (partial_e, src_bytes) = match src {
        Some((s, e)) => (f(e), bytes_of(&s).to_vec()),
        None => (f(Buf::Params), Vec::new()),
    };
    let fits = |p: &ReparamParams| {
        (1..=65_535).contains(&p.images) && (1..=MAX_LATENT).contains(&p.l) && p.draws >= 1
    };
    let only = |q: &MatmulParams, allowed: u32| q.flags & !allowed == 0;
    // a latent kernel over `images` workgroups, its eight buffers then the split sums
    let latent = |kernel: Kernel, bufs: [Buf; 8], images: u32| {
        let mut res: Vec<Res> = bufs.map(f).to_vec();
        res.extend([Res::Partial, partial_e]);
        (0, (kernel, res, (images, 1, 1)))
    };
    let slot = |q0: &MatmulParams, p: &ReparamParams, q1: &MatmulParams| {
        let mut bytes = bytes_of(q0).to_vec();
        bytes.extend_from_slice(bytes_of(p));
        bytes.extend_from_slice(bytes_of(q1));
        debug_assert_eq!(bytes.len(), LATENT_SPLIT_SOURCE_AT);
        bytes.extend_from_slice(&src_bytes);
        bytes
    };
    match rest {
        [Op::Matmul {
            a: Buf::H1,
            b: Buf::Params,
            e: Buf::Params,
            c: Buf::Head,
            p: qh,
        }, Op::ReparamForward(rp), Op::Matmul {
            a: Buf::Z,
            b: Buf::Params,
            e: Buf::Params,
            c: Buf::H3,
            p: qd,
        }, ..]
            if fits(rp)
                && only(qh, MM_BIAS | MM_RELU)
                && only(qd, MM_BIAS | MM_RELU)
                && qh.m == rp.images
                && qh.k <= MAX_HIDDEN
                && dense_c(qh, 2 * rp.l)
                && qd.m == rp.images * rp.draws
                && (1..=MAX_HIDDEN).contains(&qd.n)
                && dense_a(qd, rp.l) =>
        {
            use Buf::*;
            let bufs = [Params, H1, Head, Eps, Z, Kl, LogPq, H3];
            Some(Group {
                dispatches: vec![latent(Kernel::LatentForward, bufs, rp.images)],
                slots: vec![(0, slot(qh, rp, qd))],
                used: 3,
            })
        }
        [Op::Matmul {
            a: Buf::Dh3,
            b: Buf::Params,
            c: Buf::Dz,
            p: qz,
            ..
        }, dw @ Op::Matmul {
            a: wa,
            b: wb,
            e: we,
            c: wc,
            ..
        }, Op::ReparamBackward(rp), Op::Matmul {
            a: Buf::Dhead,
            b: Buf::Params,
            e: Buf::H1,
            c: Buf::Dh1,
            p: qx,
        }, ..]
            if fits(rp)
                && only(qz, 0)
                && only(qx, MM_MASK)
                && qz.m == rp.images * rp.draws
                && qz.k <= MAX_HIDDEN
                && dense_c(qz, rp.l)
                && qx.m == rp.images
                && (1..=MAX_HIDDEN).contains(&qx.n)
                && dense_a(qx, 2 * rp.l)
                && {
                    // the weight gradient moves after the fused three: it must not
                    // read what they write, nor write what they read or write
                    let written = [Buf::Dz, Buf::Dhead, Buf::Dh1];
                    let touched = [Buf::Params, Buf::H1, Buf::Head, Buf::Eps, Buf::Dh3];
                    ![wa, wb, we].iter().any(|b| written.contains(b))
                        && !written.contains(wc)
                        && !touched.contains(wc)
                } =>
        {
            use Buf::*;
            let bufs = [Params, H1, Head, Eps, Dh3, Dz, Dhead, Dh1];
            let mut dispatches = vec![latent(Kernel::LatentBackward, bufs, rp.images)];
            // with `join`, the weight gradient and the two ops after the four (the
            // head's and fc1's weight gradients) as one triple where they may be,
            // and with `adam` the step's Adam after them in it too
            // — whose tail, with `adam_here`, this kernel updates in extra workgroups
            // (`latent_backward_adam`) where it reads none of those parameters and
            // its split source's epilogue operand is not the parameters (which it
            // then binds read-write)
            if let (true, [_, _, _, _, o4, o5, ..]) = (join, rest) {
                let next = rest.get(6).filter(|_| adam);
                let reads = [b_span(qz), b_span(qx)];
                let here = adam_here && src.is_none_or(|(_, e)| e != Buf::Params);
                // (its workgroups after the images' stay within one dispatch row)
                let most = (65_535 - rp.images) * LATENT_ADAM_PER_GROUP;
                let away = here.then_some((&reads[..], most));
                if let Some((d, dw_bytes, with_adam, moved)) = triple([dw, o4, o5], next, away) {
                    let mut bytes = slot(qz, rp, qx);
                    if let Some((pa, tail)) = moved {
                        let (_, (kernel, res, groups)) = &mut dispatches[0];
                        *kernel = Kernel::LatentBackwardAdam;
                        if src.is_none() {
                            // (the unread epilogue binding: not the parameters,
                            // bound read-write here, but the gradients, read-only)
                            res[9] = f(Buf::Grads);
                        }
                        res.extend([f(Buf::Grads), f(Buf::AdamM), f(Buf::AdamV)]);
                        groups.0 += (tail.end - tail.start).div_ceil(LATENT_ADAM_PER_GROUP);
                        bytes.resize(LATENT_ADAM_AT, 0);
                        bytes.extend_from_slice(bytes_of(&pa));
                        bytes.extend_from_slice(bytes_of(&[tail.start, tail.end, 0, 0]));
                    }
                    dispatches.push((1, d));
                    return Some(Group {
                        dispatches,
                        slots: vec![(0, bytes), (1, dw_bytes)],
                        used: 6 + with_adam as usize,
                    });
                }
            }
            let (dw_dispatches, dw_bytes) = lower_one(dw);
            dispatches.extend(dw_dispatches.into_iter().map(|d| (1, d)));
            Some(Group {
                dispatches,
                slots: vec![(0, slot(qz, rp, qx)), (1, dw_bytes)],
                used: 4,
            })
        }
        _ => None,
    }
}

/// The whole lowering of `ops`: for each dispatch (uniform slot = op index,
/// kernel, resources, workgroups), and each op's uniform bytes (empty for an op
/// without a slot of its own). With `fuse.pairs`, a layer's gradient products run
/// as pairs; with `fuse.reduces`, a split-K reduce followed by a kernel that
/// [`absorbs`] it is dropped, that kernel reading the partial sums (a
/// [`SplitSource`] in its slot); with `fuse.latent`, the ops around the latent
/// code run as [`lower_latent`] groups them. Slots increase along the plan.
fn lower_all(ops: &[Op], fuse: Fusions) -> (Vec<(usize, Dispatch)>, Vec<Vec<u8>>) {
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
fn last_block_len(ops: &[Op]) -> (usize, usize) {
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
fn rowloss_len(ops: &[Op]) -> usize {
    ops.iter()
        .map(|op| match op {
            Op::Bce(p) => (p.rows * p.d.div_ceil(32)) as usize,
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

/// f32 elements of split-K scratch that `ops` need.
fn partial_len(ops: &[Op]) -> usize {
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

/// Ops in the first submission of a run unless `VAE_OOD_GPU_CHUNK` says otherwise
/// (0: one submission per run): about 8 training steps.
pub const SUBMIT_CHUNK_OPS: usize = 128;

fn submit_chunk_from_env() -> usize {
    crate::knobs::number(crate::knobs::GPU_CHUNK, 0..=1 << 24)
        .map_or(SUBMIT_CHUNK_OPS, |v| v as usize)
}

impl GpuBackend {
    /// Ops in a run's first submission; later ones double up to 8× that; 0 puts a
    /// whole run in one submission (the default is [`SUBMIT_CHUNK_OPS`], or
    /// `VAE_OOD_GPU_CHUNK`). The results do not depend on it (tested).
    pub fn set_submit_chunk(&mut self, ops: usize) {
        self.submit_chunk = ops;
    }

    /// Whether the bit-exact GPU fusions are on: a layer's input and weight
    /// gradients as one `matmul_pair` dispatch, a step's Adam and the next step's
    /// gather as one `adam_gather`, a training step's loss written by the BCE
    /// kernel, split-K reduces folded into the kernel that reads the product,
    /// three weight gradients as one `matmul_triple` where the device has it (with
    /// the step's Adam in it, `matmul_triple_adam`, where the device has that: on,
    /// this is every fusion, one more than [`Fusions::DEFAULT`]), and a gather in
    /// the loads of the product that reads it. The results do not depend on
    /// it, bit for bit (tested). The latent fusion and the BCE epilogue, which sum
    /// in another order, are left as they are ([`Self::set_fusions`]).
    pub fn set_fused(&mut self, on: bool) {
        self.fusions = Fusions {
            pairs: on,
            reduces: on,
            triple: on && self.ctx.has(Kernel::MatmulTriple),
            adam: on && self.ctx.has(Kernel::MatmulTripleAdam),
            latent_adam: on && self.ctx.has(Kernel::LatentBackwardAdam),
            gather: on,
            ..self.fusions
        };
    }

    /// Each GPU fusion on or off.
    /// (The latent fusion and the triple stay off on a device without their
    /// kernels, see `GpuContext::has`.)
    pub fn set_fusions(&mut self, f: Fusions) {
        let latent = [Kernel::LatentForward, Kernel::LatentBackward];
        self.fusions = Fusions {
            latent: f.latent && latent.iter().all(|&k| self.ctx.has(k)),
            triple: f.triple && self.ctx.has(Kernel::MatmulTriple),
            adam: f.adam && self.ctx.has(Kernel::MatmulTripleAdam),
            latent_adam: f.latent_adam && self.ctx.has(Kernel::LatentBackwardAdam),
            // (both kernels: fc1 reads the image store at a run's first step)
            latent_fc1: f.latent_fc1
                && [Kernel::MatmulLatent, Kernel::MatmulGatherLatent]
                    .iter()
                    .all(|&k| self.ctx.has(k)),
            latent_pair: f.latent_pair && self.ctx.has(Kernel::MatmulPairLatent),
            bce: f.bce
                && [Kernel::MatmulBce, Kernel::MatmulPairLoss]
                    .iter()
                    .all(|&k| self.ctx.has(k)),
            ..f
        };
    }

    /// How many dispatches `ops` take (pairs and split-K reduces counted).
    pub fn dispatches(&self, ops: &[Op]) -> usize {
        lower_all(ops, self.fusions).0.len()
    }

    /// The backend on `adapter`, options from the environment (`VAE_OOD_NO_SUBGROUPS`).
    pub fn new(adapter: wgpu::Adapter, store: &[u8], idx_len: usize, sizes: Sizes) -> Result<Self> {
        Self::with_options(adapter, store, idx_len, sizes, GpuOptions::from_env())
    }

    /// [`GpuBackend::new`] with explicit options (tests run both reduction variants).
    pub fn with_options(
        adapter: wgpu::Adapter,
        store: &[u8],
        idx_len: usize,
        sizes: Sizes,
        opts: GpuOptions,
    ) -> Result<Self> {
        let words = crate::cpu::gather::pack_bytes(store);
        let largest = Buf::ALL
            .iter()
            .map(|b| b.len(&sizes) as u64 * 4)
            .chain([words.len() as u64 * 4, idx_len as u64 * 4])
            .max()
            .unwrap_or(4);
        let ctx = GpuContext::with_options(adapter, largest, opts)?;
        let dev = &ctx.device;
        let storage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
        let bufs = Buf::ALL
            .iter()
            .map(|b| {
                dev.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("{b:?}")),
                    size: (b.len(&sizes).max(1) * 4) as u64,
                    usage: storage,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let data = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("image store (packed bytes)"),
            size: (words.len().max(1) * 4) as u64,
            usage: storage,
            mapped_at_creation: false,
        });
        if !words.is_empty() {
            ctx.queue
                .write_buffer(&data, 0, bytemuck::cast_slice(&words));
        }
        let idx = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("index"),
            size: (idx_len.max(1) * 4) as u64,
            usage: storage,
            mapped_at_creation: false,
        });
        let stride = (ctx.device.limits().min_uniform_buffer_offset_alignment as usize)
            .max(UNIFORM_BYTES as usize);
        let (uniforms, uniform_bg) = Self::make_uniforms(&ctx, 1, stride);
        let partial = Self::make_scratch(&ctx, "split-K partial sums", 1);
        let rowloss = Self::make_scratch(&ctx, "row shares of the BCE", 1);
        let counts = Self::make_scratch(&ctx, "last-block counters", 1);
        let head_parts = Self::make_scratch(&ctx, "shares of the head", 1);
        let mut me = GpuBackend {
            ctx,
            sizes,
            bufs,
            data,
            idx,
            uniforms,
            uniform_bg,
            partial,
            rowloss,
            counts,
            head_parts,
            slots: 1,
            stride,
            bind_group_index: HashMap::new(),
            bind_groups: Vec::new(),
            timing: None,
            submit_chunk: submit_chunk_from_env(),
            images: store.len() / sizes.dims.d.max(1),
            idx_len,
            fusions: Fusions::NONE,
        };
        me.set_fusions(Fusions::from_env());
        me.ctx.check("buffer creation")?;
        Ok(me)
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    fn make_uniforms(
        ctx: &GpuContext,
        slots: usize,
        stride: usize,
    ) -> (wgpu::Buffer, wgpu::BindGroup) {
        let buf = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("op params"),
            size: (slots * stride) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bg = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("op params"),
            layout: &ctx.uniform_layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &buf,
                    offset: 0,
                    size: wgpu::BufferSize::new(UNIFORM_BYTES),
                }),
            }],
        });
        (buf, bg)
    }

    /// A GPU-only f32 buffer of `len` elements (at least one).
    fn make_scratch(ctx: &GpuContext, label: &str, len: usize) -> wgpu::Buffer {
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (len.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    }

    fn res(&self, r: Res) -> &wgpu::Buffer {
        match r {
            Res::F(b) => &self.bufs[b as usize],
            Res::Data => &self.data,
            Res::Idx => &self.idx,
            Res::Partial => &self.partial,
            Res::RowLoss => &self.rowloss,
            Res::Counts => &self.counts,
            Res::HeadParts => &self.head_parts,
        }
    }

    /// The cached bind group for (kernel, resources), created on first use.
    fn bind_group(&mut self, k: Kernel, res: &[Res]) -> usize {
        let key = (k, res.to_vec());
        if let Some(&i) = self.bind_group_index.get(&key) {
            return i;
        }
        let entries: Vec<wgpu::BindGroupEntry> = k
            .bindings()
            .iter()
            .zip(res)
            .map(|(&(binding, _), &r)| wgpu::BindGroupEntry {
                binding,
                resource: self.res(r).as_entire_binding(),
            })
            .collect();
        let bg = self
            .ctx
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(k.entry()),
                layout: self.ctx.layout(k),
                entries: &entries,
            });
        self.bind_groups.push(bg);
        self.bind_group_index
            .insert(key, self.bind_groups.len() - 1);
        self.bind_groups.len() - 1
    }

    fn make_timing(ctx: &GpuContext, len: u32) -> Timing {
        let bytes = len as u64 * 8;
        Timing {
            len,
            queries: ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("op timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: len,
            }),
            resolved: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("op timestamps resolved"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            staging: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("op timestamps readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        }
    }

    /// Record `ops` into one command encoder and one compute pass and submit. With
    /// `timed`, also write timestamps around the ops in `timed` (query 0 before the
    /// first dispatch of `ops[timed.start]`, query j + 1 after the last dispatch of
    /// `ops[timed.start + j]`) and resolve them into `timing`'s staging buffer.
    /// Returns the op of each dispatch recorded, in order.
    fn record(&mut self, ops: &[Op], timed: Option<Range<usize>>) -> Result<Vec<usize>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        // clear errors for bad plans, and what makes trusted shaders sound (see
        // build_pipeline)
        crate::plan::check_ops(ops, &self.sizes, self.idx_len)?;
        if ops.len() > self.slots {
            let slots = ops.len().next_power_of_two();
            let (u, bg) = Self::make_uniforms(&self.ctx, slots, self.stride);
            self.uniforms = u;
            self.uniform_bg = bg;
            self.slots = slots;
        }
        let need = partial_len(ops);
        let rows_need = if self.fusions.bce {
            rowloss_len(ops)
        } else {
            0
        };
        let (grow, grow_rows) = (
            need as u64 * 4 > self.partial.size(),
            rows_need as u64 * 4 > self.rowloss.size(),
        );
        if grow {
            self.partial = Self::make_scratch(&self.ctx, "split-K partial sums", need);
        }
        if grow_rows {
            self.rowloss = Self::make_scratch(&self.ctx, "row shares of the BCE", rows_need);
        }
        let f = self.fusions;
        let latent = f.latent_fc1 || f.latent_pair;
        let (counts_need, parts_need) = match (f.bce, latent) {
            (false, false) => (0, 0),
            (_, latent) => {
                let (c, p) = last_block_len(ops);
                (c, if latent { p } else { 0 })
            }
        };
        let grow_counts = counts_need as u64 * 4 > self.counts.size();
        if grow_counts {
            // (zeroed, as a new buffer is: every counter starts at 0)
            self.counts = Self::make_scratch(&self.ctx, "last-block counters", counts_need);
        }
        let grow_parts = parts_need as u64 * 4 > self.head_parts.size();
        if grow_parts {
            self.head_parts = Self::make_scratch(&self.ctx, "shares of the head or dz", parts_need);
        }
        if grow || grow_rows || grow_counts || grow_parts {
            // bind groups hold the old scratch buffers: rebuild them all lazily
            self.bind_group_index.clear();
            self.bind_groups.clear();
        }
        let mut bytes = vec![0u8; ops.len() * self.stride];
        // (uniform slot, kernel, bind group, workgroups) per dispatch
        // (an op run as the second of a pair has no dispatch, nor slot, of its own)
        let (lowered, slots) = lower_all(ops, self.fusions);
        for (i, pbytes) in slots.iter().enumerate() {
            bytes[i * self.stride..i * self.stride + pbytes.len()].copy_from_slice(pbytes);
        }
        let mut plan = Vec::with_capacity(lowered.len());
        for (i, (k, res, groups)) in lowered {
            let bg = self.bind_group(k, &res);
            plan.push((i, k, bg, groups));
        }
        self.ctx.queue.write_buffer(&self.uniforms, 0, &bytes);
        // Recording is cheap but turning a pass into Vulkan commands (`finish`) costs
        // the host ~2 µs per dispatch (~15 ms for an epoch on a 2-core machine),
        // during which the GPU would sit idle: submit the run in pieces — a small
        // first one so the GPU starts at once, then doubling ones recorded while it
        // works. Each piece is one compute pass; queue order keeps the semantics.
        let queries = timed.as_ref().map(|t| {
            (
                t.clone(),
                &self.timing.as_ref().expect("run_timed creates it").queries,
            )
        });
        let mut chunk = if self.submit_chunk == 0 {
            ops.len()
        } else {
            self.submit_chunk
        };
        let mut d0 = 0;
        while d0 < plan.len() {
            // this piece: the dispatches of ops [plan[d0].0, op_end)
            let op_end = (plan[d0].0 + chunk).min(ops.len());
            let d1 = d0 + plan[d0..].iter().take_while(|p| p.0 < op_end).count();
            if self.submit_chunk > 0 {
                chunk = (chunk * 2).min(self.submit_chunk * 8);
            }
            let mut enc = self
                .ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("run") });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("ops"),
                    timestamp_writes: None,
                });
                let mut current: Option<Kernel> = None;
                for d in d0..d1 {
                    let (i, k, bg, (gx, gy, gz)) = plan[d];
                    if let Some((t, q)) = &queries {
                        if i >= t.start && (d == 0 || plan[d - 1].0 < t.start) {
                            pass.write_timestamp(q, 0);
                        }
                    }
                    if current != Some(k) {
                        pass.set_pipeline(self.ctx.pipeline(k));
                        current = Some(k);
                    }
                    pass.set_bind_group(0, &self.bind_groups[bg], &[]);
                    pass.set_bind_group(1, &self.uniform_bg, &[(i * self.stride) as u32]);
                    pass.dispatch_workgroups(gx, gy, gz);
                    if let Some((t, q)) = &queries {
                        // after an op's last dispatch: its timestamp, and those of the
                        // ops after it without dispatches of their own (they read 0)
                        let next_op = plan.get(d + 1).map_or(ops.len(), |next| next.0);
                        if next_op != i {
                            for j in (i..next_op).filter(|j| t.contains(j)) {
                                pass.write_timestamp(q, (j - t.start + 1) as u32);
                            }
                        }
                    }
                }
            }
            if d1 == plan.len() {
                if let Some(t) = &timed {
                    let tm = self.timing.as_ref().expect("run_timed creates it");
                    let n = t.len() as u32 + 1;
                    enc.resolve_query_set(&tm.queries, 0..n, &tm.resolved, 0);
                    enc.copy_buffer_to_buffer(&tm.resolved, 0, &tm.staging, 0, n as u64 * 8);
                }
            }
            self.ctx.queue.submit([enc.finish()]);
            d0 = d1;
        }
        self.ctx.check("kernel submission")?;
        Ok(plan.iter().map(|d| d.0).collect())
    }
}

impl Backend for GpuBackend {
    fn describe(&self) -> String {
        format!(
            "gpu: {} ({:?}, {}{}{}{}{}{}{}{}{}{}{})",
            self.ctx.info.name,
            self.ctx.info.backend,
            self.ctx.features.subgroups_why,
            match self.ctx.features.coop {
                Some(_) => format!(", matmul on {}", self.ctx.features.coop_why),
                None => String::new(),
            },
            self.ctx.options.checks.note(),
            if self.ctx.options.prefetch {
                ""
            } else {
                ", no prefetching matmul"
            },
            if self.ctx.options.ones_column {
                ", bias gradients as a ones column"
            } else {
                ""
            },
            if self.ctx.options.double_tiles && self.ctx.features.coop.is_none() {
                ", double-buffered matmul tiles"
            } else {
                ""
            },
            if self.ctx.options.early_reads {
                ", early reads"
            } else {
                ""
            },
            match split_target() {
                SPLIT_TARGET => String::new(),
                t => format!(", split-K target {t} workgroups"),
            },
            match self.ctx.options.latent_threads {
                Some(super::context::LATENT_THREADS_MAX) | None => String::new(),
                Some(t) => format!(", latent kernels of {t} threads"),
            },
            self.fusions.note(),
            if self.submit_chunk == 0 {
                ", one submission per run"
            } else {
                ""
            }
        )
    }
    fn kind(&self) -> &'static str {
        "gpu"
    }
    fn sizes(&self) -> &Sizes {
        &self.sizes
    }

    fn write(&mut self, buf: Buf, offset: usize, data: &[f32]) -> Result<()> {
        ensure!(
            offset + data.len() <= buf.len(&self.sizes),
            "write past the end of {buf:?}"
        );
        if !data.is_empty() {
            self.ctx.queue.write_buffer(
                &self.bufs[buf as usize],
                (offset * 4) as u64,
                bytemuck::cast_slice(data),
            );
        }
        Ok(())
    }

    fn write_idx(&mut self, offset: usize, idx: &[u32]) -> Result<()> {
        ensure!(
            offset + idx.len() <= self.idx_len,
            "write past the end of the index buffer"
        );
        // the gather reads image idx[r] unchecked on the GPU (see build_pipeline)
        crate::plan::check_idx(idx, self.images)?;
        if !idx.is_empty() {
            self.ctx
                .queue
                .write_buffer(&self.idx, (offset * 4) as u64, bytemuck::cast_slice(idx));
        }
        Ok(())
    }

    fn run(&mut self, ops: &[Op]) -> Result<()> {
        self.record(ops, None).map(drop)
    }

    fn has_timestamps(&self) -> bool {
        self.ctx.features.timestamps
    }

    fn dispatches(&self, ops: &[Op]) -> Option<usize> {
        Some(GpuBackend::dispatches(self, ops))
    }

    fn run_timed(&mut self, ops: &[Op], timed: Range<usize>) -> Result<Option<Vec<f64>>> {
        if !self.ctx.features.timestamps {
            return Ok(None);
        }
        ensure!(
            !timed.is_empty() && timed.end <= ops.len(),
            "timed ops {timed:?} outside the {} ops run",
            ops.len()
        );
        let n = timed.len() as u32 + 1;
        ensure!(
            n <= wgpu::QUERY_SET_MAX_QUERIES,
            "{} timed ops: a query set holds {} timestamps",
            timed.len(),
            wgpu::QUERY_SET_MAX_QUERIES
        );
        if self.timing.as_ref().is_none_or(|t| t.len < n) {
            self.timing = Some(Self::make_timing(&self.ctx, n));
        }
        let dispatched = self.record(ops, Some(timed.clone()))?;
        let t = self.timing.as_ref().expect("created above");
        let (tx, rx) = std::sync::mpsc::channel();
        let bytes = n as u64 * 8;
        t.staging.map_async(wgpu::MapMode::Read, ..bytes, move |r| {
            let _ = tx.send(r);
        });
        self.ctx.wait("timestamp readback")?;
        rx.recv()
            .map_err(|_| anyhow!("GPU timestamp readback was never answered"))?
            .map_err(|e| anyhow!("GPU timestamp readback failed: {e}"))?;
        let view = t
            .staging
            .get_mapped_range(..bytes)
            .map_err(|e| anyhow!("GPU timestamp mapping failed: {e}"))?;
        let ticks: Vec<u64> = bytemuck::cast_slice::<u8, u64>(&view).to_vec();
        drop(view);
        t.staging.unmap();
        let period = self.ctx.queue.get_timestamp_period() as f64;
        let mut ns: Vec<f64> = ticks
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]) as f64 * period)
            .collect();
        // An op without a dispatch of its own (the second of a gradient pair, the
        // ops of a latent kernel after its first) had its timestamp written right
        // after an op that has one: exactly 0, the gap (if the adapter's clock moved
        // at all) charged to the last op before it with a dispatch.
        let mut own = vec![false; ops.len()];
        for i in dispatched {
            own[i] = true;
        }
        let mut owner = 0;
        for j in 1..ns.len() {
            if own[timed.start + j] {
                owner = j;
            } else {
                ns[owner] += ns[j];
                ns[j] = 0.0;
            }
        }
        Ok(Some(ns))
    }

    fn read(&mut self, buf: Buf, range: Range<usize>) -> Result<Vec<f32>> {
        // (the copy is the last submission: collecting it waits for all work)
        let r = self.read_later(buf, range)?;
        self.collect(r)
    }

    fn read_later(&mut self, buf: Buf, range: Range<usize>) -> Result<PendingRead> {
        ensure!(
            range.end <= buf.len(&self.sizes),
            "read past the end of {buf:?}"
        );
        if range.is_empty() {
            return Ok(PendingRead(Pending::Ready(Vec::new())));
        }
        let size = (range.len() * 4) as u64;
        let staging = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        enc.copy_buffer_to_buffer(
            &self.bufs[buf as usize],
            (range.start * 4) as u64,
            &staging,
            0,
            size,
        );
        let index = self.ctx.queue.submit([enc.finish()]);
        let (tx, mapped) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        Ok(PendingRead(Pending::Staged {
            staging,
            index,
            mapped,
        }))
    }

    fn collect(&mut self, read: PendingRead) -> Result<Vec<f32>> {
        let (staging, index, mapped) = match read.0 {
            Pending::Ready(v) => return Ok(v),
            Pending::Staged {
                staging,
                index,
                mapped,
            } => (staging, index, mapped),
        };
        // wait for the copy's submission only: runs submitted after it go on
        self.ctx
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .map_err(|e| anyhow!("GPU wait failed during readback: {e}"))?;
        self.ctx.check("readback")?;
        mapped
            .recv()
            .map_err(|_| anyhow!("GPU readback was never answered"))?
            .map_err(|e| anyhow!("GPU readback failed: {e}"))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| anyhow!("GPU readback mapping failed: {e}"))?;
        let out = bytemuck::cast_slice::<u8, f32>(&view).to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    //! The lowering is a pure function of the op list: which ops pair, which
    //! reduces fold, and what is refused, checked without a GPU.
    use super::*;

    fn step() -> Vec<Op> {
        crate::plan::reference_step(128).1
    }

    /// pairs and folds as given, the latent fusion, the triple, Adam in the triple
    /// and the gather in fc1 off (the tests of pairs and folds predate them; the
    /// `latent_*`, `triple*`, `adam_*` and `gather_*` tests below cover them)
    fn fusions(pairs: bool, reduces: bool) -> Fusions {
        Fusions {
            pairs,
            reduces,
            ..Fusions::NONE
        }
    }

    fn kernels(ops: &[Op], f: Fusions) -> Vec<(usize, Kernel)> {
        lower_all(ops, f).0.iter().map(|(i, d)| (*i, d.0)).collect()
    }

    #[test]
    fn reference_step_lowers_to_15_dispatches() {
        let ops = step();
        let count = |f| lower_all(&ops, f).0.len();
        assert_eq!(
            count(fusions(false, false)),
            22,
            "17 ops, 5 split-K reduces"
        );
        assert_eq!(
            count(fusions(true, false)),
            18,
            "three pairs, the loss in the BCE"
        );
        assert_eq!(count(fusions(false, true)), 20, "two folds without pairs");
        assert_eq!(count(fusions(true, true)), 15);
        let k = kernels(&ops, fusions(true, true));
        // the pairs sit at the input-gradient ops (8 fc4, 10 fc3, 13 head), and the
        // weight-gradient ops after them have no dispatch of their own
        let pairs: Vec<usize> = k
            .iter()
            .filter(|d| d.1 == Kernel::MatmulPair)
            .map(|d| d.0)
            .collect();
        assert_eq!(pairs, [8, 10, 13]);
        assert!(k.iter().all(|d| ![9, 11, 14].contains(&d.0)));
        // the loss (7) is written by the BCE kernel (6): a loss output in its slot
        assert!(k.iter().all(|d| d.0 != 7));
        let slots = lower_all(&ops, fusions(true, true)).1;
        assert_eq!(
            slots[6][BCE_LOSS_AT..BCE_LOSS_AT + 8],
            *bytemuck::bytes_of(&[1u32, 0])
        );
        // reduces left: fc1 fwd (1) and fc4 dX (8), whose products feed matmuls
        let reduces: Vec<usize> = k
            .iter()
            .filter(|d| d.1 == Kernel::MatmulReduce)
            .map(|d| d.0)
            .collect();
        assert_eq!(reduces, [1, 8]);
        // the folds: a SplitSource in the slots of the BCE (6), the
        // reparameterisation (3) and its backward (12), and nowhere else
        // (only kernels that can read split sums have a SplitSource at byte 64; a
        // pair's second params sit there)
        for (i, kernel) in k {
            let bytes = &slots[i];
            let folded = kernel.reads_split()
                && bytes.len() > SPLIT_SOURCE_AT
                && bytes[SPLIT_SOURCE_AT..SPLIT_SOURCE_AT + 4] != [0; 4];
            assert_eq!(folded, [3, 6, 12].contains(&i), "op {i}");
        }
    }

    #[test]
    fn folds_and_pairs_are_refused_where_they_would_be_wrong() {
        let ops = step();
        let fused = fusions(true, true);
        let n = |ops: &[Op]| lower_all(ops, fused).0.len();
        // the BCE reads fewer rows than the decoder product wrote: no fold (nor
        // does it write the loss, whose images it no longer matches)
        let mut short = ops.clone();
        if let Op::Bce(p) = &mut short[6] {
            p.rows -= 1;
        }
        assert_eq!(n(&short), 17);
        // the decoder product written at an offset: not dense, no fold
        let mut off = ops.clone();
        if let Op::Matmul { p, .. } = &mut off[5] {
            p.c_off = 8;
        }
        assert_eq!(n(&off), 16);
        // a weight gradient that reads what its input gradient writes: no pair
        let mut dep = ops.clone();
        if let Op::Matmul { b, .. } = &mut dep[9] {
            *b = Buf::Dh3; // fc4 dX writes Dh3
        }
        assert_eq!(n(&dep), 16);
        // an input gradient whose mask is not the weight gradient's B: no pair (the
        // weight gradient pairs with fc1's instead, two weight gradients)
        let mut mask = ops.clone();
        if let Op::Matmul { e, .. } = &mut mask[13] {
            *e = Buf::X;
        }
        assert_eq!(n(&mask), 15);
        assert_eq!(
            kernels(&mask, fused)
                .iter()
                .filter(|d| d.1 == Kernel::MatmulPair)
                .map(|d| d.0)
                .collect::<Vec<_>>(),
            [8, 10, 14]
        );
        // a loss with a batch sum, with two draws, or in IWAE mode: its own dispatch
        for change in [
            |p: &mut crate::cpu::LossParams| p.slot = 0,
            |p: &mut crate::cpu::LossParams| p.draws = 2,
            |p: &mut crate::cpu::LossParams| p.mode = crate::cpu::LOSS_IWAE,
        ] {
            let mut loss = ops.clone();
            if let Op::Loss(p) = &mut loss[7] {
                change(p);
            }
            assert_eq!(n(&loss), 16);
        }
        assert_eq!(n(&ops), 15);
    }

    #[test]
    fn adam_and_the_next_gather_share_a_dispatch() {
        let one = step();
        assert!(matches!(one[0], Op::Gather(_)) && matches!(one[16], Op::Adam(_)));
        let two: Vec<Op> = one.iter().chain(&one).copied().collect();
        let k = kernels(&two, fusions(true, true));
        assert_eq!(k.len(), 29, "14 per step inside an epoch");
        // at the first step's Adam (op 16), covering the second step's gather (17)
        let at: Vec<usize> = k
            .iter()
            .filter(|d| d.1 == Kernel::AdamGather)
            .map(|d| d.0)
            .collect();
        assert_eq!(at, [16]);
        assert!(k.iter().all(|d| d.0 != 17));
        assert_eq!(kernels(&two, fusions(false, true)).len(), 2 * 20);
        // its workgroups: the update's, then the gather's, in one row
        let plan = lower_all(&two, fusions(true, true)).0;
        let (Op::Adam(a), Op::Gather(g)) = (two[16], two[17]) else {
            unreachable!()
        };
        let d = plan.iter().find(|d| d.1 .0 == Kernel::AdamGather).unwrap();
        assert_eq!(
            d.1 .2,
            (a.n.div_ceil(256) + (g.rows * g.d).div_ceil(256), 1, 1)
        );
        // too many workgroups for one row: two dispatches
        let mut big = two.clone();
        if let Op::Adam(p) = &mut big[16] {
            p.n = 65_535 * 256;
        }
        assert_eq!(lower_all(&big, fusions(true, true)).0.len(), 30);
    }

    #[test]
    fn latent_ops_lower_to_one_dispatch_each_way() {
        let ops = step();
        // (Adam in the triple and the gather in fc1 off: adam_* and gather_* tests)
        let fused = Fusions {
            adam: false,
            gather: false,
            ..Fusions::ALL
        };
        let (plan, slots) = lower_all(&ops, fused);
        let k: Vec<(usize, Kernel)> = plan.iter().map(|(i, d)| (*i, d.0)).collect();
        use Kernel::*;
        // (the split-K reduces of fc1's product and fc4's input gradient folded into
        // the latent kernels that read them; fc3's weight gradient, 11, moved after
        // the backward kernel, with the head's and fc1's, 14 and 15, as one triple)
        assert_eq!(
            k,
            [
                (0, Gather),
                (1, Matmul),
                (2, LatentForward),
                (5, Matmul),
                (6, Bce),
                (8, MatmulPair),
                (10, LatentBackward),
                (11, MatmulTriple),
                (16, Adam),
            ]
        );
        // without the triple: fc3's weight gradient alone, then the other two as a pair
        let no_triple = Fusions {
            triple: false,
            ..fused
        };
        let k3: Vec<(usize, Kernel)> = kernels(&ops, no_triple);
        assert_eq!(
            k3[6..9],
            [(10, LatentBackward), (11, Matmul), (14, MatmulPair)]
        );
        // the fused ops' params, in the first one's slot: (first product,
        // reparameterisation, second product, the split product read); the others
        // have no slot
        let Op::ReparamForward(rp) = ops[3] else {
            unreachable!()
        };
        for (at, first, second, split, e) in [(2, 2, 4, 1, Buf::Params), (10, 10, 13, 8, Buf::H3)] {
            let [Op::Matmul { p: q0, .. }, Op::Matmul { p: q1, .. }, Op::Matmul { p: qs, .. }] =
                [ops[first], ops[second], ops[split]]
            else {
                unreachable!()
            };
            let mut want = bytemuck::bytes_of(&q0).to_vec();
            want.extend_from_slice(bytemuck::bytes_of(&rp));
            want.extend_from_slice(bytemuck::bytes_of(&q1));
            let src = SplitSource {
                splits: choose_splits(&qs),
                m: qs.m,
                n: qs.n,
                flags: qs.flags,
                e_off: qs.e_off,
                e_si: qs.e_si,
                _pad: [0; 2],
            };
            assert!(src.splits > 1, "op {split} is split");
            want.extend_from_slice(bytemuck::bytes_of(&src));
            assert_eq!(slots[at], want, "slot {at}");
            // the split sums and the product's epilogue operand bound last
            let d = &plan.iter().find(|d| d.0 == at).unwrap().1;
            assert_eq!(d.1[d.1.len() - 2..], [Res::Partial, Res::F(e)], "op {at}");
        }
        for i in [3, 4, 12, 13, 14, 15] {
            assert!(slots[i].is_empty(), "op {i} has a slot");
        }
        // the triple (at 11) after the fused backward, the three params in its slot
        // (each marked unsplit)
        let params = |i: usize| match ops[i] {
            Op::Matmul { p, .. } => bytemuck::bytes_of(&MatmulParams { splits: 1, ..p }).to_vec(),
            _ => unreachable!(),
        };
        assert_eq!(slots[11], [params(11), params(14), params(15)].concat());
        // and the count for two steps: 8 per step inside an epoch
        let two: Vec<Op> = ops.iter().chain(&ops).copied().collect();
        assert_eq!(lower_all(&two, fused).0.len(), 17);
        // without the folds, the two reduces come back and the slots end at 160
        let unfolded = Fusions {
            reduces: false,
            ..fused
        };
        let (plan, slots) = lower_all(&ops, unfolded);
        let reduces: Vec<usize> = plan
            .iter()
            .filter(|d| d.1 .0 == MatmulReduce)
            .map(|d| d.0)
            .collect();
        assert_eq!(reduces, [1, 5, 8]);
        assert_eq!(slots[2].len(), LATENT_SPLIT_SOURCE_AT);
        // without pairs and folds the latent groups are the same
        let plain = Fusions {
            latent: true,
            ..Fusions::NONE
        };
        let kp = kernels(&ops, plain);
        for kernel in [LatentForward, LatentBackward] {
            assert_eq!(
                kp.iter().filter(|d| d.1 == kernel).count(),
                1,
                "{kernel:?} without pairs and folds"
            );
        }
    }

    #[test]
    fn latent_fusion_is_refused_where_it_would_be_wrong() {
        let ops = step();
        let fused = |ops: &[Op]| {
            let k = kernels(ops, Fusions::ALL);
            let backward = [Kernel::LatentBackward, Kernel::LatentBackwardAdam];
            (
                k.iter().any(|d| d.1 == Kernel::LatentForward),
                k.iter().any(|d| backward.contains(&d.1)),
            )
        };
        assert_eq!(fused(&ops), (true, true));
        // the head written with a row stride the reparameterisation does not read
        let mut strided = ops.clone();
        if let Op::Matmul { p, .. } = &mut strided[2] {
            p.c_si += 1;
        }
        assert_eq!(fused(&strided), (false, true));
        // the fc3 product reading z from an offset
        let mut off = ops.clone();
        if let Op::Matmul { p, .. } = &mut off[4] {
            p.a_off = 3;
        }
        assert_eq!(fused(&off), (false, true));
        // too many latents or hidden units for the kernels' workgroup memory
        let mut wide = ops.clone();
        for op in &mut wide {
            match op {
                Op::ReparamForward(p) | Op::ReparamBackward(p) => p.l = MAX_LATENT + 1,
                _ => {}
            }
        }
        assert_eq!(fused(&wide), (false, false));
        let mut tall = ops.clone();
        for i in [2, 10] {
            if let Op::Matmul { p, .. } = &mut tall[i] {
                p.k = MAX_HIDDEN + 1;
            }
        }
        assert_eq!(fused(&tall), (false, false));
        // a second product with more outputs than the kernels hold, or none
        for n in [MAX_HIDDEN + 1, 0] {
            let mut wide_out = ops.clone();
            for i in [4, 13] {
                if let Op::Matmul { p, .. } = &mut wide_out[i] {
                    p.n = n;
                }
            }
            assert_eq!(fused(&wide_out), (false, false), "{n} outputs");
        }
        // a fc3 weight gradient that writes what the fused ops read: it cannot move
        // after them
        let mut clash = ops.clone();
        if let Op::Matmul { c, .. } = &mut clash[11] {
            *c = Buf::Eps;
        }
        assert_eq!(fused(&clash), (true, false));
        // nor one that reads what they write
        let mut reads = ops.clone();
        if let Op::Matmul { b, .. } = &mut reads[11] {
            *b = Buf::Dz;
        }
        assert_eq!(fused(&reads), (true, false));
        // the head's input gradient without its ReLU mask from h1
        let mut mask = ops.clone();
        if let Op::Matmul { e, .. } = &mut mask[13] {
            *e = Buf::X;
        }
        assert_eq!(fused(&mask), (true, false));
        // the fused kernels draw one workgroup per image: a batch of none is lowered
        // op by op
        let mut none = ops.clone();
        for op in &mut none {
            match op {
                Op::ReparamForward(p) | Op::ReparamBackward(p) => p.images = 0,
                Op::Matmul { p, .. } => p.m = 0,
                _ => {}
            }
        }
        assert_eq!(fused(&none), (false, false));
    }

    /// Uniform slots never go down along a plan (the recording and the timestamps
    /// rely on it), whatever fusions are on.
    #[test]
    fn slots_increase_along_every_plan() {
        let one = step();
        let two: Vec<Op> = one.iter().chain(&one).copied().collect();
        for bits in 0..2048 {
            let f = Fusions {
                pairs: bits & 1 != 0,
                reduces: bits & 2 != 0,
                latent: bits & 4 != 0,
                triple: bits & 8 != 0,
                adam: bits & 16 != 0,
                gather: bits & 32 != 0,
                bce: bits & 64 != 0,
                latent_adam: bits & 128 != 0,
                bce_split: bits & 256 != 0,
                latent_fc1: bits & 512 != 0,
                latent_pair: bits & 1024 != 0,
            };
            let plan = lower_all(&two, f).0;
            assert!(plan.windows(2).all(|w| w[0].0 <= w[1].0), "{f:?}");
        }
    }

    /// Two layers' weight gradients (different A, both into Grads) pair when their
    /// regions of Grads, bias gradients included, do not overlap.
    #[test]
    fn weight_gradients_pair_where_their_regions_are_disjoint() {
        let ops = step();
        let (head_dw, fc1_dw) = (ops[14], ops[15]);
        assert_eq!(pairable(&head_dw, &fc1_dw), Some(Buf::X));
        let Op::Matmul { p: ph, .. } = head_dw else {
            unreachable!()
        };
        let moved = |c_off: Option<u32>, e_off: Option<u32>| {
            let mut second = fc1_dw;
            if let Op::Matmul { p, .. } = &mut second {
                p.c_off = c_off.unwrap_or(p.c_off);
                p.e_off = e_off.unwrap_or(p.e_off);
            }
            pairable(&head_dw, &second)
        };
        // fc1's gradient moved onto the head's weight gradient, or its bias
        // gradient onto the head's bias gradient: refused
        assert_eq!(moved(Some(ph.c_off + 5), None), None);
        assert_eq!(moved(None, Some(ph.e_off + 1)), None);
        // where they are (fc1's ends where the head's begins): paired
        assert_eq!(moved(None, None), Some(Buf::X));
        // the region helper itself
        let (a, b, c) = (0..4, 4..8, 0..5);
        let one = |r: &Range<u64>| std::slice::from_ref(r).to_vec();
        assert!(disjoint(&one(&a), &one(&b)) && !disjoint(&one(&c), &one(&b)));
        assert!(written(&MatmulParams::default()).is_empty());
    }

    /// Three weight gradients run as one `matmul_triple` only where they may run
    /// side by side: one output buffer, disjoint regions, nothing read that any of
    /// them writes, no split, no bias or mask read.
    #[test]
    fn triples_are_refused_where_they_would_be_wrong() {
        let ops = step();
        let (fc3, head, fc1) = (ops[11], ops[14], ops[15]);
        let (d, bytes, adam, _) =
            triple([&fc3, &head, &fc1], None, None).expect("the step's three");
        assert!(!adam);
        assert_eq!(d.0, Kernel::MatmulTriple);
        assert_eq!(bytes.len(), 192);
        let tiles_of = |op: &Op| match op {
            Op::Matmul { p, .. } => tiles(p),
            _ => unreachable!(),
        };
        assert_eq!(
            d.2,
            (tiles_of(&fc3) + tiles_of(&head) + tiles_of(&fc1), 1, 1)
        );
        // bound: A and B of each problem, C twice (c, c2) and the unused split scratch
        use Buf::*;
        let f = Res::F;
        assert_eq!(
            d.1,
            [
                f(Dh3),
                f(Z),
                f(H1),
                f(Grads),
                Res::Partial,
                f(Grads),
                f(Dhead),
                f(Dh1),
                f(X)
            ]
        );
        let with = |i: usize, f: &dyn Fn(&mut Op)| {
            let mut t = [fc3, head, fc1];
            f(&mut t[i]);
            triple([&t[0], &t[1], &t[2]], None, None).is_some()
        };
        let set_p = |g: fn(&mut MatmulParams)| {
            move |op: &mut Op| {
                if let Op::Matmul { p, .. } = op {
                    g(p)
                }
            }
        };
        // fc1's region moved onto the head's, or its bias gradient onto fc3's
        let Op::Matmul { p: ph, .. } = head else {
            unreachable!()
        };
        let Op::Matmul { p: p3, .. } = fc3 else {
            unreachable!()
        };
        assert!(!with(2, &|op| if let Op::Matmul { p, .. } = op {
            p.c_off = ph.c_off + 7
        }));
        assert!(!with(2, &|op| if let Op::Matmul { p, .. } = op {
            p.e_off = p3.e_off
        }));
        // another output buffer, or a product reading the shared one
        assert!(!with(1, &|op| if let Op::Matmul { c, .. } = op {
            *c = AdamM
        }));
        assert!(!with(0, &|op| if let Op::Matmul { b, .. } = op {
            *b = Grads
        }));
        // a bias or mask to read, or a product that splits K: fc3's few tiles would,
        // without a bias gradient (which is never split); fc1's many would not
        assert!(!with(1, &set_p(|p| p.flags |= MM_MASK)));
        assert!(!with(0, &set_p(|p| p.flags = 0)));
        assert!(with(2, &set_p(|p| p.flags = 0)));
        // not a product at all
        let t = [fc3, head, ops[16]];
        assert!(triple([&t[0], &t[1], &t[2]], None, None).is_none());
        assert!(with(0, &|_| {}));
    }

    /// With every fusion on, a training step is 7 dispatches: fc1's product with
    /// the gather in its loads, the latent forward, fc4's product, the BCE, fc4's
    /// pair, the latent backward with fc4's Adam (the triple's tail) and the triple
    /// with the rest of the step's Adam.
    #[test]
    fn adam_joins_the_triple_and_the_gather_joins_fc1() {
        use Kernel::*;
        let ops = step();
        let k = kernels(&ops, Fusions::ALL);
        assert_eq!(
            k,
            [
                (0, MatmulGather),
                (2, LatentForward),
                (5, Matmul),
                (6, Bce),
                (8, MatmulPair),
                (10, LatentBackwardAdam),
                (11, MatmulTripleAdam),
            ]
        );
        // the tail kept in the triple without latent_adam
        let in_triple = Fusions {
            latent_adam: false,
            ..Fusions::ALL
        };
        let kt = kernels(&ops, in_triple);
        assert_eq!(kt.len(), 7);
        assert_eq!(kt[5..], [(10, LatentBackward), (11, MatmulTripleAdam)]);
        let two: Vec<Op> = ops.iter().chain(&ops).copied().collect();
        let k2 = kernels(&two, Fusions::ALL);
        assert_eq!(k2.len(), 14, "7 per step inside an epoch");
        assert_eq!(
            k2[7],
            (17, MatmulGather),
            "the next step's gather in its fc1"
        );
        // each alone: Adam with the next gather (adam_gather), or its own Adam
        // and the gather in fc1
        let no_adam = Fusions {
            adam: false,
            ..Fusions::ALL
        };
        let k3 = kernels(&two, no_adam);
        assert_eq!(
            k3[6..9],
            [(11, MatmulTriple), (16, AdamGather), (18, Matmul)]
        );
        let no_gather = Fusions {
            gather: false,
            ..Fusions::ALL
        };
        let k4 = kernels(&two, no_gather);
        assert_eq!(k4[..2], [(0, Gather), (1, Matmul)]);
        assert_eq!(
            k4[7..10],
            [(11, MatmulTripleAdam), (17, Gather), (18, Matmul)]
        );
        // the triple's slot: its three params, Adam's, the tail (fc4's weights and
        // bias, which the triple does not write) — empty where the latent backward
        // runs it (at LATENT_ADAM_AT of its slot, Adam's params, then the tail) —,
        // then zeros; the gather's: fc1's params (split) and the first index entry
        // at GATHER_IDX_AT
        let (plan, slots) = lower_all(&ops, Fusions::ALL);
        let Op::Adam(pa) = ops[16] else {
            unreachable!()
        };
        let lay = crate::model::Layout::new(crate::model::Dims::MNIST);
        let o = lay.offsets();
        let (w4, end) = (o.w4 as u32, lay.total as u32);
        assert_eq!(slots[11][192..224], *bytemuck::bytes_of(&pa));
        assert_eq!(slots[11][224..240], *bytemuck::bytes_of(&[end, end, 0, 0]));
        let at = LATENT_ADAM_AT;
        assert_eq!(slots[10][at..at + 32], *bytemuck::bytes_of(&pa));
        assert_eq!(slots[10][at + 32..], *bytemuck::bytes_of(&[w4, end, 0, 0]));
        let groups = |plan: &[(usize, Dispatch)], i: usize| plan[i].1 .2 .0;
        let tiles_of = |i: usize| match ops[i] {
            Op::Matmul { p, .. } => tiles(&p),
            _ => unreachable!(),
        };
        let (triple_tiles, images) = (tiles_of(11) + tiles_of(14) + tiles_of(15), 128);
        let tail_groups = (end - w4).div_ceil(LATENT_ADAM_PER_GROUP);
        assert_eq!(tail_groups, 308, "fc4's 314,384 parameters");
        assert_eq!(groups(&plan, 5), images + tail_groups);
        assert_eq!(groups(&plan, 6), triple_tiles);
        // the latent backward binds Adam's buffers after its own
        let res = &plan[5].1 .1;
        let adam_bufs = [Buf::Grads, Buf::AdamM, Buf::AdamV].map(Res::F);
        assert_eq!(res[res.len() - 3..], adam_bufs);
        // with the tail in the triple: its slot holds it, its workgroups run it
        let (plan_t, slots_t) = lower_all(&ops, in_triple);
        assert_eq!(slots_t[11][224..240], *bytemuck::bytes_of(&[w4, end, 0, 0]));
        assert_eq!(slots_t[10].len(), LATENT_SPLIT_SOURCE_AT + 32);
        assert_eq!(groups(&plan_t, 5), images);
        assert_eq!(
            groups(&plan_t, 6),
            triple_tiles + (end - w4).div_ceil(ADAM_TAIL_PER_GROUP)
        );
        assert!(slots[16].is_empty());
        let Op::Matmul { p: p1, .. } = ops[1] else {
            unreachable!()
        };
        let q1 = MatmulParams {
            splits: choose_splits(&p1),
            ..p1
        };
        assert!(q1.splits > 1);
        assert_eq!(slots[0][..64], *bytemuck::bytes_of(&q1));
        assert_eq!(slots[0][GATHER_IDX_AT..], *bytemuck::bytes_of(&[0u32; 4]));
        let Op::Gather(g2) = two[17] else {
            unreachable!()
        };
        assert_eq!(
            lower_all(&two, Fusions::ALL).1[17][GATHER_IDX_AT..GATHER_IDX_AT + 4],
            *bytemuck::bytes_of(&g2.idx_off)
        );
        // workgroups: fc1's tiles and shares; the triple's tiles and the tail's
        let d0 = &plan[0].1;
        assert_eq!(d0.2, (400u32.div_ceil(32), 128u32.div_ceil(32), q1.splits));
        let f = Res::F;
        assert_eq!(
            d0.1,
            [
                f(Buf::Params),
                f(Buf::Params),
                f(Buf::H1),
                Res::Partial,
                f(Buf::H1),
                Res::Data,
                Res::Idx,
                f(Buf::X)
            ]
        );
        // (the triple's workgroups: above)
        let d11 = &plan.iter().find(|d| d.0 == 11).unwrap().1;
        assert_eq!(d11.1[9..], [f(Buf::Params), f(Buf::AdamM), f(Buf::AdamV)]);
    }

    /// The triple's tail moves into the latent backward only where that kernel reads
    /// none of the tail's parameters: fc3's input gradient reading its weights from
    /// fc4's range (or the head's from the tail's last element) keeps the tail in
    /// the triple.
    #[test]
    fn the_tail_stays_in_the_triple_where_the_latent_backward_reads_it() {
        use Kernel::*;
        let ops = step();
        let o = crate::model::Layout::new(crate::model::Dims::MNIST).offsets();
        let total = crate::model::Layout::new(crate::model::Dims::MNIST).total as u32;
        let backward = |ops: &[Op]| kernels(ops, Fusions::ALL)[5..].to_vec();
        assert_eq!(
            backward(&ops),
            [(10, LatentBackwardAdam), (11, MatmulTripleAdam)]
        );
        let Op::Matmul { p: qz, .. } = ops[10] else {
            unreachable!()
        };
        let Op::Matmul { p: qx, .. } = ops[13] else {
            unreachable!()
        };
        assert_eq!(b_span(&qz), qz.b_off as u64..(qz.b_off + 20 * 400) as u64);
        for (at, b_off) in [(10, o.w4 as u32), (13, total - 40 * 400)] {
            let mut reads = ops.clone();
            if let Op::Matmul { p, .. } = &mut reads[at] {
                p.b_off = b_off;
            }
            assert_eq!(
                backward(&reads),
                [(10, LatentBackward), (11, MatmulTripleAdam)],
                "op {at} reading from {b_off}"
            );
        }
        // the head's weights just before the tail: moved
        let mut next_to = ops.clone();
        if let Op::Matmul { p, .. } = &mut next_to[13] {
            p.b_off = o.w4 as u32 - 40 * 400;
        }
        assert_eq!(backward(&next_to)[0], (10, LatentBackwardAdam));
        assert_eq!(qx.k * qx.n, 40 * 400);
        // the triple gives its tail away only whole, to a dispatch that can take it
        let t = [&ops[11], &ops[14], &ops[15]];
        let tail_len = total - o.w4 as u32;
        let given = |most: u32| triple(t, Some(&ops[16]), Some((&[], most))).unwrap().3;
        assert_eq!(given(tail_len).map(|m| m.1), Some(o.w4 as u32..total));
        assert!(given(tail_len - 1).is_none());
        assert!(triple(t, Some(&ops[16]), None).unwrap().3.is_none());
    }

    /// Adam joins a triple only where the triple's regions and one tail cover its
    /// parameters exactly and no product reads what Adam writes; otherwise the
    /// triple runs without it (and Adam on its own).
    #[test]
    fn adam_stays_out_of_a_triple_where_it_would_be_wrong() {
        let ops = step();
        let (fc3, head, fc1, adam) = (ops[11], ops[14], ops[15], ops[16]);
        let joins = |t: [Op; 3], a: Op| {
            let (d, bytes, with, _) =
                triple([&t[0], &t[1], &t[2]], Some(&a), None).expect("a triple");
            assert_eq!(with, d.0 == Kernel::MatmulTripleAdam);
            assert_eq!(bytes.len(), if with { 240 } else { 192 });
            with
        };
        assert!(joins([fc3, head, fc1], adam));
        let set = |op: Op, g: &dyn Fn(&mut MatmulParams)| {
            let mut op = op;
            if let Op::Matmul { p, .. } = &mut op {
                g(p)
            }
            op
        };
        // fc1 without its bias gradient: two gaps (b1 and fc4), no single tail
        assert!(!joins([fc3, head, set(fc1, &|p| p.flags = 0)], adam));
        // Adam over fewer parameters than the triple writes
        let Op::Adam(pa) = adam else { unreachable!() };
        let short = Op::Adam(crate::cpu::AdamParams { n: 1000, ..pa });
        assert!(!joins([fc3, head, fc1], short));
        // exactly the triple's parameters (no tail): joins, with no tail workgroups
        let Op::Matmul { p: p3, .. } = fc3 else {
            unreachable!()
        };
        let upto = Op::Adam(crate::cpu::AdamParams {
            n: p3.e_off + p3.m,
            ..pa
        });
        assert!(joins([fc3, head, fc1], upto));
        // a product whose rows are not dense (its span has holes Adam would miss)
        let Op::Matmul { p: ph, .. } = head else {
            unreachable!()
        };
        let holes = MatmulParams {
            c_si: ph.n + 1,
            ..ph
        };
        let dense = [ph];
        let covered = |q: &[MatmulParams]| {
            let regions: Vec<_> = q.iter().map(written).collect();
            let n = Op::Adam(crate::cpu::AdamParams {
                n: ph.e_off + ph.m,
                ..pa
            });
            triple_adam(&n, Buf::Grads, &[], q, &regions).is_some()
        };
        assert!(covered(&dense) && !covered(&[holes]));
        // a product reading the parameters, or gradients into another buffer
        let mut reads = fc1;
        if let Op::Matmul { b, .. } = &mut reads {
            *b = Buf::Params;
        }
        assert!(!joins([fc3, head, reads], adam));
        let into = |op: Op| {
            let mut op = op;
            if let Op::Matmul { c, .. } = &mut op {
                *c = Buf::Dz;
            }
            op
        };
        assert!(!joins([into(fc3), into(head), into(fc1)], adam));
        // not an Adam step
        assert!(!joins([fc3, head, fc1], ops[0]));
    }

    /// A gather runs in the loads of the product after it only where that product
    /// reads exactly the gathered rows as its A, densely from offset 0, and writes
    /// nothing it gathers.
    #[test]
    fn gather_stays_apart_where_the_product_reads_otherwise() {
        let ops = step();
        let (g, fc1) = (ops[0], ops[1]);
        assert!(gather_product(&g, &fc1).is_some());
        let with = |h: &dyn Fn(&mut Op, &mut Op)| {
            let (mut g, mut fc1) = (g, fc1);
            h(&mut g, &mut fc1);
            gather_product(&g, &fc1).is_some()
        };
        let p_of = |op: &mut Op, f: &dyn Fn(&mut MatmulParams)| {
            if let Op::Matmul { p, .. } = op {
                f(p)
            }
        };
        assert!(!with(&|g, _| if let Op::Gather(g) = g {
            g.rows -= 1
        }));
        assert!(!with(&|_, m| p_of(m, &|p| p.a_off = 1)));
        assert!(!with(&|_, m| p_of(m, &|p| p.k -= 1)));
        assert!(!with(&|_, m| p_of(m, &|p| {
            p.a_si = 1;
            p.a_sp = 784
        })));
        assert!(!with(&|_, m| if let Op::Matmul { a, .. } = m {
            *a = Buf::H1
        }));
        assert!(!with(&|_, m| if let Op::Matmul { c, .. } = m {
            *c = Buf::X
        }));
        assert!(!with(&|g, _| if let Op::Gather(g) = g {
            g.rows = 0
        }));
        // the other way round, or the gather before something else
        assert!(gather_product(&fc1, &g).is_none());
        assert!(gather_product(&g, &ops[2]).is_none());
    }

    /// With the BCE epilogue a training step takes one dispatch fewer: fc4's
    /// product (op 5) runs unsplit as `matmul_bce`, the BCE (6) and the loss (7)
    /// have no dispatch of their own, and fc4's gradient pair (8) is a
    /// `matmul_pair_loss` with ⌈B / 256⌉ more workgroups; their slots' tails hold
    /// (draws, write_grad, column tiles) and (rows, column tiles, out_off).
    #[test]
    fn the_bce_joins_fc4s_product_and_the_loss_fc4s_pair() {
        let ops = step();
        let bce = Fusions {
            bce: true,
            ..Fusions::DEFAULT
        };
        let (plan, slots) = lower_all(&ops, bce);
        let (plain, _) = lower_all(&ops, Fusions::DEFAULT);
        assert_eq!(plan.len() + 1, plain.len());
        let k = kernels(&ops, bce);
        assert!(k.contains(&(5, Kernel::MatmulBce)) && k.contains(&(8, Kernel::MatmulPairLoss)));
        assert!(k
            .iter()
            .all(|d| ![6, 7].contains(&d.0) && d.1 != Kernel::Bce));
        let d = |plan: &[(usize, Dispatch)], k: Kernel| {
            plan.iter().find(|d| d.1 .0 == k).unwrap().1.clone()
        };
        assert_eq!(
            d(&plan, Kernel::MatmulBce).2,
            (25, 4, 1),
            "784 columns, 128 rows, unsplit"
        );
        let pair = d(&plain, Kernel::MatmulPair).2;
        assert_eq!(d(&plan, Kernel::MatmulPairLoss).2, (pair.0 + 1, 1, 1));
        let tail = |i: usize| slots[i][SLOT_TAIL_AT..SLOT_TAIL_AT + 16].to_vec();
        assert_eq!(tail(5), bytemuck::bytes_of(&[1u32, 1, 25, 0]));
        assert_eq!(tail(8), bytemuck::bytes_of(&[128u32, 25, 0, 0]));
        let Op::Matmul { p, .. } = ops[5] else {
            unreachable!()
        };
        assert!(
            choose_splits(&p) > 1,
            "fc4's product splits without the epilogue"
        );
        assert_eq!(
            slots[5][..64],
            *bytemuck::bytes_of(&MatmulParams { splits: 1, ..p })
        );
        // everything else as without it
        let rest = |plan: &[(usize, Dispatch)]| -> Vec<(usize, Dispatch)> {
            plan.iter()
                .filter(|d| ![5, 6, 8].contains(&d.0))
                .cloned()
                .collect()
        };
        assert_eq!(rest(&plan), rest(&plain));
        // split over K (`bce_split`): the product's own splits, one workgroup per
        // tile and share, the same slot but for them, and its tile counters bound;
        // everything else as unsplit
        let split = Fusions {
            bce_split: true,
            ..bce
        };
        let (split_plan, split_slots) = lower_all(&ops, split);
        let s = choose_splits(&p);
        let mm = d(&split_plan, Kernel::MatmulBce);
        assert_eq!(mm.2, (25, 4, s), "784 columns, 128 rows, {s} K shares");
        assert_eq!(mm.1.last(), Some(&Res::Counts));
        assert_eq!(
            split_slots[5][..64],
            *bytemuck::bytes_of(&MatmulParams { splits: s, ..p })
        );
        assert_eq!(split_slots[5][64..], slots[5][64..]);
        let but_fc4 = |plan: &[(usize, Dispatch)]| -> Vec<(usize, Dispatch)> {
            plan.iter().filter(|d| d.0 != 5).cloned().collect()
        };
        assert_eq!(but_fc4(&split_plan), but_fc4(&plan));
        // with Adam in the triple too (fc4's in the latent backward): 6 dispatches,
        // the gather in fc1's product
        let all_in = Fusions {
            bce: true,
            ..Fusions::ALL
        };
        use Kernel::*;
        assert_eq!(
            kernels(&ops, all_in),
            [
                (0, MatmulGather),
                (2, LatentForward),
                (5, MatmulBce),
                (8, MatmulPairLoss),
                (10, LatentBackwardAdam),
                (11, MatmulTripleAdam),
            ]
        );
    }

    /// The latent forward in fc1's product (`latent_fc1`): in two steps, the second
    /// step's fc1 (op 14 + 1: its gather ran beside the first step's Adam) takes
    /// the head product, the reparameterisation and fc3's product as one
    /// `matmul_latent` — one dispatch fewer — whose slot holds fc1's (split), the
    /// head's and fc3's products and the reparameterisation; the first step's fc1,
    /// which reads the image store (`matmul_gather`), takes them as one
    /// `matmul_gather_latent`, its slot the same with the gather's first index
    /// entry. Not with two draws, nor where the latent group is not fused, nor after
    /// a reduce that is not folded.
    #[test]
    fn the_latent_forward_joins_fc1s_product() {
        let one = step();
        let mut two: Vec<Op> = one.iter().chain(&one).copied().collect();
        if let Op::Gather(g) = &mut two[0] {
            // (a batch of images from 128 on: the index entry the slot must hold)
            g.idx_off = 128;
        }
        let f = Fusions {
            latent_fc1: true,
            ..Fusions::DEFAULT
        };
        let (plan, slots) = lower_all(&two, f);
        let (plain, _) = lower_all(&two, Fusions::DEFAULT);
        assert_eq!(plan.len() + 2, plain.len());
        let fc1 = one.len() + 1;
        let Op::Matmul { p: q1, .. } = two[fc1] else {
            unreachable!()
        };
        let (Op::Matmul { p: qh, .. }, Op::ReparamForward(rp), Op::Matmul { p: qd, .. }) =
            (two[fc1 + 1], two[fc1 + 2], two[fc1 + 3])
        else {
            unreachable!()
        };
        let Op::Gather(g) = two[0] else {
            unreachable!()
        };
        let k = kernels(&two, f);
        assert_eq!(
            k.iter()
                .filter(|d| matches!(
                    d.1,
                    Kernel::MatmulLatent | Kernel::MatmulGatherLatent | Kernel::LatentForward
                ))
                .collect::<Vec<_>>(),
            [
                &(0, Kernel::MatmulGatherLatent),
                &(fc1, Kernel::MatmulLatent)
            ]
        );
        let s = choose_splits(&q1);
        assert!(s > 1);
        for (at, kernel, idx, n_res) in [
            (fc1, Kernel::MatmulLatent, 0, 15),
            (0, Kernel::MatmulGatherLatent, g.idx_off, 16),
        ] {
            let d = plan.iter().find(|d| d.0 == at).unwrap();
            assert_eq!(d.1 .0, kernel);
            assert_eq!(d.1 .2, (13, 4, s), "400 columns, 128 rows, {s} K shares");
            assert_eq!(d.1 .1.len(), n_res);
            assert_eq!(d.1 .1[n_res - 1], Res::HeadParts);
            let mut want = bytemuck::bytes_of(&MatmulParams { splits: s, ..q1 }).to_vec();
            want.extend_from_slice(bytemuck::bytes_of(&qh));
            want.extend_from_slice(bytemuck::bytes_of(&qd));
            want.resize(SLOT_TAIL_AT, 0);
            want.extend_from_slice(bytemuck::bytes_of(&[rp.images, rp.l, rp.draws, rp.seed]));
            want.extend_from_slice(bytemuck::bytes_of(&[
                idx,
                rp.stream,
                rp.row_base,
                rp.eps_given,
            ]));
            assert_eq!(slots[at], want, "{kernel:?}");
        }
        // everything but the ops' dispatches as without it
        let rest = |plan: &[(usize, Dispatch)]| -> Vec<(usize, Dispatch)> {
            plan.iter()
                .filter(|d| ![0, 2, fc1, fc1 + 1].contains(&d.0))
                .cloned()
                .collect()
        };
        assert_eq!(rest(&plan), rest(&plain));
        // refused: two draws; the latent group unfused; the reduce a dispatch
        let mut drawn = two.clone();
        if let Op::ReparamForward(p) = &mut drawn[fc1 + 2] {
            p.draws = 2;
        }
        let fused =
            |ops: &[Op], f: Fusions| kernels(ops, f).iter().any(|d| d.1 == Kernel::MatmulLatent);
        assert!(!fused(&drawn, f));
        assert!(!fused(&two, Fusions { latent: false, ..f }));
        assert!(!fused(
            &two,
            Fusions {
                reduces: false,
                ..f
            }
        ));
        assert!(fused(&two, f));
    }

    /// The latent backward in fc4's gradient pair (`latent_pair`): the pair (op 8,
    /// fc4's input gradient split over K, the reduce folded) takes fc3's input
    /// gradient, the reparameterisation backward and the head's input gradient as
    /// one `matmul_pair_latent` — one dispatch fewer — whose slot holds the pair's
    /// two products, the head's input gradient and fc3's weights and L; the triple
    /// after it is unchanged. With the BCE epilogue the pair keeps its loss tail and
    /// workgroups; with Adam in the triple, Adam's tail (fc4's parameters) stays in
    /// the triple instead of moving to the latent kernel, which is gone. Not with
    /// two draws, nor where the latent group or the pairs are not fused, nor after
    /// a reduce that is not folded, nor for a product whose B is not the parameters.
    #[test]
    fn the_latent_backward_joins_fc4s_pair() {
        let one = step();
        let f = Fusions {
            latent_pair: true,
            ..Fusions::DEFAULT
        };
        let (plan, slots) = lower_all(&one, f);
        let (plain, plain_slots) = lower_all(&one, Fusions::DEFAULT);
        assert_eq!(plan.len() + 1, plain.len());
        let (pair, fc3) = (8, 10);
        let (Op::Matmul { p: q0, .. }, Op::Matmul { p: q1, .. }) = (one[pair], one[pair + 1])
        else {
            unreachable!()
        };
        let (Op::Matmul { p: qz, .. }, Op::ReparamBackward(rp), Op::Matmul { p: qx, .. }) =
            (one[fc3], one[fc3 + 2], one[fc3 + 3])
        else {
            unreachable!()
        };
        let k = kernels(&one, f);
        assert_eq!(
            k.iter()
                .filter(|d| matches!(d.1, Kernel::MatmulPairLatent | Kernel::LatentBackward))
                .collect::<Vec<_>>(),
            [&(pair, Kernel::MatmulPairLatent)]
        );
        let d = plan.iter().find(|d| d.0 == pair).unwrap();
        let was = plain.iter().find(|d| d.0 == pair).unwrap();
        assert_eq!(was.1 .0, Kernel::MatmulPair);
        assert_eq!(d.1 .2, was.1 .2, "the pair's workgroups");
        assert_eq!(d.1 .1.len(), 19);
        assert_eq!(d.1 .1[..7], was.1 .1[..]);
        assert_eq!(d.1 .1[12], Res::HeadParts);
        let s = choose_splits(&q0);
        assert!(s > 1);
        let mut want = bytemuck::bytes_of(&MatmulParams { splits: s, ..q0 }).to_vec();
        want.extend_from_slice(bytemuck::bytes_of(&MatmulParams { splits: 1, ..q1 }));
        assert_eq!(plain_slots[pair], want);
        want.extend_from_slice(bytemuck::bytes_of(&qx));
        want.resize(GATHER_IDX_AT, 0);
        want.extend_from_slice(bytemuck::bytes_of(&[qz.b_off, qz.b_sp, qz.b_sj, rp.l]));
        assert_eq!(slots[pair], want);
        // everything but the latent kernel as without it
        let rest = |plan: &[(usize, Dispatch)]| -> Vec<(usize, Dispatch)> {
            plan.iter()
                .filter(|d| d.0 != pair && d.0 != fc3)
                .cloned()
                .collect()
        };
        assert_eq!(rest(&plan), rest(&plain));
        // with the BCE epilogue: the loss tail kept, its workgroups too
        let bce = Fusions { bce: true, ..f };
        let (lossy, lossy_slots) = lower_all(&one, bce);
        let (plain_lossy, plain_lossy_slots) = lower_all(
            &one,
            Fusions {
                latent_pair: false,
                ..bce
            },
        );
        assert_eq!(lossy.len() + 1, plain_lossy.len());
        let d = lossy.iter().find(|d| d.0 == pair).unwrap();
        let was = plain_lossy.iter().find(|d| d.0 == pair).unwrap();
        assert_eq!(
            (was.1 .0, d.1 .0),
            (Kernel::MatmulPairLoss, Kernel::MatmulPairLatent)
        );
        assert_eq!(d.1 .2, was.1 .2);
        assert_eq!(d.1 .1[..11], was.1 .1[..]);
        assert_eq!(
            lossy_slots[pair][SLOT_TAIL_AT..GATHER_IDX_AT],
            plain_lossy_slots[pair][SLOT_TAIL_AT..]
        );
        assert_ne!(lossy_slots[pair][SLOT_TAIL_AT..GATHER_IDX_AT], [0; 16]);
        // with Adam in the triple: its tail in the triple's extra workgroups
        let adam = Fusions { adam: true, ..f };
        let with_adam = kernels(&one, adam);
        assert!(with_adam.contains(&(11, Kernel::MatmulTripleAdam)));
        assert!(!with_adam.iter().any(|d| d.1 == Kernel::LatentBackwardAdam));
        assert!(kernels(
            &one,
            Fusions {
                latent_pair: false,
                ..adam
            }
        )
        .contains(&(fc3, Kernel::LatentBackwardAdam)));
        let tail = |plan: &[(usize, Dispatch)]| plan.iter().find(|d| d.0 == 11).unwrap().1 .2;
        assert!(
            tail(&lower_all(&one, adam).0).0
                > tail(
                    &lower_all(
                        &one,
                        Fusions {
                            latent_pair: false,
                            ..adam
                        }
                    )
                    .0
                )
                .0,
            "the tail's workgroups in the triple"
        );
        // refused: two draws; the latent group or the pairs unfused; the reduce a
        // dispatch; the product's B not the parameters
        let fused = |ops: &[Op], f: Fusions| {
            kernels(ops, f)
                .iter()
                .any(|d| d.1 == Kernel::MatmulPairLatent)
        };
        assert!(fused(&one, f));
        let mut drawn = one.clone();
        if let Op::ReparamBackward(p) = &mut drawn[fc3 + 2] {
            p.draws = 2;
            p.images /= 2;
        }
        assert!(!fused(&drawn, f));
        assert!(!fused(&one, Fusions { latent: false, ..f }));
        assert!(!fused(&one, Fusions { pairs: false, ..f }));
        assert!(!fused(
            &one,
            Fusions {
                reduces: false,
                ..f
            }
        ));
        let mut grads_b = one.clone();
        if let Op::Matmul { b, .. } = &mut grads_b[pair] {
            *b = Buf::Grads;
        }
        assert!(!fused(&grads_b, f));
    }

    /// The BCE epilogue only where it computes what the ops say: not without the
    /// gradient pairs, nor for a loss with a batch sum, two draws or no gradient
    /// (scoring), nor for a product with another epilogue, nor where fc4's pair
    /// would touch what the loss tail reads or writes.
    #[test]
    fn the_bce_epilogue_is_refused_where_it_would_be_wrong() {
        let ops = step();
        let bce = Fusions {
            bce: true,
            ..Fusions::DEFAULT
        };
        let joined =
            |ops: &[Op], f: Fusions| kernels(ops, f).iter().any(|d| d.1 == Kernel::MatmulBce);
        assert!(joined(&ops, bce));
        assert!(!joined(
            &ops,
            Fusions {
                pairs: false,
                ..bce
            }
        ));
        let changed = |at: usize, change: &dyn Fn(&mut Op)| {
            let mut v = ops.clone();
            change(&mut v[at]);
            v
        };
        let refused = [
            changed(7, &|op| {
                if let Op::Loss(p) = op {
                    p.slot = 0;
                }
            }),
            changed(6, &|op| {
                if let Op::Bce(p) = op {
                    p.write_grad = 0;
                }
            }),
            changed(5, &|op| {
                if let Op::Matmul { p, .. } = op {
                    p.flags |= MM_RELU;
                }
            }),
            changed(8, &|op| {
                if let Op::Matmul { e, .. } = op {
                    *e = Buf::Kl;
                }
            }),
            changed(9, &|op| {
                if let Op::Matmul { c, .. } = op {
                    *c = Buf::Bce;
                }
            }),
        ];
        for (i, v) in refused.iter().enumerate() {
            assert!(!joined(v, bce), "case {i}");
        }
        // scoring: two draws per image, no gradient, an IWAE batch sum
        let dims = crate::model::Dims::MNIST;
        let lay = crate::model::Layout::new(dims);
        let score = crate::plan::Batch {
            images: 64,
            draws: 2,
            idx_off: 0,
            seed: 1,
            stream: 2,
            row_base: 0,
            out_off: 0,
            slot: Some(0),
            mode: crate::cpu::LOSS_IWAE,
        };
        let fwd = crate::plan::forward_ops(dims, &lay.offsets(), &score, false);
        assert!(!joined(&fwd, bce));
        assert_eq!(kernels(&fwd, bce), kernels(&fwd, Fusions::DEFAULT));
    }
}
