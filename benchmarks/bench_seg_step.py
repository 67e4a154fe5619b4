"""Segmenter training-step overhead against a plain PyTorch loop, and peak memory.

1. Overhead: the same SegNet (same smp model, same initial weights), the same
   DataLoader batches, Adam and the same loss (BCE + Dice), trained once through
   ``Segmenter.fit`` (skorch) and once by a hand-written loop. Runs alternate (skorch,
   plain, skorch, plain, ...) so that machine noise hits both; the ratio of the median
   epoch times is the overhead. Target: <= 1.10x.
2. Memory: with X (and y) as lists of image and mask paths, the peak RSS of a 1-epoch
   fit + predict in a fresh subprocess for a small and a large number of files. Target:
   the same peak (bounded by the batch, not by the dataset).

    OMP_NUM_THREADS=1 python benchmarks/bench_seg_step.py --n 64 --size 64 --epochs 2
    python benchmarks/bench_seg_step.py --device cuda --n 512 --size 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from _device import add_device_argument, check_device, describe, memory_rows, peak_cuda_memory, sync


def make_data(n, size, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 120, (n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=bool)
    s = size // 4
    for i in range(n):
        r, c = rng.integers(0, size - s, 2)
        X[i, r:r + s, c:c + s] = 230
        masks[i, r:r + s, c:c + s] = True
    return X, masks


def skorch_epochs(params, X, masks, epochs):
    from sklearn_endo.segmentation import Segmenter

    seg = Segmenter(**params, max_epochs=epochs).fit(X, masks)
    return list(seg.history[:, "dur"])


def plain_epochs(params, X, masks, epochs):
    """The same model, batches, optimizer and loss without skorch, on
    ``params["device"]``."""
    from sklearn_endo._images import check_images
    from sklearn_endo.segmentation import SegmentationLoss, SegNet
    from sklearn_endo.segmentation._estimator import SegmentationDataset
    from sklearn_endo.ubc._masks import check_masks

    torch.manual_seed(params["random_state"])
    images = check_images(X)
    size = (params["image_size"],) * 2
    ds = SegmentationDataset(images, size, check_masks(masks, images))
    device = torch.device(params["device"])
    net = SegNet(params["encoder"], 1, architecture=params["architecture"],
                 encoder_depth=params["encoder_depth"]).to(device)
    loader = torch.utils.data.DataLoader(ds, batch_size=params["batch_size"], shuffle=True,
                                         pin_memory=device.type == "cuda")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = SegmentationLoss()
    durs = []
    for _ in range(epochs):
        sync(device)
        start = time.perf_counter()
        net.train()
        for xb, t in loader:
            xb = xb.to(device, non_blocking=True)
            t = {k: v.to(device, non_blocking=True) for k, v in t.items()}
            opt.zero_grad()
            loss = loss_fn(net(xb), t["mask"], t["has_mask"])
            loss.backward()
            opt.step()
            loss.item()  # skorch records every batch loss; so does a typical loop
        sync(device)
        durs.append(time.perf_counter() - start)
    return durs


def overhead(args):
    params = dict(encoder=args.encoder, architecture=args.architecture, pretrained=False,
                  image_size=args.size, encoder_depth=args.depth,
                  batch_size=args.batch_size, random_state=0, device=args.device,
                  verbose=0)
    X, masks = make_data(args.n, args.size)
    skorch_t, plain_t = [], []
    for _ in range(args.repeats):
        # the first epoch of each run warms up allocators; keep the rest
        skorch_t += skorch_epochs(params, X, masks, args.epochs + 1)[1:]
        plain_t += plain_epochs(params, X, masks, args.epochs + 1)[1:]
    s, p = statistics.median(skorch_t), statistics.median(plain_t)
    print(f"overhead  {args.encoder} + {args.architecture}, depth {args.depth}, {args.n} "
          f"images {args.size}px, batch {args.batch_size}, {len(skorch_t)} epochs each; "
          f"{describe(args.device, extraction=False)}")
    print(f"  Segmenter (skorch) : median epoch {s:.3f} s = {args.n / s:8.1f} img/s")
    print(f"  plain torch loop   : median epoch {p:.3f} s = {args.n / p:8.1f} img/s")
    print(f"  ratio skorch/plain : {s / p:.3f}x  (target <= 1.10x)")


def _memory_child(n, size, file_size, device):
    import resource

    from PIL import Image

    from sklearn_endo.segmentation import Segmenter

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        img = rng.integers(0, 255, (file_size, file_size, 3), dtype=np.uint8)
        mask = np.zeros((file_size, file_size), dtype=np.uint8)
        mask[: file_size // 4, : file_size // 4] = 255
        mask_path = os.path.join(tmp, "mask.png")
        Image.fromarray(mask).save(mask_path)
        paths = []
        for i in range(n):
            p = os.path.join(tmp, f"{i}.png")
            Image.fromarray(np.roll(img, i, axis=0)).save(p, compress_level=1)
            paths.append(p)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        seg = Segmenter("resnet18", pretrained=False, image_size=size, batch_size=16,
                        max_epochs=1, random_state=0, device=device, verbose=0,
                        iterator_train__num_workers=0, iterator_valid__num_workers=0)
        cuda = {}
        with peak_cuda_memory(device, cuda):
            seg.fit(paths, [mask_path] * n)
            seg.predict_proba(paths)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak, "before_fit_mb": before, **cuda}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--architecture", default="unet")
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--n-small", type=int, default=32)
    ap.add_argument("--n-large", type=int, default=256)
    ap.add_argument("--file-size", type=int, default=256)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    add_device_argument(ap)
    args = ap.parse_args()
    args.device = str(check_device(ap, args.device))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.memory_child is not None:
        _memory_child(args.memory_child, args.size, args.file_size, args.device)
        return
    overhead(args)
    if not args.skip_memory:
        memory_rows(__file__, args, "X and y")


if __name__ == "__main__":
    main()
