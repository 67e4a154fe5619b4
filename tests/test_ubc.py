"""UBCClassifier: fit/predict, partial supervision, sklearn and skorch plumbing, bad input."""

import io
import multiprocessing
import re
import socket
import time
import warnings

import joblib
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from sklearn_endo._encoders import WeightsUnavailableError
from sklearn_endo.ubc import NoMasksWarning, UBCClassifier, _model

TINY = dict(encoder="resnet18", pretrained=False, image_size=32, encoder_depth=3,
            max_epochs=1, batch_size=4, random_state=0, device="cpu", verbose=0)


@pytest.fixture(scope="module")
def data():
    """8 images 32x32: class 1 has a bright square, its mask marks the square."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 100, (8, 32, 32, 3), dtype=np.uint8)
    y = np.array([0, 1] * 4)
    masks = np.zeros((8, 32, 32), dtype=bool)
    for i in np.flatnonzero(y):
        r, c = rng.integers(0, 24, 2)
        X[i, r:r + 8, c:c + 8] = 220
        masks[i, r:r + 8, c:c + 8] = True
    return X, y, masks


def hand_dice(true, pred):
    """Mean over masks of 2 |T & P| / (|T| + |P|), 1 when both are empty."""
    scores = []
    for t, p in zip(np.asarray(true, bool), np.asarray(pred, bool)):
        total = t.sum() + p.sum()
        scores.append(1.0 if total == 0 else 2.0 * (t & p).sum() / total)
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def fitted(data):
    X, y, masks = data
    return UBCClassifier(**TINY).fit(X, np.array(["normal", "polyp"])[y], masks=masks)


def test_fit_predict_shapes_and_dtypes(data, fitted):
    X, y, masks = data
    assert fitted.classes_.tolist() == ["normal", "polyp"]
    proba = fitted.predict_proba(X)
    assert proba.shape == (8, 2) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)
    assert set(fitted.predict(X)) <= {"normal", "polyp"}
    m = fitted.predict_masks(X)
    assert m.shape == (8, 32, 32) and m.dtype == bool
    p = fitted.predict_masks(X, threshold=None)
    assert p.dtype == np.float32 and 0 <= p.min() and p.max() <= 1
    assert fitted.dice_score(X, masks) == pytest.approx(hand_dice(masks, m), abs=1e-12)
    assert fitted.dice_score(X, masks, threshold=0.9) == pytest.approx(
        hand_dice(masks, p > 0.9), abs=1e-12)
    labels = np.array(["normal", "polyp"])[y]
    assert fitted.score(X, labels) == pytest.approx(np.mean(fitted.predict(X) == labels))
    assert fitted.score(X, labels[::-1]) == pytest.approx(
        np.mean(fitted.predict(X) == labels[::-1]))
    assert len(fitted.history) == 1


def test_partial_masks_unlabeled_samples_and_string_labels(data):
    X, y, masks = data
    partial = [m if i % 3 else None for i, m in enumerate(masks)]
    labels = np.array(["a", "b"], dtype=object)[y]
    labels[[2, 5]] = None  # unlabeled: Dice term only
    clf = UBCClassifier(**TINY).fit(X, labels, masks=partial)
    assert clf.classes_.tolist() == ["a", "b"]
    y_num = y.copy()
    y_num[:3] = -1
    clf = UBCClassifier(**TINY).fit(X, y_num, masks=partial)
    assert clf.classes_.tolist() == [0, 1]


def test_paths_for_images_and_jpeg_masks(data, tmp_path):
    X, y, masks = data
    img_paths, mask_paths = [], []
    for i in range(len(X)):
        Image.fromarray(X[i]).save(tmp_path / f"{i}.png")
        Image.fromarray(masks[i].astype(np.uint8) * 255).save(tmp_path / f"{i}_m.jpg",
                                                              quality=70)
        img_paths.append(str(tmp_path / f"{i}.png"))
        mask_paths.append(str(tmp_path / f"{i}_m.jpg"))
    mask_paths[0] = None
    clf = UBCClassifier(**TINY, iterator_train__num_workers=0,
                        iterator_valid__num_workers=0).fit(img_paths, y, masks=mask_paths)
    assert clf.predict(img_paths).shape == (8,)
    # JPEG masks are thresholded back to the exact square
    got = clf.dice_score(X, [None] + mask_paths[1:], threshold=0.5)
    assert got == pytest.approx(hand_dice(masks[1:], clf.predict_masks(X[1:])), abs=1e-12)
    from sklearn_endo._images import check_images
    from sklearn_endo.ubc._masks import check_masks

    read = check_masks(mask_paths, check_images(img_paths)).get(1, (32, 32))[0].numpy()
    np.testing.assert_array_equal(read.astype(bool), masks[1])
    # an all-black JPEG mask decodes to ones (quantisation): it is empty, not all lesion
    empty = check_masks(mask_paths, check_images(img_paths)).get(2, (32, 32))[0].numpy()
    assert not masks[2].any() and not empty.any()


def test_multiclass_masks_and_grey_input(data):
    X, y, masks = data
    labels = masks.astype(np.int64)
    labels[:, :4, :4] = 2
    grey = X.mean(-1).astype(np.uint8)  # (N, H, W)
    clf = UBCClassifier(**dict(TINY, in_chans=1, n_mask_classes=3)).fit(grey, y, masks=labels)
    pred = clf.predict_masks(grey)
    assert pred.shape == (8, 32, 32) and pred.dtype == np.int64 and pred.max() <= 2
    proba = clf.predict_masks(grey, threshold=None)
    assert proba.shape == (8, 3, 32, 32)
    # per-pixel class probabilities (softmax over the 3 mask classes); labels = argmax
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)
    np.testing.assert_array_equal(pred, proba.argmax(1))
    # multi-class Dice: the mean over classes 1 and 2 of the binary Dice
    expected = np.mean([hand_dice(labels == k, pred == k) for k in (1, 2)])
    assert clf.dice_score(grey, labels) == pytest.approx(expected, abs=1e-12)
    # grey input goes through a 1-channel network: (N, H, W) and (N, H, W, 1) agree,
    # and the same pixels replicated to RGB are refused by the 1-channel model's input
    first = next(m for m in clf.module_.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 1
    np.testing.assert_array_equal(clf.predict_masks(grey[..., None], threshold=None), proba)


def test_alpha_one_does_not_train_the_decoder_and_freeze_encoder(data):
    X, y, masks = data
    clf = UBCClassifier(**dict(TINY, alpha=1.0, warm_start=True)).fit(X, y, masks=masks)
    dec = [p.detach().clone() for p in clf.module_.decoder_parameters]
    enc = [p.detach().clone() for p in clf.module_.seg.encoder.parameters()]
    clf.fit(X, y, masks=masks)
    assert all(torch.equal(a, b) for a, b in zip(dec, clf.module_.decoder_parameters))
    assert not all(torch.equal(a, b) for a, b in zip(enc, clf.module_.seg.encoder.parameters()))

    clf = UBCClassifier(**dict(TINY, freeze_encoder=True, warm_start=True)).fit(X, y, masks=masks)
    enc = [p.detach().clone() for p in clf.module_.seg.encoder.parameters()]
    clf.fit(X, y, masks=masks)
    assert all(torch.equal(a, b) for a, b in zip(enc, clf.module_.seg.encoder.parameters()))


def test_reproducible_with_random_state_and_step_lr(data):
    X, y, masks = data
    a = UBCClassifier(**dict(TINY, max_epochs=6, batch_size=8)).fit(X, y, masks=masks)
    b = UBCClassifier(**dict(TINY, max_epochs=6, batch_size=8)).fit(X, y, masks=masks)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    # paper's schedule: lr *= 0.9 every 5 epochs
    assert a.optimizer_.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.9)


class SpyUBC(UBCClassifier):
    seen = []

    def fit(self, X, y, masks=None, **fit_params):
        SpyUBC.seen.append((X.copy(), None if masks is None else np.array(masks)))
        return super().fit(X, y, masks=masks, **fit_params)


def test_gridsearch_routes_masks_per_fold(data):
    X, y, masks = data
    X = X.copy()
    X[:, 0, 0, 0] = np.arange(len(X))  # tag each image to find its mask
    SpyUBC.seen.clear()
    search = GridSearchCV(SpyUBC(**TINY), {"alpha": [0.5, 1.0]}, cv=KFold(2), refit=True)
    search.fit(X, y, masks=masks)
    assert len(SpyUBC.seen) == 2 * 2 + 1
    for Xf, mf in SpyUBC.seen:
        idx = Xf[:, 0, 0, 0]
        assert len(Xf) in (4, 8)
        np.testing.assert_array_equal(mf, masks[idx])
    assert search.best_params_["alpha"] in (0.5, 1.0)

    pipe = make_pipeline(FunctionTransformer(), UBCClassifier(**TINY))
    pipe.fit(X, y, ubcclassifier__masks=list(masks))
    res = cross_validate(UBCClassifier(**TINY), X, y, cv=2, params={"masks": masks})
    assert len(res["test_score"]) == 2


def test_clone_get_set_params():
    clf = UBCClassifier(**dict(TINY, alpha=0.3, callbacks__lr_scheduler__gamma=0.5))
    c = clone(clf)
    assert c.get_params()["alpha"] == 0.3 and c is not clf
    c.set_params(classes=[0, 1]).initialize()
    assert dict(c.callbacks_)["lr_scheduler"].gamma == 0.5
    c.set_params(alpha=0.7, lr=0.01)
    assert (c.alpha, c.lr, clf.alpha) == (0.7, 0.01, 0.3)
    assert clone(clf).device == "cpu" and UBCClassifier().device == "auto"


def test_joblib_and_save_load_params(data, fitted, tmp_path):
    X, _, _ = data
    buf = io.BytesIO()
    joblib.dump(fitted, buf)
    buf.seek(0)
    loaded = joblib.load(buf)
    np.testing.assert_allclose(loaded.predict_proba(X), fitted.predict_proba(X), atol=1e-6)

    fitted.save_params(f_params=tmp_path / "p.pt", f_history=tmp_path / "h.json")
    new = UBCClassifier(**dict(TINY, classes=["normal", "polyp"])).initialize()
    new.load_params(f_params=tmp_path / "p.pt", f_history=tmp_path / "h.json")
    np.testing.assert_allclose(new.predict_proba(X), fitted.predict_proba(X), atol=1e-6)
    assert new.predict(X[:1])[0] in ("normal", "polyp")


def test_bad_input(data, fitted):
    X, y, masks = data
    clf = UBCClassifier(**TINY)
    with pytest.raises(ValueError, match="masks has 7 masks but X has 8"):
        clf.fit(X, y, masks=masks[:7])
    with pytest.raises(ValueError, match="masks has 3 entries"):
        clf.fit(X, y, masks=[None] * 3)
    with pytest.raises(ValueError, match=r"masks\[0\] has size \(16, 16\)"):
        clf.fit(X, y, masks=list(masks[:, :16, :16]))
    with pytest.raises(ValueError, match="not a valid mask.*255"):
        clf.fit(X, y, masks=masks.astype(np.uint8) * 255)
    nan_masks = masks.astype(float)
    nan_masks[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        clf.fit(X, y, masks=nan_masks)
    nan_X = X / 255.0
    nan_X[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        clf.fit(nan_X, y, masks=masks)
    with pytest.raises(ValueError, match="single class"):
        clf.fit(X, np.zeros(8, int), masks=masks)
    with pytest.raises(ValueError, match="y has shape"):
        clf.fit(X, y[:5], masks=masks)
    with pytest.raises(ValueError, match="divisible"):
        UBCClassifier(**dict(TINY, image_size=30)).fit(X, y, masks=masks)
    with pytest.raises(ValueError, match="alpha"):
        UBCClassifier(**dict(TINY, alpha=1.5)).fit(X, y, masks=masks)
    with pytest.raises(ValueError, match="alpha=0"):
        UBCClassifier(**dict(TINY, alpha=0.0)).fit(X, y)
    with pytest.raises(ValueError, match="no labelled sample"):
        clf.fit(X, np.full(8, -1), masks=masks)
    with pytest.raises(ValueError, match="not seen in fit"):
        fitted.score(X, np.array(["normal", "cancer"] * 4))
    with pytest.raises(ValueError, match="not an encoder|neither"):
        UBCClassifier(**dict(TINY, encoder="resnet_18")).fit(X, y, masks=masks)


def test_no_masks_with_alpha_below_one_warns(data):
    X, y, _ = data
    with pytest.warns(NoMasksWarning, match="Dice term is 0"):
        UBCClassifier(**TINY).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        UBCClassifier(**dict(TINY, alpha=1.0)).fit(X, y)


@pytest.mark.parametrize("encoder", ["resnet18", "tu-resnet18"])
def test_pretrained_offline_fails_fast_with_ways_out(data, monkeypatch, encoder):
    X, y, masks = data

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    monkeypatch.setattr(_model, "_hub_cached", lambda *a: False)
    monkeypatch.setattr(_model, "_local_pretrained_file", lambda name: None)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="pretrained=False") as exc:
        UBCClassifier(**dict(TINY, encoder=encoder, pretrained=True)).fit(X, y, masks=masks)
    assert time.perf_counter() - start < 10
    assert "resnet18" in str(exc.value)


def test_pooling_auto_is_mask_guided_unless_alpha_is_one(data):
    X, y, masks = data
    from sklearn_endo.ubc._model import MaskGuidedHead

    guided = UBCClassifier(**TINY).fit(X, y, masks=masks)
    assert guided.pooling_ == "mask"
    assert any(isinstance(m, MaskGuidedHead) for m in guided.module_.modules())
    plain = UBCClassifier(**{**TINY, "alpha": 1.0}).fit(X, y, masks=masks)
    assert plain.pooling_ == "avg"
    assert not any(isinstance(m, MaskGuidedHead) for m in plain.module_.modules())
    assert UBCClassifier(**{**TINY, "pooling": "avg"}).fit(X, y, masks=masks).pooling_ == "avg"
    with pytest.raises(ValueError, match="pooling='max' must be 'auto'"):
        UBCClassifier(**{**TINY, "pooling": "max"}).fit(X, y, masks=masks)


def _truncated_jpeg(path, shape):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # the header is intact, the data is not


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_files_decoded_in_workers_report_the_package_message(data, tmp_path,
                                                                     num_workers):
    from sklearn_endo._images import DecodeError

    X, y, masks = data
    paths, mask_paths = [], []
    for i in range(4):  # 64 px: a truncated 32 px JPEG loses its header too
        paths.append(str(tmp_path / f"{i}.png"))
        mask_paths.append(str(tmp_path / f"{i}_m.png"))
        Image.fromarray(X[i]).resize((64, 64)).save(paths[i])
        Image.fromarray(masks[i].astype(np.uint8) * 255).resize((64, 64)).save(mask_paths[i])
    loaders = dict(iterator_train__num_workers=num_workers,
                   iterator_valid__num_workers=num_workers)
    good_paths = list(paths)
    bad_image = tmp_path / "bad.jpg"
    _truncated_jpeg(bad_image, (64, 64, 3))
    paths[2] = str(bad_image)
    clf = UBCClassifier(**TINY, **loaders)
    # processes of other tests (joblib's reusable loky pool) may still be alive: compare
    before = set(multiprocessing.active_children())
    for call in (lambda: clf.fit(paths, y[:4], masks=mask_paths),
                 lambda: clf.fit(good_paths, y[:4], masks=mask_paths).predict(paths)):
        with pytest.raises(DecodeError) as info:
            call()
        assert str(info.value).startswith(f"X[2] = {str(bad_image)!r} cannot be read")
        assert "Caught" not in str(info.value)
        assert (info.value.worker_traceback is not None) == bool(num_workers)
        # the workers are stopped at once, not left to a slow garbage collection
        assert set(multiprocessing.active_children()) <= before
    bad_mask = tmp_path / "bad_m.jpg"
    _truncated_jpeg(bad_mask, (64, 64))
    mask_paths[1] = str(bad_mask)
    with pytest.raises(DecodeError) as info:
        UBCClassifier(**TINY, **loaders).fit(good_paths, y[:4], masks=mask_paths)
    assert str(info.value).startswith(f"masks[1] = {str(bad_mask)!r} cannot be read")
    assert (info.value.worker_traceback is not None) == bool(num_workers)


def test_docs_snippets_run_offline(monkeypatch):
    """docs/ubc.md's python blocks run as written (a smaller, shorter fit, for speed)."""
    import re
    from pathlib import Path

    import sklearn_endo

    class OneEpoch(UBCClassifier):
        def fit(self, X, y, masks=None, sample_weight=None, **fit_params):
            self.set_params(max_epochs=1, image_size=32, encoder_depth=3, device="cpu")
            return super().fit(X, y, masks=masks, sample_weight=sample_weight, **fit_params)

    monkeypatch.setattr(sklearn_endo, "UBCClassifier", OneEpoch)
    page = Path(__file__).resolve().parents[1] / "docs" / "ubc.md"
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M)
    ran = 0
    for code in blocks:
        if "needs network" in code.splitlines()[0]:
            continue
        namespace = {}
        exec(compile(code, str(page), "exec"), namespace)
        assert 0 <= namespace["clf"].score(namespace["X_test"], namespace["y_test"]) <= 1
        ran += 1
    assert ran == 1 and len(blocks) == 2


