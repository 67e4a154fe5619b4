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
    """Momentum rising from ``start`` to 1 along a half cosine over training.

    ``1 - (1 - start) * (cos(pi * progress) + 1) / 2``: MoCo v3's ``adjust_moco_momentum``
    and DINO's ``cosine_scheduler(start, 1, ...)`` at ``progress = it / total``.
    """
    return cosine_between(start, 1.0, progress)


def cosine_between(start, end, progress):
    """``end + (start - end) * (1 + cos(pi * progress)) / 2``: ``start`` at 0, ``end`` at 1.

    DINO's ``cosine_scheduler`` (teacher momentum 0.996 -> 1, weight decay 0.04 -> 0.4).
    """
    progress = min(1.0, max(0.0, float(progress)))
    return end + (start - end) * (1.0 + math.cos(math.pi * progress)) / 2.0


def mocov3_contrastive(q, k, temperature):
    """MoCo v3's ``ctr(q, k)``: InfoNCE of each query against the batch's keys.

    ``CE(normalize(q) @ normalize(k).T / tau, arange(N)) * 2 * tau``: row ``i``'s positive
    is key ``i`` (the other view of image ``i``), its negatives the other ``N - 1`` keys
    (no query-query pairs, no queue); the ``2 * tau`` factor is the paper's (it makes the
    gradient's scale independent of ``tau``).
    """
    q = nn.functional.normalize(q.float(), dim=1)
    k = nn.functional.normalize(k.float(), dim=1)
    logits = q @ k.T / temperature
    labels = torch.arange(logits.shape[0], device=logits.device)
    return nn.functional.cross_entropy(logits, labels) * (2.0 * temperature)


def dino_teacher_temp(epoch, start, end, warmup_epochs):
    """DINO's teacher temperature in ``epoch`` (0-based): a linear warm-up from ``start`` to
    ``end`` over ``warmup_epochs`` epochs (``np.linspace``, both ends included), then
    ``end``."""
    warmup_epochs = int(warmup_epochs)
    if epoch >= warmup_epochs:
        return float(end)
    if warmup_epochs == 1:
        return float(start)
    return float(start) + (float(end) - float(start)) * epoch / (warmup_epochs - 1)


def clip_each_gradient(module, max_norm):
    """DINO's ``clip_gradients``: every parameter's gradient clipped to norm ``max_norm``
    on its own (not the global norm)."""
    for p in module.parameters():
        if p.grad is not None:
            norm = p.grad.detach().norm(2)
            p.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))


def _frozen_copy(module):
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


class SSLMethod(nn.Module):
    """Base: ``forward(views, progress)`` returns the loss of a batch of views.

    ``views`` is (B, V, 3, H, W), normalised; ``progress`` in [0, 1] is the fraction of
    optimizer steps done. ``start_epoch(epoch)`` runs before each epoch,
    ``before_step(epoch)`` between the (unscaled) backward pass and the optimizer step,
    and ``after_step(it, total)`` after optimizer step ``it`` (0-based) of ``total`` was
    taken (never after a step the gradient scaler skipped).
    """

    n_views = 2

    def start_epoch(self, epoch):
        pass

    def before_step(self, epoch):
        pass

    def after_step(self, it, total):
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

    The paper's symmetric loss ``ctr(q1, k2) + ctr(q2, k1)`` (:func:`mocov3_contrastive`:
    each query against the other view's keys of the whole batch, ``2 * temperature``
    scale); the keys come from the key branch (encoder and projector), an exponential
    moving average whose momentum rises from ``momentum`` to 1 along a half cosine.
    The projector and predictor are lightly's ``MoCoProjectionHead``.
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
        self.temperature = float(temperature)
        self.momentum = momentum

    def teacher_modules(self):
        return [self.momentum_encoder, self.momentum_projector]

    def forward(self, views, progress):
        q1 = self.predictor(self.projector(self.encoder(views[:, 0])))
        q2 = self.predictor(self.projector(self.encoder(views[:, 1])))
        with torch.no_grad():
            k1 = self.momentum_projector(self.momentum_encoder(views[:, 0]))
            k2 = self.momentum_projector(self.momentum_encoder(views[:, 1]))
        tau = self.temperature
        return mocov3_contrastive(q1, k2, tau) + mocov3_contrastive(q2, k1, tau)

    def momentum_at(self, it, total):
        """The momentum after optimizer step ``it``: MoCo v3 updates the key encoder at
        the start of the next iteration, with ``m`` at epoch ``(it + 1) / total``."""
        return cosine_momentum(self.momentum, (it + 1) / max(1, total))

    @torch.no_grad()
    def after_step(self, it, total):
        _, _, utils = require_lightly()
        m = self.momentum_at(it, total)
        utils.update_momentum(self.encoder, self.momentum_encoder, m)
        utils.update_momentum(self.projector, self.momentum_projector, m)


class DINO(SSLMethod):
    """DINO: a student matches a momentum teacher's centred, sharpened outputs.

    Two global views and, with multi-crop, ``(global, local)`` view stacks: the
    teacher sees the global views only, the student every view, and lightly's DINOLoss
    averages the cross-entropy of every (teacher view, other student view) pair
    (student temperature 0.1, centre momentum 0.9; the teacher temperature from
    :func:`dino_teacher_temp`). lightly's DINOProjectionHead (weight-normalised last
    layer of norm 1). As DINO's ``main_dino.py``: the teacher's momentum follows
    DINO's cosine schedule from ``momentum`` (0.996) to 1 (``m`` at ``it / total``
    after step ``it``), the last layer gets no update during the first
    ``freeze_last_layer`` epochs, and every parameter's gradient is clipped to norm
    ``clip_grad``.
    """

    def __init__(self, encoder, dim, *, hidden, bottleneck, out, momentum,
                 teacher_temp=(0.04, 0.04, 0), freeze_last_layer=1, clip_grad=3.0):
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
        self.teacher_temp = tuple(float(t) for t in teacher_temp[:2]) + (
            int(teacher_temp[2]),)
        self.criterion = loss.DINOLoss(output_dim=out, warmup_teacher_temp=0.04,
                                       teacher_temp=0.04, student_temp=0.1,
                                       center_momentum=0.9)
        self.momentum = momentum
        self.freeze_last_layer = int(freeze_last_layer)
        self.clip_grad = clip_grad
        self.epoch = 0

    def teacher_modules(self):
        return [self.teacher_encoder, self.teacher_head]

    def start_epoch(self, epoch):
        self.epoch = int(epoch)

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
        temp = dino_teacher_temp(self.epoch, *self.teacher_temp)
        return self.criterion([t.float() for t in teacher], [s.float() for s in student],
                              teacher_temp=temp)

    def before_step(self, epoch):
        if self.clip_grad:
            clip_each_gradient(self, self.clip_grad)
        if epoch < self.freeze_last_layer:
            for p in self.head.last_layer.parameters():
                p.grad = None

    def momentum_at(self, it, total):
        """DINO's ``momentum_schedule[it]``, used after optimizer step ``it``."""
        return cosine_momentum(self.momentum, it / max(1, total))

    @torch.no_grad()
    def after_step(self, it, total):
        _, _, utils = require_lightly()
        m = self.momentum_at(it, total)
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
