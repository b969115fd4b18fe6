// Twin of cpu::matmul (src/cpu/matmul.rs).
// C (m, n) = epilogue(A (m, k) · B (k, n)) with arbitrary strides (element offsets):
//   A(i, p) = a[a_off + i*a_si + p*a_sp], B(p, j) = b[b_off + p*b_sp + j*b_sj],
//   C(i, j) = c[c_off + i*c_si + j].
// Epilogue flags: 1 add bias e[e_off + j]; 2 ReLU; 4 multiply by mask e[e_off + i*e_si + j] > 0.
// Tiling: one 32×32 tile of C per workgroup of 16×16 threads, each thread 2×2 outputs,
// K consumed 32 at a time through workgroup memory. Dispatch (ceil(n/32), ceil(m/32)).

struct Params {
    m: u32, n: u32, k: u32, flags: u32,
    a_off: u32, a_si: u32, a_sp: u32,
    b_off: u32, b_sp: u32, b_sj: u32,
    c_off: u32, c_si: u32,
    e_off: u32, e_si: u32,
    _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> e: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(1) @binding(0) var<uniform> p: Params;

const TILE: u32 = 32u;
var<workgroup> ta: array<f32, 1024>; // [i][kk]
var<workgroup> tb: array<f32, 1024>; // [kk][j]

@compute @workgroup_size(16, 16)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wg.y * TILE;
    let col0 = wg.x * TILE;
    let t = lid.y * 16u + lid.x;
    var acc00 = 0.0;
    var acc01 = 0.0;
    var acc10 = 0.0;
    var acc11 = 0.0;
    for (var k0 = 0u; k0 < p.k; k0 += TILE) {
        for (var q = 0u; q < 4u; q++) {
            let idx = t + q * 256u;
            let r = idx / TILE;
            let cc = idx % TILE;
            let gi = row0 + r;
            let gk = k0 + cc;
            var va = 0.0;
            if (gi < p.m && gk < p.k) {
                va = a[p.a_off + gi * p.a_si + gk * p.a_sp];
            }
            ta[r * TILE + cc] = va;
            let bk = k0 + r;
            let bj = col0 + cc;
            var vb = 0.0;
            if (bk < p.k && bj < p.n) {
                vb = b[p.b_off + bk * p.b_sp + bj * p.b_sj];
            }
            tb[r * TILE + cc] = vb;
        }
        workgroupBarrier();
        let ar = lid.y * 2u * TILE;
        let bc = lid.x * 2u;
        for (var kk = 0u; kk < TILE; kk++) {
            let a0 = ta[ar + kk];
            let a1 = ta[ar + TILE + kk];
            let b0 = tb[kk * TILE + bc];
            let b1 = tb[kk * TILE + bc + 1u];
            acc00 = fma(a0, b0, acc00);
            acc01 = fma(a0, b1, acc01);
            acc10 = fma(a1, b0, acc10);
            acc11 = fma(a1, b1, acc11);
        }
        workgroupBarrier();
    }
    let i0 = row0 + lid.y * 2u;
    let j0 = col0 + lid.x * 2u;
    store(i0, j0, acc00);
    store(i0, j0 + 1u, acc01);
    store(i0 + 1u, j0, acc10);
    store(i0 + 1u, j0 + 1u, acc11);
}

fn store(i: u32, j: u32, v_in: f32) {
    if (i >= p.m || j >= p.n) {
        return;
    }
    var v = v_in;
    if ((p.flags & 1u) != 0u) {
        v += e[p.e_off + j];
    }
    if ((p.flags & 2u) != 0u) {
        v = max(v, 0.0);
    }
    if ((p.flags & 4u) != 0u) {
        if (e[p.e_off + i * p.e_si + j] <= 0.0) {
            v = 0.0;
        }
    }
    c[p.c_off + i * p.c_si + j] = v;
}
