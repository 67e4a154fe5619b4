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

3. ``FineTuneClassifier(freeze="none")`` epochs 2+ on the JPEG paths against the same
   images as in-memory uint8 arrays at the working size (target <= 1.10x): the decode
   cache (:mod:`sklearn_endo._decode_cache`) serves epochs 2+ from its files (paths
   are decoded by DataLoader workers); EfficientNet-Lite0 at ``--ft-size`` (128) px.
4. Peak RSS of the decode cache over 2,000 image paths with its memory bound set to
   100 MB (target: bound + one batch), in a fresh process, two epochs.

Run: ``python benchmarks/bench_decode.py`` (a few minutes on 2 CPU cores).
"""

import argparse
import os
import subprocess
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


def bench_finetune(paths, size, epochs, pairs):
    from sklearn_endo.finetune import FineTuneClassifier

    X = np.stack([decode_file(p, "X[0]", size=(size, size)).permute(1, 2, 0).numpy()
                  for p in paths])
    y = np.arange(len(paths)) % 2
    print(f"3. FineTuneClassifier(freeze='none') epochs 2..{epochs}, {len(paths)} images "
          f"at {size} px; median epoch of each fit, {pairs} pairs of fits alternating "
          f"which goes first")

    def epoch_time(inputs):
        clf = FineTuneClassifier("efficientnet_lite0", pretrained=False, img_size=size,
                                 max_epochs=epochs, batch_size=16, verbose=0)
        clf.fit(inputs, y)
        return float(np.median(clf.history[1:, "dur"]))

    t_paths, t_arrays = [], []
    for k in range(pairs):
        if k % 2 == 0:
            t_paths.append(epoch_time(list(paths)))
            t_arrays.append(epoch_time(X))
        else:
            t_arrays.append(epoch_time(X))
            t_paths.append(epoch_time(list(paths)))
    row("JPEG paths (decode cache)", float(np.median(t_paths)) / len(paths))
    row("uint8 arrays at the working size", float(np.median(t_arrays)) / len(paths))
    ratio = float(np.median([a / b for a, b in zip(t_paths, t_arrays)]))
    print(f"  paths / arrays: {ratio:.2f}x (target <= 1.10x)")


def bench_ssl(paths, size, epochs, pairs):
    from sklearn_endo.ssl import SelfSupervisedPretrainer

    X = np.stack([decode_file(p, "X[0]", size=(size, size)).permute(1, 2, 0).numpy()
                  for p in paths])
    print(f"3b. SelfSupervisedPretrainer (Barlow Twins, resnet18) epochs 2..{epochs}, "
          f"{len(paths)} images at {size} px; median epoch of each fit, {pairs} pairs")

    def epoch_time(inputs):
        pre = SelfSupervisedPretrainer("resnet18", method="barlowtwins", img_size=size,
                                       max_epochs=epochs, batch_size=16, warmup_epochs=0,
                                       random_state=0, verbose=False).fit(inputs)
        return float(np.median(pre.history_[1:, "dur"]))

    t_paths, t_arrays = [], []
    for k in range(pairs):
        first, second = (list(paths), X) if k % 2 == 0 else (X, list(paths))
        a, b = epoch_time(first), epoch_time(second)
        t_paths.append(a if k % 2 == 0 else b)
        t_arrays.append(b if k % 2 == 0 else a)
    row("JPEG paths (decode cache)", float(np.median(t_paths)) / len(paths))
    row("uint8 arrays at the working size", float(np.median(t_arrays)) / len(paths))
    ratio = float(np.median([a / b for a, b in zip(t_paths, t_arrays)]))
    print(f"  paths / arrays: {ratio:.2f}x (target <= 1.10x)")


def _status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def rss_child(folder, n, bound):
    """Runs in a fresh process: two epochs of ``load_resized`` over ``n`` paths."""
    os.environ["SKLEARN_ENDO_DECODE_CACHE_BYTES"] = str(bound)
    os.environ["SKLEARN_ENDO_DECODE_CACHE_DIR"] = os.path.join(folder, f"decoded{bound}")
    from sklearn_endo._decode_cache import DECODED, load_resized

    rng = np.random.default_rng(1)
    base = photo(512, 640, rng)
    paths = []
    for i in range(n):
        top, left = rng.integers(0, 256), rng.integers(0, 384)
        paths.append(os.path.join(folder, f"rss_{i}.jpg"))
        Image.fromarray(base[top:top + 256, left:left + 256]).save(paths[-1], quality=90)
    images = check_images(paths)
    load_resized(images, 0, (224, 224))
    DECODED.clear()
    before = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # resets the peak (VmHWM) to now
        f.write("5")
    times, seen = [], 0
    for _ in range(2):
        t0 = time.perf_counter()
        for start in range(0, n, 32):  # batches of 32, as a DataLoader would
            batch = None
            batch = torch.stack([load_resized(images, i, (224, 224))
                                 for i in range(start, min(n, start + 32))])
            seen += len(batch)
        times.append(time.perf_counter() - t0)
    peak = _status_bytes("VmHWM")
    assert seen == 2 * n
    print(f"  {n} paths at 224 px ({n * 3 * 224 * 224 / 1e6:.0f} MB decoded), bound "
          f"{bound / 1e6:.0f} MB: in memory {DECODED.nbytes / 1e6:.0f} MB, peak RSS "
          f"+{(peak - before) / 1e6:.0f} MB over the process before the epochs (one float "
          f"batch of 32: {32 * 3 * 224 * 224 * 4 / 1e6:.0f} MB)")
    row("epoch 1 (decode)", times[0] / n)
    row("epoch 2 (memory, then files)", times[1] / n)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-small", type=int, default=32, help="720x576 JPEGs (32)")
    parser.add_argument("--n-big", type=int, default=16, help="1920x1072 JPEGs (16)")
    parser.add_argument("--repeats", type=int, default=3, help="decode passes (3)")
    parser.add_argument("--pairs", type=int, default=2, help="transformer pairs (2)")
    parser.add_argument("--models", default="efficientnet_lite0",
                        help="comma-separated timm names (efficientnet_lite0)")
    parser.add_argument("--skip-transform", action="store_true")
    parser.add_argument("--skip-finetune", action="store_true")
    parser.add_argument("--ft-size", type=int, default=128, help="fine-tuning px (128)")
    parser.add_argument("--ft-epochs", type=int, default=3, help="fine-tuning epochs (3)")
    parser.add_argument("--ft-pairs", type=int, default=3, help="fine-tuning pairs (3)")
    parser.add_argument("--rss-paths", type=int, default=2000, help="RSS row (2000)")
    parser.add_argument("--rss-bound", type=float, default=100e6, help="bytes (100e6)")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        return rss_child(args.rss_child, args.rss_paths, int(args.rss_bound))
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
        os.environ["SKLEARN_ENDO_DECODE_CACHE_DIR"] = os.path.join(folder, "decoded")
        if not args.skip_finetune:
            bench_finetune(small + big, args.ft_size, args.ft_epochs, args.ft_pairs)
            bench_ssl(small + big, args.ft_size, args.ft_epochs, args.ft_pairs)
        print("4. decode cache memory, fresh processes: the bound, then no memory tier")
        for bound in (args.rss_bound, 0):
            subprocess.run([sys.executable, __file__, "--rss-child", folder, "--rss-paths",
                            str(args.rss_paths), "--rss-bound", str(bound)], check=True)


if __name__ == "__main__":
    main()
