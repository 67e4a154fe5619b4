"""Segmenter: masks in, masks out (tiny models at 32 px)."""

import pickle
import re

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV

from sklearn_endo._images import check_images, load_resized
from sklearn_endo.datasets import make_lesions
from sklearn_endo.metrics import dice_score, iou_score
from sklearn_endo.segmentation import (
    JointEndoscopyAugment,
    SegmentationLoss,
    Segmenter,
    dice_scorer,
    iou_scorer,
)

SMALL_UNET = {"decoder_channels": (32, 16, 8)}
TINY = dict(encoder="resnet18", pretrained=False, image_size=32, encoder_depth=3,
            max_epochs=1, batch_size=4, random_state=0, verbose=0,
            model_kwargs=SMALL_UNET)


@pytest.fixture(scope="module")
def lesions():
    X, _, masks = make_lesions(72, image_size=32, lesion_size=(0.3, 0.5),
                               return_masks=True, random_state=0)
    return X, masks


@pytest.fixture(scope="module")
def fitted(lesions):
    X, masks = lesions
    return Segmenter(**TINY).fit(X[:8], masks[:8])


# ---------------------------------------------------------------- metrics
def test_dice_and_iou_equal_a_hand_computation():
    true = np.zeros((2, 4, 4), bool)
    pred = np.zeros((2, 4, 4), bool)
    true[0, :2, :2] = True            # 4 pixels
    pred[0, :2, :3] = True            # 6 pixels, 4 shared
    true[1, 0, 0] = True              # 1 pixel, none predicted
    # dice: 2*4 / (4 + 6) = 0.8 and 0; iou: 4 / 6 and 0
    np.testing.assert_allclose(dice_score(true, pred, average=None), [0.8, 0.0])
    np.testing.assert_allclose(iou_score(true, pred, average=None), [4 / 6, 0.0])
    assert iou_score(true, pred) == pytest.approx((4 / 6) / 2)
    # micro: pooled pixels, 4 shared / union 7
    assert iou_score(true, pred, average="micro") == pytest.approx(4 / 7)
    empty = np.zeros((1, 3, 3))
    assert iou_score(empty, empty) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        iou_score(true, pred[:, :2])


def test_scorers_and_score_equal_a_hand_computation(fitted, lesions):
    X, masks = lesions
    Xv, mv = X[60:], masks[60:]
    pred = fitted.predict(Xv)
    assert pred.dtype == bool and pred.shape == mv.shape
    inter = (pred & mv).sum((1, 2))
    dice = np.where(pred.sum((1, 2)) + mv.sum((1, 2)) == 0, 1.0,
                    2 * inter / np.maximum(pred.sum((1, 2)) + mv.sum((1, 2)), 1))
    iou = np.where((pred | mv).sum((1, 2)) == 0, 1.0,
                   inter / np.maximum((pred | mv).sum((1, 2)), 1))
    assert fitted.score(Xv, mv) == pytest.approx(dice.mean())
    assert dice_scorer(fitted, Xv, mv) == pytest.approx(dice.mean())
    assert iou_scorer(fitted, Xv, mv) == pytest.approx(iou.mean())
    w = np.arange(1, len(Xv) + 1, dtype=float)
    assert fitted.score(Xv, mv, sample_weight=w) == pytest.approx(np.average(dice, weights=w))


# ---------------------------------------------------------------- sizes
def test_predict_at_each_images_own_size(fitted, lesions):
    X, _ = lesions
    rng = np.random.default_rng(0)
    items = [X[0], rng.integers(0, 255, (40, 24, 3), dtype=np.uint8),
             Image.fromarray(rng.integers(0, 255, (20, 36, 3), dtype=np.uint8))]
    masks = fitted.predict(items)
    proba = fitted.predict_proba(items)
    assert isinstance(masks, list) and [m.shape for m in masks] == [(32, 32), (40, 24),
                                                                     (20, 36)]
    for m, p in zip(masks, proba):
        assert p.shape == m.shape and p.dtype == np.float32
        assert ((p >= 0) & (p <= 1)).all()
        np.testing.assert_array_equal(m, p > fitted.threshold)
    # the probabilities are the 32 x 32 logits resized bilinearly, then the sigmoid
    with torch.inference_mode():
        x = load_resized(check_images(items), 1, (32, 32), interpolation="bilinear")
        logits = fitted.module_(x[None])
        want = torch.nn.functional.interpolate(logits, size=(40, 24), mode="bilinear")
    np.testing.assert_allclose(proba[1], want[0, 0].sigmoid().numpy(), atol=1e-5)


