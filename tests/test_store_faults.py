"""The disk store under faults: kills, orphan temp files, unwritable or damaged files."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone

from sklearn_endo import LayerFeatureTransformer, _transformer, clear_feature_store
from sklearn_endo._store import _HOST, FeatureStoreWarning, _layout_digest


def _files(root, suffix):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                  if f.endswith(suffix))


def _fresh_process(monkeypatch):
    """Forget everything this process learnt, as a new process would."""
    clear_feature_store()
    monkeypatch.setattr(_transformer, "_LAYOUTS", {})


CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np, timm, torch
    from sklearn_endo import LayerFeatureTransformer
    weights, images, store, threads = sys.argv[1:5]
    torch.set_num_threads(int(threads))
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                              patch_size=8, depth=4, embed_dim=32, num_heads=2,
                              num_classes=0).eval()
    model.load_state_dict(torch.load(weights))
    model.register_forward_pre_hook(lambda m, a: time.sleep(0.25))  # a slow encoder
    LayerFeatureTransformer(model, layer=[1, 4], pooling="cls+mean", batch_size=4,
                            feature_store=store, verbose=False).fit_transform(np.load(images))
""")


def test_killed_run_keeps_its_entries_and_a_rerun_computes_only_the_rest(
        tiny_vit, counter, tmp_path):
    X = np.random.default_rng(1).integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "X.npy", X)
    torch.save(tiny_vit.state_dict(), tmp_path / "w.pt")
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "w.pt"),
                             str(tmp_path / "X.npy"), str(store),
                             str(torch.get_num_threads())],
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while len(_files(store, ".npy")) < 28:  # 7 of 12 batches written
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the child wrote too slowly"
            time.sleep(0.02)
        seen = len(_files(store, ".npy"))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    kept = len(_files(store, ".npy"))
    assert seen <= kept < len(X)  # nothing written was lost, the run did not finish

    c = counter(tiny_vit)
    t = LayerFeatureTransformer(tiny_vit, layer=[1, 4], pooling="cls+mean", batch_size=4,
                                feature_store=str(store))
    rerun = t.fit_transform(X)
    assert c.images == len(X) - kept  # only the missing images
    whole = clone(t).set_params(feature_store=None, batch_size=16).fit_transform(X)
    np.testing.assert_array_equal(rerun, whole)
    assert len(_files(store, ".npy")) == len(X)
    assert not _files(store, ".tmp")  # an interrupted write's temp file is cleaned


def test_entries_are_written_as_batches_complete(images, tiny_vit, tmp_path):
    X, _ = images
    on_disk = []
    tiny_vit.blocks[0].register_forward_pre_hook(
        lambda m, a: on_disk.append(len(_files(tmp_path, ".npy"))))
    LayerFeatureTransformer(tiny_vit, batch_size=6, feature_store=str(tmp_path)).fit_transform(X)
    assert on_disk == [0, 6, 12, 18]


def test_orphan_temp_files_are_removed_and_live_ones_kept(images, tiny_vit, tmp_path):
    X, _ = images
    t = LayerFeatureTransformer(tiny_vit, feature_store=str(tmp_path))
    t.fit_transform(X[:2])
    (ns,) = [d for d in os.listdir(tmp_path)]
    folder = tmp_path / ns / "ab"
    folder.mkdir(exist_ok=True)
    dead = folder / f".x.npy.{_HOST}.{_finished_pid()}.abc.tmp"
    old = folder / ".y.npy.otherhost.1.abc.tmp"
    live = folder / f".z.npy.{_HOST}.{os.getpid()}.abc.tmp"
    remote = folder / ".w.npy.otherhost.1.abd.tmp"
    for f in (dead, old, live, remote):
        f.write_bytes(b"partial")
    os.utime(old, (time.time() - 3600,) * 2)
    clear_feature_store()  # a new process: cleans on its first write
    clone(t).fit_transform(X[2:4])
    assert not dead.exists() and not old.exists()
    assert live.exists() and remote.exists()  # may belong to a running writer


def _finished_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_store_path_that_is_a_file_fails_at_fit(images, tiny_vit, tmp_path):
    X, _ = images
    path = tmp_path / "store"
    path.write_text("not a directory")
    with pytest.raises(ValueError, match="feature_store=.*is a file"):
        LayerFeatureTransformer(tiny_vit, feature_store=str(path)).fit(X)


def test_unwritable_store_fails_before_the_encoder_runs(images, tiny_vit, counter, tmp_path):
    X, _ = images
    (tmp_path / "file").write_text("x")
    c = counter(tiny_vit)
    t = LayerFeatureTransformer(tiny_vit, feature_store=str(tmp_path / "file" / "store"))
    with pytest.raises(ValueError, match="feature_store=.*cannot be written.*'memory'"):
        t.fit_transform(X)
    assert c.images == 0


