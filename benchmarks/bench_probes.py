"""Probe cost of a layer sweep on stored features: all layers at once vs one layer.

A 24-block ViT-L gives 25 layers of 1024-dim pooled features. With the features in the
store, a sweep's remaining cost is the probes. This prints, side by side in one run
(repeats interleaved, medians of wall and CPU time), the 5-fold probe with the paper's
recipe (Adam, lr 1e-4, 30 epochs, batch 8) as:

- ``fit_folds``: the sweep's batched path now, all folds and layers as one batch of
  heads (one gather, two bmm and one fused Adam step per minibatch for everything);
- per fold: one ``MultiLayerLinearProbe.fit`` per fold (layers batched, folds in turn:
  the sweep's path before folds were batched);
- one by one: a ``LinearProbeClassifier`` per layer and fold;

each on one layer and on all layers, plus ``layer_sweep_from_features`` end to end;
and the same with ``solver="lbfgs"`` (LogisticRegression's objective, C=1, one
full-batch L-BFGS over all heads; float32 features, so a float32 solve):

- ``fit_folds lbfgs`` and ``layer_sweep_from_features lbfgs``;
- with ``--with-sklearn``: scikit-learn's ``LogisticRegression`` (lbfgs, C=1) per layer
  and fold, the reference a user would otherwise run.

Target: all layers <= 3x one layer. ``--device cuda`` trains the probes on the GPU (the
device is synchronised around every timed run; the fits return numpy arrays anyway).

Run: ``python benchmarks/bench_probes.py [--n-samples 500 --layers 25 --dim 1024]
[--device cpu] [--runs "fit_folds,fit_folds lbfgs"]``
"""

import argparse
import time

import numpy as np
from _device import add_device_argument, check_device, describe, sync
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from sklearn_endo import layer_sweep_from_features
from sklearn_endo.probes import LinearProbeClassifier, MultiLayerLinearProbe, fit_folds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-samples", type=int, default=500)
    ap.add_argument("--layers", type=int, default=25)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-one-by-one", action="store_true",
                    help="leave out the slow one-probe-per-layer-and-fold runs on all layers")
    ap.add_argument("--runs", default=None,
                    help="comma-separated subset of the run names printed (default: all)")
    ap.add_argument("--with-sklearn", action="store_true",
                    help="also LogisticRegression per layer and fold (slow on all layers)")
    add_device_argument(ap)
    args = ap.parse_args()
    device = check_device(ap, args.device)

    rng = np.random.default_rng(0)
    y = np.arange(args.n_samples) % args.classes
    centers = rng.normal(size=(args.classes, args.dim))
    feats = [(centers[y] * la / args.layers + rng.normal(size=(args.n_samples, args.dim)))
             .astype(np.float32) for la in range(args.layers)]
    cv = StratifiedKFold(args.folds, shuffle=True, random_state=0)
    trains = [train for train, _ in cv.split(feats[0], y)]
    params = dict(solver="adam", max_epochs=args.epochs, random_state=0, device=str(device))
    lbfgs = dict(solver="lbfgs", C=1.0, standardize=False, device=str(device))

    def folds_batched(fs):
        fit_folds(MultiLayerLinearProbe(**params), fs, y, trains)

    def per_fold(fs):
        for rows in trains:
            MultiLayerLinearProbe(**params).fit([a[rows] for a in fs], y[rows])

    def one_by_one(fs):
        for a in fs:
            for rows in trains:
                LinearProbeClassifier(**params).fit(a[rows], y[rows])

    def sweep(fs, probe_params=None):
        layer_sweep_from_features(dict(enumerate(fs)), y, probe="batched-linear",
                                  probe_params=probe_params or {"solver": "adam",
                                                                "max_epochs": args.epochs,
                                                                "device": str(device)},
                                  cv=cv, random_state=0, verbose=0)

    def folds_lbfgs(fs):
        fit_folds(MultiLayerLinearProbe(**lbfgs), fs, y, trains)

    def sklearn_each(fs):
        for a in fs:
            for rows in trains:
                LogisticRegression(C=1.0, max_iter=100).fit(a[rows], y[rows])

    runs = {"fit_folds": folds_batched, "per fold": per_fold, "one by one": one_by_one,
            "layer_sweep_from_features": sweep, "fit_folds lbfgs": folds_lbfgs,
            "layer_sweep_from_features lbfgs": lambda fs: sweep(fs, lbfgs)}
    once = {"one by one"}  # ~25x one layer: the all-layer run only once
    if args.with_sklearn:
        runs["sklearn LogisticRegression one by one"] = sklearn_each
        once.add("sklearn LogisticRegression one by one")
    if args.runs:
        wanted = [r.strip() for r in args.runs.split(",")]
        unknown = sorted(set(wanted) - set(runs))
        if unknown:
            ap.error(f"--runs: unknown {unknown}; choose from {list(runs)}")
        runs = {k: v for k, v in runs.items() if k in wanted}
    for fn in runs.values():  # warm-up (first L-BFGS / Adam calls, allocator), untimed
        fn(feats[:1])
    times = {}
    for r in range(args.repeat):  # interleaved, so that a busy spell hits all alike
        for name, fn in runs.items():
            for scope, fs in (("one", feats[:1]), ("all", feats)):
                if name in once and scope == "all" and (r or args.skip_one_by_one):
                    continue
                sync(device)
                wall, cpu = time.perf_counter(), time.process_time()
                fn(fs)
                sync(device)
                times.setdefault((name, scope), []).append(
                    (time.perf_counter() - wall, time.process_time() - cpu))
    med = {k: np.median(v, axis=0) for k, v in times.items()}

    print(f"{args.n_samples} samples, {args.layers} layers x {args.dim} dims, "
          f"{args.classes} classes, {args.folds} folds; Adam: {args.epochs} epochs, batch 8; "
          f"L-BFGS: C=1, tol=1e-4, max_iter=100; {describe(device, extraction=False)}; medians of "
          f"{args.repeat} (wall s / CPU s)")
    one_base = med.get(("one by one", "one"))
    for name in runs:
        one = med[(name, "one")]
        every = med.get((name, "all"))
        line = f"  {name:38s} one layer {one[0]:6.2f} / {one[1]:6.2f}"
        if every is not None:
            line += (f" | all {args.layers}: {every[0]:6.2f} / {every[1]:6.2f} = "
                     f"{every[0] / one[0]:5.2f}x / {every[1] / one[1]:5.2f}x its one layer")
            if one_base is not None:
                line += (f", {every[0] / one_base[0]:5.2f}x / {every[1] / one_base[1]:5.2f}x "
                         "one layer one by one")
        print(line)
    print("  target: all layers <= 3x one layer")
    for new, old in (("fit_folds", "per fold"), ("fit_folds lbfgs", "fit_folds")):
        if (new, "all") in med and (old, "all") in med:
            a, b = med[(new, "all")], med[(old, "all")]
            print(f"  all layers, {new} vs {old}: {b[0] / a[0]:.2f}x faster wall, "
                  f"{b[1] / a[1]:.2f}x CPU")


if __name__ == "__main__":
    main()
