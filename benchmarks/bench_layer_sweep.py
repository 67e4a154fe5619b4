"""Cost of a cross-validated layer sweep, with and without the feature store.

Prints, for one encoder and dataset size (all figures measured side by side in one run):

(a) one-pass extraction of every layer against a hand-written timm loop over the same
    batches (same decoding and resizing, plain ``model(x)``), and against the bare
    forward of already-preprocessed tensors, in images/s. Both sides run under the same
    autocast: the package's choice for the device (``sklearn_endo._device``: bfloat16
    on CUDA from compute capability 8.0, float16 on 7.x, none on the CPU), so each
    ratio compares like with like; on CUDA also a float32 loop for reference and a
    channels-last copy of the encoder on both sides (on the CPU channels-last is off);
(b) a 5-fold GridSearchCV over every layer with the store against the same search
    without it: wall time, encoder passes per unique image, and the store sweep
    against one raw pass plus the probe fits alone;
(c) the stop-early cost of extracting a single layer (store off) per layer depth;
(d) peak memory of the store against the token maps it avoids keeping;
(e) ``layer_sweep`` end to end (one pass, the probes of every layer and fold, the
    metrics) against one raw pass plus the same probe fits alone, for the batched linear
    probe with the paper's recipe (Adam) and with ``solver="lbfgs"``, and for
    LogisticRegression; repeats interleaved, medians.

``--device cuda`` runs the encoder and the torch probes on the GPU, synchronising it
around every timed region; ``--device cpu`` (the default) on the CPU.

Run: ``python benchmarks/bench_layer_sweep.py --encoder vit_small_patch16_224
[--device cuda] [--n-samples 400 --parts e]``
"""

import argparse
import copy
import time
import tracemalloc

import numpy as np
import torch
from _device import add_device_argument, check_device, describe, peak_cuda_memory, sync
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline

from sklearn_endo import LayerFeatureTransformer, clear_feature_store, layer_sweep
from sklearn_endo._device import autocast_context, autocast_dtype, dtype_name
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


DEVICE = torch.device("cpu")  # set from --device in main


