"""One behaviour for FineTuneClassifier, UBCClassifier and SelfSupervisedPretrainer:
repr, NotFittedError, progress by default, lean pickles that predict alike in a fresh
process (#16, #17)."""

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline

from sklearn_endo import LayerFeatureTransformer, UBCClassifier
from sklearn_endo.finetune import FineTuneClassifier
from sklearn_endo.probes import LinearProbeClassifier
from sklearn_endo.segmentation import Segmenter
from sklearn_endo.ssl import SelfSupervisedPretrainer

ROOT = Path(__file__).resolve().parents[1]
FT = dict(pretrained=False, img_size=32, max_epochs=1, batch_size=4, random_state=0)
UBC = dict(alpha=1.0, pretrained=False, image_size=32, encoder_depth=3, max_epochs=1, batch_size=4,
           random_state=0)
SSL = dict(img_size=32, max_epochs=1, batch_size=4, random_state=0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    return X, np.array([0, 1] * 4)


def _state_bytes(module):
    return sum(v.numel() * v.element_size() for v in module.state_dict().values())


# ------------------------------------------------------------------ repr
@pytest.mark.parametrize("make", [
    lambda **kw: FineTuneClassifier("resnet18", **kw),
    lambda **kw: UBCClassifier("resnet18", **kw),
    lambda **kw: SelfSupervisedPretrainer("resnet18", **kw),
])
def test_repr_shows_the_changed_parameters_only(make):
    est = make(lr=0.1, max_epochs=3)
    name = type(est).__name__
    assert repr(est) == f"{name}(encoder='resnet18', lr=0.1, max_epochs=3)"
    assert repr(make()) == f"{name}(encoder='resnet18')"


def test_fitted_repr_is_the_parameters_not_the_network(data):
    X, y = data
    for est in (FineTuneClassifier("resnet18", verbose=0, **FT),
                UBCClassifier("resnet18", verbose=0, **UBC)):
        before = repr(est)
        est.fit(X, y)
        assert repr(est) == before
        assert "Conv2d" not in before and len(before.splitlines()) <= 3


# ------------------------------------------------------------------ not fitted
def test_predicting_before_fit_raises_not_fitted(data):
    X, y = data
    for est in (FineTuneClassifier("resnet18", **FT), UBCClassifier("resnet18", **UBC)):
        for call in (est.predict, est.predict_proba):
            with pytest.raises(NotFittedError, match="not fitted yet"):
                call(X)
        with pytest.raises(NotFittedError):
            est.score(X, y)
    with pytest.raises(NotFittedError):
        _ = FineTuneClassifier("resnet18", **FT).encoder_
    pre = SelfSupervisedPretrainer("resnet18", **SSL)
    with pytest.raises(NotFittedError):
        pre.transform(X)
    with pytest.raises(NotFittedError):
        pre.save_encoder("never.safetensors")


# ------------------------------------------------------------------ progress
@pytest.mark.parametrize("kind", ["finetune", "ubc", "ssl"])
def test_progress_by_default_and_verbose_zero_is_silent(kind, data, capsys):
    X, y = data

    def make(**kw):
        if kind == "finetune":  # a frozen trunk: a feature pass, then epochs
            return FineTuneClassifier("resnet18", freeze="all", **FT, **kw)
        if kind == "ubc":
            return UBCClassifier("resnet18", **UBC, **kw)
        return SelfSupervisedPretrainer("resnet18", **SSL, **kw)

    def fit(est):
        return est.fit(X) if kind == "ssl" else est.fit(X, y)

    fit(make())
    out = capsys.readouterr()
    shown = out.out + out.err
    if kind == "ssl":
        assert "barlowtwins epoch 1/1" in out.err
    else:  # skorch's epoch table
        assert "train_loss" in out.out and "dur" in out.out
    if kind == "finetune":
        assert "features of the frozen trunk" in out.err, shown
    fit(make(verbose=0))
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


# ------------------------------------------------------------------ lean pickles
def test_pickles_hold_the_weights_once(data):
    X, y = data
    cases = [
        (FineTuneClassifier("resnet18", verbose=0, **FT).fit(X, y), "module_"),
        (UBCClassifier("resnet18", verbose=0, **UBC).fit(X, y), "module_"),
        (SelfSupervisedPretrainer("resnet18", method="mocov3", verbose=0, **SSL).fit(X),
         "encoder_"),
    ]
    for est, weights in cases:
        size = len(pickle.dumps(est))
        ratio = size / _state_bytes(getattr(est, weights))
        # before: optimizer_ (weights + Adam moments) and callbacks_ (an LRScheduler
        # holding the optimizer) each pickled the weights again; SSL the heads and the
        # momentum encoder
        assert ratio < 1.2, (type(est).__name__, ratio)


def test_unpickled_net_trains_on_at_the_saved_learning_rates(data):
    X, y = data
    clf = UBCClassifier("resnet18", verbose=0, **dict(UBC, max_epochs=5)).fit(X, y)
    lr = clf.optimizer_.param_groups[0]["lr"]
    assert lr == pytest.approx(1e-3 * 0.9)  # StepLR stepped once
    again = pickle.loads(pickle.dumps(clf))
    assert "optimizer_" not in again.__getstate__()
    assert again.optimizer_.param_groups[0]["lr"] == lr
    assert not again.optimizer_.state  # fresh moments
    again.partial_fit(X, y)  # the schedule continues from epoch 5, as without pickling
    clf.partial_fit(X, y)
    assert len(again.history) == 10
    assert again.optimizer_.param_groups[0]["lr"] == clf.optimizer_.param_groups[0]["lr"]
    ft = FineTuneClassifier("resnet18", verbose=0, **FT).fit(X, y)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(ft)).partial_fit(X, y)
                               .predict_proba(X).sum(1), 1, rtol=1e-5)


