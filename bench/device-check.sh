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
#   FOCUS=1: the tests, the device churn probe, a sweep of the default (the
#   tensor cores, K steps of 32, where offered) against the FMA walk, steps of 64,
#   the FMA walk with @coherent partial sums, split-K aiming at 512 workgroups,
#   latent kernels of 1024 threads and the bias gradients as row sums (the last two:
#   the tensor cores' defaults before 2026-11-28), and whole runs of the default and
#   the FMA walk
#   PERSIST=1: the tests, then a sweep of the default against the FMA walk and the
#   persistent step (VAE_OOD_GPU_PERSISTENT: a training step as one dispatch of G
#   workgroups, grid barriers between its seven phases) with `auto` (each
#   pipeline's probe: as many as the card runs at once, up to its largest phase;
#   on an H200 on 2026-11-28 264 on the FMA walk, 132 on the tensor cores, and
#   1.13× and 1.67× the dispatches' time per step), also with two steps per
#   dispatch (VAE_OOD_GPU_PERSISTENT_PHASES=14), and on the tensor cores (their
#   loads across phases made visible in the SPIR-V; and plain,
#   VAE_OOD_GPU_PERSISTENT_PLAIN=1), then whole runs of the default and of the
#   persistent step, the G the probes found, and whether the persistent step's
#   weights and scores are its dispatches' byte for byte on the FMA walk and on
#   the tensor cores, visible and plain (about 4 minutes)
#   QUICK=1: the tests, the sweep, seven whole runs (the FMA walk, the unsplit
#   BCE epilogue, the latent forward in fc1, the latent backward in fc4's pair,
#   all in on the tensor cores and on the FMA walk, the default: the tensor cores),
#   matmul_micro on tensor cores,
#   gpu_variants, last_block, grid_sync and persistent_chain only (no gpu.sh,
#   default matmul_micro or K sweep)
#   PROBE=1: only the kernel experiments on cross-workgroup reads inside a
#   dispatch (last_block, grid_sync, persistent_chain, and persistent_chain again
#   with rows under the Vulkan memory model), with their @coherent columns
#   (about a minute; run on an H200 on 2026-11-27 but for the last): whether
#   coherent loads see other workgroups' stores at plain loads' cost, and whether
#   plain loads do under the memory model the tensor cores' kernels run under
#   (README, "The @coherent lever, measured")
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
# the last block's reduce, the fan-out's waits and the grid barrier: plain, atomic
# and @coherent loads of other workgroups' stores (the grid barriers last: one that
# deadlocked would hold the GPU until its timeout)
probes() {
  echo "## examples/last_block.rs: reduce dispatch vs last-block reduce"
  timeout 60 .devbin/ex_last_block 1000 2>&1 | grep -v XDG_RUNTIME_DIR | tee "$LOG/last_block.txt"
  snapshot
  echo "## examples/grid_sync.rs: dispatch boundary vs grid barrier"
  timeout 60 .devbin/ex_grid_sync 2000 528 2>&1 | grep -v XDG_RUNTIME_DIR | tee "$LOG/grid_sync.txt"
  snapshot
  # the same with products shaped as the step's between the barriers (200
  # repetitions of 8)
  echo "## examples/persistent_chain.rs: a chain of split-K products, dispatches vs one persistent dispatch"
  timeout 60 .devbin/ex_persistent_chain 200 416 2>&1 | grep -v XDG_RUNTIME_DIR | tee "$LOG/persistent_chain.txt"
  snapshot
  # the same on a device with the tensor cores' features, with rows whose entry
  # points naga puts under the Vulkan memory model (where @coherent is not
  # allowed): whether plain loads after naga's barriers see the stores there, which
  # decides whether a persistent step could run on the tensor cores
  echo "## persistent_chain with PERSISTENT_CHAIN_VMM=1: the plain ways under the Vulkan memory model"
  PERSISTENT_CHAIN_VMM=1 timeout 60 .devbin/ex_persistent_chain 200 416 2>&1 | grep -v XDG_RUNTIME_DIR \
    | tee "$LOG/persistent_chain_vmm.txt"
  snapshot
}
if [ -n "${PROBE:-}" ]; then
  probes
  exit 0