def test_mask_files_are_thresholded_and_resized_nearest(tmp_path, lesions):
    X, masks = lesions
    paths, mask_paths = [], []
    for i in range(6):
        img = np.asarray(Image.fromarray(X[i]).resize((48, 40)))
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        m = np.asarray(Image.fromarray(masks[i].astype(np.uint8) * 255).resize(
            (48, 40), Image.NEAREST))
        Image.fromarray(m).save(tmp_path / f"{i}_mask.jpg", quality=60)  # grey edges
        paths.append(str(tmp_path / f"{i}.png"))
        mask_paths.append(str(tmp_path / f"{i}_mask.jpg"))
    seg = Segmenter(**TINY).fit(paths, mask_paths)
    pred = seg.predict(paths)
    assert pred.shape == (6, 40, 48)
    truth = np.stack([np.asarray(Image.open(p).convert("L")) > 127 for p in mask_paths])
    assert seg.score(paths, mask_paths) == pytest.approx(dice_score(truth, pred))
    # the training target: the thresholded file resized with nearest neighbour to 32 px
    ds = seg._prepare(paths, mask_paths, None)
    target = ds[0][1]["mask"].numpy()
    assert set(np.unique(target)) <= {0.0, 1.0}
    rows = np.floor((np.arange(32) + 0.5) * 40 / 32).astype(int)
    cols = np.floor((np.arange(32) + 0.5) * 48 / 32).astype(int)
    np.testing.assert_array_equal(target, truth[0][rows][:, cols])


# ---------------------------------------------------------------- learning
def _best_constant(masks):
    return max(dice_score(masks, np.ones_like(masks)), dice_score(masks, np.zeros_like(masks)))


def test_cnn_learns_lesion_masks(lesions):
    X, masks = lesions
    seg = Segmenter("tu-test_resnet", pretrained=False, image_size=32, encoder_depth=3,
                    max_epochs=10, batch_size=8, lr=3e-3, random_state=0, verbose=0,
                    model_kwargs=SMALL_UNET).fit(X[:48], masks[:48])
    const = _best_constant(masks[48:])
    assert const < 0.25
    assert seg.score(X[48:], masks[48:]) > const + 0.4


def test_vit_learns_lesion_masks_with_dpt(lesions):
    X, masks = lesions
    seg = Segmenter("tu-test_vit", architecture="dpt", pretrained=False, image_size=32,
                    max_epochs=10, batch_size=8, lr=1e-3, random_state=0, verbose=0,
                    model_kwargs=dict(patch_size=4, decoder_intermediate_channels=(16, 32, 64, 64),
                                      decoder_fusion_channels=32)).fit(X[:48], masks[:48])
    assert seg.score(X[48:], masks[48:]) > _best_constant(masks[48:]) + 0.3


def test_multiclass_label_maps(lesions):
    X, masks = lesions
    labels = masks[:8].astype(np.int64)
    labels[:, :4, :] = 2  # a third class: a band at the top
    seg = Segmenter(**dict(TINY, n_classes=3)).fit(X[:8], labels)
    pred = seg.predict(X[:3])
    assert pred.shape == (3, 32, 32) and pred.dtype == np.int64
    assert set(np.unique(pred)) <= {0, 1, 2}
    proba = seg.predict_proba(X[:3])
    assert proba.shape == (3, 3, 32, 32)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    want = np.mean([np.mean([dice_score(t == k, p == k) for k in (1, 2)])
                    for t, p in zip(labels[:3], pred)])
    assert seg.score(X[:3], labels[:3]) == pytest.approx(want)
    with pytest.raises(ValueError, match=r"integer labels 0..2 \(n_classes=3\)"):
        seg.fit(X[:8], labels + 1)
    with pytest.raises(ValueError, match=r"y\[0\] is not a valid mask: it holds values "
                                         r"\[255\].*or set n_classes for label maps"):
        Segmenter(**TINY).fit(list(X[:2]), [m.astype(np.uint8) * 255 for m in masks[:2]])


def test_grid_search_with_dice_scoring_runs_in_two_processes(lesions):
    X, masks = lesions
    search = GridSearchCV(Segmenter(**TINY), {"lr": [1e-3, 3e-3]}, scoring=dice_scorer,
                          cv=2, n_jobs=2, error_score="raise").fit(X[:16], masks[:16])
    scores = search.cv_results_["mean_test_score"]
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
    assert search.best_estimator_.predict(X[:2]).shape == (2, 32, 32)


