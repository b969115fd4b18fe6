#!/usr/bin/env python3
"""PyTorch float64 reference for the VAE's forward pass, loss, gradients and Adam.

What
----
Builds a *tiny* copy of the seed experiment's VAE (PyTorch examples' MNIST VAE:
fc1 -> relu -> (fc21 = mu, fc22 = logvar); z = mu + eps * exp(0.5 * logvar);
fc3 -> relu -> fc4 -> sigmoid) with d=13, h=7, l=3, a batch of b=5 inputs and a
fixed eps, all in float64, and records:

* the initial parameters (PyTorch's default nn.Linear init after
  ``torch.manual_seed(0)``), the inputs ``x`` and the noise ``eps``;
* the forward values ``mu``, ``logvar``, ``z``, ``recon``;
* ``loss_per_sample`` (BCE summed over pixels + analytic KL, i.e. -ELBO with
  one z sample) and ``loss`` (its sum over the batch, the training loss);
* ``grads``: the gradient of the summed loss w.r.t. every parameter;
* three Adam steps (the gradient is recomputed at each step from the current
  parameters with the same x and eps): ``params_after_step[k]`` are the
  parameters after step k+1, ``loss_per_step[k]`` the summed loss before step
  k+1 and ``grads_per_step[k]`` the gradient used by step k+1
  (``grads_per_step[0] == grads``).

Why
---
The crate re-implements this model's training step in WGSL compute shaders.
This file is the ground truth its tests compare against
(``tests/fixtures/torch_step.json``): small enough to read by hand, in float64
so that the only error in a comparison is the shader's own (f32) error.

Conventions to match
--------------------
* Every tensor is stored flat, row-major. ``nn.Linear`` weights have shape
  ``[out_features, in_features]`` (y = x @ W^T + b); ``shapes`` gives each one.
  ``x`` is ``[b, d]``, ``eps``/``mu``/``logvar``/``z`` are ``[b, l]``,
  ``recon`` is ``[b, d]``.
* ``F.binary_cross_entropy`` clamps each log term at -100 (log(0) -> -100).
  ``x`` holds exact 0.0 and 1.0 pixels (the term whose weight is 0 then
  contributes exactly 0) and byte/255 values as in the real data; the recon
  values here are far from 0 and 1, so the clamp is not active.
* Adam is ``torch.optim.Adam`` with the defaults written under ``adam``
  (no weight decay, no amsgrad, bias-corrected):
  m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
  p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps).
* Random order: ``torch.manual_seed(0)``; the model is built (fc1, fc21, fc22,
  fc3, fc4; each weight then bias); then ``x`` and ``eps`` are drawn (see
  ``make_inputs``). Only the recorded numbers matter to a consumer.

Running ``python3 tools/torch_reference.py`` rewrites the fixture; the output
is deterministic (sorted keys, Python's shortest round-trip float repr, one
thread), so re-running it with the same torch version reproduces the file
byte for byte. ``--out PATH`` writes elsewhere, ``--check`` compares with the
committed file instead of writing.
"""

import argparse
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

D, H, L, B = 13, 7, 3, 5
LR, BETA1, BETA2, ADAM_EPS, STEPS = 1e-3, 0.9, 0.999, 1e-8, 3
PARAM_NAMES = [
    "fc1.weight", "fc1.bias",
    "fc21.weight", "fc21.bias",
    "fc22.weight", "fc22.bias",
    "fc3.weight", "fc3.bias",
    "fc4.weight", "fc4.bias",
]

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, os.pardir, "tests", "fixtures", "torch_step.json")


class VAE(nn.Module):
    def __init__(self, d=784, h=400, l=20):
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.fc21 = nn.Linear(h, l)
        self.fc22 = nn.Linear(h, l)
        self.fc3 = nn.Linear(l, h)
        self.fc4 = nn.Linear(h, d)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)  # mu, logvar

    def reparameterize(self, mu, logvar, eps):
        return mu + eps * torch.exp(0.5 * logvar)

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x, eps):
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, eps)
        return self.decode(z), mu, logvar, z


