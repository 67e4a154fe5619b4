"""Warm rerun of the CLI sweep: its search against the probe fits alone (issue #16).

Writes ``--n-images`` synthetic endoscopy-like JPEGs (``make_lesions``, 3 classes) as class
folders, runs ``python -m sklearn_endo sweep`` once to fill a feature store (cold), then
once more on the same store (warm, nothing to encode), each in a fresh process. In the
warm run it counts the calls of the weights check (``_weights_signature``) and the
seconds they took. It then times the probe fits alone: the same folds, layers, probe
(``StandardScaler`` + ``LogisticRegression(C=0.1)``) and scorers as the CLI's
``GridSearchCV``, on the features read from the store once, with no transformer.

Both are timed ``--repeats`` times, alternately, and the smallest of each is compared: on
a shared machine one reading of either can be slowed by other jobs.

Target: warm search <= 1.3x the probe fits alone.

Run: ``python benchmarks/bench_warm_rerun.py [--n-images 176] [--encoder
tf_efficientnet_lite0] [--cv 5]``
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# runs the CLI in a child, counting and timing the weights checks
_CHILD = r"""
import json, sys, time
from sklearn_endo import __main__ as cli, _encoders
real = _encoders._weights_signature
stats = {"calls": 0, "seconds": 0.0}
def counting(*a, **k):
    t = time.perf_counter()
    try:
        return real(*a, **k)
    finally:
        stats["calls"] += 1
        stats["seconds"] += time.perf_counter() - t
_encoders._weights_signature = counting
rc = cli.main(json.loads(sys.argv[1]))
print("STATS " + json.dumps(stats))
sys.exit(rc)
"""


def write_images(root, n, size, seed):
    from PIL import Image

    from sklearn_endo.datasets import make_lesions

    X, y = make_lesions(n, n_classes=3, image_size=size, random_state=seed)
    for i, (img, label) in enumerate(zip(X, y)):
        folder = os.path.join(root, f"class_{label}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(img).save(os.path.join(folder, f"{i:04d}.jpg"), quality=90)


def run_cli(argv):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(argv)], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"the sweep failed:\n{proc.stdout}\n{proc.stderr}")
    stats = json.loads(proc.stdout.split("STATS ", 1)[1])
    return wall, stats


def probe_fits_alone(data, store, args):
    """Seconds of the CLI's probe fits and scorers on features read once from the store."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_validate
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sklearn_endo import LayerFeatureTransformer
    from sklearn_endo.__main__ import SWEEP_METRICS
    from sklearn_endo.datasets import load_image_folder

    X, y = load_image_folder(data, return_X_y=True)
    t = LayerFeatureTransformer(args.encoder, pretrained=False, feature_store=store,
                                verbose=False).fit(X[:1])
    feats = t.layer_features(X)  # all from the store
    cv = StratifiedKFold(args.cv, shuffle=True, random_state=0)
    scoring = {m: m for m in SWEEP_METRICS}
    start = time.perf_counter()
    losses = []
    for layer in sorted(feats):
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        res = cross_validate(pipe, feats[layer], y, cv=cv, scoring=scoring)
        losses.append(-np.mean(res["test_neg_log_loss"]))
    return time.perf_counter() - start, losses


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-images", type=int, default=176, help="images (default: 176)")
    ap.add_argument("--image-size", type=int, default=128,
                    help="size of the written JPEGs in pixels (default: 128)")
    ap.add_argument("--encoder", default="tf_efficientnet_lite0",
                    help="timm model name, random weights (default: tf_efficientnet_lite0)")
    ap.add_argument("--cv", type=int, default=5, help="folds (default: 5)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="warm runs and probe timings, alternated; the fastest of each "
                         "is compared (default: 2)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data, store = os.path.join(tmp, "data"), os.path.join(tmp, "store")
        write_images(data, args.n_images, args.image_size, seed=0)
        argv = ["sweep", data, "--encoder", args.encoder, "--random-weights", "--cv",
                str(args.cv), "--store", store, "--quiet"]
        cold_wall, _ = run_cli([*argv, "--out", os.path.join(tmp, "cold")])
        warm, probes = [], []
        for r in range(args.repeats):
            out = os.path.join(tmp, f"warm{r}")
            wall, stats = run_cli([*argv, "--out", out])
            with open(os.path.join(out, "summary.json")) as f:
                summary = json.load(f)
            warm.append((summary["timings_s"]["search"], wall, stats, summary))
            probes.append(probe_fits_alone(data, store, args))

    searches = [w[0] for w in warm]
    _, warm_wall, stats, summary = min(warm, key=lambda w: w[0])
    probe_s, losses = min(probes, key=lambda p: p[0])
    timings = summary["timings_s"]
    print(f"{args.n_images} images, {args.encoder} (random weights), {args.cv} folds, "
          f"{len(losses)} layers; torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"cold run: {cold_wall:.1f} s wall (process)")
    print(f"warm run: {warm_wall:.1f} s wall (process); images encoded "
          f"{summary['images_encoded']}; encoder pass {timings['encoder_pass']:.2f} s; "
          f"search {timings['search']:.2f} s; total in main {timings['total']:.1f} s")
    print(f"weights checks in the warm run: {stats['calls']} calls, "
          f"{stats['seconds']:.2f} s")
    print(f"warm searches: {', '.join(f'{t:.2f}' for t in searches)} s; probe fits "
          f"alone (same folds, probe and scorers): "
          f"{', '.join(f'{p[0]:.2f}' for p in probes)} s")
    ratio = timings["search"] / probe_s  # fastest against fastest
    print(f"warm search / probe fits alone: {ratio:.2f}x (target <= 1.3x)")
    print(f"best layer check: CLI {summary['best_layer']}, probes alone "
          f"{min(range(len(losses)), key=losses.__getitem__)}")


if __name__ == "__main__":
    main()
