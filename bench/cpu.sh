#!/usr/bin/env bash
# Side-by-side speed on this machine's CPU: the vae-ood CPU backend and the PyTorch
# baseline (eager and fused Adam) in one call, then one comparison table.
#   bench/cpu.sh [path/to/vae-ood]     EPOCHS=3 WARMUP=1 OUTDIR=bench/out
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/vae-ood}
EPOCHS=${EPOCHS:-3}
WARMUP=${WARMUP:-1}
OUTDIR=${OUTDIR:-bench/out}
PY=${PYTHON:-python3}
mkdir -p "$OUTDIR"
echo "# $(date -u +%Y-%m-%dT%H:%MZ)  $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)  $(nproc) cores"
"$BIN" bench --device cpu --epochs "$EPOCHS" --warmup "$WARMUP" --json | tee "$OUTDIR/vae_cpu.json"
for v in eager fused; do
  $PY bench/torch_baseline.py --device cpu --variant "$v" --epochs "$EPOCHS" --warmup "$WARMUP" --json \
    | tail -n 1 | tee "$OUTDIR/torch_cpu_$v.json"
done
# ablations, same call: without the sparse first layer, without the fusions, without both
ABL=()
for env in VAE_OOD_CPU_DENSE VAE_OOD_CPU_UNFUSED "VAE_OOD_CPU_DENSE VAE_OOD_CPU_UNFUSED"; do
  name=$(echo "$env" | tr ' ' '+')
  env $(for e in $env; do echo "$e=1"; done) "$BIN" bench --device cpu --epochs "$EPOCHS" --warmup "$WARMUP" \
    --breakdown off --json | tail -n 1 > "$OUTDIR/vae_cpu_$name.json"
  ABL+=("$OUTDIR/vae_cpu_$name.json")
done
$PY bench/table.py "$OUTDIR/vae_cpu.json" "$OUTDIR"/torch_cpu_*.json "${ABL[@]}" | tee "$OUTDIR/table_cpu.md"
