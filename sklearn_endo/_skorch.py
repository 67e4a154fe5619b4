"""Plumbing shared by the skorch estimators (``FineTuneClassifier``, ``UBCClassifier``).

``device="auto"`` resolved for the length of a method, seeding from ``random_state``,
and unpickling with ``device="auto"``.
"""

from __future__ import annotations

import contextlib
import inspect
import numbers
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, validate_parameter_constraints
from skorch import NeuralNet

from ._encoders import resolve_device

__all__ = ["SkorchEstimatorMixin", "changed_params_repr", "check_sample_weight", "forked_rng",
           "seed_of"]


class _AutoDevice(str):
    """The device that ``device='auto'`` resolved to, while a method runs."""


def seed_of(random_state):
    """An int seed from an int or a ``RandomState`` (None: None)."""
    if random_state is None:
        return None
    if isinstance(random_state, numbers.Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(2**31 - 1))


@contextlib.contextmanager
def forked_rng(seed):
    """torch's global RNGs (CPU and every CUDA device) seeded with ``seed`` inside, and
    left as they were outside."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class SkorchEstimatorMixin:
    """Behaviour shared by the package's ``skorch.NeuralNet`` estimators.

    Put it before ``NeuralNet`` in the bases. The estimator has ``device`` (``"auto"``
    allowed) and ``random_state``.
    """

    #: Checked at fit with scikit-learn's parameter validation (its messages name the
    #: parameter, the accepted values and what was given).
    _parameter_constraints = {
        "lr": [Interval(Real, 0, None, closed="neither")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
    }

    def _validate_constraints(self):
        """Check the constrained parameters this estimator has (raises
        ``InvalidParameterError``, a ``ValueError``)."""
        c = {k: v for k, v in self._parameter_constraints.items() if hasattr(self, k)}
        validate_parameter_constraints(c, {k: getattr(self, k) for k in c},
                                       caller_name=type(self).__name__)

    @contextlib.contextmanager
    def _resolved_device(self):
        spec = self.device
        if not (isinstance(spec, str) and spec == "auto") or isinstance(spec, _AutoDevice):
            yield
            return
        marker = self.device = _AutoDevice(resolve_device("auto").type)
        try:
            yield
        finally:
            if self.device is marker:  # not replaced by set_params(device=...)
                self.device = spec

    @contextlib.contextmanager
    def _seeded(self):
        if self.random_state is None:
            yield
            return
        with forked_rng(seed_of(self.random_state)):
            yield

    def initialize(self):
        with self._resolved_device(), self._seeded():
            return super().initialize()

    def set_params(self, **kwargs):
        with self._resolved_device():
            super().set_params(**kwargs)
        return self

    def load_params(self, *args, **kwargs):
        with self._resolved_device():
            return super().load_params(*args, **kwargs)

    # ------------------------------------------------------------ pickling
    #: Left out of a pickle: the optimizer (its param groups hold the weights, Adam's
    #: moments twice their size) and the callbacks (an LRScheduler holds the optimizer,
    #: EarlyStopping/Checkpoint copies of the weights); rebuilt fresh on unpickling.
    _NOT_PICKLED = ("optimizer_", "callbacks_")

    def __getstate__(self):
        held = {k: self.__dict__.pop(k) for k in self._NOT_PICKLED if k in self.__dict__}
        try:
            state = super().__getstate__()
        finally:
            self.__dict__.update(held)
        optimizer = held.get("optimizer_")
        if optimizer is not None:  # the groups' lrs (a schedule's place), not the weights
            state["__optimizer_groups__"] = [
                {k: v for k, v in g.items() if k != "params"}
                for g in optimizer.param_groups]
        return state

    def __setstate__(self, state):
        spec = state.get("device")
        if spec == "auto":
            state = dict(state, device=resolve_device("auto").type)
        state = dict(state)
        groups = state.pop("__optimizer_groups__", None)
        super().__setstate__(state)
        try:
            if getattr(self, "initialized_", False) and "module_" in self.__dict__:
                # fresh callbacks and a fresh optimizer (no moments) at the saved lrs,
                # for partial_fit / warm_start after loading
                self.initialize_callbacks()
                self.initialize_optimizer()
                fresh = self.optimizer_.param_groups
                if groups is not None and len(groups) == len(fresh):
                    for group, saved in zip(fresh, groups):
                        group.update(saved)
        finally:
            if spec == "auto":
                self.device = "auto"

    # ------------------------------------------------------------ sklearn API
    def __sklearn_is_fitted__(self):
        return (bool(getattr(self, "initialized_", False))
                and getattr(self, "classes_", None) is not None)

    def _check_fitted(self):
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' "
                f"first (or initialize() with classes=[...], then load_params(...))."
            )

    def _get_param_names(self):
        # skorch lists every attribute without a trailing underscore, including its
        # private bookkeeping set of keyword names, which is not a parameter
        return [k for k in super()._get_param_names() if k != "_params_to_validate"]

    def __repr__(self):
        """``UBCClassifier(alpha=0.3, encoder='resnet18')``: the parameters that differ
        from their defaults, as scikit-learn prints an estimator."""
        return changed_params_repr(self, (NeuralNet, type(self)))


def changed_params_repr(est, classes=None):
    """``Name(a=1, b='x')`` with the parameters of ``est`` that differ from the defaults
    of ``classes``' ``__init__`` (default: ``type(est)``), wrapped at 79 columns."""
    defaults = {}
    for cls in classes or (type(est),):
        for name, p in inspect.signature(cls.__init__).parameters.items():
            if p.default is not inspect.Parameter.empty:
                defaults[name] = p.default
    changed = [
        f"{k}={v!r}" for k, v in sorted(est.get_params(deep=False).items())
        if k not in defaults or not _same_param(v, defaults[k])
    ]
    return _wrap(f"{type(est).__name__}(", changed, ")")


def _same_param(value, default):
    if value is default:
        return True
    try:
        return type(value) is type(default) and repr(value) == repr(default)
    except Exception:  # a repr that fails differs
        return False


def _wrap(head, items, tail, width=79):
    """``head + ", ".join(items) + tail``, wrapped under ``head`` past ``width``."""
    line = head + ", ".join(items) + tail
    if len(line) <= width:
        return line
    indent = " " * len(head)
    lines, current, empty = [], head, True
    for i, item in enumerate(items):
        item += "," if i < len(items) - 1 else tail
        if not empty and len(current) + len(item) > width:
            lines.append(current.rstrip())
            current = indent
        current, empty = current + item + " ", False
    lines.append(current.rstrip())
    return "\n".join(lines)


def check_sample_weight(sample_weight, n):
    """``sample_weight`` as a float64 array of ``n`` finite weights >= 0, or None."""
    if sample_weight is None:
        return None
    try:
        w = np.asarray(sample_weight, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"sample_weight must be an array of {n} numbers, one per image; got "
            f"{type(sample_weight).__name__} that cannot be read as numbers."
        ) from None
    if w.ndim == 0:
        w = np.full(n, float(w))
    if w.shape != (n,):
        raise ValueError(
            f"sample_weight has shape {w.shape} but X has {n} images; pass one weight "
            f"per image (shape ({n},))."
        )
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
    if bad.size:
        raise ValueError(
            f"sample_weight must be finite and >= 0; sample_weight[{bad[0]}] = "
            f"{float(w[bad[0]])!r}. Drop that sample or give it weight 0."
        )
    if not w.any():
        raise ValueError("sample_weight is 0 for every sample; nothing would be trained.")
    return w
