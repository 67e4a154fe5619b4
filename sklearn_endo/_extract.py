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

import numpy as np
import torch

from ._images import make_loader

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
        if npt > 0:
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
    """A (B, C) tensor -> float32 numpy array that owns exactly its own bytes."""
    t = value.detach().to("cpu", torch.float32)
    if t.untyped_storage().nbytes() != t.numel() * t.element_size() or not t.is_contiguous():
        t = t.clone(memory_format=torch.contiguous_format)
    return t.numpy()


@contextlib.contextmanager
def _hooks(handle, layers, final_norm, sink, stop_at):
    handles = []

    def make(layer, pre):
        def hook(module, args, output=None):
            value = args[0] if pre else output
            sink[layer] = pool_output(value, handle, final_norm)
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


def autocast_dtype(device, amp):
    """The autocast dtype a pass on ``device`` uses, or None when it runs in float32."""
    if amp and device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def _autocast(device, amp):
    dtype = autocast_dtype(device, amp)
    if dtype is not None:
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


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
                         crop_pct=crop_pct, pin_memory=device.type == "cuda")
    bar = None
    if verbose:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(indices), desc=f"{handle.name} features", unit="img",
                   delay=PROGRESS_DELAY_S, leave=False, dynamic_ncols=True)
    layers = sorted(set(layers))
    stop_at = layers[-1] if stop_early and layers[-1] < handle.n_layers else None
    start = 0
    with handle.lock:
        was_training = module.training
        module.eval()
        try:
            for batch in loader:
                with torch.inference_mode(), _autocast(device, amp):
                    batch = batch.to(device, non_blocking=True)
                    batch = (batch - mean) / std
                    sink = {}
                    with _hooks(handle, layers, final_norm, sink, stop_at):
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
