"""Evaluation metrics: clinical classification metrics, Dice, and representation CKA.

Clinical metrics (:func:`sensitivity_score`, :func:`specificity_score`,
:func:`accuracy_ci`, :func:`quadratic_weighted_kappa`, :func:`classification_summary`)
follow :mod:`sklearn.metrics` conventions and plug into model selection through the
scorers. Held-out scores come with intervals: Wilson for proportions
(:func:`wilson_interval`, :func:`accuracy_ci`), a stratified bootstrap for ROC AUC,
balanced accuracy and Dice (:func:`roc_auc_ci`, :func:`balanced_accuracy_ci`,
:func:`dice_ci`). :func:`linear_cka` and friends compare representations of two layers or
encoders on the same images.
"""

from ._bootstrap import BootstrapCI, balanced_accuracy_ci, dice_ci, roc_auc_ci
from ._cka import cka_matrix, linear_cka, minibatch_cka, rbf_cka
from ._clinical import (
    classification_summary,
    quadratic_weighted_kappa,
    sensitivity_score,
    specificity_score,
)
from ._dice import dice_score, iou_score
from ._intervals import AccuracyCI, accuracy_ci, wilson_interval
from ._scorer import get_scorers, sensitivity_scorer, specificity_scorer

__all__ = [
    "AccuracyCI",
    "BootstrapCI",
    "accuracy_ci",
    "balanced_accuracy_ci",
    "cka_matrix",
    "classification_summary",
    "dice_ci",
    "dice_score",
    "get_scorers",
    "iou_score",
    "linear_cka",
    "minibatch_cka",
    "quadratic_weighted_kappa",
    "rbf_cka",
    "roc_auc_ci",
    "sensitivity_score",
    "sensitivity_scorer",
    "specificity_score",
    "specificity_scorer",
    "wilson_interval",
]
