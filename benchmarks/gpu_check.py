"""Every CUDA branch of the package once, against the CPU: a table of pass/fail and images/s.

Run by a person with a GPU (a few minutes; tiny random-init models, nothing downloaded)::

    python benchmarks/gpu_check.py                 # cuda (the current GPU)
    python benchmarks/gpu_check.py --device cuda:1

Without CUDA it is a dry run: it prints every branch it would take on a GPU of each
compute-capability class (what the package decides, from ``sklearn_endo._device``), then
runs the same checks with the CPU on both sides, so that the script itself is exercised
(there every gap is 0 up to float rounding). ``--dry-run`` prints the branches only.

Checks (tolerances relative to the result's scale, as in ``tests/test_gpu.py``):

- device identity: a module already on the device is used in place (no second copy);
- features of every layer of a ViT and a CNN, float32 with TF32 off (<= 1e-4), with
  torch's default TF32 (<= 1e-2), and under the package's autocast (<= 5e-2);
- the feature-store namespace differs between CPU and CUDA rows, and a directory store
  written by a CPU process is not served to the CUDA pass (which encodes every image);
- linear probes (L-BFGS, Adam) on the device against the CPU (<= 1e-6 / 1e-4);
- ``UBCClassifier``, ``FineTuneClassifier`` (frozen and unfrozen) trained one epoch on the
  device: finite loss, predictions of the right shape, images/s;
- one epoch of every ``SelfSupervisedPretrainer`` method under AMP: finite loss, the
  gradient scaler on float16 GPUs, momentum teachers moved.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import timm
import torch
from _device import check_device, describe, timed

FP32_RTOL, TF32_RTOL, AMP_RTOL = 1e-4, 1e-2, 5e-2
N, SIZE = 32, 32


def _gap(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(1.0, np.abs(a).max()))


def _images(n=N, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.integers(0, 160, (n, SIZE, SIZE, 3)).astype(np.uint8)
    X[y == 1] += 80
    return X, y


def _encoders():
    torch.manual_seed(0)  # the same weights in every process (the store check needs it)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=SIZE,
                            patch_size=8, depth=4, embed_dim=32, num_heads=2, num_classes=0)
    cnn = timm.create_model("resnet18", pretrained=False, num_classes=0)
    return {"vit": vit.eval(), "cnn": cnn.eval()}


def _set_tf32(on):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on


def branches():
    """What the package decides on each class of device: (device class, decisions)."""
    from sklearn_endo._device import (
        autocast_dtype_for,
        dtype_name,
        needs_grad_scaler,
        numeric_mode_for,
    )

    rows = [("cpu", "float32, no autocast, no GradScaler; store key as before: "
                    f"{numeric_mode_for('cpu', None)!r}")]
    for cap, gpus in (((6, 1), "Pascal, e.g. P100/GTX 10xx"),
                      ((7, 5), "Turing/Volta, e.g. T4, V100"),
                      ((8, 0), "Ampere and newer, e.g. A100, L4, H100")):
        dtype = autocast_dtype_for(cap)
        tf32 = cap >= (8, 0)
        mode = numeric_mode_for("cuda", dtype, capability=cap, tf32=(tf32, tf32))
        rows.append((f"cuda {cap[0]}.{cap[1]} ({gpus})",
                     f"autocast {dtype_name(dtype) or 'off (float32)'}, GradScaler "
                     f"{'on' if needs_grad_scaler(dtype) else 'off'}; store key {mode!r}"))
    rows.append(("cuda, any", "'cuda' normalised to 'cuda:<current>'; a module already "
                              "there is used in place; checkpoints record device and amp"))
    return rows


def _features(module, device, amp, X, store=None):
    from sklearn_endo import LayerFeatureTransformer

    t = LayerFeatureTransformer(module, device=device, amp=amp, feature_store=store,
                                batch_size=16, verbose=False, num_workers=0).fit(X)
    seconds, feats = timed(device, lambda: t.layer_features(X))
    return t, feats, len(X) / seconds


def check_features(device, rows):
    X, _ = _images()
    for name, module in _encoders().items():
        _set_tf32(False)
        _, ref, _ = _features(module, "cpu", False, X)
        for label, amp, tf32, tol in (("fp32, TF32 off", False, False, FP32_RTOL),
                                      ("fp32, TF32 default", False, True, TF32_RTOL),
                                      ("AMP", True, True, AMP_RTOL)):
            _set_tf32(tf32)
            _, feats, speed = _features(module, device, amp, X)
            gap = max(_gap(ref[k], feats[k]) for k in ref)
            rows.append((f"{name} features, {label}", gap <= tol, f"{gap:.1e} <= {tol:g}",
                         speed))
    _set_tf32(False)


def check_identity(device, rows):
    module = _encoders()["cnn"].to(device)
    t, _, _ = _features(module, str(device.type), False, _images(4)[0])
    same = next(t.encoder_.parameters()).data_ptr() == next(module.parameters()).data_ptr()
    rows.append((f"module on {device} with device='{device.type}': used in place", same,
                 "no copy" if same else "copied", None))


def _cpu_store_child(path):
    """In a fresh CPU process: fill the directory store with CPU rows."""
    code = ("import sys; sys.path.insert(0, %r); import gpu_check as g; "
            "g._features(g._encoders()['cnn'], 'cpu', False, g._images()[0], store=%r)"
            % (os.path.dirname(os.path.abspath(__file__)), path))
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


def check_store(device, rows):
    X, _ = _images()
    module = _encoders()["cnn"]
    with tempfile.TemporaryDirectory() as path:
        _cpu_store_child(path)
        calls = []
        hook = module.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
        t, _, _ = _features(module, device, True, X, store=path)
        hook.remove()
        handle = t._get_handle()
        cpu_t = type(t)(module.cpu(), device="cpu", amp=True, feature_store=None)
        ns_device = t._namespace(handle)
        ns_cpu = cpu_t.fit(X[:1])._namespace(cpu_t._get_handle())
    differ = ns_device != ns_cpu
    encoded = sum(calls)
    # on CUDA every image is encoded again; on the CPU (dry run) none: the child's rows serve
    ok = (differ and encoded == len(X)) if device.type == "cuda" else (not differ and not encoded)
    rows.append(("directory store written by a CPU process, read on the device", ok,
                 f"namespaces {'differ' if differ else 'equal'}, {encoded} of {len(X)} "
                 "images encoded on the device", None))


def check_probes(device, rows):
    from sklearn_endo.probes import LinearProbeClassifier

    rng = np.random.RandomState(0)
    y = np.arange(60) % 3
    F = (rng.normal(scale=2.0, size=(3, 16))[y] + rng.normal(size=(60, 16)))
    for solver, params, tol in (("lbfgs", dict(C=0.5, tol=1e-8, max_iter=1000), 1e-6),
                                ("adam", dict(lr=1e-2, max_epochs=5, random_state=0), 1e-4)):
        X_fit = F if solver == "lbfgs" else F.astype(np.float32)
        a = LinearProbeClassifier(solver=solver, device="cpu", **params).fit(X_fit, y)
        b = LinearProbeClassifier(solver=solver, device=device, **params).fit(X_fit, y)
        gap = float(np.abs(a.predict_proba(X_fit) - b.predict_proba(X_fit)).max())
        rows.append((f"linear probe, {solver}", gap <= tol, f"{gap:.1e} <= {tol:g}", None))


def _fit_row(rows, label, est, X, y, device):
    seconds, est = timed(device, lambda: est.fit(X, y))
    loss = float(est.history_[-1, "train_loss"])
    proba = est.predict_proba(X)
    ok = np.isfinite(loss) and proba.shape == (len(X), 2)
    rows.append((label, ok, f"loss {loss:.3f}", len(X) / seconds))


def check_estimators(device, rows):
    from sklearn_endo.finetune import FineTuneClassifier
    from sklearn_endo.ubc import UBCClassifier

    X, y = _images()
    masks = (X.mean(-1) > 100).astype(np.uint8)
    ubc = UBCClassifier("resnet18", pretrained=False, image_size=SIZE, encoder_depth=3,
                        max_epochs=1, batch_size=16, random_state=0, device=device,
                        verbose=0, iterator_train__num_workers=0,
                        iterator_valid__num_workers=0)
    seconds, ubc = timed(device, lambda: ubc.fit(X, y, masks=masks))
    loss = float(ubc.history_[-1, "train_loss"])
    rows.append(("UBCClassifier, 1 epoch", np.isfinite(loss), f"loss {loss:.3f}",
                 len(X) / seconds))
    for freeze in ("all", "none"):
        clf = FineTuneClassifier("resnet18", pretrained=False, img_size=SIZE, freeze=freeze,
                                 max_epochs=1, batch_size=16, random_state=0, device=device,
                                 verbose=0)
        _fit_row(rows, f"FineTuneClassifier(freeze={freeze!r}), 1 epoch", clf, X, y, device)


def check_ssl(device, rows):
    from sklearn_endo._device import autocast_dtype, needs_grad_scaler
    from sklearn_endo.ssl import SelfSupervisedPretrainer

    X, _ = _images()
    scaler = needs_grad_scaler(autocast_dtype(device))
    for method in ("barlowtwins", "mocov3", "dino", "mae"):
        pre = SelfSupervisedPretrainer(_encoders()["vit"], method=method, img_size=SIZE,
                                       max_epochs=1, batch_size=16, warmup_epochs=0,
                                       amp=True, device=device, num_workers=0,
                                       random_state=0, verbose=False)
        seconds, pre = timed(device, lambda p=pre: p.fit(X))
        loss = float(pre.history_[-1, "train_loss"])
        rows.append((f"SSL {method}, 1 epoch (AMP; GradScaler {'on' if scaler else 'off'})",
                     bool(np.isfinite(loss)), f"loss {loss:.3f}", len(X) / seconds))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="the GPU to check (default: cuda when available, else a "
                             "CPU-vs-CPU dry run)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the branches each class of GPU takes, run nothing")
    args = parser.parse_args(argv)
    print("branches the package takes, by device:")
    for device_class, decision in branches():
        print(f"  {device_class:48s} {decision}")
    if args.dry_run:
        return 0
    device = check_device(parser, args.device)
    if device.type != "cuda":
        print("\nno CUDA device: every check below runs with the CPU on both sides "
              "(a dry run of the script; GPU figures not measured)")
    else:
        from sklearn_endo._device import normalize_device

        device = normalize_device(device)
        print(f"\n{describe(device)}")
    torch.manual_seed(0)
    rows = []
    for check in (check_identity, check_features, check_store, check_probes,
                  check_estimators, check_ssl):
        try:
            check(device, rows)
        except Exception as exc:  # one failing branch must not hide the others
            rows.append((check.__name__, False, f"{type(exc).__name__}: {exc}"[:120], None))
    print(f"\n{'check':62s} {'result':6s} {'images/s':>9s}  detail")
    for name, ok, detail, speed in rows:
        speed = f"{speed:9.1f}" if speed else f"{'':9s}"
        print(f"{name:62s} {'pass' if ok else 'FAIL':6s} {speed}  {detail}")
    failed = sum(not ok for _, ok, _, _ in rows)
    print(f"\n{len(rows) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
