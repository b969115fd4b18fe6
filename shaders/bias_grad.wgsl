// Twin of cpu::bias_grad (src/cpu/bias_grad.rs).
// g[g_off + j] = Σ_i dy[i*n + j]; dy: (m, n). One thread per column j (reads are
// coalesced across j); the sum runs over i in order, as on the CPU.

struct Params { m: u32, n: u32, g_off: u32, _pad: u32 }

@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read_write> g: array<f32>;
@group(1) @binding(0) var<uniform> p: Params;

@compute @workgroup_size(64)
fn bias_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if (j >= p.n) {
        return;
    }
    var s = 0.0;
    for (var i = 0u; i < p.m; i++) {
        s += dy[i * p.n + j];
    }
    g[p.g_off + j] = s;
}
