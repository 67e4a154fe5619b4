"""Searches on existing engines share one on-disk feature store: joblib's Dask backend on
a LocalCluster, and an Optuna study shared by worker processes through a journal storage.

Encoder work is counted in every process with a forward pre-hook on the encoder module
(the module is cached per process, so a hook attached before a search sees its passes).
Both tests start worker processes that import torch, timm and scikit-learn (5 to 8 s of
CPU each), so both take more than 20 s on two cores: they are marked ``slow``.
"""

import json
import logging
import os
import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline

from sklearn_endo import LayerFeatureTransformer
from sklearn_endo._encoders import resolve_encoder

ENCODER = dict(encoder="resnet18", pretrained=False, img_size=32)
GRID = {"layerfeaturetransformer__layer": [1, 3, 5, 8]}


def _pipe(store):
    return make_pipeline(
        LayerFeatureTransformer(**ENCODER, device="cpu", feature_store=str(store),
                                num_workers=0, verbose=False),
        LogisticRegression(C=0.1, max_iter=500))


def _store_entries(store):
    return sorted(p.name for p in store.rglob("*.npy"))


# Run inside each Dask worker process (client.run): the registry there caches the module
# that the search's transformers resolve to, so the hook sees every pass of that worker.
def _attach_counter():
    module = resolve_encoder(ENCODER["encoder"], pretrained=False,
                             img_size=ENCODER["img_size"], device="cpu").module
    module._ske_seen = [0]
    module.register_forward_pre_hook(
        lambda m, a: m._ske_seen.__setitem__(0, m._ske_seen[0] + a[0].shape[0]))
    return os.getpid()


def _encoded_images():
    module = resolve_encoder(ENCODER["encoder"], pretrained=False,
                             img_size=ENCODER["img_size"], device="cpu").module
    return module._ske_seen[0]


@pytest.mark.slow
def test_joblib_dask_backend_gives_the_single_process_results(images, tmp_path):
    distributed = pytest.importorskip("distributed")
    import cloudpickle

    # the workers need not import the tests package to run the two helpers above
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    X, y = images
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    ref = GridSearchCV(_pipe(tmp_path / "ref"), GRID, cv=cv, n_jobs=1).fit(X, y)

    store = tmp_path / "shared"
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=":0",
                                  silence_logs=logging.ERROR) as cluster, \
            distributed.Client(cluster) as client:
        pids = client.run(_attach_counter)
        assert len(set(pids.values())) == 2  # two worker processes, not threads
        with joblib.parallel_config("dask"):
            cold = GridSearchCV(_pipe(store), GRID, cv=cv).fit(X, y)
        after_cold = client.run(_encoded_images)
        with joblib.parallel_config("dask"):
            warm = GridSearchCV(_pipe(store), GRID, cv=cv).fit(X, y)
        after_warm = client.run(_encoded_images)

    for search in (cold, warm):
        np.testing.assert_allclose(search.cv_results_["mean_test_score"],
                                   ref.cv_results_["mean_test_score"], rtol=0, atol=1e-12)
        assert search.best_params_ == ref.best_params_
    # a cold store: each image encoded at least once in all, at most once per worker
    assert len(X) <= sum(after_cold.values()) <= 2 * len(X), after_cold
    # the workers wrote one shared store, the same one a single process writes
    assert _store_entries(store) == _store_entries(tmp_path / "ref")
    # and a second search on it costs no encoder pass in any worker
    assert after_warm == after_cold


# One Optuna worker process: joins the study through the journal file, runs trials whose
# objective is the CV log-loss of a layer, and records the images it encoded per trial.
WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np, optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from sklearn_endo._encoders import resolve_encoder
    sys.path.insert(0, {tests!r})
    from test_scale_engines import ENCODER, objective

    journal, store, data, n_trials, seed, counts = sys.argv[1:7]
    X, y = np.load(data)["X"], np.load(data)["y"]
    module = resolve_encoder(ENCODER["encoder"], pretrained=False,
                             img_size=ENCODER["img_size"], device="cpu").module
    seen = [0]
    module.register_forward_pre_hook(lambda m, a: seen.__setitem__(0, seen[0] + len(a[0])))
    study = optuna.load_study(study_name="layers",
                              storage=JournalStorage(JournalFileBackend(journal)),
                              sampler=optuna.samplers.RandomSampler(seed=int(seed)))
    per_trial = []

    def counted(trial):
        before = seen[0]
        try:
            return objective(trial, X, y, store)
        finally:
            per_trial.append(seen[0] - before)

    study.optimize(counted, n_trials=int(n_trials))
    with open(counts, "w") as f:
        json.dump(per_trial, f)
