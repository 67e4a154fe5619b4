"""Device decisions, driven on the CPU with faked device properties.

The CUDA branches (autocast dtype, device identity, the numeric mode in store keys) are
pure functions of a device's properties (``sklearn_endo._device``): here the properties
are faked (``torch.cuda.get_device_capability``, ``current_device``, the TF32 flags) and
the decisions checked against what the hardware documentation says, not against the
implementation.
"""

import pathlib
import re

import numpy as np
import pytest
import timm
import torch

from sklearn_endo import LayerFeatureTransformer, _device, clear_feature_store
from sklearn_endo._device import (
    autocast_dtype,
    autocast_dtype_for,
    needs_grad_scaler,
    normalize_device,
    numeric_mode,
    numeric_mode_for,
    same_device,
)
from sklearn_endo._encoders import registry_clear, resolve_device, resolve_encoder

from .conftest import make_tiny_vit

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_cuda(monkeypatch):
    """Two fake CUDA devices: cuda:0 a T4 (7.5), cuda:1 an A100 (8.0); current is 0.

    Returns the list of devices ``get_device_capability`` was asked about.
    ``is_bf16_supported`` raises: the decisions must not use it.
    """
    class Asked(list):
        pass

    asked = Asked()
    caps = {0: (7, 5), 1: (8, 0)}
    state = {"current": 0}

    def capability(device=None):
        device = torch.device("cuda", state["current"]) if device is None else device
        device = torch.device(device)
        asked.append(device)
        return caps[device.index if device.index is not None else state["current"]]

    def bf16(*args, **kwargs):
        raise AssertionError("is_bf16_supported counts emulation; use the capability")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: state["current"])
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16)
    asked.state = state
    return asked


# ---------------------------------------------------------------- autocast dtype
@pytest.mark.parametrize("capability, expected", [
    ((6, 1), None),              # Pascal GTX/P40: float16 runs at 1/64 rate
    ((7, 0), torch.float16),     # V100: tensor cores, no bfloat16
    ((7, 5), torch.float16),     # T4, the usual free notebook GPU
    ((8, 0), torch.bfloat16),    # A100
    ((8, 6), torch.bfloat16),    # RTX 30xx, A10
    ((9, 0), torch.bfloat16),    # H100
])
def test_autocast_dtype_from_capability(capability, expected):
    assert autocast_dtype_for(capability) == expected


def test_autocast_dtype_asks_the_device_in_use(fake_cuda):
    assert autocast_dtype(torch.device("cuda:1")) == torch.bfloat16
    assert fake_cuda == [torch.device("cuda:1")]
    assert autocast_dtype("cuda:0") == torch.float16
    assert fake_cuda[-1] == torch.device("cuda:0")
    fake_cuda.state["current"] = 1  # "cuda" means the current device: asked by index
    assert autocast_dtype("cuda") == torch.bfloat16
    assert fake_cuda[-1] == torch.device("cuda:1")
    n = len(fake_cuda)
    assert autocast_dtype("cuda:1", amp=False) is None
    assert autocast_dtype("cpu") is None and autocast_dtype("mps") is None
    assert len(fake_cuda) == n  # nothing asked when nothing autocasts


def test_grad_scaler_only_for_float16():
    assert needs_grad_scaler(torch.float16)
    assert not needs_grad_scaler(torch.bfloat16) and not needs_grad_scaler(None)


def test_one_autocast_decision_in_the_package_and_benchmarks():
    """No second copy: every estimator and benchmark asks ``_device``."""
    offenders = []
    for path in [*ROOT.joinpath("sklearn_endo").rglob("*.py"),
                 *ROOT.joinpath("benchmarks").glob("*.py")]:
        if path.name == "_device.py" and path.parent.name == "sklearn_endo":
            continue
        text = path.read_text()
        for pattern in (r"is_bf16_supported", r"get_device_capability",
                        r"torch\.autocast\(", r"GradScaler\(\s*[\"']cuda"):
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(ROOT)}: {pattern}")
    assert not offenders, offenders


