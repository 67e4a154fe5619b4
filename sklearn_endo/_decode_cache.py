"""Decode once: training images kept at the working size between epochs (#19).

``FineTuneClassifier``, ``SelfSupervisedPretrainer`` and ``UBCClassifier`` read the same
files every epoch; their datasets decode through :func:`load_resized`, which keeps each
file's decoded, resized pixels (uint8 (3, h, w), exactly what decoding would give, so
augmentation, applied afterwards, stays random per epoch):

* in memory, in the process that trains, up to ``SKLEARN_ENDO_DECODE_CACHE_BYTES``
  (default 1 GiB; ``0``: none). Entries are kept first come, first kept (an epoch reads
  every image in turn, so evicting the oldest would evict each entry just before it is
  needed again);
* beyond that bound, and always in DataLoader worker processes (image paths are decoded
  by workers, which do not share memory), as one ``.npy`` file per image in
  ``SKLEARN_ENDO_DECODE_CACHE_DIR`` (default: ``sklearn-endo-decoded-<uid>`` in the
  temporary folder; set it beside the feature store, or to an empty string for no
  files), read back memory-mapped from the page cache. Files are written only while
  the disk keeps more than 1 GiB and 5% free. Entries are written to a temporary file
  and renamed, so a run killed halfway leaves only whole entries, which a rerun reuses;
  a damaged entry is decoded again and rewritten. The folder can be deleted at any time.

Entries are keyed by the file's content hash (as the feature store's keys), the output
size, the interpolation, the crop and the decoding pipeline
(:data:`sklearn_endo._decode.PREPROCESSING`), so a changed file or setting is never
served old pixels. Arrays and PIL images are not cached (they are in memory already;
an array at the input size is not even resampled).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading

import numpy as np
import torch

from . import _decode

DEFAULT_BYTES = 1024 ** 3


def _env_bytes():
    raw = os.environ.get("SKLEARN_ENDO_DECODE_CACHE_BYTES", "").strip()
    if not raw:
        return DEFAULT_BYTES
    try:
        value = int(float(raw))
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"SKLEARN_ENDO_DECODE_CACHE_BYTES={raw!r} must be a number of "
                         f"bytes >= 0 (0 turns the decode cache off), e.g. 2000000000.")
    return value


class DecodeCache:
    """Decoded images by key: in memory under ``max_bytes``, then in ``directory``.

    ``max_bytes`` and ``directory`` default to the environment variables (read at each
    call, so they can be changed at run time).
    """

    def __init__(self, max_bytes=None, directory=None):
        self.max_bytes = max_bytes
        self.directory = directory
        self._mem = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def bound(self):
        return _env_bytes() if self.max_bytes is None else int(self.max_bytes)

    def folder(self):
        """The folder of the file tier, or None when there is none."""
        folder = self.directory
        if folder is None:
            folder = os.environ.get("SKLEARN_ENDO_DECODE_CACHE_DIR")
        if folder is None:
            uid = os.getuid() if hasattr(os, "getuid") else "user"
            folder = os.path.join(tempfile.gettempdir(), f"sklearn-endo-decoded-{uid}")
        return folder or None

    @property
    def nbytes(self):
        """Bytes held in memory."""
        return self._bytes

    def clear(self):
        with self._lock:
            self._mem.clear()
            self._bytes = 0

    def get(self, key):
        hit = self._mem.get(key)
        if hit is not None:
            return hit
        folder = self.folder()
        if folder is None:
            return None
        path = os.path.join(folder, key[:2], key + ".npy")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.ndim != 3 or arr.shape[0] != 3 or arr.dtype not in (np.uint8,
                                                                        np.float32):
                raise ValueError(f"unexpected entry {arr.shape} {arr.dtype}")
            t = torch.from_numpy(np.array(arr))  # a copy: the map is closed
            if torch.utils.data.get_worker_info() is None:
                self._keep(key, t)  # written by a worker: served from memory next time
            return t
        except FileNotFoundError:
            return None
        except Exception:  # a damaged entry: decoded again, and rewritten
            try:
                os.remove(path)
            except OSError:
                pass
            return None

    def _keep(self, key, t):
        """Keep ``t`` in memory if the bound allows; whether it is held there now."""
        nbytes = t.numel() * t.element_size()
        with self._lock:
            if key in self._mem:
                return True
            if self._bytes + nbytes <= self.bound():
                self._mem[key] = t.contiguous()
                self._bytes += nbytes
                return True
        return False

    def fits_in_memory(self, n_images, size):
        """Whether ``n_images`` decoded at ``size`` (uint8 RGB) fit the memory bound."""
        return n_images * 3 * int(size[0]) * int(size[1]) <= self.bound()

    def put(self, key, t):
        in_worker = torch.utils.data.get_worker_info() is not None
        nbytes = t.numel() * t.element_size()
        if not in_worker and self._keep(key, t):
            return
        folder = self.folder()
        if folder is None:
            return
        sub = os.path.join(folder, key[:2])
        path = os.path.join(sub, key + ".npy")
        if os.path.exists(path):
            return
        try:
            usage = shutil.disk_usage(folder if os.path.isdir(folder) else
                                      os.path.dirname(os.path.abspath(folder)))
            if usage.free - nbytes < max(1024 ** 3, usage.total // 20):
                return  # keep the disk for the user
        except OSError:
            return
        tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
        try:
            os.makedirs(sub, exist_ok=True)
            with open(tmp, "wb") as f:
                np.save(f, t.contiguous().numpy(), allow_pickle=False)
            os.replace(tmp, path)  # whole entries only, even if killed here
        except OSError:  # a full or read-only disk: the image is decoded next time
            try:
                os.remove(tmp)
            except OSError:
                pass


DECODED = DecodeCache()


def cache_key(images, i, size, interpolation, crop_pct):
    """Key of image ``i`` at ``size``: content hash, size, resampling, pipeline."""
    from ._images import _hash_one

    spec = (_hash_one(images, i), tuple(size), interpolation, crop_pct,
            _decode.PREPROCESSING)
    return hashlib.blake2b(repr(spec).encode(), digest_size=16).hexdigest()


def decode_cached(images, i, size, *, interpolation="bicubic", crop_pct=None,
                  cache=None):
    """:func:`~sklearn_endo._decode.decode_resized`, through the decode cache for files."""
    cache = DECODED if cache is None else cache
    if images.kind != "paths" or size is None or (
            cache.bound() == 0 and cache.folder() is None):
        return _decode.decode_resized(images, i, size, interpolation=interpolation,
                                      crop_pct=crop_pct)
    key = cache_key(images, i, size, interpolation, crop_pct)
    hit = cache.get(key)
    if hit is not None:
        return hit
    t = _decode.decode_resized(images, i, size, interpolation=interpolation,
                               crop_pct=crop_pct)
    cache.put(key, t)
    return t


def load_resized(images, i, size, *, interpolation="bicubic", crop_pct=None):
    """Image ``i`` as float32 (3, h, w) in [0, 1] at ``size``, decoded once per file.

    The training datasets' entry point; see the module docstring.
    """
    t = decode_cached(images, i, size, interpolation=interpolation, crop_pct=crop_pct)
    # a new tensor either way: augmentations that work in place never reach the cache
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float().clone()
