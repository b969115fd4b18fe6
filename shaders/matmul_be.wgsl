// Appended to matmul.wgsl for every matmul kernel but matmul_gather_adam: B and
// the epilogue operand e (bias, mask), read-only.
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> e: array<f32>;
