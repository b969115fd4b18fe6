#!/usr/bin/env bash
# On a GPU machine, from the repository root, with .devbin/ from bench/device-pack.sh
# carried along: the GPU test binaries (shaders against their CPU twins on the real
# driver, both reduction variants), then bench/gpu.sh (vae-ood against PyTorch and the
# variants, one table), then bench/gpu-sweep.sh (the default against its nearest
# variants and PyTorch's CUDA graph, medians of interleaved rounds), then the kernel
# experiments (one step per GPU variant with per-op timestamps; each product alone,
# each gradient pair fused and not; a reduce dispatch against a last-block reduce; a
# dispatch boundary against a grid barrier), in one call. Logs go to bench/out, or,
# when $OUT is set (the device tool, which brings back at most 8 files), into one
# $OUT/logs.tgz, refreshed after each phase and every 30 s so a run cut short still
# returns what it finished.
#   bash bench/device-check.sh            SKIP_BENCH=1: the tests only
#   QUICK=1: the tests, the sweep, nine whole runs (tensor cores, the BCE
#   epilogue, both, the latent forward in fc1, the latent backward in fc4's pair,
#   all in with the first and with both, all in on the FMA walk, neither),
#   matmul_micro on tensor cores,
#   gpu_variants and last_block only (no gpu.sh, default matmul_micro, K sweep or
#   grid barrier)
#   SWEEP_ROUNDS, SWEEP_EPOCHS: the sweep's rounds (5) and epochs (10); 0 rounds
#   skips it (a dry run of this script on lavapipe, where it would take hours)
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${OUT:-}" ]; then LOG=$(mktemp -d); else LOG=bench/out; fi
mkdir -p "$LOG"
# (the whole runs' scores and weights stay behind: over the 16 MB a file may bring back)
# (through a file of its own, then renamed: the ticker below may snapshot at the
# same time, and a call cut short must not leave half an archive)
snapshot() {
  if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/.logs.$BASHPID.tmp" --exclude='scores.csv' --exclude='*.safetensors' -C "$LOG" . &&
      mv -f "$OUT/.logs.$BASHPID.tmp" "$OUT/logs.tgz"
  fi
}
# also every 30 s: a call that runs past its time limit still brings back the runs
# the sweep finished (its .jsonl files; bench/gpu-sweep.sh tabulates them)
# (its sleep killed with it, and no output of its own: nothing of it may outlive
# the script and hold the call's output open)
if [ -n "${OUT:-}" ]; then
  (
    trap 'kill $nap 2>/dev/null; exit 0' TERM
    while :; do
      sleep 30 &
      nap=$!
      wait $nap
      snapshot
    done
  ) >/dev/null 2>&1 &
  ticker=$!
  trap 'kill $ticker 2>/dev/null; wait $ticker 2>/dev/null' EXIT
