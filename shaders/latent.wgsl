// Twin of the op sequences it replaces, run one after the other on the CPU:
//   latent_forward  = cpu::matmul (head fwd: head = h1 W2ᵀ + b2), cpu::reparam_forward,
//                     cpu::matmul (fc3 fwd: h3 = relu(z W3ᵀ + b3));
//   latent_backward = cpu::matmul (fc3 dX: dz = dh3 W3), cpu::reparam_backward,
//                     cpu::matmul (head dX: dh1 = dhead W2 ⊙ [h1 > 0]).
// The products around the latent code are tiny (K or N is 2L = 40 or L = 20 for
// MNIST) and each row of them depends only on the same image's row, so one
// workgroup per image runs the whole chain with workgroup barriers between the
// links: one dispatch instead of three (four with the head's split-K), and none of
// the small products' launch and drain on the critical path of a training step.
// The GPU backend lowers the three ops to one of these where `lower_latent`
// (src/gpu/lower/latent.rs) allows; ε from normal.wgsl and the split-K reader from
// split_source.wgsl (both appended to this module).
//
// Shapes (R = B·K rows of the decoder, row r = b·K + k):
//   forward:  h1 (B, H) → head (B, 2L), eps, z (R, L), kl (B), logpq (R), h3 (R, H)
//   backward: dh3 (R, H) → dz (R, L), dhead (B, 2L), dh1 (B, H); reads eps, head, h1
// Each product C(i, j) = Σ_p A(i, p) B(p, j) is read from its op's params: B from
// the parameters (B(p, j) = params[b_off + p·b_sp + j·b_sj]), A's row i from
// workgroup memory, C(i, j) written at c_off + i·c_si + j after the matmul epilogue
// (bias, ReLU from params; mask from h1). Each entry point stores to its own
// buffers only: it binds 10 storage buffers (WebGPU's default allows 8, desktop
// GPUs and lavapipe far more; the backend runs without these kernels where the
// device has fewer; latent_backward_adam, latent_adam.wgsl, binds 13). Dispatch (B, 1, 1), workgroups of WG threads (a pipeline
// constant: 1024 where the device allows, else 512 or 256; the backend chooses).
//
// Summation order: output j of a product with N outputs gets G = ⌊WG / N⌋ threads
// (G = 1 when N ≥ WG: thread t then takes outputs t, t + WG, …); thread g of them
// sums p = g, g + G, … in order and the G shares are added in order g = 0, 1, ….
// With G = 1 that is the order of an unsplit matmul tile; otherwise results agree
// with the CPU to rounding (tests/kernels.rs, latent_*).
//
// Early reads (EARLY, a pipeline constant: `VAE_OOD_GPU_EARLY_READS=1`): each
// product's bias or mask for the output a thread finishes, and the first draw's ε
// backward, are read at the start of the kernel, together with the first row's
// reads, instead of after the barriers and links before them: one round trip to
// memory fewer at the end of each product. The same values: the same bits. The
// per-image sums on one thread (KL, log p − log q) then run on threads that have no
// output of the next product (at 1,024 threads) instead of thread 0.

struct Params {
    m: u32, n: u32, k: u32, flags: u32,
    a_off: u32, a_si: u32, a_sp: u32,
    b_off: u32, b_sp: u32, b_sj: u32,
    c_off: u32, c_si: u32,
    e_off: u32, e_si: u32,
    splits: u32, _pad: u32,
}

struct Reparam {
    images: u32, l: u32, draws: u32, seed: u32,
    stream: u32, row_base: u32, eps_given: u32, _pad: u32,
}

// forward: first = head fwd, second = fc3 fwd; backward: first = fc3 dX, second =
// head dX. With src.splits > 0 the row the first product reads — h1 forward, dh3
// backward — is read from the split-K partial sums of the product before it (fc1
// forward, fc4's input gradient backward; split_source.wgsl, appended) and stored,
// as if matmul_reduce had run: one reduce dispatch fewer each way. adam and tail:
// latent_backward_adam's Adam step and the parameters [tail.x, tail.y) it updates.
struct Uniform {
    first: Params, rp: Reparam, second: Params, src: SplitSource,
    adam: AdamParams, tail: vec4<u32>,
}
@group(1) @binding(0) var<uniform> u: Uniform;