# ---------------------------------------------------------------- loss
def test_loss_is_weighted_bce_plus_dice_by_hand():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 4, 4, generator=g)
    masks = (torch.rand(3, 4, 4, generator=g) > 0.5).float()
    w = torch.tensor([1.0, 2.0, 0.0])
    p = logits[:, 0].sigmoid()
    bce = -(masks * p.log() + (1 - masks) * (1 - p).log()).mean((1, 2))
    dice = (2 * (p * masks).sum((1, 2)) + 1) / (p.sum((1, 2)) + masks.sum((1, 2)) + 1)
    want = 0.3 * (bce * w).sum() / w.sum() + 0.7 * ((1 - dice) * w).sum() / w.sum()
    loss = SegmentationLoss(dice_weight=0.7, ce_weight=0.3)
    torch.testing.assert_close(loss(logits, masks, sample_weight=w), want)
    # a sample without a mask is left out, like a zero weight
    has = torch.tensor([True, True, False])
    torch.testing.assert_close(loss(logits, masks, has, torch.tensor([1.0, 2.0, 5.0])), want)


# ---------------------------------------------------------------- encoders
def _timm_state(name, seed, **kw):
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(name, **kw)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("encoder, timm_name, arch", [
    ("resnet18", "resnet18", "unet"), ("tu-test_resnet", "test_resnet", "fpn"),
    ("tu-test_vit", "test_vit", "dpt")])
def test_checkpoint_path_sets_every_encoder_weight(tmp_path, encoder, timm_name, arch):
    from safetensors.torch import save_file

    state = _timm_state(timm_name, seed=1, num_classes=0)
    path = tmp_path / "enc.safetensors"
    save_file(state, str(path))
    kw = dict(TINY, encoder=encoder, architecture=arch, pretrained=True,
              checkpoint_path=path, model_kwargs=None, encoder_depth=None)
    if arch == "dpt":
        kw["image_size"] = 64
    seg = Segmenter(**kw).initialize()
    enc = seg.module_.seg.encoder
    got = (enc.model if encoder.startswith("tu-") else enc).state_dict()
    n = 0
    for key, value in got.items():
        src = key if key in state else re.sub(r"^(stem|stages)_(\d)", r"\1.\2", key)
        if key.startswith("head."):  # the timm head inside DPT's ViT is not the encoder
            assert src not in state
            continue
        torch.testing.assert_close(value, state[src], rtol=0, atol=0, msg=key)
        n += 1
    assert n >= 20
    plain = Segmenter(**dict(kw, pretrained=False, checkpoint_path=None)).initialize()
    ref = plain.module_.seg.encoder
    key = next(k for k in got if k.endswith("weight") and got[k].ndim == 4)
    assert not torch.equal((ref.model if encoder.startswith("tu-") else ref)
                           .state_dict()[key], got[key])


def test_register_token_vit_with_dpt_checkpoint_and_freeze(tmp_path, lesions):
    from safetensors.torch import save_file

    X, masks = lesions
    state = _timm_state("test_vit4", seed=3, num_classes=0)  # 1 register token
    assert "reg_token" in state
    path = tmp_path / "reg.safetensors"
    save_file(state, str(path))
    seg = Segmenter("tu-test_vit4", architecture="dpt", image_size=64, freeze=2,
                    checkpoint_path=path, max_epochs=1, batch_size=4, verbose=0,
                    ).fit(X[:8], masks[:8])
    vit = seg.module_.seg.encoder.model
    torch.testing.assert_close(vit.reg_token, state["reg_token"])  # frozen: still the file's
    torch.testing.assert_close(vit.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])
    assert not torch.equal(vit.blocks[2].attn.qkv.weight, state["blocks.2.attn.qkv.weight"])
    assert seg.predict(X[:2]).shape == (2, 32, 32)
    with pytest.raises(ValueError, match="patch size 14.*powers of 2"):
        Segmenter("tu-vit_small_patch14_reg4_dinov2", architecture="dpt", pretrained=False,
                  image_size=28).initialize()


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "resnet34.safetensors"
    save_file(_timm_state("resnet34", seed=0, num_classes=0), str(other))
    with pytest.raises(ValueError, match=r"is not a state dict of timm's 'resnet18' "
                                         r"\(num_classes=0\): unexpected 96"):
        Segmenter(**TINY, checkpoint_path=other).initialize()
    vit = tmp_path / "vit.safetensors"
    save_file(_timm_state("test_vit", seed=0, num_classes=0), str(vit))
    with pytest.raises(ValueError, match=r"SelfSupervisedPretrainer\('resnet18'"):
        Segmenter(**TINY, checkpoint_path=vit).initialize()


