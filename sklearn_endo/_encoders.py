"""Encoder handling: resolve a spec to a frozen module, once per process.

``encoder`` is a timm model name, a ``torch.nn.Module`` or a zero-argument callable.
Estimators keep only that spec; the weights live in a small process-wide registry keyed
by the spec, so that ``clone()`` (called per candidate and fold by GridSearchCV) and
pickling never copy them. A module passed in is used as it is: it runs in eval mode under
``torch.inference_mode`` and is never modified in place (its ``training`` flag is restored
after each pass; it is copied only when it must move to another device).

What identifies an encoder:

- a timm name: the name, ``pretrained``, ``img_size``, the device and, for
  ``checkpoint_path``, the file's path, size, inode, device and change times (a file
  replaced with its mtime kept, as ``cp -p`` or ``rsync -t`` do, still has a new ctime);
- a callable: what it is, not where it lives: functions (lambdas and closures included)
  by the function object itself, which the registry keeps alive so that its identity
  cannot pass to another; ``functools.partial`` objects and callable instances by their
  pickled content, with the functions and classes they name again by identity;
- a module: the object, with its weights checked on every use (:meth:`EncoderHandle.refresh`).

Every handle carries a fingerprint of its weights, and ``refresh`` notices weights edited
in place (``p.data.mul_(2)`` included) by a cheap check of version counters and sampled
elements, recomputing the fingerprint only when they changed.

Named encoders with ``pretrained=False`` always get the same random weights: timm's
initialisation under ``torch.manual_seed(0)``, whatever the global torch seed, so that
every process (``n_jobs`` workers, later sessions) computes the same fingerprint and
shares the feature store. For other random weights pass a module or a callable.
"""

from __future__ import annotations

import copy
import hashlib
import io
import numbers
import os
import pickle
import threading
import types
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from ._blocks import find_blocks, probe_formats
from ._device import normalize_device, same_device
from ._pretrained import WeightsUnavailableError, create_named, load_checkpoint
from ._weights import _weights_signature, weights_fingerprint

__all__ = ["WeightsUnavailableError", "load_checkpoint", "resolve_encoder", "resolve_device"]


def resolve_device(device):
    """'auto' -> cuda, mps or cpu; otherwise ``torch.device(device)``, checked to exist.

    The device comes back normalised (``cuda`` -> ``cuda:<current>``, see
    :func:`sklearn_endo._device.normalize_device`), so that it compares equal to the
    device of the tensors on it.
    """
    mps = getattr(torch.backends, "mps", None)
    mps_ok = mps is not None and mps.is_available()
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return normalize_device("cuda")
        return normalize_device("mps" if mps_ok else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device={device!r} is not a torch device; use 'auto', 'cpu', 'cuda', "
            f"'cuda:0' or 'mps'."
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r}, but CUDA is not available here "
                f"(torch.cuda.is_available() is False); use device='auto' (the best "
                f"device present) or device='cpu'."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r}, but only {torch.cuda.device_count()} CUDA device(s) "
                f"exist (cuda:0 to cuda:{torch.cuda.device_count() - 1}); use one of "
                f"those, 'auto' or 'cpu'."
            )
    if dev.type == "mps" and not mps_ok:
        raise ValueError(
            f"device={device!r}, but the MPS backend is not available here "
            f"(torch.backends.mps.is_available() is False); use device='auto' (the best "
            f"device present) or device='cpu'."
        )
    return normalize_device(dev)


