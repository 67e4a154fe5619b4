"""Checkpoint keys, resuming across devices, skipped steps and writing the encoder file.

Small pure decisions of :class:`SelfSupervisedPretrainer`, each testable on CPU.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings

__all__ = ["check_checkpoint_dir", "data_digest", "resume_scaler", "save_safetensors",
           "settings_key", "step_was_skipped"]


def settings_key(value):
    """A process-independent string for a setting recorded in a checkpoint.

    Plain values by ``repr``; a module by its class; a function or callable object by
    its qualified name (its state is not looked into), so that the same augmentation or
    encoder factory gives the same key in every process, and another one another key.
    """
    if value is None or isinstance(value, (str, bool, int, float, tuple, list)):
        return repr(value)
    import torch

    if isinstance(value, torch.nn.Module):
        return f"<module {type(value).__module__}.{type(value).__qualname__}>"
    target = value if hasattr(value, "__qualname__") else type(value)
    return f"<callable {getattr(target, '__module__', '?')}.{target.__qualname__}>"


def data_digest(hashes):
    """One digest of the images' content hashes, in order (the order seeds shuffling)."""
    h = hashlib.blake2b(digest_size=16)
    for item in hashes:
        h.update(item.encode() if isinstance(item, str) else bytes(item))
    return h.hexdigest()


def check_checkpoint_dir(checkpoint_dir):
    """Refuse a ``checkpoint_dir`` that is a file or cannot be written, before training."""
    if checkpoint_dir is None:
        return
    try:
        path = os.fspath(checkpoint_dir)
    except TypeError:
        raise ValueError(f"checkpoint_dir={checkpoint_dir!r} must be None or a directory "
                         f"path.") from None
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"checkpoint_dir={path!r} is a file, not a directory; pass a "
                         f"directory (it is created if missing) or checkpoint_dir=None.")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe.", suffix=".tmp")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise ValueError(f"checkpoint_dir={path!r} cannot be written "
                         f"({exc.strerror or exc}); pass a writable directory or "
                         f"checkpoint_dir=None.") from None


def step_was_skipped(scaler, scale_before):
    """Whether the optimizer step just taken through ``scaler`` was skipped.

    ``GradScaler.step`` skips the step when the gradients hold inf or NaN, and
    ``update()`` then lowers the scale (by ``backoff_factor`` < 1); it never lowers it
    otherwise. A disabled scaler never skips.
    """
    if not scaler.is_enabled():
        return False
    return float(scaler.get_scale()) < float(scale_before)


def resume_scaler(scaler, saved, saved_runtime, runtime, where):
    """Load a checkpoint's GradScaler state into ``scaler`` where it applies.

    A checkpoint written without a float16 scaler (CPU, bfloat16, ``amp=False``) holds an
    empty state; a float16 scaler then starts afresh (from its initial scale, as at the
    start of any run) instead of failing in ``load_state_dict({})``. A saved scale is
    dropped by a disabled scaler. A device or precision other than the checkpoint's
    warns: the run continues, but is not bit-identical to an uninterrupted one.
    """
    if scaler.is_enabled() and saved:
        scaler.load_state_dict(saved)
    if saved_runtime is not None:
        before = {k: saved_runtime.get(k) for k in ("device", "autocast_dtype")}
        now = {k: runtime.get(k) for k in ("device", "autocast_dtype")}
        if before != now:
            warnings.warn(
                f"checkpoint_dir={os.fspath(where)!r} was written on {before['device']} "
                f"with autocast {before['autocast_dtype']}; resuming on {now['device']} "
                f"with autocast {now['autocast_dtype']}"
                + (" (the gradient scaler starts afresh)"
                   if scaler.is_enabled() and not saved else "")
                + ". Training continues, but not bit-identically to an uninterrupted run.",
                UserWarning, stacklevel=3)


def save_safetensors(state, path):
    """Write ``state`` to ``path`` (safetensors) or raise an error naming ``path``.

    safetensors writes through a temporary file, so its own errors name that file; the
    usual causes (a missing folder, a directory in the way, a read-only location) are
    checked first or translated.
    """
    from safetensors.torch import save_file

    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"path={path!r} is a directory; pass a file name ending in "
                         f"'.safetensors' inside it.")
    if not os.path.isdir(folder):
        raise ValueError(f"path={path!r}: the folder {folder!r} does not exist; create "
                         f"it first (os.makedirs) or pass a path in an existing folder.")
    try:
        save_file(state, path, metadata={"format": "pt"})
    except Exception as exc:  # SafetensorError, OSError: both name a temporary file
        reason = getattr(exc, "strerror", None) or str(exc).split(":")[0] or type(exc).__name__
        raise ValueError(f"path={path!r} cannot be written ({reason}); pass a writable "
                         f"location.") from None
    return path
