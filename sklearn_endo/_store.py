"""The feature store: pooled features of every layer, keyed by content.

The encoder is frozen, so the pooled features of an image depend only on (weights,
preprocessing, pooling, image). One forward pass captures all layers; the store keeps a
small float32 vector per image (all layers, all poolings) under

    namespace = fingerprint(weights, preprocessing, final norm[, numeric mode])
    key       = hash(image bytes or file content)

so that every later GridSearchCV candidate and fold is a lookup. In memory it is an LRU
bounded in bytes; rows are copied in, so an entry never keeps a larger array alive.

The bound (``DEFAULT_MAX_BYTES``, fixed at import) is ``SKLEARN_ENDO_STORE_BYTES`` if
that environment variable is set, else the larger of 2 GiB and 25% of the machine's
physical memory (``os.sysconf``; 2 GiB where that is unavailable), so that a ViT-L
sweep of HyperKvasir (10,662 rows of 307 kB, 3.3 GB) stays whole on a machine with
about 13 GB of RAM or more. Rows stay exact float32. A memory-only store that has to
drop a row warns once (``FeatureStoreWarning``): from then on a search over those
images encodes some of them again. A directory-backed store reads dropped rows back
from their files, so it does not warn.

With a directory, every entry is also a file, written as soon as its batch is computed,
so a killed run keeps what it computed and the next run computes only the rest:

``<directory>/<namespace>/layout.json``
    ``{"namespace", "layout": [[layer, pooling, dim], ...], "checksum"}``: what each
    vector of the namespace holds. A layout that does not parse, names another
    namespace, fails its checksum, or does not fit the encoder (layers, poolings, dims)
    is ignored (with a ``FeatureStoreWarning``), recomputed and rewritten.
``<directory>/<namespace>/<key[:2]>/<key>.npy``
    a structured ``.npy`` record ``(check: 16 bytes, vec: float32[size])``, read with
    ``allow_pickle=False``. ``check`` is a blake2b digest of the namespace, the key, the
    layout and the vector bytes, so an entry whose values, length or name changed (or
    one written by an older version without a digest) is detected, deleted and
    recomputed.

Decisions on faults:

- writes go through a temp file ``.<name>.<host>.<pid>.<random>.tmp`` and a rename, so
  readers see whole entries or none. Temp files left by killed writers are never read;
  the first write into a namespace in a process removes those whose writer process is
  gone (same host) or that are older than ``ORPHAN_TMP_AGE_S``.
- an unwritable directory (read-only, or a path that is a file) raises a ``ValueError``
  naming ``feature_store`` before the encoder runs (``check_writable``), rather than
  falling back to memory: a user who asked for files should not silently lose them.
  A read-only store that already holds every entry is read without complaint.
- a directory where an entry file should be is treated as a missing entry; the entry
  is then kept in memory only, with a ``FeatureStoreWarning`` naming the path.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import threading
import time
import warnings
from collections import OrderedDict

import numpy as np

from ._claims import Claims, _pid_alive, claims_enabled, remove_orphan_claim

__all__ = ["FeatureStore", "FeatureStoreWarning", "get_store", "clear_feature_store"]

MIN_DEFAULT_MAX_BYTES = 2 * 1024**3
ORPHAN_TMP_AGE_S = 600  # a temp file this old is an orphan whoever wrote it
_HOST = socket.gethostname().replace(".", "-")[:40] or "host"
_POOLING_ORDER = ("mean", "max", "cls")


class FeatureStoreWarning(UserWarning):
    """A feature-store file was unusable, or the in-memory store had to drop rows."""


def physical_memory_bytes():
    """Physical memory of this machine in bytes, or None where ``os.sysconf`` can't tell."""
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    if pages <= 0 or page <= 0:
        return None
    return int(pages) * int(page)


