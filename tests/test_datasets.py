"""Datasets: the synthetic generator and the folder loaders."""

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from sklearn_endo.datasets import load_image_folder, load_kvasir_seg, load_mask, make_lesions


def test_shapes_dtypes_and_balance():
    X, y, masks = make_lesions(30, n_classes=3, image_size=48, return_masks=True,
                               random_state=0)
    assert X.shape == (30, 48, 48, 3) and X.dtype == np.uint8
    assert masks.shape == (30, 48, 48) and masks.dtype == bool
    assert np.bincount(y).tolist() == [10, 10, 10]
    assert masks.any(axis=(1, 2)).all()  # appearance task: every image has a lesion
    X2, y2 = make_lesions(30, n_classes=3, image_size=48, random_state=0)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(X, make_lesions(30, n_classes=3, image_size=48,
                                              random_state=1)[0])


def test_presence_task_masks():
    X, y, masks = make_lesions(20, task="presence", n_distractors=3, return_masks=True,
                               random_state=0)
    has = masks.any(axis=(1, 2))
    np.testing.assert_array_equal(has, y == 1)


def test_mask_is_the_lesion_only_not_the_distractors():
    size, (low, high) = 64, (0.12, 0.25)
    X0 = make_lesions(8, n_distractors=0, random_state=3)[0]
    X, y, masks = make_lesions(8, n_distractors=3, image_size=size, lesion_size=(low, high),
                               return_masks=True, random_state=3)
    assert not np.array_equal(X0, X)
    for mask in masks:
        # one blob of a lesion's size: none of the three distractors leaks in
        assert ndimage.label(mask)[1] == 1
        r_low, r_high = low * size / 2, high * size / 2
        # the short axis is 0.7 to 1 times the long one; 1 px slack for rasterising
        assert 0.7 * np.pi * (r_low - 1) ** 2 <= mask.sum() <= np.pi * (r_high + 1) ** 2


def _stats(X, region):
    feats = []
    for img, reg in zip(X.astype(float) / 255, region):
        px = img[reg]
        lum = img.mean(-1)
        gy, gx = np.gradient(lum)
        edge = np.hypot(gx, gy)[reg]
        feats.append([*px.mean(0), *px.std(0), edge.mean()])
    return np.array(feats)


def test_classes_differ_inside_the_lesion():
    X, y, masks = make_lesions(120, n_classes=4, image_size=64, return_masks=True,
                               random_state=0)
    inside = cross_val_score(LogisticRegression(max_iter=2000), _stats(X, masks), y, cv=4)
    assert inside.mean() > 0.7  # chance is 0.25


def test_where_to_look_matters_with_distractors():
    X, y, masks = make_lesions(160, task="presence", n_distractors=3, image_size=64,
                               lesion_size=(0.15, 0.22), return_masks=True, random_state=0)
    model = LogisticRegression(max_iter=2000)
    whole = cross_val_score(model, _stats(X, np.ones_like(masks)), y, cv=4).mean()
    # the same statistics where the lesion would be (a random lesion-sized disc for
    # class 0, whose images have none) tell the classes apart far better
    region = masks.copy()
    rng = np.random.default_rng(0)
    donors = np.flatnonzero(y == 1)
    for i in np.flatnonzero(y == 0):
        region[i] = masks[rng.choice(donors)]
    there = cross_val_score(model, _stats(X, region), y, cv=4).mean()
    assert whole < 0.75 and there > whole + 0.1


def test_distractors_hide_the_class_from_whole_image_statistics():
    X, y, masks = make_lesions(160, n_classes=2, n_distractors=3, return_masks=True,
                               random_state=0)
    model = LogisticRegression(max_iter=2000)
    inside = cross_val_score(model, _stats(X, masks), y, cv=4).mean()
    whole = cross_val_score(model, _stats(X, np.ones_like(masks)), y, cv=4).mean()
    assert inside > 0.85 and whole < 0.7  # measured about 0.96 and 0.56 over seeds


