// Appended to matmul.wgsl for every matmul kernel but matmul_bce: the split-K
// partial sums as plain f32. They are stored by one dispatch and read by the next
// (matmul_reduce, or the kernel that folds the reduce: split_source.wgsl), across
// a dispatch boundary, which makes every store visible.
@group(0) @binding(4) var<storage, read_write> partial: array<f32>;

fn put_partial(at: u32, v: f32) {
    partial[at] = v;
}

fn get_partial(at: u32) -> f32 {
    return partial[at];
}