def default_max_bytes(environ=None):
    """The default in-memory bound of a store, in bytes.

    ``SKLEARN_ENDO_STORE_BYTES`` if set (an integer number of bytes, e.g. ``8000000000``
    or ``8e9``), else ``max(2 GiB, 25% of physical memory)``, or 2 GiB where the
    physical memory is unknown.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("SKLEARN_ENDO_STORE_BYTES", "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not (0 <= value < float("inf") and value == int(value)):
            raise ValueError(
                f"SKLEARN_ENDO_STORE_BYTES={raw!r} is not a number of bytes; set it to a "
                f"non-negative integer such as 8000000000 (8 GB), or unset it for the "
                f"default (the larger of 2 GiB and 25% of physical memory).")
        return int(value)
    phys = physical_memory_bytes()
    return MIN_DEFAULT_MAX_BYTES if phys is None else max(MIN_DEFAULT_MAX_BYTES, phys // 4)


DEFAULT_MAX_BYTES = default_max_bytes()


class FeatureStore:
    """An LRU of per-image feature vectors, optionally backed by a directory.

    Parameters
    ----------
    max_bytes : int, default=DEFAULT_MAX_BYTES
        Bound of the in-memory part; least recently used entries are dropped first.
        The default is ``SKLEARN_ENDO_STORE_BYTES`` if set, else the larger of 2 GiB
        and 25% of physical memory. Without a directory, the first row dropped (or
        too large to keep) raises a one-time ``FeatureStoreWarning``.
    directory : str or None
        If given, entries are also written there (as their batch completes) so that
        other processes, and later runs, find them. See the module docstring for the
        file format and how damaged files are handled.

    Attributes
    ----------
    hits, misses : int
        Lookups answered and not answered since the last ``clear``.
    """

    def __init__(self, max_bytes=DEFAULT_MAX_BYTES, directory=None):
        self.max_bytes = int(max_bytes)
        self.directory = directory
        self._mem = OrderedDict()
        self._layouts = {}  # namespace -> [(layer, pooling, dim)] of its vectors
        self._tags = {}  # namespace -> digest of its layout, part of every entry check
        self._cleaned = set()  # namespaces whose orphan temp files were removed
        self._bytes = 0
        self._lock = threading.Lock()
        self._evict_warned = False
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
            self._tags.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    # ------------------------------------------------------------ directory checks
    def check_writable(self):
        """Raise a ValueError naming ``feature_store`` if the directory can't be written."""
        if self.directory is None:
            return
        try:
            if os.path.exists(self.directory) and not os.path.isdir(self.directory):
                raise NotADirectoryError("it is a file, not a directory")
            os.makedirs(self.directory, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.directory, prefix=".probe.",
                                         suffix=".tmp")
            os.close(fd)
            os.remove(probe)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ValueError(
                f"feature_store={self.directory!r} cannot be written ({reason}), so the "
                f"features about to be computed could not be kept. Pass a writable "
                f"directory, feature_store='memory' or feature_store=None."
            ) from None

    def claims(self, namespace):
        """A ``Claims`` for encoding into ``namespace``, or None (memory store, or
        ``SKLEARN_ENDO_STORE_CLAIMS=0``): see ``sklearn_endo._claims``."""
        if self.directory is None or not claims_enabled():
            return None
        return Claims(os.path.join(self.directory, namespace), _HOST)

    # ------------------------------------------------------------ layouts
    def get_layout(self, namespace, check=None):
        """What each stored vector of ``namespace`` holds, or None if nothing valid yet.

        ``check(layout)`` may return a reason (str) why a layout read from disk cannot
        belong to this namespace; such a layout is ignored with a warning.
        """
        layout = self._layouts.get(namespace)
        if layout is not None or self.directory is None:
            return layout
        path = os.path.join(self.directory, namespace, "layout.json")
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            return self._bad_layout(path, exc.strerror or str(exc))
        layout, reason = _parse_layout(raw, namespace)
        if reason is None and check is not None:
            reason = check(layout)
        if reason is not None:
            return self._bad_layout(path, reason)
        self._set_layout(namespace, layout)
        return layout

    def _bad_layout(self, path, reason):
        warnings.warn(f"Ignoring feature store layout {path!r}: {reason}. Its features are "
                      f"recomputed and the layout rewritten.", FeatureStoreWarning,
                      stacklevel=4)
        return None

    def put_layout(self, namespace, layout):
        layout = [(int(la), str(p), int(d)) for la, p, d in layout]
        self._set_layout(namespace, layout)
        if self.directory is not None:
            doc = {"namespace": namespace, "layout": [list(i) for i in layout],
                   "checksum": _layout_digest(namespace, layout)}
            self._clean_orphans(namespace)
            self._write_file(os.path.join(self.directory, namespace, "layout.json"),
                             lambda f: f.write(json.dumps(doc).encode()))

    def _set_layout(self, namespace, layout):
        layout = [tuple(item) for item in layout]
        old = self._layouts.get(namespace)
        if old is not None and old != layout:
            # vectors kept in memory were packed in the old layout: never serve them
            with self._lock:
                for k in [k for k in self._mem if k[0] == namespace]:
                    self._bytes -= self._mem.pop(k).nbytes
        self._layouts[namespace] = layout
        self._tags[namespace] = bytes.fromhex(_layout_digest(namespace, layout))

    # ------------------------------------------------------------ entries
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
        """Keep ``vectors`` (rows of a 2-D array or 1-D arrays) under ``keys``.

        Rows are copied, so the store never holds a view of a larger array. With a
        directory, each entry is written to its file before this returns.
        """
        if self.directory is not None:
            self._clean_orphans(namespace)
        for key, vec in zip(keys, vectors):
            vec = np.array(vec, dtype=np.float32, copy=True, order="C")
            self._put_mem(namespace, key, vec)
            if self.directory is not None:
                self._write(namespace, key, vec)

    def _put_mem(self, namespace, key, vec):
        dropped_any = vec.nbytes > self.max_bytes
        if not dropped_any:
            with self._lock:
                old = self._mem.pop((namespace, key), None)
                if old is not None:
                    self._bytes -= old.nbytes
                self._mem[(namespace, key)] = vec
                self._bytes += vec.nbytes
                while self._bytes > self.max_bytes and self._mem:
                    _, dropped = self._mem.popitem(last=False)
                    self._bytes -= dropped.nbytes
                    dropped_any = True
        if dropped_any and self.directory is None and not self._evict_warned:
            self._evict_warned = True
            self._warn_evicting(vec.nbytes)

    def _warn_evicting(self, row_bytes):
        warnings.warn(
            f"The in-memory feature store is full (bound {self.max_bytes / 1e9:.2f} GB "
            f"= {self.max_bytes} bytes, rows of {row_bytes} bytes per image) and has "
            f"started to drop its least recently used rows: a search over these images "
            f"will encode some images again (more than one encoder pass per image). "
            f"Raise the bound to at least n_images x {row_bytes} bytes with "
            f"SKLEARN_ENDO_STORE_BYTES=<bytes> (set before importing sklearn_endo), or "
            f"pass feature_store=<directory> so that dropped rows are read back from disk.",
            FeatureStoreWarning, stacklevel=5)

    def _check(self, namespace, key, vec):
        h = hashlib.blake2b(digest_size=16)
        h.update(namespace.encode())
        h.update(b"\0" + key.encode() + b"\0")
        h.update(self._tags.get(namespace, b""))
        h.update(np.ascontiguousarray(vec, dtype="<f4").data)
        return np.frombuffer(h.digest(), dtype=np.uint8)

    def _read(self, namespace, key, size):
        path = self._path(namespace, key)
        try:
            rec = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):
            rec = None
            if os.path.isdir(path):
                return None  # handled (with a warning) when the entry is written
        vec = None
        if (rec is not None and rec.dtype.names == ("check", "vec") and rec.shape == ()
                and rec.dtype["vec"].shape == (size,)
                and rec.dtype["vec"].base == np.dtype("<f4")):
            vec = np.array(rec["vec"], dtype=np.float32, copy=True)
            if not (np.isfinite(vec).all()
                    and np.array_equal(rec["check"], self._check(namespace, key, vec))):
                vec = None
        if vec is None:
            # corrupt, stale or tampered with: never trust it; drop it and recompute
            try:
                os.remove(path)
            except OSError:
                pass
        return vec

    def _write(self, namespace, key, vec):
        dtype = np.dtype([("check", "u1", (16,)), ("vec", "<f4", vec.shape)])
        rec = np.zeros((), dtype=dtype)
        rec["check"] = self._check(namespace, key, vec)
        rec["vec"] = vec
        self._write_file(self._path(namespace, key),
                         lambda f: np.save(f, rec, allow_pickle=False))

    def _write_file(self, path, write):
        if os.path.isdir(path):
            try:
                os.rmdir(path)  # an empty directory in the way: remove it
            except OSError:
                warnings.warn(
                    f"Feature store entry {path!r} is a directory, not a file, so this "
                    f"entry is kept in memory only. Remove that directory to store it.",
                    FeatureStoreWarning, stacklevel=4)
                return
        try:
            _atomic_write(path, write)
        except OSError as exc:
            raise ValueError(
                f"feature_store={self.directory!r}: writing {path!r} failed "
                f"({exc.strerror or exc}). Entries written so far are kept; free space "
                f"or fix permissions, or pass feature_store='memory' or None."
            ) from None

    def _clean_orphans(self, namespace):
        """Remove temp files of killed writers from ``namespace`` (once per process)."""
        if namespace in self._cleaned:
            return
        self._cleaned.add(namespace)
        folder = os.path.join(self.directory, namespace)
        remove_orphan_temp_files(folder)