def loss_per_sample(recon, x, mu, logvar):
    """BCE summed over pixels + analytic KL, per image (= -ELBO, one z sample)."""
    bce = F.binary_cross_entropy(recon, x, reduction="none").sum(1)
    kld = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    return bce + kld


def make_inputs():
    """x: [B, D] byte/255 values with some exact 0.0 and 1.0; eps: [B, L] N(0,1)."""
    x = torch.randint(0, 256, (B, D)).to(torch.float64) / 255.0
    # Exact zeros and ones, as MNIST has plenty of both.
    x[0, 0:3] = 0.0
    x[1, 5] = 0.0
    x[2, 12] = 0.0
    x[3, 0] = 1.0
    x[3, 7:9] = 1.0
    x[2, 3] = 1.0
    # Row 4 wakes hidden unit 5, dead for the other rows (unit 6 stays dead for
    # every input in [0,1]^13: its fc1 row/bias and fc21/fc22 columns get exactly 0 grad).
    x[4, [0, 1, 3, 9, 10, 11, 12]] = 0.0
    x[4, [2, 4, 5, 8]] = 1.0
    x[:, 6] = 0.0  # a whole input column of zeros -> fc1.weight[:, 6] grad is exactly 0
    eps = torch.randn(B, L)
    return x, eps


def flat(t):
    return [float(v) for v in t.detach().reshape(-1).tolist()]


def params_dict(model):
    named = dict(model.named_parameters())
    return {n: flat(named[n]) for n in PARAM_NAMES}


def grads_dict(model):
    named = dict(model.named_parameters())
    return {n: flat(named[n].grad) for n in PARAM_NAMES}


def build():
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)

    model = VAE(D, H, L)
    x, eps = make_inputs()
    named = dict(model.named_parameters())

    out = {
        "torch_version": torch.__version__,
        "dims": {"d": D, "h": H, "l": L, "b": B},
        "adam": {"lr": LR, "beta1": BETA1, "beta2": BETA2, "eps": ADAM_EPS, "steps": STEPS},
        "params": params_dict(model),
        "shapes": {n: list(named[n].shape) for n in PARAM_NAMES},
        "x": flat(x),
        "eps": flat(eps),
    }

    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=(BETA1, BETA2), eps=ADAM_EPS)
    params_after, losses, grads_per_step = [], [], []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        recon, mu, logvar, z = model(x, eps)
        lps = loss_per_sample(recon, x, mu, logvar)
        loss = lps.sum()
        loss.backward()
        if step == 0:
            out.update({
                "mu": flat(mu), "logvar": flat(logvar), "z": flat(z), "recon": flat(recon),
                "loss_per_sample": flat(lps), "loss": float(loss.item()),
                "grads": grads_dict(model),
            })
        losses.append(float(loss.item()))
        grads_per_step.append(grads_dict(model))
        opt.step()
        params_after.append(params_dict(model))

    out["params_after_step"] = params_after
    out["loss_per_step"] = losses
    out["grads_per_step"] = grads_per_step
    return out


def dumps(obj):
    """Sorted keys; one top-level key per line; compact values; float repr."""
    lines = []
    keys = sorted(obj)
    for i, k in enumerate(keys):
        v = json.dumps(obj[k], sort_keys=True, separators=(", ", ": "), allow_nan=False)
        lines.append(" " + json.dumps(k) + ": " + v + ("," if i + 1 < len(keys) else ""))
    return "{\n" + "\n".join(lines) + "\n}\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="output path (default: tests/fixtures/torch_step.json)")
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = ap.parse_args()

    text = dumps(build())
    path = os.path.normpath(args.out)
    if args.check:
        with open(path, "r", encoding="utf-8") as f:
            old = f.read()
        if old != text:
            print(f"{path}: differs from a fresh run", file=sys.stderr)
            return 1
        print(f"{path}: up to date")
        return 0
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    print(f"wrote {path} ({len(text)} bytes, torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
