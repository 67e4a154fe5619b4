"""Self-supervised pretraining on unlabelled images, judged by frozen-encoder probes.

A small ViT (4 blocks, width 64, 4-pixel patches at 32 x 32) is pretrained from random
weights on 1024 unlabelled ``make_lesions`` images (5 lesion patterns, lesions 30 to 50 %
of the image wide) with each method of :class:`~sklearn_endo.ssl.SelfSupervisedPretrainer`
(Barlow Twins, MoCo v3, MAE, DINO): 10 epochs of batch 64, 160 optimizer steps. Each
frozen encoder is then judged on a separate labelled set drawn independently (600
images to fit the probe, 1000 to test it): k-NN accuracy (k=20, DINO weighting,
cosine) and linear-probe accuracy, with 95 % Wilson intervals, next to the same
architecture at random init. With the ``lite0`` extra, the ImageNet-pretrained
tf_efficientnet_lite0 is compared before and after continued Barlow Twins pretraining
(``--lite0``). Finally the per-layer k-NN curve of the best encoder is drawn.

The settings (lesion size, 1024 images, 10 epochs) were chosen on a development
labelled set (``make_lesions(..., random_state=5)``), never on the test set
(``random_state=2``); docs/ssl.md has both runs.

Runs offline on CPU: ``python examples/ssl_pretraining.py --out-dir ssl_out [--lite0]``;
docs/ssl.md gives the time of one run. ``--epochs 1 --n-unlabelled 128 --methods mae``
takes a minute.
"""

import argparse
import os
import time

import timm
import torch

from sklearn_endo import (
    KNNProbeClassifier,
    LayerFeatureTransformer,
    LinearProbeClassifier,
    WeightsUnavailableError,
    layer_sweep,
)
from sklearn_endo.datasets import make_lesions
from sklearn_endo.metrics import accuracy_ci
from sklearn_endo.ssl import SelfSupervisedPretrainer

IMG = 32
LESION = (0.3, 0.5)  # lesion diameter, fraction of the image


