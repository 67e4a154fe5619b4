"""SelfSupervisedPretrainer: objectives, momentum branches, masking, saving, resume."""

import copy
import os
import warnings

import lightly  # noqa: F401  (in the test extra: a missing lightly fails, never skips)
import numpy as np
import pytest
import torch
from sklearn.base import clone

from sklearn_endo import LayerFeatureTransformer
from sklearn_endo._encoders import resolve_encoder
from sklearn_endo.ssl import SelfSupervisedPretrainer

from .conftest import make_tiny_vit


@pytest.fixture
def unlabelled():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)


def hflip(x):
    """A light augmentation: the views of an image differ by a random flip only."""
    return torch.flip(x, dims=(-1,)) if torch.rand(()) < 0.5 else x


class InterruptAfter:
    """An augmentation that stops training (as Ctrl-C would) after ``n`` views."""

    def __init__(self, n):
        self.n = n
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        if self.calls > self.n:
            raise KeyboardInterrupt
        return hflip(x)


def pretrainer(method="barlowtwins", encoder=make_tiny_vit, **kw):
    params = dict(method=method, img_size=32, max_epochs=4, batch_size=8, lr=1e-3,
                  warmup_epochs=0, augment=hflip, random_state=0, verbose=False)
    params.update(kw)
    return SelfSupervisedPretrainer(encoder, **params)


def weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("method, epochs, kw", [
    ("barlowtwins", 4, {}), ("mocov3", 5, {}), ("mae", 4, {}),
    ("dino", 3, {"momentum": 0.99})])
def test_loss_decreases(unlabelled, method, epochs, kw):
    # DINO's loss rises again later on a tiny set (the centring flattens the teacher):
    # its first epochs are the test
    pre = pretrainer(method, max_epochs=epochs, **kw).fit(unlabelled)
    loss = pre.history_[:, "train_loss"]
    assert len(loss) == epochs
    assert np.mean(loss[-2:]) < loss[0], loss


@pytest.mark.parametrize("method, teachers", [
    ("mocov3", ("momentum_encoder", "momentum_projector")),
    ("dino", ("teacher_encoder", "teacher_head"))])
def test_momentum_branch_gets_no_gradients_but_follows_the_student(unlabelled, method,
                                                                   teachers):
    pre = pretrainer(method, max_epochs=1, momentum=0.5)
    pre.fit(unlabelled)
    student = pre.module_.encoder
    for name in teachers:
        branch = getattr(pre.module_, name)
        assert all(not p.requires_grad and p.grad is None for p in branch.parameters())
    teacher = getattr(pre.module_, teachers[0])
    # initialised as the student; two momentum steps moved it, but not onto the student
    init = resolve_encoder(make_tiny_vit, pretrained=False, img_size=32).module
    w_init, w_t, w_s = (dict(m.named_parameters()) for m in (init, teacher, student))
    moved = [k for k in w_t if not torch.equal(w_t[k], w_init[k].to(w_t[k]))]
    assert moved
    k = moved[0]
    assert not torch.equal(w_t[k], w_s[k])


def test_momentum_update_is_an_exponential_moving_average(unlabelled):
    pre = pretrainer("mocov3", max_epochs=1)
    pre.fit(unlabelled)
    m = pre.module_
    before_t, before_s = weights(m.momentum_encoder), weights(m.encoder)
    m.after_step(-1, 100)  # momentum 0.99 at the start of the schedule
    after = weights(m.momentum_encoder)
    name = "blocks.0.attn.qkv.weight"
    expected = 0.99 * before_t[name] + 0.01 * before_s[name]
    torch.testing.assert_close(after[name], expected)
    m.after_step(99, 100)  # momentum 1 at the end: the teacher stays
    torch.testing.assert_close(weights(m.momentum_encoder)[name], after[name])


@pytest.mark.parametrize("ratio, n_masked", [(0.75, 12), (0.5, 8)])
def test_mae_masks_the_stated_ratio_of_patches_and_never_the_class_token(unlabelled, ratio,
                                                                         n_masked):
    pre = pretrainer("mae", max_epochs=1, mask_ratio=ratio).fit(unlabelled)
    mae = pre.module_
    assert (mae.num_patches, mae.num_prefix_tokens) == (16, 1)  # 32 px / 8 px patches
    keep, masked = mae.random_mask(5, "cpu")
    assert masked.shape == (5, n_masked)
    assert keep.shape == (5, 1 + 16 - n_masked)
    assert (keep[:, 0] == 0).all() and (masked > 0).all()
    for k, m in zip(keep, masked):  # a partition of the 17 tokens
        assert sorted(torch.cat([k, m]).tolist()) == list(range(17))


