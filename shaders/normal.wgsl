// Twin of rng::pcg4d / rng::normal (src/rng.rs): the counter-based standard normal
// that ε is drawn from. Not a kernel: appended to reparam.wgsl and latent.wgsl when
// their pipelines are built.

fn pcg4d(v_in: vec4<u32>) -> vec4<u32> {
    var v = v_in * 1664525u + 1013904223u;
    v.x += v.y * v.w;
    v.y += v.z * v.x;
    v.z += v.x * v.y;
    v.w += v.y * v.z;
    v = v ^ (v >> vec4<u32>(16u));
    v.x += v.y * v.w;
    v.y += v.z * v.x;
    v.z += v.x * v.y;
    v.w += v.y * v.z;
    return v;
}

const PI: f32 = 3.14159265358979;

// Standard normal for (seed, stream, row, index): Box–Muller on the top 24 bits of two
// hash words. The angle is kept in [-π, π) where Vulkan bounds cos's absolute error.
fn normal(seed: u32, stream: u32, row: u32, index: u32) -> f32 {
    let h = pcg4d(vec4<u32>(seed, stream, row, index));
    let u1 = f32((h.x >> 8u) + 1u) * (1.0 / 16777216.0);
    let u2 = f32(h.y >> 8u) * (1.0 / 16777216.0);
    return -sqrt(-2.0 * log(u1)) * cos(2.0 * PI * u2 - PI);
}
