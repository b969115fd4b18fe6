//! `GpuContext`: device, queue, one compute pipeline per kernel, explicit
//! bind-group layouts, and wgpu errors turned into `anyhow` errors. The optional
//! features used where offered (subgroups, timestamps) are decided here
//! ([`FeatureUse`]); kernels that reduce over a workgroup get the subgroup or the
//! portable `workgroup_sum` helper appended to their source ([`Reduce`]).

use anyhow::{anyhow, bail, Context, Result};
use std::sync::{Arc, Mutex};

/// (file name, source) of a file in `shaders/`, compiled in.
macro_rules! wgsl {
    ($file:literal) => {
        ($file, include_str!(concat!("../../shaders/", $file)))
    };
}

/// Every WGSL entry point, with its file and its group-0 bindings
/// (binding number, read-only?). Group 1 is always the one dynamic-offset uniform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    Gather,
    Matmul,
    MatmulPair,
    MatmulTriple,
    MatmulTripleAdam,
    MatmulGather,
    MatmulReduce,
    MatmulBce,
    MatmulPairLoss,
    MatmulLatent,
    MatmulGatherLatent,
    MatmulPairLatent,
    MatmulGatherAdam,
    ReparamForward,
    ReparamBackward,
    Bce,
    Loss,
    Adam,
    AdamGather,
    LatentForward,
    LatentBackward,
    LatentBackwardAdam,
}

/// `matmul.wgsl`'s products: a, b, e → c, or → partial sums when K is split; c2 and
/// a1 (problem 1 of a pair: bound to c's and a's buffers again for a lone product).
const MATMUL_BINDINGS: [(u32, bool); 7] = [
    (0, true),
    (1, true),
    (2, true),
    (3, false),
    (4, false),
    (6, false),
    (7, true),
];

/// `matmul_triple`: the pair's, then problem 2's A and B (never split: the partial
/// sums unused, but bound, as the shared tile code names them).
const MATMUL_TRIPLE_BINDINGS: [(u32, bool); 9] = then(&MATMUL_BINDINGS, &[(8, true), (9, true)]);

/// `matmul_triple_adam`: the triple's, then Adam's parameters, m and v.
const MATMUL_TRIPLE_ADAM_BINDINGS: [(u32, bool); 12] = then(
    &MATMUL_TRIPLE_BINDINGS,
    &[(12, false), (13, false), (14, false)],
);

/// `matmul_bce`: the product's, then x, the row shares of the BCE
/// (`matmul_bce.wgsl`) and the tile counters of its split product
/// (`last_block.wgsl`).
const MATMUL_BCE_BINDINGS: [(u32, bool); 10] =
    then(&MATMUL_BINDINGS, &[(18, true), (19, false), (26, false)]);

/// `matmul_latent.wgsl`'s: the latent forward's outputs (head, ε, z, KL,
/// log p − log q, h3), its counters (`last_block.wgsl`) and the head's shares
/// (`latent_tail.wgsl`).
const LATENT_TAIL: [(u32, bool); 8] = [
    (20, false),
    (21, false),
    (22, false),
    (23, false),
    (24, false),
    (25, false),
    (26, false),
    (27, false),
];

/// `matmul_latent`: the product's (fc1's), then [`LATENT_TAIL`].
const MATMUL_LATENT_BINDINGS: [(u32, bool); 15] = then(&MATMUL_BINDINGS, &LATENT_TAIL);

/// `matmul_pair_loss`: the pair's, then the BCE's row shares and the KL → the
/// BCE and the per-image losses (`matmul_loss.wgsl`).
const MATMUL_PAIR_LOSS_BINDINGS: [(u32, bool); 11] = then(
    &MATMUL_BINDINGS,
    &[(19, true), (20, true), (21, false), (22, false)],
);

/// `matmul_pair_latent`: the pair loss's (its loss bindings bound even where it
/// finishes no loss: they are named by its code), its counters (`last_block.wgsl`)
/// and the shares of dz (`latent_tail.wgsl`), then the latent backward's head, ε
/// and h1 (mask) → dz, dhead, dh1 (`matmul_latent_backward.wgsl`).
const MATMUL_PAIR_LATENT_BINDINGS: [(u32, bool); 19] = then(
    &MATMUL_PAIR_LOSS_BINDINGS,
    &[
        (26, false),
        (27, false),
        (28, true),
        (29, true),
        (30, true),
        (31, false),
        (32, false),
        (33, false),
    ],
);

/// The bindings `first`, then `more` (M of them in all).
const fn then<const M: usize>(first: &[(u32, bool)], more: &[(u32, bool)]) -> [(u32, bool); M] {
    assert!(first.len() + more.len() == M);
    let mut b = [(0, true); M];
    let mut i = 0;
    while i < M {
        b[i] = if i < first.len() {
            first[i]
        } else {
            more[i - first.len()]
        };
        i += 1;
    }
    b
}

/// `latent_backward` after its parameters: h1 (mask), head, eps, dh3 (written when
/// read from split sums) → dz, dhead, dh1; split sums, epilogue operand.
const LATENT_BACKWARD_REST: [(u32, bool); 9] = [
    (1, false),
    (2, false),
    (3, false),
    (8, false),
    (9, false),
    (12, false),
    (13, false),
    (10, true),
    (11, true),
];

/// `latent_backward`: the parameters (read-only), then the rest.
const LATENT_BACKWARD_BINDINGS: [(u32, bool); 10] = then(&[(0, true)], &LATENT_BACKWARD_REST);

/// `latent_backward_adam`: the parameters (read-write), latent_backward's rest, then
/// Adam's gradients, m and v.
const LATENT_BACKWARD_ADAM_BINDINGS: [(u32, bool); 13] = then(
    &then::<10>(&[(0, false)], &LATENT_BACKWARD_REST),
    &[(14, true), (15, false), (16, false)],
);

/// `matmul_gather` after b and e: c (or partial sums), c2 (bound to c again),
/// then the image store and the index → x.
const GATHER_REST: [(u32, bool); 6] = [
    (3, false),
    (4, false),
    (6, false),
    (15, true),
    (16, true),
    (17, false),
];

/// `matmul_gather`: b, e (read-only), then [`GATHER_REST`].
const MATMUL_GATHER_BINDINGS: [(u32, bool); 8] = then(&[(1, true), (2, true)], &GATHER_REST);

/// `matmul_gather_latent`: `matmul_gather`'s, then [`LATENT_TAIL`].
const MATMUL_GATHER_LATENT_BINDINGS: [(u32, bool); 16] =
    then(&MATMUL_GATHER_BINDINGS, &LATENT_TAIL);

/// `matmul_gather_adam`: `matmul_gather_latent`'s with b and e read-write (the
/// parameters, which its extra workgroups update: `matmul_be_rw.wgsl`), then
/// Adam's gradients, m and v (`matmul_gather_adam.wgsl`).
const MATMUL_GATHER_ADAM_BINDINGS: [(u32, bool); 19] = then(
    &then::<16>(
        &then::<8>(&[(1, false), (2, false)], &GATHER_REST),
        &LATENT_TAIL,
    ),
    &[(12, true), (13, false), (14, false)],
);

const ADAM_UPDATE: (&str, &str) = wgsl!("adam_update.wgsl");

impl Kernel {
    pub const ALL: [Kernel; 22] = [
        Kernel::Gather,
        Kernel::Matmul,
        Kernel::MatmulPair,
        Kernel::MatmulTriple,
        Kernel::MatmulTripleAdam,
        Kernel::MatmulGather,
        Kernel::MatmulReduce,
        Kernel::MatmulBce,
        Kernel::MatmulPairLoss,
        Kernel::MatmulLatent,
        Kernel::MatmulGatherLatent,
        Kernel::MatmulPairLatent,
        Kernel::MatmulGatherAdam,
        Kernel::ReparamForward,
        Kernel::ReparamBackward,
        Kernel::Bce,
        Kernel::Loss,
        Kernel::Adam,
        Kernel::AdamGather,
        Kernel::LatentForward,
        Kernel::LatentBackward,
        Kernel::LatentBackwardAdam,
    ];

    /// (file name, WGSL source) of the file that holds the entry point.
    pub fn source(self) -> (&'static str, &'static str) {
        match self {
            Kernel::Gather => GATHER,
            Kernel::Matmul
            | Kernel::MatmulPair
            | Kernel::MatmulTriple
            | Kernel::MatmulTripleAdam
            | Kernel::MatmulGather
            | Kernel::MatmulReduce
            | Kernel::MatmulBce
            | Kernel::MatmulPairLoss
            | Kernel::MatmulLatent
            | Kernel::MatmulGatherLatent
            | Kernel::MatmulPairLatent
            | Kernel::MatmulGatherAdam => wgsl!("matmul.wgsl"),
            Kernel::ReparamForward | Kernel::ReparamBackward => {
                wgsl!("reparam.wgsl")
            }
            Kernel::Bce => wgsl!("bce.wgsl"),
            Kernel::Loss => wgsl!("loss.wgsl"),
            Kernel::Adam => ADAM,
            Kernel::AdamGather => wgsl!("adam_gather.wgsl"),
            Kernel::LatentForward | Kernel::LatentBackward | Kernel::LatentBackwardAdam => {
                wgsl!("latent.wgsl")
            }
        }
    }

    /// Whether the kernel is one of `matmul.wgsl`'s entry points.
    pub fn is_matmul(self) -> bool {
        matches!(
            self,
            Kernel::Matmul
                | Kernel::MatmulPair
                | Kernel::MatmulTriple
                | Kernel::MatmulTripleAdam
                | Kernel::MatmulGather
                | Kernel::MatmulReduce
                | Kernel::MatmulBce
                | Kernel::MatmulPairLoss
                | Kernel::MatmulLatent
                | Kernel::MatmulGatherLatent
                | Kernel::MatmulPairLatent
                | Kernel::MatmulGatherAdam
        )
    }

    /// Whether the kernel calls `workgroup_sum` (and so needs a [`Reduce`] helper).
    pub fn reduces(self) -> bool {
        matches!(self, Kernel::Bce | Kernel::Loss)
    }

