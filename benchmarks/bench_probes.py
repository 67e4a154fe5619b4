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

each on one layer and on all layers, plus ``layer_sweep_from_features`` end to end.
Target: all layers <= 3x one layer.

Run: ``python benchmarks/bench_probes.py [--n-samples 500 --layers 25 --dim 1024]``
"""

import argparse
import time

import numpy as np
import torch
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
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    y = np.arange(args.n_samples) % args.classes
    centers = rng.normal(size=(args.classes, args.dim))
    feats = [(centers[y] * la / args.layers + rng.normal(size=(args.n_samples, args.dim)))
             .astype(np.float32) for la in range(args.layers)]
    cv = StratifiedKFold(args.folds, shuffle=True, random_state=0)
    trains = [train for train, _ in cv.split(feats[0], y)]
    params = dict(max_epochs=args.epochs, random_state=0)

    def folds_batched(fs):
        fit_folds(MultiLayerLinearProbe(**params), fs, y, trains)

    def per_fold(fs):
        for rows in trains:
            MultiLayerLinearProbe(**params).fit([a[rows] for a in fs], y[rows])

    def one_by_one(fs):
        for a in fs:
            for rows in trains:
                LinearProbeClassifier(**params).fit(a[rows], y[rows])

    def sweep(fs):
        layer_sweep_from_features(dict(enumerate(fs)), y, probe="batched-linear",
                                  probe_params={"max_epochs": args.epochs}, cv=cv,
                                  random_state=0, verbose=0)

    runs = {"fit_folds": folds_batched, "per fold": per_fold, "one by one": one_by_one,
            "layer_sweep_from_features": sweep}
    times = {}
    for r in range(args.repeat):  # interleaved, so that a busy spell hits all alike
        for name, fn in runs.items():
            for scope, fs in (("one", feats[:1]), ("all", feats)):
                if name == "one by one" and scope == "all" and (r or args.skip_one_by_one):
                    continue  # ~25x one layer: once is enough
                wall, cpu = time.perf_counter(), time.process_time()
                fn(fs)
                times.setdefault((name, scope), []).append(
                    (time.perf_counter() - wall, time.process_time() - cpu))
    med = {k: np.median(v, axis=0) for k, v in times.items()}

    print(f"{args.n_samples} samples, {args.layers} layers x {args.dim} dims, "
          f"{args.classes} classes, {args.folds} folds, {args.epochs} epochs, batch 8, "
          f"torch threads {torch.get_num_threads()}; medians of {args.repeat} "
          "(wall s / CPU s)")
    one_base = med[("one by one", "one")]
    for name in runs:
        one = med[(name, "one")]
        every = med.get((name, "all"))
        line = f"  {name:27s} one layer {one[0]:6.2f} / {one[1]:6.2f}"
        if every is not None:
            line += (f" | all {args.layers}: {every[0]:6.2f} / {every[1]:6.2f} = "
                     f"{every[0] / one[0]:5.2f}x / {every[1] / one[1]:5.2f}x its one layer, "
                     f"{every[0] / one_base[0]:5.2f}x / {every[1] / one_base[1]:5.2f}x "
                     "one layer one by one")
        print(line)
    print("  target: all layers <= 3x one layer")
    fb = med[("fit_folds", "all")]
    pf = med[("per fold", "all")]
    print(f"  all layers, fit_folds vs per fold (before): {pf[0] / fb[0]:.2f}x faster wall, "
          f"{pf[1] / fb[1]:.2f}x CPU")


if __name__ == "__main__":
    main()
