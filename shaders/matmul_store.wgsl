// Appended to matmul.wgsl for every matmul kernel but matmul_triple_adam: the
// elements a thread stored need nothing more (matmul_adam.wgsl's after_tile runs
// their Adam steps).
fn after_tile(stored: array<Stored, 6>) {}
