"""Two-view augmentation for self-supervised pretraining on endoscopy images."""

from __future__ import annotations

import torch

AUGMENTS = (None, "endoscopy", "mae")


class RandomRot90:
    """Rotate by a random multiple of 90 degrees (only 0/180 for non-square inputs)."""

    def __call__(self, x):
        square = x.shape[-1] == x.shape[-2]
        k = int(torch.randint(0, 4 if square else 2, ())) * (1 if square else 2)
        return torch.rot90(x, k, dims=(-2, -1)) if k else x


GLOBAL_SCALE = (0.2, 1.0)
LOCAL_SCALE = (0.05, 0.4)  # DINO's local crops (lightly's DINOTransform default)


def endoscopy_views(size, *, colour=True, scale=GLOBAL_SCALE):
    """The view transform of the ``"endoscopy"`` preset for (3, H, W) floats in [0, 1].

    A random resized crop (``scale``, by default 0.2 to 1, of the image's area; aspect
    3/4 to 4/3) to ``size``,
    horizontal and vertical flips, a rotation by 0/90/180/270 degrees and, with
    ``colour``, colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.05;
    80 % of the time) and a Gaussian blur (sigma 0.1 to 2, half of the time). Endoscopy
    has no canonical orientation, so every flip and right-angle rotation is a valid
    view; hue is jittered little because colour carries diagnostic signal.
    """
    from torchvision.transforms import v2

    steps = [v2.RandomResizedCrop(tuple(size), scale=tuple(scale), antialias=True),
             v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90()]
    if colour:
        steps.append(v2.RandomApply(
            [v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.05)],
            p=0.8))
        # +-3 sigma at sigma 2; reflect padding needs the kernel below the image size
        kernel = min(13, (min(size) - 1) // 2 * 2 - 1)
        if kernel >= 3:
            steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))],
                                        p=0.5))
    return v2.Compose(steps)


class Views:
    """``n_views`` independent draws of ``transform`` on one image, stacked.

    A plain picklable callable (DataLoader workers receive it).
    """

    def __init__(self, transform, n_views, size):
        self.transform = transform
        self.n_views = n_views
        self.size = tuple(size)

    def __call__(self, x):
        views = []
        for _ in range(self.n_views):
            v = self.transform(x)
            if not isinstance(v, torch.Tensor) or tuple(v.shape) != (3, *self.size):
                got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(
                    f"augment returned {got} for an image of shape {(3, *self.size)}; it "
                    f"must map a (3, H, W) float tensor in [0, 1] to a tensor of the same "
                    f"shape (crop and resize back to the input size inside it).")
            views.append(v)
        return torch.stack(views)


def make_views(augment, size, n_views, *, mae=False):
    """The per-image view maker for ``augment`` (None/"endoscopy", "mae" or a callable)."""
    if augment is None:
        augment = "mae" if mae else "endoscopy"
    if isinstance(augment, str) and augment in ("endoscopy", "mae"):
        return Views(endoscopy_views(size, colour=augment == "endoscopy"), n_views, size)
    if callable(augment):
        return Views(augment, n_views, size)
    raise ValueError(
        f"augment={augment!r} is not supported; use None (the method's preset), "
        f"'endoscopy', 'mae' (crops, flips and rotations only) or a callable that maps a "
        f"(3, H, W) float tensor in [0, 1] to another of the same shape.")


def make_local_views(augment, local_size, n_views):
    """DINO's local crops: ``n_views`` crops of 5 to 40 % of the image, at ``local_size``.

    With the preset, the ``"endoscopy"`` transform with that crop scale; with a callable,
    the crop (resized to ``local_size``) followed by the callable.
    """
    from torchvision.transforms import v2

    local_size = tuple(local_size)
    if augment is None or augment == "endoscopy":
        return Views(endoscopy_views(local_size, scale=LOCAL_SCALE), n_views, local_size)
    if augment == "mae":
        return Views(endoscopy_views(local_size, colour=False, scale=LOCAL_SCALE), n_views,
                     local_size)
    crop = v2.RandomResizedCrop(local_size, scale=LOCAL_SCALE, antialias=True)
    return Views(v2.Compose([crop, augment]), n_views, local_size)


class MultiCrop:
    """``(global views, local views)`` of one image: two stacks of different sizes."""

    def __init__(self, global_views, local_views):
        self.global_views = global_views
        self.local_views = local_views

    def __call__(self, x):
        return self.global_views(x), self.local_views(x)
