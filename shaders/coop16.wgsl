enable f16;
enable wgpu_cooperative_matrix;

// The fragment shape of matmul_walk_coop.wgsl where the device has 16×16×16
// cooperative matrices of f16 into f32 (NVIDIA's tensor cores). Opens the module:
// WGSL directives precede every declaration.
alias CoopA = coop_mat16x16<f16, A>;
alias CoopB = coop_mat16x16<f16, B>;
alias CoopC = coop_mat16x16<f32, C>;
const F: u32 = 16u;
