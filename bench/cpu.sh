#!/usr/bin/env bash
# Side-by-side speed on this machine's CPU: the vae-ood CPU backend, the PyTorch
# baseline (eager and fused Adam) and vae-ood with parts switched off (ablations),
# back to back in each of ROUNDS rounds; then one table per round and one over the
# rounds (median samples/s and the median of the rounds' ratios: on a shared
# machine whose speed drifts, a round's ratio is fairer than one run's).
#   bench/cpu.sh [path/to/vae-ood]     ROUNDS=3 EPOCHS=3 WARMUP=1 OUTDIR=bench/out
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/vae-ood}
ROUNDS=${ROUNDS:-3}
EPOCHS=${EPOCHS:-3}
WARMUP=${WARMUP:-1}
OUTDIR=${OUTDIR:-bench/out}
PY=${PYTHON:-python3}
echo "# $(date -u +%Y-%m-%dT%H:%MZ)  $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)  $(nproc) cores, $ROUNDS rounds"
DIRS=()
for r in $(seq "$ROUNDS"); do
  D="$OUTDIR/round$r"
  mkdir -p "$D"
  DIRS+=("$D")
  "$BIN" bench --device cpu --epochs "$EPOCHS" --warmup "$WARMUP" --json | tail -n 1 > "$D/vae_cpu.json"
  for v in eager fused; do
    $PY bench/torch_baseline.py --device cpu --variant "$v" --epochs "$EPOCHS" --warmup "$WARMUP" --json \
      | tail -n 1 > "$D/torch_cpu_$v.json"
  done
  # ablations: without the sparse first layer, without the fusions, without both
  ABL=()
  for env in VAE_OOD_CPU_DENSE VAE_OOD_CPU_UNFUSED "VAE_OOD_CPU_DENSE VAE_OOD_CPU_UNFUSED"; do
    name=$(echo "$env" | tr ' ' '+')
    env $(for e in $env; do echo "$e=1"; done) "$BIN" bench --device cpu --epochs "$EPOCHS" --warmup "$WARMUP" \
      --breakdown off --json | tail -n 1 > "$D/vae_cpu_$name.json"
    ABL+=("$D/vae_cpu_$name.json")
  done
  echo "## round $r"
  $PY bench/table.py "$D/vae_cpu.json" "$D"/torch_cpu_*.json "${ABL[@]}" | tee "$D/table_cpu.md"
done
echo "## over $ROUNDS rounds"
$PY bench/rounds.py "${DIRS[@]}" | tee "$OUTDIR/table_cpu.md"
