// Appended to matmul.wgsl, in place of matmul_partial_atomic.wgsl, for the kernels
// whose last K share of a tile reads the other shares' partial sums inside the same
// dispatch (matmul_bce, matmul_latent, matmul_gather_latent, matmul_pair_latent,
// matmul_gather_adam: last_split, last_block.wgsl), on devices that offer wgpu's
// `MEMORY_DECORATION_COHERENT` and run the FMA walk, with `VAE_OOD_GPU_COHERENT=1`
// (GpuOptions::coherent; off by default: a training step took 86.1 µs either way
// on an H200, 2026-11-27). The partial sums as plain f32 in a
// buffer declared `@coherent` (SPIR-V's Coherent decoration): its loads see the
// stores that the barriers around the tile's counter made visible, not a copy in
// the reader's cache. On an NVIDIA H200 (2026-11-27, examples/last_block.rs) such
// loads read no stale value in 4 runs of 1,000 repetitions of every shape, where plain
// loads of a buffer without the decoration did, and a last-block reduce with them
// took 6.93 µs against 7.47 with atomic loads (100 tiles × 2 shares: fc4's forward).
// The same values: the same bits as the atomics and as the plain partial sums.
// Not with the tensor-core walk, whose modules naga declares under the Vulkan memory
// model (any entry point using cooperative matrices), where SPIR-V forbids the
// decoration (tests/naga.rs).
@group(0) @binding(4) @coherent var<storage, read_write> partial: array<f32>;

fn put_partial(at: u32, v: f32) {
    partial[at] = v;
}

fn get_partial(at: u32) -> f32 {
    return partial[at];
}
