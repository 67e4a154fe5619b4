"""One forward pass, every layer pooled on the device as it goes by.

Forward hooks on the encoder's blocks pool each block output right away (mean, max and,
for token models, the class token), so memory holds a few (batch, dim) vectors per layer
and never a token map of the whole dataset. Layer 0 is the input of the first block (the
embedding: patch embedding + position embedding for ViTs, the stem for CNNs). When only
some layers are wanted, the hook of the deepest one stops the pass.

Extraction streams: ``iter_extract`` yields the pooled rows of one batch at a time, and
every pooled array owns its memory (a class-token row ``x[:, 0]`` would otherwise be a
view that keeps the whole (batch, tokens, dim) map alive), so what the caller keeps is
all that stays in memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util

import numpy as np
import torch

from ._device import autocast_context, autocast_dtype
from ._images import make_loader, to_float

BASE_POOLINGS = ("mean", "max", "cls")
PROGRESS_DELAY_S = 2.0  # a progress bar appears only for passes longer than this


class _StopForward(Exception):
    """Raised by the hook of the deepest requested layer to end the pass early."""


def pool_output(x, handle, final_norm):
    """Pool one block output (tokens (B, N, C) or maps) -> {pooling: (B, C) float32}.

    Every returned tensor owns its storage: none is a view of the block output.
    """
    if isinstance(x, (tuple, list)):
        x = x[0]
    if x.ndim == 3:
        if final_norm and handle.final_norm is not None:
            x = handle.final_norm(x)
        x = x.float()
        npt = handle.num_prefix_tokens if handle.num_prefix_tokens < x.shape[1] else 0
        patches = x[:, npt:]
        out = {"mean": patches.mean(1), "max": patches.amax(1)}
        if npt > 0 and handle.has_class_token:  # not a register token (class_token=False)
            out["cls"] = x[:, 0].clone()  # a view would keep the (B, N, C) map alive
        return out
    if x.ndim == 4:
        if handle.output_fmt == "NHWC":
            x = x.permute(0, 3, 1, 2)
        x = x.float()
        return {"mean": x.mean((2, 3)), "max": x.amax((2, 3))}
    if x.ndim == 2:  # already pooled (e.g. an MLP block): every pooling is the identity
        x = x.float()
        return {"mean": x.clone(), "max": x.clone()}
    raise ValueError(f"Cannot pool a block output of shape {tuple(x.shape)}.")


def to_owned_numpy(value):
    """A (B, C) tensor -> a float32 numpy copy that owns exactly its own bytes."""
    t = value.detach()
    if t.device.type == "cpu":
        t = t.clone(memory_format=torch.contiguous_format)
    t = t.to("cpu", torch.float32).contiguous()
    assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
    return t.numpy()


class _PooledBuffers:
    """Pooled outputs of a pass, copied into buffers allocated once per pass.

    Small tensors that stay alive while the rest of the forward pass allocates and
    frees its large activations fragment the C heap: peak memory then creeps up batch
    after batch although nothing is retained. Copying each pooled tensor at once into
    a buffer made at the first batch (and freeing the tensor) keeps the allocation
    pattern of every batch the same, so the heap reuses its holes.
    """

    def __init__(self):
        self._bufs = {}

    def keep(self, key, value):
        b = value.shape[0]
        buf = self._bufs.get(key)
        if buf is None or buf.shape[0] < b or buf.shape[1:] != value.shape[1:]:
            buf = self._bufs[key] = torch.empty_like(value)
        view = buf[:b]
        view.copy_(value)
        return view


@contextlib.contextmanager
def _hooks(handle, layers, final_norm, sink, stop_at, buffers):
    handles = []

    def make(layer, pre):
        def hook(module, args, output=None):
            value = args[0] if pre else output
            pooled = pool_output(value, handle, final_norm)
            sink[layer] = {p: buffers.keep((layer, p), v) for p, v in pooled.items()}
            del pooled
            if layer == stop_at:
                raise _StopForward

        return hook

    try:
        for layer in sorted(layers):
            if layer == 0:
                mod = handle.blocks[0][1]
                handles.append(mod.register_forward_pre_hook(make(0, True)))
            else:
                mod = handle.blocks[layer - 1][1]
                handles.append(mod.register_forward_hook(make(layer, False)))
        yield
    finally:
        for h in handles:
            h.remove()


def _find_malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def release_free_memory():
    """Return the free pages of the C heap to the system (glibc; a no-op elsewhere).

    The activations of one batch are freed before the next, but the small rows that
    outlive it (store entries, output rows) sit between them on the heap, so glibc can
    neither reuse those holes for the next batch's large buffers nor give them back:
    without this, peak memory creeps up with the number of batches although nothing
    is retained.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def progress_bar(total, desc, verbose):
    """A ``tqdm.auto`` bar shown for passes longer than ``PROGRESS_DELAY_S``, or None."""
    if not verbose:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", delay=PROGRESS_DELAY_S, leave=False,
                dynamic_ncols=True)


