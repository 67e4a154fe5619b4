"""FineTuneClassifier: training-step overhead, encoder passes, clone cost, memory.

Prints, measured side by side in one run:

1. Seconds per training epoch of ``FineTuneClassifier`` (skorch) against a plain torch
   loop that trains the same network (a copy of the estimator's freshly initialised
   ``module_``) with the same optimizer on the same images, read through the same
   dataset class (target <= 1.10x): epoch pairs, one epoch of each side at a time,
   alternating which goes first; the median of the per-pair ratios. Both sides train
   in float32 (the estimator has no autocast); on CUDA the device is synchronised
   before and after every timed epoch.
2. Encoder passes per image for ``freeze="all"`` + a linear head trained 30 epochs,
   with the feature store (target <= 1.05) and without it (30).
3. Encoder passes per image for a 5-fold GridSearchCV over 3 lrs x 2 heads (linear,
   transformer) on a frozen encoder (target <= 1.05).
   Both orders of the grid (linear head first, transformer head first).
4. ``clone()`` of an estimator holding a ViT-B module (target < 50 ms).
5. Peak RSS of training on N image paths (PNG files written to a temp dir) at two
   sizes (default 200 and 1600), each in a fresh process: bounded by the batch, not the
   dataset. Once training through the encoder every epoch (``freeze="none"``), once
   with a frozen trunk (one pass): there the pooled rows (N x 256 floats) and the
   float16 token maps kept for a later transformer head (64 KiB an image here) grow
   with N, the maps up to the token store's bound (``SKLEARN_ENDO_TOKEN_BYTES``).

Run: ``python benchmarks/bench_finetune.py`` (CPU is fine; ``--device cuda``).
"""

import argparse
import copy
import os
import time

import numpy as np
import timm
import torch
from _device import add_device_argument, check_device, sync
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from sklearn_endo.finetune import FineTuneClassifier
from sklearn_endo.finetune._tokens import clear_token_store


class Passes:
    """Images run through the first block of a module and of every copy of it (the
    trunks of FineTuneClassifier are deep copies; a plain function hook is shared by the
    copies). Single-image calls, the shape probes of each fit, are not counted."""

    def __init__(self, module, first_block="blocks.0"):
        self.block = module.get_submodule(first_block)
        self.images = 0

    def __enter__(self):
        def hook(module, args, output):
            if args[0].shape[0] > 1:
                self.images += int(args[0].shape[0])

        self._hook = self.block.register_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self._hook.remove()


def plain_epoch(net, opt, loader, device):
    """One epoch of a plain torch training loop; returns its seconds."""
    loss_fn = torch.nn.CrossEntropyLoss()
    sync(device)  # nothing queued before the clock starts
    start = time.perf_counter()
    net.train()
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        opt.zero_grad()
        loss = loss_fn(net(xb), yb)
        loss.backward()
        opt.step()
    sync(device)
    return time.perf_counter() - start


def bench_step(X, y, device, epochs, repeats=6):
    """Epoch pairs, one epoch of each side at a time, alternating which goes first, so
    that a change of machine load (other jobs) hits both sides of a pair alike."""
    kw = dict(layer=6, freeze="none", lr=1e-4, batch_size=16, device=str(device),
              random_state=0, img_size=64, pretrained=False, max_epochs=1, verbose=0)
    clf = FineTuneClassifier("resnet18", **kw)
    clf.classes_ = np.unique(y)
    clf.initialize()
    net = copy.deepcopy(clf.module_)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    from sklearn_endo._images import check_images
    from sklearn_endo.finetune._classifier import ImageDataset

    # the plain loop reads the same images through the same dataset (decoding included)
    ds = ImageDataset(check_images(X), (64, 64), "bicubic", np.searchsorted(clf.classes_, y))
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True)
    clf.fit(X, y)  # a first epoch of each, not timed (allocator, caches)
    plain_epoch(net, opt, loader, device)
    pairs = []
    for rep in range(repeats * epochs):
        order = ("plain", "skorch") if rep % 2 == 0 else ("skorch", "plain")
        took = {}
        for which in order:
            if which == "plain":
                took["plain"] = plain_epoch(net, opt, loader, device)
            else:
                took["skorch"] = clf.partial_fit(X, y).history[-1, "dur"]
        pairs.append((took["skorch"], took["plain"]))
    skorch_s, plain_s = np.array(pairs).T
    ratios = skorch_s / plain_s
    q1, q3 = np.percentile(ratios, [25, 75])
    print(f"1. training epoch, FineTuneClassifier / plain torch loop, {len(ratios)} "
          f"interleaved epoch pairs: median ratio {np.median(ratios):.3f}x "
          f"(quartiles {q1:.3f} to {q3:.3f}; median epochs {np.median(skorch_s):.3f} s "
          f"vs {np.median(plain_s):.3f} s; target <= 1.10x)")


