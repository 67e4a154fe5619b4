"""The self-supervised objectives as plain nn.Modules around a timm encoder.

Losses, projection/prediction heads and MAE's masking helpers come from lightly (MIT);
what is here is the wiring: which views go through which branch, the momentum
branches and their schedules. Every module holds the trained encoder as ``encoder``.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import nn

from ._lightly import require_lightly


def cosine_momentum(start, progress):
    """Momentum rising from ``start`` to 1 along a half cosine over training."""
    return 1.0 - (1.0 - start) * (math.cos(math.pi * min(1.0, progress)) + 1.0) / 2.0


def _frozen_copy(module):
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


class SSLMethod(nn.Module):
    """Base: ``forward(views, progress)`` returns the loss of a batch of views.

    ``views`` is (B, V, 3, H, W), normalised; ``progress`` in [0, 1] is the fraction of
    optimizer steps done. ``after_step`` runs after each optimizer step.
    """

    n_views = 2

    def after_step(self, progress):
        pass

    def teacher_modules(self):
        """Modules updated by momentum, never by gradients."""
        return []


class BarlowTwins(SSLMethod):
    """Barlow Twins: the cross-correlation of two views' projections driven to identity."""

    def __init__(self, encoder, dim, *, width, lambda_param):
        super().__init__()
        loss, modules, _ = require_lightly()
        self.encoder = encoder
        self.projector = modules.BarlowTwinsProjectionHead(dim, width, width)
        self.criterion = loss.BarlowTwinsLoss(lambda_param=lambda_param)

    def forward(self, views, progress):
        z0 = self.projector(self.encoder(views[:, 0]))
        z1 = self.projector(self.encoder(views[:, 1]))
        return self.criterion(z0, z1)


class MoCoV3(SSLMethod):
    """MoCo v3: a predictor on the online branch, a momentum key encoder, InfoNCE.

    The symmetric loss ``ntxent(q0, k1) + ntxent(q1, k0)`` uses lightly's NTXentLoss
    (in-batch negatives, ``temperature``); the key branch (encoder and projector) is an
    exponential moving average whose momentum rises from ``momentum`` to 1 along a
    half cosine.
    """

    def __init__(self, encoder, dim, *, hidden, out, temperature, momentum):
        super().__init__()
        loss, modules, _ = require_lightly()
        self.encoder = encoder
        self.projector = modules.MoCoProjectionHead(dim, hidden, out, num_layers=3,
                                                    batch_norm=True)
        self.predictor = modules.MoCoProjectionHead(out, hidden, out, num_layers=2,
                                                    batch_norm=True)
        self.momentum_encoder = _frozen_copy(encoder)
        self.momentum_projector = _frozen_copy(self.projector)
        self.criterion = loss.NTXentLoss(temperature=temperature)
        self.momentum = momentum

    def teacher_modules(self):
        return [self.momentum_encoder, self.momentum_projector]

    def forward(self, views, progress):
        q0 = self.predictor(self.projector(self.encoder(views[:, 0])))
        q1 = self.predictor(self.projector(self.encoder(views[:, 1])))
        with torch.no_grad():
            k0 = self.momentum_projector(self.momentum_encoder(views[:, 0]))
            k1 = self.momentum_projector(self.momentum_encoder(views[:, 1]))
        return self.criterion(q0, k1) + self.criterion(q1, k0)

    @torch.no_grad()
    def after_step(self, progress):
        _, _, utils = require_lightly()
        m = cosine_momentum(self.momentum, progress)
        utils.update_momentum(self.encoder, self.momentum_encoder, m)
        utils.update_momentum(self.projector, self.momentum_projector, m)


