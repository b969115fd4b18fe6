//! The environment switches vae-ood reads, in one place. They exist to compare
//! variants side by side (`bench/cpu.sh`, `bench/gpu.sh`) and change speed only,
//! never what is computed beyond float rounding. `vae-ood` checks them all at
//! start-up ([`check`]): a value it would not understand is a one-line error, not
//! a silent default.

use anyhow::{bail, Result};

/// `1`: the CPU backend runs every op on its own (no fusions).
pub const CPU_UNFUSED: &str = "VAE_OOD_CPU_UNFUSED";
/// `1`: the CPU backend never uses the sparse first-layer products.
pub const CPU_DENSE: &str = "VAE_OOD_CPU_DENSE";
/// `1`: the portable workgroup reductions even where subgroups are offered.
pub const NO_SUBGROUPS: &str = "VAE_OOD_NO_SUBGROUPS";
/// `0`: shaders compiled with wgpu's runtime checks (index clamps, loop-bounding
/// counters, division guards, zeroed workgroup memory); `loops`: all of them but
/// the loop-bounding counters; `1` or unset: trusted modules without them (the
/// default: identical bits, 1.18× faster training on an H100).
pub const GPU_TRUSTED: &str = "VAE_OOD_GPU_TRUSTED";
/// `0`: the matmul issues its reads of the next K step after the multiply of the
/// current one; `1` or unset: before it (software pipelining, the default:
/// identical bits, 0.97× the time per training step on an H100 and an H200,
/// bench/results/h100-2026-11-26.md).
pub const GPU_PREFETCH: &str = "VAE_OOD_GPU_PREFETCH";
/// Whether the matmul gets a product's bias gradient as an extra column of ones in
/// B (in the padding of its last tile) instead of adding row sums beside every
/// multiply-add (`shaders/matmul.wgsl`, `ONES`). Unset: on the tensor cores only
/// (since 2026-11-28: 74.0 against 77.8 µs per training step on an NVIDIA H200,
/// medians of 5 interleaved rounds; there the bias gradient becomes f32 sums of
/// the f16-rounded operand, as its weight gradient is), off on the FMA walk (there
/// identical bits and 0.996–1.032× the time per step on an H100 and an H200:
/// level at best); `1`: always; `0`: never.
pub const GPU_ONES_COLUMN: &str = "VAE_OOD_GPU_ONES_COLUMN";
/// `1`: a training step's Adam runs in the epilogue of the weight-gradient
/// triple (`matmul_triple_adam`, seven dispatches per step) instead of in one
/// dispatch with the next step's gather (`adam_gather`, eight; the default:
/// identical bits, 0.93× the time per training step on an H100 and an H200, timed
/// with fc4's Adam in the triple's tail), fc4's Adam in extra workgroups of the
/// latent backward kernel (`latent_backward_adam`) where the device has it.
pub const GPU_TRIPLE_ADAM: &str = "VAE_OOD_GPU_TRIPLE_ADAM";
/// `1`: the FMA matmul walk keeps two tiles of each operand in workgroup memory and
/// stashes each K step into the one not being read, one barrier per K step instead
/// of two (`shaders/matmul_walk.wgsl`, `TILES`): identical bits; off by default
/// (1.004× the time per step on an NVIDIA H200, 2026-11-27).
pub const GPU_DOUBLE_TILES: &str = "VAE_OOD_GPU_DOUBLE_TILES";
/// Whether the matmul kernels walk K on tensor cores (`shaders/matmul_walk_coop.wgsl`:
/// 16×16×16 cooperative matrices, operands rounded to f16, f32 sums) instead of
/// f32 fmas. Unset: where the adapter has tensor cores the walk can use (the
/// default since 2026-11-27: 78.1 against 86.0 µs per training step on an NVIDIA
/// H200, clean AUROC 0.8319 against 0.8292; it rounds what the products read),
/// falling back to the FMA walk with a notice if they fail to open; `1`: always,
/// an error on a device without them; `0`: never.
pub const GPU_COOP: &str = "VAE_OOD_GPU_COOP";
/// K per step of the tensor-core walk (one barrier each): 32 (the default), 64 or
/// 128 (needs 47,232 bytes of workgroup memory).
pub const GPU_COOP_STEP: &str = "VAE_OOD_GPU_COOP_STEP";
/// `0`: a training step's BCE and its gradient in a kernel of their own (the BCE
/// kernel, `shaders/bce.wgsl`: eight dispatches per step), not in the epilogue of
/// the decoder-output product (`shaders/matmul_bce.wgsl`), whose per-image loss is
/// finished in extra workgroups of fc4's gradient pair (`shaders/matmul_loss.wgsl`):
/// seven. The epilogue is the default (on the split product: `GPU_BCE_SPLIT`); it
/// needs the gradient pairs and sums each row's BCE in another order (the losses
/// move by rounding, and so may the scores; the weights are the BCE kernel's, bit
/// for bit).
pub const GPU_BCE_EPILOGUE: &str = "VAE_OOD_GPU_BCE_EPILOGUE";
/// `0`: the BCE epilogue on the decoder-output product unsplit, walking all of K
/// (rounding-level differences in the logits too). Unset or `1`:
/// on the product split over K as it is without the epilogue, the last of each
/// output tile's K shares to store its partial sums adding them up and running the
/// epilogue (`shaders/matmul_bce.wgsl`, `last_split`): the default, the BCE
/// kernel's logits and gradients bit for bit, 0.963–0.968 × its time per step on an
/// NVIDIA H200 (2026-11-27, medians of 5 interleaved rounds, three calls).
pub const GPU_BCE_SPLIT: &str = "VAE_OOD_GPU_BCE_SPLIT";
/// `1`: the kernels issue the reads whose addresses they know from the start
/// before the work that comes first: the latent kernels' epilogue operands
/// (`shaders/latent.wgsl`, `EARLY`: each product's bias or mask, the first draw's ε,
/// read as the kernel starts, not after the links before them; the KL and
/// log p − log q summed off thread 0), the BCE kernel's (`shaders/bce.wgsl`: four
/// columns' logits and pixels read together) and the matmul epilogues' operands
/// (`shaders/matmul.wgsl`: bias, mask, the BCE epilogue's pixels, the Adam
/// epilogue's parameters and moments, read before the K walk). Identical bits; off
/// by default (on an NVIDIA H200: 0.991–0.993× with the BCE kernel, 1.005× with the
/// BCE epilogue, 2026-11-27; on the tensor cores with the ones column 0.99–1.00×,
/// 2026-11-28: inside the rounds' spread).
pub const GPU_EARLY_READS: &str = "VAE_OOD_GPU_EARLY_READS";
/// `1`: a training step's latent forward (the head product, the
/// reparameterisation, fc3's product) in the last workgroups of fc1's split
/// product (`shaders/matmul_latent.wgsl`): seven dispatches per step instead of
/// eight. Off by default: 1.45× the time per step on an NVIDIA H200 (2026-11-27;
/// its last block runs while the rest of the card idles), and it sums the head in
/// another order (rounding-level differences).
pub const GPU_LATENT_FC1: &str = "VAE_OOD_GPU_LATENT_FC1";
/// `1`: a training step's latent backward (fc3's input gradient, the
/// reparameterisation backward, the head's input gradient) in the last workgroups
/// of fc4's gradient pair, whose input gradient it reads as the pair finishes it
/// (`shaders/matmul_latent_backward.wgsl`): one dispatch fewer per step. Off by
/// default: 1.37× the time per step on an NVIDIA H200 (2026-11-27), and it sums dz
/// in another order (rounding-level differences).
pub const GPU_LATENT_PAIR: &str = "VAE_OOD_GPU_LATENT_PAIR";
/// `1`: with Adam in the triple and the latent forward in fc1's product, the
/// triple's Adam tail (the parameters it does not write: fc4's, where the latent
/// backward kernel is folded into fc4's pair) in extra workgroups of the next
/// training step's fc1 dispatch (`shaders/matmul_gather_adam.wgsl`) instead of
/// the triple's last workgroups; a run's last step keeps it in the triple. The
/// same bits. Off by default: only timed inside the four-dispatch configurations,
/// 1.9× the default's time per step on an NVIDIA H200 (2026-11-27).
pub const GPU_TAIL_FC1: &str = "VAE_OOD_GPU_TAIL_FC1";
/// GPU fusions to switch off: `1` (all), `pairs` (a layer's input and weight
/// gradients as two dispatches, not one pair, a step's Adam and the next step's
/// gather as two, not one, and a training step's loss its own dispatch, not
/// written by the BCE kernel), `reduces` (every split-K reduce
/// its own dispatch, not folded into the kernel that reads the product),
/// `latent` (the products around the latent code and the reparameterisation as
/// their own dispatches, not one `latent.wgsl` kernel per direction), `triple`
/// (fc3's weight gradient its own dispatch, not one `matmul_triple` with the
/// head's and fc1's) or `gather` (a batch's gather its own dispatch, or in the
/// previous step's Adam's, not read by the first product from the image store).
pub const GPU_UNFUSED: &str = "VAE_OOD_GPU_UNFUSED";
/// `1`: the kernels whose last K share of a tile reads the others' partial sums
/// in the same dispatch (the split BCE epilogue, the default, and the latent
/// kernels folded into products) read them as plain loads of a buffer declared
/// `@coherent` (`shaders/matmul_partial_coherent.wgsl`) on devices that offer
/// wgpu's `MEMORY_DECORATION_COHERENT` (every Vulkan adapter), with the FMA walk
/// (the tensor-core walk keeps the atomics), not as atomics
/// (`shaders/matmul_partial_atomic.wgsl`). The same bits; off by default: level
/// with the atomics on an NVIDIA H200 (86.1 against 86.1 µs per step, 2026-11-27,
/// medians of 5 interleaved rounds).
pub const GPU_COHERENT: &str = "VAE_OOD_GPU_COHERENT";
/// Threads per workgroup of the latent kernels: 256, 512 or 1024 (default: the
/// most the device allows, up to 1024 on the FMA walk and up to 512 on the tensor
/// cores — with the ones column there, 72.9–73.3 against 74.0 µs per step with
/// 1,024 on an NVIDIA H200, 2026-11-28; rounding-level differences).
pub const GPU_LATENT_THREADS: &str = "VAE_OOD_GPU_LATENT_THREADS";
/// Ops in the first submission of a GPU run (0: each run in one submission).
pub const GPU_CHUNK: &str = "VAE_OOD_GPU_CHUNK";
/// `G` (1 to 65535), `auto` or `off` (as unset): the persistent step (`src/gpu/persistent.rs`):
/// each training step's dispatches as one dispatch of G workgroups, grid barriers
/// over `@coherent` buffers between its phases instead of dispatch boundaries.
/// Takes the FMA walk where `VAE_OOD_GPU_COOP` is unset (the tensor cores with
/// `=1`: no `@coherent` there, the loads made visible in the module's SPIR-V
/// instead, [`GPU_PERSISTENT_PLAIN`]) and runs the latent kernels with 256
/// threads; G must not exceed the workgroups the GPU runs at once (a wait that
/// gives up is an error, not a hang); `auto` finds that number for each of its
/// pipelines by a probe (dry runs), up to the pipeline's largest phase. The same
/// bits as the dispatches with those options (also on an NVIDIA H200, both walks);
/// off by default: slower — on an H200 (2026-11-28) `auto` found 264 workgroups on
/// the FMA walk and 132 on the tensor cores, 1.13× and 1.67× those dispatches' time
/// per step. Not built on Mesa 22's lavapipe (`gpu::persistent_refusal`).
pub const GPU_PERSISTENT: &str = "VAE_OOD_GPU_PERSISTENT";
/// `1`: the persistent step on the tensor cores built from its WGSL as wgpu
/// compiles it — plain loads and barriers without availability or visibility, so
/// whether a phase sees an earlier phase's stores on another SM is up to the
/// driver — not as SPIR-V whose cross-phase loads and stores are made visible and
/// available at device scope (`src/gpu/persistent/spirv.rs`, the default there).
/// For comparison; no effect on the FMA walk, whose buffers are `@coherent`.
pub const GPU_PERSISTENT_PLAIN: &str = "VAE_OOD_GPU_PERSISTENT_PLAIN";
/// The most dispatches one persistent dispatch runs, 2 to 64, whole training
/// steps only (default 7, one step; 14: two); a device must allow as many
/// dynamic uniform buffers per pipeline layout (one per phase).
pub const GPU_PERSISTENT_PHASES: &str = "VAE_OOD_GPU_PERSISTENT_PHASES";
/// Workgroups a split-K product aims for (1..=65536).
pub const SPLIT_TARGET: &str = "VAE_OOD_SPLIT_TARGET";