def _timm_state(name, seed, **kw):
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(name, **kw)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("encoder, timm_name", [("resnet18", "resnet18"),
                                                ("tu-convnext_atto", "convnext_atto")])
def test_checkpoint_path_sets_every_encoder_weight(tmp_path, encoder, timm_name):
    from safetensors.torch import save_file

    state = _timm_state(timm_name, seed=1, num_classes=0)
    path = tmp_path / "enc.safetensors"
    save_file(state, str(path))
    # pretrained=True is overridden by the file (no download is tried)
    kw = dict(TINY, encoder=encoder, pretrained=True, checkpoint_path=path, classes=[0, 1])
    clf = UBCClassifier(**kw).initialize()
    enc = clf.module_.seg.encoder
    got = (enc.model if encoder.startswith("tu-") else enc).state_dict()
    assert len(got) >= 40
    for key, value in got.items():
        # features_only names a top-level sequence's children stem_0, stages_1, ...
        src = key if key in state else re.sub(r"^(stem|stages)_(\d)", r"\1.\2", key)
        torch.testing.assert_close(value, state[src], rtol=0, atol=0, msg=key)
    # and without the file the encoder has other (random) weights
    plain = UBCClassifier(**dict(kw, pretrained=False, checkpoint_path=None)).initialize()
    key = next(k for k in got if k.endswith("weight") and got[k].ndim == 4)
    ref = plain.module_.seg.encoder
    assert not torch.equal((ref.model if encoder.startswith("tu-") else ref)
                           .state_dict()[key], got[key])


