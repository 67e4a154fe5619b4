"""clone() and pickling cost of a transformer holding a large encoder.

GridSearchCV clones the pipeline per candidate and fold; sklearn's default clone
deep-copies every non-estimator parameter, which for a ViT-B module means ~350 MB and
most of a second each time. Prints the time of ``clone`` on a transformer holding a
ViT-B module (random init) against ``copy.deepcopy`` of that module, and the pickled
size of a fitted pipeline with a *named* encoder.

Run: ``python benchmarks/bench_clone.py``
"""

import copy
import pickle
import time

import numpy as np
import timm
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from sklearn_endo import LayerFeatureTransformer


def best_of(fn, n=5):
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    n_bytes = sum(p.numel() * p.element_size() for p in vit.parameters())
    t = LayerFeatureTransformer(vit, layer=9)
    t_clone = best_of(lambda: clone(t))
    t_deep = best_of(lambda: copy.deepcopy(vit), n=2)
    assert clone(t).encoder is vit
    print(f"ViT-B/16 module: {n_bytes / 1e6:.0f} MB of weights")
    print(f"  clone(LayerFeatureTransformer(vit)): {t_clone * 1e3:8.3f} ms (target < 50 ms)")
    print(f"  copy.deepcopy(vit) (sklearn's default for a module parameter): "
          f"{t_deep * 1e3:8.1f} ms")

    X = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    y = np.arange(8) % 2
    pipe = make_pipeline(LayerFeatureTransformer("vit_base_patch16_224", layer=9,
                                                 pretrained=False, img_size=64),
                         LogisticRegression()).fit(X, y)
    print(f"  pickled fitted pipeline with encoder='vit_base_patch16_224': "
          f"{len(pickle.dumps(pipe)) / 1e3:.1f} kB (weights are reloaded by name)")


if __name__ == "__main__":
    main()