@dataclass
class EncoderHandle:
    """A frozen encoder and what the package needs to know about it.

    ``block_formats`` has one entry per layer (0 = input of the first block, then every
    block's output): 'NCHW', 'NHWC', 'NLC', 'NC' or None, read from the shapes of a probe
    pass, not from the model's attributes. ``output_fmt`` is the layout shared by all
    4-D outputs.
    """

    module: nn.Module
    name: str
    fingerprint: str  # of the weights; part of every feature-store key
    data_config: dict  # input_size, mean, std, interpolation, crop_pct
    blocks: list  # [(dotted name, module)] in forward order
    output_fmt: str = "NCHW"  # of 4-D block outputs
    num_prefix_tokens: int = 0  # class/register tokens of 3-D block outputs
    has_class_token: bool = False  # token 0 is a class token (not a register token)
    final_norm: nn.Module | None = None
    block_formats: list = field(default_factory=list)
    source: nn.Module | None = field(default=None, repr=False)  # user module copied here
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _signature: tuple = field(default=(), repr=False)
    _sig_cache: dict = field(default_factory=dict, repr=False)  # see _weights_signature
    _size: tuple | None = field(default=None, repr=False)
    # False while no module of this handle was handed out: a named encoder's weights live
    # in the registry only, so nothing outside the package can have edited them and the
    # check before every pass is skipped (it costs ~5 ms, and a search makes two a fit).
    # ``expose()`` (``encoder_`` of the estimators) turns the check on for good.
    exposed: bool = field(default=True, repr=False)

    def expose(self):
        """The module is about to reach user code: check its weights from now on."""
        self.exposed = True
        return self.module

    @property
    def n_layers(self):
        return len(self.blocks)

    @property
    def layer_names(self):
        return [f"input of {self.blocks[0][0]}"] + [n for n, _ in self.blocks]

    def refresh(self):
        """Recompute ``fingerprint`` if the weights changed since it was taken.

        Costs version counters and 64 sampled elements per tensor, not a hash of the
        weights: a few ms for a ViT-B/16. In-place edits through the parameters (optimizer
        steps, ``load_state_dict``, edits under ``torch.no_grad()``) are always noticed;
        edits through ``p.data`` are noticed when they touch the sampled elements (any
        scaling or shift of a whole tensor does). When the
        handle runs a copy of a user's module (on another device), the copy is updated
        from the module first; when modules were added, removed or replaced, blocks and
        layouts are found again.

        Returns
        -------
        changed : bool
            Whether the weights or the modules changed (the fingerprint was then
            recomputed; it stays the same when a module was replaced by an equal one).
        """
        if not self.exposed:
            return False
        with self.lock:
            source = self.source if self.source is not None else self.module
            signature = _weights_signature(source, self._sig_cache)
            if signature == self._signature:
                return False
            structure_changed = not self._signature or signature[0] != self._signature[0]
            if self.source is not None:
                device = next(self.module.parameters()).device
                if structure_changed:
                    self.module = copy.deepcopy(self.source).to(device)
                else:
                    self.module.load_state_dict(self.source.state_dict())
            if structure_changed:
                fresh = _make_handle(self.module, self.name, self._size, source=self.source)
                for f in ("blocks", "output_fmt", "num_prefix_tokens", "has_class_token",
                          "final_norm",
                          "block_formats", "data_config"):
                    setattr(self, f, getattr(fresh, f))
            self.fingerprint = weights_fingerprint(self.module)
            self._signature = signature
            return True


# ---------------------------------------------------------------- registry
_REGISTRY: OrderedDict = OrderedDict()  # spec key -> (EncoderHandle, objects the key names)
_REGISTRY_SIZE = 4
_MODULE_CACHE: OrderedDict = OrderedDict()  # (id(module), size, device) -> EncoderHandle
_MODULE_CACHE_SIZE = 8
_REGISTRY_LOCK = threading.RLock()


