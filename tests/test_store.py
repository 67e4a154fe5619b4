"""The feature store: one encoder pass per unique image, identical results, safe files."""

import os
import pickle

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline

from sklearn_endo import FeatureStore, LayerFeatureTransformer, clear_feature_store


def test_store_on_and_off_give_identical_features(images, tiny_vit):
    X, _ = images
    for layer in (0, 2, [1, -1]):
        on = LayerFeatureTransformer(tiny_vit, layer=layer, pooling="cls+mean")
        off = clone(on).set_params(feature_store=None)
        np.testing.assert_array_equal(on.fit_transform(X), off.fit_transform(X))
        np.testing.assert_array_equal(on.transform(X), off.transform(X))  # from the store


def test_grid_search_over_all_layers_costs_one_pass(images, tiny_vit, counter):
    X, y = images
    c = counter(tiny_vit)
    pipe = make_pipeline(LayerFeatureTransformer(tiny_vit, batch_size=7),
                         LogisticRegression(max_iter=200))
    grid = {"layerfeaturetransformer__layer": list(range(5)),
            "layerfeaturetransformer__pooling": ["mean", "cls", "max"]}
    search = GridSearchCV(pipe, grid, cv=StratifiedKFold(5), scoring="neg_log_loss")
    search.fit(X, y)
    assert len(search.cv_results_["params"]) == 15
    assert c.images == len(X)  # 15 candidates x 5 folds + refit: one pass per image
    search.predict_proba(X)
    assert c.images == len(X)


def test_duplicates_are_computed_once(images, tiny_vit, counter):
    X, _ = images
    c = counter(tiny_vit)
    X2 = np.concatenate([X[:5], X[:5], X[5:8]])
    out = LayerFeatureTransformer(tiny_vit).fit_transform(X2)
    assert c.images == 8
    np.testing.assert_array_equal(out[:5], out[5:10])


def test_store_off_stops_after_the_deepest_layer(images, tiny_vit, counter):
    X, _ = images
    last = counter(tiny_vit.blocks[3])
    second = counter(tiny_vit.blocks[1])
    LayerFeatureTransformer(tiny_vit, layer=2, feature_store=None).fit_transform(X)
    assert second.calls > 0 and last.calls == 0
    LayerFeatureTransformer(tiny_vit, layer=2).fit_transform(X)  # the store takes all
    assert last.calls > 0


def test_disk_store_is_shared_and_atomic(images, tiny_vit, counter, tmp_path):
    X, _ = images
    c = counter(tiny_vit)
    t = LayerFeatureTransformer(tiny_vit, layer=3, feature_store=str(tmp_path))
    first = t.fit_transform(X)
    assert c.images == 20
    files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
    assert sum(f.endswith(".npy") for f in files) == 20
    assert not any(f.endswith(".tmp") for f in files)
    clear_feature_store()  # as a new process would: nothing in memory
    np.testing.assert_array_equal(clone(t).fit_transform(X), first)
    assert c.images == 20  # read from disk


def test_corrupt_entry_is_recomputed(images, tiny_vit, counter, tmp_path):
    X, _ = images
    c = counter(tiny_vit)
    t = LayerFeatureTransformer(tiny_vit, layer=3, feature_store=str(tmp_path))
    first = t.fit_transform(X)
    npys = sorted(os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs
                  if f.endswith(".npy"))
    with open(npys[0], "wb") as f:
        f.write(b"\x93NUMPY garbage")
    with open(npys[1], "wb") as f:  # a pickled object must never be loaded
        pickle.dump(np.zeros(3, dtype=object), f)
    clear_feature_store()
    np.testing.assert_array_equal(t.transform(X), first)
    assert c.images == 22


def test_lru_is_bounded():
    store = FeatureStore(max_bytes=1000)
    with pytest.warns(UserWarning, match="feature store is full"):
        for i in range(10):
            store.put("ns", [f"k{i}"], [np.zeros(100, np.float32)])
    assert store.nbytes <= 1000 and len(store) == 2
    assert store.get("ns", ["k0", "k9"], 100)[0] is None
    assert store.get("ns", ["k9"], 100)[0] is not None


def test_other_weights_other_features(images, tiny_vit):
    X, _ = images
    from .conftest import make_tiny_vit

    other = make_tiny_vit()
    with pytest.raises(AssertionError):  # different random init -> different namespace
        np.testing.assert_array_equal(
            LayerFeatureTransformer(tiny_vit).fit_transform(X),
            LayerFeatureTransformer(other).fit_transform(X))


def test_pickle_of_fitted_pipeline_with_named_encoder_has_no_weights(images, tmp_path):
    X, y = images
    pipe = make_pipeline(LayerFeatureTransformer("resnet18", layer=4, pretrained=False,
                                                 img_size=32),
                         LogisticRegression(max_iter=300)).fit(X, y)
    path = tmp_path / "pipe.joblib"
    joblib.dump(pipe, path)
    assert os.path.getsize(path) < 200_000  # resnet18 weights are ~45 MB
    loaded = joblib.load(path)
    clear_feature_store()
    np.testing.assert_allclose(loaded.predict_proba(X), pipe.predict_proba(X), atol=1e-6)


def test_named_random_init_is_reproducible_across_registry_reloads(images):
    from sklearn_endo._encoders import registry_clear

    X, _ = images
    t = LayerFeatureTransformer("resnet18", pretrained=False, img_size=32)
    a = t.fit_transform(X[:3])
    registry_clear()
    clear_feature_store()
    np.testing.assert_array_equal(clone(t).fit_transform(X[:3]), a)