def timed(fn, repeat=1):
    """Best of ``repeat`` wall times of ``fn()``, the device synchronised around each."""
    best = np.inf
    for _ in range(repeat):
        sync(DEVICE)
        start = time.perf_counter()
        out = fn()
        sync(DEVICE)
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
    ap.add_argument("--probes", default="adam,lbfgs,logistic",
                    help="probes of (e): any of adam, lbfgs (batched-linear with that "
                         "solver), logistic")
    ap.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                    help="the channels-last rows of (a): 'auto' runs them on CUDA only "
                         "('on' also runs them on the CPU, to check that code path)")
    add_device_argument(ap)
    args = ap.parse_args()
    global DEVICE
    device = DEVICE = check_device(ap, args.device)
    torch.manual_seed(0)

    X, y = data(args.n_samples, 64)
    base = LayerFeatureTransformer(args.encoder, pretrained=args.pretrained,
                                   img_size=args.img_size, batch_size=args.batch_size,
                                   device=str(device))
    base.fit(X)
    handle = base._get_handle()
    model = handle.module.eval()  # as the transformer runs it (no dropout, drop path)
    counter = Counter(model)
    n_layers = base.n_layers_
    print(f"encoder {args.encoder} ({n_layers} blocks, input {args.img_size}px), "
          f"{len(X)} images, batch {args.batch_size}; {describe(device)}")

    # (a) ---------------------------------------------------------------- one pass
    images = check_images(X)
    cfg = handle.data_config
    mean = torch.tensor(cfg["mean"], device=device).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"], device=device).view(1, -1, 1, 1)
    amp = autocast_dtype(device, True)  # what the transformer (amp=True) uses; None on CPU
    precision = f"AMP {dtype_name(amp)}" if amp is not None else "float32"

    def loader():
        return make_loader(images, range(len(X)), cfg["input_size"],
                           batch_size=args.batch_size, interpolation=cfg["interpolation"],
                           pin_memory=device.type == "cuda")

    def raw_loop(net=model, autocast=amp, memory_format=torch.contiguous_format):
        """What a user writes: decode, normalise, ``net(x)`` per batch, under the same
        autocast as the transformer unless told otherwise."""
        with torch.inference_mode(), autocast_context(device, autocast):
            for batch in loader():
                batch = batch.to(device, non_blocking=True)
                net(((batch - mean) / std).contiguous(memory_format=memory_format))

    tensors = [((b.to(device) - mean) / std) for b in loader()]

    def bare_forward():
        with torch.inference_mode(), autocast_context(device, amp):
            for b in tensors:
                model(b)

    def ours(transformer=base):
        clear_feature_store()
        return transformer.layer_features(X)

    raw_loop()  # warm-up
    t_raw = timed(raw_loop, args.repeat)[0]
    cv = StratifiedKFold(args.folds, shuffle=True, random_state=0)
    feats = base.layer_features(X)
    if "a" in args.parts:
        n = len(X)
        t_bare = timed(bare_forward, args.repeat)[0]
        t_ours, _ = timed(ours, args.repeat)
        print("\n(a) one pass, every layer pooled (images/s, higher is better)")
        print(f"  hand-written timm loop, {precision} (same loading): {n / t_raw:8.1f} img/s "
              f"({t_raw:.2f} s)")
        print(f"  bare forward on ready tensors, {precision}:         {n / t_bare:8.1f} "
              "img/s")
        print(f"  LayerFeatureTransformer, all layers, {precision}:   {n / t_ours:8.1f} img/s")
        print(f"  ours vs timm loop: {t_ours / t_raw:.3f}x the time   vs bare forward: "
              f"{t_ours / t_bare:.3f}x   (target <= 1.10x)")
        channels_last = (args.channels_last == "on"
                         or (args.channels_last == "auto" and device.type == "cuda"))
        if channels_last:
            # a channels-last copy of the encoder: cuDNN then runs its convolutions in
            # NHWC (the input batch may stay NCHW; the weights decide)
            model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
            fast = LayerFeatureTransformer(model_cl, img_size=args.img_size,
                                           batch_size=args.batch_size, device=str(device),
                                           verbose=False).fit(X[:1])
            ours(fast)  # warm-up (cuDNN picks its NHWC kernels)
            raw_loop(model_cl, amp, torch.channels_last)
            t_raw_fast = timed(lambda: raw_loop(model_cl, amp, torch.channels_last),
                               args.repeat)[0]
            t_fast = timed(lambda: ours(fast), args.repeat)[0]
            print(f"  timm loop, {precision} + channels-last:           "
                  f"{n / t_raw_fast:8.1f} img/s = {t_raw / t_raw_fast:.2f}x the "
                  f"{precision} loop")
            print(f"  LayerFeatureTransformer, {precision} + channels-last: "
                  f"{n / t_fast:8.1f} img/s, {t_fast / t_raw_fast:.3f}x the time of the "
                  "same loop (target <= 1.10x)")
        else:
            print("  channels-last rows: not run (off on the CPU; --channels-last on "
                  "runs them here anyway)")
        if amp is not None:  # what AMP itself buys, loop against loop
            t_fp32 = timed(lambda: raw_loop(autocast=None), args.repeat)[0]
            print(f"  timm loop, float32 (reference):               {n / t_fp32:8.1f} "
                  f"img/s; {precision} is {t_fp32 / t_raw:.2f}x faster")

    # (b) ---------------------------------------------------------------- CV sweep
    if "b" in args.parts:
        grid = {"layerfeaturetransformer__layer": list(range(n_layers + 1))}

        def sweep(store):
            clear_feature_store()
            pipe = make_pipeline(
                LayerFeatureTransformer(args.encoder, pretrained=args.pretrained,
                                        img_size=args.img_size, batch_size=args.batch_size,
                                        feature_store=store, device=str(device)),
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
        print(f"  with store:    {t_store:7.2f} s ({len(X) / t_store:.1f} img/s), "
              f"{passes_store:.2f} encoder passes per image (target <= 1.0)")
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
            batch_size=args.batch_size, feature_store=None,
            device=str(device)).fit_transform(X))[0]
        for layer in sorted({0, 1, n_layers // 4, n_layers // 2, 3 * n_layers // 4, n_layers}):
            t = timed(lambda layer=layer: LayerFeatureTransformer(
                args.encoder, layer=layer, pretrained=args.pretrained, img_size=args.img_size,
                batch_size=args.batch_size, feature_store=None,
                device=str(device)).fit_transform(X), args.repeat)[0]
            print(f"  layer {layer:3d}: {t:6.2f} s = {t / full:.2f} of the full pass")

    # (d) ---------------------------------------------------------------- memory
    if "d" in args.parts:
        clear_feature_store()
        cuda_peak = {}
        tracemalloc.start()
        with peak_cuda_memory(device, cuda_peak):
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
        if cuda_peak:
            print(f"  CUDA: torch.cuda.max_memory_allocated during the pass "
                  f"{cuda_peak['cuda_peak_mb']:.1f} MiB ("
                  f"{cuda_peak['cuda_peak_above_start_mb']:.1f} MiB above the weights and "
                  "other tensors held before it)")

    # (e) ---------------------------------------------------------------- layer_sweep
    if "e" in args.parts:
        trains = [train for train, _ in cv.split(X, y)]
        layer_feats = [feats[la] for la in range(n_layers + 1)]
        quiet = copy.copy(base)
        quiet.verbose = False
        probes = {  # label: (probe, probe_params); the torch probes train on --device
            "batched-linear adam": ("batched-linear", {"solver": "adam",
                                                       "max_epochs": args.probe_epochs,
                                                       "device": str(device)}),
            # max_iter as the "logistic" probe's: the joint solve of all layers needs
            # more iterations than one head (see docs/evaluation.md)
            "batched-linear lbfgs": ("batched-linear", {"solver": "lbfgs",
                                                        "standardize": False,
                                                        "max_iter": 1000,
                                                        "device": str(device)}),
            "logistic": ("logistic", None),
        }

        def fits_alone(label):
            probe, params = probes[label]
            if probe == "batched-linear":
                fit_folds(MultiLayerLinearProbe(random_state=0, **params), layer_feats, y,
                          trains)
                return
            for a in layer_feats:
                for rows in trains:
                    LogisticRegression(max_iter=1000).fit(a[rows], y[rows])

        def whole(label):
            probe, params = probes[label]
            clear_feature_store()  # cold store: the sweep pays its encoder pass
            return layer_sweep(X, y, quiet, probe=probe, cv=cv, random_state=0, verbose=0,
                               probe_params=params)

        print(f"\n(e) layer_sweep over all {n_layers + 1} layers x {args.folds} folds, cold "
              f"store, vs one raw pass + the probe fits alone (medians of {args.repeat})")
        for label in [p for p in probes if p.split()[-1] in args.probes.split(",")]:
            fits_alone(label)  # warm-up
            t = {"sweep": [], "raw": [], "fits": []}
            for _ in range(args.repeat):  # interleaved
                seconds, res = timed(lambda label=label: whole(label))
                t["sweep"].append(seconds)
                t["raw"].append(timed(raw_loop)[0])
                t["fits"].append(timed(lambda label=label: fits_alone(label))[0])
            sw, raw, fits = (float(np.median(t[k])) for k in ("sweep", "raw", "fits"))
            print(f"  {label:20s} sweep {sw:6.2f} s ({len(X) / sw:.1f} img/s) vs raw pass "
                  f"{raw:.2f} + fits {fits:.2f} s: {sw / (raw + fits):.3f}x (target <= 1.3x); "
                  f"best layer {res.best_layer_}")


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
    was_training = handle.module.training
    handle.module.eval()  # BatchNorm in training mode rejects a batch of one
    with torch.inference_mode():
        handle.module(torch.zeros(1, 3, *cfg["input_size"], device=DEVICE))
    handle.module.train(was_training)
    for h in hooks:
        h.remove()
    return shapes


if __name__ == "__main__":
    main()