class DINO(SSLMethod):
    """DINO: a student matches a momentum teacher's centred, sharpened outputs.

    Two global views and, with multi-crop, ``(global, local)`` view stacks: the
    teacher sees the global views only, the student every view, and lightly's DINOLoss
    sums the cross-entropy of every (teacher view, other student view) pair (teacher
    temperature 0.04, student 0.1, centre momentum 0.9). lightly's
    DINOProjectionHead; the teacher's momentum rises from ``momentum`` (0.996) to 1
    along a half cosine.
    """

    def __init__(self, encoder, dim, *, hidden, bottleneck, out, momentum):
        super().__init__()
        loss, modules, _ = require_lightly()
        self.encoder = encoder
        with warnings.catch_warnings():  # lightly's head uses the old weight_norm API
            warnings.simplefilter("ignore", FutureWarning)
            self.head = modules.DINOProjectionHead(dim, hidden, bottleneck, out)
            # (weight-normed modules cannot be deep-copied: build the twin, copy weights)
            self.teacher_head = modules.DINOProjectionHead(dim, hidden, bottleneck, out)
        self.teacher_head.load_state_dict(self.head.state_dict())
        for p in self.teacher_head.parameters():
            p.requires_grad_(False)
        self.teacher_encoder = _frozen_copy(encoder)
        self.criterion = loss.DINOLoss(output_dim=out, warmup_teacher_temp=0.04,
                                       teacher_temp=0.04)
        self.momentum = momentum

    def teacher_modules(self):
        return [self.teacher_encoder, self.teacher_head]

    def forward(self, views, progress):
        local = None
        if isinstance(views, (tuple, list)):
            views, local = views
        with torch.no_grad():
            teacher = [self.teacher_head(self.teacher_encoder(views[:, i]))
                       for i in range(views.shape[1])]
        student = [self.head(self.encoder(views[:, i])) for i in range(views.shape[1])]
        if local is not None:
            # all local crops in one pass: (B, L, 3, h, w) -> B * L images -> L views
            b, n_local = local.shape[:2]
            out = self.head(self.encoder(local.flatten(0, 1)))
            student += list(out.view(b, n_local, -1).unbind(1))
        return self.criterion(teacher, student)

    @torch.no_grad()
    def after_step(self, progress):
        _, _, utils = require_lightly()
        m = cosine_momentum(self.momentum, progress)
        utils.update_momentum(self.encoder, self.teacher_encoder, m)
        utils.update_momentum(self.head, self.teacher_head, m)


def is_timm_vit(module):
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(module, VisionTransformer)


class MAE(SSLMethod):
    """Masked autoencoder: reconstruct the normalised pixels of masked patches.

    A random ``mask_ratio`` of the patch tokens (never the class/register tokens) is
    dropped before the encoder (lightly's MaskedVisionTransformerTIMM around the timm
    ViT itself, weights untouched); a light decoder (lightly's
    MaskedVisionTransformerDecoderTIMM, ``decoder_depth`` blocks) predicts the pixels
    of the masked patches, each normalised by its own mean and variance (MAE's
    ``norm_pix_loss``); the loss is their mean squared error.
    """

    n_views = 1

    def __init__(self, encoder, *, mask_ratio, decoder_dim, decoder_depth):
        super().__init__()
        _, modules, _ = require_lightly()
        self.encoder = encoder
        self.backbone = modules.MaskedVisionTransformerTIMM(
            vit=encoder, weight_initialization="skip", pos_embed_initialization="skip")
        pe = encoder.patch_embed
        self.patch_size = int(pe.patch_size[0])
        self.num_patches = int(pe.num_patches)
        self.num_prefix_tokens = int(encoder.num_prefix_tokens)
        self.mask_ratio = float(mask_ratio)
        heads = max(1, decoder_dim // 32)
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.decoder = modules.MaskedVisionTransformerDecoderTIMM(
            num_patches=self.num_patches, embed_dim=decoder_dim, depth=decoder_depth,
            num_heads=heads, num_prefix_tokens=self.num_prefix_tokens)
        self.prediction = nn.Linear(decoder_dim, self.patch_size ** 2 * 3)

    def random_mask(self, batch_size, device):
        """(idx_keep, idx_mask) into the token sequence (prefix tokens always kept)."""
        n, npt = self.num_patches, self.num_prefix_tokens
        n_keep = max(1, int(n * (1.0 - self.mask_ratio)))
        order = torch.argsort(torch.rand(batch_size, n, device=device), dim=1) + npt
        prefix = torch.arange(npt, device=device).expand(batch_size, npt)
        return torch.cat([prefix, order[:, :n_keep]], dim=1), order[:, n_keep:]

    def forward(self, views, progress):
        _, _, utils = require_lightly()
        images = views[:, 0]
        b = images.shape[0]
        idx_keep, idx_mask = self.random_mask(b, images.device)
        x = self.decoder_embed(self.backbone.encode(images, idx_keep=idx_keep))
        tokens = utils.repeat_token(self.decoder.mask_token,
                                    (b, self.num_patches + self.num_prefix_tokens))
        tokens = utils.set_at_index(tokens, idx_keep, x.type_as(tokens))
        decoded = self.decoder.decode(self.decoder.add_pos_embed(tokens))
        pred = self.prediction(utils.get_at_index(decoded, idx_mask))
        target = utils.get_at_index(utils.patchify(images, self.patch_size),
                                    idx_mask - self.num_prefix_tokens)
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
        return nn.functional.mse_loss(pred.float(), target.float())
