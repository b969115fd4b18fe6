// Appended to matmul.wgsl (with matmul_operands.wgsl and matmul_store.wgsl) for
// matmul_pair_loss, and (with matmul_latent_backward.wgsl instead of
// matmul_store.wgsl) for matmul_pair_latent, whose entry point it is too: fc4's
// gradient pair (as matmul_pair) with the training step's
// per-image loss finished in extra workgroups after the pair's G0 + G1, one row
// per thread (`VAE_OOD_GPU_BCE_EPILOGUE=1`, after matmul_bce.wgsl's product):
//   bce[r] = Σ_t rowloss[r · T + t]  (t = 0, 1, …, T − 1 in order: the column
//            tiles' shares of row r's BCE),
//   sample_loss[out_off + r] = bce[r] + kl[r]  (loss.wgsl's −ELBO for one draw).
// Its CPU twin is the op sequence it replaces: cpu::loss_reduce (after the BCE),
// then the pair's two cpu::matmul calls. u.tail = (rows, T, out_off, 0). Dispatch
// (G0 + G1 + ⌈rows / 256⌉, 1, 1).

@group(0) @binding(19) var<storage, read> rowloss: array<f32>;
@group(0) @binding(20) var<storage, read> kl: array<f32>;
@group(0) @binding(21) var<storage, read_write> bce: array<f32>;
@group(0) @binding(22) var<storage, read_write> sample_loss: array<f32>;

@compute @workgroup_size(16, 16)
fn matmul_pair_loss(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g0 = grid(0u);
    let g1 = grid(1u);
    let tiles = g0.x * g0.y * g0.z + g1.x * g1.y;
    if (wg.x < tiles) {
        pair_tile(wg.x, lid);
    } else {
        let r = (wg.x - tiles) * 256u + lid.y * 16u + lid.x;
        if (r < u.tail.x) {
            // the shares eight at a time: their loads issued together, then added
            // in order (a missing one is +0.0, which changes no sum)
            let row = r * u.tail.y;
            var total = 0.0;
            for (var t0 = 0u; t0 < u.tail.y; t0 += 8u) {
                var v: array<f32, 8>;
                for (var k = 0u; k < 8u; k++) {
                    if (t0 + k < u.tail.y) {
                        v[k] = rowloss[row + t0 + k];
                    }
                }
                for (var k = 0u; k < 8u; k++) {
                    total += v[k];
                }
            }
            bce[r] = total;
            sample_loss[u.tail.z + r] = total + kl[r];
        }
    }
}
