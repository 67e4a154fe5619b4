"""Maps of a frozen part, computed once and kept compactly (float16, bounded).

A transformer head on a frozen trunk sees the same token map of an image in every epoch
and every candidate of a search; with ``freeze=k`` the trainable blocks see the same
input of block ``k + 1``. Both are kept here, in memory, keyed by the frozen part
(weights fingerprint, input size, cut or boundary, preprocessing) and the image's
content, as float16: a ViT-B token map at 224 px is 196 x 768 x 2 bytes = 0.3 MB. The
store is an LRU bounded in bytes (``SKLEARN_ENDO_TOKEN_BYTES``, 1 GiB by default); a
training set whose maps do not fit trains through the encoder instead, with a warning.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np

DEFAULT_MAX_BYTES = int(os.environ.get("SKLEARN_ENDO_TOKEN_BYTES", 1024**3))


class TokenStore:
    """An LRU of float16 token maps ``(n_tokens, dim)``, bounded by ``max_bytes``."""

    def __init__(self, max_bytes=DEFAULT_MAX_BYTES):
        self.max_bytes = int(max_bytes)
        self._mem = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self):
        return self._bytes

    def __len__(self):
        return len(self._mem)

    def clear(self):
        with self._lock:
            self._mem.clear()
            self._bytes = 0

    def get(self, namespace, keys):
        out = []
        with self._lock:
            for key in keys:
                value = self._mem.get((namespace, key))
                if value is not None:
                    self._mem.move_to_end((namespace, key))
                out.append(value)
        return out

    def put(self, namespace, keys, maps):
        with self._lock:
            for key, value in zip(keys, maps):
                value = np.ascontiguousarray(value, dtype=np.float16)
                old = self._mem.pop((namespace, key), None)
                if old is not None:
                    self._bytes -= old.nbytes
                self._mem[(namespace, key)] = value
                self._bytes += value.nbytes
                while self._bytes > self.max_bytes and self._mem:
                    _, dropped = self._mem.popitem(last=False)
                    self._bytes -= dropped.nbytes


TOKENS = TokenStore()


def clear_token_store():
    """Empty the token-map store of this process."""
    TOKENS.clear()
