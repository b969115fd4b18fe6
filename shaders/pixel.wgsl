// Pixel i of the image store (bytes packed 4 per u32, little-endian) as a value in
// [0, 1], from word = data[i / 4]: byte / 255. Its CPU twin is the unpacking in
// cpu::gather_pixels (src/cpu/gather.rs). Not a kernel: appended to gather.wgsl's
// modules and to matmul_gather's, so that x is the same bits either way.
fn pixel(word: u32, i: u32) -> f32 {
    return f32((word >> (8u * (i % 4u))) & 255u) / 255.0;
}
