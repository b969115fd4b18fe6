// Appended to matmul.wgsl for matmul_gather_adam instead of matmul_be.wgsl: B and
// the epilogue operand e, read-write. Its product reads fc1's weights and bias
// from the parameters, and its extra workgroups update other parameters (the
// previous step's Adam tail, matmul_gather_adam.wgsl) in the same buffer: wgpu
// refuses one buffer bound read-only and read-write in one dispatch, so the
// product's bindings are the read-write ones. The product only reads them.
@group(0) @binding(1) var<storage, read_write> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> e: array<f32>;
