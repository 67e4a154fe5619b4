"""Cost of a cross-validated layer sweep, with and without the feature store.

Prints, for one encoder and dataset size (all figures measured side by side in one run):

(a) one-pass extraction of every layer against a hand-written timm loop over the same
    batches (same decoding and resizing, plain ``model(x)``), and against the bare
    forward of already-preprocessed tensors;
(b) a 5-fold GridSearchCV over every layer with the store against the same search
    without it: wall time, encoder passes per unique image, and the store sweep
    against one raw pass plus the probe fits alone;
(c) the stop-early cost of extracting a single layer (store off) per layer depth;
(d) peak memory of the store against the token maps it avoids keeping;
(e) ``layer_sweep`` end to end (one pass, the probes of every layer and fold, the
    metrics) against one raw pass plus the same probe fits alone, for the batched linear
    probe (the paper's recipe) and for LogisticRegression; repeats interleaved, medians.

Run: ``python benchmarks/bench_layer_sweep.py --encoder vit_small_patch16_224``
"""

import argparse
import copy
import time
import tracemalloc

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline

from sklearn_endo import LayerFeatureTransformer, clear_feature_store, layer_sweep
from sklearn_endo._images import check_images, make_loader
from sklearn_endo.probes import MultiLayerLinearProbe, fit_folds


class Counter:
    def __init__(self, module):
        self.images = 0
        module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.images += args[0].shape[0]


