"""benchmarks/gpu_check.py: the branches it lists are the package's decisions, and its
cheap checks pass with the CPU on both sides (the CUDA run itself needs a GPU)."""

import os
import subprocess
import sys

import pytest
import torch

BENCH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, BENCH)
    try:
        import gpu_check

        yield gpu_check
    finally:
        sys.path.remove(BENCH)


def test_dry_run_lists_every_device_class():
    out = subprocess.run([sys.executable, os.path.join(BENCH, "gpu_check.py"), "--dry-run"],
                         capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert any(line.strip().startswith("cpu ") and "no autocast" in line for line in lines)
    t4 = next(line for line in lines if "cuda 7.5" in line)
    assert "autocast float16, GradScaler on" in t4 and "'tf32_matmul': False" in t4
    a100 = next(line for line in lines if "cuda 8.0" in line)
    assert "autocast bfloat16, GradScaler off" in a100 and "'tf32_matmul': True" in a100
    assert "autocast off (float32)" in next(line for line in lines if "cuda 6.1" in line)
    assert "passed" not in out  # a dry run runs nothing


def test_branches_follow_the_capability_rule(gpu_check, monkeypatch):
    from sklearn_endo import _device

    # a package that chose bfloat16 for Turing would be listed (and run) that way
    monkeypatch.setattr(_device, "autocast_dtype_for", lambda cap: torch.bfloat16)
    assert all("float16, GradScaler on" not in d for _, d in gpu_check.branches())


def test_cheap_checks_pass_cpu_vs_cpu(gpu_check):
    rows = []
    device = torch.device("cpu")
    gpu_check.check_identity(device, rows)
    gpu_check.check_probes(device, rows)
    assert len(rows) == 3 and all(ok for _, ok, _, _ in rows), rows


def test_gap_is_relative_to_scale(gpu_check):
    assert gpu_check._gap([[100.0]], [[100.5]]) == pytest.approx(5e-3)
    assert gpu_check._gap([[0.1]], [[0.2]]) == pytest.approx(0.1)
