"""The layer-wise study's scale in one pass: 10,662 images x 25 layers x width 1024.

The layer-wise study sweeps the 24 blocks of a ViT-L over HyperKvasir's 10,662
labelled images. One stored row is 25 layers x 3 poolings x 1024 float32 = 307 kB, so
the feature store holds 3.3 GB. This benchmark runs a search at that scale with a
stand-in encoder: a timm ``VisionTransformer`` with a ViT-L's layout (class token +
patch tokens, embed_dim=1024, 24 blocks, 16 heads) whose blocks are cheap low-rank
residual modules (``x + up(tanh(down(x)))``, rank 32) on 32 px inputs with 8 px
patches (16 patch tokens), so that the whole run takes minutes on a 2-core CPU. Every
block changes the features, so the layers differ as a ViT-L's do; only the per-image
cost of the forward pass is cut, not what the store holds.

The search is what the study does: choose the layer on cross-validated log-loss, here
a 5-fold ``GridSearchCV`` over all 25 layers of
``Pipeline([LayerFeatureTransformer(stand_in, feature_store="memory" default),
LogisticRegression()])`` (125 fits; ``layer_sweep`` would always make one pass, since
it asks for every layer at once; a GridSearchCV asks per candidate and fold, which is
where a store that evicts costs passes). Images: synthetic 32 x 32 RGB noise, class 1
with a reddish square (a learnable signal; CV log-loss ~0.3).

Each case runs in a fresh subprocess (its own peak RSS) and prints:

* encoder passes per image: images that reached the encoder's ``forward`` (a forward
  pre-hook counts them) / unique images; also after each layer's 5 folds;
* wall time of the search (cold store: it includes the pass) and the encoder's share
  (sum of the encoder's forward calls, pooling hooks included);
* peak RSS (``ru_maxrss``), RSS before the search, the store's bytes and bound.

Cases:

``defaults``
    No ``SKLEARN_ENDO_STORE_BYTES`` in the environment: the package's default bound.
``before``
    The old default bound, ``SKLEARN_ENDO_STORE_BYTES=2147483648`` (scaled by
    ``n_images / 10662`` when ``--n-images`` differs, so the store overflows it in the
    same proportion), over the first ``--before-layers`` layers (default 2: each fit
    costs about half a pass there; ``--before-layers 25``, the whole search, measured
    68 passes per image and took 77 min on a loaded 2-core CPU).
``disk`` (only with ``--cases ...,disk``)
    ``feature_store=<a temporary directory>`` with the in-memory part bounded by the
    old 2 GiB: rows evicted from memory are read back from their files, not computed.
``float16`` (part of ``defaults``, skip with ``--no-fp16``)
    The per-layer features are read back from the store (no pass), rounded to float16
    and searched again with the same probe and folds: same best layer? CV log-losses
    within 1e-3?

Run: ``python benchmarks/bench_seed_scale.py`` (26 min for the defaults case and its
float16 check on 2 heavily loaded cores, a few minutes for the old-bound case);
``--quick`` runs 1,000 images and 2 layers in the old-bound case.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from torch import nn

STUDY_IMAGES = 10662
OLD_BOUND = 2 * 1024**3
DEPTH, WIDTH, HEADS, IMG, PATCH, RANK = 24, 1024, 16, 32, 8, 32


# ---------------------------------------------------------------- the stand-in encoder
class LowRankBlock(nn.Module):
    """A cheap residual block: ``x + up(tanh(down(x)))`` with a rank-``rank`` bottleneck.

    Accepts (and ignores) the keyword arguments timm's ``VisionTransformer`` passes to
    its ``block_fn`` (num_heads, mlp_ratio, norm_layer, ...).
    """

    def __init__(self, dim, rank=RANK, **_):
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim, bias=False)

    def forward(self, x):
        return x + self.up(torch.tanh(self.down(x)))


def make_stand_in():
    """A ViT-L-shaped timm ``VisionTransformer`` with cheap blocks; same weights every call.

    24 blocks, width 1024, 16 heads, a class token and 16 patch tokens (32 px input,
    8 px patches). Module-level, so it pickles by reference and every process builds
    the same weights (seed 0; the global RNG is left as it was).
    """
    from timm.models.vision_transformer import VisionTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = VisionTransformer(img_size=IMG, patch_size=PATCH, embed_dim=WIDTH,
                                  depth=DEPTH, num_heads=HEADS, num_classes=0,
                                  block_fn=LowRankBlock)
        for block in model.blocks:
            nn.init.normal_(block.down.weight, std=WIDTH ** -0.5)
            nn.init.normal_(block.up.weight, std=0.5 * RANK ** -0.5)
    return model.eval()


def make_images(n, size=IMG, seed=0):
    """(n, size, size, 3) uint8 noise; class 1 has a reddish square (balanced classes)."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    X = rng.normal(128, 40, (n, size, size, 3)) + rng.normal(0, 2, (n, 1, 1, 3))
    s = size * 3 // 8
    for i in np.flatnonzero(y):
        r, c = rng.integers(0, size - s, 2)
        X[i, r:r + s, c:c + s, 0] += 40
        X[i, r:r + s, c:c + s, 1] -= 10
    return np.clip(X, 0, 255).astype(np.uint8), y