def data(n, size, seed=0):
    try:
        from sklearn_endo.datasets import make_lesions

        return make_lesions(n, image_size=size, random_state=seed)[:2]
    except ImportError:
        rng = np.random.default_rng(seed)
        y = np.arange(n) % 2
        X = rng.integers(0, 200, (n, size, size, 3)).astype(np.uint8)
        X[y == 1, : size // 2] += 50
        return X, y


def timed(fn, repeat=1):
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="vit_small_patch16_224")
    ap.add_argument("--pretrained", action="store_true")
    ap.add_argument("--img-size", type=int, default=112)
    ap.add_argument("--n-samples", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--probe-epochs", type=int, default=30,
                    help="epochs of the batched linear probe in (e) (the recipe: 30)")
    ap.add_argument("--parts", default="abcde", help="which sections to run, e.g. 'e'")
    args = ap.parse_args()
    torch.manual_seed(0)

    X, y = data(args.n_samples, 64)
    base = LayerFeatureTransformer(args.encoder, pretrained=args.pretrained,
                                   img_size=args.img_size, batch_size=args.batch_size)
    base.fit(X)
    handle = base._get_handle()
    model = handle.module
    counter = Counter(model)
    n_layers = base.n_layers_
    print(f"encoder {args.encoder} ({n_layers} blocks, input {args.img_size}px), "
          f"{len(X)} images, batch {args.batch_size}, torch threads "
          f"{torch.get_num_threads()}")

    # (a) ---------------------------------------------------------------- one pass
    images = check_images(X)
    cfg = handle.data_config
    mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)

    def raw_loop():
        with torch.inference_mode():
            for batch in make_loader(images, range(len(X)), cfg["input_size"],
                                     batch_size=args.batch_size,
                                     interpolation=cfg["interpolation"]):
                model((batch - mean) / std)

    tensors = [((b - mean) / std) for b in make_loader(
        images, range(len(X)), cfg["input_size"], batch_size=args.batch_size,
        interpolation=cfg["interpolation"])]

    def bare_forward():
        with torch.inference_mode():
            for b in tensors:
                model(b)

    def ours():
        clear_feature_store()
        return base.layer_features(X)

    raw_loop()  # warm-up
    t_raw = timed(raw_loop, args.repeat)[0]
    cv = StratifiedKFold(args.folds, shuffle=True, random_state=0)
    feats = base.layer_features(X)
    if "a" in args.parts:
        t_bare = timed(bare_forward, args.repeat)[0]
        t_ours, _ = timed(ours, args.repeat)
        print("\n(a) one pass, every layer pooled")
        print(f"  hand-written timm loop (same loading): {t_raw:7.2f} s")
        print(f"  bare forward on ready tensors:         {t_bare:7.2f} s")
        print(f"  LayerFeatureTransformer, all layers:   {t_ours:7.2f} s")
        print(f"  overhead vs timm loop: {t_ours / t_raw:.3f}x   vs bare forward: "
              f"{t_ours / t_bare:.3f}x   (target <= 1.10x)")

    # (b) ---------------------------------------------------------------- CV sweep
    if "b" in args.parts:
        grid = {"layerfeaturetransformer__layer": list(range(n_layers + 1))}

        def sweep(store):
            clear_feature_store()
            pipe = make_pipeline(
                LayerFeatureTransformer(args.encoder, pretrained=args.pretrained,
                                        img_size=args.img_size, batch_size=args.batch_size,
                                        feature_store=store),
                LogisticRegression(max_iter=1000))
            return GridSearchCV(pipe, grid, cv=cv, scoring="neg_log_loss", refit=False).fit(X, y)

        counter.images = 0
        t_store, search = timed(lambda: sweep("memory"))
        passes_store = counter.images / len(X)
        counter.images = 0
        t_nostore, search2 = timed(lambda: sweep(None))
        passes_nostore = counter.images / len(X)
        assert np.allclose(search.cv_results_["mean_test_score"],
                           search2.cv_results_["mean_test_score"], atol=1e-5)

        def probes_only():
            for layer in range(n_layers + 1):
                for train, _ in cv.split(X, y):
                    LogisticRegression(max_iter=1000).fit(feats[layer][train], y[train])

        t_probes = timed(probes_only)[0]

        # the same search over precomputed features: what GridSearchCV itself costs
        # (cloning, fitting, predicting and scoring 65 candidates) without any encoder
        columns = np.hstack([feats[la] for la in range(n_layers + 1)])
        bounds = np.cumsum([0] + [feats[la].shape[1] for la in range(n_layers + 1)])
        select = make_pipeline(_Columns(bounds), LogisticRegression(max_iter=1000))
        t_search_only = timed(lambda: GridSearchCV(
            select, {"_columns__layer": list(range(n_layers + 1))}, cv=cv,
            scoring="neg_log_loss", refit=False).fit(columns, y))[0]
        n_fits = (n_layers + 1) * args.folds
        print(f"\n(b) {args.folds}-fold GridSearchCV over all {n_layers + 1} layers "
              f"({n_fits} fits)")
        print(f"  with store:    {t_store:7.2f} s, {passes_store:.2f} encoder passes per image "
              f"(target <= 1.0)")
        print(f"  without store: {t_nostore:7.2f} s, {passes_nostore:.2f} encoder passes per "
              f"image (stop-early on)")
        print(f"  speed-up: {t_nostore / t_store:.1f}x")
        print(f"  store sweep vs one raw pass + the probe fits alone ({t_raw:.2f} + "
              f"{t_probes:.2f} s): {t_store / (t_raw + t_probes):.3f}x (target <= 1.3x)")
        print(f"  store sweep vs one raw pass + the same GridSearchCV on precomputed features "
              f"({t_raw:.2f} + {t_search_only:.2f} s): {t_store / (t_raw + t_search_only):.3f}x")
        best = search.cv_results_["params"][int(np.argmax(search.cv_results_["mean_test_score"]))]
        print(f"  best layer by CV log-loss: {best['layerfeaturetransformer__layer']}")

    # (c) ---------------------------------------------------------------- stop early
    if "c" in args.parts:
        print("\n(c) one layer, store off (the pass stops after it)")
        full = timed(lambda: LayerFeatureTransformer(
            args.encoder, layer=-1, pretrained=args.pretrained, img_size=args.img_size,
            batch_size=args.batch_size, feature_store=None).fit_transform(X))[0]
        for layer in sorted({0, 1, n_layers // 4, n_layers // 2, 3 * n_layers // 4, n_layers}):
            t = timed(lambda layer=layer: LayerFeatureTransformer(
                args.encoder, layer=layer, pretrained=args.pretrained, img_size=args.img_size,
                batch_size=args.batch_size, feature_store=None).fit_transform(X), args.repeat)[0]
            print(f"  layer {layer:3d}: {t:6.2f} s = {t / full:.2f} of the full pass")

    # (d) ---------------------------------------------------------------- memory
    if "d" in args.parts:
        clear_feature_store()
        tracemalloc.start()
        base.layer_features(X)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        from sklearn_endo._store import get_store

        store = get_store("memory")
        tokens = sum(int(np.prod(s)) * 4 for s in _token_shapes(handle, cfg, len(X)))
        print("\n(d) memory")
        print(f"  store: {store.nbytes / 1e6:.2f} MB for {len(X)} images "
              f"({store.nbytes / len(X) / 1e3:.1f} kB per image, all layers and poolings)")
        print(f"  peak numpy/python allocations during the pass (tracemalloc; torch's own "
              f"buffers not counted): {peak / 1e6:.2f} MB")
        print(f"  token maps of all layers for the dataset would be: {tokens / 1e6:.1f} MB")

    # (e) ---------------------------------------------------------------- layer_sweep
    if "e" in args.parts:
        trains = [train for train, _ in cv.split(X, y)]
        layer_feats = [feats[la] for la in range(n_layers + 1)]
        quiet = copy.copy(base)
        quiet.verbose = False
        recipe = {"max_epochs": args.probe_epochs}

        def fits_alone(probe):
            if probe == "batched-linear":
                fit_folds(MultiLayerLinearProbe(random_state=0, **recipe), layer_feats, y,
                          trains)
                return
            for a in layer_feats:
                for rows in trains:
                    LogisticRegression(max_iter=1000).fit(a[rows], y[rows])

        def whole(probe):
            clear_feature_store()  # cold store: the sweep pays its encoder pass
            return layer_sweep(X, y, quiet, probe=probe, cv=cv, random_state=0, verbose=0,
                               probe_params=recipe if probe == "batched-linear" else None)

        print(f"\n(e) layer_sweep over all {n_layers + 1} layers x {args.folds} folds, cold "
              f"store, vs one raw pass + the probe fits alone (medians of {args.repeat})")
        for probe in ("batched-linear", "logistic"):
            t = {"sweep": [], "raw": [], "fits": []}
            for _ in range(args.repeat):  # interleaved
                seconds, res = timed(lambda probe=probe: whole(probe))
                t["sweep"].append(seconds)
                t["raw"].append(timed(raw_loop)[0])
                t["fits"].append(timed(lambda probe=probe: fits_alone(probe))[0])
            sw, raw, fits = (float(np.median(t[k])) for k in ("sweep", "raw", "fits"))
            print(f"  {probe:15s} sweep {sw:6.2f} s vs raw pass {raw:.2f} + fits {fits:.2f} s: "
                  f"{sw / (raw + fits):.3f}x (target <= 1.3x); best layer {res.best_layer_}")


class _Columns(BaseEstimator, TransformerMixin):
    """Select one layer's columns of precomputed features (the no-encoder baseline)."""

    def __init__(self, bounds, layer=0):
        self.bounds = bounds
        self.layer = layer

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return X[:, self.bounds[self.layer]:self.bounds[self.layer + 1]]


def _token_shapes(handle, cfg, n):
    shapes = []
    hooks = [m.register_forward_hook(lambda m, a, o: shapes.append(
        torch.Size([n, *(o[0] if isinstance(o, tuple) else o).shape[1:]])))
        for _, m in handle.blocks]
    with torch.inference_mode():
        handle.module(torch.zeros(1, 3, *cfg["input_size"]))
    for h in hooks:
        h.remove()
    return shapes


if __name__ == "__main__":
    main()
