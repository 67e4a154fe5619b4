"""The endoscopy augmentation preset, on torchvision.transforms.v2."""

from __future__ import annotations

import torch

AUGMENTS = (None, "endoscopy")


class RandomRot90:
    """Rotate by a random multiple of 90 degrees (only 0/180 for non-square inputs)."""

    def __call__(self, x):
        square = x.shape[-1] == x.shape[-2]
        k = int(torch.randint(0, 4 if square else 2, ())) * (1 if square else 2)
        return torch.rot90(x, k, dims=(-2, -1)) if k else x


def endoscopy_augment(size):
    """Flips, 90-degree rotations, brightness x[0.8, 1.5] and a Gaussian blur (sigma up
    to 5, half of the time) for (3, H, W) float images in [0, 1] of ``size``."""
    from torchvision.transforms import v2

    # the blur kernel covers +-3 sigma, but reflect padding needs it below the image size
    kernel = min(31, (min(size) - 1) // 2 * 2 - 1)
    steps = [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90(),
             v2.ColorJitter(brightness=(0.8, 1.5))]
    if kernel >= 3:
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 5.0))], p=0.5))
    return v2.Compose(steps)


class _Apply:
    """A plain callable around a transform (skorch refuses torch modules as state)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, x):
        return self.transform(x)


def make_augment(augment, size):
    if augment is None:
        return None
    if isinstance(augment, str) and augment == "endoscopy":
        return _Apply(endoscopy_augment(size))
    if callable(augment):
        return _Apply(augment)
    raise ValueError(f"augment={augment!r} is not supported; use None, 'endoscopy' or a "
                     f"callable that maps a (3, H, W) float tensor in [0, 1] to another.")
