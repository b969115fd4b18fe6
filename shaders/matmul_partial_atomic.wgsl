// Appended to matmul.wgsl for matmul_bce: the split-K partial sums as the bits of
// f32 values in atomics. A split matmul_bce's last K share of a tile reads the
// other shares' partial sums inside the same dispatch (last_split,
// matmul_bce.wgsl), where WGSL promises that only atomic accesses, ordered by the
// barriers (device scope in naga) around the tile's counter, see other
// workgroups' stores: a plain load may be served from the reader's cache
// (examples/last_block.rs counts whether it would be on a given GPU; a plain load
// missing its cache goes to L2 as an atomic one does, so they should cost about
// the same). The same values: the same bits.
@group(0) @binding(4) var<storage, read_write> partial: array<atomic<u32>>;

fn put_partial(at: u32, v: f32) {
    atomicStore(&partial[at], bitcast<u32>(v));
}

fn get_partial(at: u32) -> f32 {
    return bitcast<f32>(atomicLoad(&partial[at]));
}
