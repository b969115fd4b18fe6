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
    for bits in 0..4096 {
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
            tail_fc1: bits & 2048 != 0,
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
    let (d, bytes, adam, _) = triple([&fc3, &head, &fc1], None, None).expect("the step's three");
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
        let (d, bytes, with, _) = triple([&t[0], &t[1], &t[2]], Some(&a), None).expect("a triple");
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
        ..Fusions::BCE_KERNEL
    };
    let (plan, slots) = lower_all(&ops, bce);
    let (plain, _) = lower_all(&ops, Fusions::BCE_KERNEL);
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
        ..Fusions::BCE_KERNEL
    };
    let (plan, slots) = lower_all(&one, f);
    let (plain, plain_slots) = lower_all(&one, Fusions::BCE_KERNEL);
    assert_eq!(plan.len() + 1, plain.len());
    let (pair, fc3) = (8, 10);
    let (Op::Matmul { p: q0, .. }, Op::Matmul { p: q1, .. }) = (one[pair], one[pair + 1]) else {
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
    let joined = |ops: &[Op], f: Fusions| kernels(ops, f).iter().any(|d| d.1 == Kernel::MatmulBce);
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

/// With every fusion that removes a dispatch (Adam in the triple, whose tail —
/// fc4's parameters — stays in the triple once the latent backward joins fc4's
/// pair) and `tail_fc1`: in three steps, the first two triples hand their tails
/// to the next step's fc1 dispatch (`matmul_gather_adam`, extra layers of z), the
/// last keeps its own; slots as without it but for the triple's emptied tail and
/// the Adam step at fc1's `Slot.adam` with the tail as [first, n). Not without
/// the latent forward in fc1, nor where fc1's dispatch reads the tail's
/// parameters.
#[test]
fn the_triples_tail_moves_into_the_next_fc1() {
    let one = step();
    let three: Vec<Op> = [&one[..], &one[..], &one[..]].concat();
    let all_in = Fusions {
        adam: true,
        bce: true,
        bce_split: true,
        latent_fc1: true,
        latent_pair: true,
        ..Fusions::DEFAULT
    };
    let f = Fusions {
        tail_fc1: true,
        ..all_in
    };
    let (plan, slots) = lower_all(&three, f);
    let (plain, plain_slots) = lower_all(&three, all_in);
    assert_eq!(plan.len(), plain.len());
    assert_eq!(plan.len(), 3 * 4, "four dispatches a step");
    let n = one.len();
    let Op::Adam(pa) = one[n - 1] else {
        unreachable!()
    };
    // the tail: fc4's weights and bias, at the end of the parameters
    let Op::Matmul { p: q4, .. } = one[5] else {
        unreachable!()
    };
    let (start, end) = (pa.n - (q4.n * q4.k + q4.n), pa.n);
    let groups = (end - start).div_ceil(ADAM_TAIL_PER_GROUP);
    for step in 0..3 {
        let (triple, fc1) = (step * n + 11, step * n);
        let t = plan.iter().position(|d| d.0 == triple).unwrap();
        assert_eq!(plan[t].1 .0, Kernel::MatmulTripleAdam);
        let tail: [u32; 4] =
            bytemuck::pod_read_unaligned(&slots[triple][SLOT_TAIL_AT..SLOT_TAIL_AT + 16]);
        let was: [u32; 4] =
            bytemuck::pod_read_unaligned(&plain_slots[triple][SLOT_TAIL_AT..SLOT_TAIL_AT + 16]);
        assert_eq!(
            was,
            [start, end, 0, 0],
            "step {step}: the tail in the triple"
        );
        let f1 = plan.iter().position(|d| d.0 == fc1).unwrap();
        let (k, res, grid) = &plan[f1].1;
        let (pk, pres, pgrid) = &plain[f1].1;
        assert_eq!(*pk, Kernel::MatmulGatherLatent);
        if step < 2 {
            assert_eq!(tail, [end, end, 0, 0], "step {step}: moved");
            assert_eq!(plan[t].1 .2 .0 + groups, plain[t].1 .2 .0);
        } else {
            assert_eq!(tail, was, "the run's last step keeps its tail");
            assert_eq!(plan[t].1 .2, plain[t].1 .2);
        }
        assert_eq!(
            slots[triple][..SLOT_TAIL_AT],
            plain_slots[triple][..SLOT_TAIL_AT]
        );
        if step == 0 {
            // (no triple before the run's first step)
            assert_eq!(plan[f1], plain[f1]);
            assert_eq!(slots[fc1], plain_slots[fc1]);
            continue;
        }
        assert_eq!(*k, Kernel::MatmulGatherAdam);
        assert_eq!(res[..16], pres[..]);
        use Buf::*;
        assert_eq!(res[16..], [Res::F(Grads), Res::F(AdamM), Res::F(AdamV)]);
        let layers = groups.div_ceil(pgrid.0 * pgrid.1);
        assert_eq!(layers, 6, "308 workgroups in layers of 13 × 4");
        assert_eq!(*grid, (pgrid.0, pgrid.1, pgrid.2 + layers));
        let mut want = plain_slots[fc1].clone();
        let moved = crate::cpu::AdamParams {
            n: end,
            first: start,
            ..pa
        };
        want[192..224].copy_from_slice(bytemuck::bytes_of(&moved));
        assert_eq!(slots[fc1], want, "step {step}");
    }
    // everything else (the fc4 products and pairs between) as without it
    let rest = |plan: &[(usize, Dispatch)]| -> Vec<(usize, Dispatch)> {
        plan.iter()
            .filter(|(_, d)| {
                !matches!(
                    d.0,
                    Kernel::MatmulGatherAdam
                        | Kernel::MatmulGatherLatent
                        | Kernel::MatmulTripleAdam
                )
            })
            .cloned()
            .collect()
    };
    assert_eq!(rest(&plan), rest(&plain));
    let moved = |ops: &[Op], f: Fusions| {
        kernels(ops, f)
            .iter()
            .filter(|d| d.1 == Kernel::MatmulGatherAdam)
            .count()
    };
    assert_eq!(moved(&three, f), 2);
    // refused: one step (no next fc1); without the latent forward in fc1 or Adam
    // in the triple; where the second step's fc3 product reads fc4's bias
    assert_eq!(moved(&one, f), 0);
    assert_eq!(
        moved(
            &three,
            Fusions {
                latent_fc1: false,
                ..f
            }
        ),
        0
    );
    assert_eq!(moved(&three, Fusions { adam: false, ..f }), 0);
    let mut reads_tail = three.clone();
    if let Op::Matmul { p, .. } = &mut reads_tail[n + 4] {
        p.e_off = end - p.n;
    }
    assert_eq!(moved(&reads_tail, f), 1, "the third step's fc1 only");
    // and without the flag, the triple keeps it
    assert_eq!(moved(&three, all_in), 0);
}
