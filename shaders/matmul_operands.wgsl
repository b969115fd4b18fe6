// Appended to matmul.wgsl for matmul, matmul_pair and matmul_reduce: where problem
// q of a dispatch reads its operands — problem 0 A from a and B from b, problem 1
// of a pair A from a1 and B from e (matmul_triple_operands.wgsl adds problem 2).
// A(i, kk) of problem q (parameters p).
fn load_a(q: u32, p: Params, i: u32, kk: u32) -> f32 {
    let at = p.a_off + i * p.a_si + kk * p.a_sp;
    if (q == 0u) {
        return a[at];
    }
    return a1[at];
}

fn load_b(q: u32, at: u32) -> f32 {
    if (q == 0u) {
        return b[at];
    }
    return e[at];
}
