"""Synthetic endoscopy-like images with lesions, masks and labels."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.utils import check_random_state

__all__ = ["make_lesions"]

TASKS = ("appearance", "presence")
# The surface patterns that decide the class (appearance task). Distractors are smooth.
TEXTURES = ("pitted", "striped", "granular", "pale", "vascular")
_TINTS = {  # RGB multipliers of the lesion surface per texture
    "pitted": (0.94, 0.74, 0.80),
    "striped": (0.95, 1.02, 1.12),
    "granular": (1.06, 0.78, 0.72),
    "pale": (1.10, 1.25, 1.20),
    "vascular": (0.90, 0.85, 0.95),
}


def make_lesions(n_samples=100, *, n_classes=2, image_size=64, task="appearance",
                 lesion_size=(0.12, 0.25), n_distractors=0, noise=0.03,
                 return_masks=False, random_state=None):
    """Generate endoscopy-like RGB images with one lesion and its mask.

    Each image shows pinkish-red mucosa with slow colour variation, thin darker vessels,
    small specular highlights and the dark corners of an endoscope's vignetting. A
    raised, polyp-like lesion (an elliptical dome with shading) sits somewhere in the
    field; its pixel mask is returned with ``return_masks=True``.

    * ``task="appearance"``: every image has a lesion and the class decides its surface
      pattern and tint: ``"pitted"`` (regular dimples), ``"striped"`` (parallel ridges),
      ``"granular"`` (red, coarse grain), ``"pale"`` (whitish), ``"vascular"``
      (dark vessel network), in that order, so ``n_classes <= 5``.
    * ``task="presence"``: class 0 has no lesion (empty mask), class 1 a pitted one.

    ``n_distractors`` adds smooth look-alike domes of the same size range, each tinted
    like a random class (independent of ``y``), that carry no pattern and are never in
    the mask: only the lesion's surface pattern tells the class. With a few distractors
    and a small ``lesion_size`` the class is decided by a small region in a busy
    background: the setting where a model that learns where to look (mask supervision)
    has an edge when samples are few. 1000 images of 64 x 64 take about 1.5 s.

    Parameters
    ----------
    n_samples : int, default=100
        Number of images. Classes are balanced (``y = i % n_classes``, shuffled).
    n_classes : int, default=2
        Number of classes, 2 to 5 (exactly 2 for ``task="presence"``).
    image_size : int, default=64
        Height and width in pixels, at least 16.
    task : {"appearance", "presence"}, default="appearance"
        What decides the class, see above.
    lesion_size : (float, float), default=(0.12, 0.25)
        Range of the lesion diameter as a fraction of ``image_size``; drawn uniformly.
    n_distractors : int, default=0
        Smooth look-alike domes per image (not in the mask).
    noise : float, default=0.03
        Standard deviation of the Gaussian pixel noise (images in [0, 1] before 8-bit).
    return_masks : bool, default=False
        Also return the lesion masks.
    random_state : int, RandomState instance or None, default=None
        Seed for reproducible output.

    Returns
    -------
    X : ndarray of shape (n_samples, image_size, image_size, 3), uint8
        The images, values in [0, 255].
    y : ndarray of shape (n_samples,), int
        Class labels.
    masks : ndarray of shape (n_samples, image_size, image_size), bool
        Lesion masks; only with ``return_masks=True``.

    Examples
    --------
    >>> from sklearn_endo.datasets import make_lesions
    >>> X, y, masks = make_lesions(6, n_classes=3, return_masks=True, random_state=0)
    >>> X.shape, X.dtype, masks.shape, masks.dtype
    ((6, 64, 64, 3), dtype('uint8'), (6, 64, 64), dtype('bool'))
    >>> sorted(set(y.tolist()))
    [0, 1, 2]
    """
    _check(n_samples, n_classes, image_size, task, lesion_size, n_distractors, noise)
    rng = check_random_state(random_state)
    y = rng.permutation(np.arange(n_samples) % n_classes)
    size = int(image_size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    X = np.empty((n_samples, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n_samples, size, size), dtype=bool)
    in_play = TEXTURES[:n_classes] if task == "appearance" else TEXTURES[:1]
    vignette = _vignette(xx, yy, size)[..., None]
    for i in range(n_samples):
        img = _background(rng, xx, yy, size)
        lesion_at = None
        if task == "appearance" or y[i] == 1:
            lesion_at = _place(rng, lesion_size, [])
        taken = [] if lesion_at is None else [lesion_at]
        for _ in range(n_distractors):
            spot = _place(rng, lesion_size, taken)
            taken.append(spot)
            # a tint of a random class, independent of y: colour alone must not tell
            # the lesion from the distractors, only its surface pattern does
            _dome(img, rng, xx, yy, spot, texture=None, tint=_TINTS[rng.choice(in_play)])
        if lesion_at is not None:
            texture = TEXTURES[y[i]] if task == "appearance" else TEXTURES[0]
            masks[i] = _dome(img, rng, xx, yy, lesion_at, texture=texture)
        _highlights(img, rng, xx, yy)
        img *= vignette
        img += rng.normal(0.0, noise, img.shape)
        X[i] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return (X, y, masks) if return_masks else (X, y)


def _check(n_samples, n_classes, image_size, task, lesion_size, n_distractors, noise):
    def integer(name, value, low):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer >= {low}.")

    integer("n_samples", n_samples, 1)
    integer("image_size", image_size, 16)
    integer("n_distractors", n_distractors, 0)
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not supported; use one of {list(TASKS)}.")
    if task == "presence" and n_classes != 2:
        raise ValueError(f"n_classes={n_classes!r} with task='presence' must be 2 "
                         f"(lesion absent / present).")
    if (isinstance(n_classes, bool) or not isinstance(n_classes, numbers.Integral)
            or not 2 <= n_classes <= len(TEXTURES)):
        raise ValueError(f"n_classes={n_classes!r} must be an integer from 2 to "
                         f"{len(TEXTURES)} (one lesion pattern per class).")
    try:
        low, high = (float(v) for v in lesion_size)
    except (TypeError, ValueError):
        raise ValueError(f"lesion_size={lesion_size!r} must be a (min, max) pair of "
                         f"fractions of the image size, e.g. (0.12, 0.25).") from None
    if not 0 < low <= high < 1:
        raise ValueError(f"lesion_size={lesion_size!r} must satisfy 0 < min <= max < 1 "
                         f"(fractions of the image size), e.g. (0.12, 0.25).")
    if not (isinstance(noise, numbers.Real) and noise >= 0):
        raise ValueError(f"noise={noise!r} must be a float >= 0.")


def _smooth_field(rng, xx, yy, n_waves=4, scale=1.0):
    field = np.zeros_like(xx)
    for _ in range(n_waves):
        fx, fy = rng.uniform(-2.5, 2.5, 2) * scale
        field += np.cos(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * np.pi))
    return field / n_waves


def _background(rng, xx, yy, size):
    base = np.array([rng.uniform(0.72, 0.86), rng.uniform(0.34, 0.46),
                     rng.uniform(0.32, 0.44)])
    shade = 1.0 + 0.12 * _smooth_field(rng, xx, yy)
    img = base[None, None, :] * shade[..., None]
    img[..., 1:] += 0.04 * _smooth_field(rng, xx, yy)[..., None]  # yellowish / bluish
    # a few thin vessels: sinusoidal curves, darker and bluer
    for _ in range(rng.randint(2, 5)):
        angle = rng.uniform(0, np.pi)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        v = -xx * np.sin(angle) + yy * np.cos(angle)
        path = rng.uniform(-0.6, 0.6) + 0.06 * np.sin(2 * np.pi * rng.uniform(1, 3) * u
                                                      + rng.uniform(0, 2 * np.pi))
        width = rng.uniform(0.4, 0.9) / size
        vessel = np.exp(-0.5 * ((v - path) / width) ** 2)
        img *= 1.0 - rng.uniform(0.2, 0.4) * vessel[..., None] * np.array([0.9, 1.0, 0.6])
    return img


def _place(rng, lesion_size, taken):
    """Centre and radii of a dome away from the border and from earlier ones."""
    for _ in range(30):
        diameter = rng.uniform(*lesion_size)
        r = diameter / 2
        ratio = rng.uniform(0.7, 1.0)
        c = rng.uniform(0.18 + r, 0.82 - r, 2) if 0.18 + r < 0.82 - r else np.array([.5, .5])
        if all(np.hypot(*(c - t[0])) > r + t[1] for t in taken):
            break
    return c, r, ratio, rng.uniform(0, np.pi)


def _dome(img, rng, xx, yy, spot, texture, tint=None):
    """Draw a raised elliptical dome; return its mask.

    ``texture`` (a name in TEXTURES) sets both the surface pattern and the tint; a
    distractor has no texture and takes ``tint`` (or none) on a smooth surface.
    """
    (cx, cy), r, ratio, angle = spot
    dx, dy = xx - cx, yy - cy
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / r
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / (r * ratio)
    d2 = u ** 2 + v ** 2
    mask = d2 <= 1.0
    height = np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))
    # light from the top-left: brighter on that flank, a darker rim below
    light = 1.0 + 0.25 * height - 0.18 * (u * 0.6 + v * 0.8) * (1 - height) * mask
    surface = np.ones_like(xx)
    base = np.array([1.02, 1.08, 1.08])  # domes are a little paler than the mucosa
    if texture is not None:
        surface = _texture(texture, rng, xx, yy, r)
        tint = _TINTS[texture]
    tint = base if tint is None else base * np.array(tint)
    factor = np.where(mask, light * surface, 1.0)
    img[mask] = img[mask] * tint * factor[mask][:, None]
    return mask


def _texture(name, rng, xx, yy, r):
    """A multiplicative surface pattern of period a fraction of the lesion radius."""
    # at least 3 pixels, so that the pattern survives small images and resizing
    period = max(r * rng.uniform(0.35, 0.5), 3.0 / xx.shape[0])
    phase = rng.uniform(0, 2 * np.pi, 2)
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    if name == "pitted":
        dots = np.cos(2 * np.pi * u / period + phase[0]) * np.cos(2 * np.pi * v / period
                                                                  + phase[1])
        return 1.0 - 0.35 * (dots > 0.5)
    if name == "striped":
        return 1.0 - 0.3 * (np.cos(2 * np.pi * u / period + phase[0]) > 0.3)
    if name == "granular":
        grain = rng.uniform(-1, 1, xx.shape)
        return 1.0 + 0.22 * np.sign(grain) * (np.abs(grain) > 0.4)
    if name == "pale":
        return 1.0 + 0.06 * np.cos(2 * np.pi * u / (2 * period) + phase[0])
    # vascular: a network of dark lines where two slow waves cross zero
    w1 = np.cos(2 * np.pi * u / (1.5 * period) + 2 * np.sin(2 * np.pi * v / (2 * period)))
    return 1.0 - 0.4 * (np.abs(w1) < 0.25)


def _highlights(img, rng, xx, yy):
    for _ in range(rng.randint(1, 4)):
        cx, cy = rng.uniform(0.15, 0.85, 2)
        s = rng.uniform(0.006, 0.018)
        spot = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
        img += 0.9 * spot[..., None] * (1.0 - img)


def _vignette(xx, yy, size):
    """Light falling off from the centre, and the black corners of a round field."""
    r = np.hypot(xx - 0.5, yy - 0.5) / 0.5  # 1 at the edge midpoints, 1.41 at corners
    light = np.clip(1.12 - 0.4 * r ** 2, 0.0, 1.0)
    field = np.clip((1.2 - r) * size / 3.0, 0.0, 1.0)  # a soft edge about 1.5 px wide
    return light * (0.04 + 0.96 * field)