""")


def objective(trial, X, y, store):
    layer = trial.suggest_int("layer", 0, 8)
    pipe = _pipe(store).set_params(layerfeaturetransformer__layer=layer)
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    return -cross_val_score(pipe, X, y, cv=cv, scoring="neg_log_loss").mean()


@pytest.mark.slow
def test_optuna_study_shared_through_journal_storage_by_two_processes(images, tmp_path,
                                                                     counter):
    optuna = pytest.importorskip("optuna")
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    X, y = images
    data, store = tmp_path / "data.npz", tmp_path / "store"
    np.savez(data, X=X, y=y)
    journal = str(tmp_path / "study.log")
    storage = JournalStorage(JournalFileBackend(journal))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="layers", storage=storage, direction="minimize",
                                sampler=optuna.samplers.RandomSampler(seed=0))

    # the first trial warms the store (here, in this process)
    seen = counter(resolve_encoder("resnet18", pretrained=False, img_size=32,
                                   device="cpu").module)
    study.optimize(lambda t: objective(t, X, y, store), n_trials=1)
    assert seen.images == len(X)

    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=os.path.dirname(__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), journal, str(store), str(data),
                               "3", str(seed), str(tmp_path / f"counts{seed}.json")],
                              env=env, stderr=subprocess.PIPE, text=True)
             for seed in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]

    per_worker = [json.loads((tmp_path / f"counts{s}.json").read_text()) for s in (1, 2)]
    assert per_worker == [[0, 0, 0], [0, 0, 0]]  # no encoder pass after the first trial
    trials = optuna.load_study(study_name="layers", storage=storage).trials
    assert len(trials) == 7 and all(t.state.name == "COMPLETE" for t in trials)
    # every trial's value is the single-process CV log-loss of its layer
    for t in trials:
        assert t.value == pytest.approx(objective(_Fixed(t.params["layer"]), X, y, store),
                                        rel=1e-9)
    assert seen.images == len(X)  # those checks, too, read the store


class _Fixed:
    """A stand-in trial that suggests a fixed layer."""

    def __init__(self, layer):
        self.layer = layer

    def suggest_int(self, name, low, high):
        return self.layer


@pytest.mark.slow
def test_scaling_doc_snippets_run():
    """docs/scaling.md: its Python blocks run in order, offline; the Dask search there
    gives the single-process results."""
    import re
    from pathlib import Path

    pytest.importorskip("distributed")
    pytest.importorskip("optuna")
    page = Path(__file__).resolve().parents[1] / "docs" / "scaling.md"
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M)
    namespace, ran = {}, 0
    for code in blocks:
        if "needs a database server" in code.splitlines()[0]:
            continue
        exec(compile(code, str(page), "exec"), namespace)
        ran += 1
    assert ran == 3
    ns = namespace
    single = GridSearchCV(ns["pipe"], ns["grid"], cv=ns["cv"], scoring="neg_log_loss",
                          n_jobs=1).fit(ns["X"], ns["y"])
    np.testing.assert_allclose(ns["search"].cv_results_["mean_test_score"],
                               single.cv_results_["mean_test_score"], rtol=0, atol=1e-12)
    trials = ns["study"].trials
    assert len(trials) == 4
    for t in trials:
        model = clone(ns["pipe"]).set_params(layerfeaturetransformer__layer=t.params["layer"])
        expected = cross_val_score(model, ns["X"], ns["y"], cv=ns["cv"],
                                   scoring="neg_log_loss").mean()
        assert t.value == pytest.approx(expected, rel=1e-9)
