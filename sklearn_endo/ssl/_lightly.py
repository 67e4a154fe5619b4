"""Lazy access to lightly (MIT), the optional dependency of the ``ssl`` extra."""

from __future__ import annotations


def require_lightly():
    """Import lightly's losses, heads and model utilities, or say how to install them."""
    try:
        import lightly.loss as loss
        import lightly.models.modules as modules
        from lightly.models import utils
    except ImportError as exc:
        raise ImportError(
            "SelfSupervisedPretrainer takes its losses, projection heads and MAE masking "
            "from the 'lightly' package (MIT), which is not installed "
            f"({exc}). Install the optional extra: pip install 'sklearn-endo[ssl]' "
            "(or pip install 'lightly>=1.6')."
        ) from None
    return loss, modules, utils
