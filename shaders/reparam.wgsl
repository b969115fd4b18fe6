// Twin of cpu::reparam_forward / cpu::reparam_backward (src/cpu/reparam.rs); ε from
// normal.wgsl (appended when the pipeline is built).
// Forward: head (B, 2L) = [μ | log σ²] → z, eps (B·K, L), kl (B), logpq (B·K) =
// log p(z) − log q(z|x) = Σ_j (−½ z² + ½ ε² + ½ log σ²); ε drawn from the
// counter-based generator, or read from eps when eps_given (fixtures).
// Backward: dz (B·K, L) → dhead (B, 2L), including the KL gradient.

struct Params {
    images: u32, l: u32, draws: u32, seed: u32,
    stream: u32, row_base: u32, eps_given: u32, _pad: u32,
}

// reparam_forward
@group(0) @binding(0) var<storage, read_write> head: array<f32>;
@group(0) @binding(1) var<storage, read_write> z: array<f32>;
@group(0) @binding(2) var<storage, read_write> eps: array<f32>;
@group(0) @binding(3) var<storage, read_write> kl: array<f32>;
@group(0) @binding(8) var<storage, read_write> logpq: array<f32>;
// reparam_backward
@group(0) @binding(4) var<storage, read_write> dz: array<f32>;
@group(0) @binding(5) var<storage, read> eps_in: array<f32>;
@group(0) @binding(6) var<storage, read> head_in: array<f32>;
@group(0) @binding(7) var<storage, read_write> dhead: array<f32>;
// With src.splits > 0 the kernel's input product — the head (forward) or dz
// (backward) — is read from its split-K partial sums (split_source.wgsl, appended
// when the pipeline is built) and stored to head or dz, as if matmul_reduce had run.
// (The slot's padding is spelled out as fields, not as `@size`: naga's GLSL output
// ignores member offsets, gfx-rs/wgpu#4374.)
struct Uniform { p: Params, _pad: array<vec4<u32>, 2>, src: SplitSource }
@group(1) @binding(0) var<uniform> u: Uniform;

// Forward: one workgroup per image. First the threads split the latents (thread t
// takes j = t, t + 64, …) and draw ε and z for every draw; then, after a barrier,
// thread 0 sums the KL over the latents and thread t sums log p − log q of draws
// k = t, t + 64, … — both in the order j = 0, 1, … as the CPU twin does. (One
// thread per image walking all latents serially left ~2 busy warps on the GPU.)
// Dispatch (B, 1, 1).
@compute @workgroup_size(64)
fn reparam_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = u.p;
    let b = wg.x;
    if (b >= p.images) {
        return;
    }
    let l = p.l;
    let t = lid.x;
    for (var j = t; j < l; j += 64u) {
        if (u.src.splits > 0u) {
            head[b * 2u * l + j] = split_sum(u.src, b * 2u * l + j);
            head[b * 2u * l + l + j] = split_sum(u.src, b * 2u * l + l + j);
        }
        let mu = head[b * 2u * l + j];
        let lv = head[b * 2u * l + l + j];
        let sd = exp(0.5 * lv);
        for (var k = 0u; k < p.draws; k++) {
            let r = (b * p.draws + k) * l + j;
            var ev: f32;
            if (p.eps_given != 0u) {
                ev = eps[r];
            } else {
                ev = normal(p.seed, p.stream, p.row_base + b, k * l + j);
            }
            eps[r] = ev;
            z[r] = mu + ev * sd;
        }
    }
    // eps, z (and head) of this image were written by other threads of this workgroup
    storageBarrier();
    if (t == 0u) {
        kl[b] = -0.5 * sum_latents(KL_TERM, b * 2u * l, l, l);
    }
    for (var k = t; k < p.draws; k += 64u) {
        logpq[b * p.draws + k] = sum_latents(PQ_TERM, (b * p.draws + k) * l, b * 2u * l + l, l);
    }
}

const KL_TERM: u32 = 0u;
const PQ_TERM: u32 = 1u;

// Σ_j term(j) over the l latents, in order j = 0, 1, …, with four terms' reads
// issued together before they are added (see split_sum); term = kl_term or
// pq_term (the branch is the same for every thread that takes it).
fn sum_latents(term: u32, x: u32, y: u32, l: u32) -> f32 {
    var acc = 0.0;
    var j = 0u;
    for (; j + 4u <= l; j += 4u) {
        let t0 = latent_term(term, x, y, j);
        let t1 = latent_term(term, x, y, j + 1u);
        let t2 = latent_term(term, x, y, j + 2u);
        let t3 = latent_term(term, x, y, j + 3u);
        acc += t0;
        acc += t1;
        acc += t2;
        acc += t3;
    }
    for (; j < l; j++) {
        acc += latent_term(term, x, y, j);
    }
    return acc;
}

fn latent_term(term: u32, x: u32, y: u32, j: u32) -> f32 {
    if (term == KL_TERM) {
        return kl_term(x, y, j);
    }
    return pq_term(x, y, j);
}

// Latent j's KL term 1 + log σ² − μ² − σ² of the image whose head starts at hb.
fn kl_term(hb: u32, l: u32, j: u32) -> f32 {
    let mu = head[hb + j];
    let lv = head[hb + l + j];
    return 1.0 + lv - mu * mu - exp(lv);
}

// Latent j's term of log p(z) − log q(z|x) for the draw whose row starts at r0
// (log σ² of the image at lb + j): ½ (ε² − z² + log σ²).
fn pq_term(r0: u32, lb: u32, j: u32) -> f32 {
    let ev = eps[r0 + j];
    let zv = z[r0 + j];
    return 0.5 * (ev * ev - zv * zv + head[lb + j]);
}

// Backward: one thread per (image, latent), linear index b·L + j over a 2-D grid of
// 64-thread workgroups; dispatch groups_1d(ceil(B·L / 64)).
@compute @workgroup_size(64)
fn reparam_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = u.p;
    let i = gid.x + gid.y * nwg.x * 64u;
    let l = p.l;
    if (i >= p.images * l) {
        return;
    }
    let b = i / l;
    let j = i % l;
    let mu = head_in[b * 2u * l + j];
    let lv = head_in[b * 2u * l + l + j];
    let half_sd = 0.5 * exp(0.5 * lv);
    var gmu = mu;
    var glv = 0.5 * (exp(lv) - 1.0);
    for (var k = 0u; k < p.draws; k++) {
        let r = (b * p.draws + k) * l + j;
        if (u.src.splits > 0u) {
            dz[r] = split_sum(u.src, r);
        }
        gmu += dz[r];
        glv += dz[r] * eps_in[r] * half_sd;
    }
    dhead[b * 2u * l + j] = gmu;
    dhead[b * 2u * l + l + j] = glv;
}
