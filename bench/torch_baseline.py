#!/usr/bin/env python3
"""PyTorch side-by-side baseline for the vae-ood training step (speed and accuracy).

The reference experiment is PyTorch examples' MNIST VAE: 784-400-20 encoder
(mu, logvar), 20-400-784 decoder with sigmoid output, loss = BCE summed over
pixels + analytic KL (summed over the batch), Adam(lr=1e-3, betas=(0.9, 0.999),
eps=1e-8), batch 128, pixels = byte/255 (not binarised), trained on MNIST train
without digit 5 (54,579 images). The anomaly score is -ELBO: the per-sample
loss with one z sample.

Data are read from the repo's data/mnist/*.gz IDX files with gzip + numpy (no
torchvision, no downloads), kept on the device as one uint8 tensor, shuffled
every epoch with a seeded torch.randperm (CPU generator, seed = --seed + epoch
index), gathered and converted to float/255 per batch.

Variants (--variant):
  eager  plain eager step, torch.optim.Adam with its default implementation
         (foreach on CUDA, the single-tensor loop on CPU).
  fused  eager step with Adam(fused=True) where the device supports it, else
         Adam(foreach=True); the JSON line's "optimizer" says which ran.
  graph  CUDA only. The whole step (gather + /255, forward, eps = randn, loss,
         backward, Adam(capturable=True, fused if supported) and the running
         loss sum) is captured once in a CUDA graph on a static index buffer
         of 128 and replayed per full batch. The partial last batch of an epoch
         (54,579 % 128 = 51 images) is NOT dropped: it runs eagerly, writing
         its gradients into the graph's static .grad tensors and stepping the
         same capturable optimizer, so every variant trains on the same
         samples. The warm-up steps needed before capture are undone (params
         and Adam state restored in place), so training starts from the same
         initial weights as the other variants.

Timing: --warmup epochs run first and are not timed; then --epochs epochs are
timed (wall clock, with torch.cuda.synchronize() on CUDA). The loss is summed
on the device and read once per epoch, so no step syncs with the host.
"final_avg_loss" is the summed training loss of the last epoch divided by its
number of samples (what the PyTorch example prints as "Average loss").

--full trains 20 epochs with seed 1 on the whole non-5 training set (no
warm-up), then scores MNIST test: normals = test non-5s (9,108), anomalies =
test 5s (892), score = per-sample loss with one z sample; it reports the
AUROC (sklearn's roc_auc_score if installed, else a Mann-Whitney U with
average ranks for ties) and the elapsed time.

Examples:
  python3 bench/torch_baseline.py --device cpu --variant eager --epochs 1 --warmup 0 --train-limit 2048
  python3 bench/torch_baseline.py --device cuda --variant graph --json
  python3 bench/torch_baseline.py --device cpu --full --json
"""

import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.normpath(os.path.join(HERE, os.pardir, "data", "mnist"))
BATCH = 128
ANOMALY_DIGIT = 5


# ---------------------------------------------------------------- model

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
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar, eps):
        return mu + eps * torch.exp(0.5 * logvar)

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x):
        mu, logvar = self.encode(x)
        eps = torch.randn_like(mu)
        z = self.reparameterize(mu, logvar, eps)
        return self.decode(z), mu, logvar


def loss_per_sample(recon, x, mu, logvar):
    bce = F.binary_cross_entropy(recon, x, reduction="none").sum(1)
    kld = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    return bce + kld


# ---------------------------------------------------------------- data

def read_idx(path):
    with gzip.open(path, "rb") as f:
        buf = f.read()
    magic = int.from_bytes(buf[0:4], "big")
    if magic == 2051:
        n, rows, cols = (int.from_bytes(buf[4 + 4 * i: 8 + 4 * i], "big") for i in range(3))
        return np.frombuffer(buf, dtype=np.uint8, offset=16).reshape(n, rows * cols)
    if magic == 2049:
        n = int.from_bytes(buf[4:8], "big")
        return np.frombuffer(buf, dtype=np.uint8, offset=8, count=n)
    raise ValueError(f"{path}: bad IDX magic {magic}")


def load_split(data_dir, split):
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    assert len(x) == len(y)
    return x, y


# ---------------------------------------------------------------- AUROC