fi
# The whole default run once per `name:VAR=value,VAR=value` argument, its output
# (but the epoch lines) in $LOG/run_name.txt and its files in $LOG/run_name/
whole_runs() {
  local v name
  for v in "$@"; do
    name=${v%%:*}
    echo "## whole default run, ${v#*:}"
    # shellcheck disable=SC2046
    env $(echo "${v#*:}" | tr , ' ') timeout 60 .devbin/vae-ood --device gpu --out "$LOG/run_$name" 2>&1 \
      | grep -v 'XDG_RUNTIME_DIR\|====> Epoch' | tee "$LOG/run_$name.txt"
  done
}
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
  # each failed test again in a process of its own: on the H200 (2026-11-27) one
  # binary stopped finding an adapter partway, and every later test failed with
  # "no GPU adapter found", hiding what they would have said
  for name in $(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$LOG/test_$1.txt"); do
    timeout 120 ".devbin/test_$1" --test-threads 1 --exact "$name" >"$LOG/alone.tmp" 2>&1
    rc=$?
    grep -v XDG_RUNTIME_DIR "$LOG/alone.tmp" >>"$LOG/test_$1_alone.txt"
    if [ $rc -eq 0 ]; then echo "   alone: $name ok"; else echo "   alone: $name FAILED (rc $rc)"; fi
  done
done
snapshot
# how many devices one process can open and drop in a row, three ways (the
# adapter that vanished above): fds, threads and memory as they go
timeout 120 .devbin/ex_device_churn "${CHURN_ROUNDS:-100}" 2>&1 | grep -v XDG_RUNTIME_DIR \
  | tee "$LOG/device_churn.txt" | grep -v ' round '
snapshot
# FOCUS=1: after the tests, the default (since 2026-11-27 the tensor cores with K
# steps of 32 where the adapter has them) against the FMA walk (VAE_OOD_GPU_COOP=0,
# the default before), steps of 64, and the FMA walk with @coherent partial sums
# (VAE_OOD_GPU_COHERENT=1: level with the atomics on an H200, 86.1/86.1 µs), and
# the two knobs nearest to even on the FMA walk, re-tried on the tensor cores
# (split-K products aiming for 512 workgroups, 0.99× in one gpu.sh run; latent
# kernels of 512 threads, 0.990–0.993× but another order of sums), with
# PyTorch's CUDA graph in the same rounds; then whole runs of the default and of the
# FMA walk (the accuracy target side by side)
# PERSIST=1: the persistent step (src/gpu/persistent.rs) against the default and
# the FMA walk it runs on. A G above what the card runs at once is an error after
# a few seconds (its barriers' waits give up), not a hang: its row then says so
if [ -z "${SKIP_BENCH:-}" ] && [ -n "${PERSIST:-}" ]; then
  echo "## bench/gpu-sweep.sh: medians of 5 interleaved rounds, 10 epochs each"
  ROUNDS=${SWEEP_ROUNDS:-5} EPOCHS=${SWEEP_EPOCHS:-10} TORCH=1 OUTDIR="$LOG/sweep" bash bench/gpu-sweep.sh .devbin/vae-ood 'default:' \
    'fma:VAE_OOD_GPU_COOP=0' \
    'persistent_auto:VAE_OOD_GPU_PERSISTENT=auto' \
    'persistent_auto_14:VAE_OOD_GPU_PERSISTENT=auto,VAE_OOD_GPU_PERSISTENT_PHASES=14' \
    'persistent_coop_auto:VAE_OOD_GPU_COOP=1,VAE_OOD_GPU_PERSISTENT=auto' \
    'persistent_coop_plain_auto:VAE_OOD_GPU_COOP=1,VAE_OOD_GPU_PERSISTENT=auto,VAE_OOD_GPU_PERSISTENT_PLAIN=1' \
    2>&1 | tee "$LOG/sweep.txt"
  snapshot
  # whole runs, and whether the persistent step gives its dispatches' bits on this
  # card (the same options: latent kernels of 256 threads): on the FMA walk, where
  # the buffers read across its barriers are @coherent; on the tensor cores, where
  # they cannot be (the Vulkan memory model) and the module goes to the driver as
  # SPIR-V with those loads made visible (src/gpu/persistent/spirv.rs): DIFFER
  # there means the driver did not honour them; and on the tensor cores from the
  # WGSL (VAE_OOD_GPU_PERSISTENT_PLAIN=1): DIFFER there means plain loads read
  # stale values after naga's barriers
  whole_runs default: persistent_auto:VAE_OOD_GPU_PERSISTENT=auto \
    fma_256:VAE_OOD_GPU_COOP=0,VAE_OOD_GPU_LATENT_THREADS=256 \
    coop_256:VAE_OOD_GPU_COOP=1,VAE_OOD_GPU_LATENT_THREADS=256 \
    persistent_coop_auto:VAE_OOD_GPU_COOP=1,VAE_OOD_GPU_PERSISTENT=auto \
    persistent_coop_plain:VAE_OOD_GPU_COOP=1,VAE_OOD_GPU_PERSISTENT=auto,VAE_OOD_GPU_PERSISTENT_PLAIN=1
  # (the workgroups auto's probes found, from the runs' metrics.json)
  for name in persistent_auto persistent_coop_auto persistent_coop_plain; do
    echo "## $name: $(grep -ho 'persistent step of [^"]*' "$LOG/run_$name/metrics.json")"
  done
  for pair in fma_256:persistent_auto coop_256:persistent_coop_auto coop_256:persistent_coop_plain; do
    a=$LOG/run_${pair%%:*} b=$LOG/run_${pair#*:}
    # (a run that stopped with an error wrote no files: nothing to compare)
    if [ ! -f "$a/scores.csv" ] || [ ! -f "$b/scores.csv" ]; then
      echo "## ${pair#*:} against ${pair%%:*}: NO RUN (one of them wrote no scores)"
    elif cmp -s "$a/model.safetensors" "$b/model.safetensors" && cmp -s "$a/scores.csv" "$b/scores.csv"; then
      echo "## ${pair#*:} against ${pair%%:*}: SAME BITS (weights and scores)"
    else
      echo "## ${pair#*:} against ${pair%%:*}: DIFFER"
    fi
  done | tee "$LOG/persistent_bits.txt"
  snapshot
  exit $status
fi
if [ -z "${SKIP_BENCH:-}" ] && [ -n "${FOCUS:-}" ]; then
  echo "## bench/gpu-sweep.sh: medians of 5 interleaved rounds, 10 epochs each"
  ROUNDS=${SWEEP_ROUNDS:-5} EPOCHS=${SWEEP_EPOCHS:-10} TORCH=1 OUTDIR="$LOG/sweep" bash bench/gpu-sweep.sh .devbin/vae-ood 'default:' \
    'fma:VAE_OOD_GPU_COOP=0' 'coop_64:VAE_OOD_GPU_COOP_STEP=64' \
    'fma_coherent:VAE_OOD_GPU_COOP=0,VAE_OOD_GPU_COHERENT=1' \
    'split_512:VAE_OOD_SPLIT_TARGET=512' 'latent_1024:VAE_OOD_GPU_LATENT_THREADS=1024' \
    'no_ones:VAE_OOD_GPU_ONES_COLUMN=0' \
    2>&1 | tee "$LOG/sweep.txt"
  snapshot
  whole_runs default: fma:VAE_OOD_GPU_COOP=0
  snapshot
  exit $status
fi
if [ -z "${SKIP_BENCH:-}" ]; then
  if [ -z "${QUICK:-}" ]; then
    OUTDIR="$LOG/bench" bash bench/gpu.sh .devbin/vae-ood 2>&1 | grep -v '^{' | tee "$LOG/bench.txt"
    snapshot
  fi
  # the default against the switches closest to it, 5 interleaved rounds of 10
  # epochs each (one gpu.sh run per variant cannot tell a 3 % difference)
  echo "## bench/gpu-sweep.sh: medians of 5 interleaved rounds, 10 epochs each"
  # (2026-11-26, H100 and H200: ones_column 0.996–1.032, latent_512 0.991–0.993,
  # no_prefetch 1.005, triple_adam 1.043–1.054 × the default. 2026-11-27, H200,
  # all built without a GPU before: the BCE in fc4's split epilogue 0.966–0.968 ×
  # the BCE kernel, made the default; early reads 0.991–0.993, double tiles 1.004,
  # the tensor cores 1.12–1.14, the latent forward in fc1 1.45, the latent backward
  # in fc4's pair 1.37, all of them at 4 dispatches per step 1.88 (FMA walk) and
  # 2.35 (tensor cores): bench/results/h200-2026-11-27.md.) The default against
  # each of them again, for a card or driver where they may rank otherwise
  p=VAE_OOD_GPU_TRIPLE_ADAM=1,VAE_OOD_GPU_EARLY_READS=1,VAE_OOD_GPU_LATENT_FC1=1,VAE_OOD_GPU_LATENT_PAIR=1
  # (since 2026-11-27 evening the default walks K on the tensor cores, K steps of
  # 32: 0.909 × the FMA walk on an H200; `fma` is the default before)
  ROUNDS=${SWEEP_ROUNDS:-5} EPOCHS=${SWEEP_EPOCHS:-10} TORCH=1 OUTDIR="$LOG/sweep" bash bench/gpu-sweep.sh .devbin/vae-ood 'default:' \
    'fma:VAE_OOD_GPU_COOP=0' 'bce_kernel:VAE_OOD_GPU_BCE_EPILOGUE=0' 'bce_unsplit:VAE_OOD_GPU_BCE_SPLIT=0' \
    'coop_64:VAE_OOD_GPU_COOP_STEP=64' 'coop_128:VAE_OOD_GPU_COOP_STEP=128' \
    'coop_split128:VAE_OOD_SPLIT_TARGET=128' \
    'fma_double_tiles:VAE_OOD_GPU_COOP=0,VAE_OOD_GPU_DOUBLE_TILES=1' 'early:VAE_OOD_GPU_EARLY_READS=1' \
    'triple_adam_early:VAE_OOD_GPU_TRIPLE_ADAM=1,VAE_OOD_GPU_EARLY_READS=1' \
    'latent_fc1:VAE_OOD_GPU_LATENT_FC1=1' 'latent_pair:VAE_OOD_GPU_LATENT_PAIR=1' \
    "all_in_pair:$p" "all_in_tail:$p,VAE_OOD_GPU_TAIL_FC1=1" \
    "all_in_fma:VAE_OOD_GPU_COOP=0,$p,VAE_OOD_GPU_TAIL_FC1=1" \
    2>&1 | tee "$LOG/sweep.txt"
  snapshot
  # whole default runs of those whose rounding differs from the default's (the
  # FMA walk, the unsplit BCE epilogue, the latent fusions, all of them) and
  # the default: wall time, training time and AUROCs side by side (the accuracy
  # target: clean AUROC within ±0.02)
  whole_runs fma:VAE_OOD_GPU_COOP=0 bce_unsplit:VAE_OOD_GPU_BCE_SPLIT=0 \
    latent_fc1:VAE_OOD_GPU_LATENT_FC1=1 latent_pair:VAE_OOD_GPU_LATENT_PAIR=1 \
    "all_in_pair:$p" "all_in_fma:VAE_OOD_GPU_COOP=0,$p,VAE_OOD_GPU_TAIL_FC1=1" \
    default:
  # the sweep's medians beside the whole runs' clean AUROCs: the fastest
  # configuration within the accuracy target (bench/decide.py)
  echo "## bench/decide.py: the fastest configuration within the accuracy target"
  python3 bench/decide.py "$LOG" 2>&1 | tee "$LOG/decide.txt"
  snapshot
  # each product alone on the tensor cores (against the FMA walk's in
  # matmul_micro.txt when not QUICK)
  VAE_OOD_GPU_COOP=1 timeout 60 .devbin/ex_matmul_micro 200 2>&1 | grep -v XDG_RUNTIME_DIR \
    | tee "$LOG/matmul_micro_coop.txt"
  snapshot
  echo "## examples/gpu_variants.rs (20 rounds of 50 steps), examples/matmul_micro.rs (200 reps)"
  timeout 60 .devbin/ex_gpu_variants 20 50 2>&1 | grep -v XDG_RUNTIME_DIR | tee "$LOG/gpu_variants.txt"
  if [ -n "${QUICK:-}" ]; then
    # (since 2026-11-27 the grid barriers and persistent_chain too: their @coherent
    # columns)
    probes
    exit $status
  fi
  # (the FMA walk: the program's default walks on tensor cores where offered)
  VAE_OOD_GPU_COOP=0 timeout 60 .devbin/ex_matmul_micro 200 2>&1 | grep -v XDG_RUNTIME_DIR | tee "$LOG/matmul_micro.txt"
  # each product with its bias gradient as a column of ones (no row sums in any
  # multiply)
  VAE_OOD_GPU_COOP=0 VAE_OOD_GPU_ONES_COLUMN=1 timeout 60 .devbin/ex_matmul_micro 200 2>&1 | grep -v XDG_RUNTIME_DIR \
    | tee "$LOG/matmul_micro_ones.txt"
  # unsplit products over K, a line fitted per output shape: µs per K step and fixed,
  # for the default and with the column of ones
  echo "## matmul_micro ksweep (FMA walk): default | ones column"
  for v in "" VAE_OOD_GPU_ONES_COLUMN=1; do
    echo "# ${v:-default}" | tee -a "$LOG/matmul_ksweep.txt"
    # (every point to the log, the fitted lines here)
    # shellcheck disable=SC2086
    env $v VAE_OOD_GPU_COOP=0 VAE_OOD_SPLIT_TARGET=1 timeout 60 .devbin/ex_matmul_micro 200 ksweep 2>&1 \
      | grep -v XDG_RUNTIME_DIR | tee -a "$LOG/matmul_ksweep.txt" | grep 'fixed'
  done
  snapshot
  # last: a grid barrier that deadlocked would hold the GPU (2,000 phases; up to
  # 4 workgroups of 256 threads per SM of a 132-SM card)
  probes
fi
snapshot
exit $status