def remove_orphan_temp_files(folder, max_age_s=ORPHAN_TMP_AGE_S):
    """Delete ``*.tmp`` files under ``folder`` whose writer is gone; return how many.

    A temp file is an orphan when its name says it was written on this host by a
    process that no longer runs, or when it is older than ``max_age_s`` seconds (an
    entry is written in milliseconds, so no live writer holds one that long). Claim
    files (``*.claim``) whose writer is gone or that are stale go too (see
    ``sklearn_endo._claims``); all in one walk of the folder.
    """
    removed, now = 0, time.time()
    probe = Claims(folder, _HOST)
    for root, _, files in os.walk(folder):
        for name in files:
            if name.endswith(".claim"):  # a claim whose writer is gone or stale
                removed += remove_orphan_claim(os.path.join(root, name), probe)
                continue
            if not name.endswith(".tmp"):
                continue
            path = os.path.join(root, name)
            try:
                orphan = (_writer_is_gone(name)
                          or now - os.stat(path).st_mtime > max_age_s)
                if orphan:
                    os.remove(path)
                    removed += 1
            except OSError:
                pass
    return removed


def _writer_is_gone(name):
    parts = name.split(".")
    # ".<name>.<host>.<pid>.<random>.tmp" -> ['', name..., host, pid, random, 'tmp']
    if len(parts) < 5 or parts[-4] != _HOST or not parts[-3].isdigit():
        return False
    pid = int(parts[-3])
    return pid != os.getpid() and not _pid_alive(pid)