    /// Whether the kernel can read its input product from split-K partial sums
    /// (and so needs `split_source.wgsl`).
    pub fn reads_split(self) -> bool {
        matches!(
            self,
            Kernel::Bce
                | Kernel::ReparamForward
                | Kernel::ReparamBackward
                | Kernel::LatentForward
                | Kernel::LatentBackward
                | Kernel::LatentBackwardAdam
        )
    }

    /// The files its shader module is assembled from, in order: the kernel's file;
    /// for `matmul.wgsl`'s kernels the bindings of B and the epilogue operand
    /// (`matmul_be.wgsl`, read-only, or `matmul_be_rw.wgsl` for
    /// `matmul_gather_adam`, which is `matmul_gather_latent` with
    /// `matmul_gather_adam.wgsl`: the previous step's Adam tail in extra
    /// workgroups), their split-K partial sums
    /// (`matmul_partial.wgsl`, or for the kernels whose last K share of a tile
    /// reads the others' — `matmul_bce`, `matmul_latent`, `matmul_gather_latent`,
    /// `matmul_pair_latent`, `matmul_gather_adam` — those of `partials`:
    /// `matmul_partial_atomic.wgsl` or, with the FMA walk, `matmul_partial_coherent.wgsl`;
    /// the tensor-core walk always gets the atomics), where their
    /// problems read their operands (`matmul_triple_operands.wgsl` for the
    /// triples, which bind two buffers more, `matmul_gather_operands.wgsl` for
    /// `matmul_gather` and `matmul_gather_latent`, `matmul_operands.wgsl` for the
    /// others) and what follows a stored element (`matmul_adam.wgsl` for
    /// `matmul_triple_adam`, `matmul_bce.wgsl` for `matmul_bce`,
    /// `matmul_latent.wgsl` for `matmul_latent` and `matmul_gather_latent`,
    /// `matmul_latent_backward.wgsl` for `matmul_pair_latent`, with
    /// `last_block.wgsl` for these four and `latent_tail.wgsl` for the last three,
    /// `matmul_store.wgsl` for the others), and
    /// for `matmul_pair_loss` and `matmul_pair_latent` the loss's extra workgroups
    /// (`matmul_loss.wgsl`); `adam_update.wgsl` for them and the Adam kernels; for
    /// the latent kernels their parameters' binding (`latent_params.wgsl`, read-only,
    /// or `latent_adam.wgsl`, read-write, with `latent_backward_adam`) and
    /// `adam_update.wgsl`; for
    /// `adam_gather`, `adam.wgsl` and `gather.wgsl`; `pixel.wgsl` for the kernels
    /// that unpack the image store; `normal.wgsl` (ε) for the
    /// kernels that draw it; the workgroup-reduction helper of variant `r` if the
    /// kernel reduces; `split_source.wgsl` if it reads split products or is one of
    /// `matmul.wgsl`'s (whose `matmul_reduce` sums with it).
    /// The matmul kernels get their K walk, `walk`'s files, too: `matmul_walk.wgsl`,
    /// or `matmul_walk_coop.wgsl` with its fragment shape (`coop16.wgsl` or
    /// `coop8.wgsl`) opening the module (its `enable` directives must come first).
    pub fn parts(
        self,
        r: Reduce,
        walk: Walk,
        partials: Partials,
    ) -> Vec<(&'static str, &'static str)> {
        const OPERANDS: (&str, &str) = wgsl!("matmul_operands.wgsl");
        const TRIPLE_OPERANDS: (&str, &str) = wgsl!("matmul_triple_operands.wgsl");
        const GATHER_OPERANDS: (&str, &str) = wgsl!("matmul_gather_operands.wgsl");
        const STORE: (&str, &str) = wgsl!("matmul_store.wgsl");
        const STORE_ADAM: (&str, &str) = wgsl!("matmul_adam.wgsl");
        const STORE_BCE: (&str, &str) = wgsl!("matmul_bce.wgsl");
        const LOSS: (&str, &str) = wgsl!("matmul_loss.wgsl");
        const LAST_BLOCK: (&str, &str) = wgsl!("last_block.wgsl");
        const LATENT: (&str, &str) = wgsl!("matmul_latent.wgsl");
        const LATENT_TAIL: (&str, &str) = wgsl!("latent_tail.wgsl");
        let mut v = vec![self.source()];
        if self.is_matmul() {
            if let Some(shape) = walk.shape() {
                v.insert(0, shape);
            }
            // (B and e: read-write where the kernel writes the parameters)
            v.push(if self == Kernel::MatmulGatherAdam {
                wgsl!("matmul_be_rw.wgsl")
            } else {
                wgsl!("matmul_be.wgsl")
            });
            v.push(walk.source());
        }
        // (the split-K partial sums: atomics or @coherent where a tile's last K
        // share reads the others' in the same dispatch; naga declares the Vulkan
        // memory model, where SPIR-V forbids Coherent, in the entry points that walk
        // K on the tensor cores: tests/naga.rs)
        match self {
            Kernel::MatmulBce
            | Kernel::MatmulLatent
            | Kernel::MatmulGatherLatent
            | Kernel::MatmulPairLatent
            | Kernel::MatmulGatherAdam => v.push(if walk == Walk::Fma {
                partials.source()
            } else {
                Partials::Atomic.source()
            }),
            k if k.is_matmul() => v.push(wgsl!("matmul_partial.wgsl")),
            _ => {}
        }
        match self {
            Kernel::Matmul | Kernel::MatmulPair | Kernel::MatmulReduce => {
                v.extend([OPERANDS, STORE])
            }
            Kernel::MatmulTriple => v.extend([TRIPLE_OPERANDS, STORE]),
            Kernel::MatmulTripleAdam => v.extend([TRIPLE_OPERANDS, STORE_ADAM]),
            Kernel::MatmulGather => v.extend([GATHER_OPERANDS, STORE]),
            Kernel::MatmulBce => v.extend([OPERANDS, STORE_BCE, LAST_BLOCK]),
            Kernel::MatmulLatent => v.extend([OPERANDS, LATENT, LAST_BLOCK, LATENT_TAIL]),
            Kernel::MatmulGatherLatent | Kernel::MatmulGatherAdam => {
                v.extend([GATHER_OPERANDS, LATENT, LAST_BLOCK, LATENT_TAIL]);
                if self == Kernel::MatmulGatherAdam {
                    v.push(wgsl!("matmul_gather_adam.wgsl"));
                }
            }
            Kernel::MatmulPairLoss => v.extend([OPERANDS, STORE, LOSS]),
            Kernel::MatmulPairLatent => v.extend([
                OPERANDS,
                wgsl!("matmul_latent_backward.wgsl"),
                LAST_BLOCK,
                LATENT_TAIL,
                LOSS,
            ]),
            _ => {}
        }
        // (the latent kernels' parameters read-only, or read-write with Adam; all
        // name AdamParams in their uniform)
        match self {
            Kernel::LatentForward | Kernel::LatentBackward => {
                v.extend([wgsl!("latent_params.wgsl"), ADAM_UPDATE])
            }
            Kernel::LatentBackwardAdam => v.extend([wgsl!("latent_adam.wgsl"), ADAM_UPDATE]),
            _ => {}
        }
        if self.is_matmul() || self == Kernel::Adam {
            v.push(ADAM_UPDATE);
        }
        if self == Kernel::AdamGather {
            v.extend([ADAM, ADAM_UPDATE, GATHER]);
        }
        if matches!(
            self,
            Kernel::Gather
                | Kernel::AdamGather
                | Kernel::MatmulGather
                | Kernel::MatmulGatherLatent
                | Kernel::MatmulGatherAdam
        ) {
            v.push(PIXEL);
        }
        if matches!(
            self,
            Kernel::ReparamForward
                | Kernel::ReparamBackward
                | Kernel::LatentForward
                | Kernel::LatentBackward
                | Kernel::LatentBackwardAdam
                | Kernel::MatmulLatent
                | Kernel::MatmulGatherLatent
                | Kernel::MatmulGatherAdam
        ) {
            v.push(NORMAL);
        }
        if self.reduces() {
            v.push(r.source());
        }
        if self.reads_split() || self.is_matmul() {
            v.push(SPLIT_SOURCE);
        }
        v
    }

    /// Values for the module's pipeline-overridable constants: the matmul's
    /// `PREFETCH` ([`GpuOptions::prefetch`]), `ONES` ([`GpuOptions::ones_column`]),
    /// `EARLY` ([`GpuOptions::early_reads`]) and, with the tensor-core walk, `SG` (the subgroup size it was chosen for)
    /// and `KR` (its K step / 32), else `TILES` ([`GpuOptions::double_tiles`]),
    /// the latent kernels' workgroup size `WG` ([`GpuOptions::latent_threads`], 256
    /// where unset); `EARLY` ([`GpuOptions::early_reads`]) for both and for the
    /// BCE kernel; none for the other kernels.
    pub fn constants(self, opts: &GpuOptions) -> Vec<(&'static str, f64)> {
        match self {
            Kernel::LatentForward | Kernel::LatentBackward | Kernel::LatentBackwardAdam => {
                vec![
                    ("WG", opts.latent_threads.unwrap_or(256) as f64),
                    ("EARLY", if opts.early_reads { 1.0 } else { 0.0 }),
                ]
            }
            Kernel::Bce => vec![("EARLY", if opts.early_reads { 1.0 } else { 0.0 })],
            k if k.is_matmul() => {
                // (None — resolved by the context before it builds a pipeline — is off)
                let ones = opts.ones_column == Some(true);
                let mut c = vec![
                    ("PREFETCH", if opts.prefetch { 1.0 } else { 0.0 }),
                    ("ONES", if ones { 1.0 } else { 0.0 }),
                    ("EARLY", if opts.early_reads { 1.0 } else { 0.0 }),
                ];
                match opts.coop_use {
                    Some((_, sg)) => {
                        c.push(("SG", sg as f64));
                        c.push(("KR", (opts.coop_step / 32) as f64));
                    }
                    None => c.push(("TILES", if opts.double_tiles { 2.0 } else { 1.0 })),
                }
                c
            }
            _ => Vec::new(),
        }
    }

