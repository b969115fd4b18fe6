// Twin of cpu::loss_reduce (src/cpu/loss.rs).
// sample_loss[out_off + b] = mean_k bce[b·K + k] + kl[b]  (−ELBO per image; mode 0) or
// −(logsumexp_k(logpq_k − bce_k) − ln K) (importance-weighted, mode 1);
// batch_loss[slot] = Σ_b sample_loss. One workgroup of 256 threads.

struct Params { images: u32, draws: u32, out_off: u32, slot: u32, mode: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<storage, read> bce: array<f32>;
@group(0) @binding(1) var<storage, read> kl: array<f32>;
@group(0) @binding(2) var<storage, read_write> sample_loss: array<f32>;
@group(0) @binding(3) var<storage, read_write> batch_loss: array<f32>;
@group(0) @binding(4) var<storage, read> logpq: array<f32>;
@group(1) @binding(0) var<uniform> p: Params;

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn loss_reduce(@builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    var acc = 0.0;
    for (var b = t; b < p.images; b += 256u) {
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
    partial[t] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (t < s) {
            partial[t] += partial[t + s];
        }
        workgroupBarrier();
    }
    if (t == 0u) {
        batch_loss[p.slot] = partial[0];
    }
}