# ---------------------------------------------------------------- measuring
class EncoderCounter:
    """Counts the images that reach ``module.forward`` and the time spent in it."""

    def __init__(self, module):
        self.images = 0
        self.seconds = 0.0
        self._start = None
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _pre(self, module, args):
        self.images += args[0].shape[0]
        self._start = time.perf_counter()

    def _post(self, module, args, output):
        self.seconds += time.perf_counter() - self._start


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def rss_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


_FEATURES = {}  # layer -> float16 features of every image (float16 check)


class SelectPrecomputed(TransformerMixin, BaseEstimator):
    """Rows of precomputed features of one layer, X being a column of row indices.

    The features live in the module-level ``_FEATURES``, so ``clone`` never copies them.
    """

    def __init__(self, layer=0):
        self.layer = layer

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return _FEATURES[self.layer][np.asarray(X)[:, 0]].astype(np.float32)


# ---------------------------------------------------------------- one case (child)
def run_case(args):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import get_scorer
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline

    from sklearn_endo import LayerFeatureTransformer
    from sklearn_endo._store import get_store

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    X, y = make_images(args.n_images)
    gen_s = time.perf_counter() - t0
    feature_store = args.store_dir if args.case == "disk" else "memory"
    lft = LayerFeatureTransformer(make_stand_in, device=args.device,
                                  batch_size=args.batch_size, verbose=False,
                                  feature_store=feature_store)
    lft.fit(X[:2])
    if lft.n_layers_ != DEPTH:
        raise RuntimeError(f"the package found {lft.n_layers_} blocks, expected {DEPTH}")
    counter = EncoderCounter(lft._get_handle().module)
    n_layers = args.layers
    cv = StratifiedKFold(args.folds, shuffle=True, random_state=0)
    pipe = make_pipeline(lft, LogisticRegression(C=args.C, max_iter=1000))
    log_loss = get_scorer("neg_log_loss")
    after_fit = []  # encoder images counted when each (candidate, fold) is scored

    def scorer(est, X_, y_):
        score = log_loss(est, X_, y_)  # transforms the test fold first
        after_fit.append(counter.images)
        return score

    store = get_store(feature_store)
    rss_before = rss_mb()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        search = GridSearchCV(pipe, {"layerfeaturetransformer__layer": list(range(n_layers))},
                              cv=cv, scoring=scorer, refit=False).fit(X, y)
        search_s = time.perf_counter() - start
    res = {
        "case": args.case, "n_images": len(X), "layers": n_layers, "folds": args.folds,
        "store_bound": store.max_bytes, "env_bound": os.environ.get("SKLEARN_ENDO_STORE_BYTES"),
        "store_bytes": store.nbytes, "store_entries": len(store),
        "encoder_images": counter.images, "passes": counter.images / len(X),
        "passes_per_layer": [after_fit[(k + 1) * args.folds - 1] / len(X)
                             for k in range(n_layers)],
        "search_s": search_s, "encoder_s": counter.seconds, "gen_s": gen_s,
        "rss_before_mb": rss_before, "peak_rss_search_mb": peak_rss_mb(),
        "scores": search.cv_results_["mean_test_score"].tolist(),
        "fold_scores": [search.cv_results_[f"split{k}_test_score"].tolist()
                        for k in range(args.folds)],
        "warnings": sorted({f"{w.category.__name__}: {w.message}" for w in caught
                            if not issubclass(w.category, (DeprecationWarning,
                                                           FutureWarning))})[:5],
        "threads": torch.get_num_threads(), "device": args.device,
    }
    res["best_layer"] = int(np.argmax(res["scores"]))
    if args.case == "disk":
        res["disk_bytes"] = sum(os.path.getsize(os.path.join(root, f))
                                for root, _, files in os.walk(args.store_dir) for f in files)
        res["disk_files"] = sum(len(files) for _, _, files in os.walk(args.store_dir))
    if args.case == "defaults" and args.fp16:
        res.update(fp16_check(args, lft, X, y, cv, counter, res))
    print("RESULT " + json.dumps(res), flush=True)


