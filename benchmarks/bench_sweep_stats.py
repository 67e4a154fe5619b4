"""False-positive rate and power of the layer comparison, by simulation.

Each repetition draws a fresh data set from one population and runs the package's own
path: ``layer_sweep_from_features`` with ``n_repeats`` (repeated stratified k-fold) on
two synthetic "layers", then reads ``result.comparison_``.

- null: the two layers have the same distribution (the same class signal, independent
  noise), so their true scores are equal; the rate of p < alpha is the false-positive
  rate of the corrected t-test, printed beside that of the uncorrected paired t-test on
  the same fold scores;
- planted: layer 1 has a stronger signal; the rate of p < alpha is the power, and the
  share of repetitions where layer 1 is the best is printed as well.

The mean posterior probability of practical equivalence (Bayesian correlated t-test,
rope 0.01) is printed for both.

Run: ``python benchmarks/bench_sweep_stats.py [--reps 500 --n-splits 5 --n-repeats 10
--n-samples 100 --metric log_loss]``. Figures are rates, not times; the machine load
does not change them.
"""

import argparse
import time

import numpy as np
from scipy import stats

from sklearn_endo import layer_sweep_from_features


def _layers(rng, n, dim, strengths):
    y = np.arange(n) % 2
    direction = np.ones(dim) / np.sqrt(dim)
    return {i: s * y[:, None] * direction + rng.normal(size=(n, dim))
            for i, s in enumerate(strengths)}, y


def _simulate(args, strengths, label):
    rng = np.random.RandomState(args.seed)
    corrected = naive = best_is_1 = 0
    p_rope = []
    start = time.perf_counter()
    for rep in range(args.reps):
        feats, y = _layers(rng, args.n_samples, args.dim, strengths)
        res = layer_sweep_from_features(feats, y, probe="logistic", cv=args.n_splits,
                                        n_repeats=args.n_repeats, random_state=rep,
                                        scoring=[args.metric], verbose=0)
        cmp = res.comparison_ if args.metric == "log_loss" else res.compare(args.metric)
        other = 1 - cmp.best_index
        corrected += cmp.pvalue_vs_best[other] < args.alpha
        s = res.scores[args.metric][0]
        naive += stats.ttest_rel(s[0], s[1]).pvalue < args.alpha
        best_is_1 += cmp.best == 1
        p_rope.append(cmp.prob_equivalent[other])
    seconds = time.perf_counter() - start
    n = args.reps
    print(f"{label}: layer strengths {strengths}, {n} repetitions of {args.n_repeats} x "
          f"{args.n_splits}-fold CV on {args.n_samples} samples ({seconds:.0f} s)")
    print(f"  p < {args.alpha} with the corrected t-test: {corrected}/{n} = {corrected / n:.3f}"
          f" (binomial 95% range at the nominal rate: "
          f"{_binomial_range(n, args.alpha)})" if label == "null" else
          f"  p < {args.alpha} with the corrected t-test (power): {corrected}/{n} = "
          f"{corrected / n:.3f}")
    print(f"  p < {args.alpha} with the uncorrected paired t-test: {naive}/{n} = {naive / n:.3f}")
    print(f"  layer 1 chosen as the best: {best_is_1}/{n}; mean Bayesian P(equivalent within "
          f"0.01): {np.mean(p_rope):.3f}")
    return corrected / n, naive / n


def _binomial_range(n, p):
    lo, hi = stats.binom.ppf([0.025, 0.975], n, p)
    return f"{lo / n:.3f}-{hi / n:.3f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=500)
    ap.add_argument("--n-splits", type=int, default=5)
    ap.add_argument("--n-repeats", type=int, default=10)
    ap.add_argument("--n-samples", type=int, default=100)
    ap.add_argument("--dim", type=int, default=5)
    ap.add_argument("--strength", type=float, default=1.5,
                    help="class signal of the null layers (distance of the class means)")
    ap.add_argument("--planted", type=float, default=2.5,
                    help="class signal of the better layer in the power run")
    ap.add_argument("--metric", default="log_loss", choices=["log_loss", "accuracy"])
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-power", action="store_true")
    args = ap.parse_args()
    _simulate(args, (args.strength, args.strength), "null")
    if not args.skip_power:
        _simulate(args, (args.strength, args.planted), "planted")


if __name__ == "__main__":
    main()
