#!/usr/bin/env bash
# Settle which switches make the GPU default: every configuration named on the
# command line trained ROUNDS times, the rounds interleaved (round r runs every
# configuration once, in an order rotated by r, so clock drift and a warming card
# fall on all of them alike), then one table of the median, fastest and slowest
# µs per step of each and its median against the first configuration's. One
# `bench/gpu.sh` call times each variant once, and single runs of 0.1 s differ by
# ±5 % on an H100: a default is only changed on a difference the medians show.
#
#   bench/gpu-sweep.sh BIN 'name:' 'name:VAR=value,VAR=value' ...
#   ROUNDS=5 EPOCHS=10 WARMUP=1 OUTDIR=bench/out/sweep TORCH=1 bench/gpu-sweep.sh ...
# (`name:` alone is the binary's default; TORCH=1 adds the PyTorch CUDA-graph
# baseline as a row, timed in the same rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$1; shift
[ $# -gt 0 ] || { echo "usage: bench/gpu-sweep.sh BIN 'name:VAR=value,...' ..." >&2; exit 2; }
ROUNDS=${ROUNDS:-5}
EPOCHS=${EPOCHS:-10}
WARMUP=${WARMUP:-1}
OUTDIR=${OUTDIR:-bench/out/sweep}
PY=${PYTHON:-python3}
mkdir -p "$OUTDIR"
rm -f "$OUTDIR"/*.jsonl
# shellcheck source=bench/vulkan-env.sh
source bench/vulkan-env.sh

configs=("$@")
[ -n "${TORCH:-}" ] && configs+=("torch_graph:")
n=${#configs[@]}
for ((r = 0; r < ROUNDS; r++)); do
  for ((i = 0; i < n; i++)); do
    c=${configs[$(( (i + r) % n ))]}
    name=${c%%:*}
    vars=${c#*:}
    if [ "$name" = torch_graph ]; then
      $PY bench/torch_baseline.py --device cuda --variant graph --epochs "$EPOCHS" --warmup "$WARMUP" \
        --json 2>/dev/null | tail -n 1 >> "$OUTDIR/$name.jsonl" || true
    else
      # shellcheck disable=SC2086
      env ${vars//,/ } "$BIN" bench --device gpu --epochs "$EPOCHS" --warmup "$WARMUP" \
        --breakdown off --json | tail -n 1 >> "$OUTDIR/$name.jsonl" || true
    fi
  done
done
$PY - "$OUTDIR" "${configs[@]}" <<'PYEOF'
import os, statistics, sys
sys.path.insert(0, "bench")
from table import steps_us
out, configs = sys.argv[1], sys.argv[2:]
rows = []
for c in configs:
    name, _, env = c.partition(":")
    us = steps_us(os.path.join(out, name + ".jsonl"))
    rows.append((name, env.replace(",", " ") or "(default)", us))
base = statistics.median(rows[0][2]) if rows[0][2] else None
print("| configuration | switches | runs | median µs/step | fastest | slowest | median vs first |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
for name, env, us in rows:
    if not us:
        print(f"| {name} | {env} | 0 | – | – | – | |")
        continue
    m = statistics.median(us)
    ratio = f"{m / base:.3f}" if base else ""
    print(f"| {name} | {env} | {len(us)} | {m:.1f} | {min(us):.1f} | {max(us):.1f} | {ratio} |")
PYEOF
