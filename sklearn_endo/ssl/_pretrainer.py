"""SelfSupervisedPretrainer: Barlow Twins, MoCo v3, MAE or DINO on unlabelled images."""

from __future__ import annotations

import math
import os
import time
import warnings

import torch
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted

from .._device import autocast_context, autocast_dtype, needs_grad_scaler
from .._images import check_images, load_resized, make_loader
from .._iterators import served_from_memory
from .._skorch import forked_rng
from ._augment import MultiCrop, make_local_views, make_views
from ._build import METHODS, PretrainerBuildMixin
from ._checkpoint import resume_scaler, save_safetensors, step_was_skipped

__all__ = ["METHODS", "SelfSupervisedPretrainer"]

_CHECKPOINT = "last.pt"


class _ViewDataset(torch.utils.data.Dataset):
    """Image ``i`` decoded, resized to the input size and turned into views on access."""

    def __init__(self, images, size, interpolation, views):
        self.images = images
        self.size = tuple(size)
        self.interpolation = interpolation
        self.views = views

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = load_resized(self.images, i, self.size, interpolation=self.interpolation)
        return self.views(x)


class SelfSupervisedPretrainer(PretrainerBuildMixin, TransformerMixin, BaseEstimator):
    """Pretrain, or continue pretraining, a timm encoder on unlabelled images.

    ``fit(X)`` trains the encoder with a self-supervised objective; ``encoder_`` is then
    the plain timm module (``num_classes=0``), ``transform(X)`` its pooled embeddings
    and ``save_encoder(path)`` writes its weights as a safetensors timm state dict that
    ``LayerFeatureTransformer(name, checkpoint_path=path)`` and
    ``FineTuneClassifier(name, checkpoint_path=path)`` load.

    Losses, projection heads and MAE's masked ViT come from lightly (MIT; the optional
    extra ``pip install 'sklearn-endo[ssl]'``).

    Parameters
    ----------
    encoder : str, torch.nn.Module or callable
        A timm model name, a module or a zero-argument callable returning one, resolved
        as in :class:`~sklearn_endo.LayerFeatureTransformer`. The resolved encoder is
        never modified: training runs on a copy. ``clone()`` copies no weights.
    method : {"barlowtwins", "mocov3", "mae", "dino"}, default="barlowtwins"
        ``"barlowtwins"``: two views, a 3-layer projector of width ``projection_dim``
        (default ``min(8192, 4 * embedding dim)``), cross-correlation loss with
        ``lambda_param``. ``"mocov3"``: two views, 3-layer projector and 2-layer
        predictor with batch norm (hidden ``min(4096, 4 * dim)``, output
        ``projection_dim``, default 256), momentum key encoder (cosine schedule from
        ``momentum``, default 0.99), the paper's symmetric InfoNCE
        ``ctr(q1, k2) + ctr(q2, k1)`` at ``temperature`` (scaled by
        ``2 * temperature``). ``"mae"``: timm ViTs only; ``mask_ratio`` of the patches
        masked, a light decoder
        (``decoder_depth`` blocks of width ``decoder_dim``). ``"dino"``: a student and a
        momentum teacher (default momentum 0.996) on two global views (and
        ``n_local_crops`` local ones for the student), with lightly's centred,
        sharpened DINO loss (``teacher_temp``); ``projection_dim`` prototypes (default
        ``min(65536, 16 * dim)``); as DINO's recipe, the last layer is frozen during the
        first epoch, each gradient clipped to norm 3 and the weight decay rises along a
        cosine (``weight_decay_end``).
    pretrained : bool, default=False
        Start from the pretrained weights of a named encoder (continued pretraining);
        offline with nothing cached this raises ``WeightsUnavailableError``, never
        falls back to random weights. ``False``: timm's random initialisation (the
        same weights for the same name in every process, as in
        ``LayerFeatureTransformer``).
    checkpoint_path : str or None, default=None
        Local weights to start from, for a named encoder.
    img_size : int, (int, int) or None, default=None
        Training and embedding input size; default the encoder's configuration.
    augment : None, "endoscopy", "mae" or callable, default=None
        How one image becomes a view. ``None``: ``"mae"`` for MAE, ``"endoscopy"``
        otherwise. ``"endoscopy"``: random resized crop (scale 0.2 to 1), horizontal and
        vertical flips, 90-degree rotations, colour jitter (80 %) and Gaussian blur
        (50 %). ``"mae"``: the crops, flips and rotations only. A callable maps one
        (3, H, W) float tensor in [0, 1] (already resized to the input size) to another
        of the same shape; it is drawn independently for each view.
    n_local_crops : int, default=0
        DINO's multi-crop: this many extra small views per image, each a random crop of
        5 to 40 % of its area resized to ``local_crop_size``, then augmented as the
        global views are (the preset, or the ``augment`` callable). Only the student
        sees them; the loss pairs each with both teacher (global) views. ``method="dino"``
        only. The encoder must accept that input size: CNNs do; a timm ViT must be
        created with ``dynamic_img_size=True``.
    local_crop_size : int, (int, int) or None, default=None
        Size of the local crops; default 3/7 of the input size (96 for 224, as in DINO)
        rounded to a multiple of 8.
    projection_dim : int or None, default=None
        Output width of the projector (see ``method``).
    lambda_param : float, default=0.0051
        Barlow Twins' redundancy-reduction weight.
    temperature : float, default=0.2
        MoCo v3's InfoNCE temperature.
    teacher_temp : float or (float, float, int), default=0.04
        DINO's teacher temperature, or ``(start, end, epochs)``: a linear warm-up from
        ``start`` to ``end`` over ``epochs`` epochs (DINO's ``--warmup_teacher_temp``,
        ``--teacher_temp``, ``--warmup_teacher_temp_epochs``; its authors use
        ``(0.04, 0.07, 30)`` for long runs).
    momentum : float or None, default=None
        Start of the cosine momentum schedule of MoCo v3 (default 0.99) and DINO
        (default 0.996).
    mask_ratio : float, default=0.75
        Fraction of patches MAE masks.
    decoder_dim, decoder_depth : int, default=128, 2
        Width and number of blocks of MAE's decoder.
    lr : float, default=1e-3
        Peak learning rate of AdamW (after warm-up).
    weight_decay : float or None, default=None
        AdamW weight decay, on weights of two or more dimensions (not biases or norms).
        None: 0.04 for DINO (as DINO), 0.05 otherwise.
    weight_decay_end : float or None, default=None
        The weight decay at the end of a cosine schedule from ``weight_decay``, set every
        optimizer step. None: ``10 * weight_decay`` for DINO (0.04 -> 0.4, as DINO), a
        constant ``weight_decay`` for the other methods.
    warmup_epochs : float, default=1
        Linear warm-up length in epochs; then a cosine decay to ``lr / 100``, stepped
        every optimizer step.
    max_epochs : int, default=10
    batch_size : int, default=32
        Images per forward pass; the last incomplete batch of an epoch is dropped (batch
        norm in the heads). ``X`` must hold at least ``batch_size`` images.
    accumulate : int, default=1
        Gradient accumulation: one optimizer step every ``accumulate`` batches, for an
        effective batch of ``batch_size * accumulate`` (batch norm and the contrastive
        losses still see ``batch_size``).
    amp : bool, default=True
        Mixed precision on CUDA (bfloat16 where supported, else float16 with a gradient
        scaler). Ignored on other devices. An optimizer step that the scaler skips
        (inf or NaN gradients) moves neither the momentum teacher nor the lr schedule.
    checkpoint_dir : str or None, default=None
        After every epoch, the training state (weights, heads, optimizer, scaler, history,
        seed, optimizer steps, device and autocast dtype) is written atomically to
        ``checkpoint_dir/last.pt``. A later ``fit`` on the same images (content hash)
        with the same settings (every parameter that changes training, ``augment``
        included; a callable by its qualified name) resumes after the last finished
        epoch, and ends with the same weights as an uninterrupted run; other images or
        settings raise ``ValueError``. A run may resume on another device or precision
        (with a warning: not bit-identical). A ``checkpoint_dir`` that is a file or
        cannot be written is refused before training.
    num_workers : int or "auto", default="auto"
        DataLoader workers: ``"auto"`` uses ``min(4, cpu count)`` for paths, 0 for
        arrays and PIL images.
    device : str, default="auto"
        ``"auto"`` picks cuda, then mps, then cpu.
    random_state : int, RandomState or None, default=None
        Seeds head initialisation, shuffling, augmentation and masking: with an int,
        two fits give identical weights (on CPU).
    verbose : bool, default=True
        A progress bar per epoch with the running loss.

    Attributes
    ----------
    encoder_ : torch.nn.Module
        The trained encoder, a plain timm module (eval mode, no gradients).
    module_ : torch.nn.Module
        The whole training network (encoder, heads, momentum branches).
    history_ : skorch.history.History
        One row per epoch: ``epoch``, ``train_loss`` (mean over the epoch's batches),
        ``lr`` (at the epoch's end), ``n_steps`` (optimizer steps so far), ``dur``
        (seconds), ``images_per_s``.
    embedding_dim_ : int
        Width of ``transform``'s output.
    input_size_ : tuple of int
        (h, w) the images are resized to.
    local_crop_size_ : tuple of int or None
        (h, w) of DINO's local crops; None without them.
    data_config_ : dict
        The preprocessing (mean, std, interpolation) also used by ``transform``.
    n_epochs_ : int
        Epochs trained so far, resumed ones included.
    seed_ : int
        The seed the run used (drawn when ``random_state`` is None).
    device_ : torch.device

    Notes
    -----
    How the result feeds the rest of the package:

    - ``LayerFeatureTransformer(name, checkpoint_path=path, img_size=...)`` after
      ``save_encoder(path)``; with ``layer=-1`` and the encoder's own pooling it gives
      the features of ``transform`` (tested for a ResNet);
    - ``LayerFeatureTransformer(encoder=pre.encoder_)`` and the probes, CKA before and
      after pretraining, without a file;
    - ``UBCClassifier(name, checkpoint_path=path)`` for smp's ResNets and ``"tu-"``
      encoders of the same timm name (see docs/ssl.md).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_endo.ssl import SelfSupervisedPretrainer
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    >>> pre = SelfSupervisedPretrainer("resnet18", img_size=32, max_epochs=1,
    ...                                batch_size=4, random_state=0, verbose=False)
    >>> pre.fit(X).transform(X).shape
    (8, 512)
    >>> len(pre.history_)
    1
    """

    def __init__(self, encoder, *, method="barlowtwins", pretrained=False,
                 checkpoint_path=None, img_size=None, augment=None, n_local_crops=0,
                 local_crop_size=None, projection_dim=None,
                 lambda_param=0.0051, temperature=0.2, teacher_temp=0.04, momentum=None,
                 mask_ratio=0.75, decoder_dim=128, decoder_depth=2, lr=1e-3,
                 weight_decay=None, weight_decay_end=None, warmup_epochs=1, max_epochs=10,
                 batch_size=32, accumulate=1, amp=True,
                 checkpoint_dir=None, num_workers="auto", device="auto",
                 random_state=None, verbose=True):
        self.encoder = encoder
        self.method = method
        self.pretrained = pretrained
        self.checkpoint_path = checkpoint_path
        self.img_size = img_size
        self.augment = augment
        self.n_local_crops = n_local_crops
        self.local_crop_size = local_crop_size
        self.projection_dim = projection_dim
        self.lambda_param = lambda_param
        self.temperature = temperature
        self.teacher_temp = teacher_temp
        self.momentum = momentum
        self.mask_ratio = mask_ratio
        self.decoder_dim = decoder_dim
        self.decoder_depth = decoder_depth
        self.lr = lr
        self.weight_decay = weight_decay
        self.weight_decay_end = weight_decay_end
        self.warmup_epochs = warmup_epochs
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.accumulate = accumulate
        self.amp = amp
        self.checkpoint_dir = checkpoint_dir
        self.num_workers = num_workers
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------ sklearn protocol
    def __sklearn_clone__(self):
        # the encoder spec (a module may hold hundreds of MB) is shared, never copied
        params = self.get_params(deep=False)
        shared = params.pop("encoder")
        return type(self)(shared, **{k: clone(v, safe=False) for k, v in params.items()})

    def __getstate__(self):
        # a pickle is the encoder: the training network (heads, momentum teacher) is
        # left out; fit starts afresh or resumes from checkpoint_dir
        state = super().__getstate__()
        state.pop("module_", None)
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        return tags

    # ------------------------------------------------------------ fitting
    def fit(self, X, y=None):
        """Pretrain on unlabelled images ``X`` (``y`` is ignored).

        Parameters
        ----------
        X : array-like of images
            ``(N, H, W[, C])`` uint8 in [0, 255] or floats in [0, 1], a list of image
            paths (decoded batch by batch, in DataLoader workers) or a list of PIL
            images. At least ``batch_size`` images.
        y : None
            Ignored.

        Returns
        -------
        self
        """
        device = self._check_params()
        images = check_images(X, name="X", min_samples=2)
        n = len(images)
        if n < self.batch_size:
            raise ValueError(
                f"X has {n} images, fewer than batch_size={self.batch_size}: every batch "
                f"must be full (batch norm and in-batch contrast). Pass batch_size<={n} "
                f"or more images.")
        config = self._config(images) if self.checkpoint_dir is not None else None
        ckpt = self._read_checkpoint(config)
        seed = ckpt["seed"] if ckpt is not None else self._seed()
        encoder, handle, size, dim = self._encoder_copy()
        with forked_rng(seed):
            module = self._build(encoder, dim, handle.name).to(device)
        optimizer = self._optimizer(module)
        amp_dtype = autocast_dtype(device, self.amp)
        scaler = torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(amp_dtype))
        from skorch.history import History

        history = History()
        start = step = 0
        runtime = {"device": device.type, "amp": bool(self.amp),
                   "autocast_dtype": str(amp_dtype).replace("torch.", "")}
        if ckpt is not None:
            module.load_state_dict(ckpt["module"])
            optimizer.load_state_dict(ckpt["optimizer"])
            resume_scaler(scaler, ckpt.get("scaler", {}), ckpt.get("runtime"), runtime,
                          self.checkpoint_dir)
            for row in ckpt["history"]:
                history.append(row)
            start = int(ckpt["epoch"])
            step = int(ckpt.get("step", history[-1, "n_steps"] if len(history) else 0))
        self.seed_ = seed
        self.input_size_ = size
        self.data_config_ = dict(handle.data_config, input_size=size)
        self.embedding_dim_ = dim
        self.device_ = device
        self.module_ = module
        self.history_ = history
        views = make_views(self.augment, size, module.n_views, mae=self.method == "mae")
        local = self._local_size(size)
        if local is not None:
            views = MultiCrop(views, make_local_views(self.augment, local,
                                                      self.n_local_crops))
        self.local_crop_size_ = local
        data = _ViewDataset(images, size, handle.data_config["interpolation"], views)
        mean = torch.tensor(handle.data_config["mean"], device=device).view(1, 1, 3, 1, 1)
        std = torch.tensor(handle.data_config["std"], device=device).view(1, 1, 3, 1, 1)
        per_epoch = n // self.batch_size
        steps_per_epoch = math.ceil(per_epoch / self.accumulate)
        total = steps_per_epoch * self.max_epochs
        warmup = int(round(float(self.warmup_epochs) * steps_per_epoch))
        state = {"module": module, "optimizer": optimizer, "scaler": scaler,
                 "mean": mean, "std": std, "amp_dtype": amp_dtype, "total": total,
                 "warmup": warmup, "steps_per_epoch": steps_per_epoch, "step": step,
                 "runtime": runtime, "config": config}
        workers = self.num_workers
        if workers == "auto":
            workers = min(4, os.cpu_count() or 1) if images.kind == "paths" else 0
        # decoded images that all fit the decode cache's memory: workers decode epoch 0
        # (writing the cache's files), the main process serves the next epochs from memory
        cached = served_from_memory(data, True)
        epoch = start
        try:
            for epoch in range(start, self.max_epochs):
                t0 = time.perf_counter()
                with forked_rng(seed + 7919 * (epoch + 1)):
                    loader = torch.utils.data.DataLoader(
                        data, batch_size=self.batch_size, shuffle=True, drop_last=True,
                        num_workers=workers if epoch == 0 or not cached else 0,
                        pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(seed + epoch))
                    loss, n_steps = self._train_epoch(loader, epoch, state)
                dur = time.perf_counter() - t0
                history.new_epoch()
                history.record("epoch", epoch + 1)
                history.record("train_loss", loss)
                history.record("lr", optimizer.param_groups[0]["lr"])
                history.record("n_steps", n_steps)
                history.record("dur", dur)
                history.record("images_per_s", per_epoch * self.batch_size / dur)
                self.n_epochs_ = epoch + 1
                if self.checkpoint_dir is not None:
                    self._write_checkpoint(epoch + 1, seed, state, history)
        except KeyboardInterrupt:
            warnings.warn(
                f"Pretraining interrupted during epoch {epoch + 1} of {self.max_epochs}; "
                f"the encoder keeps the weights of that moment"
                + (f", and fit resumes from {self.checkpoint_dir!r} after the last "
                   f"finished epoch." if self.checkpoint_dir is not None else "."))
        self.n_epochs_ = len(history)
        self.encoder_ = module.encoder
        self._freeze_encoder()
        return self

    def _train_epoch(self, loader, epoch, state):
        from tqdm.auto import tqdm

        module, optimizer, scaler = state["module"], state["optimizer"], state["scaler"]
        device = self.device_
        amp_dtype = state["amp_dtype"]
        module.train()
        for m in module.teacher_modules():
            m.train()  # teachers' batch-norm statistics follow their inputs as well
        n_batches = len(loader)
        module.start_epoch(epoch)
        total_loss = torch.zeros((), device=device)
        bar = tqdm(total=n_batches, desc=f"{self.method} epoch {epoch + 1}/{self.max_epochs}",
                   disable=not self.verbose, leave=True)
        optimizer.zero_grad(set_to_none=True)
        for i, views in enumerate(loader):
            if isinstance(views, (tuple, list)):  # DINO's (global, local) crops
                views = tuple((v.to(device, non_blocking=True) - state["mean"])
                              / state["std"] for v in views)
            else:
                views = views.to(device, non_blocking=True)
                views = (views - state["mean"]) / state["std"]
            progress = state["step"] / max(1, state["total"])
            with autocast_context(device, amp_dtype):
                loss = module(views, progress)
            scaler.scale(loss / self.accumulate).backward()
            total_loss += loss.detach().float()
            if (i + 1) % self.accumulate == 0 or i + 1 == n_batches:
                self._optimizer_step(state, epoch)
            if self.verbose and (i % 10 == 0 or i + 1 == n_batches):
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            bar.update(1)
        bar.close()
        mean_loss = float(total_loss) / max(1, n_batches)
        if not math.isfinite(mean_loss):
            raise FloatingPointError(
                f"The {self.method} loss became {mean_loss} in epoch {epoch + 1}; lower lr "
                f"(now {self.lr}) or raise warmup_epochs.")
        return mean_loss, state["step"]

    def _optimizer_step(self, state, epoch):
        """One optimizer step at the schedules' current step; True if it was taken.

        A step the gradient scaler skips (inf/NaN gradients) leaves the step count, hence
        the lr and weight-decay schedules and the momentum teacher, where they were.
        """
        module, optimizer, scaler = state["module"], state["optimizer"], state["scaler"]
        step, total = state["step"], state["total"]
        lr = self._lr_at(step, total, state["warmup"])
        for g in optimizer.param_groups:
            g["lr"] = lr
        optimizer.param_groups[0]["weight_decay"] = self._weight_decay_at(step, total)
        scaler.unscale_(optimizer)  # clipping (DINO) sees the true gradients
        module.before_step(epoch)
        scale_before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if step_was_skipped(scaler, scale_before):
            return False
        module.after_step(step, total)
        state["step"] = step + 1
        return True

    def _freeze_encoder(self):
        self.encoder_.eval()
        for p in self.encoder_.parameters():
            p.requires_grad_(False)

    # ------------------------------------------------------------ checkpoints
    def _checkpoint_file(self):
        return os.path.join(os.fspath(self.checkpoint_dir), _CHECKPOINT)

    def _read_checkpoint(self, want):
        if self.checkpoint_dir is None:
            return None
        path = self._checkpoint_file()
        if not os.path.exists(path):
            return None
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(
                f"checkpoint_dir={self.checkpoint_dir!r} holds {_CHECKPOINT}, which cannot "
                f"be read ({type(exc).__name__}: {exc}); delete it to start afresh.") from None
        diff = {k: (ckpt["config"].get(k), v) for k, v in want.items()
                if ckpt["config"].get(k) != v}
        if diff:
            what = ("other images (content hash)" if set(diff) <= {"data", "n_images"}
                    else "other settings")
            raise ValueError(
                f"checkpoint_dir={self.checkpoint_dir!r} holds a run with {what} "
                f"(checkpoint vs now: {diff}); resume with the same settings and images, "
                f"or use another checkpoint_dir (or delete {path!r}) to start afresh.")
        return ckpt

    def _write_checkpoint(self, epoch, seed, state, history):
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        ckpt = {"config": state["config"], "epoch": epoch, "seed": seed,
                "step": state["step"], "runtime": state["runtime"],
                "module": state["module"].state_dict(),
                "optimizer": state["optimizer"].state_dict(),
                "scaler": state["scaler"].state_dict(),
                "history": [dict(row) for row in history]}
        path = self._checkpoint_file()
        tmp = f"{path}.{os.getpid()}.tmp"
        torch.save(ckpt, tmp)
        os.replace(tmp, path)

    # ------------------------------------------------------------ using the encoder
    def transform(self, X):
        """Pooled embeddings of the trained encoder.

        Parameters
        ----------
        X : array-like of images
            As in ``fit``; resized to ``input_size_`` without augmentation.

        Returns
        -------
        ndarray of shape (n_images, embedding_dim_), float32
        """
        check_is_fitted(self, "encoder_")
        images = check_images(X, name="X", min_samples=1)
        cfg = self.data_config_
        loader = make_loader(images, range(len(images)), self.input_size_,
                             batch_size=self.batch_size, interpolation=cfg["interpolation"],
                             num_workers=self.num_workers)
        device = self.device_
        mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
        std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
        out = []
        with torch.inference_mode():
            for batch in loader:
                batch = (batch.to(device) - mean) / std
                out.append(self.encoder_(batch).float().cpu())
        return torch.cat(out).numpy()

    def save_encoder(self, path):
        """Write the trained encoder's timm state dict as a ``.safetensors`` file.

        Parameters
        ----------
        path : str or os.PathLike
            Ends in ``.safetensors``. Load it with
            ``LayerFeatureTransformer(name, checkpoint_path=path, img_size=...)``,
            ``FineTuneClassifier(name, checkpoint_path=path)`` or
            ``timm.create_model(name, num_classes=0, pretrained_cfg_overlay={"file":
            path})``.

        Returns
        -------
        path : str
        """
        check_is_fitted(self, "encoder_")
        path = os.fspath(path)
        if not path.endswith(".safetensors"):
            raise ValueError(f"path={path!r} must end in '.safetensors' (the format "
                             f"checkpoint_path loads without unpickling).")
        state = {k: v.detach().to("cpu").contiguous().clone()
                 for k, v in self.encoder_.state_dict().items()}
        return save_safetensors(state, path)
