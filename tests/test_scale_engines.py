"""Searches on existing engines share one on-disk feature store: joblib's Dask backend on
a LocalCluster, and an Optuna study shared by worker processes through a journal storage.

Encoder work is counted in every process with a forward pre-hook on the encoder module
(the module is cached per process, so a hook attached before a search sees its passes).
Both tests start worker processes that import torch, timm and scikit-learn (5 to 8 s of
CPU each), so both take more than 20 s on two cores: they are marked ``slow``.
"""

import argparse
import logging
import os
import subprocess
import sys

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline

from sklearn_endo import LayerFeatureTransformer
from sklearn_endo._encoders import resolve_encoder
from sklearn_endo.datasets import load_image_folder

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
    # a cold store: claims in the shared directory make each image encoded once in all
    assert sum(after_cold.values()) == len(X), after_cold
    # the workers wrote one shared store, the same one a single process writes
    assert _store_entries(store) == _store_entries(tmp_path / "ref")
    # and a second search on it costs no encoder pass in any worker
    assert after_warm == after_cold


EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples",
                       "optuna_shared_study.py")


def _png_tree(root, n_per_class=(6, 6)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, n in enumerate(n_per_class):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 200, (24, 24, 3), dtype=np.uint8)
            a[..., c] = 255
            Image.fromarray(a).save(root / f"class_{c}" / f"{i}.png")
    return root


@pytest.mark.slow
def test_optuna_study_shared_through_journal_storage_by_two_processes(tmp_path):
    """examples/optuna_shared_study.py: one warm-up trial here, then two worker processes
    on one journal file and one store; trials after the first encode nothing."""
    import importlib.util

    optuna = pytest.importorskip("optuna")
    spec = importlib.util.spec_from_file_location("optuna_shared_study", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    data = _png_tree(tmp_path / "data")
    journal, store = str(tmp_path / "study.log"), str(tmp_path / "store")
    argv = [str(data), "--storage", journal, "--store", store, "--encoder", "resnet18",
            "--random-weights", "--img-size", "32", "--device", "cpu", "--cv", "3"]
    assert example.main([*argv, "--n-trials", "1", "--seed", "0"]) == 0  # warms the store

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, EXAMPLE, *argv, "--n-trials", "3",
                               "--seed", str(seed)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for seed in (1, 2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        assert "0 images encoded here" in out, out

    study = optuna.load_study(study_name="layers", storage=example.make_storage(journal))
    trials = sorted(study.trials, key=lambda t: t.number)
    assert len(trials) == 7 and all(t.state.name == "COMPLETE" for t in trials)
    encoded = [t.user_attrs["images_encoded"] for t in trials]
    assert encoded == [12, 0, 0, 0, 0, 0, 0]  # one pass, in the first trial only
    workers = {t.user_attrs["pid"] for t in trials[1:]}
    assert len(workers) == 2 and os.getpid() not in workers
    # every trial's value is the single-process CV log-loss of its layer
    args = argparse.Namespace(encoder="resnet18", random_weights=True, img_size=32,
                              device="cpu", store=store)
    pipe = example.make_pipe(args)
    X, y = load_image_folder(data, return_X_y=True)
    for t in trials:
        assert t.value == pytest.approx(example.cv_log_loss(pipe, t.params["layer"], X,
                                                            y, 3), rel=1e-9)