def test_saved_encoder_reloads_into_layer_feature_transformer(unlabelled, tmp_path):
    pre = pretrainer("barlowtwins", encoder="resnet18", max_epochs=1,
                     batch_size=8).fit(unlabelled)
    path = pre.save_encoder(tmp_path / "ssl_resnet18.safetensors")
    ours = pre.transform(unlabelled)
    assert ours.shape == (16, 512) and ours.dtype == np.float32
    lft = LayerFeatureTransformer("resnet18", layer=-1, pooling="mean", pretrained=False,
                                  checkpoint_path=path, img_size=32, feature_store=None,
                                  verbose=False)
    np.testing.assert_allclose(lft.fit_transform(unlabelled), ours, rtol=1e-4, atol=1e-5)
    # and the weights did change: the random-init encoder gives other features
    init = LayerFeatureTransformer("resnet18", layer=-1, pretrained=False, img_size=32,
                                   feature_store=None, verbose=False)
    assert not np.allclose(init.fit_transform(unlabelled), ours, atol=1e-3)
    assert type(pre.encoder_).__name__ == "ResNet" and not pre.encoder_.training


def test_registry_encoder_is_never_modified(unlabelled):
    before = weights(resolve_encoder("resnet18", pretrained=False, img_size=32).module)
    pre = pretrainer("barlowtwins", encoder="resnet18", max_epochs=1).fit(unlabelled)
    handle = resolve_encoder("resnet18", pretrained=False, img_size=32)
    after = weights(handle.module)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad for p in handle.module.parameters())
    assert pre.encoder_ is not handle.module


def test_random_state_makes_runs_identical(unlabelled):
    a = pretrainer("mocov3", max_epochs=2, random_state=3).fit(unlabelled)
    b = pretrainer("mocov3", max_epochs=2, random_state=3).fit(unlabelled)
    c = pretrainer("mocov3", max_epochs=2, random_state=4).fit(unlabelled)
    np.testing.assert_array_equal(a.transform(unlabelled), b.transform(unlabelled))
    assert a.history_[:, "train_loss"] == b.history_[:, "train_loss"]
    assert not np.allclose(a.transform(unlabelled), c.transform(unlabelled))


def test_resume_continues_where_it_stopped(unlabelled, tmp_path):
    full = pretrainer("barlowtwins", max_epochs=4).fit(unlabelled)
    ckpt = tmp_path / "run"
    views_per_epoch = 2 * 16  # two views of each image
    with pytest.warns(UserWarning, match="interrupted during epoch 3"):
        cut = pretrainer("barlowtwins", max_epochs=4, checkpoint_dir=str(ckpt),
                         augment=InterruptAfter(2 * views_per_epoch + 5)).fit(unlabelled)
    assert cut.n_epochs_ == 2 and (ckpt / "last.pt").exists()
    # the same augmentation (a callable is keyed by its qualified name), never interrupted
    resumed = pretrainer("barlowtwins", max_epochs=4, checkpoint_dir=str(ckpt),
                         augment=InterruptAfter(10**9))
    resumed.fit(unlabelled)
    assert resumed.history_[:, "epoch"] == [1, 2, 3, 4]
    np.testing.assert_allclose(resumed.history_[:, "train_loss"],
                               full.history_[:, "train_loss"], rtol=1e-5)
    np.testing.assert_allclose(resumed.transform(unlabelled), full.transform(unlabelled),
                               rtol=1e-4, atol=1e-5)
    # a finished run is loaded, not trained again; other settings are refused
    again = pretrainer("barlowtwins", max_epochs=4, checkpoint_dir=str(ckpt),
                       augment=InterruptAfter(0)).fit(unlabelled)
    assert again.n_epochs_ == 4
    with pytest.raises(ValueError, match="checkpoint_dir=.*other settings.*lr"):
        pretrainer("barlowtwins", max_epochs=4, lr=0.1,
                   checkpoint_dir=str(ckpt)).fit(unlabelled)


