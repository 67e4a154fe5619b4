"""Probe cost of a layer sweep on stored features: all layers at once vs one layer.

A 24-block ViT-L gives 25 layers of 1024-dim pooled features. With the features in the
store, a sweep's remaining cost is the probes. This prints the time of a 5-fold sweep
with the batched linear probe (the paper's recipe: Adam, lr 1e-4, 30 epochs, batch 8)
over all layers, against the same sweep on one layer, and against training the layers'
probes one by one. Target: all layers <= 3x one layer.

Run: ``python benchmarks/bench_probes.py [--n-samples 500 --layers 25 --dim 1024]``
"""

import argparse
import time

import numpy as np

from sklearn_endo import layer_sweep_from_features


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-samples", type=int, default=500)
    ap.add_argument("--layers", type=int, default=25)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    y = np.arange(args.n_samples) % args.classes
    centers = rng.normal(size=(args.classes, args.dim))
    feats = {la: (centers[y] * la / args.layers + rng.normal(size=(args.n_samples, args.dim)))
             .astype(np.float32) for la in range(args.layers)}
    params = {"max_epochs": args.epochs}

    def run(features, probe):
        start = time.perf_counter()
        res = layer_sweep_from_features(features, y, probe=probe, probe_params=params,
                                        cv=args.folds, random_state=0)
        return time.perf_counter() - start, res

    def best_of_two(features, probe):  # the same treatment for one layer and all layers
        return min(run(features, probe), run(features, probe), key=lambda t: t[0])

    one, _ = best_of_two({0: feats[0]}, "batched-linear")
    every, res = best_of_two(feats, "batched-linear")
    seq, res_seq = run(feats, "linear")
    print(f"{args.n_samples} samples, {args.layers} layers x {args.dim} dims, "
          f"{args.classes} classes, {args.folds} folds, {args.epochs} epochs, batch 8")
    print(f"  one layer, {args.folds}-fold probe:            {one:7.2f} s")
    print(f"  all {args.layers} layers, batched probe:          {every:7.2f} s = "
          f"{every / one:.2f}x one layer (target <= 3x)")
    print(f"  all {args.layers} layers, probes one by one:      {seq:7.2f} s = "
          f"{seq / one:.2f}x one layer")
    diff = np.abs(res.mean("accuracy") - res_seq.mean("accuracy")).max()
    print(f"  max |accuracy batched - one by one| over layers: {diff:.2e}")


if __name__ == "__main__":
    main()
