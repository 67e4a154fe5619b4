"""Weights fingerprints: a full hash, and a cheap signature that notices in-place edits.

``weights_fingerprint`` names an encoder's weights in the feature store's namespace;
``_weights_signature`` is what :meth:`EncoderHandle.refresh` compares before every pass
to decide whether the fingerprint must be recomputed.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def weights_fingerprint(module):
    """A full hash of every tensor of ``module.state_dict()`` (names, shapes, bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for key, t in module.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{key}{tuple(t.shape)}{t.dtype}".encode())
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.view(torch.int16)
        elif t.dtype == torch.bool:
            t = t.to(torch.uint8)
        if t.numel():
            h.update(t.numpy().data)
    return h.hexdigest()


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_N_SAMPLES = 64
_SAMPLE_INDEX = {}


def _sample_index(n, device):
    key = (n, str(device))
    idx = _SAMPLE_INDEX.get(key)
    if idx is None:
        idx = torch.linspace(0, n - 1, min(n, _N_SAMPLES), device=device).long()
        if len(_SAMPLE_INDEX) < 4096:
            _SAMPLE_INDEX[key] = idx
    return idx


def _bits(t):
    """``t`` flattened and viewed as integers of its element size (a view when contiguous)."""
    flat = t.detach().reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    return flat.view(_INT_OF_SIZE[flat.element_size()])


def _counter(t):
    """The autograd version counter, or None for inference tensors (they keep none)."""
    return None if t.is_inference() else t._version


@torch.no_grad()
def _weights_signature(module, cache=None):
    """(structure, checksum): a cheap test of whether weights or modules changed.

    The structure is every tensor's name, shape, dtype and device and every submodule's
    identity. The checksum is, per tensor, its storage address and autograd version
    counter (bumped by every in-place change made through the tensor: optimizer steps,
    ``load_state_dict``, edits under ``torch.no_grad()``; inference tensors keep none and
    rely on the sampled bits alone), and the bits of 64 elements at fixed, evenly spread
    positions, which catch edits made through ``p.data`` (which bumps no counter)
    whenever they touch those elements: a scaling, a shift, a new tensor copied in. Its
    cost does not grow with the weights' size, so it runs before every pass; a full
    checksum of the bits took 0.1-0.3 s per call for a ViT-S, more than a
    cross-validated sweep's lookups themselves.

    ``cache`` (a dict owned by the caller, e.g. an :class:`EncoderHandle`) keeps, per
    contiguous CPU tensor, a NumPy view of its bits and the sampled positions, so that a
    later call reads the 64 elements straight from memory: about 2 ms instead of 6 ms for
    an EfficientNet-Lite0's 294 tensors. An entry is used only while the tensor keeps its
    address, shape and dtype; a view shares the tensor's memory, so edits through
    ``p.data`` are seen as before.
    """
    state = module.state_dict(keep_vars=True)  # no detach() per tensor: 1 ms less
    structure = (tuple((k, tuple(t.shape), t.dtype, str(t.device)) for k, t in state.items()),
                 tuple((n, id(m)) for n, m in module.named_modules()))
    counters = []
    host = []  # sampled bits of CPU tensors, as NumPy arrays
    parts = {}  # device -> sampled bits of other tensors, as tensors
    fresh = {} if cache is not None else None
    for key, t in state.items():
        ptr = t.data_ptr()
        counters.append((ptr, _counter(t)))
        if not t.numel():
            continue
        if t.device.type == "cpu":
            tag = (ptr, tuple(t.shape), t.dtype)
            hit = cache.get(key) if cache is not None else None
            if hit is None or hit[0] != tag:
                bits = _bits(t)
                idx = _sample_index(bits.numel(), "cpu").numpy()
                hit = (tag, bits.numpy(), idx)
                if not t.is_contiguous():  # reshape copied: read anew next time
                    hit = None, hit[1], idx
            host.append(hit[1][hit[2]].astype(np.int64))
            if fresh is not None and hit[0] is not None:
                fresh[key] = hit
            continue
        bits = _bits(t)
        parts.setdefault(str(t.device), []).append(
            bits[_sample_index(bits.numel(), bits.device)].to(torch.int64))
    if cache is not None:  # only the current tensors: a replaced one is not kept alive
        cache.clear()
        cache.update(fresh)
    checksum = (repr(counters).encode()
                + (b"cpu" + np.concatenate(host).tobytes() if host else b"")
                + b"".join(dev.encode() + torch.cat(v).cpu().numpy().tobytes()
                           for dev, v in sorted(parts.items())))
    return structure, checksum
