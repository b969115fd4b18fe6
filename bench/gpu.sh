#!/usr/bin/env bash
# Side-by-side speed on a Linux machine with an NVIDIA GPU and no internet:
# vae-ood (prebuilt, wgpu over Vulkan) and the PyTorch baseline (eager, fused Adam,
# CUDA graph) in one call, then one comparison table; then the whole default run
# (load, train 20 epochs, score, plot) timed end to end — again with the fastest
# variant's switches if one beat the default, and with every GPU fusion off (its
# AUROCs are the accuracy target's comparison).
#
#   bench/gpu.sh [path/to/vae-ood]          (default: target/release/vae-ood)
#   EPOCHS=3 WARMUP=1 OUTDIR=bench/out bench/gpu.sh
#
# Vulkan: if the system has no libvulkan.so.1, the loader (and glvnd, which the
# NVIDIA ICD links against) is unpacked from the Debian .debs in bench/debs/ into a
# temporary prefix; the NVIDIA ICD manifest is looked up in the usual places.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/vae-ood}
EPOCHS=${EPOCHS:-3}
WARMUP=${WARMUP:-1}
OUTDIR=${OUTDIR:-bench/out}
PY=${PYTHON:-python3}
mkdir -p "$OUTDIR"

# shellcheck source=bench/vulkan-env.sh
source bench/vulkan-env.sh

echo "# $(date -u +%Y-%m-%dT%H:%MZ)  $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
"$BIN" devices
"$BIN" bench --device gpu --epochs "$EPOCHS" --warmup "$WARMUP" --json | tee "$OUTDIR/vae_gpu.json"
for v in eager fused graph; do
  $PY bench/torch_baseline.py --device cuda --variant "$v" --epochs "$EPOCHS" --warmup "$WARMUP" --json \
    | tail -n 1 | tee "$OUTDIR/torch_cuda_$v.json" || echo "{}" > "$OUTDIR/torch_cuda_$v.json"
