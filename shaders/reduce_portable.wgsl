// Workgroup sum, portable path: a tree in workgroup memory, no subgroup operations.
// Twin of the f32 sums that end cpu::bce_logits (src/cpu/bce.rs, per row) and
// cpu::loss_reduce (src/cpu/loss.rs, per batch); only the summation order differs.
// Not a kernel: appended to the source of every kernel that reduces (bce.wgsl,
// loss.wgsl) when the device lacks Features::SUBGROUP or VAE_OOD_NO_SUBGROUPS=1.
// reduce_subgroup.wgsl defines the same names; a kernel uses only these:
//   REDUCE_THREADS             its @workgroup_size (one dimension)
//   ReduceIds                  an entry-point parameter (builtins this path needs)
//   workgroup_sum(v, ids)      Σ of v over the workgroup, returned to every invocation;
//                              call once per invocation, in uniform control flow.

const REDUCE_THREADS: u32 = 256u;

struct ReduceIds {
    @builtin(local_invocation_index) index: u32,
}

var<workgroup> reduce_scratch: array<f32, REDUCE_THREADS>;

fn workgroup_sum(v: f32, ids: ReduceIds) -> f32 {
    let t = ids.index;
    reduce_scratch[t] = v;
    workgroupBarrier();
    for (var s = REDUCE_THREADS / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            reduce_scratch[t] += reduce_scratch[t + s];
        }
        workgroupBarrier();
    }
    return reduce_scratch[0];
}
