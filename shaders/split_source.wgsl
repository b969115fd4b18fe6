// A product's output read straight from its split-K partial sums: the work of
// matmul_reduce (matmul.wgsl) done by the kernel that reads the product next, so the
// reduce needs no dispatch of its own. Same operations in the same order as
// matmul_reduce — sum of the shares s = 0, 1, …, then bias, ReLU, mask — so the
// value is bit for bit the one the reduce would have stored. Its CPU twin is
// cpu::matmul's epilogue (the CPU does not split K).
// Not a kernel: appended to bce.wgsl and reparam.wgsl when their pipelines are built.
// A kernel using it puts a SplitSource at byte 64 of its uniform and calls
// split_sum only when src.splits > 0 (0: read its input buffer as usual).

struct SplitSource {
    splits: u32, m: u32, n: u32, flags: u32,
    e_off: u32, e_si: u32, _p0: u32, _p1: u32,
}

@group(0) @binding(10) var<storage, read> split_partial: array<f32>;
@group(0) @binding(11) var<storage, read> split_e: array<f32>;

// Element t = i·n + j of C (m, n) = epilogue(Σ_s partial[s, i, j]).
fn split_sum(src: SplitSource, t: u32) -> f32 {
    var v = 0.0;
    for (var s = 0u; s < src.splits; s++) {
        v += split_partial[s * src.m * src.n + t];
    }
    let i = t / src.n;
    let j = t % src.n;
    if ((src.flags & 1u) != 0u) {
        v += split_e[src.e_off + j];
    }
    if ((src.flags & 2u) != 0u) {
        v = max(v, 0.0);
    }
    if ((src.flags & 4u) != 0u) {
        if (split_e[src.e_off + i * src.e_si + j] <= 0.0) {
            v = 0.0;
        }
    }
    return v;
}
