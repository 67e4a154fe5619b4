"""One forward pass, every layer pooled on the device as it goes by.

Forward hooks on the encoder's blocks pool each block output right away (mean, max and,
for token models, the class token), so memory holds a few (batch, dim) vectors per layer
and never a token map of the whole dataset. Layer 0 is the input of the first block (the
embedding: patch embedding + position embedding for ViTs, the stem for CNNs). When only
some layers are wanted, the hook of the deepest one stops the pass.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ._images import make_loader

BASE_POOLINGS = ("mean", "max", "cls")


class _StopForward(Exception):
    """Raised by the hook of the deepest requested layer to end the pass early."""


def pool_output(x, handle, final_norm):
    """Pool one block output (tokens (B, N, C) or maps) -> {pooling: (B, C) float32}."""
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
            out["cls"] = x[:, 0]
        return out
    if x.ndim == 4:
        if handle.output_fmt == "NHWC":
            x = x.permute(0, 3, 1, 2)
        x = x.float()
        return {"mean": x.mean((2, 3)), "max": x.amax((2, 3))}
    if x.ndim == 2:  # already pooled (e.g. an MLP block): every pooling is the identity
        x = x.float()
        return {"mean": x, "max": x}
    raise ValueError(f"Cannot pool a block output of shape {tuple(x.shape)}.")


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


def _autocast(device, amp):
    if amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def extract(handle, images, indices, *, layers, final_norm=False, stop_early=True,
            batch_size=32, amp=True, num_workers="auto", crop_pct=None, verbose=False):
    """Pooled features of ``layers`` for ``images[indices]``.

    Returns ``{(layer, pooling): ndarray (len(indices), dim)}`` for every base pooling the
    encoder offers at each layer.
    """
    module = handle.module
    device = next(module.parameters()).device
    cfg = handle.data_config
    mean = torch.tensor(cfg["mean"], device=device).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"], device=device).view(1, -1, 1, 1)
    loader = make_loader(images, indices, cfg["input_size"], batch_size=batch_size,
                         num_workers=num_workers, interpolation=cfg["interpolation"],
                         crop_pct=crop_pct, pin_memory=device.type == "cuda")
    if verbose:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc=f"{handle.name} features", unit="batch")
    layers = sorted(set(layers))
    stop_at = layers[-1] if stop_early and layers[-1] < handle.n_layers else None
    chunks = {}
    with handle.lock:
        was_training = module.training
        module.eval()
        try:
            with torch.inference_mode(), _autocast(device, amp):
                for batch in loader:
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
                    for layer, pooled in sink.items():
                        for pooling, value in pooled.items():
                            chunks.setdefault((layer, pooling), []).append(
                                value.to("cpu", torch.float32).numpy())
        finally:
            module.train(was_training)
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