def test_gradient_accumulation_steps_every_k_batches(unlabelled):
    # 16 images in batches of 4: 4 batches per epoch
    for accumulate, steps in [(1, 4), (2, 2), (3, 2), (4, 1)]:
        pre = pretrainer("barlowtwins", max_epochs=2, batch_size=4, accumulate=accumulate,
                         warmup_epochs=1).fit(unlabelled)
        assert pre.history_[:, "n_steps"] == [steps, 2 * steps]
        # the warm-up (one epoch of optimizer steps) ends at exactly lr
        assert pre.history_[0, "lr"] == pytest.approx(1e-3)


def test_paths_and_pil_images(unlabelled, tmp_path):
    from PIL import Image

    paths = []
    for i, img in enumerate(unlabelled[:8]):
        p = tmp_path / f"frame_{i}.png"
        Image.fromarray(img).save(p)
        paths.append(str(p))
    a = pretrainer(max_epochs=1, batch_size=4, num_workers=0).fit(paths)
    b = pretrainer(max_epochs=1, batch_size=4).fit([Image.open(p) for p in paths])
    np.testing.assert_allclose(a.transform(paths), b.transform(unlabelled[:8]), atol=1e-5)


def test_clone_shares_the_encoder_module_and_copies_no_weights():
    module = make_tiny_vit()
    pre = SelfSupervisedPretrainer(module, method="mae", random_state=0)
    twin = clone(pre)
    assert twin.encoder is module
    assert twin.get_params()["method"] == "mae"


def test_errors(unlabelled, tmp_path):
    with pytest.raises(ValueError, match="method='mae' needs a timm VisionTransformer.*"
                                         "ResNet"):
        pretrainer("mae", encoder="resnet18").fit(unlabelled)
    with pytest.raises(ValueError, match="X has 6 images, fewer than batch_size=8"):
        pretrainer().fit(unlabelled[:6])
    with pytest.raises(ValueError, match="X"):
        pretrainer(batch_size=2).fit(unlabelled[:1])
    with pytest.raises(ValueError, match="method='simclr' is not supported"):
        pretrainer("simclr").fit(unlabelled)
    with pytest.raises(ValueError, match="batch_size=1"):
        pretrainer(batch_size=1).fit(unlabelled)
    with pytest.raises(ValueError, match="mask_ratio=1.5"):
        pretrainer("mae", mask_ratio=1.5).fit(unlabelled)
    with pytest.raises(ValueError, match="augment returned"):
        pretrainer(augment=lambda x: x[:, :16]).fit(unlabelled)
    with pytest.raises(ValueError, match="augment='colour'"):
        pretrainer(augment="colour").fit(unlabelled)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        pretrainer().transform(unlabelled)
    pre = pretrainer(max_epochs=1).fit(unlabelled)
    with pytest.raises(ValueError, match="must end in '.safetensors'"):
        pre.save_encoder(tmp_path / "enc.pt")


def test_no_warnings_from_a_plain_fit(unlabelled):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pretrainer("dino", max_epochs=1).fit(unlabelled)
    assert copy.deepcopy(pretrainer()).method == "barlowtwins"


