"""Device decisions: each one a small function of the device's own properties.

Everything the package decides about a device is decided here, once, and used by every
estimator and benchmark:

- **identity** (:func:`normalize_device`, :func:`same_device`): ``torch.device("cuda")``
  and ``torch.device("cuda:0")`` compare unequal, but they are the same GPU when device 0
  is the current one; a module already there must not be copied again.
- **autocast dtype** (:func:`autocast_dtype`, :func:`autocast_dtype_for`): chosen from
  the compute capability of the device actually used, never from
  ``torch.cuda.is_bf16_supported()`` (which counts emulation, so it answers True on a T4
  or V100, and asks about the *current* device, not the one in use).
- **numeric mode** (:func:`numeric_mode`): what, besides the weights, preprocessing and
  image, decides a feature's numbers (device type, autocast dtype, TF32), so that rows
  computed in different modes never share a feature-store namespace.

The decisions are pure functions of a capability tuple or a device, and the few
functions that read torch's global state do so through the public torch calls that a
CPU test can replace (``torch.cuda.get_device_capability``, ``torch.cuda.current_device``).
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["autocast_context", "autocast_dtype", "autocast_dtype_for", "dtype_name",
           "needs_grad_scaler", "normalize_device", "numeric_mode", "same_device"]

# cuDNN and cuBLAS have native bfloat16 kernels from Ampere (compute capability 8.0) on;
# below, bfloat16 is emulated. Float16 autocast pays from Volta (7.0, tensor cores) on.
BF16_FROM = (8, 0)
FP16_FROM = (7, 0)
TF32_FROM = (8, 0)  # TF32 tensor cores exist from Ampere on; below, the flags do nothing


def normalize_device(device):
    """The ``torch.device`` with its index filled in: ``cuda`` -> ``cuda:<current>``.

    ``mps`` becomes ``mps:0`` (the only MPS device, and what tensors there report);
    ``cpu`` stays ``cpu`` (CPU tensors report no index, and ``cpu:0`` is the same CPU).

    Examples
    --------
    >>> from sklearn_endo._device import normalize_device
    >>> normalize_device("cpu:0")
    device(type='cpu')
    >>> normalize_device(torch.device("mps"))
    device(type='mps', index=0)
    """
    device = torch.device(device)
    if device.type == "cpu":
        return torch.device("cpu")
    if device.index is not None:
        return device
    if device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    if device.type == "mps":
        return torch.device("mps", 0)
    backend = getattr(torch, device.type, None)  # xpu and other accelerators
    current = getattr(backend, "current_device", None)
    return torch.device(device.type, current()) if current is not None else device


def same_device(a, b):
    """Whether ``a`` and ``b`` name the same device once normalised.

    Examples
    --------
    >>> from sklearn_endo._device import same_device
    >>> same_device("cpu", torch.device("cpu:0"))
    True
    """
    return normalize_device(a) == normalize_device(b)


def autocast_dtype_for(capability):
    """The autocast dtype for a CUDA device of compute ``capability`` (major, minor).

    bfloat16 from 8.0 (Ampere) up, float16 (with a gradient scaler when training) from
    7.0 (Volta, Turing) up, None (float32) below, where neither has fast kernels.

    Examples
    --------
    >>> from sklearn_endo._device import autocast_dtype_for
    >>> autocast_dtype_for((7, 5)), autocast_dtype_for((8, 0)), autocast_dtype_for((6, 1))
    (torch.float16, torch.bfloat16, None)
    """
    capability = tuple(int(c) for c in capability)
    if capability >= BF16_FROM:
        return torch.bfloat16
    if capability >= FP16_FROM:
        return torch.float16
    return None


def autocast_dtype(device, amp=True):
    """The autocast dtype a pass on ``device`` uses, or None when it runs in float32.

    Only CUDA devices get one, from the capability of ``device`` itself (``cuda:1`` is
    asked about ``cuda:1``, ``cuda`` about the current device). The CPU and MPS run in
    float32: the package does not autocast there (bfloat16 on a CPU pays only on the
    few with AMX or AVX512-BF16, and changes the features).

    Examples
    --------
    >>> from sklearn_endo._device import autocast_dtype
    >>> autocast_dtype("cpu") is None
    True
    """
    if not amp:
        return None
    device = normalize_device(device)
    if device.type != "cuda":
        return None
    return autocast_dtype_for(torch.cuda.get_device_capability(device))


def needs_grad_scaler(dtype):
    """Whether training under autocast ``dtype`` needs a ``GradScaler`` (float16 only)."""
    return dtype == torch.float16


def autocast_context(device, dtype):
    """``torch.autocast`` for ``dtype`` on ``device``'s type, or a null context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def dtype_name(dtype):
    """``torch.bfloat16`` -> ``"bfloat16"``; None stays None."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


def _tf32_flags():
    """(matmul, convolution) TF32 switches of this process (torch's global flags)."""
    return (bool(torch.backends.cuda.matmul.allow_tf32),
            bool(torch.backends.cudnn.allow_tf32))


def _cpu_reduced_precision():
    """oneDNN's float32 precision of matmuls and convolutions on the CPU, when lowered
    (``torch.set_float32_matmul_precision("high")`` sets it too), else None."""
    mkldnn = getattr(torch.backends, "mkldnn", None)
    out = {}
    for part in ("matmul", "conv"):
        value = getattr(getattr(mkldnn, part, None), "fp32_precision", None)
        if value not in (None, "none", "ieee"):
            out[part] = str(value)
    return out or None


def numeric_mode_for(device_type, autocast, *, capability=None, tf32=(False, False),
                     cpu_precision=None):
    """The numeric mode (a JSON-able dict) from a device's properties; None for the CPU
    in plain float32, the reference mode whose store keys stay as they always were.

    Parameters
    ----------
    device_type : str
        ``"cpu"``, ``"cuda"``, ``"mps"``, ...
    autocast : torch.dtype or None
        The autocast dtype the computation runs under.
    capability : (int, int) or None
        CUDA compute capability (TF32 counts only from 8.0 on).
    tf32 : (bool, bool)
        Whether TF32 is allowed for matmuls and for convolutions.
    cpu_precision : dict or None
        Lowered oneDNN float32 precision on the CPU (see ``_cpu_reduced_precision``).

    Examples
    --------
    >>> from sklearn_endo._device import numeric_mode_for
    >>> numeric_mode_for("cpu", None) is None
    True
    >>> numeric_mode_for("cuda", torch.bfloat16, capability=(8, 0), tf32=(False, True))
    {'device': 'cuda', 'autocast': 'bfloat16', 'tf32_matmul': False, 'tf32_conv': True}
    """
    if device_type == "cpu" and autocast is None and not cpu_precision:
        return None
    mode = {"device": device_type, "autocast": dtype_name(autocast)}
    if device_type == "cuda":
        on = capability is not None and tuple(capability) >= TF32_FROM
        mode["tf32_matmul"] = bool(on and tf32[0])
        mode["tf32_conv"] = bool(on and tf32[1])
    if device_type == "cpu":
        mode["precision"] = dict(cpu_precision)
    return mode


def numeric_mode(device, amp=True):
    """The numeric mode of a computation on ``device`` (with autocast if ``amp``).

    A feature-store key holds it, so that rows computed on different device types, under
    different autocast dtypes or with TF32 on and off never mix; None for the CPU in
    float32 (the key is then what it was before devices entered it).
    """
    device = normalize_device(device)
    dtype = autocast_dtype(device, amp)
    if device.type == "cuda":
        return numeric_mode_for("cuda", dtype,
                                capability=torch.cuda.get_device_capability(device),
                                tf32=_tf32_flags())
    if device.type == "cpu":
        return numeric_mode_for("cpu", dtype, cpu_precision=_cpu_reduced_precision())
    return numeric_mode_for(device.type, dtype)
