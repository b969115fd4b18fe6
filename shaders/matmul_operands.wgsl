// Appended to matmul.wgsl for matmul, matmul_pair and matmul_reduce: where problem
// q of a dispatch reads its operands — problem 0 A from a and B from b, problem 1
// of a pair A from a1 and B from e (matmul_triple_operands.wgsl adds problem 2).
fn load_a(q: u32, at: u32) -> f32 {
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
