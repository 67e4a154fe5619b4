"""SelfSupervisedPretrainer: training-epoch time against a plain torch loop, images/s.

Both sides run the same network (the estimator's own module: encoder, heads and
momentum branches), the same loss, the same views (same dataset and augmentation
objects, same batch size, shuffle, drop_last), AdamW, and the same autocast (the
package's choice for the device, ``sklearn_endo._device``: bfloat16 on CUDA from compute
capability 8.0, float16 with a gradient scaler on 7.x, none on the CPU); the plain loop
has no history, progress bar, lr schedule or checkpoints. On CUDA the device is
synchronised before every clock read (the estimator's epoch ends with a ``float()`` of
its loss, which synchronises too). Epochs are interleaved
(estimator, plain, estimator, ...), each side's first epoch untimed, so that load from
other processes hits both alike; the ratio is of medians. The estimator's epoch time is
its ``history_[:, "dur"]``.

Run: ``python benchmarks/bench_ssl.py [--n-images 128] [--repeats 3] [--device cuda]``
"""

import argparse
import os
import statistics
import time

import numpy as np
import timm
import torch
from _device import add_device_argument, check_device, describe, sync

from sklearn_endo._device import autocast_context, autocast_dtype, needs_grad_scaler
from sklearn_endo._images import check_images
from sklearn_endo.datasets import make_lesions
from sklearn_endo.ssl import SelfSupervisedPretrainer
from sklearn_endo.ssl._augment import make_views
from sklearn_endo.ssl._pretrainer import _ViewDataset


def small_vit():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=4,
                                 embed_dim=64, num_heads=2, num_classes=0)


def plain_epoch(module, data, batch_size, optimizer, scaler, mean, std, device, seed):
    """One epoch of what a user writes, under the estimator's autocast (and its gradient
    scaler for float16)."""
    amp = autocast_dtype(device, True)
    sync(device)
    t0 = time.perf_counter()
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True,
                                         drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    module.train()
    for views in loader:
        views = (views.to(device) - mean) / std
        with autocast_context(device, amp):
            loss = module(views, 0.5)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        module.after_step(0.5)
    sync(device)
    return time.perf_counter() - t0


def bench(name, encoder, method, X, args, device):
    est_times, plain_times = [], []
    pre = None
    for r in range(args.repeats):
        # two epochs, the second timed: both sides measured warm
        pre = SelfSupervisedPretrainer(encoder, method=method, img_size=32, max_epochs=2,
                                       batch_size=args.batch_size, random_state=r,
                                       device=device, verbose=False).fit(X)
        est_times.append(pre.history_[-1, "dur"])
        if r == 0:  # the plain loop trains a copy of the same network
            module = pre.module_
            module.encoder.requires_grad_(True)
            optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad],
                                          lr=1e-4)
            cfg = pre.data_config_
            dev = pre.device_
            scaler = torch.amp.GradScaler(
                dev.type, enabled=needs_grad_scaler(autocast_dtype(dev, True)))
            mean = torch.tensor(cfg["mean"], device=dev).view(1, 1, 3, 1, 1)
            std = torch.tensor(cfg["std"], device=dev).view(1, 1, 3, 1, 1)
            views = make_views(None, pre.input_size_, module.n_views, mae=method == "mae")
            data = _ViewDataset(check_images(X), pre.input_size_, cfg["interpolation"], views)
            plain_epoch(module, data, args.batch_size, optimizer, scaler, mean, std, dev, -1)
        plain_times.append(plain_epoch(module, data, args.batch_size, optimizer, scaler,
                                       mean, std, dev, r))
    est, plain = statistics.median(est_times), statistics.median(plain_times)
    n = len(X) // args.batch_size * args.batch_size
    ratios = sorted(e / p for e, p in zip(est_times, plain_times))
    print(f"{name:28s} {method:12s} estimator {est:7.2f} s  plain {plain:7.2f} s  "
          f"ratio {est / plain:5.3f} (per-repeat {ratios[0]:.2f} to {ratios[-1]:.2f})  "
          f"{n / est:7.1f} images/s  ({n} images/epoch, {pre.device_}, load average "
          f"{os.getloadavg()[0]:.1f})", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-images", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    add_device_argument(ap)
    ap.add_argument("--methods", default="barlowtwins,mocov3,mae,dino",
                    help="methods on the small ViT ('' for none)")
    ap.add_argument("--no-resnet", action="store_true", help="skip resnet18 + barlowtwins")
    args = ap.parse_args()
    args.device = str(check_device(ap, args.device))
    X, _ = make_lesions(args.n_images, n_classes=5, image_size=32, random_state=0)
    X = np.asarray(X)
    print(f"torch threads: {torch.get_num_threads()}; {describe(args.device, extraction=False)}"
          f"; autocast {autocast_dtype(args.device, True)} on both sides")
    for method in filter(None, args.methods.split(",")):
        bench("small ViT (4x64, 32 px)", small_vit, method, X, args, args.device)
    if not args.no_resnet:
        bench("resnet18 (32 px)", "resnet18", "barlowtwins", X, args, args.device)


if __name__ == "__main__":
    main()
