"""Claims in a directory store: each image is encoded once across processes.

Encoder work is counted in every process by a picklable forward pre-hook that appends
``<pid> <batch size>`` to a file (the module, hook included, is pickled to the loky
workers). Claims by other processes are simulated with claim files written by hand.
"""

import os
import shutil
import subprocess
import sys
import threading
import time
import warnings

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline

from sklearn_endo import LayerFeatureTransformer, clear_feature_store
from sklearn_endo._claims import claim_stale_s, claims_enabled
from sklearn_endo._images import check_images, image_hashes
from sklearn_endo._store import _HOST, FeatureStoreWarning, remove_orphan_temp_files


class CountingHook:
    """Appends ``<pid> <images>`` to ``path`` on every forward; sleeps ``sleep`` s."""

    def __init__(self, path, sleep=0.0):
        self.path, self.sleep = str(path), sleep

    def __call__(self, module, args):
        with open(self.path, "a") as f:
            f.write(f"{os.getpid()} {int(args[0].shape[0])}\n")
        time.sleep(self.sleep)


def _counts(path):
    """{pid: images encoded} from a CountingHook file."""
    out = {}
    if os.path.exists(path):
        for line in open(path).read().splitlines():
            pid, n = line.split()
            out[pid] = out.get(pid, 0) + int(n)
    return out


def _warm_worker(delay=0.0):
    import timm  # noqa: F401

    import sklearn_endo  # noqa: F401

    time.sleep(delay)
    return os.getpid()


def _start_two_workers(timeout_s=180.0):
    """Pids of joblib's two loky workers, once both have started and imported.

    One worker may take every task while the other is still importing torch (tens of
    seconds on a loaded machine), so rounds of slow tasks are dispatched until both
    have answered.
    """
    seen, start = set(), time.monotonic()
    while len(seen) < 2 and time.monotonic() - start < timeout_s:
        seen |= set(joblib.Parallel(n_jobs=2)(joblib.delayed(_warm_worker)(0.5)
                                              for _ in range(4)))
    return seen


def _claim_paths(store):
    return sorted(str(p) for p in store.rglob("*.claim"))


def _keys_and_namespace(t, X):
    t.fit(X)
    return image_hashes(check_images(X)), t._namespace(t._get_handle())


def _write_claims(folder, ns, keys, content, age_s=0.0):
    for key in keys:
        path = os.path.join(folder, ns, key[:2], key + ".claim")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(content)
        if age_s:
            t = time.time() - age_s
            os.utime(path, (t, t))


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_grid_search_n_jobs_2_on_a_cold_store_encodes_each_image_once(images, tiny_vit,
                                                                        tmp_path):
    import cloudpickle

    # the workers need not import the tests package to unpickle the hook
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    X, y = images
    grid = {"layerfeaturetransformer__layer": [1, 2, 3, 4]}
    kw = dict(cv=StratifiedKFold(5), scoring="neg_log_loss")

    def pipe(store):
        return make_pipeline(
            LayerFeatureTransformer(tiny_vit, batch_size=4, device="cpu", verbose=False,
                                    feature_store=store),
            LogisticRegression(max_iter=300))

    one = GridSearchCV(pipe("memory"), grid, n_jobs=1, **kw).fit(X, y)
    # start both workers first, so that both meet the cold store at once
    assert len(_start_two_workers()) == 2
    # a slow forward (0.3 s per batch of 4): without claims both workers encode
    # (measured: 32 images for 20); with them, each image once in all
    log = tmp_path / "encoded.txt"
    tiny_vit.register_forward_pre_hook(CountingHook(log, sleep=0.3))
    two = GridSearchCV(pipe(str(tmp_path / "store")), grid, n_jobs=2, **kw).fit(X, y)
    counts = _counts(log)
    assert sum(counts.values()) == len(X), counts
    assert str(os.getpid()) not in counts  # the workers encoded, not this process
    np.testing.assert_allclose(two.cv_results_["mean_test_score"],
                               one.cv_results_["mean_test_score"], rtol=0, atol=1e-6)
    assert two.best_params_ == one.best_params_
    assert len(list((tmp_path / "store").rglob("*.npy"))) == len(X)
    assert _claim_paths(tmp_path / "store") == []  # every claim removed once its entry landed


def test_a_dead_claimers_claims_are_taken_over(images, tiny_vit, counter, tmp_path):
    X, _ = images
    ref = LayerFeatureTransformer(tiny_vit, layer=2, feature_store=None).fit_transform(X)
    t = LayerFeatureTransformer(tiny_vit, layer=2, feature_store=str(tmp_path))
    keys, ns = _keys_and_namespace(t, X)
    _write_claims(tmp_path, ns, keys, f"{_HOST} {_dead_pid()} {time.time():.3f} tok\n")
    c = counter(tiny_vit)
    start = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureStoreWarning)  # a crash: no warning
        np.testing.assert_array_equal(t.transform(X), ref)
    assert c.images == len(X)
    assert time.monotonic() - start < 30  # not the 600 s stale age
    assert _claim_paths(tmp_path) == []
    assert list(tmp_path.rglob("*.tmp")) == []


def test_a_stale_claim_from_another_host_is_taken_over_with_a_warning(images, tiny_vit,
                                                                       counter, tmp_path):
    X, _ = images
    ref = LayerFeatureTransformer(tiny_vit, layer=2, feature_store=None).fit_transform(X)
    t = LayerFeatureTransformer(tiny_vit, layer=2, feature_store=str(tmp_path))
    keys, ns = _keys_and_namespace(t, X)
    # another host: its pid means nothing here, only the claim's age tells
    _write_claims(tmp_path, ns, keys[:5], f"other-host 1 {time.time():.3f} tok\n",
                  age_s=3600)
    c = counter(tiny_vit)
    with pytest.warns(FeatureStoreWarning, match="took over 5 claim"):
        np.testing.assert_array_equal(t.transform(X), ref)
    assert c.images == len(X)
    assert _claim_paths(tmp_path) == []