const FLAGS: [&str; 16] = [
    CPU_UNFUSED,
    CPU_DENSE,
    NO_SUBGROUPS,
    GPU_PREFETCH,
    GPU_ONES_COLUMN,
    GPU_TRIPLE_ADAM,
    GPU_COOP,
    GPU_DOUBLE_TILES,
    GPU_BCE_EPILOGUE,
    GPU_BCE_SPLIT,
    GPU_EARLY_READS,
    GPU_LATENT_FC1,
    GPU_LATENT_PAIR,
    GPU_TAIL_FC1,
    GPU_COHERENT,
    GPU_PERSISTENT_PLAIN,
];

/// Whether `VAE_OOD_GPU_UNFUSED` switches off `part` ("pairs", "reduces", "latent",
/// "triple" or "gather"; any part when it is `1`).
pub fn gpu_unfused(part: &str) -> bool {
    matches!(std::env::var(GPU_UNFUSED).as_deref(), Ok(v) if v == "1" || v == part)
}

/// Whether a flag is on: set to `1` (unset, empty or `0`: off).
pub fn flag(name: &str) -> bool {
    std::env::var(name).as_deref() == Ok("1")
}

/// A flag whose default depends on the device (`GPU_ONES_COLUMN`, `GPU_COOP`):
/// `Some(true)` when set to `1`,
/// `Some(false)` when `0`, `None` when unset or empty.
pub fn tristate(name: &str) -> Option<bool> {
    match std::env::var(name).as_deref() {
        Ok("1") => Some(true),
        Ok("0") => Some(false),
        _ => None,
    }
}

