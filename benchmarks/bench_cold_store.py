"""A search with n_jobs workers on a cold directory store: encoder passes per image.

Runs a 5-fold ``GridSearchCV`` over every layer of a small ViT (a
``LayerFeatureTransformer`` in front of a ``LogisticRegression`` probe) on a cold
directory feature store with ``n_jobs`` = 1, 2 and 4, each in a fresh process, with
store claims on (the default) and off (``SKLEARN_ENDO_STORE_CLAIMS=0``, the behaviour
before claims: every worker encodes what it misses). For each it prints the images
encoded in all processes (counted by a forward hook in every worker), the unique
images, passes per image, which processes encoded how many, the search's wall time
(the loky workers are started and have imported torch before the clock starts) and the
largest difference of ``mean_test_score`` from the n_jobs=1 run.

Target (issue #10): <= 1.05 passes per image with n_jobs=4.

Run: ``python benchmarks/bench_cold_store.py [--device cpu] [--n-samples 160]
[--n-jobs 1 2 4] [--no-before]``
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from _device import add_device_argument, check_device

HERE = os.path.dirname(os.path.abspath(__file__))


class CountingEncoder:
    """Zero-argument factory: a seeded random-init timm model that logs its forwards.

    Picklable (loky sends it to the workers by value) and the same in every process, so
    every worker builds the same weights (one store namespace) and appends
    ``<pid> <images>`` to ``log`` for every forward.
    """

    def __init__(self, name, img_size, log):
        self.name, self.img_size, self.log = name, img_size, log

    def __call__(self):
        import timm
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = timm.create_model(self.name, pretrained=False, num_classes=0,
                                      img_size=self.img_size)
        model.register_forward_pre_hook(_LogForward(self.log))
        return model.eval()


class _LogForward:
    def __init__(self, log):
        self.log = log

    def __call__(self, module, args):
        with open(self.log, "a") as f:  # O_APPEND: whole lines from every process
            f.write(f"{os.getpid()} {int(args[0].shape[0])}\n")


def _warm():
    import timm  # noqa: F401

    import sklearn_endo  # noqa: F401

    return os.getpid()


def child(args):
    """One search in this process; prints one JSON line."""
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline

    from sklearn_endo import LayerFeatureTransformer
    from sklearn_endo.datasets import make_lesions

    X, y = make_lesions(args.n_samples, n_classes=2, image_size=args.image_size,
                        random_state=0)[:2]
    work = tempfile.mkdtemp(prefix="bench-cold-store-")
    log = os.path.join(work, "forwards.log")
    encoder = CountingEncoder(args.encoder, args.img_size, log)
    lft = LayerFeatureTransformer(encoder, img_size=args.img_size, device=args.device,
                                  batch_size=args.batch_size, verbose=False,
                                  feature_store=os.path.join(work, "store"))
    n_layers = lft.fit(X[:2]).n_layers_
    open(log, "w").close()  # fit does not encode; start the count here anyway
    pipe = make_pipeline(lft, LogisticRegression(C=0.1, max_iter=1000))
    grid = {"layerfeaturetransformer__layer": list(range(n_layers + 1))}
    search = GridSearchCV(pipe, grid, cv=StratifiedKFold(5, shuffle=True, random_state=0),
                          scoring="neg_log_loss", n_jobs=args.jobs)
    if args.jobs > 1:  # start the workers (imports) outside the timed search
        pids = set(joblib.Parallel(n_jobs=args.jobs)(
            joblib.delayed(_warm)() for _ in range(4 * args.jobs)))
    else:
        pids = {os.getpid()}
    start = time.perf_counter()
    search.fit(X, y)
    wall = time.perf_counter() - start
    per_pid = {}
    for line in open(log).read().splitlines():
        pid, n = line.split()
        per_pid[pid] = per_pid.get(pid, 0) + int(n)
    unique = len({bytes(x) for x in X})
    print(json.dumps({
        "n_jobs": args.jobs, "claims": os.environ.get("SKLEARN_ENDO_STORE_CLAIMS", "1"),
        "unique": unique, "encoded": sum(per_pid.values()),
        "per_process": sorted(per_pid.values(), reverse=True), "workers": len(pids),
        "wall_s": wall, "candidates": len(grid["layerfeaturetransformer__layer"]),
        "scores": search.cv_results_["mean_test_score"].tolist(),
        "best_layer": search.best_params_["layerfeaturetransformer__layer"]}))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_argument(ap)
    ap.add_argument("--encoder", default="vit_small_patch16_224")
    ap.add_argument("--img-size", type=int, default=112)
    ap.add_argument("--image-size", type=int, default=96, help="size of the made images")
    ap.add_argument("--n-samples", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-jobs", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--no-before", action="store_true",
                    help="skip the runs with claims off (SKLEARN_ENDO_STORE_CLAIMS=0)")
    ap.add_argument("--jobs", type=int, help=argparse.SUPPRESS)  # child: one run
    args = ap.parse_args()
    check_device(ap, args.device)
    if args.jobs is not None:
        return child(args)

    import torch

    print(f"{args.encoder} at {args.img_size} px, {args.n_samples} images, 5-fold "
          f"GridSearchCV over every layer + LogisticRegression, device {args.device}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}; a cold directory store "
          f"per run, each run in a fresh process", flush=True)
    runs = []
    for claims in (["1"] if args.no_before else ["0", "1"]):
        for jobs in args.n_jobs:
            env = dict(os.environ, SKLEARN_ENDO_STORE_CLAIMS=claims)
            cmd = [sys.executable, os.path.join(HERE, "bench_cold_store.py"),
                   "--jobs", str(jobs), "--device", args.device, "--encoder", args.encoder,
                   "--img-size", str(args.img_size), "--image-size", str(args.image_size),
                   "--n-samples", str(args.n_samples), "--batch-size", str(args.batch_size)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"run n_jobs={jobs} claims={claims} failed:\n{out.stderr}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            runs.append(res)
            ref = next((r for r in runs if r["n_jobs"] == 1), res)
            diff = float(np.max(np.abs(np.subtract(res["scores"], ref["scores"]))))
            print(f"claims {'on ' if claims == '1' else 'off'} n_jobs={jobs}: "
                  f"{res['encoded']} images encoded in all processes for {res['unique']} "
                  f"unique = {res['encoded'] / res['unique']:.2f} passes per image "
                  f"(per process: {res['per_process']}); search {res['wall_s']:.1f} s "
                  f"({res['candidates']} candidates x 5 folds); best layer "
                  f"{res['best_layer']}; max |score - n_jobs=1| {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
