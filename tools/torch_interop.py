#!/usr/bin/env python3
"""Load a vae-ood checkpoint into the seed's PyTorch VAE and score MNIST with it.

What
----
* ``model.safetensors`` (written by ``vae-ood`` training) is loaded with
  ``safetensors.torch.load_file`` into the seed experiment's module (PyTorch
  examples' MNIST VAE: fc1 784->400, fc21/fc22 400->20, fc3 20->400,
  fc4 400->784, ReLU, sigmoid) with ``load_state_dict(strict=True)``: the
  tensor names and shapes are PyTorch's own, nothing is renamed or transposed.
  The layer sizes are read from the tensors, so ``--hidden``/``--latent``
  models load too.
* The MNIST test set is read from ``DATA/t10k-{images-idx3,labels-idx1}-ubyte.gz``
  (gzip + numpy; plain files without ``.gz`` also work).
* Each test image is scored *deterministically* with z = mu:
  ``score = BCE(decode(mu), x) + KL(q(z|x) || N(0, I))`` summed over pixels
  (``F.binary_cross_entropy(..., reduction="sum")``, as the seed's loss), in
  float64. Higher = more anomalous.
* The AUROC of the clean protocol is printed: test images of the other digits
  (normal) vs test images of the held-out digit (anomalies). The digit and the
  seed default to the ``vae_ood.config`` stored in the checkpoint's metadata.

``--compare output/scores.csv``
-------------------------------
vae-ood's scores use one *sampled* z = mu + eps * sigma per image (its eps is a
counter-based hash of (seed, stream, row, latent index)), not z = mu, so the
mu-scores are *not* expected to equal them. With ``--compare`` this prints:

1. the AUROC of vae-ood's own scores (from the CSV) next to the mu-scores'
   AUROC, and the Pearson / Spearman correlation of the two scores over the
   test images;
2. an exact cross-check: vae-ood's eps is recomputed here in numpy (the same
   ``pcg4d`` hash + Box-Muller as ``src/rng.rs``), the sampled-z -ELBO is
   computed in PyTorch, and the largest difference to the CSV is printed. It
   should be small (f32 arithmetic in vae-ood vs float64 here: ~1e-3 nats on
   scores of ~100-300 nats). ``--tolerance`` turns that into an exit code.

Usage
-----
    python3 tools/torch_interop.py output/model.safetensors
    python3 tools/torch_interop.py output/model.safetensors --compare output/scores.csv
    python3 tools/torch_interop.py CKPT --data data/mnist --holdout-digit 5

Requires torch, numpy and safetensors (``pip install safetensors``).
"""

import argparse
import gzip
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

SPLIT_STREAM = {"train": 0xF0000000, "test_normal": 0xF0000001, "test_anomaly": 0xF0000002}


class VAE(nn.Module):
    """The seed's model (PyTorch examples, vae/main.py)."""

    def __init__(self, d=784, h=400, l=20):
        super().__init__()
        self.d = d
        self.fc1 = nn.Linear(d, h)
        self.fc21 = nn.Linear(h, l)
        self.fc22 = nn.Linear(h, l)
        self.fc3 = nn.Linear(l, h)
        self.fc4 = nn.Linear(h, d)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))


