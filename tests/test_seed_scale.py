"""The stand-in encoder of benchmarks/bench_seed_scale.py is what the benchmark says it is.

The benchmark's figures (passes per image and store bytes at 10,662 images x 25 layers
x 1024) stand for a ViT-L only if the package sees the stand-in as one: 24 blocks, a
class token, width 1024 at every layer, features that change from block to block, the
same weights in every process, and a stored row of 25 x 3 x 1024 float32.
"""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline

from sklearn_endo import LayerFeatureTransformer
from sklearn_endo._store import get_store

from .conftest import ForwardCounter

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_seed_scale.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_seed_scale", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_seed_scale"] = module  # the factory pickles by reference
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_seed_scale", None)


def test_stand_in_is_vit_l_shaped(bench):
    X, _ = bench.make_images(6)
    t = LayerFeatureTransformer(bench.make_stand_in, pooling="cls+mean", verbose=False)
    feats = t.fit(X).layer_features(X)
    assert t.n_layers_ == 24 and len(feats) == 25
    assert t.layer_names_[1] == "blocks.0" and t.layer_names_[24] == "blocks.23"
    assert all(f.shape == (6, 2 * 1024) for f in feats.values())
    # every block changes the features (a block that did nothing would make two layers
    # the same and the sweep smaller than a ViT-L's)
    for la in range(24):
        assert not np.allclose(feats[la], feats[la + 1], atol=1e-4), la


def test_stand_in_same_weights_every_build(bench):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b = bench.make_stand_in().state_dict(), bench.make_stand_in().state_dict()
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    import pickle

    assert pickle.loads(pickle.dumps(bench.make_stand_in)) is bench.make_stand_in


def test_search_of_all_layers_is_one_pass_and_rows_are_307_kB(bench):
    X, y = bench.make_images(24)
    lft = LayerFeatureTransformer(bench.make_stand_in, verbose=False)
    counter = ForwardCounter(lft.fit(X[:2])._get_handle().module)
    store = get_store("memory")
    before = store.nbytes
    search = GridSearchCV(make_pipeline(lft, LogisticRegression(max_iter=200)),
                          {"layerfeaturetransformer__layer": list(range(25))},
                          cv=StratifiedKFold(2, shuffle=True, random_state=0),
                          scoring="neg_log_loss", refit=False).fit(X, y)
    counter.remove()
    assert len(search.cv_results_["params"]) == 25
    assert counter.images == len(X)  # one pass per image for 50 fits
    # the documented size of a row: layers x poolings (mean, max, cls) x width x 4 bytes
    assert store.nbytes - before == len(X) * 25 * 3 * 1024 * 4