done
# variants, same call (each backend line says what differs):
#   portable   the workgroup-memory reductions instead of subgroup operations
#   one_submit each epoch in one submission instead of pieces recorded while the GPU runs
#   no_pairs   a layer's input and weight gradients as two dispatches, not one matmul_pair
#   no_folds   every split-K reduce its own dispatch, not folded into the kernel reading the product
#   no_latent  the products around the latent code and the reparameterisation as their own
#              dispatches, not one latent.wgsl kernel per direction (rounding-level differences)
#   no_triple  fc3's weight gradient its own dispatch, not one matmul_triple with the
#              head's and fc1's
#   triple_adam  a step's Adam in the triple's epilogue (matmul_triple_adam; fc4's, which
#              the triple does not write, in the latent backward: latent_backward_adam), not its
#              own dispatch shared with the next step's gather (adam_gather)
#   no_gather  a run's first gather its own dispatch, not read by fc1's product from
#              the image store (matmul_gather; the later ones share the previous
#              step's Adam dispatch either way)
#   latent_256, latent_1024  the latent kernels in workgroups of 256 or 1024 threads,
#              not the most the device allows up to 512 (on the tensor cores; up to
#              1024 on the FMA walk; rounding-level differences)
#   checked    shaders with wgpu's runtime checks (index clamps, loop counters, …);
#              the default compiles them as trusted modules, without
#   no_loop_counters  shaders with every check but wgpu's loop-bounding counters
#   no_prefetch  the matmul reads its next K step after the multiply of this one, not before
#   no_ones    a weight gradient's bias gradient as row sums beside every multiply-add,
#              not as a column of ones in B (the default on the tensor cores since
#              2026-11-28; there the column's sums are of f16-rounded values)
#   fma        the matmul kernels walk K with f32 fmas, not on tensor cores (cooperative
#              matrices, f16 operands into f32 sums: the default since 2026-11-27 where
#              the adapter has them; rounding-level differences); coop_64, coop_128: the
#              tensor cores with K steps of 64 or 128, not 32
#   fma_double_tiles  the FMA walk's tiles double-buffered: one barrier per K step, not two
#   bce_kernel  a training step's BCE and its gradient in a kernel of their own (8
#              dispatches per step), not in the epilogue of fc4's split product with the
#              loss finished by fc4's gradient pair (the default since 2026-11-27: 7; the
#              same weights, each row's BCE summed in another order)
#   bce_unsplit  the BCE epilogue on fc4's product unsplit, walking all of K
#              (rounding-level differences)
#   early_reads  the kernels issue the reads whose addresses they know from the start
#              (the latent kernels', the BCE kernel's, the matmul epilogues' operands) before
#              the work that comes first, not after it (same bits); fma_early: with
#              the FMA walk
#   latent_fc1  the latent forward in the last workgroups of fc1's product (the head
#              summed tile by tile: rounding-level differences): 7 dispatches per step
#   latent_pair  the latent backward in the last workgroups of fc4's gradient pair (dz
#              summed tile by tile: rounding-level differences): 7 dispatches per step
#   fma_coherent  with the FMA walk, the last K shares that read the others' partial sums
#              in the same dispatch (the split BCE epilogue's) read them as plain loads of
#              an @coherent buffer, not as atomics (same bits as fma; the tensor-core
#              walk's modules declare the Vulkan memory model, which forbids @coherent)
#   split_64, split_512, split_1024  split-K products aim for 64, 512 or 1024 workgroups, not 256
#              (rounding-level differences in the results, as no_latent; the others: same bits)
#   persistent_auto  each training step's seven dispatches as one dispatch of as
#              many workgroups as the card runs at once, up to the largest phase's,
#              grid barriers between its phases (VAE_OOD_GPU_PERSISTENT=auto: a probe
#              per pipeline; on the FMA walk with latent kernels of 256 threads: the
#              bits of those dispatches; on an H200 264 workgroups, 1.13× those
#              dispatches' time, 2026-11-28); persistent_coop_auto: on the tensor cores
#              (no @coherent there: the module goes to the driver as SPIR-V with its
#              loads across phases made visible; 132 workgroups, 1.67×);
#              persistent_coop_plain: as wgpu compiles its WGSL, plain loads. (416
#              workgroups, the estimate's, are more than an H200 runs at once of
#              the step's module: an error after a few seconds)
variant() { # name, then VAR=value ...
  local name=$1; shift
  env "$@" "$BIN" bench --device gpu --epochs "$EPOCHS" --warmup "$WARMUP" --breakdown off --json \
    | tail -n 1 > "$OUTDIR/vae_gpu_$name.json" || echo "{}" > "$OUTDIR/vae_gpu_$name.json"
  echo "$*" > "$OUTDIR/vae_gpu_$name.env"
}
variant portable VAE_OOD_NO_SUBGROUPS=1
variant one_submit VAE_OOD_GPU_CHUNK=0
variant no_pairs VAE_OOD_GPU_UNFUSED=pairs
variant no_folds VAE_OOD_GPU_UNFUSED=reduces
variant no_latent VAE_OOD_GPU_UNFUSED=latent
variant no_triple VAE_OOD_GPU_UNFUSED=triple
variant triple_adam VAE_OOD_GPU_TRIPLE_ADAM=1
variant no_gather VAE_OOD_GPU_UNFUSED=gather
variant latent_256 VAE_OOD_GPU_LATENT_THREADS=256
variant latent_1024 VAE_OOD_GPU_LATENT_THREADS=1024
variant checked VAE_OOD_GPU_TRUSTED=0
variant no_loop_counters VAE_OOD_GPU_TRUSTED=loops
variant no_prefetch VAE_OOD_GPU_PREFETCH=0
variant no_ones VAE_OOD_GPU_ONES_COLUMN=0
variant fma VAE_OOD_GPU_COOP=0
variant coop_64 VAE_OOD_GPU_COOP_STEP=64
variant coop_128 VAE_OOD_GPU_COOP_STEP=128
variant fma_double_tiles VAE_OOD_GPU_COOP=0 VAE_OOD_GPU_DOUBLE_TILES=1
variant bce_kernel VAE_OOD_GPU_BCE_EPILOGUE=0
variant bce_unsplit VAE_OOD_GPU_BCE_SPLIT=0
variant early_reads VAE_OOD_GPU_EARLY_READS=1
variant fma_early VAE_OOD_GPU_COOP=0 VAE_OOD_GPU_EARLY_READS=1
variant latent_fc1 VAE_OOD_GPU_LATENT_FC1=1
variant latent_pair VAE_OOD_GPU_LATENT_PAIR=1
variant fma_coherent VAE_OOD_GPU_COOP=0 VAE_OOD_GPU_COHERENT=1
variant split_64 VAE_OOD_SPLIT_TARGET=64
variant split_512 VAE_OOD_SPLIT_TARGET=512
variant split_1024 VAE_OOD_SPLIT_TARGET=1024
variant persistent_auto VAE_OOD_GPU_PERSISTENT=auto
variant persistent_coop_auto VAE_OOD_GPU_COOP=1 VAE_OOD_GPU_PERSISTENT=auto
variant persistent_coop_plain VAE_OOD_GPU_COOP=1 VAE_OOD_GPU_PERSISTENT=auto VAE_OOD_GPU_PERSISTENT_PLAIN=1
$PY bench/table.py "$OUTDIR/vae_gpu.json" "$OUTDIR"/torch_cuda_*.json "$OUTDIR"/vae_gpu_{portable,one_submit,no_pairs,no_folds,no_latent,no_triple,triple_adam,no_gather,latent_256,latent_1024,checked,no_loop_counters,no_prefetch,no_ones,fma,coop_64,coop_128,fma_double_tiles,bce_kernel,bce_unsplit,early_reads,fma_early,latent_fc1,latent_pair,fma_coherent,split_64,split_512,split_1024,persistent_auto,persistent_coop_auto,persistent_coop_plain}.json \
  | tee "$OUTDIR/table.md"