def auroc(scores_normal, scores_anomaly):
    """P(score_anomaly > score_normal) + 0.5 P(tie): anomalies are the positives."""
    try:
        from sklearn.metrics import roc_auc_score
        y = np.concatenate([np.zeros(len(scores_normal)), np.ones(len(scores_anomaly))])
        s = np.concatenate([scores_normal, scores_anomaly])
        return float(roc_auc_score(y, s)), "sklearn"
    except ImportError:
        pass
    s = np.concatenate([scores_normal, scores_anomaly]).astype(np.float64)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties (1-based)
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    n0, n1 = len(scores_normal), len(scores_anomaly)
    u = ranks[n0:].sum() - n1 * (n1 + 1) / 2.0
    return float(u / (n0 * n1)), "mann-whitney"


# ---------------------------------------------------------------- training

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_optimizer(params, variant, device):
    """Returns (optimizer, description)."""
    kw = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    if variant == "eager":
        return torch.optim.Adam(params, **kw), "default"
    capturable = variant == "graph"
    if capturable:
        kw["capturable"] = True
    try:
        opt = torch.optim.Adam(params, fused=True, **kw)
        return opt, "fused" + ("+capturable" if capturable else "")
    except (RuntimeError, TypeError, ValueError):
        opt = torch.optim.Adam(params, foreach=True, **kw)
        return opt, "foreach" + ("+capturable" if capturable else "")


class EagerTrainer:
    def __init__(self, model, opt, data, device):
        self.model, self.opt, self.data, self.device = model, opt, data, device
        self.total = torch.zeros((), device=device, dtype=torch.float32)

    def step(self, idx):
        xb = self.data[idx].float().div_(255.0)
        recon, mu, logvar = self.model(xb)
        loss = loss_per_sample(recon, xb, mu, logvar).sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.total.add_(loss.detach())


class GraphTrainer:
    """Full-batch steps replayed from one CUDA graph; partial batches run eagerly."""

    def __init__(self, model, opt, data, device, warm_steps=3):
        self.model, self.opt, self.data, self.device = model, opt, data, device
        self.params = [p for p in model.parameters()]
        self.total = torch.zeros((), device=device, dtype=torch.float32)
        self.static_idx = torch.zeros(BATCH, dtype=torch.long, device=device)
        n = data.shape[0]
        self.static_idx.copy_(torch.arange(BATCH, device=device) % n)

        saved = [p.detach().clone() for p in self.params]
        rng = torch.cuda.get_rng_state(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warm_steps):
                self.opt.zero_grad(set_to_none=True)
                loss = self._loss(self.static_idx)
                loss.backward()
                self.opt.step()
        torch.cuda.current_stream(device).wait_stream(side)
        # Undo the warm-up: same initial weights, fresh Adam state.
        with torch.no_grad():
            for p, s in zip(self.params, saved):
                p.copy_(s)
            for st in self.opt.state.values():
                for k, v in st.items():
                    if torch.is_tensor(v):
                        v.zero_()
        torch.cuda.set_rng_state(rng, device)
        sync(device)

        self.opt.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            loss = self._loss(self.static_idx)
            loss.backward()
            self.opt.step()
            self.total.add_(loss.detach())
        self.grads = [p.grad for p in self.params]  # static tensors owned by the graph

    def _loss(self, idx):
        xb = self.data[idx].float().div_(255.0)
        recon, mu, logvar = self.model(xb)
        return loss_per_sample(recon, xb, mu, logvar).sum()

    def step(self, idx):
        if idx.numel() == BATCH:
            self.static_idx.copy_(idx, non_blocking=True)
            self.graph.replay()
            return
        # Partial batch: eager step through the same static grads / optimizer.
        loss = self._loss(idx)
        grads = torch.autograd.grad(loss, self.params)
        with torch.no_grad():
            for g_static, g in zip(self.grads, grads):
                g_static.copy_(g)
        self.opt.step()
        self.total.add_(loss.detach())


def run_epoch(trainer, n, gen, device):
    perm = torch.randperm(n, generator=gen).to(device, non_blocking=True)
    for start in range(0, n, BATCH):
        trainer.step(perm[start:start + BATCH])