def registry_clear():
    """Forget every loaded encoder (frees their memory)."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()
        _MODULE_CACHE.clear()


def _remember(cache, limit, key, value):
    with _REGISTRY_LOCK:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > limit:
            cache.popitem(last=False)


def _lookup(cache, key):
    with _REGISTRY_LOCK:
        hit = cache.get(key)
        if hit is not None:
            cache.move_to_end(key)
        return hit


_BY_IDENTITY = (types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                types.ModuleType, type)


class _IdentityPickler(pickle.Pickler):
    """Pickles data by value and functions, classes and modules by object identity.

    Plain pickling names a function by ``module.qualname``, which a redefinition in a
    notebook keeps; ``id()`` alone can pass to a new object once the old one is freed.
    The objects named by identity are collected in ``refs`` and kept alive with the key.
    """

    def __init__(self, file, refs):
        super().__init__(file, protocol=4)
        self.refs = refs

    def persistent_id(self, obj):
        if isinstance(obj, _BY_IDENTITY):
            self.refs.append(obj)
            return f"{type(obj).__qualname__}@{id(obj)}"
        return None


def _callable_key(fn):
    """(key, refs): the registry key of a callable and the objects it must keep alive."""
    refs = []
    buf = io.BytesIO()
    try:
        _IdentityPickler(buf, refs).dump(fn)
    except Exception:  # not picklable (holds a lock, a generator, ...): the object itself
        return f"callable-id:{id(fn)}", [fn]
    return "callable:" + hashlib.blake2b(buf.getvalue(), digest_size=16).hexdigest(), refs


def _img_size_tuple(img_size):
    """None or a (height, width) pair of positive ints; anything else is refused."""
    if img_size is None:
        return None
    fix = ("pass an int such as img_size=224, a (height, width) pair such as "
           "(224, 320), or None for the encoder's own size")
    if isinstance(img_size, (str, bytes)):
        raise TypeError(f"img_size={img_size!r} is a string; {fix}.")
    items = (img_size, img_size) if not hasattr(img_size, "__iter__") else tuple(img_size)
    if len(items) != 2 or not all(isinstance(s, numbers.Integral)
                                  and not isinstance(s, bool) for s in items):
        raise TypeError(f"img_size={img_size!r} is not an int or a pair of ints; {fix}.")
    size = tuple(int(s) for s in items)
    if min(size) < 1:
        raise ValueError(f"img_size={img_size!r} must be positive; {fix}.")
    return size


def resolve_encoder(encoder, *, pretrained=True, checkpoint_path=None, img_size=None,
                    device="cpu"):
    """Return the :class:`EncoderHandle` for a spec, loading it at most once per process.

    A handle found in the registry is refreshed first: if its weights were edited since,
    it is left to whoever holds it (with its new fingerprint) and a named or callable
    spec is loaded anew, so that a spec always means the weights it names.
    """
    size = _img_size_tuple(img_size)
    device = resolve_device(device)
    if isinstance(encoder, nn.Module):
        return _handle_for_module(encoder, size, device)
    if isinstance(encoder, str):
        ckpt = None
        if checkpoint_path is not None:
            ckpt = _checkpoint_key(checkpoint_path, encoder)
        key = ("name", encoder, bool(pretrained), ckpt, size, str(device))
        hit = _lookup(_REGISTRY, key)
        if hit is not None and not hit[0].refresh():
            return hit[0]
        module = create_named(encoder, pretrained, ckpt and ckpt[0], size)
        module.eval()  # frozen: encoder_ hands it out with drop path and dropout off
        handle = _make_handle(module.to(device), encoder, size)
        handle.exposed = False  # only the registry holds it until encoder_ hands it out
        _remember(_REGISTRY, _REGISTRY_SIZE, key, (handle, ()))
        return handle
    if callable(encoder):
        spec, refs = _callable_key(encoder)
        key = (spec, size, str(device))
        hit = _lookup(_REGISTRY, key)
        if hit is not None and not hit[0].refresh():
            return hit[0]
        module = encoder()
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"encoder is a callable that returned {type(module).__name__}; it must "
                f"return a torch.nn.Module."
            )
        module.eval()  # the registry's own module (frozen): no drop path or dropout
        handle = _make_handle(module.to(device), getattr(encoder, "__name__", "callable"),
                              size)
        _remember(_REGISTRY, _REGISTRY_SIZE, key, (handle, refs))
        return handle
    raise TypeError(
        f"encoder must be a timm model name, a torch.nn.Module or a zero-argument callable "
        f"returning one; got {type(encoder).__name__}."
    )


def _checkpoint_key(checkpoint_path, encoder):
    try:
        given = os.fspath(checkpoint_path)
    except TypeError:
        raise TypeError(f"checkpoint_path={checkpoint_path!r} is not a path; pass the path "
                        f"of a .safetensors or .pth file of {encoder!r} weights.") from None
    path = os.path.abspath(given)
    if os.path.isdir(path):
        raise ValueError(
            f"checkpoint_path={given!r} is a directory; pass the path of the .safetensors "
            f"or .pth file of {encoder!r} weights inside it."
        )
    if not os.path.isfile(path):
        raise ValueError(
            f"checkpoint_path={given!r} does not exist; pass the path of a .safetensors or "
            f".pth file of {encoder!r} weights."
        )
    st = os.stat(path)
    # ctime cannot be set by cp -p, rsync -t or tar, which keep size and mtime
    return (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def _handle_for_module(module, size, device):
    key = (id(module), size, str(device))
    handle = _lookup(_MODULE_CACHE, key)
    if handle is not None and module in (handle.source, handle.module):
        handle.refresh()
        return handle
    target = module
    params = list(module.parameters())
    if params and not same_device(params[0].device, device):
        target = copy.deepcopy(module).to(device)  # never move the user's module
    handle = _make_handle(target, type(module).__name__, size,
                          source=module if target is not module else None)
    _remember(_MODULE_CACHE, _MODULE_CACHE_SIZE, key, handle)  # keeps `module` alive
    return handle


def _make_handle(module, name, size, source=None):
    for p in module.parameters():
        p.requires_grad_(False)
    blocks = find_blocks(module)
    if not blocks:
        raise ValueError(
            f"Could not find residual or transformer blocks in encoder {name!r} "
            f"({type(module).__name__}). Pass a timm model (ViT, ResNet, EfficientNet, "
            f"ConvNeXt, ...) or a module whose blocks are held in nn.Sequential containers."
        )
    _check_patch_size(module, name, size)
    data_config = _data_config(module, size)
    formats = _block_formats(module, name, blocks, size, data_config)
    maps = sorted({f for f in formats if f in ("NCHW", "NHWC")})
    if len(maps) > 1:
        raise ValueError(
            f"Encoder {name!r} has blocks with channels-first and channels-last outputs "
            f"({dict(zip([n for n, _ in blocks], formats[1:]))}); pooling them per layer "
            f"is not supported yet. Pass a module whose 4-D block outputs share one layout."
        )
    declared = getattr(module, "output_fmt", None)
    declared = str(declared) if str(declared) in ("NCHW", "NHWC") else "NCHW"
    output_fmt = maps[0] if maps else declared
    formats = [output_fmt if f is None else f for f in formats]
    norm = getattr(module, "norm", None)
    if norm is not None and (isinstance(norm, nn.Identity) or not list(norm.parameters())):
        norm = None
    if formats[-1] != "NLC":  # pooling applies the final norm to token outputs only
        norm = None
    sig_cache = {}
    return EncoderHandle(
        module=module,
        name=name,
        fingerprint=weights_fingerprint(module),
        data_config=data_config,
        blocks=blocks,
        output_fmt=output_fmt,
        num_prefix_tokens=int(getattr(module, "num_prefix_tokens", 0) or 0),
        has_class_token=_has_class_token(module),
        final_norm=norm,
        block_formats=formats,
        source=source,
        _signature=_weights_signature(source if source is not None else module, sig_cache),
        _sig_cache=sig_cache,
        _size=size,
    )


def no_class_token_message(pooling, handle):
    """The error for ``pooling`` with "cls" on an encoder without a class token."""
    what = "has no class token"
    if handle.num_prefix_tokens:
        what += (f": its {handle.num_prefix_tokens} prefix token(s) are register tokens "
                 f"(e.g. a ViT with class_token=False and reg_tokens), and token 0 is not a "
                 f"class token")
    return (f"pooling={pooling!r} needs a class token, but encoder {handle.name!r} {what}; "
            f"use pooling='mean' or 'max'.")


def _has_class_token(module):
    """Whether token 0 of the module's token outputs is a class token.

    timm ViTs say so (``has_class_token``; ``class_token=False`` with register tokens
    still has prefix tokens, all of them registers); other models have a ``cls_token``
    attribute, set or None; failing both, prefix tokens beyond the register tokens.
    """
    flag = getattr(module, "has_class_token", None)
    if flag is not None:
        return bool(flag)
    if hasattr(module, "cls_token"):
        return module.cls_token is not None
    prefix = int(getattr(module, "num_prefix_tokens", 0) or 0)
    return prefix > int(getattr(module, "num_reg_tokens", 0) or 0)


def _check_patch_size(module, name, size):
    """ViTs: ``img_size`` must hold at least one patch and, unless padded, whole patches."""
    embed = getattr(module, "patch_embed", None)
    patch = getattr(embed, "patch_size", None)
    if size is None or patch is None:
        return
    patch = (patch, patch) if isinstance(patch, int) else tuple(int(p) for p in patch)
    if any(s < p for s, p in zip(size, patch)):
        raise ValueError(
            f"img_size={size} is smaller than the {patch[0]}x{patch[1]} patches of encoder "
            f"{name!r}; use at least {patch} (e.g. img_size={4 * patch[0]})."
        )
    if not getattr(embed, "dynamic_img_pad", False) and any(
            s % p for s, p in zip(size, patch)):
        fit = tuple(max(p, s // p * p) for s, p in zip(size, patch))
        raise ValueError(
            f"img_size={size} is not a multiple of the {patch[0]}x{patch[1]} patches of "
            f"encoder {name!r}, so the border would be cut off; use e.g. img_size={fit}."
        )


def _block_formats(module, name, blocks, size, data_config):
    input_size = tuple(data_config["input_size"])
    try:
        formats, _ = probe_formats(module, blocks, input_size, len(data_config["mean"]))
    except Exception as exc:
        if size is not None:
            raise ValueError(
                f"img_size={size} does not fit encoder {name!r}: a probe image of that size "
                f"fails with {type(exc).__name__}: {exc}. Use the encoder's own input size "
                f"(img_size=None) or a size it accepts (a multiple of its patch or window)."
            ) from exc
        raise ValueError(
            f"Encoder {name!r} fails on a probe image of its input size {input_size}: "
            f"{type(exc).__name__}: {exc}. Pass a module that takes (N, 3, H, W) images, "
            f"or set img_size."
        ) from exc
    return formats


def _data_config(module, size):
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=module)
    out = {
        "input_size": tuple(cfg["input_size"][1:]),
        "mean": tuple(float(v) for v in cfg["mean"]),
        "std": tuple(float(v) for v in cfg["std"]),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "crop_pct": float(cfg.get("crop_pct", 0.875)),
    }
    fixed = getattr(getattr(module, "patch_embed", None), "img_size", None)
    if size is not None:
        out["input_size"] = size
    elif fixed is not None:  # a ViT built for another size than its pretrained config
        out["input_size"] = tuple(int(v) for v in fixed)
    return out
