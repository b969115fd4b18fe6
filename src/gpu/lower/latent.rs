//! The latent group: the head product, the reparameterisation and fc3's product
//! (and their backward) as one `latent.wgsl` kernel each way ([`lower_latent`]),
//! and those kernels folded into the last blocks of fc1's product
//! ([`latent_into_fc1`]) and of fc4's gradient pair ([`latent_into_pair`]).

use super::*;

/// Parameters `latent_backward_adam` updates per workgroup after the images'
/// (`latent_adam.wgsl`'s TAIL_PER_GROUP).
pub(super) const LATENT_ADAM_PER_GROUP: u32 = 1024;

/// Byte offset of the Adam step and its tail in a latent kernel's slot (after the
/// [`SplitSource`]).
pub(super) const LATENT_ADAM_AT: usize = LATENT_SPLIT_SOURCE_AT + 32;

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
pub(super) fn latent_into_fc1(
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
pub(super) fn latent_into_pair(
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

/// The most hidden units (`latent.wgsl`'s HMAX) and latents (LMAX) the fused
/// latent kernels hold in workgroup memory; larger models run unfused.
pub const MAX_HIDDEN: u32 = 1024;
pub const MAX_LATENT: u32 = 64;

/// Ops lowered together out of order: dispatches, each with the offset of the op
/// whose uniform slot it reads, the bytes of those slots (by offset), and how many
/// ops are covered.
pub(super) struct Group {
    pub(super) dispatches: Vec<(usize, Dispatch)>,
    pub(super) slots: Vec<(usize, Vec<u8>)>,
    pub(super) used: usize,
}

/// Whether `q` reads A as dense rows of `width` from offset 0 (the layout the
/// reparameterisation writes z and dhead in, which the fused kernels keep in
/// workgroup memory instead), or writes C so (where it reads head and dz).
pub(super) fn dense_a(q: &MatmulParams, width: u32) -> bool {
    q.a_off == 0 && q.a_si == width && q.a_sp == 1 && q.k == width
}
pub(super) fn dense_c(q: &MatmulParams, width: u32) -> bool {
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
pub(super) fn lower_latent(
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