def small_vit():
    """The same random initial weights on every call."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return timm.create_model("vit_tiny_patch16_224", img_size=IMG, patch_size=4, depth=4,
                                 embed_dim=64, num_heads=2, num_classes=0)


def embeddings(encoder, X, **kw):
    """Pooled last-block features, the same way for every encoder."""
    t = LayerFeatureTransformer(encoder, layer=-1, pooling="mean", img_size=IMG,
                                feature_store=None, verbose=False, **kw)
    return t.fit_transform(X)


def probes(F_train, y_train, F_test, y_test):
    knn = KNNProbeClassifier(n_neighbors=20).fit(F_train, y_train)
    lin = LinearProbeClassifier(solver="adam", lr=1e-3, max_epochs=100, batch_size=16,
                                standardize=True, random_state=0).fit(F_train, y_train)
    return accuracy_ci(y_test, knn.predict(F_test)), accuracy_ci(y_test, lin.predict(F_test))


def fmt(ci):
    return f"{ci.accuracy:.3f} [{ci.low:.3f}, {ci.high:.3f}]"


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out-dir", default="ssl_pretraining",
                    help="folder for the encoders, the table and the plot")
    ap.add_argument("--n-unlabelled", type=int, default=1024,
                    help="unlabelled images for pretraining")
    ap.add_argument("--n-probe-train", type=int, default=600,
                    help="labelled images that train the linear probes")
    ap.add_argument("--n-test", type=int, default=1000,
                    help="labelled images that test them")
    ap.add_argument("--test-seed", type=int, default=2,
                    help="make_lesions seed of the labelled set (5: the development set)")
    ap.add_argument("--epochs", type=int, default=10, help="pretraining epochs")
    ap.add_argument("--warmup-epochs", type=int, default=1,
                    help="linear lr warm-up epochs (default: %(default)s; DINO's recipe: "
                         "a tenth of --epochs)")
    ap.add_argument("--batch-size", type=int, default=64,
                    help="pretraining batch size")
    ap.add_argument("--methods", default="barlowtwins,mocov3,mae,dino",
                    help="comma-separated pretraining methods")
    ap.add_argument("--lite0", action="store_true",
                    help="also continue pretraining the ImageNet tf_efficientnet_lite0")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    # unlabelled pool and a labelled evaluation set, drawn independently
    X_unl, _ = make_lesions(args.n_unlabelled, n_classes=5, image_size=IMG,
                            lesion_size=LESION, random_state=1)
    X_lab, y_lab = make_lesions(args.n_probe_train + args.n_test, n_classes=5,
                                image_size=IMG, lesion_size=LESION,
                                random_state=args.test_seed)
    half = args.n_probe_train
    y_tr, y_te = y_lab[:half], y_lab[half:]
    print(f"{args.n_unlabelled} unlabelled images; probes trained on {half}, tested on "
          f"{len(y_te)} labelled ones (5 classes, chance 0.2; seed {args.test_seed})")

    rows = []
    encoders = {}
    F = embeddings(small_vit, X_lab)
    rows.append(("small ViT, random init", "-", *probes(F[:half], y_tr, F[half:], y_te)))
    encoders["small ViT, random init"] = small_vit()
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        pre = SelfSupervisedPretrainer(small_vit, method=method, img_size=IMG,
                                       max_epochs=args.epochs, batch_size=args.batch_size,
                                       lr=1e-3, warmup_epochs=args.warmup_epochs,
                                       random_state=0,
                                       verbose=False).fit(X_unl)
        dur = time.perf_counter() - t0
        name = f"small ViT, {method}"
        F = embeddings(pre.encoder_, X_lab)
        losses = pre.history_[:, "train_loss"]
        rows.append((name, f"{dur:.0f} s", *probes(F[:half], y_tr, F[half:], y_te)))
        encoders[name] = pre.encoder_
        print(f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {dur:.0f} s, "
              f"{pre.history_[-1, 'n_steps']} steps "
              f"({pre.history_[-1, 'images_per_s']:.1f} images/s); k-NN {fmt(rows[-1][2])}, "
              f"linear {fmt(rows[-1][3])}", flush=True)

    if args.lite0:
        try:
            F = embeddings("tf_efficientnet_lite0", X_lab, pretrained=True)
        except WeightsUnavailableError as exc:
            print(f"lite0 skipped: {exc}")
        else:
            rows.append(("lite0, ImageNet", "-", *probes(F[:half], y_tr, F[half:], y_te)))
            t0 = time.perf_counter()
            pre = SelfSupervisedPretrainer("tf_efficientnet_lite0", pretrained=True,
                                           method="barlowtwins", img_size=IMG,
                                           max_epochs=args.epochs,
                                           batch_size=args.batch_size, lr=1e-4,
                                           random_state=0, verbose=False).fit(X_unl)
            dur = time.perf_counter() - t0
            F = embeddings(pre.encoder_, X_lab)
            rows.append(("lite0, ImageNet + barlowtwins", f"{dur:.0f} s",
                         *probes(F[:half], y_tr, F[half:], y_te)))
            encoders["lite0, ImageNet + barlowtwins"] = pre.encoder_

    print(f"\n{'encoder':32s} {'pretrain':>8s}  {'k-NN accuracy [95% Wilson]':28s} "
          f"linear-probe accuracy [95% Wilson]")
    for name, dur, knn, lin in rows:
        print(f"{name:32s} {dur:>8s}  {fmt(knn):28s} {fmt(lin)}")
    base = rows[0][2]
    for name, _, knn, _ in rows[1:]:
        if name.startswith("small ViT"):
            verdict = ("above random init, intervals apart" if knn.low > base.high
                       else "intervals overlap random init's")
            print(f"k-NN, {name}: {verdict}")

    # the per-layer k-NN curve of the encoder with the best k-NN accuracy
    best = max(rows, key=lambda r: r[2].accuracy)[0]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = layer_sweep(X_lab, y_lab, encoders[best], probe="knn", cv=5, random_state=0,
                        img_size=IMG, verbose=False)
    disp = sweep.plot("accuracy")
    disp.ax_.set_title(f"Per-layer k-NN accuracy (5-fold CV): {best}")
    path = os.path.join(args.out_dir, "ssl_layer_curve.png")
    disp.figure_.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(disp.figure_)
    print(f"\nbest k-NN encoder: {best}; per-layer curve written to {path}")


if __name__ == "__main__":
    main()