echo "# the whole default run: cargo run --release -- --device gpu (20 epochs, scoring, plots)"
start=$(date +%s%N)
"$BIN" --device gpu --out "$OUTDIR/run"
end=$(date +%s%N)
echo "# whole default run, wall time: $(( (end - start) / 1000000 )) ms" | tee -a "$OUTDIR/table.md"

# the same whole run with the switches of the fastest variant, if one beat the default
best=$($PY - "$OUTDIR" <<'PYEOF'
import glob, json, os, sys
def sps(p):
    try:
        return json.loads(open(p).read().strip().splitlines()[-1]).get("samples_per_s") or 0
    except (OSError, ValueError, IndexError):
        return 0
out = sys.argv[1]
base = sps(os.path.join(out, "vae_gpu.json"))
runs = [(sps(p), p[:-5] + ".env") for p in glob.glob(os.path.join(out, "vae_gpu_*.json"))]
runs = [r for r in runs if os.path.exists(r[1])]
if runs and base:
    s, env = max(runs)
    if s > base:
        print(open(env).read().strip())
PYEOF
)
if [ -n "$best" ]; then
  echo "# the whole run with the fastest variant's switches: $best"
  start=$(date +%s%N)
  env $best "$BIN" --device gpu --out "$OUTDIR/run_best"
  end=$(date +%s%N)
  echo "# whole run with $best, wall time: $(( (end - start) / 1000000 )) ms" | tee -a "$OUTDIR/table.md"
fi

# the accuracy target: the same whole run with every GPU fusion off (its AUROCs
# against the default run's above)
echo "# the whole run unfused (VAE_OOD_GPU_UNFUSED=1), for the accuracy comparison"
start=$(date +%s%N)
VAE_OOD_GPU_UNFUSED=1 "$BIN" --device gpu --out "$OUTDIR/run_unfused" | grep -v '^====>'
end=$(date +%s%N)
echo "# whole run unfused, wall time: $(( (end - start) / 1000000 )) ms" | tee -a "$OUTDIR/table.md"
