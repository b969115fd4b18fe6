#!/usr/bin/env python3
"""Print one Markdown table from `vae-ood bench --json` and torch_baseline.py --json lines.

usage: bench/table.py VAE_JSON OTHER_JSON...   (the first file is the vae-ood run)
Ratios are vae-ood samples/s over each other row's, measured in the same call. Other
rows are PyTorch runs, or vae-ood runs with a part switched off (ablations).
"""
import json
import sys


def load(p):
    try:
        with open(p) as f:
            lines = [l for l in f.read().splitlines() if l.strip().startswith("{")]
        return json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError):
        return {}


def steps_us(p):
    """Every run's µs per step in a .jsonl file of `vae-ood bench --json` or
    torch_baseline.py --json lines (bench/gpu-sweep.sh); [] when it is missing."""
    us = []
    try:
        with open(p) as f:
            for line in f:
                try:
                    v = json.loads(line).get("us_per_step")
                except ValueError:
                    v = None
                if v:
                    us.append(v)
    except OSError:
        pass
    return us


def main(argv):
    vae = load(argv[1])
    def backend(t):
        d = t.get("dispatches_per_step")
        return t.get("backend", "?") + (f"; {d} dispatches/step" if d else "")

    rows = [("vae-ood " + vae.get("device", "?"), backend(vae), vae.get("samples_per_s"), vae.get("us_per_step"))]
    for p in argv[2:]:
        t = load(p)
        if not t:
            rows.append((p, "failed", None, None))
            continue
        if t.get("impl") == "pytorch":
            rows.append((f"pytorch {t.get('variant')}", f"{t.get('device_name')} torch {t.get('torch')}", t.get("samples_per_s"), t.get("us_per_step")))
        else:
            # another vae-ood run (an ablation: its backend line says what was switched off)
            rows.append((f"vae-ood {t.get('device', '?')}", backend(t), t.get("samples_per_s"), t.get("us_per_step")))
    ours = vae.get("samples_per_s")
    print("| implementation | device | samples/s | µs/step | vae-ood speed-up |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, dev, sps, us in rows:
        ratio = f"{ours / sps:.2f}×" if ours and sps else ""
        print(f"| {name} | {dev} | {sps:,.0f} | {us:,.1f} | {ratio} |" if sps else f"| {name} | {dev} | – | – | |")
    # which vae-ood run was fastest (the default or one of the variants): what to
    # make the default next
    ours_rows = [(name, dev, sps) for name, dev, sps, _ in rows if name.startswith("vae-ood") and sps]
    if len(ours_rows) > 1:
        name, dev, sps = max(ours_rows, key=lambda r: r[2])
        print()
        print(f"fastest vae-ood run: {dev} — {sps / ours:.2f}× the default" if ours else f"fastest vae-ood run: {dev}")
    if vae.get("breakdown_us_per_step"):
        print()
        how = vae.get("breakdown_method") or "each_op_alone"
        print(f"vae-ood per-kernel breakdown (µs per step, {how}):", ", ".join(f"{n} {u:.1f}" for n, u in vae["breakdown_us_per_step"]))
    print()
    print(f"scoring: {vae.get('score_images_per_s', 0):,.0f} images/s (−ELBO, 1 draw); "
          f"{vae.get('iwae_images_per_s', 0):,.0f} images/s (IWAE, K = {vae.get('iwae_k', '?')})")


if __name__ == "__main__":
    main(sys.argv)
