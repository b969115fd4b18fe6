// Appended to matmul.wgsl for every matmul kernel but matmul_triple_adam and
// matmul_bce: the elements a thread stored need nothing more (matmul_adam.wgsl's
// after_tile runs their Adam steps, matmul_bce.wgsl's their BCE), and nothing is
// read for them.
struct AfterReads { none: u32 }

fn after_reads(w: Walk, lid: vec3<u32>, first_tile: bool) -> AfterReads {
    return AfterReads();
}

fn after_tile(w: Walk, lid: vec3<u32>, stored: array<Stored, 6>, r: AfterReads) {}

// (no split product of this module finishes its tiles itself: matmul_bce.wgsl's
// does)
fn last_split(w: Walk, wg: vec3<u32>, lid: vec3<u32>) -> bool {
    return false;
}