def main():
    ap = argparse.ArgumentParser(description="PyTorch baseline for the vae-ood MNIST VAE")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--variant", choices=["eager", "fused", "graph"], default="eager")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed epochs run first (default 1)")
    ap.add_argument("--train-limit", type=int, default=0, help="use only the first N non-5 training images")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--data", default=DEFAULT_DATA, help="folder with the MNIST *.gz IDX files")
    ap.add_argument("--full", action="store_true",
                    help="20 epochs, seed 1, whole training set, no warm-up; then test AUROC")
    ap.add_argument("--json", action="store_true", help="also print one JSON line")
    args = ap.parse_args()

    if args.full:
        args.epochs, args.warmup, args.seed, args.train_limit = 20, 0, 1, 0
    if args.variant == "graph" and args.device != "cuda":
        ap.error("--variant graph needs --device cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("CUDA is not available")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()

    t_load = time.perf_counter()
    x_train, y_train = load_split(args.data, "train")
    x_train = x_train[y_train != ANOMALY_DIGIT]
    if args.train_limit > 0:
        x_train = x_train[:args.train_limit]
    n = len(x_train)
    data = torch.from_numpy(np.array(x_train, dtype=np.uint8, order="C", copy=True)).to(device)  # uint8 [n, 784]
    t_load = time.perf_counter() - t_load

    torch.manual_seed(args.seed)
    model = VAE().to(device)
    model.train()
    opt, opt_desc = make_optimizer(model.parameters(), args.variant, device)
    if args.variant == "graph":
        trainer = GraphTrainer(model, opt, data, device)
    else:
        trainer = EagerTrainer(model, opt, data, device)
    gen = torch.Generator().manual_seed(args.seed)

    steps_per_epoch = (n + BATCH - 1) // BATCH
    t_all = time.perf_counter()
    for _ in range(args.warmup):
        run_epoch(trainer, n, gen, device)
    sync(device)

    epoch_losses = []
    t0 = time.perf_counter()
    for e in range(args.epochs):
        trainer.total.zero_()
        run_epoch(trainer, n, gen, device)
        epoch_losses.append(float(trainer.total.item()) / n)  # one sync per epoch
        if args.full:
            print(f"epoch {e + 1:2d}  average loss {epoch_losses[-1]:.4f}  "
                  f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
    sync(device)
    seconds = time.perf_counter() - t0

    samples = n * args.epochs
    steps = steps_per_epoch * args.epochs
    result = {
        "impl": "pytorch",
        "variant": args.variant,
        "optimizer": opt_desc,
        "device": args.device,
        "device_name": device_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "epochs": args.epochs,
        "warmup": args.warmup,
        "train_images": n,
        "samples": samples,
        "seconds": seconds,
        "samples_per_s": samples / seconds if seconds > 0 else None,
        "us_per_step": seconds / steps * 1e6 if steps > 0 else None,
        "final_avg_loss": epoch_losses[-1] if epoch_losses else None,
        "seed": args.seed,
    }

    if args.full:
        x_test, y_test = load_split(args.data, "test")
        scores = score(model, x_test, device)
        auc, how = auroc(scores[y_test != ANOMALY_DIGIT], scores[y_test == ANOMALY_DIGIT])
        result.update({
            "auroc": auc,
            "auroc_method": how,
            "test_normals": int((y_test != ANOMALY_DIGIT).sum()),
            "test_anomalies": int((y_test == ANOMALY_DIGIT).sum()),
            "epoch_avg_losses": epoch_losses,
            "elapsed_s": time.perf_counter() - t_all + t_load,
        })

    line = (f"pytorch {args.variant:5s} ({opt_desc}) on {args.device} [{device_name}], "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}: "
            f"{args.epochs} epochs x {n} images in {seconds:.3f} s = "
            f"{result['samples_per_s']:.0f} samples/s, {result['us_per_step']:.1f} us/step, "
            f"final avg loss {result['final_avg_loss']:.4f}")
    if args.full:
        line += f", AUROC {result['auroc']:.4f} ({how}), elapsed {result['elapsed_s']:.1f} s"
    print(line)
    if args.json:
        print(json.dumps(result, sort_keys=False))


@torch.no_grad()
def score(model, x_u8, device, batch=1000):
    """Per-sample -ELBO with one z sample (the training loss per image)."""
    model.eval()
    out = []
    data = torch.from_numpy(np.array(x_u8, dtype=np.uint8, order="C", copy=True)).to(device)
    for s in range(0, len(data), batch):
        xb = data[s:s + batch].float().div_(255.0)
        recon, mu, logvar = model(xb)
        out.append(loss_per_sample(recon, xb, mu, logvar).double().cpu())
    return torch.cat(out).numpy()


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "cpu"


if __name__ == "__main__":
    main()
