"""The examples run as documented: help texts, and what they compare is comparable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def _run(script, *args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, str(script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_describes_itself_and_its_options(script):
    """``--help`` has a description, and every option a help text (#16)."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(script.parent))
    try:
        spec.loader.exec_module(module)  # the scripts run only under __main__
    finally:
        sys.path.remove(str(script.parent))
    made = []
    real = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        made.append(self)
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(SystemExit):
            module.main() if module.main.__code__.co_argcount == 0 else module.main([])
    finally:
        argparse.ArgumentParser.parse_args = real
    (ap,) = made
    assert ap.description, f"{script.name}: --help has no description"
    for action in ap._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{script.name}: {action.option_strings} has no help"
        if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            shown = issubclass(ap.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
            assert shown or "default" in action.help, (
                f"{script.name}: {action.option_strings} does not say its default")


def test_optuna_layer_search_compares_the_same_space(capsys):
    """The study and OptunaSearchCV search layer and pooling on untouched clones: a trial
    of one with the same parameters as a trial of the other has the same score (#16)."""
    pytest.importorskip("optuna_integration")
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import optuna_layer_search
    finally:
        sys.path.remove(str(ROOT / "examples"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", category=Warning)  # none reaches the user
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        study, search = optuna_layer_search.main(
            ["--encoder", "resnet18", "--random-weights", "--n-samples", "30",
             "--n-trials", "6"])
    out = capsys.readouterr().out
    assert "encoder passes per image over the whole study: 1.00" in out
    by_params = {(t.params["layer"], t.params["pooling"]): t.value for t in study.trials}
    shared = 0
    for trial in search.trials_:
        key = (trial.params["layerfeaturetransformer__layer"],
               trial.params["layerfeaturetransformer__pooling"])
        if key in by_params:
            assert -trial.value == pytest.approx(by_params[key], rel=1e-9), key
            shared += 1
    assert shared >= 1