def fp16_check(args, lft, X, y, cv, counter, res):
    """Search again on the stored features rounded to float16; compare the decisions."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    before = counter.images
    start = time.perf_counter()
    feats = lft.layer_features(X, layers=list(range(args.layers)))  # store lookups
    lookup_s = time.perf_counter() - start
    for la, a in feats.items():
        _FEATURES[la] = a.astype(np.float16)
    finite = all(np.isfinite(h).all() for h in _FEATURES.values())
    rel = max(float(np.max(np.abs(_FEATURES[la].astype(np.float32) - a))
                    / np.max(np.abs(a))) for la, a in feats.items())
    del feats
    start = time.perf_counter()
    idx = np.arange(len(X))[:, None]
    pipe = make_pipeline(SelectPrecomputed(), LogisticRegression(C=args.C, max_iter=1000))
    search = GridSearchCV(pipe, {"selectprecomputed__layer": list(range(args.layers))},
                          cv=cv, scoring="neg_log_loss", refit=False).fit(idx, y)
    fp16_s = time.perf_counter() - start
    s16 = search.cv_results_["mean_test_score"]
    f16 = np.array([search.cv_results_[f"split{k}_test_score"] for k in range(args.folds)])
    f32 = np.array(res["fold_scores"])
    return {
        "fp16_extra_passes": (counter.images - before) / len(X),
        "fp16_lookup_s": lookup_s, "fp16_search_s": fp16_s,
        "fp16_best_layer": int(np.argmax(s16)),
        "fp16_max_mean_diff": float(np.max(np.abs(s16 - np.array(res["scores"])))),
        "fp16_max_fold_diff": float(np.max(np.abs(f16 - f32))),
        "fp16_max_rel_rounding": rel, "fp16_finite": finite,
        "peak_rss_end_mb": peak_rss_mb(),
    }


# ---------------------------------------------------------------- driver (parent)
def spawn(args, case, layers, env_bound, store_dir=None):
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    env.pop("SKLEARN_ENDO_STORE_BYTES", None)
    if env_bound is not None:
        env["SKLEARN_ENDO_STORE_BYTES"] = str(env_bound)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", case,
           "--n-images", str(args.n_images), "--layers", str(layers),
           "--folds", str(args.folds), "--batch-size", str(args.batch_size),
           "--device", args.device, "--threads", str(args.threads), "--C", str(args.C)]
    if not args.fp16:
        cmd.append("--no-fp16")
    if store_dir is not None:
        cmd += ["--store-dir", store_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"case {case} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def report(res, title):
    gb = 1e9
    print(f"\n{title}")
    bound = res["store_bound"]
    src = (f"SKLEARN_ENDO_STORE_BYTES={res['env_bound']}" if res["env_bound"]
           else "package default")
    print(f"  store bound {bound / 2**30:.2f} GiB ({src}); store holds "
          f"{res['store_bytes'] / gb:.2f} GB in {res['store_entries']} entries")
    print(f"  {res['folds']}-fold GridSearchCV over {res['layers']} layers "
          f"({res['layers'] * res['folds']} fits): {res['passes']:.2f} encoder passes per "
          f"image ({res['encoder_images']} images through forward for {res['n_images']})")
    per = res["passes_per_layer"]
    shown = sorted({0, 1, len(per) // 2, len(per) - 1})
    print("  cumulative passes per image after the folds of layer " + ", ".join(
        f"{k}: {per[k]:.2f}" for k in shown))
    print(f"  search wall time {res['search_s']:.1f} s (cold store, pass included), of which "
          f"encoder forward {res['encoder_s']:.1f} s")
    print(f"  RSS before the search {res['rss_before_mb'] / 1024:.2f} GiB, peak RSS "
          f"(ru_maxrss) {res['peak_rss_search_mb'] / 1024:.2f} GiB")
    if res["layers"] > 1:
        print(f"  best layer by CV log-loss {res['best_layer']} "
              f"(log-loss {-max(res['scores']):.4f})")
    for w in res["warnings"]:
        print(f"  warning: {w[:300]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", type=int, default=STUDY_IMAGES)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    ap.add_argument("--C", type=float, default=1.0, help="LogisticRegression's C")
    ap.add_argument("--before-layers", type=int, default=2,
                    help="layers searched with the old 2 GiB bound (0 skips that case)")
    ap.add_argument("--no-fp16", dest="fp16", action="store_false",
                    help="skip the float16 decision check")
    ap.add_argument("--cases", default="defaults,before",
                    help="comma-separated cases among defaults, before, disk "
                         "(default: defaults,before)")
    ap.add_argument("--quick", action="store_true", help="1,000 images (a smoke run)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--layers", type=int, default=DEPTH + 1, help=argparse.SUPPRESS)
    ap.add_argument("--store-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _device import check_device  # the shared check: refuses what cannot run here

    args.device = str(check_device(ap, args.device))
    if args.quick and args.n_images == STUDY_IMAGES:
        args.n_images = 1000
    if args.child:
        args.case = args.child
        return run_case(args)

    row = (DEPTH + 1) * 3 * WIDTH * 4
    print(f"stand-in ViT-L: {DEPTH} blocks + embedding = {DEPTH + 1} layers, width {WIDTH}, "
          f"class token + {(IMG // PATCH) ** 2} patch tokens, low-rank blocks; "
          f"{args.n_images} images; device {args.device}; {args.threads} torch threads; "
          f"{os.cpu_count()} CPUs (shared with other jobs: timings are loaded-machine "
          f"figures)")
    print(f"one stored row = {DEPTH + 1} layers x 3 poolings x {WIDTH} x 4 B = {row / 1e3:.1f} "
          f"kB; all images: {args.n_images * row / 1e9:.2f} GB")
    try:
        import psutil

        print(f"physical memory {psutil.virtual_memory().total / 2**30:.1f} GiB")
    except ImportError:
        pass

    cases = {c.strip() for c in args.cases.split(",")}
    ok = True
    if "defaults" in cases:
        ok = defaults_case(args)
    if "before" in cases and args.before_layers > 0:
        before_case(args)
    if "disk" in cases:
        ok = disk_case(args) and ok
    return 0 if ok else 1


def defaults_case(args):
    res = spawn(args, "defaults", DEPTH + 1, None)
    report(res, "DEFAULTS (feature_store='memory', default bound)")
    ok = res["passes"] <= 1.0
    print(f"  target <= 1.0 passes per image: {'met' if ok else 'NOT met'}")
    if args.fp16:
        print("\nFLOAT16 ROWS (same search on the stored features rounded to float16)")
        print(f"  extra encoder passes {res['fp16_extra_passes']:.2f}; largest rounding error "
              f"{res['fp16_max_rel_rounding']:.1e} of a layer's largest |value|; all finite: "
              f"{res['fp16_finite']}")
        print(f"  best layer float32 {res['best_layer']} vs float16 {res['fp16_best_layer']}; "
              f"max |diff| of CV log-loss: mean over folds {res['fp16_max_mean_diff']:.1e}, "
              f"any fold {res['fp16_max_fold_diff']:.1e} (criterion 1e-3)")
        print(f"  peak RSS with the float16 copy {res['peak_rss_end_mb'] / 1024:.2f} GiB")
    return ok


def before_case(args):
    bound = int(OLD_BOUND * args.n_images / STUDY_IMAGES)
    old = spawn(args, "before", args.before_layers, bound)
    report(old, f"BEFORE (old bound: SKLEARN_ENDO_STORE_BYTES={bound}, first "
                f"{args.before_layers} layers only)")
    fits = old["layers"] * old["folds"]
    print(f"  {old['passes'] / fits:.2f} passes per image per fit: a search over all "
          f"{DEPTH + 1} layers would make about "
          f"{old['passes'] / fits * (DEPTH + 1) * old['folds']:.0f} passes per image")


def disk_case(args):
    import tempfile

    bound = int(OLD_BOUND * args.n_images / STUDY_IMAGES)
    with tempfile.TemporaryDirectory(prefix="seed_scale_store_") as folder:
        res = spawn(args, "disk", DEPTH + 1, bound, store_dir=folder)
    report(res, f"DISK STORE (feature_store=<directory>, in-memory part bounded by the old "
                f"SKLEARN_ENDO_STORE_BYTES={bound})")
    print(f"  on disk: {res['disk_bytes'] / 1e9:.2f} GB in {res['disk_files']} files")
    ok = res["passes"] <= 1.0
    print(f"  target <= 1.0 passes per image: {'met' if ok else 'NOT met'}")
    return ok


if __name__ == "__main__":
    sys.exit(main())