/// Whether a flag that is on by default is on: unset, empty or `1` (`0`: off).
pub fn flag_unless_zero(name: &str) -> bool {
    std::env::var(name).as_deref() != Ok("0")
}

/// A number switch: `Some(value)` when set and in `range`, `None` when unset or
/// not understood (which [`check`] reports at start-up).
pub fn number(name: &str, range: std::ops::RangeInclusive<u64>) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|v| range.contains(v))
}

/// The switches that take one of a few words, and those words (each may also be
/// set empty, which counts as unset).
const CHOICES: [(&str, &[&str]); 4] = [
    (GPU_TRUSTED, &["0", "1", "loops"]),
    (
        GPU_UNFUSED,
        &["0", "1", "pairs", "reduces", "latent", "triple", "gather"],
    ),
    (GPU_LATENT_THREADS, &["256", "512", "1024"]),
    (GPU_COOP_STEP, &["32", "64", "128"]),
];

/// Every switch that is set has a value vae-ood understands.
pub fn check() -> Result<()> {
    let flags = FLAGS.map(|name| (name, &["0", "1"][..]));
    for (name, words) in flags.iter().chain(&CHOICES) {
        if let Ok(v) = std::env::var(name) {
            if !v.is_empty() && !words.contains(&v.as_str()) {
                let (last, rest) = words.split_last().expect("a switch has words");
                bail!("{name}={v}: expected {} or {last}", rest.join(", "));
            }
        }
    }
    for (name, range) in [
        (GPU_CHUNK, 0..=1 << 24),
        (SPLIT_TARGET, 1..=65_536),
        (GPU_PERSISTENT_PHASES, 2..=64),
    ] {
        if let Ok(v) = std::env::var(name) {
            if !v.is_empty() && number(name, range.clone()).is_none() {
                bail!(
                    "{name}={v}: expected a whole number from {} to {}",
                    range.start(),
                    range.end()
                );
            }
        }
    }
    // (a word or a number: its one parser says what it takes)
    if let Ok(v) = std::env::var(GPU_PERSISTENT) {
        if !v.is_empty() {
            crate::gpu::PersistentGroups::parse(&v)?;
        }
    }
    Ok(())
}