def _unprivileged(check):
    """Run ``check()`` in a forked child that has dropped root (to user ``nobody``), so
    that directory permissions bind; return its error message, or None if it passed."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report, then leave without running pytest's teardown
        os.close(read)
        message = b""
        try:
            torch.set_num_threads(1)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            check()
        except BaseException as exc:  # noqa: BLE001 (sent to the parent)
            message = f"{type(exc).__name__}: {exc}".encode() or b"failed"
        os.write(write, message)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        message = f.read()
    os.waitpid(pid, 0)
    return message.decode() or None


def test_read_only_store_is_read_and_refused_only_when_it_must_grow(
        images, tiny_vit, counter, tmp_path, monkeypatch):
    X, _ = images
    # root ignores permission bits: the store then lives where user nobody can reach it,
    # and the reads run in a child that has dropped root
    as_root = os.geteuid() == 0
    store = tempfile.mkdtemp(prefix="ro-store-") if as_root else str(tmp_path)
    if as_root:
        os.chmod(store, 0o755)
    t = LayerFeatureTransformer(tiny_vit, feature_store=store)
    first = t.fit_transform(X[:10])
    mode = os.stat(store).st_mode
    try:
        for d, _, files in os.walk(store):
            os.chmod(d, 0o555)
            for f in files:
                os.chmod(os.path.join(d, f), 0o444)
        _fresh_process(monkeypatch)
        c = counter(tiny_vit)

        def check():
            assert not os.access(store, os.W_OK), "the store is still writable"
            np.testing.assert_array_equal(clone(t).fit_transform(X[:10]), first)
            with pytest.raises(ValueError, match="cannot be written"):
                clone(t).fit_transform(X)
            assert c.images == 0

        if as_root:
            failure = _unprivileged(check)
            if failure and "Operation not permitted" in failure:
                pytest.skip(f"root cannot drop privileges here ({failure})")
            assert failure is None, failure
        else:
            check()
    finally:
        for d, _, _ in os.walk(store):
            os.chmod(d, mode)
        if as_root:
            shutil.rmtree(store, ignore_errors=True)


def test_directory_in_place_of_an_entry(images, tiny_vit, counter, tmp_path):
    X, _ = images
    t = LayerFeatureTransformer(tiny_vit, layer=2, feature_store=str(tmp_path))
    first = t.fit_transform(X)
    entry = _files(tmp_path, ".npy")[0]
    os.remove(entry)
    os.makedirs(os.path.join(entry, "inside"))
    clear_feature_store()
    c = counter(tiny_vit)
    with pytest.warns(FeatureStoreWarning, match="is a directory"):
        np.testing.assert_array_equal(t.transform(X), first)
    assert c.images == 1


def test_changed_values_moved_and_legacy_entries_are_recomputed(
        images, tiny_vit, counter, tmp_path):
    X, _ = images
    t = LayerFeatureTransformer(tiny_vit, layer=[1, 3], pooling="cls+mean",
                                feature_store=str(tmp_path))
    first = t.fit_transform(X)
    npys = _files(tmp_path, ".npy")
    rec = np.load(npys[0], allow_pickle=False)
    rec["vec"][5] += 1e-3  # still a valid .npy of the right shape
    np.save(npys[0], rec, allow_pickle=False)
    os.replace(npys[1], npys[2])  # an entry under another image's name
    np.save(npys[3], np.load(npys[3])["vec"])  # a bare float32 vector: no checksum
    clear_feature_store()
    c = counter(tiny_vit)
    np.testing.assert_array_equal(t.transform(X), first)
    assert c.images == 4  # npys[1] missing, 0, 2 and 3 rejected
    assert len(_files(tmp_path, ".npy")) == 20


@pytest.mark.parametrize("damage", ["wrong dims", "garbage", "wrong layers, valid checksum",
                                    "wrong dims, valid checksum", "other namespace"])
def test_wrong_layout_json_is_detected_and_recomputed(
        images, tiny_vit, counter, tmp_path, monkeypatch, damage):
    X, _ = images
    t = LayerFeatureTransformer(tiny_vit, layer=[1, 4], pooling="cls+mean",
                                feature_store=str(tmp_path))
    first = t.fit_transform(X)
    (path,) = _files(tmp_path, "layout.json")
    with open(path) as f:
        original = f.read()
    doc = json.loads(original)
    ns = doc["namespace"]
    if damage == "wrong dims":
        doc["layout"] = [[la, p, d + 1] for la, p, d in doc["layout"]]
    elif damage == "garbage":
        doc = {"a": [1, 2]}
    elif damage == "wrong layers, valid checksum":
        doc["layout"] = doc["layout"][:6]
        doc["checksum"] = _layout_digest(ns, doc["layout"])
    elif damage == "wrong dims, valid checksum":
        doc["layout"] = [[la, p, d // 2] for la, p, d in doc["layout"]]
        doc["checksum"] = _layout_digest(ns, doc["layout"])
    else:
        doc["namespace"] = "0" * 32
    with open(path, "w") as f:
        json.dump(doc, f)
    _fresh_process(monkeypatch)
    c = counter(tiny_vit)
    with pytest.warns(FeatureStoreWarning):
        again = clone(t).fit_transform(X)
    np.testing.assert_array_equal(again, first)
    assert 0 < c.images <= 2 * len(X)
    with open(path) as f:
        assert json.loads(f.read()) == json.loads(original)  # rewritten as it was
    _fresh_process(monkeypatch)  # a third run reads everything, without a warning
    done = c.images
    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureStoreWarning)
        np.testing.assert_array_equal(clone(t).fit_transform(X), again)
    assert c.images == done
