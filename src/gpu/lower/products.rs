//! Fusions of products with their neighbours: a layer's input and weight
//! gradients as one `matmul_pair` ([`pairable`]), three weight gradients as one
//! `matmul_triple` ([`triple`]) with Adam in its epilogue ([`triple_adam`]), the
//! batch's gather in fc1's loads ([`gather_product`]), and the BCE in the
//! decoder-output product's epilogue with the loss finished by fc4's gradient pair
//! ([`bce_epilogue`], [`with_loss_tail`]). Each returns `None` (or false) where the
//! fusion would be wrong, and the caller lowers the ops on their own.

use super::*;

/// Workgroups of a `matmul_pair` dispatch of products `p0` (split as
/// [`choose_splits`] says) and `p1` (never split): one per tile and K share.
pub(super) fn pair_groups(p0: &MatmulParams, p1: &MatmulParams) -> u32 {
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
pub(super) fn pairable(first: &Op, second: &Op) -> Option<Buf> {
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
pub(super) fn written(p: &MatmulParams) -> Vec<Range<u64>> {
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

pub(super) fn disjoint(x: &[Range<u64>], y: &[Range<u64>]) -> bool {
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
pub(super) fn triple(
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

/// With [`Fusions::tail_fc1`]: each `matmul_triple_adam` of `plan` that keeps a
/// tail (the parameters its tiles do not write, updated by its last workgroups)
/// and whose next dispatch is the next training step's `matmul_gather_latent`
/// hands the tail to that dispatch, which becomes a `matmul_gather_adam`
/// (`shaders/matmul_gather_adam.wgsl`): the triple's slot gets an empty tail and
/// its tail workgroups go; the fc1 slot gets the triple's Adam step at
/// `Slot.adam` (192, unused by `matmul_gather_latent`) with the tail as
/// [first, n), and its grid extra layers of z, 1024 parameters per workgroup.
/// Only where the tail is disjoint from every parameter the fc1 dispatch's three
/// products read (their B spans and bias ranges: fc1's, the head's, fc3's) and
/// the dispatch binds no gradients or moments; nothing runs between the two.
pub(super) fn tail_into_fc1(plan: &mut [(usize, Dispatch)], slots: &mut [Vec<u8>]) {
    use bytemuck::{bytes_of, pod_read_unaligned};
    for i in 1..plan.len() {
        let (before, after) = plan.split_at_mut(i);
        let (t_at, (tk, _, t_groups)) = &mut before[i - 1];
        let (f_at, (fk, f_res, f_grid)) = &mut after[0];
        if *tk != Kernel::MatmulTripleAdam || *fk != Kernel::MatmulGatherLatent {
            continue;
        }
        let (t_at, f_at) = (*t_at, *f_at);
        let tail: [u32; 2] = pod_read_unaligned(&slots[t_at][SLOT_TAIL_AT..SLOT_TAIL_AT + 8]);
        if tail[0] >= tail[1] || slots[f_at].len() != 256 {
            continue;
        }
        let qs: [MatmulParams; 3] = pod_read_unaligned(&slots[f_at][..192]);
        let reads: Vec<Range<u64>> = qs
            .iter()
            .flat_map(|q| [b_span(q), q.e_off as u64..q.e_off as u64 + q.n as u64])
            .collect();
        let moved = tail[0] as u64..tail[1] as u64;
        let groups = (tail[1] - tail[0]).div_ceil(ADAM_TAIL_PER_GROUP);
        let layers = groups.div_ceil((f_grid.0 * f_grid.1).max(1));
        let ok = disjoint(std::slice::from_ref(&moved), &reads)
            && ![Buf::Grads, Buf::AdamM, Buf::AdamV]
                .iter()
                .any(|b| f_res.contains(&Res::F(*b)))
            && slots[f_at][192..224].iter().all(|&b| b == 0)
            && f_grid.2 + layers <= 65_535
            && t_groups.0 > groups;
        if !ok {
            continue;
        }
        let pa: AdamParams = pod_read_unaligned(&slots[t_at][192..224]);
        slots[t_at][SLOT_TAIL_AT..SLOT_TAIL_AT + 8].copy_from_slice(bytes_of(&[tail[1]; 2]));
        t_groups.0 -= groups;
        let range = AdamParams {
            n: tail[1],
            first: tail[0],
            ..pa
        };
        slots[f_at][192..224].copy_from_slice(bytes_of(&range));
        *fk = Kernel::MatmulGatherAdam;
        f_res.extend([Res::F(Buf::Grads), Res::F(Buf::AdamM), Res::F(Buf::AdamV)]);
        f_grid.2 += layers;
    }
}

/// A triple's Adam tail run elsewhere ([`triple`]'s `tail_away`): Adam's params
/// and the parameters of the tail.
pub(super) type MovedTail = (AdamParams, Range<u32>);

/// The elements of B a product reads, as one span (from its first to its last).
pub(super) fn b_span(q: &MatmulParams) -> Range<u64> {
    let last = q.b_off as u64
        + (q.k.max(1) as u64 - 1) * q.b_sp as u64
        + (q.n.max(1) as u64 - 1) * q.b_sj as u64;
    q.b_off as u64..last + 1
}

/// Parameters `matmul_triple_adam` updates per workgroup after the triple's tiles
/// (`matmul_adam.wgsl`'s TAIL_PER_GROUP), and `matmul_gather_adam` in its extra
/// layers (`matmul_gather_adam.wgsl`'s).
pub(super) const ADAM_TAIL_PER_GROUP: u32 = 1024;

/// Whether a triple's products `qs` (writing `regions` of `c`, reading `reads`)
/// and `op`, the Adam step after them, can run as one `matmul_triple_adam`: `op`
/// is Adam over n parameters, `c` is the gradients it reads, no product reads the
/// parameters or the moments, each writes its C densely (row stride n, so that
/// the region it writes is every element of its span), and the parameters the
/// products do not write form one range (the tail, possibly empty). Returns
/// Adam's params and the tail.
pub(super) fn triple_adam(
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
pub(super) fn gather_product(op: &Op, next: &Op) -> Option<Lowered> {
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
pub(super) fn bce_epilogue(rest: &[Op], split: bool) -> Option<(Dispatch, Vec<u8>, [u32; 4])> {
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
pub(super) fn with_loss_tail(low: &mut Lowered, tail: [u32; 4]) {
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
