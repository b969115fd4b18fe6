// Appended to matmul.wgsl for every matmul kernel but matmul_triple_adam: a stored
// element needs nothing more (matmul_adam.wgsl's after_put runs its Adam step).
fn after_put(at: u32, v: f32) {}