// (binding 0, the parameters: read-only in latent_params.wgsl, appended for
// latent_forward and latent_backward; read-write in latent_adam.wgsl)
@group(0) @binding(1) var<storage, read_write> h1: array<f32>;
@group(0) @binding(2) var<storage, read_write> head: array<f32>;
@group(0) @binding(3) var<storage, read_write> eps: array<f32>;
// latent_forward
@group(0) @binding(4) var<storage, read_write> z: array<f32>;
@group(0) @binding(5) var<storage, read_write> kl: array<f32>;
@group(0) @binding(6) var<storage, read_write> logpq: array<f32>;
@group(0) @binding(7) var<storage, read_write> h3: array<f32>;
// latent_backward
@group(0) @binding(8) var<storage, read_write> dh3: array<f32>;
@group(0) @binding(9) var<storage, read_write> dz: array<f32>;
@group(0) @binding(12) var<storage, read_write> dhead: array<f32>;
@group(0) @binding(13) var<storage, read_write> dh1: array<f32>;
// (bindings 10 and 11: split_source.wgsl's partial sums and epilogue operand)

// threads per workgroup: 256, 512 or 1024 (more threads per output shorten each
// thread's serial sum)
override WG: u32 = 256u;
const WG_MAX: u32 = 1024u;
// The most hidden units and latents an image's rows may have here (the lowering
// checks: MAX_HIDDEN and MAX_LATENT in src/gpu/lower/latent.rs).
const HMAX: u32 = 1024u;
const LMAX: u32 = 64u;

// xs: the wide row read (h1 forward, dh3 backward); ys: a product row's outputs;
// hd: the head row [μ | log σ²] (forward) or its gradient (backward); zs, es: a
// draw's z and ε (forward)
var<workgroup> xs: array<f32, HMAX>;
var<workgroup> ys: array<f32, HMAX>;
var<workgroup> hd: array<f32, 128>; // 2·LMAX
var<workgroup> zs: array<f32, LMAX>;
var<workgroup> es: array<f32, LMAX>;
var<workgroup> share: array<f32, WG_MAX>;

override EARLY: bool = false;

// The epilogue operands of output j = t of product q in row `row`, read early: the
// bias and the mask's h1 value (each 0 where the product has none). (Reading each
// thread's first 16 weights of both products early as well — 32 more registers at
// 1,024 threads — was tried with sixteen reads per trip and timed 1.057× slower on
// an H100: README, "Tried on a GPU and removed".)
struct EarlyEpilogue { bias: f32, mask: f32, row: u32 }

fn early_epilogue(q: Params, row: u32, t: u32) -> EarlyEpilogue {
    var r = EarlyEpilogue(0.0, 0.0, row);
    if (EARLY && t < q.n) {
        if ((q.flags & 1u) != 0u) {
            r.bias = params[q.e_off + t];
        }
        if ((q.flags & 4u) != 0u) {
            r.mask = h1[q.e_off + row * q.e_si + t];
        }
    }
    return r;
}

// the four products, by the row they read
const HEAD: u32 = 0u; // A row from xs (h1), C → head, hd
const DEC: u32 = 1u;  // A row from zs (z), C → h3
const DZ: u32 = 2u;   // A row from xs (dh3), C → dz
const DH1: u32 = 3u;  // A row from hd (dhead), C → dh1

fn a_at(which: u32, p: u32) -> f32 {
    if (which == HEAD || which == DZ) {
        return xs[p];
    }
    if (which == DEC) {
        return zs[p];
    }
    return hd[p];
}

// Σ_{p = g, g + G, … < K} A(p) B(p, j), four products' reads issued together, added
// in order
fn dot_share(which: u32, q: Params, j: u32, g: u32, gs: u32) -> f32 {
    var s = 0.0;
    var p = g;
    for (; p + 3u * gs < q.k; p += 4u * gs) {
        let b0 = params[q.b_off + p * q.b_sp + j * q.b_sj];
        let b1 = params[q.b_off + (p + gs) * q.b_sp + j * q.b_sj];
        let b2 = params[q.b_off + (p + 2u * gs) * q.b_sp + j * q.b_sj];
        let b3 = params[q.b_off + (p + 3u * gs) * q.b_sp + j * q.b_sj];
        s = fma(a_at(which, p), b0, s);
        s = fma(a_at(which, p + gs), b1, s);
        s = fma(a_at(which, p + 2u * gs), b2, s);
        s = fma(a_at(which, p + 3u * gs), b3, s);
    }
    for (; p < q.k; p += gs) {
        s = fma(a_at(which, p), params[q.b_off + p * q.b_sp + j * q.b_sj], s);
    }
    return s;
}

