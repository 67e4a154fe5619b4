"""Shared fixtures: fixed seeds, tiny synthetic images, tiny random-init timm models."""

import numpy as np
import pytest
import timm
import torch

from sklearn_endo import clear_feature_store


@pytest.fixture(autouse=True)
def _seed_and_clean_store():
    torch.manual_seed(0)
    np.random.seed(0)
    clear_feature_store()
    yield
    clear_feature_store()


@pytest.fixture
def images():
    """Twenty 32x32 RGB uint8 images in two classes that differ in brightness."""
    rng = np.random.default_rng(0)
    y = np.arange(20) % 2
    X = rng.integers(0, 160, (20, 32, 32, 3)).astype(np.uint8)
    X[y == 1] += 80
    return X, y


def make_tiny_vit(**kw):
    params = dict(img_size=32, patch_size=8, depth=4, embed_dim=32, num_heads=2,
                  num_classes=0)
    params.update(kw)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **params).eval()


@pytest.fixture
def tiny_vit():
    return make_tiny_vit()


@pytest.fixture
def tiny_cnn():
    return timm.create_model("resnet18", pretrained=False, num_classes=0).eval()


class ForwardCounter:
    """Counts images that pass through a module's forward (probe calls included)."""

    def __init__(self, module):
        self.images = 0
        self.calls = 0
        self._h = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.calls += 1
        self.images += int(args[0].shape[0])

    def remove(self):
        self._h.remove()


@pytest.fixture
def counter():
    made = []

    def attach(module):
        c = ForwardCounter(module)
        made.append(c)
        return c

    yield attach
    for c in made:
        c.remove()
