// Workgroup sum, subgroup path: subgroupAdd within each subgroup, the subgroup sums
// through workgroup memory, and subgroupAdd over those. Any subgroup size works
// (1..REDUCE_THREADS; devices have 4..128): sizes and ids come from the builtins, and
// REDUCE_THREADS is a multiple of every (power-of-two) size, so subgroups are full.
// Twin of the f32 sums that end cpu::bce_logits (src/cpu/bce.rs, per row) and
// cpu::loss_reduce (src/cpu/loss.rs, per batch); only the summation order differs.
// Not a kernel: appended to the source of every kernel that reduces (bce.wgsl,
// loss.wgsl) when the device has Features::SUBGROUP (and VAE_OOD_NO_SUBGROUPS is not
// 1); a device without it rejects this module. Same names as reduce_portable.wgsl:
//   REDUCE_THREADS             the kernel's @workgroup_size (one dimension)
//   ReduceIds                  an entry-point parameter (builtins this path needs)
//   workgroup_sum(v, ids)      Σ of v over the workgroup, returned to every invocation;
//                              call once per invocation, in uniform control flow.
// (No `enable subgroups;`: naga 30 rejects that directive; the builtins are gated
// by the device feature instead.)

const REDUCE_THREADS: u32 = 256u;

struct ReduceIds {
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) size: u32,
    @builtin(subgroup_id) id: u32,
    @builtin(num_subgroups) count: u32,
}

// one sum per subgroup: REDUCE_THREADS of them at most (subgroups of one)
var<workgroup> reduce_scratch: array<f32, REDUCE_THREADS>;

fn workgroup_sum(v: f32, ids: ReduceIds) -> f32 {
    let s = subgroupAdd(v);
    if (ids.lane == 0u) {
        reduce_scratch[ids.id] = s;
    }
    workgroupBarrier();
    // every subgroup adds up the subgroup sums (the loop's trip count is the same
    // for the whole subgroup, so subgroupAdd below runs with every lane active)
    var acc = 0.0;
    for (var base = 0u; base < ids.count; base += ids.size) {
        let i = base + ids.lane;
        if (i < ids.count) {
            acc += reduce_scratch[i];
        }
    }
    return subgroupAdd(acc);
}
