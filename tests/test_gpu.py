"""Results on CUDA equal results on the CPU, within stated tolerances.

``_compare(device_a, device_b)`` computes the same things on two devices and checks
them: the pooled features of every layer of a ViT and a CNN (float32, and with AMP on),
a linear probe's ``predict_proba`` (Adam recipe, L-BFGS, and the sweep's batched
``fit_folds``), and ``UBCClassifier``'s forward outputs with the same weights. The
``gpu`` test runs it as ("cpu", "cuda") and is skipped without CUDA; an unmarked test
runs it as ("cpu", "cpu") so that the comparison itself is exercised on every machine
(there every result must be identical up to float rounding of the same kernels).

Tolerances (differences relative to the result's scale, ``max|a - b| / max(1, max|a|)``,
except probabilities, which are compared absolutely):

- float32 features and UBC outputs: 1e-4. CUDA's TF32 is switched off for these
  comparisons (``torch.backends.fp32_precision = "ieee"``; cuDNN convolutions use TF32
  by default, which rounds inputs to 10 mantissa bits, ~1e-3 relative): the test checks
  the code, not the hardware's reduced precision.
- features with AMP on: 5e-2. Autocast runs matmuls in bfloat16 (8 mantissa bits,
  ~4e-3 per rounding), accumulated over the blocks.
- probe probabilities: 1e-4 for Adam (float32 training, 5 epochs of different float
  rounding), 1e-6 for L-BFGS solved to tol=1e-8 in float64 (a unique optimum).
"""

import contextlib

import numpy as np
import pytest
import timm
import torch

from sklearn_endo import LayerFeatureTransformer
from sklearn_endo.probes import LinearProbeClassifier, MultiLayerLinearProbe, fit_folds

from .conftest import make_tiny_vit

FP32_RTOL = 1e-4
AMP_RTOL = 5e-2
ADAM_PROBA_ATOL = 1e-4
LBFGS_PROBA_ATOL = 1e-6

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                   reason="needs a CUDA device")