    pub fn entry(self) -> &'static str {
        match self {
            Kernel::Gather => "gather_pixels",
            Kernel::Matmul => "matmul",
            Kernel::MatmulPair => "matmul_pair",
            Kernel::MatmulTriple => "matmul_triple",
            Kernel::MatmulTripleAdam => "matmul_triple_adam",
            Kernel::MatmulGather | Kernel::MatmulGatherLatent => "matmul_gather",
            Kernel::MatmulGatherAdam => "matmul_gather_adam",
            Kernel::MatmulReduce => "matmul_reduce",
            // (`matmul` of the module with matmul_bce.wgsl's epilogue)
            Kernel::MatmulBce | Kernel::MatmulLatent => "matmul",
            // (with matmul_latent_backward.wgsl's epilogue for the latter)
            Kernel::MatmulPairLoss | Kernel::MatmulPairLatent => "matmul_pair_loss",
            Kernel::ReparamForward => "reparam_forward",
            Kernel::ReparamBackward => "reparam_backward",
            Kernel::Bce => "bce_logits",
            Kernel::Loss => "loss_reduce",
            Kernel::Adam => "adam",
            Kernel::AdamGather => "adam_gather",
            Kernel::LatentForward => "latent_forward",
            Kernel::LatentBackward => "latent_backward",
            Kernel::LatentBackwardAdam => "latent_backward_adam",
        }
    }

    /// Group-0 storage bindings in the order the backend supplies buffers.
    pub fn bindings(self) -> &'static [(u32, bool)] {
        match self {
            // data, idx → x
            Kernel::Gather => &[(4, true), (5, true), (6, false)],
            Kernel::Matmul | Kernel::MatmulPair => &MATMUL_BINDINGS,
            Kernel::MatmulTriple => &MATMUL_TRIPLE_BINDINGS,
            Kernel::MatmulTripleAdam => &MATMUL_TRIPLE_ADAM_BINDINGS,
            Kernel::MatmulGather => &MATMUL_GATHER_BINDINGS,
            Kernel::MatmulBce => &MATMUL_BCE_BINDINGS,
            Kernel::MatmulLatent => &MATMUL_LATENT_BINDINGS,
            Kernel::MatmulGatherLatent => &MATMUL_GATHER_LATENT_BINDINGS,
            Kernel::MatmulGatherAdam => &MATMUL_GATHER_ADAM_BINDINGS,
            Kernel::MatmulPairLoss => &MATMUL_PAIR_LOSS_BINDINGS,
            Kernel::MatmulPairLatent => &MATMUL_PAIR_LATENT_BINDINGS,
            // partial sums, e (split_source.wgsl's bindings) → c (c2 as for matmul)
            Kernel::MatmulReduce => &[(10, true), (11, true), (3, false), (6, false)],
            // head → z, eps, kl, logpq
            // head (written when read from split sums) → z, eps, kl, logpq; split sums, bias
            Kernel::ReparamForward => &[
                (0, false),
                (1, false),
                (2, false),
                (3, false),
                (8, false),
                (10, true),
                (11, true),
            ],
            // dz, eps, head → dhead
            // (dz written when read from split sums); split sums, bias
            Kernel::ReparamBackward => &[
                (4, false),
                (5, true),
                (6, true),
                (7, false),
                (10, true),
                (11, true),
            ],
            // x, logits (in/out) → bce; kl → sample_loss (with the loss folded in)
            // split sums, bias (logits read from split sums)
            Kernel::Bce => &[
                (0, true),
                (1, false),
                (2, false),
                (3, true),
                (4, false),
                (10, true),
                (11, true),
            ],
            // bce, kl → sample_loss, batch_loss; logpq
            Kernel::Loss => &[(0, true), (1, true), (2, false), (3, false), (4, true)],
            // params (in/out), grads, m, v
            Kernel::Adam => &[(0, false), (1, true), (2, false), (3, false)],
            // Adam's, then the gather's
            Kernel::AdamGather => &[
                (0, false),
                (1, true),
                (2, false),
                (3, false),
                (4, true),
                (5, true),
                (6, false),
            ],
            // params, h1 (written when read from split sums) → head, eps, z, kl,
            // logpq, h3; split sums, epilogue operand
            Kernel::LatentForward => &[
                (0, true),
                (1, false),
                (2, false),
                (3, false),
                (4, false),
                (5, false),
                (6, false),
                (7, false),
                (10, true),
                (11, true),
            ],
            Kernel::LatentBackward => &LATENT_BACKWARD_BINDINGS,
            Kernel::LatentBackwardAdam => &LATENT_BACKWARD_ADAM_BINDINGS,
        }
    }
}

const NORMAL: (&str, &str) = wgsl!("normal.wgsl");
const ADAM: (&str, &str) = wgsl!("adam.wgsl");
const GATHER: (&str, &str) = wgsl!("gather.wgsl");
const PIXEL: (&str, &str) = wgsl!("pixel.wgsl");

/// The helper that reads a product from its split-K partial sums ([`Kernel::reads_split`]).
pub const SPLIT_SOURCE: (&str, &str) = wgsl!("split_source.wgsl");

/// How the kernels that reduce over a workgroup (`bce.wgsl`, `loss.wgsl`) do it:
/// which helper file defining `workgroup_sum` is appended to their source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reduce {
    /// a tree in workgroup memory (every device)
    Portable,
    /// subgroupAdd, then one step across subgroups (devices with `Features::SUBGROUP`)
    Subgroup,
}

impl Reduce {
    pub const ALL: [Reduce; 2] = [Reduce::Portable, Reduce::Subgroup];

    /// (file name, WGSL source) of the helper.
    pub fn source(self) -> (&'static str, &'static str) {
        match self {
            Reduce::Portable => wgsl!("reduce_portable.wgsl"),
            Reduce::Subgroup => wgsl!("reduce_subgroup.wgsl"),
        }
    }

    /// The naga capabilities a module of this variant needs.
    pub fn capabilities(self) -> naga::valid::Capabilities {
        match self {
            Reduce::Portable => naga::valid::Capabilities::empty(),
            Reduce::Subgroup => naga::valid::Capabilities::SUBGROUP,
        }
    }
}

/// How the matmul kernels walk K ([`Kernel::parts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Walk {
    /// f32 fmas on every thread (`matmul_walk.wgsl`; every device)
    Fma,
    /// cooperative matrices of 16×16×16, f16 operands into f32 sums
    /// (`matmul_walk_coop.wgsl` with `coop16.wgsl`: tensor cores;
    /// `VAE_OOD_GPU_COOP=1` on devices with them, see [`coop_support`])
    Coop16,
    /// the same walk with fragments of 8×8×8 (`coop8.wgsl`): devices that have
    /// only those, lavapipe among them
    Coop8,
}

impl Walk {
    pub const ALL: [Walk; 3] = [Walk::Fma, Walk::Coop16, Walk::Coop8];

    /// (file name, WGSL source) of the walk.
    pub fn source(self) -> (&'static str, &'static str) {
        match self {
            Walk::Fma => wgsl!("matmul_walk.wgsl"),
            Walk::Coop16 | Walk::Coop8 => wgsl!("matmul_walk_coop.wgsl"),
        }
    }

    /// The fragment shape that opens a tensor-core module.
    pub fn shape(self) -> Option<(&'static str, &'static str)> {
        match self {
            Walk::Fma => None,
            Walk::Coop16 => Some(wgsl!("coop16.wgsl")),
            Walk::Coop8 => Some(wgsl!("coop8.wgsl")),
        }
    }

    /// The tensor-core walk with fragments of `frag` (16 or 8).
    pub fn coop(frag: u32) -> Walk {
        if frag == 8 {
            Walk::Coop8
        } else {
            Walk::Coop16
        }
    }

    /// The naga capabilities a matmul module with this walk needs.
    pub fn capabilities(self) -> naga::valid::Capabilities {
        match self {
            Walk::Fma => naga::valid::Capabilities::empty(),
            Walk::Coop16 | Walk::Coop8 => {
                naga::valid::Capabilities::SHADER_FLOAT16
                    | naga::valid::Capabilities::COOPERATIVE_MATRIX
            }
        }
    }
}

/// How the kernels whose last K share of a tile reads the other shares' partial
/// sums in the same dispatch (`matmul_bce`, `matmul_latent`,
/// `matmul_gather_latent`, `matmul_pair_latent`, `matmul_gather_adam`) read them
/// ([`Kernel::parts`]); the other matmul kernels read partial sums only across a
/// dispatch boundary, as plain f32 (`matmul_partial.wgsl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Partials {
    /// as the bits of f32 in atomics (`matmul_partial_atomic.wgsl`; every device)
    Atomic,
    /// as plain f32 loads of a buffer declared `@coherent`
    /// (`matmul_partial_coherent.wgsl`; devices with
    /// `Features::MEMORY_DECORATION_COHERENT` and the FMA walk, where
    /// [`GpuOptions::coherent`] asks for it)
    Coherent,
}

impl Partials {
    pub const ALL: [Partials; 2] = [Partials::Atomic, Partials::Coherent];

    /// (file name, WGSL source) of the last-block kernels' partial sums.
    pub fn source(self) -> (&'static str, &'static str) {
        match self {
            Partials::Atomic => wgsl!("matmul_partial_atomic.wgsl"),
            Partials::Coherent => wgsl!("matmul_partial_coherent.wgsl"),
        }
    }

    /// The naga capabilities a module of this variant needs.
    pub fn capabilities(self) -> naga::valid::Capabilities {
        match self {
            Partials::Atomic => naga::valid::Capabilities::empty(),
            Partials::Coherent => naga::valid::Capabilities::MEMORY_DECORATION_COHERENT,
        }
    }
}

/// Set to 1 to force the portable reductions on a device that offers subgroups.
pub const NO_SUBGROUPS_ENV: &str = crate::knobs::NO_SUBGROUPS;

/// Whether to use subgroup operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subgroups {
    /// where the adapter offers `Features::SUBGROUP`
    Auto,
    /// never (the portable path)
    Off,
    /// always: opening a device without the feature is an error (tests)
    Require,
}