def test_a_live_claim_is_waited_for_then_taken_over_when_it_goes_stale(
        images, tiny_vit, counter, tmp_path, monkeypatch):
    X, _ = images
    monkeypatch.setenv("SKLEARN_ENDO_CLAIM_STALE_S", "1.0")
    ref = LayerFeatureTransformer(tiny_vit, layer=2, feature_store=None).fit_transform(X)
    t = LayerFeatureTransformer(tiny_vit, layer=2, feature_store=str(tmp_path))
    keys, ns = _keys_and_namespace(t, X)
    # this very process (alive) under another token: a live worker that hangs
    _write_claims(tmp_path, ns, keys[:3], f"{_HOST} {os.getpid()} {time.time():.3f} x\n")
    c = counter(tiny_vit)
    start = time.monotonic()
    with pytest.warns(FeatureStoreWarning, match="not refreshed for 1 s"):
        np.testing.assert_array_equal(t.transform(X), ref)
    assert time.monotonic() - start >= 0.9  # it waited for the live claim first
    assert c.images == len(X)  # 17 of its own, then the 3 taken over
    assert _claim_paths(tmp_path) == []


@pytest.mark.parametrize("writes_entries", [True, False])
def test_entries_of_a_live_claimer_are_read_as_they_land(images, tiny_vit, counter,
                                                         tmp_path, writes_entries):
    X, _ = images
    ref_dir, shared = tmp_path / "ref", tmp_path / "shared"
    ref = LayerFeatureTransformer(tiny_vit, layer=2, feature_store=str(ref_dir))
    ref_out = ref.fit_transform(X)
    t = LayerFeatureTransformer(tiny_vit, layer=2, feature_store=str(shared))
    keys, ns = _keys_and_namespace(t, X)
    claimed = keys[:12]
    _write_claims(shared, ns, claimed, f"{_HOST} {os.getpid()} {time.time():.3f} other\n")

    def other_worker():  # writes its entries (or fails to) after a while, then releases
        time.sleep(0.5)
        if writes_entries:
            shutil.copy(ref_dir / ns / "layout.json", shared / ns / "layout.json")
            for key in claimed:
                shutil.copy(ref_dir / ns / key[:2] / f"{key}.npy",
                            shared / ns / key[:2] / f"{key}.npy")
        for key in claimed:
            os.remove(shared / ns / key[:2] / f"{key}.claim")

    clear_feature_store()
    c = counter(tiny_vit)
    thread = threading.Thread(target=other_worker)
    thread.start()
    try:
        out = t.transform(X)
    finally:
        thread.join()
    np.testing.assert_array_equal(out, ref_out)
    # its own 8, plus the 12 only if the other worker released them without entries
    assert c.images == (8 if writes_entries else 20)
    assert _claim_paths(shared) == []


def test_claims_can_be_turned_off(images, tiny_vit, counter, tmp_path, monkeypatch):
    X, _ = images
    t = LayerFeatureTransformer(tiny_vit, layer=2, feature_store=str(tmp_path))
    keys, ns = _keys_and_namespace(t, X)
    _write_claims(tmp_path, ns, keys, f"{_HOST} {os.getpid()} {time.time():.3f} other\n")
    monkeypatch.setenv("SKLEARN_ENDO_STORE_CLAIMS", "0")
    c = counter(tiny_vit)
    t.transform(X)  # would wait 600 s for the live claims if claims were on
    assert c.images == len(X)
    assert len(_claim_paths(tmp_path)) == len(X)  # others' claims are left alone
    assert claims_enabled({}) and claims_enabled({"SKLEARN_ENDO_STORE_CLAIMS": "1"})
    assert not claims_enabled({"SKLEARN_ENDO_STORE_CLAIMS": "off"})
    with pytest.raises(ValueError, match="SKLEARN_ENDO_STORE_CLAIMS='maybe'"):
        claims_enabled({"SKLEARN_ENDO_STORE_CLAIMS": "maybe"})
    assert claim_stale_s({}) == 600 and claim_stale_s({"SKLEARN_ENDO_CLAIM_STALE_S": "5"}) == 5
    with pytest.raises(ValueError, match="SKLEARN_ENDO_CLAIM_STALE_S"):
        claim_stale_s({"SKLEARN_ENDO_CLAIM_STALE_S": "-1"})


def test_orphan_cleanup_removes_dead_and_stale_claims_only(tmp_path):
    folder = tmp_path / "ns"
    (folder / "ab").mkdir(parents=True)
    now = f"{time.time():.3f}"
    files = {"dead": f"{_HOST} {_dead_pid()} {now} t\n",
             "stale": "other-host 1 0 t\n",
             "live": f"{_HOST} {os.getpid()} {now} t\n",
             "remote": f"other-host 1 {now} t\n"}
    for name, content in files.items():
        (folder / "ab" / f"ab{name}.claim").write_text(content)
    old = time.time() - 3600
    os.utime(folder / "ab" / "abstale.claim", (old, old))
    assert remove_orphan_temp_files(str(folder)) == 2
    assert sorted(p.name for p in folder.rglob("*")) == [
        "ab", "ablive.claim", "abremote.claim"]