def read_idx(path):
    """An IDX file (gzipped or plain) as a numpy array of its shape."""
    if not os.path.exists(path) and path.endswith(".gz") and os.path.exists(path[:-3]):
        path = path[:-3]
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise SystemExit(f"error: {path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise SystemExit(f"error: {path}: {data.size} bytes of data for shape {shape}")
    return data.reshape(shape)


def load_checkpoint(path):
    """(model in float64, metadata dict, stored config or None)."""
    state = load_file(path)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    h, d = state["fc1.weight"].shape
    l = state["fc21.weight"].shape[0]
    model = VAE(d, h, l)
    model.load_state_dict(state, strict=True)
    model = model.double().eval()
    cfg = json.loads(meta["vae_ood.config"]) if "vae_ood.config" in meta else None
    return model, meta, cfg


# -- vae-ood's eps: src/rng.rs in numpy (uint32 wrapping arithmetic) ----------

def pcg4d(v):
    v = [x * np.uint32(1664525) + np.uint32(1013904223) for x in v]

    def mix(v):
        v[0] = v[0] + v[1] * v[3]
        v[1] = v[1] + v[2] * v[0]
        v[2] = v[2] + v[0] * v[1]
        v[3] = v[3] + v[1] * v[2]

    mix(v)
    v = [x ^ (x >> np.uint32(16)) for x in v]
    mix(v)
    return v


def vae_ood_eps(seed, stream, rows, latent):
    """eps[row, j] = normal(seed, stream, row, j), as vae-ood draws it (one draw)."""
    r = np.repeat(np.asarray(rows, dtype=np.uint32), latent)
    j = np.tile(np.arange(latent, dtype=np.uint32), len(rows))
    with np.errstate(over="ignore"):
        h = pcg4d([np.full_like(r, np.uint32(seed & 0xFFFFFFFF)), np.full_like(r, np.uint32(stream)), r, j])
    u1 = ((h[0] >> np.uint32(8)) + np.uint32(1)).astype(np.float32) * np.float32(1.0 / 16777216.0)
    u2 = (h[1] >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)
    tau, pi = np.float32(2 * np.pi), np.float32(np.pi)
    e = -np.sqrt(np.float32(-2.0) * np.log(u1)) * np.cos(tau * u2 - pi)
    return e.astype(np.float32).reshape(len(rows), latent)


# -- scores and metrics -------------------------------------------------------

@torch.no_grad()
def neg_elbo(model, x, eps=None, batch=2000):
    """-ELBO per image (float64): z = mu, or z = mu + eps * sigma if eps is given."""
    out = []
    for s in range(0, x.shape[0], batch):
        xb = x[s: s + batch]
        mu, logvar = model.encode(xb)
        z = mu if eps is None else mu + eps[s: s + batch] * torch.exp(0.5 * logvar)
        recon = model.decode(z)
        bce = F.binary_cross_entropy(recon, xb, reduction="none").sum(dim=1)
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
        out.append(bce + kl)
    return torch.cat(out).numpy()


def rankdata(a):
    """Average ranks (1-based), ties averaged, like scipy.stats.rankdata."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    sa = a[order]
    ranks = np.empty(len(a), dtype=np.float64)
    starts = np.r_[0, np.flatnonzero(np.diff(sa)) + 1]
    ends = np.r_[starts[1:], len(a)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = 0.5 * (s + e - 1) + 1
    return ranks


def auroc(normal, anomaly):
    """Mann-Whitney U / (n_normal * n_anomaly), ties 1/2 (= sklearn roc_auc_score)."""
    normal, anomaly = np.asarray(normal), np.asarray(anomaly)
    r = rankdata(np.r_[normal, anomaly])
    u = r[len(normal):].sum() - len(anomaly) * (len(anomaly) + 1) / 2
    return u / (len(normal) * len(anomaly))


def pearson(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a, b):
    return pearson(rankdata(a), rankdata(b))


def read_scores_csv(path):
    """{split: {index: score}} from a vae-ood scores.csv."""
    out = {}
    with open(path) as f:
        header = f.readline().strip().split(",")
        if header != ["split", "index", "label", "score_neg_elbo"]:
            raise SystemExit(f"error: {path}: not a vae-ood scores.csv (header {header})")
        for line in f:
            split, index, _, score = line.strip().split(",")
            out.setdefault(split, {})[int(index)] = float(score)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", nargs="?", default="output/model.safetensors")
    ap.add_argument("--data", default="data/mnist", help="folder with t10k-*-ubyte.gz (default data/mnist)")
    ap.add_argument("--holdout-digit", type=int, default=None,
                    help="anomaly digit (default: the checkpoint's stored config, else 5)")
    ap.add_argument("--seed", type=int, default=None,
                    help="vae-ood seed for the eps cross-check (default: the checkpoint's, else 1)")
    ap.add_argument("--compare", metavar="SCORES_CSV", help="a vae-ood scores.csv to compare with")
    ap.add_argument("--tolerance", type=float, default=None,
                    help="with --compare: exit 1 if a sampled-z score differs from the CSV by more (nats)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    model, meta, cfg = load_checkpoint(a.checkpoint)
    digit = a.holdout_digit if a.holdout_digit is not None else (cfg or {}).get("holdout_digit", 5)
    seed = a.seed if a.seed is not None else (cfg or {}).get("seed", 1)
    if not 0 <= digit <= 9:
        raise SystemExit(f"error: --holdout-digit must be 0..9, got {digit}")
    d, h, l = model.fc1.in_features, model.fc1.out_features, model.fc21.out_features
    print(f"loaded {a.checkpoint} into the PyTorch VAE ({d}-{h}-{l}) with load_state_dict(strict=True); "
          f"config {'from the checkpoint' if cfg else 'not stored'}; digit {digit} held out")

    images = read_idx(os.path.join(a.data, "t10k-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(a.data, "t10k-labels-idx1-ubyte.gz"))
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float64) / 255.0)
    if x.shape[1] != d:
        raise SystemExit(f"error: test images have {x.shape[1]} pixels, the model expects {d}")
    normal_idx = np.flatnonzero(labels != digit)
    anomaly_idx = np.flatnonzero(labels == digit)

    mu_scores = neg_elbo(model, x)
    auc_mu = auroc(mu_scores[normal_idx], mu_scores[anomaly_idx])
    print(f"test images: {len(normal_idx)} normal + {len(anomaly_idx)} anomalies")
    print(f"mean -ELBO (z = mu): normal {mu_scores[normal_idx].mean():.4f}  anomaly {mu_scores[anomaly_idx].mean():.4f}")
    print(f"AUROC clean protocol, PyTorch z = mu scores: {auc_mu:.4f}")

    if not a.compare:
        return 0
    csv = read_scores_csv(a.compare)
    try:
        ours = {s: np.array([csv[s][int(i)] for i in idx])
                for s, idx in (("test_normal", normal_idx), ("test_anomaly", anomaly_idx))}
    except KeyError as e:
        raise SystemExit(f"error: {a.compare}: no score for test image {e}: "
                         f"was it written for holdout digit {digit}?")
    auc_csv = auroc(ours["test_normal"], ours["test_anomaly"])
    both_ours = np.r_[ours["test_normal"], ours["test_anomaly"]]
    both_mu = np.r_[mu_scores[normal_idx], mu_scores[anomaly_idx]]
    print(f"--compare {a.compare}: vae-ood scores use one sampled z = mu + eps*sigma, not z = mu,")
    print("  so they are not expected to equal the mu-scores; compare the AUROCs and the correlation:")
    print(f"  AUROC clean protocol, vae-ood sampled-z scores (CSV): {auc_csv:.4f}   PyTorch z = mu: {auc_mu:.4f}   "
          f"difference {auc_mu - auc_csv:+.4f}")
    print(f"  correlation over the {len(both_ours)} test images: Pearson {pearson(both_ours, both_mu):.4f}  "
          f"Spearman {spearman(both_ours, both_mu):.4f}; mean(sampled - mu) {np.mean(both_ours - both_mu):+.4f} nats")

    # exact cross-check: vae-ood's eps, recomputed here
    worst, worst_rel = 0.0, 0.0
    for s, idx in (("test_normal", normal_idx), ("test_anomaly", anomaly_idx)):
        eps = torch.from_numpy(vae_ood_eps(seed, SPLIT_STREAM[s], np.arange(len(idx)), l).astype(np.float64))
        sampled = neg_elbo(model, x[idx], eps)
        diff = np.abs(sampled - ours[s])
        worst = max(worst, float(diff.max()))
        worst_rel = max(worst_rel, float((diff / np.abs(ours[s])).max()))
    print(f"  exact check with vae-ood's eps (seed {seed}) recomputed in numpy: max |PyTorch - vae-ood| = "
          f"{worst:.3g} nats (relative {worst_rel:.2g})")
    if a.tolerance is not None and not worst <= a.tolerance:
        print(f"error: difference {worst:.3g} exceeds --tolerance {a.tolerance}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