/// Choices made when opening the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuOptions {
    pub subgroups: Subgroups,
    /// which of wgpu's runtime checks the shaders are compiled with (see
    /// [`build_pipeline`]); none (trusted modules) is the default
    pub checks: ShaderChecks,
    /// the matmul issues its reads of the next K step before the multiply of the
    /// current one (on by default, `VAE_OOD_GPU_PREFETCH=0` switches it off;
    /// identical bits)
    pub prefetch: bool,
    /// the matmul gets a bias gradient as an extra column of ones in B instead of
    /// row sums beside the multiply (`matmul.wgsl`'s `ONES`; `VAE_OOD_GPU_ONES_COLUMN`):
    /// None for on where the walk is the tensor cores (the default there since
    /// 2026-11-28: 0.95× the time per step on an NVIDIA H200; f32 sums of the
    /// f16-rounded operand, as the weight gradient's) and off on the FMA walk (where
    /// it gives identical bits and was level at best). The context records what it
    /// chose here.
    pub ones_column: Option<bool>,
    /// the most storage buffers per shader stage to request (None: as many as the
    /// widest kernel binds, where the adapter has them). Kernels binding more are
    /// not built ([`GpuContext::has`]); tests set 8 (WebGPU's default) to run the
    /// path of a device without the latent kernels on any adapter.
    pub storage_buffers: Option<u32>,
    /// threads per workgroup of the latent kernels (`VAE_OOD_GPU_LATENT_THREADS`):
    /// None for the most the device allows up to [`LATENT_THREADS_MAX`] on the FMA
    /// walk and up to [`LATENT_THREADS_COOP`] on the tensor cores (a power of two, at
    /// least WebGPU's default 256). The context records the number it chose here.
    pub latent_threads: Option<u32>,
    /// whether the matmul kernels walk K on tensor cores, f16 operands into f32
    /// sums ([`Walk::Coop16`]): [`Coop::Off`] here (the exact f32 products the
    /// tests compare with their CPU twins), [`Coop::Auto`] from the environment
    /// unless `VAE_OOD_GPU_COOP` says otherwise ([`GpuOptions::from_env`])
    pub coop: Coop,
    /// the tensor-core walk's (fragment size, subgroup size `SG`): the context
    /// records what it chose for the adapter here when `coop` is on
    pub coop_use: Option<(u32, u32)>,
    /// the K the tensor-core walk consumes per step (and barrier): 32 (the
    /// default), 64 or 128 (`VAE_OOD_GPU_COOP_STEP`)
    pub coop_step: u32,
    /// the FMA walk's tiles double-buffered, one barrier per K step
    /// (`VAE_OOD_GPU_DOUBLE_TILES=1`; identical bits; off by default)
    pub double_tiles: bool,
    /// the kernels issue the reads whose addresses they know from the start —
    /// the latent kernels', the BCE kernel's and the matmul epilogues' operands —
    /// before the work that comes first (`EARLY` in `latent.wgsl` and `matmul.wgsl`;
    /// `VAE_OOD_GPU_EARLY_READS=1`; identical bits; off by default)
    pub early_reads: bool,
    /// the kernels whose last K share of a tile reads the others' partial sums in
    /// the same dispatch read them as plain loads of a `@coherent` buffer where
    /// the device offers it and the walk is the FMA one ([`Partials::Coherent`]),
    /// not as atomics (`VAE_OOD_GPU_COHERENT=1`; identical bits; off by default:
    /// level on an H200)
    pub coherent: bool,
    /// the persistent step (`VAE_OOD_GPU_PERSISTENT=G` or `auto`,
    /// `src/gpu/persistent.rs`): runs of up to `persistent_phases` consecutive
    /// dispatches as one dispatch of G workgroups with grid barriers between its
    /// phases; None: off (the default)
    pub persistent: Option<PersistentGroups>,
    /// the most dispatches one persistent dispatch runs as its phases, whole
    /// training steps only (`VAE_OOD_GPU_PERSISTENT_PHASES`; 7 by default, one step)
    pub persistent_phases: u32,
    /// the persistent step on the tensor cores from its WGSL as wgpu compiles it
    /// (plain loads), not as SPIR-V with its cross-phase accesses made visible
    /// (`persistent/spirv.rs`; `VAE_OOD_GPU_PERSISTENT_PLAIN=1`; off by default)
    pub persistent_plain: bool,
}

/// Whether the matmul kernels walk K on tensor cores (`VAE_OOD_GPU_COOP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coop {
    /// never: the FMA walk, f32 products (`VAE_OOD_GPU_COOP=0`;
    /// `GpuOptions::default()`, which the tests use)
    Off,
    /// where the adapter has tensor cores the walk can use ([`coop_support`]),
    /// else the FMA walk; if the tensor-core device or its pipelines fail to open,
    /// the FMA walk with a one-line notice (`VAE_OOD_GPU_COOP` unset: the
    /// program's default since 2026-11-27, 0.909× the FMA walk's time per step on an
    /// NVIDIA H200)
    Auto,
    /// always: opening a device without them is an error (`VAE_OOD_GPU_COOP=1`)
    Require,
}

impl Coop {
    /// `VAE_OOD_GPU_COOP`: `0` → off, `1` → required, unset or empty → auto.
    pub fn from_env() -> Coop {
        match crate::knobs::tristate(crate::knobs::GPU_COOP) {
            Some(false) => Coop::Off,
            Some(true) => Coop::Require,
            None => Coop::Auto,
        }
    }
}

/// The most threads per workgroup the latent kernels use (`latent.wgsl`'s share
/// array holds one partial sum per thread).
pub const LATENT_THREADS_MAX: u32 = 1024;

/// The most threads per workgroup the latent kernels use by default where the
/// matmul kernels walk K on the tensor cores: with the ones column there, 72.9–73.3
/// against 74.0 µs per training step with 1,024 on an NVIDIA H200 (2026-11-28,
/// medians of 5 interleaved rounds, `bench/results/h200-2026-11-28.md`).
pub const LATENT_THREADS_COOP: u32 = 512;

impl Default for GpuOptions {
    /// Subgroups where offered, trusted shader modules, prefetching matmul, no cap.
    fn default() -> Self {
        GpuOptions {
            subgroups: Subgroups::Auto,
            checks: ShaderChecks::Trusted,
            prefetch: true,
            ones_column: None,
            storage_buffers: None,
            latent_threads: None,
            coop: Coop::Off,
            coop_use: None,
            coop_step: COOP_STEP,
            double_tiles: false,
            early_reads: false,
            coherent: false,
            persistent: None,
            persistent_phases: PERSISTENT_PHASES,
            persistent_plain: false,
        }
    }
}

/// Which of wgpu's runtime checks the shader modules get (`VAE_OOD_GPU_TRUSTED`).
/// The results do not depend on it, bit for bit (tested).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShaderChecks {
    /// all of them: index clamps, loop-bounding counters, division guards,
    /// zeroed workgroup memory (`VAE_OOD_GPU_TRUSTED=0`)
    All,
    /// all but the loop-bounding counters (`VAE_OOD_GPU_TRUSTED=loops`): every
    /// loop in `shaders/` ends by its own counter, and the extra counter can stop
    /// a driver from unrolling (wgpu issue 7698)
    NoLoopBounds,
    /// none (the default; `VAE_OOD_GPU_TRUSTED=1` or unset): 1.18× the
    /// training speed of `All` on an H100 (bench/results/h100-2026-11-26.md)
    Trusted,
}

impl ShaderChecks {
    /// `VAE_OOD_GPU_TRUSTED`: `0` → all, `loops` → no loop bounds, unset or `1` →
    /// trusted ([`crate::knobs::check`] rejects anything else at start-up)
    pub fn from_env() -> ShaderChecks {
        match std::env::var(crate::knobs::GPU_TRUSTED).as_deref() {
            Ok("0") => ShaderChecks::All,
            Ok("loops") => ShaderChecks::NoLoopBounds,
            _ => ShaderChecks::Trusted,
        }
    }

    /// In words for `describe` ("" for the default).
    pub fn note(self) -> &'static str {
        match self {
            ShaderChecks::All => ", checked shaders",
            ShaderChecks::NoLoopBounds => ", no loop-bounding counters",
            ShaderChecks::Trusted => "",
        }
    }
}

impl GpuOptions {
    /// Subgroups `Auto`, or `Off` when `VAE_OOD_NO_SUBGROUPS=1`; shader checks from
    /// `VAE_OOD_GPU_TRUSTED` ([`ShaderChecks::from_env`]); prefetching matmul
    /// tiles unless `VAE_OOD_GPU_PREFETCH=0`; the bias gradient as a column of
    /// ones on the tensor cores, always with `VAE_OOD_GPU_ONES_COLUMN=1`, never with
    /// `=0`; the latent kernels' threads from
    /// `VAE_OOD_GPU_LATENT_THREADS`; tensor cores where the adapter has them
    /// ([`Coop::Auto`]), never with `VAE_OOD_GPU_COOP=0`, required with `=1`;
    /// early reads with `VAE_OOD_GPU_EARLY_READS=1`; `@coherent` partial sums
    /// with `VAE_OOD_GPU_COHERENT=1`.
    pub fn from_env() -> GpuOptions {
        let off = crate::knobs::flag(NO_SUBGROUPS_ENV);
        GpuOptions {
            subgroups: if off { Subgroups::Off } else { Subgroups::Auto },
            checks: ShaderChecks::from_env(),
            prefetch: crate::knobs::flag_unless_zero(crate::knobs::GPU_PREFETCH),
            ones_column: crate::knobs::tristate(crate::knobs::GPU_ONES_COLUMN),
            storage_buffers: None,
            latent_threads: crate::knobs::number(crate::knobs::GPU_LATENT_THREADS, 256..=1024)
                .map(|v| v as u32),
            coop: Coop::from_env(),
            coop_use: None,
            coop_step: crate::knobs::number(crate::knobs::GPU_COOP_STEP, 32..=128)
                .map_or(COOP_STEP, |v| v as u32),
            double_tiles: crate::knobs::flag(crate::knobs::GPU_DOUBLE_TILES),
            early_reads: crate::knobs::flag(crate::knobs::GPU_EARLY_READS),
            coherent: crate::knobs::flag(crate::knobs::GPU_COHERENT),
            persistent: PersistentGroups::from_env(),
            persistent_phases: crate::knobs::number(crate::knobs::GPU_PERSISTENT_PHASES, 2..=64)
                .map_or(PERSISTENT_PHASES, |v| v as u32),
            persistent_plain: crate::knobs::flag(crate::knobs::GPU_PERSISTENT_PLAIN),
        }
    }
}

