"""LayerFeatureTransformer: pooled features from any layer of a frozen encoder."""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import warnings

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted

from . import _decode
from ._claims import Poll
from ._columns import Columns
from ._device import numeric_mode
from ._encoders import no_class_token_message, resolve_device, resolve_encoder
from ._extract import (
    extract,
    iter_extract,
    layout_of,
    offsets,
    pack,
    progress_bar,
)
from ._images import check_images, image_hashes
from ._store import FeatureStoreWarning, get_store

__all__ = ["LayerFeatureTransformer"]

POOLINGS = ("mean", "max", "cls", "cls+mean")
_LAYOUTS = {}  # store namespace -> layout, learnt from the first pass of this process
_LOOKUP_CHUNK = 256  # store rows held at once while copying the requested columns out
CLAIM_CHUNK_BATCHES = 8  # batches per claimed chunk when a DataLoader has worker processes


class LayerFeatureTransformer(TransformerMixin, BaseEstimator):
    """Pooled features from any layer of a frozen timm encoder.

    Which layer to read is an ordinary hyperparameter: put the transformer in a Pipeline
    in front of a linear probe and let GridSearchCV or Optuna choose ``layer`` on
    cross-validated log-loss. The encoder is frozen, so every layer of an image is pooled
    in one forward pass and kept in a feature store keyed by the image's content: the
    whole sweep over layers, poolings and folds costs one encoder pass per unique image.

    Parameters
    ----------
    encoder : str, torch.nn.Module or callable
        A timm model name (e.g. ``"vit_large_patch16_224"``), a module, or a
        zero-argument callable returning one. Named encoders are loaded once per process
        and never copied by ``clone`` or pickled with the estimator; a module passed in is
        used as it is (eval mode, no gradients, never modified in place).
    layer : int or list of int, default=-1
        ``0`` is the embedding (the input of the first block); ``i >= 1`` is the output
        of block ``i``, so "layer 21 of 24" is ``layer=21``; negative values count from
        the end (``-1`` is the last block). A list concatenates layers in its order. For
        ViTs the blocks are the transformer blocks; for CNNs every residual or
        inverted-residual block in forward order. ``n_layers_`` and ``layer_names_``
        tell what there is after ``fit``. A layer may appear once in a list (``[2, -3]``
        on a 4-block encoder names layer 2 twice and is refused): repeated columns add
        nothing and would give repeated feature names.
    pooling : {"mean", "cls", "cls+mean", "max"}, default="mean"
        ``"mean"`` averages the patch tokens without class/register tokens (or the
        spatial map of a CNN); ``"cls"`` takes the class token (ViTs only);
        ``"cls+mean"`` concatenates both; ``"max"`` takes the maximum.
    final_norm : bool, default=False
        Apply the encoder's final norm (``model.norm`` of ViTs) to the tokens of every
        layer before pooling, as timm's ``forward_intermediates(norm=True)`` does.
    pretrained : bool, default=True
        Load pretrained weights for a named encoder. Offline, with nothing cached, fit
        raises ``WeightsUnavailableError`` at once, naming the ways out.
    checkpoint_path : str or None, default=None
        Local weights (``.safetensors`` or a ``.pth`` state dict) for a named encoder.
    img_size : int, (int, int) or None, default=None
        Input size; default the encoder's pretrained config. ViTs created by name
        interpolate their position embeddings to it.
    crop_pct : float or None, default=None
        ``None`` resizes the whole image to the input size (no crop, as the layer-wise
        study did); a float resizes the shorter side to ``size / crop_pct`` and crops
        the centre, as timm's evaluation transform does.
    batch_size : int, default=32
        Images per forward pass.
    device : str, default="auto"
        ``"auto"`` picks cuda, then mps, then cpu.
    amp : bool, default=True
        Mixed precision on CUDA: bfloat16 autocast on GPUs of compute capability 8.0
        and up, float16 on 7.x, float32 below; ignored on CPU and MPS (float32). The
        feature-store key holds the device type and this numeric mode (autocast dtype,
        TF32 on or off), so features computed on the CPU, on CUDA with and without
        autocast never share entries (on CPU the key does not depend on ``amp``).
    num_workers : int or "auto", default="auto"
        DataLoader workers that decode image files while the encoder runs; ``"auto"``
        uses up to 4 for file paths and 0 for in-memory images.
    feature_store : "memory", str path or None, default="memory"
        ``"memory"``: a process-wide LRU store of exact float32 rows, bounded by
        ``SKLEARN_ENDO_STORE_BYTES`` if set (read at import), else by the larger of
        2 GiB and 25% of physical memory. When it has to drop rows it warns once
        (``FeatureStoreWarning``): a search then encodes some images again. A directory
        path: the same, also written to files that other processes (``n_jobs=2``) and
        later runs read; rows dropped from memory are read back from them. Entries are
        written as each batch completes, so an interrupted run keeps what it computed;
        damaged or stale files are detected (checksums) and recomputed. Processes that
        share a cold directory claim the images they encode (claim files), so each
        image is encoded once across all of them; the others wait for its entry
        (``SKLEARN_ENDO_STORE_CLAIMS=0`` turns this off; see docs/scaling.md). A
        directory that cannot be written raises a ``ValueError`` before the encoder
        runs (when something is missing).
        ``None``: no store; the pass stops after the deepest requested layer.
        Either way the pass streams batch by batch: peak memory is bounded by
        ``batch_size`` and the store's byte bound, plus the returned array.
    verbose : bool, default=True
        Show a progress bar (``tqdm.auto``) for encoder passes that last longer than
        2 seconds; it is removed when the pass ends. ``False`` silences it.

    Attributes
    ----------
    n_layers_ : int
        Number of blocks; valid layers are ``0..n_layers_`` and ``-n_layers_..-1``.
    layer_names_ : list of str
        Module name of each layer index (``layer_names_[0]`` is the embedding).
    layers_ : list of int
        The requested layers as non-negative indices.
    data_config_ : dict
        Preprocessing used: ``input_size``, ``mean``, ``std``, ``interpolation``.
    encoder_ : torch.nn.Module
        The frozen encoder in use (a property: reloaded lazily after unpickling).

    See Also
    --------
    sklearn_endo.layer_sweep : Cross-validate a probe on every layer at once.

    Notes
    -----
    Numpy images are ``(N, H, W)`` or ``(N, H, W, C)``; ``uint8`` is read as [0, 255],
    floats must lie in [0, 1]. Grayscale is replicated to RGB. File paths may have any
    size and are decoded lazily.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_endo import LayerFeatureTransformer
    >>> X = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    >>> t = LayerFeatureTransformer("resnet18", layer=3, pretrained=False, img_size=32)
    >>> t.fit_transform(X).shape
    (4, 128)
    >>> t.n_layers_, t.layer_names_[3]
    (8, 'layer2.0')
    """

    def __init__(self, encoder, layer=-1, *, pooling="mean", final_norm=False,
                 pretrained=True, checkpoint_path=None, img_size=None, crop_pct=None,
                 batch_size=32, device="auto", amp=True, num_workers="auto",
                 feature_store="memory", verbose=True):
        self.encoder = encoder
        self.layer = layer
        self.pooling = pooling
        self.final_norm = final_norm
        self.pretrained = pretrained
        self.checkpoint_path = checkpoint_path
        self.img_size = img_size
        self.crop_pct = crop_pct
        self.batch_size = batch_size
        self.device = device
        self.amp = amp
        self.num_workers = num_workers
        self.feature_store = feature_store
        self.verbose = verbose

    # ------------------------------------------------------------ sklearn protocol
    def __sklearn_clone__(self):
        # The encoder module (or factory) is frozen and never modified, so clones share
        # it instead of deep-copying hundreds of MB per GridSearchCV candidate and fold.
        params = self.get_params(deep=False)
        shared = params.pop("encoder")
        params = {k: clone(v, safe=False) for k, v in params.items()}
        return type(self)(shared, **params)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.requires_fit = True
        tags.target_tags.required = False
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_handle", None)  # weights of named encoders are reloaded, not pickled
        return state

    # ------------------------------------------------------------ validation
    def _check_params(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is not supported; use one of "
                             f"{list(POOLINGS)}.")
        if not isinstance(self.batch_size, numbers.Integral) or self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r} must be a positive integer.")
        cp = self.crop_pct
        if cp is not None and (isinstance(cp, bool) or not isinstance(cp, numbers.Real)
                               or not 0 < cp <= 1):
            raise ValueError(f"crop_pct={cp!r} must be None (resize the whole image) or "
                             f"a number in (0, 1], e.g. 0.875 as in timm's evaluation.")
        if not (self.num_workers == "auto" or (isinstance(self.num_workers, numbers.Integral)
                                               and self.num_workers >= 0)):
            raise ValueError(f"num_workers={self.num_workers!r} must be 'auto' or an "
                             f"integer >= 0.")
        fs = self.feature_store
        if not (fs is None or fs == "memory" or isinstance(fs, (str, os.PathLike))):
            raise ValueError(f"feature_store={fs!r} must be 'memory', a directory path or "
                             f"None.")
        if fs is not None and fs != "memory" and os.path.exists(fs) and not os.path.isdir(fs):
            raise ValueError(f"feature_store={os.fspath(fs)!r} is a file, not a directory; "
                             f"pass a directory path (created if missing), 'memory' or None.")
        resolve_device(self.device)

    def _normalize_layers(self, n_layers, layer=None, unique=True):
        layer = self.layer if layer is None else layer
        many = isinstance(layer, (list, tuple, np.ndarray))
        items = list(layer) if many else [layer]
        if not items:
            raise ValueError("layer=[] selects nothing; pass an int or a non-empty list.")
        out = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, numbers.Integral):
                raise TypeError(f"layer={layer!r}: layers are integers (0 = embedding, "
                                f"i = block i, -1 = last block); got {item!r}.")
            item = int(item)
            if not -n_layers <= item <= n_layers:
                raise ValueError(
                    f"layer={item} is out of range for this encoder with {n_layers} blocks: "
                    f"valid layers are 0 (embedding) to {n_layers}, or -{n_layers} to -1 "
                    f"counting from the end."
                )
            out.append(item if item >= 0 else n_layers + 1 + item)
        if not unique:
            return list(dict.fromkeys(out))
        if len(set(out)) < len(out):
            repeated = sorted({la for la in out if out.count(la) > 1})
            raise ValueError(f"layer={layer!r} names layer(s) {repeated} more than once "
                             f"(as indices 0..{n_layers}: {out}); list each layer once.")
        return out

    def _get_handle(self):
        handle = getattr(self, "_handle", None)
        if handle is None:
            handle = resolve_encoder(self.encoder, pretrained=self.pretrained,
                                     checkpoint_path=self.checkpoint_path,
                                     img_size=self.img_size, device=self.device)
            self._handle = handle
        return handle

    @property
    def encoder_(self):
        """The frozen ``torch.nn.Module`` in use (loaded lazily after unpickling)."""
        check_is_fitted(self)
        return self._get_handle().expose()

    # ------------------------------------------------------------ fit / transform
    def fit(self, X, y=None):
        """Load the encoder and check ``layer`` and ``pooling`` against it.

        The encoder does not run here: features are computed (or looked up) by
        ``transform``.

        Parameters
        ----------
        X : array-like of images
            Checked for type, shape and values; not decoded.
        y : ignored

        Returns
        -------
        self : LayerFeatureTransformer
        """
        self._fit(X, y)
        return self

    def _fit(self, X, y):
        """``fit``'s work; returns X checked (an ``Images``: not checked again after)."""
        self._check_params()
        images = check_images(X)
        if y is not None and len(y) != len(X):
            raise ValueError(f"y has {len(y)} entries but X has {len(X)} images; they "
                             f"must match.")
        self._handle = None
        handle = self._get_handle()
        if self.final_norm and handle.final_norm is None:
            raise ValueError(f"final_norm=True, but encoder {handle.name!r} has no final "
                             f"norm; use final_norm=False.")
        if "cls" in self.pooling and not handle.has_class_token:
            raise ValueError(no_class_token_message(self.pooling, handle))
        self.n_layers_ = handle.n_layers
        self.layer_names_ = handle.layer_names
        self.layers_ = self._normalize_layers(handle.n_layers)
        self.data_config_ = dict(handle.data_config)
        return images

    def transform(self, X):
        """Pooled features of ``layer`` (concatenated for a list of layers).

        Parameters
        ----------
        X : array-like of images

        Returns
        -------
        features : ndarray of shape (n_samples, n_features), float32
        """
        check_is_fitted(self)
        return self._features(X, self.layers_, split=False)

    def fit_transform(self, X, y=None, **fit_params):
        """``fit`` then ``transform``, checking the encoder's weights once, not twice.

        Parameters
        ----------
        X : array-like of images
        y : ignored

        Returns
        -------
        features : ndarray of shape (n_samples, n_features), float32
        """
        if fit_params:
            raise TypeError(f"fit_transform got unexpected parameters {sorted(fit_params)}; "
                            f"LayerFeatureTransformer.fit takes X and y only.")
        images = self._fit(X, y)  # X checked once, not again by _features
        # fit has just resolved (and so refreshed) the encoder: nothing ran in between
        return self._features(images, self.layers_, split=False, refresh=False)

    def layer_features(self, X, layers=None):
        """Features of several layers from one encoder pass (or store lookups).

        Parameters
        ----------
        X : array-like of images
        layers : list of int or None, default=None
            Layers to return (negative allowed; repeats are returned once); ``None``
            returns every layer.

        Returns
        -------
        features : dict of int -> ndarray of shape (n_samples, dim)
            Keyed by non-negative layer index, pooled with ``pooling``.
        """
        check_is_fitted(self)
        if layers is None:
            wanted = list(range(self.n_layers_ + 1))
        else:
            wanted = self._normalize_layers(self.n_layers_, list(layers), unique=False)
        return self._features(X, wanted, split=True)

    def get_feature_names_out(self, input_features=None):
        """Names like ``layer21_mean_0``, one per output column."""
        check_is_fitted(self)
        handle = self._get_handle()
        layout = _LAYOUTS.get(self._namespace(handle)) or self._probe_layout(handle)
        dims = {(la, p): d for la, p, d in layout}
        names = []
        for la in self.layers_:
            for p in self.pooling.split("+"):
                names += [f"layer{la}_{p}_{j}" for j in range(dims[(la, p)])]
        return np.asarray(names, dtype=object)

    # ------------------------------------------------------------ internals
    def _namespace(self, handle):
        spec = {"weights": handle.fingerprint, "blocks": handle.layer_names,
                "data": handle.data_config, "crop_pct": self.crop_pct,
                "final_norm": bool(self.final_norm), "v": 1,
                "pre": _decode.PREPROCESSING}  # how pixels are decoded and resized
        mode = numeric_mode(next(handle.module.parameters()).device, self.amp)
        if mode is not None:  # the CPU in float32: keys as they were, old stores valid
            spec["numeric"] = mode
        return hashlib.blake2b(json.dumps(spec, sort_keys=True, default=str).encode(),
                               digest_size=16).hexdigest()

    def _iter(self, handle, images, indices, layers, stop_early, verbose=None):
        return iter_extract(handle, images, indices, layers=layers,
                            final_norm=self.final_norm, stop_early=stop_early,
                            batch_size=self.batch_size, amp=self.amp,
                            num_workers=self.num_workers, crop_pct=self.crop_pct,
                            verbose=self.verbose if verbose is None else verbose)

    def _probe_layout(self, handle):
        size = handle.data_config["input_size"]
        probe = check_images(np.zeros((1, *size, 3), dtype=np.uint8))
        feats = extract(handle, probe, [0], layers=range(handle.n_layers + 1),
                        final_norm=self.final_norm, stop_early=False, amp=self.amp,
                        num_workers=0, crop_pct=self.crop_pct, verbose=False)
        return _LAYOUTS.setdefault(self._namespace(handle), layout_of(feats))

    def _features(self, X, layers, *, split, refresh=True):
        """Features of ``layers`` (non-negative) for X, streamed batch by batch.

        Only the requested columns are kept for all images: rows of every layer are
        held one batch (or one chunk of store lookups) at a time, and go to the store
        (and its files) as each batch completes. Returns one (n, width) array, or a
        dict layer -> array with ``split=True``.
        """
        images = check_images(X)
        handle = self._get_handle()
        if refresh:  # the namespace follows in-place weight edits
            handle.refresh()
        out = Columns(len(images), layers, self.pooling.split("+"), split, handle)
        if self.feature_store is None:
            for start, stop, feats in self._iter(handle, images, range(len(images)),
                                                 layers, True):
                out.fill(np.arange(start, stop), None, feats)
            return out.result()

        store = get_store(self.feature_store)
        ns = self._namespace(handle)
        layout = store.get_layout(ns, check=lambda lay: _layout_problem(lay, handle, ns))
        where = {}  # image key -> its positions in X (duplicates are computed once)
        for i, key in enumerate(image_hashes(images)):
            where.setdefault(key, []).append(i)
        todo = list(where) if layout is None else self._lookup(store, ns, layout, where, out)
        if todo:
            store.check_writable()  # before the pass, not after it
            claims = store.claims(ns)
            bar = progress_bar(len(todo), f"{handle.name} features", self.verbose)
            try:
                layout = self._compute(store, ns, handle, images, where, todo, layout,
                                       out, claims, bar)
            finally:
                if claims is not None:
                    claims.release_all()
                if bar is not None:
                    bar.close()
            if layout is None:  # the stored layout was stale: computed anew
                return self._features(X, layers, split=split)
        _LAYOUTS.setdefault(ns, layout)  # for get_feature_names_out
        return out.result()

    def _compute(self, store, ns, handle, images, where, todo, layout, out, claims, bar):
        """Encode (or, with claims, share with other processes) the ``todo`` keys.

        Without claims: one streamed pass over ``todo``. With claims (a directory
        store): chunks of ``todo`` are claimed, the claimed keys encoded and stored,
        the keys claimed by other processes read as their entries land (see
        ``_claims``). Returns the layout, or None if the stored one was stale (its
        features were then stored anew in the new layout and must be re-read).
        """
        check = lambda lay: _layout_problem(lay, handle, ns)  # noqa: E731
        if claims is None:
            chunk = len(todo)
        else:  # chunks small enough that the processes share the work
            workers = images.kind == "paths" and self.num_workers != 0
            chunk = self.batch_size * (CLAIM_CHUNK_BATCHES if workers else 1)
        pending, waiting = list(todo), []
        poll = Poll()
        while pending or waiting:
            for c in range(0, len(pending), chunk):
                keys = pending[c:c + chunk]
                if claims is not None:
                    keys, others = claims.claim(keys)
                    waiting += others
                    if layout is None:
                        layout = store.get_layout(ns, check=check)
                    if keys and layout is not None:  # landed between lookup and claim?
                        keys = self._read_landed(store, ns, layout, keys, where, out,
                                                 claims, bar)
                if not keys:
                    continue
                layout, stale = self._encode(store, ns, handle, images, where, keys,
                                             layout, out, claims, bar)
                if stale:
                    return None
            pending = []
            if not waiting:
                break
            # everything of our own is done: read what the others are writing
            if layout is None:
                layout = store.get_layout(ns, check=check)
            if layout is not None:
                before = len(waiting)
                waiting = self._read_landed(store, ns, layout, waiting, where, out,
                                            None, bar)
                if len(waiting) < before:
                    poll.progressed()
            pending = [k for k in waiting if not claims.held_by_live_other(k)]
            if pending:  # released without an entry, or its writer is gone: ours now
                taken = set(pending)
                waiting = [k for k in waiting if k not in taken]
                poll.progressed()
            elif waiting:
                if bar is not None:
                    bar.set_postfix_str(f"waiting for {len(waiting)} from other processes",
                                        refresh=False)
                poll.sleep()
        if claims is not None and claims.taken_over_stale:
            key, owner, limit = claims.taken_over_stale[0]
            warnings.warn(
                f"Feature store {store.directory!r}: took over {len(claims.taken_over_stale)} "
                f"claim(s) not refreshed for {limit:.0f} s (e.g. image {key} "
                f"claimed by {owner}) and encoded those images here. A worker may hang "
                f"or its host be gone, or that host's clock differ; "
                f"SKLEARN_ENDO_CLAIM_STALE_S sets the age.",
                FeatureStoreWarning, stacklevel=4)
        return layout

    def _read_landed(self, store, ns, layout, keys, where, out, claims, bar):
        """Fill ``out`` from the entries of ``keys`` that exist; return the others."""
        found = store.get(ns, keys, offsets(layout)[1])
        hits = [k for k, row in zip(keys, found) if row is not None]
        if hits:
            out.fill_keys(hits, where, [r for r in found if r is not None],
                          layout)
            if claims is not None:
                claims.release(hits)
            if bar is not None:
                bar.update(len(hits))
        return [k for k, row in zip(keys, found) if row is None]

    def _encode(self, store, ns, handle, images, where, keys, layout, out, claims, bar):
        """One streamed pass over ``keys``; stores each batch. Returns (layout, stale)."""
        first = [where[k][0] for k in keys]
        batches = self._iter(handle, images, first, range(handle.n_layers + 1), False,
                             verbose=False)
        try:
            for start, stop, feats in batches:
                fresh = layout_of(feats)
                if layout is None:
                    layout = fresh
                    store.put_layout(ns, layout)
                elif fresh != layout:
                    batches.close()  # releases the encoder's lock before any second pass
                    warnings.warn(f"The stored layout of feature store namespace {ns} "
                                  f"does not match this encoder's features; recomputing "
                                  f"them.", FeatureStoreWarning, stacklevel=5)
                    store.put_layout(ns, fresh)
                    _LAYOUTS[ns] = fresh
                    return fresh, True
                rows = pack(feats, layout)
                done = keys[start:stop]
                store.put(ns, done, rows)
                out.fill_keys(done, where, rows, layout)
                if claims is not None:
                    claims.release(done)  # their entries have landed
                    claims.touch(keys[stop:])  # alive and working on the rest
                if bar is not None:
                    bar.update(stop - start)
        finally:
            batches.close()  # releases the encoder's lock before any second pass
        return layout, False

    def _lookup(self, store, ns, layout, where, out):
        """Copy the requested columns of stored rows into ``out``; return missing keys."""
        size = offsets(layout)[1]
        keys, todo = list(where), []
        for c in range(0, len(keys), _LOOKUP_CHUNK):
            chunk = keys[c:c + _LOOKUP_CHUNK]
            found = store.get(ns, chunk, size)
            hits = [k for k, row in zip(chunk, found) if row is not None]
            todo += [k for k, row in zip(chunk, found) if row is None]
            if hits:
                out.fill_keys(hits, where, [r for r in found if r is not None],
                              layout)
        return todo


def _layout_problem(layout, handle, namespace):
    """Why a stored layout cannot be this encoder's, or None if it can."""
    known = _LAYOUTS.get(namespace)
    if known is not None:
        return None if list(layout) == known else "it differs from this encoder's features"
    layers = sorted({la for la, _, _ in layout})
    if layers != list(range(handle.n_layers + 1)):
        return (f"it has layers {layers[0]}..{layers[-1]} ({len(layers)}) but the encoder "
                f"has 0..{handle.n_layers}")
    for la in layers:
        items = {p: d for l2, p, d in layout if l2 == la}
        if not {"mean", "max"} <= set(items) or len(set(items.values())) != 1:
            return f"layer {la} does not have one width for mean and max pooling"
        if "cls" in items and not handle.has_class_token:
            return f"layer {la} has a class token but the encoder has none"
    return None