def test_load_unlabeled_folder_finds_every_image_at_any_depth(tmp_path, unlabelled):
    from PIL import Image

    from sklearn_endo.datasets import load_unlabeled_folder

    for rel in ["a/1.png", "a/b/2.JPG", "3.png", "c/d/e/4.tif", ".hidden/5.png",
                "a/.6.png"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(unlabelled[0]).save(p, format="TIFF" if rel.endswith("tif")
                                            else "JPEG" if rel.endswith("JPG") else "PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    X = load_unlabeled_folder(tmp_path)
    assert [os.path.relpath(p, tmp_path) for p in X] == ["3.png", "a/1.png", "a/b/2.JPG",
                                                         "c/d/e/4.tif"]
    assert len(load_unlabeled_folder(tmp_path, extensions="png")) == 2
    with pytest.raises(ValueError, match="No images with suffixes"):
        load_unlabeled_folder(tmp_path / "a", extensions=(".bmp",))
    with pytest.raises(ValueError, match="is not a directory"):
        load_unlabeled_folder(tmp_path / "missing")


def test_fitted_pretrainer_pickles(unlabelled):
    import pickle

    pre = pretrainer(max_epochs=1).fit(unlabelled)
    again = pickle.loads(pickle.dumps(pre))
    np.testing.assert_array_equal(again.transform(unlabelled[:4]), pre.transform(unlabelled[:4]))


def test_missing_lightly_names_the_extra(monkeypatch, unlabelled):
    import sys

    monkeypatch.setitem(sys.modules, "lightly.loss", None)  # import fails
    with pytest.raises(ImportError, match=r"sklearn-endo\[ssl\]"):
        pretrainer(max_epochs=1).fit(unlabelled)


def test_dino_multi_crop_student_sees_local_crops_teacher_only_global(unlabelled):
    def dynamic_vit():  # a ViT that takes the 16 x 16 local crops
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return make_tiny_vit(dynamic_img_size=True)

    pre = pretrainer("dino", encoder=dynamic_vit, max_epochs=3, n_local_crops=4,
                     local_crop_size=16, momentum=0.99)
    pre.fit(unlabelled)
    assert pre.local_crop_size_ == (16, 16)
    loss = pre.history_[:, "train_loss"]
    assert np.mean(loss[-2:]) < loss[0], loss
    # the views the loss receives: 2 teacher views, 2 + 4 student views of 5 images
    dino = pre.module_
    seen = {}

    class Spy(torch.nn.Module):
        def __init__(self, criterion):
            super().__init__()
            self.criterion = criterion

        def forward(self, teacher, student, **kw):
            seen["teacher"] = [tuple(t.shape) for t in teacher]
            seen["student"] = [tuple(s.shape) for s in student]
            return self.criterion(teacher, student, **kw)

    dino.criterion = Spy(dino.criterion)
    g = torch.randn(5, 2, 3, 32, 32)
    local = torch.randn(5, 4, 3, 16, 16)
    dino.eval()
    out = dino.head.last_layer.out_features
    with torch.no_grad():
        only_global = dino(g, 0.5)
        assert seen["teacher"] == [(5, out)] * 2 and seen["student"] == [(5, out)] * 2
        with_local = dino((g, local), 0.5)
        assert seen["teacher"] == [(5, out)] * 2 and seen["student"] == [(5, out)] * 6
        assert not torch.isclose(with_local, only_global)
        # the crops go through the student in one batch: each gives its own output
        batched = dino.head(dino.encoder(local.flatten(0, 1))).view(5, 4, -1)[:, 3]
        alone = dino.head(dino.encoder(local[:, 3]))
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


def test_multi_crop_views_and_errors(unlabelled):
    from sklearn_endo.ssl._augment import LOCAL_SCALE, make_local_views

    views = make_local_views(None, (16, 16), 3)(torch.rand(3, 32, 32))
    assert views.shape == (3, 3, 16, 16) and LOCAL_SCALE == (0.05, 0.4)
    seen = []
    views = make_local_views(lambda x: seen.append(x.shape) or x, (8, 8), 2)(
        torch.rand(3, 32, 32))
    assert views.shape == (2, 3, 8, 8) and seen == [(3, 8, 8)] * 2  # crop, then augment
    with pytest.raises(ValueError, match="n_local_crops=2 is DINO's multi-crop; with "
                                         "method='mocov3'"):
        pretrainer("mocov3", n_local_crops=2).fit(unlabelled)
    with pytest.raises(ValueError, match="local_crop_size=4 must be"):
        pretrainer("dino", n_local_crops=2, local_crop_size=4).fit(unlabelled)
    # a timm ViT built for 32 x 32 cannot take 16 x 16 local crops
    with pytest.raises(ValueError, match=r"cannot take the local crops' size \(16, 16\).*"
                                         r"dynamic_img_size=True"):
        pretrainer("dino", n_local_crops=2).fit(unlabelled)


def test_docs_ssl_snippets_run_offline(tmp_path, monkeypatch):
    """docs/ssl.md's python blocks run in order as written (those needing data skipped);
    the encoder saved there is the one UBCClassifier starts from."""
    import re
    from pathlib import Path

    from safetensors.torch import load_file

    page = Path(__file__).resolve().parents[1] / "docs" / "ssl.md"
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M)
    monkeypatch.chdir(tmp_path)  # the page writes resnet18_ssl.safetensors
    namespace, ran = {}, 0
    for code in blocks:
        if code.splitlines()[0].startswith("# needs"):
            continue
        exec(compile(code, str(page), "exec"), namespace)
        ran += 1
    assert ran == 3 and len(blocks) == 4
    saved = load_file(str(tmp_path / "resnet18_ssl.safetensors"))
    trained = namespace["pre"].encoder_.state_dict()
    ubc = namespace["ubc"].module_.seg.encoder.state_dict()
    assert len(ubc) == len(trained) == len(saved)  # resnet18 without its fc head
    for key, value in ubc.items():
        assert torch.equal(value, trained[key]) and torch.equal(value, saved[key]), key