/// How many workgroups a persistent dispatch has (`VAE_OOD_GPU_PERSISTENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersistentGroups {
    /// G (1 to 65,535), as asked: a G above what the GPU runs at once is an error
    /// at the next read
    Fixed(u32),
    /// `auto`: for each persistent pipeline, the most workgroups of it the GPU runs
    /// at once (its registers and workgroup memory set how many fit), up to its
    /// largest phase's workgroups, found by a probe of dry runs when it is built
    /// (`persistent::probe`)
    Auto,
}

impl PersistentGroups {
    /// A value of `VAE_OOD_GPU_PERSISTENT`: `auto`, G (1 to 65,535), or `off`
    /// (None: the dispatches, as when unset; the word that will keep them where
    /// `auto` becomes the default). Anything else is the one-line error
    /// `knobs::check` gives at start-up.
    pub fn parse(value: &str) -> Result<Option<PersistentGroups>> {
        const MOST: u32 = 65_535;
        match value.trim() {
            "auto" => Ok(Some(PersistentGroups::Auto)),
            "off" => Ok(None),
            g => match g.parse::<u32>() {
                Ok(g) if (1..=MOST).contains(&g) => Ok(Some(PersistentGroups::Fixed(g))),
                _ => bail!(
                    "{}={value}: expected auto, off or a whole number from 1 to {MOST}",
                    crate::knobs::GPU_PERSISTENT
                ),
            },
        }
    }

    /// From `VAE_OOD_GPU_PERSISTENT` ([`PersistentGroups::parse`]); None when
    /// unset, `off` or not understood (which `knobs::check` reports at start-up).
    pub fn from_env() -> Option<PersistentGroups> {
        std::env::var(crate::knobs::GPU_PERSISTENT)
            .ok()
            .and_then(|v| Self::parse(&v).ok().flatten())
    }
}

impl std::fmt::Display for PersistentGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PersistentGroups::Fixed(g) => write!(f, "{g}"),
            PersistentGroups::Auto => write!(f, "auto"),
        }
    }
}

/// Dispatches per persistent dispatch unless `VAE_OOD_GPU_PERSISTENT_PHASES` says
/// otherwise: a training step's seven (each phase takes one of the pipeline
/// layout's dynamic uniform offsets: WebGPU's default allows 8).
pub const PERSISTENT_PHASES: u32 = 7;

/// The optional adapter features vae-ood uses when offered: subgroup operations
/// (for the workgroup reductions) and timestamps inside compute passes (for the
/// per-kernel breakdown of `vae-ood bench`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureUse {
    /// subgroup reductions are used
    pub subgroups: bool,
    /// in words: "subgroup reductions, sizes 8..8", "portable reductions: …"
    pub subgroups_why: String,
    /// timestamp queries inside compute passes are available
    pub timestamps: bool,
    /// the matmul kernels walk K on tensor cores, (fragment size, subgroup size)
    /// ([`coop_support`]); None: on the FMA units
    pub coop: Option<(u32, u32)>,
    /// in words: "tensor cores (16x16x16 f16 -> f32, subgroups of 32, K steps of
    /// 32)", "tensor cores offered, not used (VAE_OOD_GPU_COOP=0)", "no tensor
    /// cores"
    pub coop_why: String,
    /// the last-block kernels read other workgroups' partial sums as plain loads
    /// of a `@coherent` buffer ([`Partials::Coherent`]), not as atomics
    pub coherent: bool,
    /// in words: "coherent partial sums", "atomic partial sums (@coherent offered:
    /// VAE_OOD_GPU_COHERENT=1)", "atomic partial sums"
    pub coherent_why: String,
    /// the persistent step's workgroups ([`GpuOptions::persistent`]), where asked
    /// for (on the FMA walk, with `@coherent` buffers, unless `VAE_OOD_GPU_COOP=1`
    /// puts it on the tensor cores: [`FeatureUse::visible_spirv`])
    pub persistent: Option<PersistentGroups>,
    /// why the persistent step is off though asked for, where the adapter is one
    /// it is not built on ([`persistent_refusal`]): its dispatches run as they are
    pub persistent_refused: Option<String>,
    /// the persistent step on the tensor cores is built as SPIR-V whose
    /// cross-phase loads and stores are made visible and available
    /// (`persistent/spirv.rs`, passed through to the driver:
    /// `Features::PASSTHROUGH_SHADERS`), unless `VAE_OOD_GPU_PERSISTENT_PLAIN=1`
    /// or the adapter does not take SPIR-V
    pub visible_spirv: bool,
}

/// Where the persistent step is not built, and why: Mesa 22's lavapipe (Debian
/// 12's), whose pipeline compiler wrote out of bounds of the process's heap while
/// creating the persistent step's pipeline (valgrind's memcheck, 2026-11-27: an
/// invalid write of 4 bytes inside `vkCreateComputePipelines`, libvulkan_lvp.so
/// 22.3.6). Its corruption then surfaced elsewhere in the process: glibc aborts
/// ("malloc(): unaligned tcache chunk detected"), a segfault, a wrong gradient in
/// another test's device, in one `tests/train_step.rs` run of two to four.
pub fn persistent_refusal(info: &wgpu::AdapterInfo) -> Option<String> {
    (super::is_software(info) && info.driver_info.contains("Mesa 22.")).then(|| {
        format!(
            "not on {}, whose pipeline compiler writes out of bounds on its module",
            info.driver_info
        )
    })
}

impl FeatureUse {
    pub fn of(adapter: &wgpu::Adapter, opts: GpuOptions) -> Result<FeatureUse> {
        let f = adapter.features();
        let info = adapter.get_info();
        let offered = f.contains(wgpu::Features::SUBGROUP);
        let sizes = format!(
            "sizes {}..{}",
            info.subgroup_min_size, info.subgroup_max_size
        );
        let (subgroups, subgroups_why) = match (opts.subgroups, offered) {
            (Subgroups::Off, true) => (
                false,
                if crate::knobs::flag(NO_SUBGROUPS_ENV) {
                    format!("portable reductions: {NO_SUBGROUPS_ENV}=1")
                } else {
                    "portable reductions: subgroups switched off".to_string()
                },
            ),
            (_, true) => (true, format!("subgroup reductions, {sizes}")),
            (Subgroups::Require, false) => bail!(
                "GPU adapter {} does not offer Features::SUBGROUP, which was required",
                info.name
            ),
            (_, false) => (
                false,
                "portable reductions: no subgroups offered".to_string(),
            ),
        };
        let persistent_refused = opts.persistent.and_then(|_| persistent_refusal(&info));
        let persistent = opts.persistent.filter(|_| persistent_refused.is_none());
        if persistent.is_some() && !f.contains(wgpu::Features::MEMORY_DECORATION_COHERENT) {
            bail!(
                "{}: GPU adapter {} does not offer @coherent buffers, which the persistent step needs",
                crate::knobs::GPU_PERSISTENT,
                info.name
            );
        }
        let (coop, coop_why) = match (opts.coop, coop_support(adapter)) {
            // (the persistent step takes the FMA walk, whose buffers can be
            // @coherent, unless the tensor cores are required: there its loads are
            // made visible in its SPIR-V instead, `persistent/spirv.rs`; not yet
            // timed on a GPU)
            (Coop::Auto, Ok(_)) if persistent.is_some() => (
                None,
                format!(
                    "tensor cores offered, not used (the persistent step, {}, takes the FMA walk unless {}=1)",
                    crate::knobs::GPU_PERSISTENT,
                    crate::knobs::GPU_COOP
                ),
            ),
            // (whether its K step fits the workgroup memory: GpuContext::with_options)
            (Coop::Auto | Coop::Require, Ok((f, sg))) => (
                Some((f, sg)),
                format!(
                    "tensor cores ({f}x{f}x{f} f16 -> f32, subgroups of {sg}, K steps of {})",
                    opts.coop_step
                ),
            ),
            (Coop::Require, Err(why)) => bail!(
                "{}=1: GPU adapter {} {why}",
                crate::knobs::GPU_COOP,
                info.name
            ),
            (Coop::Off, Ok(_)) => (
                None,
                format!(
                    "tensor cores offered, not used ({}=0)",
                    crate::knobs::GPU_COOP
                ),
            ),
            (_, Err(_)) => (None, "no tensor cores".to_string()),
        };
        // (not beside the tensor-core walk: its modules declare the Vulkan memory
        // model, where SPIR-V forbids the Coherent decoration)
        let offered = f.contains(wgpu::Features::MEMORY_DECORATION_COHERENT);
        let coherent = opts.coherent && coop.is_none() && offered;
        let coherent_why = match (coherent, offered) {
            (true, _) => "coherent partial sums".to_string(),
            (false, true) => format!(
                "atomic partial sums (@coherent offered: {}=1)",
                crate::knobs::GPU_COHERENT
            ),
            (false, false) => "atomic partial sums".to_string(),
        };
        let visible_spirv = persistent.is_some()
            && coop.is_some()
            && !opts.persistent_plain
            && f.contains(wgpu::Features::PASSTHROUGH_SHADERS);
        Ok(FeatureUse {
            visible_spirv,
            subgroups,
            subgroups_why,
            timestamps: f.contains(TIMESTAMPS),
            coop,
            coop_why,
            coherent,
            coherent_why,
            persistent,
            persistent_refused,
        })
    }

    /// The matmul's K walk: on tensor cores where they are used.
    pub fn walk(&self) -> Walk {
        match self.coop {
            Some((f, _)) => Walk::coop(f),
            None => Walk::Fma,
        }
    }

