"""The decode-once cache of the training datasets (#19): decodes counted, not timed."""

import numpy as np
import pytest
import torch
from PIL import Image

from sklearn_endo import _decode, _decode_cache
from sklearn_endo._decode_cache import DecodeCache
from sklearn_endo._images import check_images


@pytest.fixture
def jpegs(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(8):
        a = rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)
        paths.append(str(tmp_path / f"{i}.jpg"))
        Image.fromarray(a).save(paths[-1], quality=90)
    return paths


@pytest.fixture
def decodes(monkeypatch):
    """Counts calls of the decoding function the cache wraps."""
    calls = []
    real = _decode.decode_resized

    def counting(images, i, *a, **k):
        calls.append(i)
        return real(images, i, *a, **k)

    monkeypatch.setattr(_decode, "decode_resized", counting)
    return calls


def _use(monkeypatch, cache):
    monkeypatch.setattr(_decode_cache, "DECODED", cache)
    return cache


def _epochs(images, n_epochs, size=(32, 32)):
    out = []
    for _ in range(n_epochs):
        out.append(torch.stack([_decode_cache.load_resized(images, i, size)
                                for i in range(len(images))]))
    return out


def test_files_are_decoded_once_across_epochs(jpegs, decodes, monkeypatch):
    _use(monkeypatch, DecodeCache(max_bytes=10**9, directory=""))
    images = check_images(jpegs)
    first, second, third = _epochs(images, 3)
    assert len(decodes) == len(jpegs)
    torch.testing.assert_close(second, first, atol=0, rtol=0)
    want = torch.stack([_decode.to_float(_decode.decode_resized(images, i, (32, 32)))
                        for i in range(len(jpegs))])
    torch.testing.assert_close(third, want, atol=0, rtol=0)
    # another size, interpolation or pipeline is another entry
    _decode_cache.load_resized(images, 0, (16, 16))
    _decode_cache.load_resized(images, 0, (32, 32), interpolation="bilinear")
    monkeypatch.setattr(_decode, "PREPROCESSING", "other")
    _decode_cache.load_resized(images, 0, (32, 32))
    assert len(decodes) == len(jpegs) + 3 + len(jpegs)  # (+ the `want` decodes)
    # returned tensors are fresh: an in-place augmentation does not reach the cache
    monkeypatch.setattr(_decode, "PREPROCESSING", _decode.PREPROCESSING)
    x = _decode_cache.load_resized(images, 1, (32, 32))
    x.mul_(0)
    assert _decode_cache.load_resized(images, 1, (32, 32)).sum() > 0


def test_memory_bound_then_files(jpegs, decodes, monkeypatch, tmp_path):
    per_image = 3 * 32 * 32
    cache = _use(monkeypatch, DecodeCache(max_bytes=3 * per_image, directory=""))
    images = check_images(jpegs)
    _epochs(images, 3)
    assert cache.nbytes == 3 * per_image
    assert len(decodes) == 8 + 2 * 5  # three kept; the others decoded every epoch
    decodes.clear()
    folder = tmp_path / "decoded"
    cache = _use(monkeypatch, DecodeCache(max_bytes=3 * per_image, directory=str(folder)))
    _epochs(images, 3)
    assert len(decodes) == 8
    files = sorted(folder.rglob("*.npy"))
    assert len(files) == 5 and not list(folder.rglob("*.tmp-*"))
    # a new process (a fresh cache, nothing in memory) reuses the files; a damaged
    # entry (truncated) and a leftover temp file are not read: decoded again
    files[0].write_bytes(files[0].read_bytes()[:100])
    (folder / "junk.npy.tmp-1-2").write_bytes(b"partial")
    decodes.clear()
    _use(monkeypatch, DecodeCache(max_bytes=0, directory=str(folder)))
    again = _epochs(images, 2)
    assert len(decodes) == 3 + 1  # the three that were only in memory, the damaged one
    want = torch.stack([_decode.to_float(_decode.decode_resized(images, i, (32, 32)))
                        for i in range(8)])
    torch.testing.assert_close(again[1], want, atol=0, rtol=0)


def test_worker_processes_write_files_not_memory(jpegs, decodes, monkeypatch, tmp_path):
    cache = _use(monkeypatch, DecodeCache(max_bytes=10**9, directory=str(tmp_path / "d")))
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    _epochs(check_images(jpegs), 1)
    assert cache.nbytes == 0 and len(list((tmp_path / "d").rglob("*.npy"))) == 8


