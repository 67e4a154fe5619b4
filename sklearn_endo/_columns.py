"""The output of a feature request, filled from encoder passes and store lookups.

A request names layers and poolings; passes yield packed rows of every (layer, pooling)
block, and store lookups yield stored rows. ``Columns`` copies just the requested blocks
into one preallocated array (or one per layer), so nothing the request did not ask for is
held, and checks that every image was filled before handing the result out.
"""

from __future__ import annotations

import numpy as np

from ._extract import offsets

__all__ = ["Columns"]


class Columns:
    """The output being filled: the requested (layer, pooling) columns for n images."""

    def __init__(self, n, layers, poolings, split, handle):
        self.n, self.layers, self.poolings, self.split = n, layers, poolings, split
        self.handle = handle
        self.targets = None  # [(layer, pooling, array, first column)]
        self.filled = np.zeros(n, dtype=bool)

    def _allocate(self, dims):
        for la in self.layers:
            for p in self.poolings:
                if (la, p) not in dims:
                    raise ValueError(
                        f"pooling={p!r} is not available at layer {la} "
                        f"({self.handle.layer_names[la]!r}) of {self.handle.name!r}: its "
                        f"output has no class token. Use pooling='mean' or 'max'.")
        widths = {la: sum(dims[(la, p)] for p in self.poolings) for la in self.layers}
        self.targets = []
        if self.split:
            self.arrays = {la: np.empty((self.n, widths[la]), np.float32)
                           for la in self.layers}
            starts = dict.fromkeys(self.layers, 0)
        else:
            self.arrays = np.empty((self.n, sum(widths.values())), np.float32)
            starts, col = {}, 0
            for la in self.layers:
                starts[la], col = col, col + widths[la]
        for la in self.layers:
            col = starts[la]
            for p in self.poolings:
                arr = self.arrays[la] if self.split else self.arrays
                self.targets.append((la, p, arr, col))
                col += dims[(la, p)]

    def fill(self, positions, rows, blocks):
        """``out[positions] = blocks[(la, p)][rows]`` for every requested column block."""
        if self.targets is None:
            self._allocate({k: v.shape[1] for k, v in blocks.items()})
        for la, p, arr, col in self.targets:
            block = blocks[(la, p)]
            if rows is not None:
                block = block[rows]
            arr[positions, col:col + block.shape[1]] = block
        self.filled[positions] = True

    def fill_keys(self, keys, where, packed, layout):
        """Fill every position of each key from its packed row (row ``j`` of ``keys[j]``).

        ``packed`` is a 2-D array, or a list of 1-D stored rows: from those only the
        requested (layer, pooling) spans are copied, not whole rows (a ViT-L row holds
        75 spans; a search candidate asks for one).
        """
        spans, _ = offsets(layout)
        rows = np.asarray([j for j, k in enumerate(keys) for _ in where[k]], dtype=np.intp)
        positions = np.asarray([i for k in keys for i in where[k]], dtype=np.intp)
        if isinstance(packed, np.ndarray):
            blocks = {k: packed[:, a:b] for k, (a, b) in spans.items()}
        else:
            wanted = {k: ab for k, ab in spans.items()
                      if k[0] in self.layers and k[1] in self.poolings}
            blocks = {k: np.stack([r[a:b] for r in packed]) for k, (a, b) in wanted.items()}
        self.fill(positions, rows, blocks)

    def result(self):
        if not self.filled.all():  # a bug, never a silent row of garbage
            raise RuntimeError(f"{int((~self.filled).sum())} image(s) got no features.")
        return self.arrays