def test_pooled_rows_own_their_memory(images, tiny_vit):
    from sklearn_endo._encoders import resolve_encoder
    from sklearn_endo._extract import iter_extract, pool_output

    X, _ = images
    handle = resolve_encoder(tiny_vit, pretrained=False, checkpoint_path=None,
                             img_size=None, device="cpu")
    tokens = torch.randn(4, 17, 32)
    for pooling, row in pool_output(tokens, handle, False).items():
        assert row.untyped_storage().nbytes() == row.numel() * 4, pooling  # not a view
    from sklearn_endo._images import check_images

    for _, _, feats in iter_extract(handle, check_images(X), range(8), layers=[0, 4],
                                    stop_early=False, batch_size=4, num_workers=0):
        for key, arr in feats.items():  # numpy arrays over tensors of exactly their size
            assert arr.base.untyped_storage().nbytes() == arr.nbytes, key
    store = FeatureStore()
    block = np.arange(30, dtype=np.float32).reshape(3, 10)
    store.put("ns", ["a", "b", "c"], block)  # rows of one array
    assert all(v.base is None for v in store._mem.values())
    np.testing.assert_array_equal(np.stack(store.get("ns", ["a", "b", "c"], 10)), block)


def test_memory_kept_by_a_pass_is_the_output_and_the_store_rows(images, tiny_vit):
    from sklearn_endo._store import get_store

    X, _ = images
    X = np.concatenate([X] * 3)
    X[20:] = np.random.default_rng(1).integers(0, 256, X[20:].shape, dtype=np.uint8)
    t = LayerFeatureTransformer(tiny_vit, layer=2, batch_size=8)
    out = t.fit_transform(X)
    store = get_store("memory")
    # every layer (5) x every pooling (3) x 32 dims, one row per unique image
    assert len(store) == 60 and store.nbytes == 60 * 5 * 3 * 32 * 4
    assert out.shape == (60, 32) and out.base is None


def test_default_bound_is_env_else_a_quarter_of_physical_memory():
    from sklearn_endo._store import DEFAULT_MAX_BYTES, default_max_bytes

    phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    expected = max(2 * 1024**3, phys // 4)
    assert default_max_bytes({}) == expected
    assert default_max_bytes({"SKLEARN_ENDO_STORE_BYTES": "8e9"}) == 8_000_000_000
    assert default_max_bytes({"SKLEARN_ENDO_STORE_BYTES": "12345"}) == 12345
    env = os.environ.get("SKLEARN_ENDO_STORE_BYTES")
    assert DEFAULT_MAX_BYTES == (expected if not env else default_max_bytes())
    assert FeatureStore().max_bytes == DEFAULT_MAX_BYTES
    for bad in ("lots", "-1", "1.5", "inf"):
        with pytest.raises(ValueError, match="SKLEARN_ENDO_STORE_BYTES"):
            default_max_bytes({"SKLEARN_ENDO_STORE_BYTES": bad})


def test_memory_store_warns_once_when_it_starts_to_evict():
    import warnings

    from sklearn_endo._store import FeatureStoreWarning

    store = FeatureStore(max_bytes=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.put("ns", ["k0", "k1"], np.zeros((2, 100), np.float32))  # 800 B: fits
    with pytest.warns(FeatureStoreWarning, match="SKLEARN_ENDO_STORE_BYTES") as rec:
        for i in range(2, 10):
            store.put("ns", [f"k{i}"], [np.zeros(100, np.float32)])
    assert len(rec) == 1  # once per store, not once per dropped row
    msg = str(rec[0].message)
    assert "1000 bytes" in msg and "rows of 400 bytes" in msg
    assert "encode some images again" in msg
    assert "feature_store=<directory>" in msg
    # a row larger than the whole bound is never kept: that warns too
    with pytest.warns(FeatureStoreWarning, match="encode some images again"):
        FeatureStore(max_bytes=100).put("ns", ["big"], [np.zeros(100, np.float32)])


def test_disk_store_evicts_without_warning_and_reads_rows_back(tmp_path):
    import warnings

    store = FeatureStore(max_bytes=1000, directory=str(tmp_path))
    rows = np.arange(1000, dtype=np.float32).reshape(10, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.put("ns", [f"k{i}" for i in range(10)], rows)
        assert len(store) == 2
        got = store.get("ns", [f"k{i}" for i in range(10)], 100)
    np.testing.assert_array_equal(np.stack(got), rows)  # read back from the files


def test_evicting_memory_store_warns_through_the_transformer(images, tiny_vit, counter):
    from sklearn_endo._store import FeatureStoreWarning, get_store

    X, _ = images
    store = get_store("memory")
    old = store.max_bytes
    c = counter(tiny_vit)
    try:
        store.max_bytes = 5 * 5 * 3 * 32 * 4  # five rows of 5 layers x 3 poolings x 32
        t = LayerFeatureTransformer(tiny_vit, layer=2)
        with pytest.warns(FeatureStoreWarning, match="bound 0.00 GB"):
            first = t.fit_transform(X)
        t.transform(X)  # evicted rows are computed again: the cost the warning names
        assert c.images > len(X)
    finally:
        store.max_bytes = old
        store._evict_warned = False
    clear_feature_store()
    np.testing.assert_array_equal(first, t.transform(X))
