"""The fine-tuning network: a beheaded encoder trunk, pooling and a head.

The trunk is a deep copy of the resolved encoder in which the blocks after the cut are
replaced by ``nn.Identity`` while copying (they are neither copied, kept nor computed);
a forward hook on the cut block ends the pass there. Layer numbering is that of
``LayerFeatureTransformer``: 0 is the input of the first block, ``i`` the output of
block ``i``.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

POOLINGS = ("mean", "max", "cls", "cls+mean")
HEADS = ("linear", "transformer")


class _Stop(Exception):
    """Raised by the hook of the cut block; carries its output."""

    def __init__(self, value):
        super().__init__()
        self.value = value


def _owner_map(module):
    """param id -> dotted name of the module that owns it directly."""
    out = {}
    for name, mod in module.named_modules():
        for p in mod.parameters(recurse=False):
            out.setdefault(id(p), name)
    return out


class _StopAfter:
    """Forward hook that ends the pass with the hooked module's output (picklable)."""

    def __call__(self, module, args, output):
        raise _Stop(output)


class _StopBefore:
    """Forward pre-hook that ends the pass with the hooked module's input (picklable)."""

    def __call__(self, module, args):
        raise _Stop(args[0])


class Trunk(nn.Module):
    """The encoder up to the output of block ``layer`` (``layer=0``: the embedding).

    Args:
        source: the frozen encoder (never modified; copied here).
        block_names: dotted names of its blocks in forward order.
        layer: the cut, 0..len(block_names).
        output_fmt: "NCHW" or "NHWC" for 4-D block outputs.
    """

    def __init__(self, source: nn.Module, block_names: list, layer: int,
                 output_fmt: str = "NCHW"):
        super().__init__()
        blocks = [source.get_submodule(n) for n in block_names]
        # deepcopy's memo maps the dropped blocks to placeholders: they are never copied
        memo = {id(b): nn.Identity() for b in blocks[layer:]}
        self.encoder = copy.deepcopy(source, memo)
        for p in self.encoder.parameters():
            p.requires_grad_(True)
        self.block_names = list(block_names)
        self.layer = int(layer)
        self.output_fmt = output_fmt
        self.frozen_modules = []  # dotted names kept in eval mode while training
        if layer == 0:
            self.encoder.get_submodule(block_names[0]).register_forward_pre_hook(
                _StopBefore())
        else:
            self.encoder.get_submodule(block_names[layer - 1]).register_forward_hook(
                _StopAfter())

    def forward(self, x):
        try:
            self.encoder(x)
        except _Stop as stop:
            out = stop.value
        else:
            raise RuntimeError(f"The encoder's forward pass did not reach layer {self.layer}.")
        return self._finish(out)

    def _finish(self, out):
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.ndim == 4 and self.output_fmt == "NHWC":
            out = out.permute(0, 3, 1, 2)
        return out

    def boundary(self, x, k):
        """The input of block ``k + 1`` (0 <= k < layer): the frozen boundary of
        ``freeze=k``. Blocks after ``k`` do not run."""
        handle = self.block(k + 1).register_forward_pre_hook(_StopBefore())
        try:
            self.encoder(x)
        except _Stop as stop:
            return stop.value
        finally:
            handle.remove()
        raise RuntimeError(f"The encoder's forward pass did not reach block {k + 1}.")

    def resume(self, x, k):
        """The trunk's output computed from ``boundary(., k)``: blocks ``k+1..layer`` run
        one after the other. Valid only for encoders whose blocks form a chain (nothing
        but the blocks runs between them); ``FineTuneClassifier`` checks that on a probe
        before it trains this way."""
        try:
            for i in range(k + 1, self.layer + 1):
                x = self.block(i)(x)
        except _Stop as stop:  # the hook of the cut block
            x = stop.value
        return self._finish(x)

    def block(self, i):
        """Block ``i`` (1-based) of the trunk's encoder."""
        return self.encoder.get_submodule(self.block_names[i - 1])

    # ------------------------------------------------------------ freezing
    def trace(self, x):
        """Order in which modules are first called in a pass; returns {name: step}."""
        order, handles = {}, []
        for name, mod in self.encoder.named_modules():
            def pre(module, args, name=name):
                order.setdefault(name, len(order))
            handles.append(mod.register_forward_pre_hook(pre))
        try:
            with torch.no_grad():
                was = self.training
                self.eval()
                try:
                    out = self(x)
                finally:
                    self.train(was)
        finally:
            for h in handles:
                h.remove()
        return order, out

    def freeze(self, k, order):
        """Freeze the embedding and blocks 1..k (``k=None``: nothing), given ``trace``.

        A parameter outside the blocks is part of the "embedding" when its module runs
        before block ``k + 1``; parameters of modules that never run (heads, final norms,
        later downsamplers) are frozen too, because no gradient reaches them.
        Returns the names of the frozen parameters.
        """
        n = self.layer
        starts = [order.get(self.block_names[i], math.inf) for i in range(n)]
        cut = math.inf if k is None or k >= n else starts[k]
        if k is None:
            cut = -1
        block_of = {}
        for i in range(1, n + 1):
            for name, _ in self.block(i).named_modules(prefix=self.block_names[i - 1]):
                block_of[name] = i
        owners = _owner_map(self.encoder)
        frozen = []
        for pname, p in self.encoder.named_parameters():
            owner = owners[id(p)]
            i = block_of.get(owner)
            if owner not in order:
                froze = True  # never runs
            elif i is not None:
                froze = k is not None and i <= k
            else:
                froze = order[owner] < cut
            if froze:
                p.requires_grad_(False)
                frozen.append(pname)
            else:
                p.requires_grad_(True)
        eval_mods = []
        for name, mod in self.encoder.named_modules():
            if name not in order:
                continue
            params = list(mod.parameters())
            all_frozen = all(not p.requires_grad for p in params)
            i = block_of.get(name)
            early = (i is not None and k is not None and i <= k) or (
                i is None and order[name] < cut and all_frozen)
            if early and all_frozen:
                eval_mods.append(name)
        # keep only outermost ones
        self.frozen_modules = [m for m in eval_mods if not any(
            m != o and (o == "" or m.startswith(o + ".")) for o in eval_mods)]
        return frozen

    def depths(self, order):
        """Depth of each parameter for layer-wise lr decay: 0 for the embedding, ``i``
        for block ``i``; other modules (e.g. a CNN's downsampler between stages) take
        the depth of the last block that started before them."""
        n = self.layer
        starts = sorted(order.get(self.block_names[i], math.inf) for i in range(n))
        block_of = {}
        for i in range(1, n + 1):
            for name, _ in self.block(i).named_modules(prefix=self.block_names[i - 1]):
                block_of[name] = i
        owners = _owner_map(self.encoder)
        out = {}
        for pname, p in self.encoder.named_parameters():
            owner = owners[id(p)]
            if owner in block_of:
                out[pname] = block_of[owner]
            else:
                t = order.get(owner, math.inf)
                out[pname] = sum(s < t for s in starts)
        return out

    def train(self, mode=True):
        super().train(mode)
        if mode:
            for name in self.frozen_modules:
                self.encoder.get_submodule(name).eval()
        return self