    /// How the last-block kernels read the others' partial sums.
    pub fn partials(&self) -> Partials {
        if self.coherent {
            Partials::Coherent
        } else {
            Partials::Atomic
        }
    }

    /// The features to request: those used.
    pub fn features(&self) -> wgpu::Features {
        let mut f = wgpu::Features::empty();
        if self.coherent || self.persistent.is_some() {
            f |= wgpu::Features::MEMORY_DECORATION_COHERENT;
        }
        if self.subgroups {
            f |= wgpu::Features::SUBGROUP;
        }
        if self.timestamps {
            f |= TIMESTAMPS;
        }
        if self.coop.is_some() {
            f |= COOP;
        }
        if self.visible_spirv {
            f |= wgpu::Features::PASSTHROUGH_SHADERS;
        }
        f
    }

    pub fn reduce(&self) -> Reduce {
        if self.subgroups {
            Reduce::Subgroup
        } else {
            Reduce::Portable
        }
    }

    /// "subgroup reductions, sizes 8..8; timestamps; no tensor cores; atomic
    /// partial sums" and the like.
    pub fn summary(&self) -> String {
        format!(
            "{}; {}; {}; {}{}",
            self.subgroups_why,
            if self.timestamps {
                "timestamps"
            } else {
                "no timestamps"
            },
            self.coop_why,
            self.coherent_why,
            match (self.persistent, &self.persistent_refused) {
                (None, Some(why)) => format!("; persistent step off: {why}"),
                (None, None) => String::new(),
                (Some(PersistentGroups::Fixed(g)), _) => {
                    format!("; persistent step of {g} workgroups")
                }
                (Some(PersistentGroups::Auto), _) => {
                    "; persistent step, its workgroups probed (auto)".to_string()
                }
            }
        )
    }
}

/// The device features the tensor-core walk needs: cooperative matrices (wgpu's
/// experimental feature) and f16 in shaders.
const COOP: wgpu::Features =
    wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX.union(wgpu::Features::SHADER_F16);

/// Workgroup memory of the FMA matmul kernels with double-buffered tiles: two
/// tiles of each operand (4 × 4,352 bytes) and `matmul_gather`'s image numbers.
pub const DOUBLE_TILES_BYTES: u32 = 4 * 544 * 8 + 128;

/// Workgroup memory of the FMA matmul kernels with single tiles (WebGPU's default
/// limit, 16,384 bytes, holds it): a tile of each operand and `matmul_gather`'s
/// image numbers.
pub const SINGLE_TILES_BYTES: u32 = 2 * 544 * 8 + 128;

/// Workgroup memory `matmul_bce` needs beyond its walk's: the row shares of its
/// BCE (`matmul_bce.wgsl`, 256 f32).
pub const BCE_ROW_SHARES_BYTES: u32 = 256 * 4;

/// Workgroup memory `matmul_latent` needs beyond its walk's: a tile of h1 (then a
/// band's z) and a band's head (`matmul_latent.wgsl`, 3,072 f32 and one u32).
pub const LATENT_TAIL_BYTES: u32 = 3072 * 4 + 16;

/// K per step of the tensor-core walk unless `VAE_OOD_GPU_COOP_STEP` says otherwise:
/// 32 since 2026-11-27 (NVIDIA H200, medians of 5 interleaved rounds: 77.9 µs per
/// step against 97.7 for steps of 64 and 86.0 for the FMA walk; 128 took 101.8
/// in an earlier call).
pub const COOP_STEP: u32 = 32;

/// Workgroup memory the tensor-core matmul kernels need with K steps of `step`:
/// the walk's two f16 tiles of A (32 × (step + 8)) and of B (step × 40), its sums
/// (9,216 bytes) and `matmul_gather`'s image numbers (128). 19,584 bytes for
/// steps of 32, 28,800 for 64, 47,232 for 128 (WebGPU's default limit is 16,384;
/// lavapipe allows 32,768, an H100 49,152).
pub fn coop_workgroup_bytes(step: u32) -> u32 {
    2 * 32 * (step + 8) * 2 + 2 * step * 40 * 2 + 9216 + 128
}

/// Whether `matmul_walk_coop.wgsl` runs on `adapter`: (fragment size, subgroup
/// size), or what the adapter lacks, in words. It needs cooperative matrices of
/// f16 into f32 of 16×16×16 (preferred) or 8×8×8, and one subgroup size SG with
/// 256 / SG at least the walk's jobs (8 for 16×16 fragments, 32 for 8×8).
pub fn coop_support(adapter: &wgpu::Adapter) -> std::result::Result<(u32, u32), String> {
    if !adapter.features().contains(COOP) {
        return Err("offers no cooperative matrices with f16 shaders (tensor cores)".into());
    }
    let info = adapter.get_info();
    let (lo, hi) = (info.subgroup_min_size, info.subgroup_max_size);
    if lo != hi || lo == 0 {
        return Err(format!(
            "has subgroups of {lo}..{hi} invocations; the tensor-core walk needs one size"
        ));
    }
    let (most, least) = (
        adapter.limits().max_compute_workgroup_storage_size,
        coop_workgroup_bytes(32),
    );
    if most < least {
        return Err(format!(
            "allows {most} bytes of workgroup memory; the tensor-core walk needs {least}"
        ));
    }
    let props = adapter.cooperative_matrix_properties();
    let has = |f: u32| {
        props.iter().any(|p| {
            (p.m_size, p.n_size, p.k_size) == (f, f, f)
                && p.ab_type == wgpu::CooperativeScalarType::F16
                && p.cr_type == wgpu::CooperativeScalarType::F32
        })
    };
    // jobs of the walk with fragments of f: two per f×f block of the 32×32 tile
    let fits = |f: u32| 256 / lo >= 2 * (32 / f) * (32 / f);
    match [16, 8].into_iter().find(|&f| has(f) && fits(f)) {
        Some(f) => Ok((f, lo)),
        None => Err(format!(
            "offers no cooperative matrices of f16 into f32 the tensor-core walk can use (16x16x16 with subgroups of at most 32, or 8x8x8 with at most 8; it has subgroups of {lo})"
        )),
    }
}

const TIMESTAMPS: wgpu::Features =
    wgpu::Features::TIMESTAMP_QUERY.union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES);

/// A WGSL module assembled from files (concatenated in order) that remembers
/// which file each line came from, for error messages.
pub struct Assembled {
    pub text: String,
    /// (file, first line of it in `text`, 1-based)
    files: Vec<(String, usize)>,
}

impl Assembled {
    pub fn new(parts: &[(&str, &str)]) -> Assembled {
        let mut text = String::new();
        let mut files = Vec::new();
        for (name, src) in parts {
            files.push((name.to_string(), text.lines().count() + 1));
            text.push_str(src);
            if !src.ends_with('\n') {
                text.push('\n');
            }
        }
        Assembled { text, files }
    }

    /// "bce.wgsl + reduce_subgroup.wgsl"
    pub fn label(&self) -> String {
        let names: Vec<&str> = self.files.iter().map(|f| f.0.as_str()).collect();
        names.join(" + ")
    }

    /// (file, line in that file) of `line` (1-based) of `text`.
    pub fn locate(&self, line: usize) -> (&str, usize) {
        let (name, first) = self
            .files
            .iter()
            .rev()
            .find(|f| f.1 <= line)
            .unwrap_or(&self.files[0]);
        (name, line + 1 - first)
    }

    /// The first error naga (parser, then validator with `caps`) finds, if it does:
    /// (line in `text`, 1-based, where known; the message, innermost cause).
    pub fn naga_error(&self, caps: naga::valid::Capabilities) -> Option<(Option<usize>, String)> {
        let src = self.text.as_str();
        let line = |span: naga::Span| Some(span.location(src).line_number as usize);
        match naga::front::wgsl::parse_str(src) {
            Err(e) => {
                let at = e
                    .labels()
                    .map(|l| l.0)
                    .find(|s| s.to_range().is_some_and(|r| !r.is_empty()));
                Some((at.and_then(line), e.message().to_string()))
            }
            Ok(module) => {
                let e = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
                    .validate(&module)
                    .err()?;
                let at = e
                    .spans()
                    .map(|s| s.0)
                    .find(|s| s.to_range().is_some_and(|r| !r.is_empty()));
                let mut inner: &dyn std::error::Error = e.as_inner();
                while let Some(next) = inner.source() {
                    inner = next;
                }
                Some((at.and_then(line), inner.to_string()))
            }
        }
    }
}

/// A layout entry for an op's parameters: a uniform buffer at `binding` whose
/// offset (the op's slot) is given with each dispatch.
pub(super) fn op_params_entry(binding: u32) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: None,
        },
        count: None,
    }
}

/// Size of the uniform window every kernel sees (the largest params: `matmul.wgsl`'s
/// slot, three `MatmulParams`, an `AdamParams`, the Adam tail and the gather's
/// index offset, 256 bytes).
pub const UNIFORM_BYTES: u64 = 256;

