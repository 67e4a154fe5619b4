"""Augmentation of an image and its mask together (training only)."""

from __future__ import annotations

import torch

AUGMENTS = (None, "endoscopy")


class JointEndoscopyAugment:
    """The endoscopy preset of ``FineTuneClassifier(augment="endoscopy")`` for
    segmentation: the same flips and 90-degree rotation (0/180 only for non-square
    inputs) applied to image and mask, then brightness x[0.8, 1.5] and, half of the
    time, a Gaussian blur (sigma 0.1 to 5) applied to the image only.

    ``__call__(x, mask)`` takes a float (3, H, W) image in [0, 1] and its (H, W) mask and
    returns both transformed.
    """

    def __init__(self, size):
        self.size = tuple(size)
        self._photometric = None

    def _photo(self):
        if self._photometric is None:
            from torchvision.transforms import v2

            # the blur kernel covers +-3 sigma, but reflect padding needs it below the
            # image size
            kernel = min(31, (min(self.size) - 1) // 2 * 2 - 1)
            steps = [v2.ColorJitter(brightness=(0.8, 1.5))]
            if kernel >= 3:
                steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 5.0))],
                                            p=0.5))
            self._photometric = v2.Compose(steps)
        return self._photometric

    def __call__(self, x, mask):
        if bool(torch.rand(()) < 0.5):
            x, mask = x.flip(-1), mask.flip(-1)
        if bool(torch.rand(()) < 0.5):
            x, mask = x.flip(-2), mask.flip(-2)
        square = x.shape[-1] == x.shape[-2]
        k = int(torch.randint(0, 4 if square else 2, ())) * (1 if square else 2)
        if k:
            x, mask = torch.rot90(x, k, dims=(-2, -1)), torch.rot90(mask, k, dims=(-2, -1))
        return self._photo()(x), mask

    def __getstate__(self):
        return {"size": self.size, "_photometric": None}


def make_joint_augment(augment, size):
    """None, the preset for ``"endoscopy"``, or the user's ``callable(x, mask)``."""
    if augment is None:
        return None
    if isinstance(augment, str) and augment == "endoscopy":
        return JointEndoscopyAugment(size)
    if callable(augment):
        return augment
    raise ValueError(
        f"augment={augment!r} is not supported; use None, 'endoscopy' or a callable "
        f"(x, mask) -> (x, mask) for a (3, H, W) float image in [0, 1] and its (H, W) "
        f"mask, which must move the mask's pixels as it moves the image's.")
