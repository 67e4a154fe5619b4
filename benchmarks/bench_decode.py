"""Decoding real-size JPEGs at the encoder's size (#19).

Writes real-size JPEGs (720x576 and 1920x1072, photographic 1/f texture, quality 90)
to a temporary folder and prints, measured side by side in one run, with images per
second for each row:

1. Decode + resize to 224 x 224 per image: the package
   (:func:`sklearn_endo._decode.decode_file`, uint8 tensor out) against Pillow's own
   ``draft`` + ``resize`` on the same files (target <= 1.2x), and, for reference, the
   pre-#19 path (full decode to float32, antialiased ``interpolate``).
2. A ``LayerFeatureTransformer`` pass (last layer, no feature store) on JPEG paths, a
   third at 1920x1072 and the rest 720x576, against the same images given as
   (N, 224, 224, 3) uint8 arrays (target <= 1.2x; 1.48x before #19). EfficientNet-Lite0
   (``pretrained=False``: the weights do not change the time) by default; ``--models``
   adds others, e.g. ``vit_small_patch16_224``. Pairs alternate which side goes first;
   the ratio is the median over pairs.

Run: ``python benchmarks/bench_decode.py`` (about 2 minutes on 2 CPU cores).
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sklearn_endo import LayerFeatureTransformer
from sklearn_endo._decode import decode_file, to_chw_float
from sklearn_endo._images import check_images


def photo(h, w, rng):
    """A colour image with photographic (1/f) texture, uint8 (h, w, 3)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    amp = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(h, w)) ** 1.2
    chans = []
    for _ in range(3):
        c = np.fft.irfft2(amp * np.exp(2j * np.pi * rng.random(amp.shape)), s=(h, w))
        chans.append((c - c.min()) / (c.max() - c.min()))
    return (np.stack(chans, -1) * 255).astype(np.uint8)


def write_jpegs(folder, n, h, w, rng, tag):
    paths = []
    for i in range(n):
        paths.append(os.path.join(folder, f"{tag}_{i}.jpg"))
        Image.fromarray(photo(h, w, rng)).save(paths[-1], quality=90)
    return paths


def pillow_draft(path, size=(224, 224)):
    with Image.open(path) as img:
        img.draft("RGB", size)
        return np.asarray(img.convert("RGB").resize(size, Image.Resampling.BICUBIC))


def old_path(path, size=(224, 224)):
    with Image.open(path) as img:
        t = to_chw_float(np.asarray(img.convert("RGB")))
    return F.interpolate(t[None], size=size, mode="bicubic", align_corners=False,
                         antialias=True)[0].clamp_(0, 1)


def per_image(fn, paths, repeats):
    """Median over repeats of the seconds per image of ``fn`` over ``paths``."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for p in paths:
            fn(p)
        times.append((time.perf_counter() - t0) / len(paths))
    return float(np.median(times))


def row(name, seconds, per="image"):
    print(f"  {name:<52} {seconds * 1e3:8.2f} ms/{per}  {1 / seconds:8.1f} images/s")


def bench_decode(sets, repeats):
    print("1. decode + resize to 224 x 224, one image at a time (median of "
          f"{repeats} passes)")
    for label, paths in sets.items():
        ours = per_image(lambda p: decode_file(p, "X[0]", size=(224, 224)), paths, 1)
        ref = per_image(pillow_draft, paths, 1)
        # interleave the repeats so that load changes hit both sides alike
        ours_t, ref_t = [], []
        for _ in range(repeats):
            ours_t.append(per_image(lambda p: decode_file(p, "X[0]", size=(224, 224)),
                                    paths, 1))
            ref_t.append(per_image(pillow_draft, paths, 1))
        ours, ref = float(np.median(ours_t)), float(np.median(ref_t))
        old = per_image(old_path, paths, 1)
        print(f" {label} ({len(paths)} files)")
        row("package (draft, uint8 resize)", ours)
        row("Pillow draft + resize", ref)
        row("pre-#19 path (full decode, float interpolate)", old)
        ratios = [a / b for a, b in zip(ours_t, ref_t)]
        print(f"  package / Pillow draft: {np.median(ratios):.2f}x (target <= 1.2x); "
              f"pre-#19 / package: {old / ours:.2f}x")


def bench_transform(models, paths, pairs):
    X = np.stack([decode_file(p, "X[0]", size=(224, 224)).permute(1, 2, 0).numpy()
                  for p in paths])
    print(f"2. LayerFeatureTransformer pass, {len(paths)} images "
          f"({sum('big' in p for p in paths)} at 1920x1072), median of {pairs} pairs")
    for name in models:
        def run(inputs, name=name):
            t = LayerFeatureTransformer(name, pretrained=False, feature_store=None,
                                        verbose=False)
            t0 = time.perf_counter()
            t.fit_transform(inputs)
            return time.perf_counter() - t0

        run(X[:8])  # build the encoder once (timm's registry), warm up
        t_paths, t_arrays = [], []
        for k in range(pairs):
            if k % 2 == 0:
                t_paths.append(run(list(paths)))
                t_arrays.append(run(X))
            else:
                t_arrays.append(run(X))
                t_paths.append(run(list(paths)))
        n = len(paths)
        print(f" {name}")
        row("JPEG paths", float(np.median(t_paths)) / n)
        row("(N, 224, 224, 3) uint8 arrays", float(np.median(t_arrays)) / n)
        ratio = float(np.median([a / b for a, b in zip(t_paths, t_arrays)]))
        print(f"  paths / arrays: {ratio:.2f}x (target <= 1.2x; 1.48x before #19)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-small", type=int, default=32, help="720x576 JPEGs (32)")
    parser.add_argument("--n-big", type=int, default=16, help="1920x1072 JPEGs (16)")
    parser.add_argument("--repeats", type=int, default=3, help="decode passes (3)")
    parser.add_argument("--pairs", type=int, default=2, help="transformer pairs (2)")
    parser.add_argument("--models", default="efficientnet_lite0",
                        help="comma-separated timm names (efficientnet_lite0)")
    parser.add_argument("--skip-transform", action="store_true")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        small = write_jpegs(folder, args.n_small, 576, 720, rng, "small")
        big = write_jpegs(folder, args.n_big, 1072, 1920, rng, "big")
        check_images(small + big)  # headers read once, as an estimator would
        bench_decode({"720x576": small, "1920x1072": big}, args.repeats)
        if not args.skip_transform:
            bench_transform(args.models.split(","), small + big, args.pairs)


if __name__ == "__main__":
    main()