/// Compile `entry` of the WGSL module assembled from `parts` ((file name, source),
/// concatenated in order), with `constants` for its pipeline-overridable constants,
/// into a compute pipeline whose group 0 holds storage
/// buffers at `bindings` (number, read-only?) and group 1 the op-parameter uniform.
/// Validation errors come back as one error naming the entry point and the file
/// (and its line) where naga finds the fault.
///
/// With [`ShaderChecks::All`] (`VAE_OOD_GPU_TRUSTED=0`), the module gets wgpu's
/// runtime checks. With `Trusted` (the default), it is a trusted module: naga adds no index clamps, no loop-bounding counters and no zero-divisor
/// guards, and workgroup memory is not zeroed at start — costs that sit in the
/// innermost loop of the matmul (a clamp per workgroup-memory read, a counter per
/// iteration that may also stop the driver from unrolling: wgpu issue 7698 reports a
/// 100× slowdown from it). `NoLoopBounds` (`VAE_OOD_GPU_TRUSTED=loops`) drops only
/// the loop counters. On lavapipe trusted modules are not faster
/// (`examples/gpu_variants.rs`); on an H100 they train 1.18× faster than checked
/// ones (`bench/gpu.sh`, 2026-11-26), which made them the default. Trusting is sound for the shaders in `shaders/` because:
/// - every workgroup-memory index is in range by construction (matmul tiles:
///   ii, kk < 32 → < 1056; double-buffered, the second tile is pairs 544..1088; the
///   tensor-core walk's: ii, jj < 32 and kk < its K step, in either of its two
///   tiles, and its sums' blocks < 9 · 256 (a job or the discard block) or
///   ii · 32 + kk < 1024; reductions: lane, subgroup id < 256; the latent
///   kernels: rows and output counts ≤ 1,024 hidden units and 2 × 64 latents,
///   which the lowering checks, `lower_latent`, and thread shares t < 256), and
///   so is every tile `matmul_pair` derives from its workgroup id (the backend
///   dispatches exactly one workgroup per tile of the two problems);
/// - every storage access is guarded by the op's sizes, which the backend checks
///   against the buffer lengths before recording ([`crate::plan::Op::check`]),
///   and image numbers in the index are checked where they are written;
///   Vulkan's robust buffer access (on every adapter vae-ood has met) bounds the
///   rest, and with it wgpu adds no storage clamps even for checked modules;
/// - every loop advances a counter towards a bound from the op's sizes, and those
///   sizes are element counts of checked buffers (< 2³⁰), so no counter wraps;
/// - every integer divisor is a size that the guard before it makes non-zero
///   (the latent kernels' threads per output, 256 / n: n ≥ 1, checked by the
///   lowering);
/// - workgroup memory is written before it is read (behind a barrier).
///
/// Trusted and checked modules give the same bits (tested).
/// The shader module of `desc` with the runtime checks `checks` asks for (see
/// [`build_pipeline`] for why trusting is sound for the shaders in `shaders/`, and
/// for the persistent step's module, which is built from them).
pub(super) fn create_module(
    device: &wgpu::Device,
    desc: wgpu::ShaderModuleDescriptor,
    checks: ShaderChecks,
) -> wgpu::ShaderModule {
    match checks {
        ShaderChecks::All => device.create_shader_module(desc),
        // SAFETY: see build_pipeline's list: every loop advances its own counter
        // towards a bound from the op's sizes (the persistent step's grid barrier
        // towards GRID_SPINS), so it ends without wgpu's counter.
        ShaderChecks::NoLoopBounds => unsafe {
            device.create_shader_module_trusted(
                desc,
                wgpu::ShaderRuntimeChecks {
                    force_loop_bounding: false,
                    ..wgpu::ShaderRuntimeChecks::checked()
                },
            )
        },
        // SAFETY: see build_pipeline's list: the shaders stay in bounds, terminate,
        // never divide by zero and never read workgroup memory they did not write.
        ShaderChecks::Trusted => unsafe {
            device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
        },
    }
}

/// A layout entry for a storage buffer at `binding`.
pub(super) fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

/// wgpu's error message ("Validation Error", "Caused by:", then the cause,
/// indented, over several lines) as one line of its parts, the cause kept.
pub(super) fn one_line(message: &str) -> String {
    let parts: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "Caused by:")
        .collect();
    parts.join(": ")
}

pub fn build_pipeline(
    device: &wgpu::Device,
    uniform_layout: &wgpu::BindGroupLayout,
    parts: &[(&str, &str)],
    entry: &str,
    bindings: &[(u32, bool)],
    checks: ShaderChecks,
    constants: &[(&str, f64)],
) -> Result<(wgpu::BindGroupLayout, wgpu::ComputePipeline)> {
    let src = Assembled::new(parts);
    let label = src.label();
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let desc = wgpu::ShaderModuleDescriptor {
        label: Some(&label),
        source: wgpu::ShaderSource::Wgsl(src.text.as_str().into()),
    };
    let module = create_module(device, desc, checks);
    let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
        .iter()
        .map(|&(binding, read_only)| storage_entry(binding, read_only))
        .collect();
    let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(entry),
        entries: &entries,
    });
    let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(entry),
        bind_group_layouts: &[Some(&bgl), Some(uniform_layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry),
        layout: Some(&pl),
        module: &module,
        entry_point: Some(entry),
        compilation_options: wgpu::PipelineCompilationOptions {
            zero_initialize_workgroup_memory: checks != ShaderChecks::Trusted,
            constants,
        },
        cache: None,
    });
    if let Some(e) = pollster::block_on(scope.pop()) {
        let first = e.to_string();
        let first = first
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string();
        let mut caps = naga::valid::Capabilities::empty();
        if device.features().contains(wgpu::Features::SUBGROUP) {
            caps |= naga::valid::Capabilities::SUBGROUP;
        }
        if device.features().contains(COOP) {
            caps |= Walk::Coop16.capabilities();
        }
        if device
            .features()
            .contains(wgpu::Features::MEMORY_DECORATION_COHERENT)
        {
            caps |= Partials::Coherent.capabilities();
        }
        let in_module = if parts.len() > 1 {
            format!(", module {label}")
        } else {
            String::new()
        };
        match src.naga_error(caps) {
            Some((Some(line), msg)) => {
                let (file, at) = src.locate(line);
                bail!("shader {file}, entry point {entry}: {msg} (line {at} of {file}{in_module})")
            }
            Some((None, msg)) => bail!("shader {label}, entry point {entry}: {msg}"),
            None => bail!("shader {label}, entry point {entry}: {first}"),
        }
    }
    Ok((bgl, pipeline))
}

pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    /// by `Kernel as usize`; None for a kernel the device cannot bind ([`Self::has`])
    pub layouts: Vec<Option<wgpu::BindGroupLayout>>,
    pub uniform_layout: wgpu::BindGroupLayout,
    pub pipelines: Vec<Option<wgpu::ComputePipeline>>,
    /// the optional features in use (subgroup reductions, timestamps)
    pub features: FeatureUse,
    /// the options it was opened with
    pub options: GpuOptions,
    /// first uncaptured wgpu error (validation, out of memory), reported by `check`
    errors: Arc<Mutex<Option<String>>>,
    lost: Arc<Mutex<Option<String>>>,
}

impl GpuContext {
    /// Open a device on `adapter` with the limits vae-ood needs (`max_buffer` bytes
    /// for the largest storage buffer) and build every pipeline; options from the
    /// environment (`VAE_OOD_NO_SUBGROUPS`).
    pub fn new(adapter: wgpu::Adapter, max_buffer: u64) -> Result<GpuContext> {
        Self::with_options(adapter, max_buffer, GpuOptions::from_env())
    }

    /// [`GpuContext::new`] with explicit options. With [`Coop::Auto`] on an
    /// adapter with tensor cores, a device or pipeline that fails to open with
    /// them is opened again with the FMA walk, with a one-line notice on stderr
    /// when that works (when it fails too, its error is the one returned: the
    /// failure was not the tensor cores').
    pub fn with_options(
        adapter: wgpu::Adapter,
        max_buffer: u64,
        opts: GpuOptions,
    ) -> Result<GpuContext> {
        match Self::open(adapter.clone(), max_buffer, opts) {
            Err(e) if opts.coop == Coop::Auto && coop_support(&adapter).is_ok() => {
                let fma = Self::open(
                    adapter.clone(),
                    max_buffer,
                    GpuOptions {
                        coop: Coop::Off,
                        ..opts
                    },
                );
                if fma.is_ok() {
                    let why = format!("{e:#}");
                    eprintln!(
                        "vae-ood: the tensor-core walk failed on {} ({}); using the FMA walk ({}=0 says so without trying)",
                        adapter.get_info().name,
                        why.lines().next().unwrap_or(""),
                        crate::knobs::GPU_COOP
                    );
                }
                fma
            }
            r => r,
        }
    }

