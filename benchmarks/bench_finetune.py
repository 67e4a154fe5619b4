"""FineTuneClassifier: training-step overhead, encoder passes, clone cost.

Prints, measured side by side in one run:

1. Seconds per training epoch of ``FineTuneClassifier`` (skorch) against a plain torch
   loop that trains the same network (a copy of the estimator's freshly initialised
   ``module_``) with the same optimizer on the same images, read through the same
   dataset class (target <= 1.10x).
2. Encoder passes per image for ``freeze="all"`` + a linear head trained 30 epochs,
   with the feature store (target <= 1.05) and without it (30).
3. Encoder passes per image for a 5-fold GridSearchCV over 3 lrs x 2 heads (linear,
   transformer) on a frozen encoder (target <= 1.05).
4. ``clone()`` of an estimator holding a ViT-B module (target < 50 ms).

Run: ``python benchmarks/bench_finetune.py`` (CPU is fine; ``--device cuda``).
"""

import argparse
import copy
import time

import numpy as np
import timm
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from sklearn_endo.finetune import FineTuneClassifier
from sklearn_endo.finetune._network import Trunk
from sklearn_endo.finetune._tokens import clear_token_store


class Passes:
    """Images through a module's forward and through every FineTuneClassifier trunk
    (the 1-image shape probe of each fit is not counted)."""

    def __init__(self, module):
        self.module = module
        self.images = 0

    def __enter__(self):
        # deepcopy shares this function with the copies of the module that fits make:
        # count the module itself only (its copies are counted by Trunk.forward)
        self._hook = self.module.register_forward_pre_hook(
            lambda m, args: self._add(args[0]) if m is self.module else None)
        self._forward = forward = Trunk.forward
        Trunk.forward = lambda trunk, x: self._add(x) or forward(trunk, x)
        return self

    def _add(self, x):
        if x.shape[0] > 1:
            self.images += int(x.shape[0])

    def __exit__(self, *exc):
        self._hook.remove()
        Trunk.forward = self._forward


def plain_loop(net, loader, epochs, lr, device):
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        net.train()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad()
            loss = loss_fn(net(xb), yb)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def bench_step(X, y, device, epochs):
    kw = dict(layer=6, freeze="none", lr=1e-4, batch_size=16, device=device.type,
              random_state=0, img_size=64, pretrained=False, max_epochs=epochs)
    clf = FineTuneClassifier("resnet18", **kw)
    clf.classes_ = np.unique(y)
    clf.initialize()
    net0 = copy.deepcopy(clf.module_)
    from sklearn_endo._images import check_images
    from sklearn_endo.finetune._classifier import ImageDataset

    # the plain loop reads the same images through the same dataset (decoding included)
    ds = ImageDataset(check_images(X), (64, 64), "bicubic", np.searchsorted(clf.classes_, y))
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True)
    ratios = []
    for rep in range(4):  # interleaved, alternating which runs first
        order = ("plain", "skorch") if rep % 2 == 0 else ("skorch", "plain")
        for which in order:
            if which == "plain":
                t_plain = plain_loop(copy.deepcopy(net0), loader, epochs, 1e-4, device)
            else:
                durs = FineTuneClassifier("resnet18", **kw).fit(X, y).history[:, "dur"]
        ratios.append(np.median(durs) / np.median(t_plain))
        print(f"  epoch: skorch {np.median(durs):.3f} s, plain torch "
              f"{np.median(t_plain):.3f} s -> {ratios[-1]:.3f}x ({order[0]} first)")
    print(f"1. training epoch, FineTuneClassifier / plain torch loop: median "
          f"{np.median(ratios):.3f}x (target <= 1.10x)")


def bench_passes(X, y, device):
    from sklearn_endo import clear_feature_store

    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0,
                            img_size=64).eval()
    for store in ("memory", None):
        clear_feature_store()
        clear_token_store()
        with Passes(vit) as count:
            FineTuneClassifier(vit, freeze="all", layer=8, max_epochs=30, batch_size=16,
                               feature_store=store, device=device.type,
                               random_state=0).fit(X, y)
        print(f"2. freeze='all', linear head, 30 epochs, feature_store={store!r}: "
              f"{count.images / len(X):.2f} encoder passes per image")
    clear_feature_store()
    clear_token_store()
    start = time.perf_counter()
    with Passes(vit) as count:
        GridSearchCV(FineTuneClassifier(vit, freeze="all", layer=8, max_epochs=5,
                                        batch_size=16, head_width=64, head_heads=2,
                                        device=device.type, random_state=0),
                     {"lr": [1e-4, 1e-3, 1e-2], "head": ["linear", "transformer"]},
                     cv=5).fit(X, y)
    print(f"3. GridSearchCV 5 folds x 3 lrs x 2 heads (31 fits) on a frozen ViT-S: "
          f"{count.images / len(X):.2f} encoder passes per image "
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--parts", default="1234", help="which measurements, e.g. 14")
    args = parser.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    y = np.arange(args.n) % 2
    X = rng.integers(0, 160, (args.n, 64, 64, 3)).astype(np.uint8)
    X[y == 1] += 60
    if "1" in args.parts:
        bench_step(X, y, device, args.epochs)
    if "2" in args.parts or "3" in args.parts:
        bench_passes(X, y, device)
    if "4" in args.parts:
        bench_clone()


if __name__ == "__main__":
    main()