def test_arrays_and_the_off_switch_are_not_cached(jpegs, decodes, monkeypatch):
    cache = _use(monkeypatch, DecodeCache())
    monkeypatch.setenv("SKLEARN_ENDO_DECODE_CACHE_BYTES", "0")
    monkeypatch.setenv("SKLEARN_ENDO_DECODE_CACHE_DIR", "")
    _epochs(check_images(jpegs), 2)
    assert len(decodes) == 16 and cache.nbytes == 0
    monkeypatch.setenv("SKLEARN_ENDO_DECODE_CACHE_BYTES", "many")
    with pytest.raises(ValueError, match="SKLEARN_ENDO_DECODE_CACHE_BYTES='many'"):
        _epochs(check_images(jpegs), 1)
    monkeypatch.delenv("SKLEARN_ENDO_DECODE_CACHE_BYTES")
    decodes.clear()
    X = np.zeros((4, 32, 32, 3), np.uint8)
    _epochs(check_images(X), 2)
    assert len(decodes) == 8 and cache.nbytes == 0


def test_estimators_decode_each_file_once(jpegs, monkeypatch, tmp_path):
    """Fine-tuning on paths decodes in DataLoader workers: counted through a file."""
    from sklearn_endo.finetune import FineTuneClassifier

    log = tmp_path / "decodes.log"
    real = _decode.decode_resized

    def counting(images, i, *a, **k):  # runs in the (forked) worker processes too
        with open(log, "a") as f:
            f.write(f"{i}\n")
        return real(images, i, *a, **k)

    monkeypatch.setattr(_decode, "decode_resized", counting)
    _use(monkeypatch, DecodeCache(max_bytes=10**9, directory=str(tmp_path / "cache")))
    y = np.arange(8) % 2
    clf = FineTuneClassifier("resnet18", pretrained=False, img_size=32, max_epochs=3,
                             batch_size=4, verbose=0)
    clf.fit(jpegs, y)
    assert sorted(int(v) for v in log.read_text().split()) == list(range(8))
    # the SSL and UBC datasets read through the same cache (here in this process)
    from sklearn_endo.ssl._pretrainer import _ViewDataset
    from sklearn_endo.ubc._data import UBCDataset

    log.write_text("")
    images = check_images(jpegs)
    ds = _ViewDataset(images, (24, 24), "bicubic", lambda x: x)
    ubc = UBCDataset(images, (24, 24))
    for _ in range(2):
        for i in range(8):
            ds[i]
            ubc[i]
    assert len(log.read_text().split()) == 8 + 8  # (24, 24) bicubic and bilinear


def test_later_epochs_read_memory_without_worker_processes(jpegs, monkeypatch, tmp_path):
    """Epoch 1 decodes in workers (they write the cache's files); from epoch 2 the main
    process serves every image, from memory after its first read."""
    from sklearn_endo import _iterators
    from sklearn_endo.finetune import FineTuneClassifier

    cache = _use(monkeypatch, DecodeCache(max_bytes=10**9, directory=str(tmp_path / "c")))
    passes = []
    real_iter = _iterators.WorkersForTheFirstEpoch.__iter__

    def spy(self):
        passes.append("workers" if self.passes == 0 else "main")
        return real_iter(self)

    monkeypatch.setattr(_iterators.WorkersForTheFirstEpoch, "__iter__", spy)
    y = np.arange(8) % 2
    clf = FineTuneClassifier("resnet18", pretrained=False, img_size=32, max_epochs=3,
                             batch_size=4, verbose=0, train_split=None)
    clf.fit(jpegs, y)
    assert passes == ["workers", "main", "main"], passes
    assert cache.nbytes == 8 * 3 * 32 * 32  # every image promoted to memory
    assert np.isfinite(clf.history_[:, "train_loss"]).all()
    # a bound too small for the data set keeps the workers in every epoch
    passes.clear()
    _use(monkeypatch, DecodeCache(max_bytes=3 * 32 * 32, directory=str(tmp_path / "c")))
    clf.fit(jpegs, y)
    assert passes == [], passes


def test_pretraining_uses_workers_for_the_first_epoch_only(jpegs, monkeypatch, tmp_path):
    """SelfSupervisedPretrainer: epoch 0 decodes in workers, later epochs in the main
    process from the cache, when the decoded images fit its memory bound."""
    from sklearn_endo.ssl import SelfSupervisedPretrainer

    from .conftest import make_tiny_vit

    workers = []
    real = torch.utils.data.DataLoader

    class Spy(real):
        def __init__(self, *a, num_workers=0, **k):
            workers.append(num_workers)
            super().__init__(*a, num_workers=num_workers, **k)

    monkeypatch.setattr(torch.utils.data, "DataLoader", Spy)
    pre = SelfSupervisedPretrainer(make_tiny_vit, img_size=32, max_epochs=3, batch_size=4,
                                   warmup_epochs=0, num_workers=2, random_state=0,
                                   verbose=False)
    _use(monkeypatch, DecodeCache(max_bytes=10**9, directory=str(tmp_path / "c")))
    pre.fit(jpegs)
    assert workers == [2, 0, 0], workers
    workers.clear()
    _use(monkeypatch, DecodeCache(max_bytes=3 * 32 * 32, directory=str(tmp_path / "c")))
    pre.fit(jpegs)
    assert workers == [2, 2, 2], workers