def pool(x, pooling, num_prefix_tokens):
    """Pool trunk output (B, N, C) tokens or (B, C, H, W) maps as LayerFeatureTransformer."""
    if x.ndim == 3:
        npt = num_prefix_tokens if num_prefix_tokens < x.shape[1] else 0
        patches = x[:, npt:]
        parts = {"mean": lambda: patches.mean(1), "max": lambda: patches.amax(1),
                 "cls": lambda: x[:, 0]}
    elif x.ndim == 4:
        parts = {"mean": lambda: x.mean((2, 3)), "max": lambda: x.amax((2, 3))}
    else:
        raise ValueError(f"Cannot pool a trunk output of shape {tuple(x.shape)}.")
    return torch.cat([parts[p]() for p in pooling.split("+")], dim=1)


def to_tokens(x, num_prefix_tokens):
    """Patch tokens (B, N, C): prefix tokens dropped, CNN maps flattened."""
    if x.ndim == 3:
        npt = num_prefix_tokens if num_prefix_tokens < x.shape[1] else 0
        return x[:, npt:]
    if x.ndim == 4:
        return x.flatten(2).transpose(1, 2)
    raise ValueError(f"Cannot make tokens of a trunk output of shape {tuple(x.shape)}.")


class TransformerHead(nn.Module):
    """DeiT-style classifier on patch tokens: projection to ``width``, own class token and
    position embedding, ``depth`` timm ``Block``s, norm; the class token classifies."""

    def __init__(self, in_dim, n_tokens, n_classes, *, width=192, depth=1, num_heads=3,
                 mlp_ratio=4.0, dropout=0.0):
        super().__init__()
        from timm.layers import trunc_normal_
        from timm.models.vision_transformer import Block

        if width % num_heads:
            raise ValueError(f"head_width={width} must be divisible by head_heads="
                             f"{num_heads}.")
        self.proj = nn.Linear(in_dim, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens + 1, width))
        self.blocks = nn.Sequential(*[Block(width, num_heads, mlp_ratio=mlp_ratio,
                                            qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(width, n_classes)
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    def forward(self, tokens):
        x = self.proj(tokens)
        if x.shape[1] + 1 != self.pos_embed.shape[1]:
            raise ValueError(
                f"The transformer head was built for {self.pos_embed.shape[1] - 1} tokens "
                f"but got {x.shape[1]}; images must have the img_size used in fit.")
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.fc(self.drop(x[:, 0]))

    def classifier(self):
        return self.fc


class TimmViTHead(TransformerHead):
    """A timm ViT's class token, position embedding, blocks and norm as the classifier.

    The encoder's tokens are projected to the ViT's width (its patch embedding is
    bypassed); its position embedding is resampled bicubically to the token grid; a new
    linear layer classifies its class token.
    """

    def __init__(self, vit, in_dim, grid, n_classes, *, dropout=0.0):
        nn.Module.__init__(self)
        from timm.layers import resample_abs_pos_embed

        width = vit.embed_dim
        self.proj = nn.Linear(in_dim, width)
        self.cls_token = nn.Parameter(vit.cls_token.detach().clone())
        npt = 0 if getattr(vit, "no_embed_class", False) else vit.num_prefix_tokens
        pos = resample_abs_pos_embed(vit.pos_embed.detach().clone(), new_size=list(grid),
                                     old_size=list(vit.patch_embed.grid_size),
                                     num_prefix_tokens=npt)
        cls_pos = pos[:, :1] if npt else torch.zeros(1, 1, width)
        self.pos_embed = nn.Parameter(torch.cat([cls_pos, pos[:, npt:]], dim=1))
        self.blocks = copy.deepcopy(vit.blocks)
        self.norm = copy.deepcopy(vit.norm)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(width, n_classes)
        for p in self.parameters():
            p.requires_grad_(True)


class LinearHead(nn.Module):
    """Dropout and a linear layer on pooled features."""

    def __init__(self, in_dim, n_classes, dropout=0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, n_classes)

    def forward(self, x):
        return self.fc(self.drop(x))

    def classifier(self):
        return self.fc


class FineTuneNet(nn.Module):
    """Normalise, trunk, pool (linear head) or tokens (transformer head), head.

    ``stored_input`` says what ``forward`` is given: ``None`` images; ``"features"`` the
    stored head input of a frozen trunk (pooled rows or token maps); an int ``k`` the
    stored input of block ``k + 1`` (the frozen boundary of ``freeze=k``), from which
    blocks ``k+1..layer`` and the head run.
    """

    def __init__(self, trunk, head, *, head_kind, pooling, num_prefix_tokens, mean, std):
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.head_kind = head_kind
        self.pooling = pooling
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.stored_input = None

    def cut(self, x):
        """The trunk's raw output at the cut for images ``x`` in [0, 1]."""
        return self.trunk((x - self.mean) / self.std)

    def boundary(self, x, k):
        """The input of block ``k + 1`` for images ``x`` in [0, 1]."""
        return self.trunk.boundary((x - self.mean) / self.std, k)

    def head_input(self, out):
        if self.head_kind == "linear":
            return pool(out, self.pooling, self.num_prefix_tokens)
        return to_tokens(out, self.num_prefix_tokens)

    def features(self, x):
        return self.head_input(self.cut(x))

    def forward(self, x):
        mode = getattr(self, "stored_input", None)
        if mode is None:
            return self.head(self.features(x))
        if mode == "features":
            return self.head(x.float())
        return self.head(self.head_input(self.trunk.resume(x.float(), mode)))