def test_freeze_whole_encoder_or_its_first_blocks(lesions):
    X, masks = lesions
    seg = Segmenter(**dict(TINY, freeze=True)).initialize()
    enc = seg.module_.seg.encoder
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    dec = next(seg.module_.seg.decoder.parameters()).detach().clone()
    seg.partial_fit(X[:8], masks[:8])
    for k, v in enc.state_dict().items():  # weights and BatchNorm statistics
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
    assert not torch.equal(dec, next(seg.module_.seg.decoder.parameters()))
    # freeze=2: the stem and blocks layer1.0, layer1.1 of resnet18; layer2.0 on trains
    seg = Segmenter(**dict(TINY, freeze=2)).initialize()
    enc = seg.module_.seg.encoder
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    seg.partial_fit(X[:8], masks[:8])
    after = enc.state_dict()
    for k in before:  # (encoder_depth=3: layer3 and layer4 feed nothing)
        if k.endswith("num_batches_tracked") or not k.startswith(
                ("conv1", "bn1", "layer1.", "layer2.")):
            continue
        frozen = k.startswith(("conv1", "bn1", "layer1."))
        assert torch.equal(after[k], before[k]) == frozen, k
    with pytest.raises(ValueError, match=r"freeze=9 must be a bool or an int in \[0, 8\]"):
        Segmenter(**dict(TINY, freeze=9)).initialize()
    with pytest.raises(ValueError, match="freeze=-1"):
        Segmenter(**dict(TINY, freeze=-1)).fit(X[:8], masks[:8])


def test_joint_augment_moves_mask_with_image():
    aug = JointEndoscopyAugment((8, 8))
    aug._photometric = lambda x: x  # geometry only: the image's channel 0 is its mask
    mask = torch.zeros(8, 8)
    mask[1:3, 0:5] = 1
    x = torch.stack([mask, torch.rand(8, 8), torch.rand(8, 8)])
    seen = set()
    torch.manual_seed(0)
    for _ in range(30):
        xa, ma = aug(x, mask)
        torch.testing.assert_close(xa[0], ma)
        seen.add(tuple(ma.flatten().tolist()))
    assert len(seen) == 8  # the 8 flips/rotations of a square all occur
    # the full preset changes brightness of the image only
    xa, ma = JointEndoscopyAugment((8, 8))(x, mask)
    assert set(ma.unique().tolist()) <= {0.0, 1.0}


def test_augment_is_applied_in_training_only(lesions):
    X, masks = lesions
    calls = []

    def augment(x, m):
        calls.append(tuple(x.shape))
        return x.flip(-1), m.flip(-1)

    seg = Segmenter(**dict(TINY, augment=augment)).fit(X[:8], masks[:8])
    assert calls == [(3, 32, 32)] * 8
    seg.predict(X[:4])
    assert len(calls) == 8
    with pytest.raises(ValueError, match="augment='flip' is not supported"):
        Segmenter(**dict(TINY, augment="flip")).fit(X[:8], masks[:8])


# ---------------------------------------------------------------- conventions
def test_sklearn_conventions(lesions):
    X, masks = lesions
    seg = Segmenter(**TINY)
    with pytest.raises(NotFittedError, match="Segmenter instance is not fitted"):
        seg.predict(X[:2])
    assert repr(Segmenter()) == "Segmenter()"
    assert "n_classes=3" in repr(Segmenter(n_classes=3))
    c = clone(seg.set_params(lr=0.01))
    assert c.get_params()["lr"] == 0.01 and not hasattr(c, "module_")
    fitted = seg.fit(X[:8], masks[:8])
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict_proba(X[:3]), fitted.predict_proba(X[:3]))
    with pytest.raises(ValueError, match=r"image_size=40 does not fit encoder='tu-test_vit' "
                                         r"with architecture='dpt': .*divisible by 16"):
        Segmenter(**dict(TINY, encoder="tu-test_vit", architecture="dpt", image_size=40,
                         encoder_depth=None, model_kwargs=None)).fit(X[:4], masks[:4])
    # every decoder's logits come back at the input size (smp's FPN at encoder_depth=3
    # alone would give 128 x 128 for 32 x 32)
    for arch in ("fpn", "upernet"):
        net = Segmenter(**dict(TINY, architecture=arch, model_kwargs=None)).fit(
            X[:4], masks[:4])
        assert net.module_.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="y has 3 masks but X has 4 images"):
        Segmenter(**TINY).fit(X[:4], masks[:3])
    with pytest.raises(ValueError, match="n_classes=0"):
        Segmenter(**dict(TINY, n_classes=0)).fit(X[:4], masks[:4])