# ------------------------------------------------------------------ a fresh process
CHILD = textwrap.dedent("""
    import sys
    import joblib
    import numpy as np
    X, names = joblib.load(sys.argv[1])
    out = {}
    for name in names:
        est = joblib.load(sys.argv[2] + "/" + name + ".joblib")
        f = est.transform if name.startswith("ssl") else est.predict_proba
        out[name] = f(X)
    joblib.dump(out, sys.argv[3])
""")


def test_every_estimator_predicts_alike_in_a_fresh_process(data, tmp_path):
    X, y = data
    store = tmp_path / "store"
    cases = {
        "ft_none": FineTuneClassifier("resnet18", verbose=0, **FT),
        "ft_all_dir": FineTuneClassifier("resnet18", freeze="all", feature_store=str(store),
                                         verbose=0, **FT),
        "ft_transformer": FineTuneClassifier("resnet18", freeze="all", layer=4,
                                             head="transformer", head_width=16,
                                             head_heads=2, verbose=0, **FT),
        "ubc": UBCClassifier("resnet18", verbose=0, **UBC),
        "ssl": SelfSupervisedPretrainer("resnet18", verbose=0, **SSL),
        "segmenter": Segmenter("resnet18", pretrained=False, image_size=32, encoder_depth=3,
                               max_epochs=1, batch_size=4, random_state=0, verbose=0),
        "probe_pipeline": make_pipeline(
            LayerFeatureTransformer("resnet18", layer=3, pretrained=False, img_size=32,
                                    verbose=False, feature_store=str(store)),
            LinearProbeClassifier()),
    }
    before = {}
    for name, est in cases.items():
        if name.startswith("ssl"):
            before[name] = est.fit(X).transform(X)
        elif name == "segmenter":  # masks as y: the lesion is the brighter half
            before[name] = est.fit(X, (X.mean(-1) > 127).astype(np.uint8)).predict_proba(X)
        else:
            before[name] = est.fit(X, y).predict_proba(X)
        joblib.dump(est, tmp_path / f"{name}.joblib")
    joblib.dump((X, list(cases)), tmp_path / "input.joblib")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "input.joblib"), str(tmp_path),
         str(tmp_path / "out.joblib")], capture_output=True, text=True, env=env,
        cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    after = joblib.load(tmp_path / "out.joblib")
    for name in cases:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    assert torch.is_inference_mode_enabled() is False
