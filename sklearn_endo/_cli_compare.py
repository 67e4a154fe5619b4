"""The CLI's layer comparison (every layer against the best and the last one) and CSV.

The table column (log-loss minus the best's, with its 95% interval), the printed last
lines and the fields of summary.json, from
:func:`sklearn_endo.model_selection.compare_cv_results` on the GridSearchCV's folds.
"""

from __future__ import annotations

import csv

from .model_selection._compare import _format_values


def _compare_layers(search, y):
    """Every layer against the best and the last (CVComparison), or None with a note."""
    from sklearn_endo.model_selection import compare_cv_results

    try:
        return compare_cv_results(search, "layerfeaturetransformer__layer",
                                  metric="neg_log_loss", X=len(y), y=y)
    except ValueError as exc:  # e.g. failed fits: NaN scores on every layer
        print(f"(no layer comparison: {exc})")
        return None


DIFF_LABEL = "log-loss - best [95% CI]"


def _diff_cells(cmp):
    """Per layer ``+0.023 [-0.010, +0.056]   yes``: log-loss minus the best's, its 95%
    interval, and whether the layer is not significantly worse than the best; and the
    header, all of one width."""
    texts = [f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in
             zip(cmp.diff_to_best, cmp.diff_to_best_low, cmp.diff_to_best_high)]
    texts[cmp.best_index] = "best"
    width = max(len(DIFF_LABEL), *map(len, texts))
    cells = [f"{t:>{width}}  {'yes' if tied else 'no':>4}" for t, tied in zip(texts, cmp.tied)]
    return f"{DIFF_LABEL:>{width}}  tied", cells


def _print_comparison(cmp):
    """The last lines: is the best better than the last layer, which layers tie."""
    if cmp is None:
        return
    bl = cmp.best_vs_last
    if cmp.best_index == cmp.last_index:
        print(f"the best layer is the last swept layer ({cmp.last})")
    else:
        print(f"best vs last layer ({cmp.last}): log-loss {bl['difference']:+.3f} [95% CI "
              f"{bl['low']:+.3f}, {bl['high']:+.3f}], p = {bl['pvalue']:.3g}, Holm-adjusted "
              f"{bl['pvalue_holm']:.3g}: {bl['verdict']}")
    print(f"layers not significantly worse than the best (corrected t-test over "
          f"{cmp.n_folds} folds, Holm, alpha 0.05): {_format_values(cmp.tied_candidates)};"
          f" the smallest: {cmp.smallest_tied}")
    print(f"layers within one standard error ({cmp.best_se:.3f}) of the best: "
          f"{_format_values(cmp.one_se_candidates)}")


def _comparison_json(cmp):
    if cmp is None:
        return {}
    bl = cmp.best_vs_last
    return {
        "best_vs_last": {"last_layer": cmp.last, "log_loss_difference": bl["difference"],
                         "ci95": [bl["low"], bl["high"]], "p_value": bl["pvalue"],
                         "p_value_holm": bl["pvalue_holm"],
                         "significant": bl["significant"], "verdict": bl["verdict"]},
        "tied_layers": cmp.tied_candidates,
        "smallest_tied_layer": cmp.smallest_tied,
        "one_se_layers": cmp.one_se_candidates,
        "comparison": {
            "test": "Nadeau-Bengio corrected resampled t-test on per-fold log-loss "
                    "differences, two-sided; Holm over the comparisons with the best",
            "alpha": cmp.alpha, "n_folds": cmp.n_folds, "n_train": cmp.n_train,
            "n_test": cmp.n_test,
        },
    }


def _write_csv(path, res, layers, names, best, metrics, cmp=None):
    """The sweep's metrics.csv: one row per layer, the comparison's columns with ``cmp``."""
    columns = ["layer", "module"]
    for m in metrics:
        name = m.removeprefix("neg_")
        columns += [f"{name}_mean", f"{name}_std"]
    if cmp is not None:
        columns += ["log_loss_diff_to_best", "diff_ci95_low", "diff_ci95_high",
                    "p_vs_best", "p_vs_best_holm", "tied_with_best", "within_one_se"]
    columns += ["fit_time_mean_s", "best"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for i, layer in enumerate(layers):
            row = [layer, names[layer]]
            for m in metrics:
                sign = -1.0 if m.startswith("neg_") else 1.0
                row += [f"{sign * res[f'mean_test_{m}'][i]:.6g}",
                        f"{res[f'std_test_{m}'][i]:.6g}"]
            if cmp is not None:
                row += [f"{v:.6g}" for v in (cmp.diff_to_best[i], cmp.diff_to_best_low[i],
                                             cmp.diff_to_best_high[i], cmp.pvalue_vs_best[i],
                                             cmp.pvalue_vs_best_holm[i])]
                row += [int(cmp.tied[i]), int(cmp.one_se[i])]
            row += [f"{res['mean_fit_time'][i]:.4g}", int(layer == best)]
            w.writerow(row)
