"""``--device`` for the benchmarks: parse, check, describe, and time with CUDA syncs.

Imported by the benchmark scripts, which run as ``python benchmarks/bench_*.py`` (so
this folder is on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import time

import torch


def add_device_argument(parser):
    parser.add_argument(
        "--device", default="cpu",
        help="torch device to benchmark on: 'cpu' (default), 'cuda' or 'cuda:N'; "
             "CUDA timings synchronise the device around every timed region")


def check_device(parser, spec):
    """The ``torch.device`` for ``--device``, or exit with the reason and the fix."""
    from sklearn_endo._encoders import resolve_device

    if spec == "auto":
        parser.error("--device auto would make the figures depend on the machine; "
                     "name the device: --device cpu or --device cuda.")
    if str(spec).startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {spec}: CUDA is not available on this machine "
                     "(torch.cuda.is_available() is False: no GPU, or a CPU-only torch "
                     "build); run with --device cpu, or on a machine with a GPU.")
    try:
        device = resolve_device(spec)
    except ValueError as exc:
        parser.error(f"--device {spec}: {exc}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {spec}: the benchmarks support 'cpu' and 'cuda' only.")
    return device


def sync(device):
    """Wait for the device's queued kernels (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def amp_context(device, amp=True):
    """The package's autocast for ``device`` (``sklearn_endo._device``): what a plain
    loop runs under to be compared with an estimator that has ``amp=True``."""
    from sklearn_endo._device import autocast_context, autocast_dtype

    return autocast_context(device, autocast_dtype(device, amp))


def timed(device, fn):
    """(seconds, result) of ``fn()``, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


@contextlib.contextmanager
def peak_cuda_memory(device, record):
    """Put ``torch.cuda.max_memory_allocated`` of the block in ``record['cuda_peak_mb']``."""
    if torch.device(device).type != "cuda":
        yield
        return
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    try:
        yield
    finally:
        sync(device)
        record["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        record["cuda_peak_above_start_mb"] = (
            torch.cuda.max_memory_allocated(device) - before) / 2**20


def describe(device, extraction=True):
    """One line naming the device (and, for extraction, what AMP / channels-last do)."""
    from sklearn_endo._device import autocast_dtype, dtype_name, normalize_device

    device = normalize_device(device)
    if device.type == "cuda":
        name = f"device {device} ({torch.cuda.get_device_name(device)})"
        amp = dtype_name(autocast_dtype(device)) or "no"
        return (f"{name}; extraction with AMP ({amp} autocast, the package's choice for "
                "this GPU) where stated, on both sides of every ratio" if extraction
                else name)
    name = f"device cpu, {torch.get_num_threads()} torch threads"
    return (f"{name}; AMP and channels-last are off on the CPU (the package's autocast "
            "is CUDA-only), so the 'AMP + channels-last' rows are not run"
            if extraction else name)


def memory_rows(script, args, what):
    """The memory rows of a step benchmark: ``script --memory-child N`` run in a fresh
    process for ``args.n_small`` and ``args.n_large`` image files, each printing one JSON
    line (peak RSS, the peak before fit, CUDA peaks), compared with the decoded size."""
    import json
    import subprocess
    import sys

    print(f"memory    {what} as paths of {args.file_size}px PNGs, image_size {args.size}, "
          f"batch 16, 1 epoch + predict_proba, device {args.device}")
    for n in (args.n_small, args.n_large):
        out = subprocess.run(
            [sys.executable, script, "--memory-child", str(n), "--size", str(args.size),
             "--file-size", str(args.file_size), "--device", args.device],
            capture_output=True, text=True, check=True)
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        peak, before = rec["peak_rss_mb"], rec["before_fit_mb"]
        decoded = n * args.file_size ** 2 * 3 * 4 / 2**20
        line = (f"  {n:5d} files: peak RSS {peak:7.1f} MB, {peak - before:6.1f} MB above the "
                f"peak before fit (all images decoded as float: {decoded:7.1f} MB)")
        if "cuda_peak_mb" in rec:
            line += f"; torch.cuda.max_memory_allocated {rec['cuda_peak_mb']:.1f} MiB"
        print(line)
