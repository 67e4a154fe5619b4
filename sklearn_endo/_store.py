"""The feature store: pooled features of every layer, keyed by content.

The encoder is frozen, so the pooled features of an image depend only on (weights,
preprocessing, pooling, image). One forward pass captures all layers; the store keeps a
small float32 vector per image (all layers, all poolings) under

    namespace = fingerprint(weights, preprocessing, final norm)
    key       = hash(image bytes or file content)

so that every later GridSearchCV candidate and fold is a lookup. In memory it is an LRU
bounded in bytes; with a directory it also keeps one ``.npy`` file per entry, written
atomically (temp file + rename) and read with ``allow_pickle=False``. An entry that
cannot be read or has the wrong shape is treated as missing and recomputed.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections import OrderedDict

import numpy as np

__all__ = ["FeatureStore", "get_store", "clear_feature_store"]

DEFAULT_MAX_BYTES = int(os.environ.get("SKLEARN_ENDO_STORE_BYTES", 2 * 1024**3))


class FeatureStore:
    """An LRU of per-image feature vectors, optionally backed by a directory.

    Parameters
    ----------
    max_bytes : int
        Bound of the in-memory part; least recently used entries are dropped first.
    directory : str or None
        If given, entries are also written there so that other processes find them.
    """

    def __init__(self, max_bytes=DEFAULT_MAX_BYTES, directory=None):
        self.max_bytes = int(max_bytes)
        self.directory = directory
        self._mem = OrderedDict()
        self._layouts = {}  # namespace -> [(layer, pooling, dim)] of its vectors
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self):
        return len(self._mem)

    @property
    def nbytes(self):
        return self._bytes

    def clear(self):
        with self._lock:
            self._mem.clear()
            self._layouts.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    def get_layout(self, namespace):
        """What each stored vector of ``namespace`` holds, or None if nothing yet."""
        layout = self._layouts.get(namespace)
        if layout is None and self.directory is not None:
            try:
                with open(os.path.join(self.directory, namespace, "layout.json")) as f:
                    layout = [tuple(item) for item in json.load(f)]
            except (OSError, ValueError):
                return None
            self._layouts[namespace] = layout
        return layout

    def put_layout(self, namespace, layout):
        self._layouts[namespace] = [tuple(item) for item in layout]
        if self.directory is not None:
            _atomic_write(os.path.join(self.directory, namespace, "layout.json"),
                          lambda f: f.write(json.dumps([list(i) for i in layout]).encode()))

    def _path(self, namespace, key):
        return os.path.join(self.directory, namespace, key[:2], key + ".npy")

    def get(self, namespace, keys, size):
        """Vectors for ``keys`` (``None`` where missing); ``size`` is the expected length."""
        out = []
        with self._lock:
            for key in keys:
                vec = self._mem.get((namespace, key))
                if vec is not None:
                    self._mem.move_to_end((namespace, key))
                out.append(vec)
        if self.directory is not None:
            for i, key in enumerate(keys):
                if out[i] is None:
                    vec = self._read(namespace, key, size)
                    if vec is not None:
                        self._put_mem(namespace, key, vec)
                        out[i] = vec
        n_hit = sum(v is not None for v in out)
        self.hits += n_hit
        self.misses += len(keys) - n_hit
        return out

    def put(self, namespace, keys, vectors):
        for key, vec in zip(keys, vectors):
            vec = np.ascontiguousarray(vec, dtype=np.float32)
            self._put_mem(namespace, key, vec)
            if self.directory is not None:
                self._write(namespace, key, vec)

    def _put_mem(self, namespace, key, vec):
        if vec.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._mem.pop((namespace, key), None)
            if old is not None:
                self._bytes -= old.nbytes
            self._mem[(namespace, key)] = vec
            self._bytes += vec.nbytes
            while self._bytes > self.max_bytes and self._mem:
                _, dropped = self._mem.popitem(last=False)
                self._bytes -= dropped.nbytes

    def _read(self, namespace, key, size):
        path = self._path(namespace, key)
        try:
            vec = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):
            vec = None
        if (vec is None or vec.dtype != np.float32 or vec.shape != (size,)
                or not np.isfinite(vec).all()):
            # corrupt or stale: never trust it, drop it and let the caller recompute
            try:
                os.remove(path)
            except OSError:
                pass
            return None
        return vec

    def _write(self, namespace, key, vec):
        _atomic_write(self._path(namespace, key),
                      lambda f: np.save(f, vec, allow_pickle=False))


def _atomic_write(path, write):
    """Write a file through a temp file and a rename: readers see all of it or none."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


_STORES = {}
_STORES_LOCK = threading.Lock()


def get_store(spec):
    """The process-wide store for ``feature_store`` = ``"memory"`` or a directory path."""
    if spec == "memory":
        key = None
    else:
        key = os.path.abspath(os.fspath(spec))
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            store = _STORES[key] = FeatureStore(directory=key)
        return store


def clear_feature_store():
    """Empty the in-memory feature stores of this process (files on disk are kept)."""
    with _STORES_LOCK:
        for store in _STORES.values():
            store.clear()
