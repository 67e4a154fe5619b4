"""clone() and pickling cost of a transformer holding a large encoder.

GridSearchCV clones the pipeline per candidate and fold; sklearn's default clone
deep-copies every non-estimator parameter, which for a ViT-B module means ~350 MB and
most of a second each time. Prints the time of ``clone`` on a transformer holding a
ViT-B module (random init) against ``copy.deepcopy`` of that module, and the pickled
size of a fitted pipeline with a *named* encoder, and (so that every benchmark reports
throughput on its device) that pipeline's ``transform`` in images/s, a cloned pipeline's
against the original's: a clone shares the encoder, so it must be as fast.

``--device cuda`` puts the ViT-B module and the pipeline's encoder on the GPU (the
device synchronised around every timed call); clone never copies the module either way.

Run: ``python benchmarks/bench_clone.py [--device cuda]``
"""

import argparse
import copy
import pickle
import time

import numpy as np
import timm
import torch
from _device import add_device_argument, check_device, describe, sync
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from sklearn_endo import LayerFeatureTransformer

DEVICE = torch.device("cpu")  # set from --device in main


def best_of(fn, n=5):
    times = []
    for _ in range(n):
        sync(DEVICE)
        start = time.perf_counter()
        fn()
        sync(DEVICE)
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    global DEVICE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_device_argument(ap)
    ap.add_argument("--n-images", type=int, default=64,
                    help="images for the transform throughput (64 px)")
    args = ap.parse_args()
    device = DEVICE = check_device(ap, args.device)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    vit = vit.to(device)
    n_bytes = sum(p.numel() * p.element_size() for p in vit.parameters())
    t = LayerFeatureTransformer(vit, layer=9, device=str(device))
    t_clone = best_of(lambda: clone(t))
    t_deep = best_of(lambda: copy.deepcopy(vit), n=2)
    assert clone(t).encoder is vit
    print(describe(device, extraction=False))
    print(f"ViT-B/16 module: {n_bytes / 1e6:.0f} MB of weights on {device}")
    print(f"  clone(LayerFeatureTransformer(vit)): {t_clone * 1e3:8.3f} ms (target < 50 ms)")
    print(f"  copy.deepcopy(vit) (sklearn's default for a module parameter): "
          f"{t_deep * 1e3:8.1f} ms")

    X = np.random.default_rng(0).integers(0, 256, (args.n_images, 64, 64, 3),
                                          dtype=np.uint8)
    y = np.arange(args.n_images) % 2
    pipe = make_pipeline(LayerFeatureTransformer("vit_base_patch16_224", layer=9,
                                                 pretrained=False, img_size=64,
                                                 feature_store=None, verbose=False,
                                                 device=str(device)),
                         LogisticRegression()).fit(X, y)
    print(f"  pickled fitted pipeline with encoder='vit_base_patch16_224': "
          f"{len(pickle.dumps(pipe)) / 1e3:.1f} kB (weights are reloaded by name)")
    transformer = pipe[0]
    twin = clone(transformer).fit(X[:1])  # the same named encoder, from the registry
    assert twin.encoder_ is transformer.encoder_
    t_orig = best_of(lambda: transformer.transform(X), n=3)
    t_twin = best_of(lambda: twin.transform(X), n=3)
    print(f"  transform, {args.n_images} images at 64 px (store off): original "
          f"{args.n_images / t_orig:.1f} img/s, clone {args.n_images / t_twin:.1f} img/s "
          f"= {t_twin / t_orig:.3f}x the time (same module, no copy)")


if __name__ == "__main__":
    main()