def test_checkpoint_path_pt_with_head_grey_input_and_a_fit(data, tmp_path):
    X, y, masks = data
    state = _timm_state("resnet18", seed=2)  # with timm's 1000-class fc head
    path = tmp_path / "enc.pt"
    torch.save({"state_dict": state}, path)
    clf = UBCClassifier(**TINY, checkpoint_path=str(path), in_chans=1,
                        classes=[0, 1]).initialize()
    enc = clf.module_.seg.encoder.state_dict()
    torch.testing.assert_close(enc["conv1.weight"],
                               state["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(enc["layer4.1.bn2.running_var"],
                               state["layer4.1.bn2.running_var"])
    # every fit starts from the file: two fits give the same network
    a = UBCClassifier(**TINY, checkpoint_path=str(path)).fit(X, y, masks=masks)
    b = UBCClassifier(**TINY, checkpoint_path=str(path)).fit(X, y, masks=masks)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_checkpoint_path_that_does_not_fit_is_refused(tmp_path):
    from safetensors.torch import save_file

    kw = dict(TINY, classes=[0, 1])
    other = tmp_path / "resnet34.safetensors"
    save_file(_timm_state("resnet34", seed=0, num_classes=0), str(other))
    # resnet34 has 8 more basic blocks, each with 2 convolutions and 2 batch norms (5
    # tensors each): 96 keys resnet18 does not have
    with pytest.raises(ValueError, match=r"is not a state dict of timm's 'resnet18' "
                                         r"\(num_classes=0\): unexpected 96, e.g. "
                                         r"\['layer1.2"):
        UBCClassifier(**kw, checkpoint_path=other).initialize()
    state = _timm_state("resnet18", seed=0, num_classes=0)
    extra = tmp_path / "extra.safetensors"
    save_file(dict(state, **{"proj.weight": torch.zeros(2, 2)}), str(extra))
    with pytest.raises(ValueError, match=r"unexpected 1, e.g. \['proj.weight'\]"):
        UBCClassifier(**kw, checkpoint_path=extra).initialize()
    short = tmp_path / "short.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith("layer2")}, str(short))
    with pytest.raises(ValueError, match=r"missing 25, e.g. \['layer2"):
        UBCClassifier(**kw, checkpoint_path=short).initialize()
    with pytest.raises(ValueError, match="is not a file"):
        UBCClassifier(**kw, checkpoint_path=tmp_path / "none.safetensors").initialize()
    pickled = tmp_path / "obj.pt"
    torch.save({"net": torch.nn.Linear(2, 2)}, pickled)
    with pytest.raises(ValueError, match="could not be read as a state dict"):
        UBCClassifier(**kw, checkpoint_path=pickled).initialize()
