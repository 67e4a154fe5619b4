"""One worker of an Optuna layer search shared by many processes or machines.

Start this script as often as you like, on one machine or many: every copy joins the
same study through ``--storage`` and the same feature store through ``--store``, asks
for trials (a layer of the encoder, scored by stratified CV log-loss of a
standardised logistic-regression probe) and writes the results back. The encoder is
frozen and its features are stored by image content, so only the first trial that meets
an image runs the encoder on it; every trial records how many images it encoded in its
user attribute ``images_encoded``.

``--storage`` is a database URL (``postgresql://user:password@host/db``: the choice for
clusters, with heartbeats that fail and retry the trials of a crashed worker) or a
journal file path (processes on one machine). See docs/scaling.md.

Run, e.g. on each of four GPU machines::

    python examples/optuna_shared_study.py /data/kvasir-dataset-v2 \\
        --storage postgresql://optuna:secret@db-host/optuna --study vitl-kvasir \\
        --store /shared/features --encoder vit_large_patch16_224 --n-trials 10
"""

import argparse
import os
import sys

import optuna
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_endo import LayerFeatureTransformer, WeightsUnavailableError
from sklearn_endo.datasets import load_image_folder


def make_storage(spec):
    """A database URL gives an RDBStorage with heartbeats; a path, a journal file."""
    if "://" in spec:
        return optuna.storages.RDBStorage(
            spec, heartbeat_interval=60, grace_period=180,
            failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=2))
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(spec))


def make_pipe(args):
    features = LayerFeatureTransformer(
        args.encoder, pretrained=not args.random_weights, img_size=args.img_size,
        device=args.device, feature_store=args.store, verbose=False)
    return make_pipeline(features, StandardScaler(),
                         LogisticRegression(C=0.1, max_iter=2000))


def cv_log_loss(pipe, layer, X, y, cv, random_state=0):
    """Mean stratified CV log-loss of ``pipe`` at ``layer`` (the trial's objective)."""
    model = clone(pipe).set_params(layerfeaturetransformer__layer=layer)
    folds = StratifiedKFold(cv, shuffle=True, random_state=random_state)
    return -cross_val_score(model, X, y, cv=folds, scoring="neg_log_loss").mean()


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("data_dir", help="folder of class folders (load_image_folder)")
    ap.add_argument("--storage", required=True,
                    help="database URL, or a journal file path (one machine)")
    ap.add_argument("--study", default="layers", help="study name")
    ap.add_argument("--store", required=True,
                    help="feature store directory, shared by all workers")
    ap.add_argument("--encoder", default="tf_efficientnet_lite0",
                    help="timm model name of the frozen encoder")
    ap.add_argument("--random-weights", action="store_true",
                    help="random instead of pretrained weights")
    ap.add_argument("--img-size", type=int, default=None,
                    help="encoder input size in pixels (None: the encoder's own)")
    ap.add_argument("--device", default="auto",
                    help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, ...")
    ap.add_argument("--cv", type=int, default=5, help="stratified folds per trial")
    ap.add_argument("--n-trials", type=int, default=10,
                    help="trials this worker runs")
    ap.add_argument("--seed", type=int, default=None,
                    help="sampler seed; give each worker its own")
    args = ap.parse_args(argv)

    X, y = load_image_folder(args.data_dir, return_X_y=True)
    pipe = make_pipe(args)
    try:
        features = pipe[0].fit(X[:1])
    except WeightsUnavailableError as exc:
        print(f"{exc}\n(--random-weights runs on random weights)", file=sys.stderr)
        return 2
    seen = [0]  # images that reached the encoder in this process
    hook = features.encoder_.register_forward_pre_hook(
        lambda m, a: seen.__setitem__(0, seen[0] + a[0].shape[0]))

    def objective(trial):
        layer = trial.suggest_int("layer", 0, features.n_layers_)
        before = seen[0]
        try:
            return cv_log_loss(pipe, layer, X, y, args.cv)
        finally:
            trial.set_user_attr("images_encoded", seen[0] - before)
            trial.set_user_attr("pid", os.getpid())

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=args.study, storage=make_storage(args.storage), load_if_exists=True,
        direction="minimize", sampler=optuna.samplers.TPESampler(seed=args.seed))
    try:
        study.optimize(objective, n_trials=args.n_trials)
    finally:
        hook.remove()
    done = [t for t in study.trials if t.value is not None]
    best = study.best_trial
    print(f"worker {os.getpid()}: {args.n_trials} trials, {seen[0]} images encoded here; "
          f"study: {len(done)} trials, best layer {best.params['layer']} "
          f"(CV log-loss {best.value:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
