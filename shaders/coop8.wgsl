enable f16;
enable wgpu_cooperative_matrix;

// The fragment shape of matmul_walk_coop.wgsl where the device has 8×8×8
// cooperative matrices of f16 into f32 only (Mesa's lavapipe, which tests the walk
// without a GPU). Opens the module: WGSL directives precede every declaration.
alias CoopA = coop_mat8x8<f16, A>;
alias CoopB = coop_mat8x8<f16, B>;
alias CoopC = coop_mat8x8<f32, C>;
const F: u32 = 8u;