def _layout_digest(namespace, layout):
    text = json.dumps([namespace, [[int(la), str(p), int(d)] for la, p, d in layout]])
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _parse_layout(raw, namespace):
    """``layout.json`` bytes -> (layout, None) or (None, reason it is unusable)."""
    try:
        doc = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"it does not parse ({exc})"
    if not isinstance(doc, dict) or set(doc) != {"namespace", "layout", "checksum"}:
        return None, "it is not a layout written by this version"
    if doc["namespace"] != namespace:
        return None, f"it names namespace {doc['namespace']!r}"
    items = doc["layout"]
    if not isinstance(items, list) or not items:
        return None, "its layout is not a non-empty list"
    layout = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 3
                and all(type(v) is int for v in item[::2]) and item[1] in _POOLING_ORDER
                and item[0] >= 0 and item[2] > 0):
            return None, f"entry {item!r} is not [layer, pooling, dim]"
        layout.append(tuple(item))
    order = [(la, _POOLING_ORDER.index(p)) for la, p, _ in layout]
    if order != sorted(set(order)):
        return None, "its entries are repeated or out of order"
    if doc["checksum"] != _layout_digest(namespace, layout):
        return None, "its checksum does not match its content"
    return layout, None


def _atomic_write(path, write):
    """Write a file through a temp file and a rename: readers see all of it or none."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    prefix = f".{os.path.basename(path)}.{_HOST}.{os.getpid()}."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
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
            store._cleaned.clear()
