"""The BiT-HyperRule (Kolesnikov et al., "Big Transfer (BiT)", ECCV 2020)."""

from __future__ import annotations

import numbers

from sklearn.utils import Bunch

__all__ = ["bit_hyperrule"]

BIT_BASE_LR = 0.003  # at batch 512, official big_transfer code (bit_hyperrule.py)
BIT_BASE_BATCH = 512
# (resize, crop) for images of at least 96 x 96 pixels; smaller ones: (160, 128) in both
BIT_RESOLUTIONS = {"official": (512, 480),  # big_transfer's bit_hyperrule.get_resolution
                   "paper": (448, 384)}  # the BiT paper's text (Section 3.3)


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer.")
    return int(value)


def bit_hyperrule(n_train, image_size, batch_size=512, *, resolution="official"):
    """Fine-tuning hyperparameters chosen by the BiT-HyperRule.

    The rule of the official ``big_transfer`` code (``bit_hyperrule.py``):

    ========================  ============  ==================  ==============
    training images           steps         warm-up steps       lr x0.1 at
    ========================  ============  ==================  ==============
    < 20,000                  500           100                 200, 300, 400
    < 500,000                 10,000        500                 3k, 6k, 9k
    otherwise                 20,000        500                 6k, 12k, 18k
    ========================  ============  ==================  ==============

    with SGD (momentum 0.9, no weight decay, the head initialised to zero), base lr
    0.003 at batch 512 scaled linearly to ``batch_size`` (``0.003 * batch_size / 512``,
    as the gastric-cancer study did), MixUp with alpha 0.1 only from 20,000 training
    images up, and the resolution by image area: smaller than 96 x 96 pixels -> resize
    to 160 and random-crop 128; otherwise, as the official code's ``get_resolution``,
    resize to 512 and random-crop 480 (the paper's text says 448 and 384:
    ``resolution="paper"``). The learning rate rises linearly from 0 during warm-up;
    the decays for the larger sets are at 30%, 60% and 90% of the steps, for the
    smallest at 40%, 60% and 80%.

    Parameters
    ----------
    n_train : int
        Number of training images.
    image_size : int or (int, int)
        Size (height, width) of the original images.
    batch_size : int, default=512
        Batch size; the learning rate is scaled linearly from 0.003 at 512.
    resolution : {"official", "paper"}, default="official"
        The (resize, crop) for images of at least 96 x 96 pixels: ``"official"``
        (512, 480), as ``bit_hyperrule.py`` of ``google-research/big_transfer``;
        ``"paper"`` (448, 384), as the paper's text. Smaller images get (160, 128)
        either way.

    Returns
    -------
    rule : Bunch
        ``steps``, ``warmup_steps``, ``decay_steps`` (list of 3 ints), ``lr``,
        ``mixup_alpha``, ``resize`` and ``crop`` (pixels, square), ``batch_size``,
        ``momentum`` (0.9) and ``weight_decay`` (0.0).

    Examples
    --------
    >>> from sklearn_endo.finetune import bit_hyperrule
    >>> rule = bit_hyperrule(1000, 64, batch_size=32)
    >>> rule.steps, rule.warmup_steps, rule.decay_steps, rule.crop
    (500, 100, [200, 300, 400], 128)
    >>> round(rule.lr, 6), rule.mixup_alpha
    (0.000188, 0.0)
    >>> bit_hyperrule(1000, 224).crop, bit_hyperrule(1000, 224, resolution="paper").crop
    (480, 384)
    """
    if not (isinstance(resolution, str) and resolution in BIT_RESOLUTIONS):
        raise ValueError(f"resolution={resolution!r} must be one of "
                         f"{sorted(BIT_RESOLUTIONS)}: 'official' (512, 480) as "
                         f"big_transfer's bit_hyperrule.py, 'paper' (448, 384).")
    n_train = _positive_int(n_train, "n_train")
    batch_size = _positive_int(batch_size, "batch_size")
    if isinstance(image_size, numbers.Integral) and not isinstance(image_size, bool):
        h = w = int(image_size)
    else:
        try:
            h, w = (int(s) for s in image_size)
        except (TypeError, ValueError):
            raise ValueError(f"image_size={image_size!r} must be an int or a (height, "
                             f"width) pair.") from None
    if h < 1 or w < 1:
        raise ValueError(f"image_size={image_size!r} must be positive.")
    if n_train < 20_000:
        supports = [100, 200, 300, 400, 500]
    elif n_train < 500_000:
        supports = [500, 3000, 6000, 9000, 10_000]
    else:
        supports = [500, 6000, 12_000, 18_000, 20_000]
    resize, crop = (160, 128) if h * w < 96 * 96 else BIT_RESOLUTIONS[resolution]
    return Bunch(
        steps=supports[-1], warmup_steps=supports[0], decay_steps=supports[1:4],
        lr=BIT_BASE_LR * batch_size / BIT_BASE_BATCH,
        mixup_alpha=0.0 if n_train < 20_000 else 0.1,
        resize=resize, crop=crop, batch_size=batch_size, momentum=0.9, weight_decay=0.0,
    )


def bit_lr_factor(step, rule):
    """Multiplier of the rule's lr at optimizer step ``step`` (0-based).

    Linear warm-up from 0, then x0.1 at each decay step; after ``steps`` the last value
    is kept.
    """
    if step < rule.warmup_steps:
        return step / rule.warmup_steps
    return 0.1 ** sum(s < step for s in rule.decay_steps)  # as the official get_lr