    /// [`GpuContext::with_options`] without the fallback.
    fn open(adapter: wgpu::Adapter, max_buffer: u64, opts: GpuOptions) -> Result<GpuContext> {
        let info = adapter.get_info();
        let features = FeatureUse::of(&adapter, opts)?;
        // (the persistent step's phases run in workgroups of 256 threads; where it
        // is off or refused, the dispatches run as the options say)
        let opts = match features.persistent {
            Some(_) => GpuOptions {
                latent_threads: Some(super::persistent::THREADS),
                ..opts
            },
            None => opts,
        };
        let have = adapter.limits();
        if have.max_storage_buffer_binding_size < max_buffer || have.max_buffer_size < max_buffer {
            bail!(
                "GPU adapter {} allows storage buffers of {} bytes; vae-ood needs {max_buffer}",
                info.name,
                have.max_storage_buffer_binding_size
                    .min(have.max_buffer_size)
            );
        }
        // WebGPU's default limits (which lavapipe and every desktop GPU meet), with the
        // storage-buffer size raised to what the image store needs, and storage
        // buffers per shader stage raised to what the widest kernel binds
        // (`matmul_pair_latent`: 19, `matmul_triple_adam` 12, the latent kernels 10;
        // WebGPU's default is 8)
        // where the adapter has that many — where it has not, the kernels binding
        // more are not built and the backend runs without them.
        let mut limits = wgpu::Limits::default();
        limits.max_storage_buffer_binding_size =
            limits.max_storage_buffer_binding_size.max(max_buffer);
        limits.max_buffer_size = limits.max_buffer_size.max(max_buffer);
        let widest = Kernel::ALL
            .iter()
            .map(|k| k.bindings().len() as u32)
            .max()
            .unwrap_or(0);
        limits.max_storage_buffers_per_shader_stage =
            limits.max_storage_buffers_per_shader_stage.max(
                widest
                    .min(have.max_storage_buffers_per_shader_stage)
                    .min(opts.storage_buffers.unwrap_or(u32::MAX)),
            );
        let storage_per_stage = limits.max_storage_buffers_per_shader_stage;
        // the latent kernels' workgroup: the most threads asked for (by default all,
        // up to LATENT_THREADS_MAX, or up to LATENT_THREADS_COOP on the tensor cores)
        // that the adapter runs in one workgroup, a power of two from 256 (WebGPU's
        // default, which every adapter has) to LATENT_THREADS_MAX
        let asked = opts.latent_threads.unwrap_or(match features.coop {
            Some(_) => LATENT_THREADS_COOP,
            None => LATENT_THREADS_MAX,
        });
        let most = have
            .max_compute_invocations_per_workgroup
            .min(have.max_compute_workgroup_size_x)
            .min(asked)
            .clamp(256, LATENT_THREADS_MAX);
        let latent_threads = 1u32 << (31 - most.leading_zeros());
        limits.max_compute_invocations_per_workgroup = limits
            .max_compute_invocations_per_workgroup
            .max(latent_threads);
        limits.max_compute_workgroup_size_x =
            limits.max_compute_workgroup_size_x.max(latent_threads);
        // the matmul kernels' workgroup memory where their walk needs more than
        // WebGPU's default: (bytes, the switch asking for it, what needs it)
        let walk_memory = match features.coop {
            Some(_) => {
                let (need, step) = (coop_workgroup_bytes(opts.coop_step), opts.coop_step);
                Some((
                    need,
                    format!("{}={step}", crate::knobs::GPU_COOP_STEP),
                    format!("the tensor-core walk needs {need} for K steps of {step}"),
                ))
            }
            None if opts.double_tiles => Some((
                DOUBLE_TILES_BYTES,
                format!("{}=1", crate::knobs::GPU_DOUBLE_TILES),
                format!("double-buffered matmul tiles need {DOUBLE_TILES_BYTES}"),
            )),
            None => None,
        };
        let most = have.max_compute_workgroup_storage_size;
        let walk_bytes = match &walk_memory {
            Some((need, switch, what)) => {
                if most < *need {
                    bail!(
                        "{switch}: GPU adapter {} allows {most} bytes of workgroup memory; {what}",
                        info.name
                    );
                }
                limits.max_compute_workgroup_storage_size =
                    limits.max_compute_workgroup_storage_size.max(*need);
                *need
            }
            None => SINGLE_TILES_BYTES,
        };
        // `matmul_bce` (the BCE epilogue, opt-in) where the adapter has the memory
        // for its row shares beside the walk's tiles; not built otherwise (`has`)
        let bce_bytes = walk_bytes + BCE_ROW_SHARES_BYTES;
        if bce_bytes <= most {
            limits.max_compute_workgroup_storage_size =
                limits.max_compute_workgroup_storage_size.max(bce_bytes);
        }
        // `matmul_latent`, `matmul_gather_latent` and `matmul_pair_latent` (the latent
        // forward in fc1's product and the backward in fc4's pair, opt-in) likewise
        let latent_bytes = walk_bytes + LATENT_TAIL_BYTES;
        if latent_bytes <= most {
            limits.max_compute_workgroup_storage_size =
                limits.max_compute_workgroup_storage_size.max(latent_bytes);
        }
        if features.persistent.is_some() {
            // the persistent step binds every phase's buffers and uniform, and its
            // workgroup memory is the most of any phase's
            limits.max_storage_buffers_per_shader_stage = have.max_storage_buffers_per_shader_stage;
            limits.max_dynamic_uniform_buffers_per_pipeline_layout =
                have.max_dynamic_uniform_buffers_per_pipeline_layout;
            limits.max_bindings_per_bind_group = have.max_bindings_per_bind_group;
            limits.max_compute_workgroup_storage_size = have.max_compute_workgroup_storage_size;
            limits.max_buffers_and_acceleration_structures_per_shader_stage =
                have.max_buffers_and_acceleration_structures_per_shader_stage;
            limits.max_uniform_buffers_per_shader_stage = have.max_uniform_buffers_per_shader_stage;
        }
        let workgroup_bytes = limits.max_compute_workgroup_storage_size;
        let opts = GpuOptions {
            latent_threads: Some(latent_threads),
            // (on the tensor cores unless switched off; on the FMA walk only when asked)
            ones_column: Some(opts.ones_column.unwrap_or(features.coop.is_some())),
            coop_use: features.coop,
            ..opts
        };
        let experimental_features = if features.coop.is_some() {
            // SAFETY: wgpu marks cooperative matrices experimental (bugs in them may
            // be unsound); they are asked for only with VAE_OOD_GPU_COOP=1, and the
            // walk's results are checked against its CPU twin by tests/kernels.rs.
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("vae-ood"),
            required_features: features.features(),
            required_limits: limits,
            experimental_features,
            ..Default::default()
        }))
        .with_context(|| format!("cannot open GPU device {}", info.name))?;

        let errors: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let e2 = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = e2.lock().unwrap();
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));
        let lost: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let l2 = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            *l2.lock().unwrap() = Some(format!("{reason:?}: {msg}"));
        });

        let uniform_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("params uniform"),
            entries: &[op_params_entry(0)],
        });
        let mut layouts = Vec::new();
        let mut pipelines = Vec::new();
        let reduce = features.reduce();
        let walk = features.walk();
        let partials = features.partials();
        // one thread per kernel: the driver compiles each shader when its pipeline is
        // made, and these compilations are independent (error scopes are per thread,
        // so each build still catches its own validation errors); the first error in
        // kernel order is the one reported
        // (a kernel that binds more storage buffers than the device allows, or
        // `matmul_bce` where its workgroup memory does not fit, is not built: `has`
        // says so)
        let built: Vec<Option<Result<_>>> = std::thread::scope(|s| {
            let handles: Vec<_> = Kernel::ALL
                .iter()
                .map(|&k| {
                    let (device, uniform_layout) = (&device, &uniform_layout);
                    let fits = k.bindings().len() as u32 <= storage_per_stage
                        && (k != Kernel::MatmulBce || bce_bytes <= workgroup_bytes)
                        && (!matches!(
                            k,
                            Kernel::MatmulLatent
                                | Kernel::MatmulGatherLatent
                                | Kernel::MatmulPairLatent
                                | Kernel::MatmulGatherAdam
                        ) || latent_bytes <= workgroup_bytes);
                    fits.then(|| {
                        s.spawn(move || {
                            build_pipeline(
                                device,
                                uniform_layout,
                                &k.parts(reduce, walk, partials),
                                k.entry(),
                                k.bindings(),
                                opts.checks,
                                &k.constants(&opts),
                            )
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow!("building a pipeline panicked")))
                    })
                })
                .collect()
        });
        for b in built {
            match b.transpose()? {
                Some((bgl, pipeline)) => {
                    layouts.push(Some(bgl));
                    pipelines.push(Some(pipeline));
                }
                None => {
                    layouts.push(None);
                    pipelines.push(None);
                }
            }
        }
        log::info!(
            "GPU {} ({:?}, {:?}): {} pipelines, max storage binding {} MiB, {}",
            info.name,
            info.device_type,
            info.backend,
            pipelines.iter().flatten().count(),
            device.limits().max_storage_buffer_binding_size >> 20,
            features.summary()
        );
        Ok(GpuContext {
            device,
            queue,
            info,
            layouts,
            uniform_layout,
            pipelines,
            features,
            options: opts,
            errors,
            lost,
        })
    }

    /// Whether kernel `k` was built: every kernel is, except where the device allows
    /// fewer storage buffers per shader stage than it binds (the latent kernels bind
    /// 10, and WebGPU's default is 8).
    pub fn has(&self, k: Kernel) -> bool {
        self.pipelines[k as usize].is_some()
    }
    pub fn pipeline(&self, k: Kernel) -> &wgpu::ComputePipeline {
        self.pipelines[k as usize]
            .as_ref()
            .unwrap_or_else(|| panic!("{k:?} was not built (see GpuContext::has)"))
    }
    pub fn layout(&self, k: Kernel) -> &wgpu::BindGroupLayout {
        self.layouts[k as usize]
            .as_ref()
            .unwrap_or_else(|| panic!("{k:?} was not built (see GpuContext::has)"))
    }

    /// Turn a recorded wgpu error or a lost device into an error.
    pub fn check(&self, what: &str) -> Result<()> {
        if let Some(m) = self.lost.lock().unwrap().clone() {
            return Err(anyhow!("GPU device lost during {what}: {m}"));
        }
        if let Some(m) = self.errors.lock().unwrap().take() {
            return Err(anyhow!("GPU error during {what}: {}", one_line(&m)));
        }
        Ok(())
    }

    /// Wait for all submitted work.
    pub fn wait(&self, what: &str) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow!("GPU wait failed during {what}: {e}"))?;
        self.check(what)
    }

    /// The first `bytes` of a MAP_READ staging buffer whose copy has been
    /// submitted: map it, wait for all submitted work, read it as `T`s, unmap.
    /// Errors name `what` ("GPU {what} readback failed: …").
    pub fn read_staging<T: bytemuck::Pod>(
        &self,
        staging: &wgpu::Buffer,
        bytes: u64,
        what: &str,
    ) -> Result<Vec<T>> {
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, ..bytes, move |r| {
            let _ = tx.send(r);
        });
        self.wait(&format!("{what} readback"))?;
        rx.recv()
            .map_err(|_| anyhow!("GPU {what} readback was never answered"))?
            .map_err(|e| anyhow!("GPU {what} readback failed: {e}"))?;
        let view = staging
            .get_mapped_range(..bytes)
            .map_err(|e| anyhow!("GPU {what} mapping failed: {e}"))?;
        let out = bytemuck::pod_collect_to_vec::<u8, T>(&view);
        drop(view);
        staging.unmap();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::PersistentGroups;

    #[test]
    fn persistent_switch_values() {
        let parse = |v| PersistentGroups::parse(v).unwrap();
        assert_eq!(parse("auto"), Some(PersistentGroups::Auto));
        assert_eq!(parse(" 416 "), Some(PersistentGroups::Fixed(416)));
        assert_eq!(parse("1"), Some(PersistentGroups::Fixed(1)));
        assert_eq!(parse("65535"), Some(PersistentGroups::Fixed(65_535)));
        // off: the dispatches
        assert_eq!(parse("off"), None);
        // what knobs::check refuses at start-up, in one line naming the switch
        for v in ["", "0", "65536", "-1", "automatic", "4.5"] {
            let e = PersistentGroups::parse(v).expect_err(v).to_string();
            assert_eq!(
                e,
                format!("VAE_OOD_GPU_PERSISTENT={v}: expected auto, off or a whole number from 1 to 65535"),
            );
        }
    }
}
