// Appended to matmul.wgsl for matmul_triple and matmul_triple_adam:
// matmul_operands.wgsl's operands and problem 2's, A from a2 and B from b2
// (bindings only these kernels have, so that the other matmul kernels bind no more
// storage buffers than they use).
@group(0) @binding(8) var<storage, read> a2: array<f32>;
@group(0) @binding(9) var<storage, read> b2: array<f32>;

// A(i, kk) of problem q (parameters p).
fn load_a(q: u32, p: Params, i: u32, kk: u32) -> f32 {
    let at = p.a_off + i * p.a_si + kk * p.a_sp;
    if (q == 0u) {
        return a[at];
    }
    if (q == 1u) {
        return a1[at];
    }
    return a2[at];
}

fn load_b(q: u32, at: u32) -> f32 {
    if (q == 0u) {
        return b[at];
    }
    if (q == 1u) {
        return e[at];
    }
    return b2[at];
}