@pytest.mark.parametrize("kwargs, match", [
    ({"n_samples": 0}, "n_samples"), ({"n_classes": 1}, "n_classes"),
    ({"n_classes": 6}, "n_classes"), ({"image_size": 8}, "image_size"),
    ({"lesion_size": (0.3, 0.2)}, "lesion_size"), ({"lesion_size": 0.2}, "lesion_size"),
    ({"task": "shape"}, "task"), ({"task": "presence", "n_classes": 3}, "n_classes"),
    ({"n_distractors": -1}, "n_distractors"), ({"noise": -0.1}, "noise"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_lesions(**{"n_samples": 4, **kwargs})


def _write(path, color=(200, 50, 50), size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_load_image_folder_flat_and_nested(tmp_path):
    for cls in ("polyps", "normal-z-line"):
        for i in range(3):
            _write(tmp_path / "flat" / cls / f"{i}.jpg")
    (tmp_path / "flat" / "polyps" / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path / "flat")
    assert data.target_names == ["normal-z-line", "polyps"]
    assert data.filenames.shape == (6,) and data.target.tolist() == [0, 0, 0, 1, 1, 1]
    assert all(f.endswith(".jpg") for f in data.filenames)
    # HyperKvasir: labeled-images/<region>/<category>/<finding>/*.jpg
    root = tmp_path / "labeled-images"
    _write(root / "upper-gi-tract" / "anatomical-landmarks" / "z-line" / "a.jpg")
    _write(root / "upper-gi-tract" / "pathological-findings" / "esophagitis-a" / "b.jpg")
    _write(root / "lower-gi-tract" / "pathological-findings" / "polyps" / "c.png")
    X, y = load_image_folder(root, return_X_y=True)
    assert len(X) == 3 and sorted(y.tolist()) == [0, 1, 2]
    names = load_image_folder(root).target_names
    assert names == ["esophagitis-a", "polyps", "z-line"]


def test_load_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        load_image_folder(tmp_path / "missing")
    _write(tmp_path / "loose.jpg")
    with pytest.raises(ValueError, match="need class subfolders"):
        load_image_folder(tmp_path)
    _write(tmp_path / "only" / "a.jpg")
    with pytest.raises(ValueError, match="one class folder"):
        load_image_folder(tmp_path)


def test_load_kvasir_seg_and_noisy_jpeg_masks(tmp_path):
    truth = np.zeros((40, 50), bool)
    truth[10:30, 15:40] = True
    (tmp_path / "masks").mkdir()
    for name in ("a", "b"):
        _write(tmp_path / "images" / f"{name}.jpg", size=(50, 40))
        rgb = np.repeat((truth * 255).astype(np.uint8)[..., None], 3, axis=-1)
        # 3-channel JPEG with compression noise, as Kvasir-SEG stores its masks
        Image.fromarray(rgb).save(tmp_path / "masks" / f"{name}.jpg", quality=70)
    data = load_kvasir_seg(tmp_path)
    assert [p.split("/")[-1] for p in data.filenames] == ["a.jpg", "b.jpg"]
    assert [p.split("/")[-1] for p in data.mask_filenames] == ["a.jpg", "b.jpg"]
    raw = np.asarray(Image.open(data.mask_filenames[0]))
    assert raw.ndim == 3 and len(np.unique(raw)) > 2  # compression noise is there
    mask = load_mask(data.mask_filenames[0])
    assert mask.dtype == bool and (mask == truth).mean() > 0.99
    _write(tmp_path / "images" / "c.jpg")
    with pytest.raises(ValueError, match="no mask of the same name.*c.jpg"):
        load_kvasir_seg(tmp_path)
    with pytest.raises(ValueError, match="has no images/ folder"):
        load_kvasir_seg(tmp_path / "images")


def test_load_mask_inputs(tmp_path):
    arr = np.array([[0, 200], [255, 10]], np.uint8)
    np.testing.assert_array_equal(load_mask(arr), [[False, True], [True, False]])
    np.testing.assert_array_equal(load_mask(Image.fromarray(arr)), load_mask(arr))
    with pytest.raises(ValueError, match="cannot be read"):
        bad = tmp_path / "bad.jpg"
        bad.write_bytes(b"nope")
        load_mask(bad)


def test_load_mask_arrays_match_files_and_bad_input(tmp_path):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[2:5, 3:7] = (250, 240, 235)
    rgb[0, 0] = (200, 10, 10)  # grey 67 with PIL's weights, 73 with a plain mean
    Image.fromarray(rgb).save(tmp_path / "m.png")
    np.testing.assert_array_equal(load_mask(rgb), load_mask(tmp_path / "m.png"))
    np.testing.assert_array_equal(load_mask(rgb, threshold=70),
                                  load_mask(tmp_path / "m.png", threshold=70))
    truth = rgb.any(-1) & (rgb[..., 1] > 100)
    np.testing.assert_array_equal(load_mask(truth), truth)  # bool masks pass through
    np.testing.assert_array_equal(load_mask(truth[..., None].repeat(3, -1)), truth)
    np.testing.assert_array_equal(load_mask(truth * 255.0), truth)
    assert not load_mask(np.zeros((4, 4))).any()
    for bad, match in [(truth * 1.0, "float mask in \\[0, 1\\]"),
                       (np.zeros((2, 4, 5)), "shape"), (np.zeros(5), "shape"),
                       (np.full((2, 2), np.nan), "NaN"),
                       (np.array([["a", "b"]]), "dtype")]:
        with pytest.raises(ValueError, match=match):
            load_mask(bad)
    for threshold in (-1, 255, "127", True):
        with pytest.raises(ValueError, match="threshold"):
            load_mask(truth, threshold=threshold)


def test_load_image_folder_skips_hidden_and_takes_bare_extensions(tmp_path):
    for cls in ("a", "b"):
        _write(tmp_path / cls / "x.PNG")
        _write(tmp_path / cls / "y.jpg")
    _write(tmp_path / ".ipynb_checkpoints" / "z.png")
    data = load_image_folder(tmp_path, extensions="png")
    assert data.target_names == ["a", "b"]
    assert [f.split("/")[-2:] for f in data.filenames] == [["a", "x.PNG"], ["b", "x.PNG"]]


def test_load_mask_reads_zero_one_png_as_is(tmp_path):
    arr = np.zeros((6, 6), np.uint8)
    arr[1:4, 2:5] = 1
    Image.fromarray(arr).save(tmp_path / "m.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png"), arr.astype(bool))


def test_symlinked_class_folders_and_files_are_followed_without_looping(tmp_path):
    from sklearn_endo.datasets import load_unlabeled_folder

    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    for cls in ("a", "b"):
        for i in range(2):
            _write(data / cls / f"{i}.jpg")
    for i in range(3):
        _write(elsewhere / "c" / f"{i}.jpg")
    _write(elsewhere / "lone.png")
    (data / "c").symlink_to(elsewhere / "c")  # a class folder kept on another disk
    (data / "a" / "linked.png").symlink_to(elsewhere / "lone.png")  # a linked file
    (data / "b" / "loop").symlink_to(data)  # a link back up: must not loop
    bunch = load_image_folder(data)
    assert bunch.target_names == ["a", "b", "c"]
    assert np.bincount(bunch.target).tolist() == [3, 2, 3]
    assert str(data / "c" / "0.jpg") in bunch.filenames  # the path as the user sees it
    assert str(data / "a" / "linked.png") in bunch.filenames
    X = load_unlabeled_folder(data)
    assert len(X) == 8 and str(data / "c" / "2.jpg") in X
    # a link whose target is gone is named, not dropped
    (data / "b" / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    for load in (load_image_folder, load_unlabeled_folder):
        with pytest.raises(ValueError, match="gone.jpg.*does not exist"):
            load(data)