# ---------------------------------------------------------------- display
def test_display_overlays_predicted_and_true_masks(fitted, lesions):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sklearn_endo.segmentation import SegmentationDisplay

    X, masks = lesions
    disp = SegmentationDisplay.from_estimator(fitted, X[60:65], masks[60:65], n_images=3)
    pred = fitted.predict(X[60:63])
    want = [dice_score(t, p) for t, p in zip(masks[60:63], pred)]
    np.testing.assert_allclose(disp.scores, want)
    assert [ax.get_title() for ax in disp.axes_[:3]] == [f"Dice {d:.2f}" for d in want]
    title = disp.figure_._suptitle.get_text()
    assert "true (lime outline)" in title and f"mean Dice {np.mean(want):.2f}" in title
    # the red fill covers exactly the predicted pixels
    overlay = disp.axes_[0].get_images()[1].get_array()
    np.testing.assert_array_equal(np.asarray(overlay)[..., 3] > 0, pred[0])
    plt.close("all")
    # images of different sizes, predictions only, own title
    imgs = [np.zeros((8, 8, 3)), np.zeros((6, 10))]
    disp = SegmentationDisplay.from_predictions(imgs, None, [np.eye(8), np.ones((6, 10))],
                                                title="mine")
    assert disp.figure_._suptitle.get_text() == "mine" and disp.scores is None
    with pytest.raises(ValueError, match="one of each per image"):
        SegmentationDisplay.from_predictions(imgs, [np.eye(8)], [np.eye(8), np.eye(8)])
    plt.close("all")


def test_docs_snippets_run_offline(monkeypatch, tmp_path):
    """docs/segmentation.md's python blocks run as written (shorter fits, for speed)."""
    from pathlib import Path

    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import sklearn_endo.segmentation

    class Short(Segmenter):
        def fit(self, X, y, sample_weight=None, **fit_params):
            self.set_params(max_epochs=1, image_size=32, encoder_depth=3, device="cpu",
                            verbose=0)
            return super().fit(X[:24], y[:24], **fit_params)

    monkeypatch.setattr(sklearn_endo.segmentation, "Segmenter", Short)
    monkeypatch.chdir(tmp_path)
    page = Path(__file__).resolve().parents[1] / "docs" / "segmentation.md"
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M)
    namespace = {}
    for code in blocks:
        code = code.replace("n_jobs=2", "n_jobs=1").replace("cv=3", "cv=2")
        exec(compile(code, str(page), "exec"), namespace)
    plt.close("all")
    assert len(blocks) == 3 and (tmp_path / "masks.png").exists()
    assert 0 <= namespace["search"].best_score_ <= 1
    assert np.isfinite(namespace["search"].cv_results_["mean_test_dice"]).all()


def test_sample_weight_reaches_the_loss_and_a_valid_split_works(lesions):
    from skorch.dataset import ValidSplit

    X, masks = lesions
    seen = []

    class Recording(SegmentationLoss):
        def forward(self, logits, masks, has_mask=None, sample_weight=None):
            seen.append(None if sample_weight is None else sample_weight.tolist())
            return super().forward(logits, masks, has_mask, sample_weight)

    w = np.array([0.0, 1.0, 2.0, 3.0] * 2)
    seg = Segmenter(**dict(TINY, criterion=Recording, batch_size=8)).fit(
        X[:8], masks[:8], sample_weight=w)
    assert sorted(seen[0]) == sorted(w.tolist())
    with pytest.raises(ValueError, match="sample_weight has shape"):
        seg.fit(X[:8], masks[:8], sample_weight=w[:3])
    seg = Segmenter(**dict(TINY, train_split=ValidSplit(4))).fit(X[:16], masks[:16])
    assert np.isfinite(seg.history[-1, "valid_loss"])