// Row i of product `which`: every C(i, j), j < q.n, through the epilogue (as
// matmul.wgsl's store: bias and ReLU from params, the mask from h1) into ys[j],
// written by thread j % WG, which also stores it (no barrier needed between).
// Called by the whole workgroup (it holds barriers); ends with a barrier, after
// which the caller may overwrite the A row. `pe`: the epilogue operands the thread
// read early (with EARLY; for its first output j = t, in row pe.row).
fn product_row(which: u32, q: Params, i: u32, t: u32, pe: EarlyEpilogue) {
    if (q.n > WG) {
        for (var j = t; j < q.n; j += WG) {
            ys[j] = epilogue(q, i, j, dot_share(which, q, j, 0u, 1u), EARLY && j == t, pe);
        }
    } else {
        let gs = WG / q.n;
        let j = t / gs;
        var s = 0.0;
        if (j < q.n) {
            s = dot_share(which, q, j, t % gs, gs);
        }
        share[t] = s;
        workgroupBarrier();
        if (t < q.n) {
            var v = share[t * gs];
            for (var g = 1u; g < gs; g++) {
                v += share[t * gs + g];
            }
            ys[t] = epilogue(q, i, t, v, EARLY, pe);
        }
    }
    workgroupBarrier();
}

// C(i, j) from its sum: bias, ReLU, mask; with `pre`, the bias and (in row
// pe.row) the mask read early.
fn epilogue(q: Params, i: u32, j: u32, v_in: f32, pre: bool, pe: EarlyEpilogue) -> f32 {
    var v = v_in;
    if ((q.flags & 1u) != 0u) {
        if (pre) {
            v += pe.bias;
        } else {
            v += params[q.e_off + j];
        }
    }
    if ((q.flags & 2u) != 0u) {
        v = max(v, 0.0);
    }
    if ((q.flags & 4u) != 0u) {
        var h = pe.mask;
        if (!pre || i != pe.row) {
            h = h1[q.e_off + i * q.e_si + j];
        }
        if (h <= 0.0) {
            v = 0.0;
        }
    }
    return v;
}

// C(i, j) of product q's output buffer
fn c_at(q: Params, i: u32, j: u32) -> u32 {
    return q.c_off + i * q.c_si + j;
}

