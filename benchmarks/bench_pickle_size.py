"""Pickle size of each fitted estimator against the size of its weights.

A pickle should hold the weights once (#16): for FineTuneClassifier and UBCClassifier
the network ``module_``, for SelfSupervisedPretrainer the encoder ``encoder_``. Each is
fitted for one epoch on 8 random 64 px images (sizes do not depend on the data), then
pickled; the script prints the pickle's MiB, the weights' MiB (state_dict bytes) and
their ratio. Target: ratio <= 1.2.

    OMP_NUM_THREADS=1 python benchmarks/bench_pickle_size.py --encoder resnet18
"""

from __future__ import annotations

import argparse
import pickle
import warnings

import numpy as np


def state_mib(module):
    return sum(v.numel() * v.element_size() for v in module.state_dict().values()) / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="resnet18", help="timm / smp name")
    args = parser.parse_args()
    from sklearn_endo import UBCClassifier
    from sklearn_endo.finetune import FineTuneClassifier
    from sklearn_endo.ssl import SelfSupervisedPretrainer

    rng = np.random.default_rng(0)
    X = rng.integers(0, 255, (8, 64, 64, 3), dtype=np.uint8)
    y = np.array([0, 1] * 4)
    common = dict(max_epochs=1, batch_size=4, random_state=0, verbose=0)
    cases = [
        ("FineTuneClassifier(freeze='none')",
         FineTuneClassifier(args.encoder, pretrained=False, img_size=64, **common), "module_"),
        ("FineTuneClassifier(freeze='all')",
         FineTuneClassifier(args.encoder, pretrained=False, img_size=64, freeze="all",
                            **common), "module_"),
        ("UBCClassifier (U-Net)",
         UBCClassifier(args.encoder, pretrained=False, image_size=64, alpha=1.0, **common),
         "module_"),
        ("SelfSupervisedPretrainer(mocov3)",
         SelfSupervisedPretrainer(args.encoder, method="mocov3", img_size=64, **common),
         "encoder_"),
    ]
    print(f"{'estimator':36s} {'pickle MiB':>10s} {'weights MiB':>11s} {'ratio':>6s}")
    for name, est, attr in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X) if attr == "encoder_" else est.fit(X, y)
        size = len(pickle.dumps(est)) / 2**20
        weights = state_mib(getattr(est, attr))
        print(f"{name:36s} {size:10.1f} {weights:11.1f} {size / weights:6.2f}")


if __name__ == "__main__":
    main()
