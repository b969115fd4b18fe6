// A product's output read straight from its split-K partial sums: the sum of the
// shares s = 0, 1, …, then bias, ReLU, mask (the epilogue of matmul.wgsl's store).
// matmul_reduce computes each element with it; the kernels that read a split
// product next (BCE, reparameterisation, the latent kernels) call it themselves,
// so the reduce needs no dispatch of its own and the value is bit for bit the one
// it would have stored. Its CPU twin is cpu::matmul's epilogue (the CPU does not
// split K). Not a kernel: appended to matmul.wgsl, bce.wgsl, reparam.wgsl and
// latent.wgsl when their pipelines are built. A reading kernel puts a SplitSource
// in its uniform (at byte 64; 160 in the latent kernels') and calls split_sum only
// when src.splits > 0 (0: read its input buffer as usual).

struct SplitSource {
    splits: u32, m: u32, n: u32, flags: u32,
    e_off: u32, e_si: u32, _p0: u32, _p1: u32,
}

@group(0) @binding(10) var<storage, read> split_partial: array<f32>;
@group(0) @binding(11) var<storage, read> split_e: array<f32>;

// Element t = i·n + j of C (m, n) = epilogue(Σ_s partial[s, i, j]).
fn split_sum(src: SplitSource, t: u32) -> f32 {
    // four shares' reads issued together, then added in order s = 0, 1, … (the
    // loads of a loop trip would otherwise wait one after the other wherever the
    // driver does not unroll past wgpu's loop-bounding counter)
    let mn = src.m * src.n;
    var v = 0.0;
    var s = 0u;
    for (; s + 4u <= src.splits; s += 4u) {
        let x0 = split_partial[s * mn + t];
        let x1 = split_partial[(s + 1u) * mn + t];
        let x2 = split_partial[(s + 2u) * mn + t];
        let x3 = split_partial[(s + 3u) * mn + t];
        v += x0;
        v += x1;
        v += x2;
        v += x3;
    }
    for (; s < src.splits; s++) {
        v += split_partial[s * mn + t];
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