// Forward for image b = workgroup x: h1 row → head (kept in hd) → for each draw k:
// ε, z (kept in zs), log p − log q → h3 row b·K + k; the KL once.
@compute @workgroup_size(WG)
fn latent_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let qh = u.first;
    let rp = u.rp;
    let qd = u.second;
    let b = wg.x;
    let t = lid.x;
    let l = rp.l;
    // (with EARLY: both products' biases, before the h1 row's reads)
    let eh = early_epilogue(qh, b, t);
    let ed = early_epilogue(qd, b * rp.draws, t);
    // the thread of each per-image sum: with EARLY one without a head or fc3 output
    // at 1024 threads (and never one of the t < l that draw)
    let kl_t = select(0u, WG - 1u, EARLY);
    let pq_t = select(0u, WG - 2u, EARLY);
    for (var p = t; p < qh.k; p += WG) {
        if (u.src.splits > 0u) {
            // (h1 dense here: the lowering folds only then)
            let v = split_sum(u.src, b * qh.k + p);
            h1[b * qh.k + p] = v;
            xs[p] = v;
        } else {
            xs[p] = h1[qh.a_off + b * qh.a_si + p * qh.a_sp];
        }
    }
    workgroupBarrier();
    product_row(HEAD, qh, b, t, eh);
    for (var j = t; j < qh.n; j += WG) {
        head[c_at(qh, b, j)] = ys[j];
        hd[j] = ys[j];
    }
    workgroupBarrier();
    if (t == kl_t) {
        // as reparam.wgsl's kl_term, summed in order j = 0, 1, …
        var acc = 0.0;
        for (var j = 0u; j < l; j++) {
            let mu = hd[j];
            let lv = hd[l + j];
            acc += 1.0 + lv - mu * mu - exp(lv);
        }
        kl[b] = -0.5 * acc;
    }
    for (var k = 0u; k < rp.draws; k++) {
        let r = b * rp.draws + k;
        if (t < l) {
            let mu = hd[t];
            let lv = hd[l + t];
            var ev: f32;
            if (rp.eps_given != 0u) {
                ev = eps[r * l + t];
            } else {
                ev = normal(rp.seed, rp.stream, rp.row_base + b, k * l + t);
            }
            let zv = mu + ev * exp(0.5 * lv);
            eps[r * l + t] = ev;
            z[r * l + t] = zv;
            zs[t] = zv;
            es[t] = ev;
        }
        workgroupBarrier();
        if (t == pq_t) {
            // as reparam.wgsl's pq_term, in order j = 0, 1, …
            var acc = 0.0;
            for (var j = 0u; j < l; j++) {
                acc += 0.5 * (es[j] * es[j] - zs[j] * zs[j] + hd[l + j]);
            }
            logpq[r] = acc;
        }
        // (ends with a barrier: zs and es are rewritten by the next draw after it)
        product_row(DEC, qd, r, t, ed);
        for (var j = t; j < qd.n; j += WG) {
            h3[c_at(qd, r, j)] = ys[j];
        }
    }
}

// Backward for image b = workgroup x: for each draw k, the dh3 row b·K + k → dz
// → added into the head gradient (hd: μ's part, then log σ²'s, starting
// from the KL gradient, as reparam.wgsl) → after the last draw, dhead → dh1 row b.
@compute @workgroup_size(WG)
fn latent_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    backward_image(wg.x, lid.x);
}

// latent_backward's work for image b, thread t (called by the whole workgroup: it
// holds barriers).
fn backward_image(b: u32, t: u32) {
    let qz = u.first;
    let rp = u.rp;
    let qx = u.second;
    let l = rp.l;
    // (with EARLY: the mask of dh1 and the first draw's ε, before the head's and the
    // dh3 row's reads)
    let ez = early_epilogue(qz, b * rp.draws, t);
    let ex = early_epilogue(qx, b, t);
    var eps0 = 0.0;
    if (EARLY && t < l) {
        eps0 = eps[b * rp.draws * l + t];
    }
    var half_sd = 0.0;
    if (t < l) {
        let mu = head[b * 2u * l + t];
        let lv = head[b * 2u * l + l + t];
        half_sd = 0.5 * exp(0.5 * lv);
        hd[t] = mu;
        hd[l + t] = 0.5 * (exp(lv) - 1.0);
    }
    for (var k = 0u; k < rp.draws; k++) {
        let r = b * rp.draws + k;
        for (var p = t; p < qz.k; p += WG) {
            if (u.src.splits > 0u) {
                // (dh3 dense here: the lowering folds only then)
                let v = split_sum(u.src, r * qz.k + p);
                dh3[r * qz.k + p] = v;
                xs[p] = v;
            } else {
                xs[p] = dh3[qz.a_off + r * qz.a_si + p * qz.a_sp];
            }
        }
        workgroupBarrier();
        // (ends with a barrier: xs is rewritten by the next draw after it)
        product_row(DZ, qz, r, t, ez);
        if (t < l) {
            // output t of the L outputs: this thread's
            let g = ys[t];
            dz[c_at(qz, r, t)] = g;
            hd[t] += g;
            var ev = eps0;
            if (!EARLY || k > 0u) {
                ev = eps[r * l + t];
            }
            hd[l + t] += g * ev * half_sd;
        }
    }
    if (t < l) {
        dhead[b * 2u * l + t] = hd[t];
        dhead[b * 2u * l + l + t] = hd[l + t];
    }
    workgroupBarrier();
    product_row(DH1, qx, b, t, ex);
    for (var j = t; j < qx.n; j += WG) {
        dh1[c_at(qx, b, j)] = ys[j];
    }
}