@contextlib.contextmanager
def _full_fp32():
    """IEEE float32 matmuls and convolutions on CUDA (no TF32) inside the block."""
    if hasattr(torch.backends, "fp32_precision"):
        flags = [torch.backends.cuda.matmul, torch.backends.cudnn.conv]
        saved = [f.fp32_precision for f in flags]
        for f in flags:
            f.fp32_precision = "ieee"
        try:
            yield
        finally:
            for f, value in zip(flags, saved):
                f.fp32_precision = value
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _relative_gap(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    return float(np.abs(a - b).max() / max(1.0, np.abs(a).max()))


def _images(n=12, size=32, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.integers(0, 160, (n, size, size, 3)).astype(np.uint8)
    X[y == 1] += 80
    return X, y


def _features(encoder, device, amp, X):
    t = LayerFeatureTransformer(encoder, device=device, amp=amp, feature_store=None,
                                batch_size=5, verbose=False, num_workers=0).fit(X)
    return t.layer_features(X)


def _probe_data(n=40, d=16, n_classes=3, seed=0):
    rng = np.random.RandomState(seed)
    y = np.arange(n) % n_classes
    X = (rng.normal(scale=2.0, size=(n_classes, d))[y] + rng.normal(size=(n, d)))
    return X.astype(np.float32), y


def _ubc_outputs(device, X, state_dict=None):
    from sklearn_endo.ubc import UBCClassifier

    clf = UBCClassifier("resnet18", pretrained=False, image_size=32, encoder_depth=3,
                        classes=[0, 1], random_state=0, device=device, verbose=0,
                        iterator_valid__num_workers=0)
    clf.initialize()
    if state_dict is not None:
        clf.module_.load_state_dict(state_dict)
    proba = clf.predict_proba(X)
    net = clf.module_.eval()
    x = torch.from_numpy(X).permute(0, 3, 1, 2).float().div(255).to(device)
    with torch.inference_mode():
        logits, mask_logits = net(x, with_masks=True)
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    return proba, logits.cpu().numpy(), mask_logits.cpu().numpy(), state


def _compare(device_a, device_b):
    """Compute everything on both devices, assert the tolerances, return the gaps."""
    gaps = {}
    X, _ = _images()
    with _full_fp32():
        # every layer of a ViT and a CNN, float32
        encoders = {"vit": make_tiny_vit(),
                    "cnn": timm.create_model("resnet18", pretrained=False,
                                             num_classes=0).eval()}
        for name, module in encoders.items():
            a = _features(module, device_a, False, X)
            b = _features(module, device_b, False, X)
            assert list(a) == list(b) == list(range(len(a)))
            gaps[f"{name} features fp32"] = max(_relative_gap(a[k], b[k]) for k in a)
            assert gaps[f"{name} features fp32"] <= FP32_RTOL, (name, gaps)

        # UBCClassifier: the same weights (those built on device_a) on both devices
        proba_a, logits_a, masks_a, state = _ubc_outputs(device_a, X)
        proba_b, logits_b, masks_b, _ = _ubc_outputs(device_b, X, state)
        gaps["ubc logits"] = _relative_gap(logits_a, logits_b)
        gaps["ubc mask logits"] = _relative_gap(masks_a, masks_b)
        gaps["ubc predict_proba"] = float(np.abs(proba_a - proba_b).max())
        assert gaps["ubc logits"] <= FP32_RTOL, gaps
        assert gaps["ubc mask logits"] <= FP32_RTOL, gaps
        assert gaps["ubc predict_proba"] <= FP32_RTOL, gaps

        # probes: one layer with each solver, and the sweep's batched folds
        F, y = _probe_data()
        for solver, params, atol in (
                ("adam", dict(solver="adam", lr=1e-2, max_epochs=5, random_state=0),
                 ADAM_PROBA_ATOL),
                ("lbfgs", dict(solver="lbfgs", C=0.5, tol=1e-8, max_iter=1000),
                 LBFGS_PROBA_ATOL)):
            X_fit = F if solver == "adam" else F.astype(np.float64)
            pa = LinearProbeClassifier(device=device_a, **params).fit(X_fit, y)
            pb = LinearProbeClassifier(device=device_b, **params).fit(X_fit, y)
            gaps[f"probe {solver}"] = float(np.abs(pa.predict_proba(F) -
                                                   pb.predict_proba(F)).max())
            assert gaps[f"probe {solver}"] <= atol, gaps
        layers = [F, F[:, ::-1] * 0.5, F[:, :7]]
        folds = [np.arange(0, 30), np.arange(10, 40)]
        params = dict(solver="adam", lr=1e-2, max_epochs=5, random_state=0)
        fa = fit_folds(MultiLayerLinearProbe(device=device_a, **params), layers, y, folds)
        fb = fit_folds(MultiLayerLinearProbe(device=device_b, **params), layers, y, folds)
        gaps["fit_folds adam"] = max(
            float(np.abs(p - q).max()) for ea, eb in zip(fa, fb)
            for p, q in zip(ea.predict_proba(layers), eb.predict_proba(layers)))
        assert gaps["fit_folds adam"] <= ADAM_PROBA_ATOL, gaps

    # every layer with AMP on (on the CPU AMP is off, so there it changes nothing)
    for name, module in encoders.items():
        a = _features(module, device_a, True, X)
        b = _features(module, device_b, True, X)
        gaps[f"{name} features amp"] = max(_relative_gap(a[k], b[k]) for k in a)
        assert gaps[f"{name} features amp"] <= AMP_RTOL, (name, gaps)
    return gaps


def test_compare_on_cpu_exercises_every_check():
    gaps = _compare("cpu", "cpu")
    assert set(gaps) == {
        "vit features fp32", "cnn features fp32", "ubc logits", "ubc mask logits",
        "ubc predict_proba", "probe adam", "probe lbfgs", "fit_folds adam",
        "vit features amp", "cnn features amp"}
    # the same kernels on the same device: equal up to thread-order rounding
    assert max(gaps.values()) <= 1e-6, gaps


def test_relative_gap_catches_a_difference():
    a = np.array([[10.0, -20.0], [5.0, 0.0]])
    assert _relative_gap(a, a) == 0.0
    assert _relative_gap(a, a + np.array([[0.0, 0.01], [0.0, 0.0]])) == pytest.approx(5e-4)
    with pytest.raises(AssertionError):
        _relative_gap(a, a[:1])


@pytest.mark.gpu
@requires_cuda
def test_cuda_equals_cpu():
    gaps = _compare("cpu", "cuda")
    print("\n".join(f"{k}: {v:.2e}" for k, v in gaps.items()))
