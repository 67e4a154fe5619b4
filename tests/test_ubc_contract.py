"""UBCClassifier against scikit-learn's estimator contract.

scikit-learn's own checks feed tables (2-D arrays); UBCClassifier takes images, so it
declares image input in its tags and ``check_estimator`` skips the tabular checks. The
API checks that need no data run here as they are; the data checks that matter (label
type, fit returns self, parameters untouched, batch invariance, refit) run on images.
"""

import warnings

import numpy as np
import pytest
import sklearn
from sklearn.exceptions import NotFittedError, SkipTestWarning
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils import estimator_checks as ec
from sklearn.utils import get_tags
from sklearn.utils.validation import check_is_fitted

from sklearn_endo.ubc import UBCClassifier, UBCLoss

TINY = dict(encoder="resnet18", pretrained=False, image_size=32, encoder_depth=3,
            max_epochs=1, batch_size=4, random_state=0, device="cpu", verbose=0)


@pytest.fixture(scope="module")
def data():
    """8 images 32x32, pixel [0, 0, 0] tags the index; class 1 has a bright square."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 100, (8, 32, 32, 3), dtype=np.uint8)
    y = np.array([0, 1] * 4)
    masks = np.zeros((8, 32, 32), dtype=bool)
    for i in np.flatnonzero(y):
        r, c = rng.integers(1, 24, 2)
        X[i, r:r + 8, c:c + 8] = 220
        masks[i, r:r + 8, c:c + 8] = True
    for i in range(8):  # every mask distinct, to find a sample by its mask
        masks[i, 31, : i + 1] = True
    X[:, 0, 0, 0] = np.arange(8)
    return X, y, masks


# ---------------------------------------------------------------- sklearn's checks
# The API checks of sklearn.utils.estimator_checks that use no tabular data.
API_CHECKS = [
    ec.check_estimator_cloneable,
    ec.check_estimator_tags_renamed,
    ec.check_valid_tag_types,
    ec.check_estimator_repr,
    pytest.param(ec.check_no_attributes_set_in_init, marks=pytest.mark.xfail(
        strict=True, raises=AssertionError,
        reason="skorch's NeuralNet.__init__ sets history_, initialized_ and "
               "virtual_params_, which all of skorch reads")),
    ec.check_estimators_unfitted,
    pytest.param(ec.check_do_not_raise_errors_in_init_or_set_params,
                 marks=pytest.mark.xfail(
                     strict=True, raises=TypeError,
                     reason="skorch builds its callbacks inside set_params, so "
                            "callbacks=<int> raises there, not in fit")),
    ec.check_mixin_order,
    ec.check_parameters_default_constructible,
    ec.check_get_params_invariance,
    ec.check_set_params,
]


def test_check_estimator_skips_the_tabular_checks():
    tags = get_tags(UBCClassifier())
    assert tags.input_tags.two_d_array is False and tags.input_tags.three_d_array is True
    assert tags.estimator_type == "classifier"
    with pytest.warns(SkipTestWarning, match="Can't test estimator UBCClassifier"):
        results = ec.check_estimator(UBCClassifier(**TINY), on_fail=None)
    assert [(r["check_name"], r["status"]) for r in results] == [
        ("check_estimator_cloneable", "passed")]


@pytest.mark.parametrize(
    "check", API_CHECKS,
    ids=lambda c: getattr(c, "__name__", None) or c.values[0].__name__)
def test_api_checks_that_apply(check):
    with warnings.catch_warnings():
        # skorch builds its callbacks inside set_params, so check_set_params's fuzz
        # values for `callbacks` (inf, -inf) raise a TypeError there; sklearn only
        # warns about it, and the check itself must pass
        warnings.filterwarnings("ignore", "TypeError occurred during set_params")
        warnings.filterwarnings("ignore", "Estimator's parameters changed")
        check("UBCClassifier", UBCClassifier(**TINY))


# ---------------------------------------------------------------- targets
def test_continuous_y_raises_unknown_label_type(data):
    X, _, masks = data
    y = np.linspace(0.3, 1.7, 8)
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        UBCClassifier(**TINY).fit(X, y, masks=masks)
    # -1 stays the unlabeled marker, and integral floats are class labels
    y = np.array([0.0, 1.0, -1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    clf = UBCClassifier(**TINY).fit(X, y, masks=masks)
    assert clf.classes_.tolist() == [0.0, 1.0]
    y[2] = 0.5
    with pytest.raises(ValueError, match="Unknown label type"):
        UBCClassifier(**TINY).fit(X, y, masks=masks)


# ---------------------------------------------------------------- fitted state
def test_methods_before_fit_raise_not_fitted(data):
    X, y, masks = data
    clf = UBCClassifier(**TINY)
    calls = {
        "predict": lambda: clf.predict(X),
        "predict_proba": lambda: clf.predict_proba(X),
        "predict_masks": lambda: clf.predict_masks(X),
        "score": lambda: clf.score(X, y),
        "dice_score": lambda: clf.dice_score(X, masks),
        "check_is_fitted": lambda: check_is_fitted(clf),
    }
    for _name, call in calls.items():
        with pytest.raises(NotFittedError, match="not fitted yet.*fit"):
            call()
    clf.fit(X, y, masks=masks)
    check_is_fitted(clf)
    # initialize() with classes and load_params is skorch's way to a usable net
    check_is_fitted(UBCClassifier(**TINY, classes=[0, 1]).initialize())


def test_fit_returns_self_and_leaves_parameters_alone(data):
    X, y, masks = data
    clf = UBCClassifier(**TINY)
    before = clf.get_params(deep=False)
    public = {k for k in vars(clf) if not k.startswith("_") and not k.endswith("_")}
    assert clf.fit(X, y, masks=masks) is clf
    after = clf.get_params(deep=False)
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before), "fit changed a parameter"
    assert {k for k in vars(clf) if not k.startswith("_") and not k.endswith("_")} == public


def test_predictions_do_not_depend_on_batch_order_or_subset(data):
    X, y, masks = data
    clf = UBCClassifier(**TINY).fit(X, y, masks=masks)
    proba = clf.predict_proba(X)
    perm = np.random.default_rng(1).permutation(8)
    np.testing.assert_allclose(clf.predict_proba(X[perm]), proba[perm], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(clf.predict_proba(X[:3]), proba[:3], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(clf.predict_masks(X[perm]), clf.predict_masks(X)[perm])


def test_refit_is_idempotent(data):
    X, y, masks = data
    clf = UBCClassifier(**dict(TINY, max_epochs=2))
    first = clf.fit(X, y, masks=masks).predict_proba(X)
    np.testing.assert_array_equal(clf.fit(X, y, masks=masks).predict_proba(X), first)


# ---------------------------------------------------------------- sample_weight
class RecordingLoss(UBCLoss):
    seen = []

    def forward(self, class_logits, mask_logits, y, masks, has_mask, sample_weight=None):
        RecordingLoss.seen.append((masks.clone(), sample_weight))
        return super().forward(class_logits, mask_logits, y, masks, has_mask, sample_weight)


def test_sample_weight_reaches_the_loss_with_its_sample(data):
    X, y, masks = data
    w = np.arange(1.0, 9.0)
    RecordingLoss.seen.clear()
    UBCClassifier(**TINY, criterion=RecordingLoss).fit(X, y, masks=masks, sample_weight=w)
    got = []
    for batch_masks, batch_w in RecordingLoss.seen:
        assert batch_w is not None and batch_w.dtype.is_floating_point
        for m, wi in zip(batch_masks.numpy().astype(bool), batch_w.tolist()):
            i = next(i for i in range(8) if np.array_equal(masks[i], m))
            assert wi == w[i]
            got.append(i)
    assert sorted(got) == list(range(8))

    RecordingLoss.seen.clear()
    UBCClassifier(**TINY, criterion=RecordingLoss).fit(X, y, masks=masks)
    assert all(batch_w is None for _, batch_w in RecordingLoss.seen)


def test_sample_weight_changes_the_fit_but_not_its_scale(data):
    X, y, masks = data
    w = np.array([5.0, 1.0, 0.0, 2.0, 1.0, 0.5, 3.0, 1.0])
    plain = UBCClassifier(**TINY).fit(X, y, masks=masks).predict_proba(X)
    weighted = UBCClassifier(**TINY).fit(X, y, masks=masks, sample_weight=w).predict_proba(X)
    scaled = UBCClassifier(**TINY).fit(X, y, masks=masks,
                                       sample_weight=10 * w).predict_proba(X)
    assert np.abs(weighted - plain).max() > 1e-4
    # the loss terms are weighted means, so only relative weights matter
    np.testing.assert_allclose(scaled, weighted, rtol=1e-4, atol=1e-5)


class FiveArgumentLoss(UBCLoss):
    """A criterion written before sample_weight existed."""

    def forward(self, class_logits, mask_logits, y, masks, has_mask):
        return super().forward(class_logits, mask_logits, y, masks, has_mask)


def test_a_criterion_without_sample_weight_still_trains(data):
    X, y, masks = data
    got = UBCClassifier(**TINY, criterion=FiveArgumentLoss).fit(X, y, masks=masks)
    ref = UBCClassifier(**TINY).fit(X, y, masks=masks)
    np.testing.assert_array_equal(got.predict_proba(X), ref.predict_proba(X))


class SpyUBC(UBCClassifier):
    seen = []

    def fit(self, X, y, masks=None, sample_weight=None, **fit_params):
        SpyUBC.seen.append((X[:, 0, 0, 0].copy(), sample_weight))
        return super().fit(X, y, masks=masks, sample_weight=sample_weight, **fit_params)


def test_sample_weight_routing_in_search_and_pipeline(data):
    X, y, masks = data
    w = np.arange(1.0, 9.0)
    SpyUBC.seen.clear()
    GridSearchCV(SpyUBC(**TINY), {"alpha": [0.5]}, cv=KFold(2)).fit(
        X, y, masks=masks, sample_weight=w)
    assert len(SpyUBC.seen) == 3
    for idx, wf in SpyUBC.seen:
        np.testing.assert_array_equal(wf, w[idx])

    SpyUBC.seen.clear()
    make_pipeline(FunctionTransformer(), SpyUBC(**TINY)).fit(
        X, y, spyubc__masks=masks, spyubc__sample_weight=w)
    np.testing.assert_array_equal(SpyUBC.seen[0][1], w)

    # with metadata routing on, the estimator requests what it wants
    SpyUBC.seen.clear()
    with sklearn.config_context(enable_metadata_routing=True):
        est = SpyUBC(**TINY).set_fit_request(masks=True, sample_weight=True)
        est.set_score_request(sample_weight=True)
        GridSearchCV(est, {"alpha": [0.5]}, cv=KFold(2), refit=False).fit(
            X, y, masks=masks, sample_weight=w)
    assert len(SpyUBC.seen) == 2
    for idx, wf in SpyUBC.seen:
        np.testing.assert_array_equal(wf, w[idx])


def test_bad_sample_weight(data):
    X, y, masks = data
    clf = UBCClassifier(**TINY)
    cases = [
        (np.ones(5), r"sample_weight has shape \(5,\) but X has 8"),
        (np.r_[np.ones(7), -1.0], r"sample_weight\[7\] = -1.0"),
        (np.r_[np.nan, np.ones(7)], r"finite.*sample_weight\[0\] = nan"),
        (np.zeros(8), "0 for every sample"),
        (["a"] * 8, "must be an array of 8 numbers"),
    ]
    for w, match in cases:
        with pytest.raises(ValueError, match=match):
            clf.fit(X, y, masks=masks, sample_weight=w)


# ---------------------------------------------------------------- repr and progress
def test_repr_shows_the_changed_parameters_like_sklearn(data):
    assert repr(UBCClassifier()) == "UBCClassifier()"
    clf = UBCClassifier("resnet18", alpha=0.3)
    assert repr(clf) == "UBCClassifier(alpha=0.3, encoder='resnet18')"
    assert repr(UBCClassifier(callbacks__lr_scheduler__gamma=0.5)) == (
        "UBCClassifier(callbacks__lr_scheduler__gamma=0.5)")

    long = UBCClassifier(**TINY, iterator_train__num_workers=0, classes=["a", "b"])
    text = repr(long)
    assert all(len(line) <= 79 for line in text.splitlines()) and "\n" in text
    rebuilt = eval(text, {"UBCClassifier": UBCClassifier})  # noqa: S307
    assert rebuilt.get_params(deep=False) == long.get_params(deep=False)

    X, y, masks = data
    fitted = UBCClassifier(**TINY).fit(X, y, masks=masks)
    assert repr(fitted) == repr(UBCClassifier(**TINY))


def test_fit_prints_an_epoch_table_by_default(data, capsys):
    X, y, masks = data
    params = {k: v for k, v in TINY.items() if k != "verbose"}
    params["max_epochs"] = 2
    UBCClassifier(**params).fit(X, y, masks=masks)
    lines = capsys.readouterr().out.splitlines()
    assert "epoch" in lines[0] and "train_loss" in lines[0] and "dur" in lines[0]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["1", "2"]

    UBCClassifier(**params, verbose=0).fit(X, y, masks=masks)
    assert capsys.readouterr().out == ""
