// Twin of cpu::bce_logits (src/cpu/bce.rs).
// logits: (R, d), x: (R / K, d) → bce: (R) = Σ_d [max(t,0) − t·x + log(1 + e^{−|t|})];
// when write_grad, logits[r, d] ← σ(t) − x (gradient of the summed loss), σ from the
// same e = e^{−|t|}: 1/(1+e) for t ≥ 0, e/(1+e) for t < 0.
// One workgroup of REDUCE_THREADS (256) threads per row: a strided loop, then
// workgroup_sum from reduce_portable.wgsl or reduce_subgroup.wgsl (appended to this
// file when the pipeline is built). With u.src.splits > 0 the logits come from the
// decoder product's split-K partial sums (split_source.wgsl, also appended) and are
// stored to `logits` (or their gradient is), as if matmul_reduce had run first.
// With u.loss.on (one draw per image, a training step: the backend sets it when the
// op after the BCE is an ELBO loss_reduce without a batch sum) thread 0 also
// writes the image's −ELBO, sample_loss[out_off + r] = bce + kl[r], as loss.wgsl
// would, so that op needs no dispatch of its own.

struct Params { rows: u32, d: u32, draws: u32, write_grad: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> bce: array<f32>;
@group(0) @binding(3) var<storage, read> kl: array<f32>;
@group(0) @binding(4) var<storage, read_write> sample_loss: array<f32>;
struct LossOut { on: u32, out_off: u32, _p0: u32, _p1: u32 }
// (padding spelled out as fields, not as `@size`: naga's GLSL output ignores
// member offsets, gfx-rs/wgpu#4374)
struct Uniform { p: Params, _pad0: vec4<u32>, loss: LossOut, _pad1: vec4<u32>, src: SplitSource }
@group(1) @binding(0) var<uniform> u: Uniform;

// Early reads (EARLY, a pipeline constant: `VAE_OOD_GPU_EARLY_READS=1`): a thread
// reads the logits (or their split sums) and pixels of its next COLS columns c, c +
// 256, … together, then computes them in the same order, instead of waiting for
// each column's reads in turn (784 pixels: one round trip to memory instead of four).
// The same terms added in the same order: the same bits.
override EARLY: bool = false;
const COLS: u32 = 4u;

@compute @workgroup_size(REDUCE_THREADS)
fn bce_logits(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, ids: ReduceIds) {
    let p = u.p;
    let r = wg.x;
    let t = lid.x;
    var acc = 0.0;
    if (r < p.rows) {
        let xb = (r / p.draws) * p.d;
        if (EARLY) {
            for (var c0 = t; c0 < p.d; c0 += COLS * REDUCE_THREADS) {
                var ls: array<f32, COLS>;
                var xs: array<f32, COLS>;
                for (var k = 0u; k < COLS; k++) {
                    let c = c0 + k * REDUCE_THREADS;
                    if (c < p.d) {
                        ls[k] = logit(r, c);
                        xs[k] = x[xb + c];
                    }
                }
                for (var k = 0u; k < COLS; k++) {
                    let c = c0 + k * REDUCE_THREADS;
                    if (c < p.d) {
                        acc += bce_term(r, c, ls[k], xs[k]);
                    }
                }
            }
        } else {
            for (var c = t; c < p.d; c += REDUCE_THREADS) {
                acc += bce_term(r, c, logit(r, c), x[xb + c]);
            }
        }
    }
    let total = workgroup_sum(acc, ids);
    if (t == 0u && r < p.rows) {
        bce[r] = total;
        if (u.loss.on != 0u) {
            // loss.wgsl's −ELBO for one draw: (0 + bce) / 1 + kl, the same bits
            sample_loss[u.loss.out_off + r] = total + kl[r];
        }
    }
}

// Logit (r, c): from the split sums (stored as well where no gradient replaces it)
// or the logits buffer.
fn logit(r: u32, c: u32) -> f32 {
    let p = u.p;
    if (u.src.splits > 0u) {
        let l = split_sum(u.src, r * p.d + c);
        if (p.write_grad == 0u) {
            logits[r * p.d + c] = l;
        }
        return l;
    }
    return logits[r * p.d + c];
}

// The loss of logit l against pixel xv; with write_grad its gradient into logits.
fn bce_term(r: u32, c: u32, l: f32, xv: f32) -> f32 {
    let p = u.p;
    let ex = exp(-abs(l));
    if (p.write_grad != 0u) {
        var sig = 1.0 / (1.0 + ex);
        if (l < 0.0) {
            sig = ex / (1.0 + ex);
        }
        logits[r * p.d + c] = sig - xv;
    }
    return max(l, 0.0) - l * xv + log(1.0 + ex);
}
