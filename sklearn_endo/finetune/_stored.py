"""Stored features of a frozen part: computed once, kept in the feature and token stores.

With ``freeze="all"`` one pass of the frozen trunk writes pooled rows (every pooling,
float32) to the feature store and float16 token maps of the cut to the token store;
with ``freeze=k`` the float16 input maps of block ``k + 1`` go to the token store,
after a probe check that blocks ``k+1..layer`` form a chain. ``FineTuneClassifier``
trains and predicts on them through :class:`StoredFeaturesMixin`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings

import numpy as np
import torch

from .. import _decode
from .._device import numeric_mode
from .._images import image_hashes, make_loader
from .._store import get_store
from ._tokens import TOKENS

__all__ = ["StoredFeaturesMixin"]


class _StoredDataset(torch.utils.data.Dataset):
    """Stored outputs of the frozen part (an (N, D) array of pooled rows, or a list of
    maps that are the token store's own entries, not a stacked copy) and labels."""

    def __init__(self, stored, y, sample_weight=None):
        self.stored = stored
        self.y = y
        self.sample_weight = sample_weight

    def __len__(self):
        return len(self.stored)

    def __getitem__(self, i):
        from ._build import target

        return torch.from_numpy(np.asarray(self.stored[i])), target(self.y,
                                                                    self.sample_weight, i)


class StoredFeaturesMixin:
    """The stored-features part of ``FineTuneClassifier`` (which provides ``module_``,
    ``freeze_``, ``layer_``, ``input_size_``, ``_cut_shapes_``, ``_get_handle`` and
    ``_interp``)."""

    def _stored_kind(self, images):
        """What of the frozen part is computed once: "pooled" rows or "tokens" at the cut
        (``freeze="all"``), "boundary" maps at block ``freeze + 1`` (``freeze=k``), or
        False (train through the encoder)."""
        if (self.freeze_ < 0 or self.mixup_ or self.augment_ is not None
                or self.feature_store is None):
            return False
        n_images = len(images)
        if self.freeze_ == self.layer_:
            if self.head == "linear":
                return "pooled"
            shape = self._cut_shapes_["tokens"]
            what = "token maps at the frozen cut"
        else:
            shape = self._boundary_shape()
            if shape is None:
                return False
            what = f"maps at the frozen boundary (the input of block {self.freeze_ + 1})"
        need = n_images * int(np.prod(shape)) * 2
        if need > TOKENS.max_bytes:
            warnings.warn(
                f"The {what} of {n_images} images need {need / 2**20:.0f} MiB as float16, "
                f"more than the token store holds ({TOKENS.max_bytes / 2**20:.0f} MiB, "
                f"SKLEARN_ENDO_TOKEN_BYTES): training through the encoder instead, one "
                f"pass of the frozen part per image and epoch. Raise "
                f"SKLEARN_ENDO_TOKEN_BYTES to store them.", UserWarning, stacklevel=3)
            return False
        return "tokens" if self.freeze_ == self.layer_ else "boundary"

    def _progress(self, loader, what):
        """``loader``, with a progress bar during ``fit``'s feature pass when verbose."""
        if not getattr(self, "_feature_progress_", False):
            return loader
        from tqdm.auto import tqdm

        return tqdm(loader, desc=f"{type(self).__name__}: {what}", unit="batch")

    def _stored_input(self):
        """What ``module_`` is given (see ``FineTuneNet.stored_input``)."""
        if self.stored_features_ == "boundary":
            return int(self.freeze_)
        return "features" if self.stored_features_ else None

    def _boundary_shape(self):
        """Shape of one image's boundary map for ``freeze_``, or None (with a warning)
        when blocks ``freeze_+1..layer_`` cannot run on it alone: the stored path must
        give the trunk's own output on a probe image, else it is not used."""
        k, net = self.freeze_, self.module_
        gen = torch.Generator().manual_seed(0)  # the global RNG is left as it is
        probe = torch.rand(1, 3, *self.input_size_, generator=gen).to(self.device)
        was = net.training
        net.eval()
        reason = None
        try:
            with torch.no_grad():
                direct = net.cut(probe)
                edge = net.boundary(probe, k)
                resumed = net.trunk.resume(edge, k)
            if not isinstance(edge, torch.Tensor):
                reason = f"block {k + 1} takes a {type(edge).__name__}, not a tensor"
            elif resumed.shape != direct.shape or not torch.allclose(
                    resumed, direct, rtol=1e-4, atol=1e-5):
                reason = (f"running blocks {k + 1}..{self.layer_} one after the other "
                          f"does not give the encoder's own output at layer {self.layer_}")
        except Exception as exc:  # a block that needs more than the previous output
            reason = (f"running blocks {k + 1}..{self.layer_} one after the other on the "
                      f"stored input of block {k + 1} failed ({exc})")
        finally:
            net.train(was)
        if reason is not None:
            warnings.warn(
                f"freeze={self.freeze_!r}: the frozen part cannot be computed once for "
                f"this encoder: {reason}. Training through the encoder instead (one pass "
                f"of the frozen part per image and epoch).", UserWarning, stacklevel=4)
            return None
        return tuple(edge.shape[1:])

    def _stored(self, images):
        """An (N, D) array of pooled rows, or a list of N float16 maps (the token
        store's own entries: no stacked copy of them)."""
        if self.stored_features_ == "boundary":
            return self._boundary_maps(images)
        return self._cut_features(images, self.stored_features_)

    def _namespace(self, *kind):
        handle = self._get_handle()
        spec = (handle.fingerprint, self.input_size_, self._interp(),
                self.module_.num_prefix_tokens, _decode.PREPROCESSING) + kind
        # the frozen part runs in float32 (no autocast) on the network's device: rows
        # from a GPU (TF32 convolutions by default) never share the CPU's namespace
        mode = numeric_mode(next(self.module_.parameters()).device, amp=False)
        if mode is not None:  # the CPU in float32: keys as they were
            spec += (tuple(sorted(mode.items())),)
        return hashlib.blake2b(repr(spec).encode(), digest_size=16).hexdigest()

    def _pooled_layout(self):
        """[(layer, pooling, dim)] of a stored row: every pooling of the cut's output."""
        shape, npt = self._cut_shapes_["raw"], self.module_.num_prefix_tokens
        cls = len(shape) == 2 and npt > 0 and self._get_handle().has_class_token
        names = ["mean", "max"] + (["cls"] if cls else [])
        dim = shape[-1] if len(shape) == 2 else shape[0]
        return [(self.layer_, name, int(dim)) for name in names]

    def _cut_features(self, images, want):
        """Pooled rows (float32 array) or token maps (list of float16) at the cut.

        One pass serves both heads: images missing what ``want`` names are encoded
        once and leave both their pooled row (all poolings, in the feature store) and,
        when the training set's maps fit the token store, their token map; a later
        candidate with the other head reads them.
        """
        from ._network import pool, to_tokens

        layout = self._pooled_layout()
        expected = [tuple(item) for item in layout]
        size = sum(d for _, _, d in layout)
        ns_rows = self._namespace("pooled", self.layer_, "v2")
        ns_maps = self._namespace("tokens", self.layer_, "v2")
        store = get_store(self.feature_store)
        store.get_layout(ns_rows, check=lambda got: None if [
            tuple(i) for i in got] == expected else f"it holds {got}, not {expected}")
        keys = image_hashes(images)
        rows = store.get(ns_rows, keys, size)
        maps = TOKENS.get(ns_maps, keys)
        need = len(set(keys)) * int(np.prod(self._cut_shapes_["tokens"])) * 2
        keep_maps = need <= TOKENS.max_bytes
        have = rows if want == "pooled" else maps
        todo = {}
        for i, (key, value) in enumerate(zip(keys, have)):
            if value is None:
                todo.setdefault(key, i)  # duplicates of one image are computed once
        if todo:
            store.check_writable()
            loader = make_loader(images, list(todo.values()), self.input_size_,
                                 batch_size=self.batch_size, interpolation=self._interp())
            net, npt = self.module_, self.module_.num_prefix_tokens
            parts = "+".join(name for _, name, _ in layout)
            fresh, done, rows_of, maps_of = list(todo), 0, {}, {}
            store.put_layout(ns_rows, layout)
            was = net.training
            net.eval()
            try:
                with torch.inference_mode():
                    for xb in self._progress(loader, "features of the frozen trunk"):
                        out = net.cut(xb.to(self.device))
                        batch, done = fresh[done:done + len(xb)], done + len(xb)
                        # kept batch by batch: no copy of all maps at once
                        new_rows = pool(out, parts, npt).float().cpu().numpy()
                        store.put(ns_rows, batch, new_rows)
                        rows_of.update(zip(batch, new_rows))
                        if keep_maps or want == "tokens":
                            new_maps = to_tokens(out, npt).to("cpu", torch.float16).numpy()
                            if keep_maps:  # else (predicting a large set) used, not kept
                                TOKENS.put(ns_maps, batch, new_maps)
                            maps_of.update(zip(batch, new_maps))
            finally:
                net.train(was)
            rows = [rows_of.get(k, v) if v is None else v for k, v in zip(keys, rows)]
            maps = [maps_of.get(k, v) if v is None else v for k, v in zip(keys, maps)]
        if want == "tokens":
            return maps
        rows = np.stack(rows)
        dim, offsets = layout[0][2], {name: j for j, (_, name, _) in enumerate(layout)}
        return np.concatenate([rows[:, offsets[p] * dim:(offsets[p] + 1) * dim]
                               for p in self.module_.pooling.split("+")], axis=1)

    def _boundary_maps(self, images):
        """Float16 input maps of block ``freeze_ + 1``, from the token store or computed."""
        k = self.freeze_
        namespace = self._namespace("boundary", k, "v1")
        keys = image_hashes(images)
        maps = TOKENS.get(namespace, keys)
        todo = {}
        for i, (key, value) in enumerate(zip(keys, maps)):
            if value is None:
                todo.setdefault(key, i)
        if todo:
            loader = make_loader(images, list(todo.values()), self.input_size_,
                                 batch_size=self.batch_size, interpolation=self._interp())
            net = self.module_
            was = net.training
            net.eval()
            order, done, fresh = list(todo), 0, {}
            try:
                with torch.inference_mode():
                    for xb in self._progress(loader, f"maps at block {k + 1}"):
                        edge = net.boundary(xb.to(self.device), k)
                        edge = edge.to("cpu", torch.float16).numpy()
                        batch, done = order[done:done + len(xb)], done + len(xb)
                        TOKENS.put(namespace, batch, edge)  # batch by batch, no copy
                        fresh.update(zip(batch, edge))
            finally:
                net.train(was)
            maps = [fresh[key] if v is None else v for key, v in zip(keys, maps)]
        return maps

    def _predict_stored(self, images):
        """Softmax outputs on stored features, a chunk of images at a time (memory
        bounded by a chunk of maps)."""
        out = []
        step = max(self.batch_size, 1024)  # memory bounded by a chunk of maps
        for start in range(0, len(images), step):
            part = dataclasses.replace(images,
                                       data=images.data[start:start + step])
            data = self._stored(part)
            size = max(self.batch_size, 256)
            for i in range(0, len(data), size):
                xb = torch.from_numpy(np.stack(data[i:i + size]))
                out.append(self.module_(xb.to(self.device)).float().softmax(1)
                           .cpu().numpy())
        return out