# ---------------------------------------------------------------- device identity
def test_normalized_devices_compare_equal(fake_cuda):
    assert torch.device("cuda") != torch.device("cuda:0")  # the trap itself
    assert normalize_device(torch.device("cuda")) == torch.device("cuda:0")
    assert same_device(torch.device("cuda"), torch.device("cuda:0"))
    assert not same_device(torch.device("cuda"), torch.device("cuda:1"))
    fake_cuda.state["current"] = 1
    assert same_device(torch.device("cuda"), torch.device("cuda:1"))
    assert same_device(torch.device("cpu"), torch.device("cpu:0"))
    assert same_device("mps", torch.device("mps:0"))
    assert not same_device("cpu", "cuda:0")
    assert resolve_device("cuda") == torch.device("cuda:1")
    assert resolve_device("auto") == torch.device("cuda:1")


def test_module_already_on_the_device_is_not_copied():
    """``cpu:0`` and ``cpu`` are one device: the user's module is used, not a copy (the
    same comparison keeps a module on ``cuda:0`` from being copied for ``cuda``)."""
    vit = make_tiny_vit()
    registry_clear()
    for spec in ("cpu", "cpu:0", torch.device("cpu:0")):
        handle = resolve_encoder(vit, device=spec)
        assert handle.module is vit and handle.source is None, spec


# ---------------------------------------------------------------- numeric mode / keys
def test_numeric_mode_from_device_properties():
    assert numeric_mode_for("cpu", None) is None  # the reference: keys as they were
    modes = [
        numeric_mode_for("cuda", None, capability=(8, 0), tf32=(False, False)),
        numeric_mode_for("cuda", None, capability=(8, 0), tf32=(False, True)),
        numeric_mode_for("cuda", torch.bfloat16, capability=(8, 0), tf32=(False, True)),
        numeric_mode_for("cuda", torch.float16, capability=(7, 5), tf32=(False, True)),
        numeric_mode_for("mps", None),
        numeric_mode_for("cpu", None, cpu_precision={"matmul": "bf16"}),
    ]
    assert all(m is not None for m in modes)
    assert len({repr(m) for m in modes}) == len(modes)  # all different
    assert modes[2] == {"device": "cuda", "autocast": "bfloat16", "tf32_matmul": False,
                        "tf32_conv": True}
    # TF32 does not exist before Ampere: the flags change nothing on a T4
    assert (numeric_mode_for("cuda", None, capability=(7, 5), tf32=(True, True))
            == numeric_mode_for("cuda", None, capability=(7, 5), tf32=(False, False)))


def test_numeric_mode_reads_the_device_and_flags(fake_cuda, monkeypatch):
    monkeypatch.setattr(_device, "_tf32_flags", lambda: (False, True))
    assert numeric_mode("cuda:1") == {"device": "cuda", "autocast": "bfloat16",
                                      "tf32_matmul": False, "tf32_conv": True}
    assert numeric_mode("cuda:0", amp=True)["autocast"] == "float16"
    assert numeric_mode("cuda:0", amp=False)["autocast"] is None
    assert numeric_mode("cpu") is None


class _Calls:
    def __init__(self, module):
        self.images = 0
        module.register_forward_pre_hook(lambda m, a: setattr(
            self, "images", self.images + (a[0].shape[0] if a[0].shape[0] > 1 else 0)))


@pytest.mark.parametrize("store", ["memory", "dir"])
def test_store_written_in_one_mode_is_not_read_in_another(images, tmp_path, monkeypatch,
                                                          store):
    """Rows computed in a (faked) CUDA mode and on the CPU never share entries."""
    import sklearn_endo._transformer as tr

    X, _ = images
    vit = make_tiny_vit()
    calls = _Calls(vit)
    fs = "memory" if store == "memory" else str(tmp_path)
    t = LayerFeatureTransformer(vit, feature_store=fs, verbose=False, num_workers=0,
                                device="cpu").fit(X)
    cpu_ns = t._namespace(t._get_handle())
    a = t.transform(X)
    assert calls.images == len(X)
    modes = {"bf16": {"device": "cuda", "autocast": "bfloat16", "tf32_matmul": False,
                      "tf32_conv": True},
             "tf32": {"device": "cuda", "autocast": None, "tf32_matmul": True,
                      "tf32_conv": True}}
    seen = {cpu_ns}
    for n, mode in enumerate(modes.values(), 2):
        monkeypatch.setattr(tr, "numeric_mode", lambda device, amp, mode=mode: mode)
        seen.add(t._namespace(t._get_handle()))
        if store == "dir":
            clear_feature_store()  # as another process: only the files are shared
        t.transform(X)
        assert calls.images == n * len(X)  # a new namespace: computed, not read
        t.transform(X)
        assert calls.images == n * len(X)  # and then read in its own mode
    assert len(seen) == 3
    monkeypatch.undo()
    if store == "dir":
        clear_feature_store()
    np.testing.assert_array_equal(t.transform(X), a)
    assert calls.images == 3 * len(X)  # the CPU's own rows were kept apart


