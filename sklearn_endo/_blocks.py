"""Block discovery and the layout of block outputs, found by looking at the network.

``find_blocks`` walks the module tree (no list of known architectures); ``probe_formats``
runs one dummy image through the blocks and reads the layout of every output from its
shape, so that a channels-last map is pooled over its spatial axes even when the model
does not say it is channels-last (SAM's ViT does not).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import torch
from torch import nn

_CONTAINERS = (nn.Sequential, nn.ModuleList)
# stage parts that change resolution between blocks (Swin's PatchMerging, a stage's
# ``downsample``) are transitions, not blocks, in every family
_TRANSITION_WORDS = ("downsample", "merg")


def _n_param_modules(module):
    return sum(1 for m in module.modules() if any(True for _ in m.parameters(recurse=False)))


def _is_stage_like(module):
    """A container: Sequential/ModuleList, or a module whose children all share a class."""
    if isinstance(module, _CONTAINERS) or type(module).__name__.lower().endswith("stage"):
        return True
    kids = list(module.children())
    return len(kids) >= 2 and len({type(k) for k in kids}) == 1


def _is_transition(name, module):
    """Downsample / merging layers, and anything inside a stem."""
    if any(part.lower().startswith("stem") for part in name.split(".")):
        return True
    words = (name.rsplit(".", 1)[-1].lower(), type(module).__name__.lower())
    return any(w in s for w in _TRANSITION_WORDS for s in words)


def _blocks_child(module):
    """The child named ``blocks`` when it is a container (timm's stages hold one)."""
    blocks = getattr(module, "blocks", None)
    if isinstance(blocks, _CONTAINERS) and any(c is blocks for c in module.children()):
        return blocks
    return None


def find_blocks(model):
    """Every residual / transformer block of ``model`` in registration (forward) order.

    A block is a composite module (two or more parametrised submodules) held by a
    container, that holds no such blocks itself. This yields the transformer blocks of
    ViTs and every BasicBlock/Bottleneck/InvertedResidual/ConvNeXt/Swin block of CNNs
    and hierarchical transformers, not only the stage ends, and skips stems, heads and
    transitions: a stage's downsample or patch-merging layer is not a block (it sits
    beside the stage's ``blocks`` container, or is named or typed ``*downsample*`` or
    ``*merg*``), nor is a layer of a ``stem``, so layer numbers count the same kind of
    unit in every family.
    """
    found = []

    def visit(name, module):
        """Return True if ``module`` contains blocks (then it is not one itself)."""
        inner = False
        container = _is_stage_like(module)
        blocks = _blocks_child(module)
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            if visit(full, child):
                inner = True
            elif (container and not isinstance(child, _CONTAINERS)
                  and (blocks is None or child is blocks)
                  and not _is_transition(full, child)
                  and _n_param_modules(child) >= 2):
                found.append((full, child))
                inner = True
        return inner

    visit("", model)
    # a block found inside another found block is a sub-part (e.g. a stage's downsample)
    names = [n for n, _ in found]
    return [(n, m) for n, m in found
            if not any(n != o and n.startswith(o + ".") for o in names)]


# ---------------------------------------------------------------- output layouts
class _StopProbe(Exception):
    pass


def _first_tensor(x):
    if isinstance(x, (tuple, list)) and x:
        x = x[0]
    return x if isinstance(x, torch.Tensor) else None


def probe_shapes(module, blocks, size, n_channels=3):
    """Shapes of the input of the first block and of every block output, for one image.

    Runs ``module`` on one zero image of ``size`` (H, W) in eval mode without autograd and
    stops after the last block. Entries are ``None`` for blocks the pass did not reach.
    Exceptions of the forward pass propagate.
    """
    shapes = [None] * (len(blocks) + 1)

    def pre(mod, args):
        x = _first_tensor(args)
        if shapes[0] is None and x is not None:
            shapes[0] = tuple(x.shape)

    def make(i):
        def post(mod, args, out):
            x = _first_tensor(out)
            if shapes[i] is None and x is not None:
                shapes[i] = tuple(x.shape)
            if i == len(blocks):
                raise _StopProbe

        return post

    param = next((p for p in module.parameters() if p.is_floating_point()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    x = torch.zeros((1, n_channels, *size), device=device, dtype=dtype)
    was_training = module.training
    with _hooks_set_aside(module):
        for i, (_, m) in enumerate(blocks, start=1):
            m.register_forward_hook(make(i))
        blocks[0][1].register_forward_pre_hook(pre)
        try:
            module.eval()
            with torch.inference_mode():
                module(x)
        except _StopProbe:
            pass
        finally:
            module.train(was_training)
    return shapes


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
               "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


@contextlib.contextmanager
def _hooks_set_aside(module):
    """Run with every submodule's forward hooks put aside (and ours dropped after).

    A dummy image is not a pass over data: a user's counters and loggers must not see it.
    """
    saved = []
    for m in module.modules():
        for attr in _HOOK_DICTS:
            if isinstance(getattr(m, attr, None), dict):
                saved.append((m, attr, getattr(m, attr)))
                setattr(m, attr, OrderedDict())
    try:
        yield
    finally:
        for m, attr, hooks in saved:
            setattr(m, attr, hooks)


def _spatial_fits(h, w, size):
    """Whether an (h, w) grid has the aspect of the input ``size``, up to one cell."""
    H, W = size
    return 1 <= h <= H and 1 <= w <= W and abs(h * W - w * H) < max(H, W)


def _channel_hints(module):
    """Feature sizes the module's parameters mention (norm weights, biases, ...)."""
    return {p.shape[0] for p in module.parameters() if p.ndim == 1}


def classify(shape, size, hints):
    """'NCHW', 'NHWC', 'NLC' or 'NC' for one output shape; None if the shape cannot tell."""
    if shape is None:
        return None
    if len(shape) == 3:
        return "NLC"
    if len(shape) == 2:
        return "NC"
    if len(shape) != 4:
        return None
    _, a, b, c = shape
    nchw, nhwc = _spatial_fits(b, c, size), _spatial_fits(a, b, size)
    if nchw != nhwc:
        return "NCHW" if nchw else "NHWC"
    if a != c:  # both or neither grid fits: the channel count the weights mention decides
        nchw, nhwc = a in hints, c in hints
        if nchw != nhwc:
            return "NCHW" if nchw else "NHWC"
    return None


def probe_formats(module, blocks, size, n_channels=3):
    """Layout of layer 0 (input of the first block) and of every block output.

    Returns a list of ``len(blocks) + 1`` entries, each 'NCHW', 'NHWC', 'NLC', 'NC' or
    None (the shapes cannot tell, e.g. a (1, 8, 8, 8) map from a square input that the
    network also refuses in a non-square size).
    """
    hints = [_channel_hints(blocks[0][1])] + [_channel_hints(m) for _, m in blocks]
    net_hints = {int(v) for v in (getattr(module, "num_features", None),
                                  getattr(module, "embed_dim", None)) if isinstance(v, int)}
    hints = [h | net_hints for h in hints]
    shapes = probe_shapes(module, blocks, size, n_channels)
    formats = [classify(s, size, h) for s, h in zip(shapes, hints)]
    if any(f is None and s is not None and len(s) == 4 for f, s in zip(formats, shapes)):
        # a square map whose sides equal its channels: a non-square input tells them apart
        wide = (size[0], size[1] + max(1, size[1] // 2))
        try:
            wide_shapes = probe_shapes(module, blocks, wide, n_channels)
        except Exception:  # fixed-size networks (most ViTs) refuse it
            wide_shapes = [None] * len(shapes)
        formats = [f if f is not None else classify(s, wide, h)
                   for f, s, h in zip(formats, wide_shapes, hints)]
    return formats, shapes
