// Twin of cpu::loss_reduce (src/cpu/loss.rs).
// sample_loss[out_off + b] = mean_k bce[b·K + k] + kl[b]  (−ELBO per image; mode 0) or
// −(logsumexp_k(logpq_k − bce_k) − ln K) (importance-weighted, mode 1);
// batch_loss[slot] = Σ_b sample_loss. One workgroup of REDUCE_THREADS (256) threads;
// the batch sum is workgroup_sum from reduce_portable.wgsl or reduce_subgroup.wgsl
// (appended to this file when the pipeline is built).

struct Params { images: u32, draws: u32, out_off: u32, slot: u32, mode: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<storage, read> bce: array<f32>;
@group(0) @binding(1) var<storage, read> kl: array<f32>;
@group(0) @binding(2) var<storage, read_write> sample_loss: array<f32>;
@group(0) @binding(3) var<storage, read_write> batch_loss: array<f32>;
@group(0) @binding(4) var<storage, read> logpq: array<f32>;
@group(1) @binding(0) var<uniform> p: Params;

@compute @workgroup_size(REDUCE_THREADS)
fn loss_reduce(@builtin(local_invocation_id) lid: vec3<u32>, ids: ReduceIds) {
    let t = lid.x;
    var acc = 0.0;
    for (var b = t; b < p.images; b += REDUCE_THREADS) {
        var v = 0.0;
        if (p.mode == 1u) {
            // −(logsumexp_k(logpq_k − bce_k) − ln K), max subtracted first
            var mx = -3.4e38;
            for (var k = 0u; k < p.draws; k++) {
                mx = max(mx, logpq[b * p.draws + k] - bce[b * p.draws + k]);
            }
            var s = 0.0;
            for (var k = 0u; k < p.draws; k++) {
                s += exp(logpq[b * p.draws + k] - bce[b * p.draws + k] - mx);
            }
            v = -(mx + log(s) - log(f32(p.draws)));
        } else {
            var rec = 0.0;
            for (var k = 0u; k < p.draws; k++) {
                rec += bce[b * p.draws + k];
            }
            v = rec / f32(p.draws) + kl[b];
        }
        sample_loss[p.out_off + b] = v;
        acc += v;
    }
    let total = workgroup_sum(acc, ids);
    // (slot 0xffffffff: no batch sum wanted, cpu::NO_SLOT)
    if (t == 0u && p.slot != 0xffffffffu) {
        batch_loss[p.slot] = total;
    }
}