def test_finetune_stored_rows_keyed_by_numeric_mode(images, monkeypatch):
    import sklearn_endo.finetune._stored as stored
    from sklearn_endo.finetune import FineTuneClassifier

    X, y = images
    vit = make_tiny_vit()
    calls = _Calls(vit.blocks[0])
    kw = dict(freeze="all", max_epochs=1, batch_size=8, random_state=0, device="cpu")
    FineTuneClassifier(vit, **kw).fit(X, y)
    assert calls.images == len(X)
    FineTuneClassifier(vit, **kw).fit(X, y)
    assert calls.images == len(X)  # same mode: read from the store
    fake = {"device": "cuda", "autocast": None, "tf32_matmul": False, "tf32_conv": True}
    monkeypatch.setattr(stored, "numeric_mode", lambda device, amp: fake)
    clf = FineTuneClassifier(vit, **kw).fit(X, y)
    assert clf.stored_features_ == "pooled"
    assert calls.images == 2 * len(X)  # another mode: computed again


# ---------------------------------------------------------------- class token
def _register_vit(class_token):
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                             patch_size=8, depth=2, embed_dim=32, num_heads=2,
                             num_classes=0, class_token=class_token, reg_tokens=4,
                             global_pool="avg" if not class_token else "token").eval()


def test_cls_pooling_without_class_token_raises(images):
    from sklearn_endo.finetune import FineTuneClassifier

    X, y = images
    vit = _register_vit(class_token=False)
    assert vit.num_prefix_tokens == 4  # four register tokens, none a class token
    with pytest.raises(ValueError, match="pooling='cls' needs a class token.*register"):
        LayerFeatureTransformer(vit, pooling="cls", device="cpu").fit(X)
    with pytest.raises(ValueError, match="pooling='cls\\+mean' needs a class token"):
        LayerFeatureTransformer(vit, pooling="cls+mean", device="cpu").fit(X)
    with pytest.raises(ValueError, match="pooling='cls' needs a class token.*register"):
        FineTuneClassifier(vit, pooling="cls", max_epochs=1, device="cpu").fit(X, y)
    # mean pooling skips all four register tokens (timm's own intermediates)
    t = LayerFeatureTransformer(vit, layer=2, device="cpu", feature_store=None,
                                verbose=False, num_workers=0).fit(X)
    x = torch.from_numpy(X).permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(t.data_config_["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(t.data_config_["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = vit.forward_intermediates((x - mean) / std, indices=[1], norm=False,
                                           output_fmt="NLC", intermediates_only=True,
                                           return_prefix_tokens=False)[0]
    np.testing.assert_allclose(t.transform(X), tokens.mean(1).numpy(), atol=1e-5)


def test_cls_pooling_with_class_and_register_tokens_reads_the_class_token(images):
    X, _ = images
    vit = _register_vit(class_token=True)
    assert vit.num_prefix_tokens == 5
    t = LayerFeatureTransformer(vit, layer=2, pooling="cls", final_norm=True, device="cpu",
                                feature_store=None, verbose=False, num_workers=0).fit(X)
    x = torch.from_numpy(X).permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(t.data_config_["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(t.data_config_["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        pooled = vit.forward_head(vit.forward_features((x - mean) / std), pre_logits=True)
    np.testing.assert_allclose(t.transform(X), pooled.numpy(), atol=1e-5)


# ---------------------------------------------------------------- eval mode
def test_frozen_named_encoder_handed_out_in_eval_mode(images):
    X, _ = images
    registry_clear()
    t = LayerFeatureTransformer("vit_tiny_patch16_224", pretrained=False, img_size=32,
                                device="cpu").fit(X)
    assert not any(m.training for m in t.encoder_.modules())


def test_encoder_with_drop_path_gives_the_same_output_twice(images):
    X, _ = images
    registry_clear()

    def make():
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                                 patch_size=8, depth=2, embed_dim=32, num_heads=2,
                                 num_classes=0, drop_path_rate=0.5, drop_rate=0.5)

    t = LayerFeatureTransformer(make, device="cpu", verbose=False).fit(X)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        a, b = t.encoder_(x), t.encoder_(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