fi
# (tar with xz, or Python's tarfile where the machine has no xz)
tar -xJf .devbin/devbin.tar.xz -C .devbin 2>/dev/null || python3 -c 'import sys, tarfile
tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .devbin/devbin.tar.xz .devbin
chmod +x .devbin/vae-ood .devbin/test_* .devbin/ex_*
# shellcheck source=bench/vulkan-env.sh
source bench/vulkan-env.sh
.devbin/vae-ood devices 2>&1 | tee "$LOG/devices.txt"
status=0
# (tests/bench.rs: only its GPU test; the others start the vae-ood binary by its
# build path, which is not there)
# (the tensor-core walk's test must run here, not only check its refusal)
export VAE_OOD_TEST_REQUIRE_COOP=1
for t in kernels torch_fixture train_step "bench timestamp" gpu_errors; do
  set -- $t
  echo "## $*"
  # one test at a time (one device), each binary bounded so a hang cannot eat the lease
  timeout 240 ".devbin/test_$1" --test-threads 1 ${2:-} 2>&1 | grep -v XDG_RUNTIME_DIR \
    | tee "$LOG/test_$1.txt" | tail -n 3
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
snapshot
if [ -z "${SKIP_BENCH:-}" ]; then
  if [ -z "${QUICK:-}" ]; then
    OUTDIR="$LOG/bench" bash bench/gpu.sh .devbin/vae-ood 2>&1 | grep -v '^{' | tee "$LOG/bench.txt"
    snapshot
  fi
  # the default against the switches closest to it, 5 interleaved rounds of 10
  # epochs each (one gpu.sh run per variant cannot tell a 3 % difference)
  echo "## bench/gpu-sweep.sh: medians of 5 interleaved rounds, 10 epochs each"
  # (2026-11-26, H100 and H200, in three calls: ones_column 0.996–1.032, latent_512
  # 0.991–0.993, no_prefetch 1.005, triple_adam 1.043–1.054 × the default. Not
  # timed yet, all built without a GPU: the tensor-core walk (K steps of 64, its
  # default, and 128; split-K products aiming for 128 workgroups); the FMA walk's
  # double-buffered tiles; the BCE in fc4's epilogue, unsplit and split (the last K
  # share finishing each tile), on either walk; early reads; Adam in the triple with
  # fc4's Adam in the latent backward and early reads; the latent forward in fc1's
  # product; the latent backward in fc4's gradient pair; and all of them together
  # (all_in: 6 dispatches per step; all_in_split with the split BCE; all_in_fc1
  # with the latent forward in fc1 too: 5; all_in_pair with the latent backward in
  # the pair as well: 4; all_in_tail with the triple's Adam tail, fc4's, in the
  # next step's fc1 dispatch: 4, all_in_pair's bits; all_in_fma, all_in_tail on the
  # FMA walk, in case the tensor cores lose). The unsplit BCE on the FMA walk (bce)
  # is left to bench/gpu.sh: the split one (bce_split) has its logits and no
  # longer K walk. Seventeen configurations and the CUDA graph: about 5 minutes on
  # an H100)
  ROUNDS=${SWEEP_ROUNDS:-5} EPOCHS=${SWEEP_EPOCHS:-10} TORCH=1 OUTDIR="$LOG/sweep" bash bench/gpu-sweep.sh .devbin/vae-ood 'default:' \
    'coop:VAE_OOD_GPU_COOP=1' 'coop_128:VAE_OOD_GPU_COOP=1,VAE_OOD_GPU_COOP_STEP=128' \
    'coop_split128:VAE_OOD_GPU_COOP=1,VAE_OOD_SPLIT_TARGET=128' \
    'double_tiles:VAE_OOD_GPU_DOUBLE_TILES=1' \
    'bce_split:VAE_OOD_GPU_BCE_SPLIT=1' \
    'coop_bce:VAE_OOD_GPU_COOP=1,VAE_OOD_GPU_BCE_EPILOGUE=1' \
    'early:VAE_OOD_GPU_EARLY_READS=1' \
    'triple_adam_early:VAE_OOD_GPU_TRIPLE_ADAM=1,VAE_OOD_GPU_EARLY_READS=1' \
    'latent_fc1:VAE_OOD_GPU_LATENT_FC1=1' 'latent_pair:VAE_OOD_GPU_LATENT_PAIR=1' \
    'all_in:VAE_OOD_GPU_COOP=1,VAE_OOD_GPU_BCE_EPILOGUE=1,VAE_OOD_GPU_TRIPLE_ADAM=1,VAE_OOD_GPU_EARLY_READS=1' \
    'all_in_split:VAE_OOD_GPU_COOP=1,VAE_OOD_GPU_BCE_SPLIT=1,VAE_OOD_GPU_TRIPLE_ADAM=1,VAE_OOD_GPU_EARLY_READS=1' \
    'all_in_fc1:VAE_OOD_GPU_COOP=1,VAE_OOD_GPU_BCE_SPLIT=1,VAE_OOD_GPU_TRIPLE_ADAM=1,VAE_OOD_GPU_EARLY_READS=1,VAE_OOD_GPU_LATENT_FC1=1' \
    'all_in_pair:VAE_OOD_GPU_COOP=1,VAE_OOD_GPU_BCE_SPLIT=1,VAE_OOD_GPU_TRIPLE_ADAM=1,VAE_OOD_GPU_EARLY_READS=1,VAE_OOD_GPU_LATENT_FC1=1,VAE_OOD_GPU_LATENT_PAIR=1' \
    'all_in_tail:VAE_OOD_GPU_COOP=1,VAE_OOD_GPU_BCE_SPLIT=1,VAE_OOD_GPU_TRIPLE_ADAM=1,VAE_OOD_GPU_EARLY_READS=1,VAE_OOD_GPU_LATENT_FC1=1,VAE_OOD_GPU_LATENT_PAIR=1,VAE_OOD_GPU_TAIL_FC1=1' \
    'all_in_fma:VAE_OOD_GPU_BCE_SPLIT=1,VAE_OOD_GPU_TRIPLE_ADAM=1,VAE_OOD_GPU_EARLY_READS=1,VAE_OOD_GPU_LATENT_FC1=1,VAE_OOD_GPU_LATENT_PAIR=1,VAE_OOD_GPU_TAIL_FC1=1' \
    2>&1 | tee "$LOG/sweep.txt"
  snapshot
  # the whole default run with the tensor-core walk and the BCE epilogue, each and
  # both, the latent forward in fc1 and the latent backward in fc4's pair, each
  # alone and with all the rest (on either walk), and without: wall time, training
  # time and AUROCs side by side (the accuracy target: clean AUROC within ±0.02)
  for v in coop:VAE_OOD_GPU_COOP=1 bce:VAE_OOD_GPU_BCE_EPILOGUE=1 \
    coop_bce:VAE_OOD_GPU_COOP=1,VAE_OOD_GPU_BCE_EPILOGUE=1 latent_fc1:VAE_OOD_GPU_LATENT_FC1=1 \
    latent_pair:VAE_OOD_GPU_LATENT_PAIR=1 \
    all_in_fc1:VAE_OOD_GPU_COOP=1,VAE_OOD_GPU_BCE_SPLIT=1,VAE_OOD_GPU_TRIPLE_ADAM=1,VAE_OOD_GPU_EARLY_READS=1,VAE_OOD_GPU_LATENT_FC1=1 \
    all_in_pair:VAE_OOD_GPU_COOP=1,VAE_OOD_GPU_BCE_SPLIT=1,VAE_OOD_GPU_TRIPLE_ADAM=1,VAE_OOD_GPU_EARLY_READS=1,VAE_OOD_GPU_LATENT_FC1=1,VAE_OOD_GPU_LATENT_PAIR=1 \
    all_in_fma:VAE_OOD_GPU_BCE_SPLIT=1,VAE_OOD_GPU_TRIPLE_ADAM=1,VAE_OOD_GPU_EARLY_READS=1,VAE_OOD_GPU_LATENT_FC1=1,VAE_OOD_GPU_LATENT_PAIR=1,VAE_OOD_GPU_TAIL_FC1=1 \
    default:VAE_OOD_GPU_COOP=0; do
    name=${v%%:*}
    echo "## whole default run, ${v#*:}"
    # shellcheck disable=SC2046
    env $(echo "${v#*:}" | tr , ' ') timeout 60 .devbin/vae-ood --device gpu --out "$LOG/run_$name" 2>&1 \
      | grep -v 'XDG_RUNTIME_DIR\|====> Epoch' | tee "$LOG/run_$name.txt"
  done
  # the sweep's medians beside the whole runs' clean AUROCs: the fastest
  # configuration within the accuracy target (bench/decide.py)
  echo "## bench/decide.py: the fastest configuration within the accuracy target"
  python3 bench/decide.py "$LOG" 2>&1 | tee "$LOG/decide.txt"
  snapshot
  # each product alone on the tensor cores (against the default's in matmul_micro.txt
  # when not QUICK)
  VAE_OOD_GPU_COOP=1 timeout 60 .devbin/ex_matmul_micro 200 2>&1 | grep -v XDG_RUNTIME_DIR \
    | tee "$LOG/matmul_micro_coop.txt"
  snapshot
  echo "## examples/gpu_variants.rs (20 rounds of 50 steps), examples/matmul_micro.rs (200 reps)"
  timeout 60 .devbin/ex_gpu_variants 20 50 2>&1 | grep -v XDG_RUNTIME_DIR | tee "$LOG/gpu_variants.txt"
  # a split-K product's reduce by its last workgroup, no dispatch: whether the last
  # one sees the others' partial sums (plain and atomic loads), and what it saves
  # against a reduce dispatch (no waiting between workgroups: safe on any GPU)
  echo "## examples/last_block.rs: reduce dispatch vs last-block reduce"
  timeout 60 .devbin/ex_last_block 1000 2>&1 | grep -v XDG_RUNTIME_DIR | tee "$LOG/last_block.txt"
  if [ -n "${QUICK:-}" ]; then
    snapshot
    exit $status
  fi
  timeout 60 .devbin/ex_matmul_micro 200 2>&1 | grep -v XDG_RUNTIME_DIR | tee "$LOG/matmul_micro.txt"
  # each product with its bias gradient as a column of ones (no row sums in any
  # multiply)
  VAE_OOD_GPU_ONES_COLUMN=1 timeout 60 .devbin/ex_matmul_micro 200 2>&1 | grep -v XDG_RUNTIME_DIR \
    | tee "$LOG/matmul_micro_ones.txt"
  # unsplit products over K, a line fitted per output shape: µs per K step and fixed,
  # for the default and with the column of ones
  echo "## matmul_micro ksweep: default | ones column"
  for v in "" VAE_OOD_GPU_ONES_COLUMN=1; do
    echo "# ${v:-default}" | tee -a "$LOG/matmul_ksweep.txt"
    # (every point to the log, the fitted lines here)
    # shellcheck disable=SC2086
    env $v VAE_OOD_SPLIT_TARGET=1 timeout 60 .devbin/ex_matmul_micro 200 ksweep 2>&1 \
      | grep -v XDG_RUNTIME_DIR | tee -a "$LOG/matmul_ksweep.txt" | grep 'fixed'
  done
  snapshot
  # last: a grid barrier that deadlocked would hold the GPU (2,000 phases; up to
  # 4 workgroups of 256 threads per SM of a 132-SM card)
  echo "## examples/grid_sync.rs: dispatch boundary vs grid barrier"
  timeout 60 .devbin/ex_grid_sync 2000 528 2>&1 | grep -v XDG_RUNTIME_DIR | tee "$LOG/grid_sync.txt"
fi
snapshot
exit $status
