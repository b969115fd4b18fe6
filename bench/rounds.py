#!/usr/bin/env python3
"""One Markdown table over several rounds of side-by-side runs on a shared machine.

usage: bench/rounds.py ROUND_DIR...   (each holds vae_cpu.json, torch_*.json, vae_cpu_*.json)

Within a round every implementation ran back to back, so the ratio vae-ood / other is
taken per round and the table gives its median (and range) over the rounds, together
with each implementation's median samples/s. A machine whose speed drifts between
rounds moves both sides of a round's ratio alike.
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from table import load  # noqa: E402  (the same reader of the JSON lines)


def label(t):
    if t.get("impl") == "pytorch":
        return f"pytorch {t.get('variant')} ({t.get('device_name')}, torch {t.get('torch')})"
    return f"vae-ood {t.get('backend', '?')}"


rounds = sys.argv[1:]
rows = {}  # file name -> (label, [samples/s per round], [ratio per round])
for d in rounds:
    ours = load(os.path.join(d, "vae_cpu.json")).get("samples_per_s")
    for name in sorted(os.listdir(d)):
        if not name.endswith(".json"):
            continue
        t = load(os.path.join(d, name))
        sps = t.get("samples_per_s")
        if not sps:
            continue
        lab, s, r = rows.setdefault(name, (label(t), [], []))
        s.append(sps)
        if ours:
            r.append(ours / sps)

order = sorted(rows, key=lambda n: (n != "vae_cpu.json", not n.startswith("torch"), n))
print(f"| implementation | samples/s, median of {len(rounds)} rounds (range) | vae-ood speed-up, median of the rounds' ratios (range) |")
print("| --- | ---: | ---: |")
for n in order:
    lab, s, r = rows[n]
    ratio = f"{statistics.median(r):.2f}× ({min(r):.2f}–{max(r):.2f})" if r else ""
    print(f"| {lab} | {statistics.median(s):,.0f} ({min(s):,.0f}–{max(s):,.0f}) | {ratio} |")