def bench_passes(X, y, device):
    from sklearn_endo import clear_feature_store

    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0,
                            img_size=64).eval()
    for store in ("memory", None):
        clear_feature_store()
        clear_token_store()
        with Passes(vit) as count:
            FineTuneClassifier(vit, freeze="all", layer=8, max_epochs=30, batch_size=16,
                               feature_store=store, device=str(device),
                               random_state=0, verbose=0).fit(X, y)
        print(f"2. freeze='all', linear head, 30 epochs, feature_store={store!r}: "
              f"{count.images / len(X):.2f} encoder passes per image")
    for heads in (["linear", "transformer"], ["transformer", "linear"]):
        clear_feature_store()
        clear_token_store()
        start = time.perf_counter()
        with Passes(vit) as count:
            GridSearchCV(FineTuneClassifier(vit, freeze="all", layer=8, max_epochs=5,
                                            batch_size=16, head_width=64, head_heads=2,
                                            device=str(device), random_state=0,
                                            verbose=0),
                         {"head": heads, "lr": [1e-4, 1e-3, 1e-2]}, cv=5).fit(X, y)
        print(f"3. GridSearchCV 5 folds x 3 lrs x 2 heads (31 fits, {heads[0]} first) on "
              f"a frozen ViT-S: {count.images / len(X):.2f} encoder passes per image "
              f"({time.perf_counter() - start:.1f} s)")


def bench_clone():
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    est = FineTuneClassifier(vit, freeze="all")
    times = []
    for _ in range(5):
        start = time.perf_counter()
        twin = clone(est)
        times.append(time.perf_counter() - start)
    assert twin.encoder is vit
    print(f"4. clone(FineTuneClassifier(ViT-B module)): {min(times) * 1e3:.2f} ms "
          f"(target < 50 ms)")


def _rss_child(n, size, mode):
    """One training run on ``n`` image paths, in this (child) process; prints peak RSS."""
    import resource
    import tempfile

    from PIL import Image

    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(n):
            img = rng.integers(0, 160, (size, size, 3), dtype=np.uint8) + 60 * y[i]
            paths.append(os.path.join(tmp, f"{i:05d}.png"))
            Image.fromarray(img.astype(np.uint8)).save(paths[-1], compress_level=1)
        del img
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kw = dict(freeze="none", layer=4) if mode == "train" else dict(freeze="all", layer=4)
        start = time.perf_counter()
        clf = FineTuneClassifier("resnet18", pretrained=False, img_size=size, max_epochs=1,
                                 batch_size=32, random_state=0, device="cpu", verbose=0,
                                 **kw)
        clf.fit(paths, y)
        took = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    from sklearn_endo.finetune._tokens import TOKENS

    print(f"RSS {n} {base / 1024:.1f} {peak / 1024:.1f} {workers / 1024:.1f} {took:.1f} "
          f"{TOKENS.nbytes / 2**20:.1f} {clf.stored_features_}")


def bench_memory(sizes, size=128):
    """Peak RSS of training on image paths, in a fresh process per dataset size."""
    import subprocess
    import sys

    for mode, what in (("train", "freeze='none' (decoded batch by batch each epoch)"),
                       ("stored", "freeze='all' (one pass, pooled rows stored)")):
        rows = {}
        for n in sizes:
            out = subprocess.run(
                [sys.executable, __file__, "--rss-child", str(n), "--rss-size", str(size),
                 "--rss-mode", mode], capture_output=True, text=True, check=True).stdout
            line = [ln for ln in out.splitlines() if ln.startswith("RSS ")][-1].split()
            rows[n] = [float(v) for v in line[2:7]]
        dataset = {n: n * size * size * 3 * 4 / 2**20 for n in sizes}
        print(f"5. training 1 epoch on image paths ({size} px PNG, batch 32, resnet18 cut "
              f"at block 4), {what}:")
        for n in sizes:
            before, peak, workers, took, maps = rows[n]
            print(f"   {n:5d} images: peak RSS {peak:.0f} MiB (before fit "
                  f"{before:.0f} MiB; largest DataLoader worker {workers:.0f} MiB); "
                  f"the images as float32 would be {dataset[n]:.0f} MiB; token-map store "
                  f"{maps:.0f} MiB; {took:.1f} s")
        a, b = sizes[0], sizes[-1]
        print(f"   peak growth {a} -> {b} images: {rows[b][1] - rows[a][1]:+.0f} MiB "
              f"(the dataset as float32 grows by {dataset[b] - dataset[a]:.0f} MiB)")


def main():
    parser = argparse.ArgumentParser()
    add_device_argument(parser)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=6, help="pairs of part 1")
    parser.add_argument("--parts", default="12345", help="which measurements, e.g. 14")
    parser.add_argument("--rss-sizes", default="200,1600",
                        help="dataset sizes of part 5 (image paths)")
    parser.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rss-size", type=int, default=128, help=argparse.SUPPRESS)
    parser.add_argument("--rss-mode", default="train", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        _rss_child(args.rss_child, args.rss_size, args.rss_mode)
        return
    device = check_device(parser, args.device)
    rng = np.random.default_rng(0)
    y = np.arange(args.n) % 2
    X = rng.integers(0, 160, (args.n, 64, 64, 3)).astype(np.uint8)
    X[y == 1] += 60
    if "1" in args.parts:
        bench_step(X, y, device, args.epochs, args.repeats)
    if "2" in args.parts or "3" in args.parts:
        bench_passes(X, y, device)
    if "4" in args.parts:
        bench_clone()
    if "5" in args.parts:
        bench_memory([int(v) for v in args.rss_sizes.split(",")])


if __name__ == "__main__":
    main()