def iter_extract(handle, images, indices, *, layers, final_norm=False, stop_early=True,
                 batch_size=32, amp=True, num_workers="auto", crop_pct=None,
                 verbose=False):
    """Pooled features of ``layers`` for ``images[indices]``, one batch at a time.

    Yields ``(start, stop, features)``: ``features`` is ``{(layer, pooling): ndarray
    (stop - start, dim)}`` for ``indices[start:stop]``, for every base pooling the encoder
    offers at each layer. The encoder's lock is held while the generator is open.
    """
    indices = list(indices)
    module = handle.module
    device = next(module.parameters()).device
    cfg = handle.data_config
    mean = torch.tensor(cfg["mean"], device=device).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"], device=device).view(1, -1, 1, 1)
    loader = make_loader(images, indices, cfg["input_size"], batch_size=batch_size,
                         num_workers=num_workers, interpolation=cfg["interpolation"],
                         crop_pct=crop_pct, pin_memory=device.type == "cuda",
                         raw=device.type == "cuda")  # on CUDA: uint8 over the bus
    amp_dtype = autocast_dtype(device, amp)
    bar = progress_bar(len(indices), f"{handle.name} features", verbose)
    layers = sorted(set(layers))
    stop_at = layers[-1] if stop_early and layers[-1] < handle.n_layers else None
    start = 0
    buffers = _PooledBuffers()
    with handle.lock:
        was_training = module.training
        module.eval()
        try:
            for batch in loader:
                with torch.inference_mode(), autocast_context(device, amp_dtype):
                    batch = to_float(batch.to(device, non_blocking=True))
                    batch = (batch - mean) / std
                    sink = {}
                    with _hooks(handle, layers, final_norm, sink, stop_at, buffers):
                        try:
                            module(batch)
                        except _StopForward:
                            pass
                    missing = [la for la in layers if la not in sink]
                    if missing:
                        raise RuntimeError(
                            f"The forward pass of {handle.name!r} did not run layer(s) "
                            f"{missing} ({[handle.layer_names[m] for m in missing]})."
                        )
                    feats = {(layer, pooling): to_owned_numpy(value)
                             for layer, pooled in sink.items()
                             for pooling, value in pooled.items()}
                    del sink, batch
                stop = start + len(next(iter(feats.values())))
                yield start, stop, feats
                del feats
                release_free_memory()
                if bar is not None:
                    bar.update(stop - start)
                start = stop
        finally:
            module.train(was_training)
            if bar is not None:
                bar.close()


def extract(handle, images, indices, **kwargs):
    """Pooled features of ``layers`` for ``images[indices]``, all batches concatenated.

    Returns ``{(layer, pooling): ndarray (len(indices), dim)}``; takes the keyword
    arguments of ``iter_extract``. Holds every row in memory: for small inputs only.
    """
    chunks = {}
    for _, _, feats in iter_extract(handle, images, indices, **kwargs):
        for k, v in feats.items():
            chunks.setdefault(k, []).append(v)
    return {k: np.concatenate(v, axis=0) for k, v in chunks.items()}


def layout_of(features):
    """Sorted ``[(layer, pooling, dim)]`` of an ``extract`` result (the store's layout)."""
    return [(la, p, v.shape[1]) for (la, p), v in sorted(
        features.items(), key=lambda kv: (kv[0][0], BASE_POOLINGS.index(kv[0][1])))]


def pack(features, layout):
    """``extract`` result -> one row per image, layers and poolings concatenated."""
    return np.concatenate([features[(la, p)] for la, p, _ in layout], axis=1)


def offsets(layout):
    out, start = {}, 0
    for la, p, dim in layout:
        out[(la, p)] = (start, start + dim)
        start += dim
    return out, start
