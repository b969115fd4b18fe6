// Twin of cpu::bce_logits (src/cpu/bce.rs).
// logits: (R, d), x: (R / K, d) → bce: (R) = Σ_d [max(t,0) − t·x + log(1 + e^{−|t|})];
// when write_grad, logits[r, d] ← σ(t) − x (gradient of the summed loss), σ from the
// same e = e^{−|t|}: 1/(1+e) for t ≥ 0, e/(1+e) for t < 0.
// One workgroup of 256 threads per row, strided loop then a tree reduction.

struct Params { rows: u32, d: u32, draws: u32, write_grad: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> bce: array<f32>;
@group(1) @binding(0) var<uniform> p: Params;

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn bce_logits(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = wg.x;
    let t = lid.x;
    var acc = 0.0;
    if (r < p.rows) {
        let xb = (r / p.draws) * p.d;
        for (var c = t; c < p.d; c += 256u) {
            let l = logits[r * p.d + c];
            let xv = x[xb + c];
            let ex = exp(-abs(l));
            acc += max(l, 0.0) - l * xv + log(1.0 + ex);
            if (p.write_grad != 0u) {
                var sig = 1.0 / (1.0 + ex);
                if (l < 0.0) {
                    sig = ex / (1.0 + ex);
                }
                logits[r * p.d + c] = sig - xv;
            }
        }
    }
    partial[t] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (t < s) {
            partial[t] += partial[t + s];
        }
        workgroupBarrier();
    }
    if (t == 0u && r < p.rows) {
        bce[r] = partial[0];
    }
}
