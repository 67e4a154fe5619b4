"""Each self-supervised objective and schedule against a hand computation (numpy) of the
papers' pseudo-code and the official code's formulas, on hand-made tensors; checkpoint
keys, resuming across devices and skipped mixed-precision steps."""

import math
import os

import lightly  # noqa: F401  (in the test extra: a missing lightly fails, never skips)
import numpy as np
import pytest
import torch
from torch import nn

from sklearn_endo.ssl import SelfSupervisedPretrainer
from sklearn_endo.ssl._checkpoint import resume_scaler, step_was_skipped

from .conftest import make_tiny_vit


def build(method, dim=4, encoder=None, **kw):
    """The estimator's own wiring of ``method`` around an encoder that flattens
    (B, C, 1, 1) views to (B, C) features."""
    pre = SelfSupervisedPretrainer("resnet18", method=method, **kw)
    torch.manual_seed(0)
    return pre, pre._build(nn.Flatten() if encoder is None else encoder, dim, "flat")


class Scale(nn.Module):
    """A fixed linear map standing in for a momentum/teacher branch."""

    def __init__(self, matrix):
        super().__init__()
        self.m = nn.Parameter(torch.as_tensor(matrix, dtype=torch.float32))

    def forward(self, x):
        return x.flatten(1) @ self.m


def views(n=6, v=2, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, v, d, 1, 1)).astype(np.float32)


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------- Barlow Twins
def test_barlow_twins_equals_the_papers_cross_correlation_loss():
    lam = 0.02
    _, bt = build("barlowtwins", lambda_param=lam)
    bt.projector = nn.Identity()
    v = views(n=8)
    got = float(bt(torch.from_numpy(v), 0.0))
    z0, z1 = v[:, 0, :, 0, 0].astype(np.float64), v[:, 1, :, 0, 0].astype(np.float64)

    def bn(z):  # batch-normalised along the batch (biased variance, BatchNorm1d's eps)
        return (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)

    c = bn(z0).T @ bn(z1) / len(z0)
    on = ((1 - np.diag(c)) ** 2).sum()
    off = (c ** 2).sum() - (np.diag(c) ** 2).sum()
    assert got == pytest.approx(on + lam * off, rel=1e-5)
    assert got != pytest.approx(on + 0.0051 * off, rel=1e-3)  # lambda_param is used


# ---------------------------------------------------------------- MoCo v3
def ctr(q, k, tau):
    """MoCo v3 (Algorithm 1): CE(normalize(q) @ normalize(k).T / tau, arange(N)) * 2 tau."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    logits = q @ k.T / tau
    return -np.mean(np.diag(log_softmax(logits))) * 2 * tau


def test_mocov3_is_the_papers_symmetric_loss_with_momentum_keys():
    tau = 0.2  # the default; with 0.5 the 2 * tau factor would be 1
    _, moco = build("mocov3", temperature=tau)
    moco.projector = moco.predictor = moco.momentum_projector = nn.Identity()
    key = np.array([[1.0, 0.2, 0.0, 0.0], [0.0, 1.0, 0.3, 0.0], [0.1, 0.0, 1.0, 0.0],
                    [0.0, 0.0, 0.4, 1.0]])
    moco.momentum_encoder = Scale(key)  # the keys' branch differs from the queries'
    v = views(n=6)
    x1, x2 = v[:, 0, :, 0, 0].astype(np.float64), v[:, 1, :, 0, 0].astype(np.float64)
    got = moco(torch.from_numpy(v).requires_grad_(True), 0.0)
    expected = ctr(x1, x2 @ key, tau) + ctr(x2, x1 @ key, tau)
    assert float(got.detach()) == pytest.approx(expected, rel=1e-5)
    # not SimCLR's NT-Xent (2N - 2 negatives, no 2 tau), which this replaced
    from lightly.loss import NTXentLoss

    nt = NTXentLoss(temperature=tau)
    t = torch.from_numpy
    ntxent = float(nt(t(x1).float(), t(x2 @ key).float()) + nt(t(x2).float(), t(x1 @ key).float()))
    assert abs(ntxent - expected) > 0.1
    # keys carry no gradient: only the query branch is trained
    got.backward()
    assert moco.momentum_encoder.m.grad is None


def test_mocov3_momentum_follows_the_papers_cosine_schedule(monkeypatch):
    # main_moco.py: m = 1 - 0.5 * (1 + cos(pi * epoch / epochs)) * (1 - moco_m), at the
    # fractional epoch of the iteration whose keys it updates (the one after step it)
    _, moco = build("mocov3", momentum=0.99,
                    encoder=nn.Sequential(nn.Flatten(), nn.Linear(4, 4)))
    epochs, per_epoch = 10, 10
    total = epochs * per_epoch
    for it in (0, 9, 49, 98, 99):
        epoch = (it + 1) / per_epoch
        official = 1.0 - 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)) * (1 - 0.99)
        assert moco.momentum_at(it, total) == pytest.approx(official, abs=1e-12)
    # and after_step moves the key branch by exactly that momentum
    def first(module):
        return next(x for x in module.modules() if isinstance(x, nn.Linear)).weight

    with torch.no_grad():
        first(moco.projector).add_(1.0)
    before = first(moco.momentum_projector).clone()
    student = first(moco.projector).clone()
    moco.after_step(49, total)
    m = moco.momentum_at(49, total)
    torch.testing.assert_close(first(moco.momentum_projector), m * before + (1 - m) * student)


# ---------------------------------------------------------------- DINO
def dino_reference(teacher, student, center, temp):
    """DINO's loss (main_dino.py DINOLoss): teacher views centred and sharpened,
    student at temperature 0.1, mean over (teacher view iq, student view v != iq)."""
    t = [np.exp(log_softmax((x - center) / temp)) for x in teacher]
    s = [log_softmax(x / 0.1) for x in student]
    terms = [np.mean(np.sum(-q * s[v], axis=-1)) for iq, q in enumerate(t)
             for v in range(len(s)) if v != iq]
    new_center = 0.9 * center + 0.1 * np.concatenate(teacher).mean(0)
    return np.mean(terms), new_center


def test_dino_loss_centre_temperatures_and_global_views_for_the_teacher():
    _, dino = build("dino", projection_dim=4, teacher_temp=(0.04, 0.07, 3))
    dino.head = dino.teacher_head = nn.Identity()
    tmat = np.array([[0.5, 0.1, 0.0, 0.2], [0.0, 0.7, 0.1, 0.0], [0.3, 0.0, 0.6, 0.1],
                     [0.0, 0.2, 0.0, 0.9]])
    dino.teacher_encoder = Scale(tmat)
    seen = []
    dino.teacher_encoder.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    v = views(n=5, v=2)
    local = views(n=5, v=3, seed=1)
    g = [v[:, i, :, 0, 0].astype(np.float64) for i in range(2)]
    loc = [local[:, i, :, 0, 0].astype(np.float64) for i in range(3)]
    center = np.zeros(4)
    for epoch, temp in [(0, 0.04), (1, 0.055), (2, 0.07), (7, 0.07)]:
        assert temp == pytest.approx(np.concatenate([np.linspace(0.04, 0.07, 3),
                                                     np.full(10, 0.07)])[epoch])
        dino.start_epoch(epoch)
        got = dino((torch.from_numpy(v), torch.from_numpy(local)), 0.0)
        expected, center = dino_reference([x @ tmat for x in g], g + loc, center, temp)
        assert float(got) == pytest.approx(expected, rel=1e-4)
        np.testing.assert_allclose(dino.criterion.center.view(-1).numpy(), center, rtol=1e-5)
    # the teacher saw the two global views only, never the local crops
    assert seen == [(5, 4, 1, 1)] * 8


def test_dino_schedules_equal_the_official_cosine_scheduler():
    def cosine_scheduler(base, final, epochs, niter):  # DINO utils.cosine_scheduler
        iters = np.arange(epochs * niter)
        return final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))

    pre, dino = build("dino", momentum=0.996)
    momentum = cosine_scheduler(0.996, 1, 8, 5)
    wd = cosine_scheduler(0.04, 0.4, 8, 5)
    for it in (0, 1, 17, 39):
        assert dino.momentum_at(it, 40) == pytest.approx(momentum[it], abs=1e-12)
        assert pre._weight_decay_at(it, 40) == pytest.approx(wd[it], abs=1e-12)
    assert pre._weight_decays() == (0.04, 0.4)
    # the other methods keep a constant weight decay unless asked
    other, _ = build("mocov3")
    assert other._weight_decays() == (0.05, 0.05)
    assert SelfSupervisedPretrainer("r", weight_decay=0.1,
                                    weight_decay_end=0.2)._weight_decays() == (0.1, 0.2)


def test_dino_freezes_the_last_layer_in_the_first_epoch_and_clips_each_gradient():
    _, dino = build("dino", dim=4, projection_dim=8)
    for p in dino.parameters():
        if p.requires_grad:
            p.grad = torch.full_like(p, 10.0)
    dino.before_step(epoch=0)
    assert all(p.grad is None for p in dino.head.last_layer.parameters())
    for p in dino.head.layers.parameters():  # clipped to norm 3 one by one
        assert float(p.grad.norm()) == pytest.approx(3.0, rel=1e-4)
    dino.head.last_layer.weight_v.grad = torch.full_like(dino.head.last_layer.weight_v, 1e-3)
    dino.before_step(epoch=1)
    assert dino.head.last_layer.weight_v.grad is not None


# ---------------------------------------------------------------- MAE
def test_mae_loss_is_mse_on_normalised_pixels_of_masked_patches_only():
    pre = SelfSupervisedPretrainer(make_tiny_vit, method="mae", mask_ratio=0.75)
    torch.manual_seed(0)
    mae = pre._build(make_tiny_vit(), 32, "vit")
    mae.eval()
    n, p = 2, mae.patch_size  # 32 x 32 images, 8-pixel patches: 16 patches
    keep = torch.tensor([[0, 1, 6, 11, 16], [0, 3, 4, 9, 12]])  # token 0: class token
    masked = torch.tensor([[t for t in range(1, 17) if t not in row] for row in keep.tolist()])
    mae.random_mask = lambda b, device: (keep, masked)
    captured = {}
    mae.prediction.register_forward_hook(lambda m, i, o: captured.setdefault("pred", o))
    images = torch.from_numpy(np.random.default_rng(0).normal(size=(n, 1, 3, 32, 32))
                              .astype(np.float32))
    with torch.no_grad():
        got = float(mae(images, 0.0))
    pred = captured["pred"].detach().numpy().astype(np.float64)
    assert pred.shape == (n, 12, p * p * 3)  # predictions for the masked patches only
    x = images[:, 0].numpy().astype(np.float64)
    # MAE's patchify: (N, 3, H, W) -> (N, L, p*p*3), pixels in (row, col, channel) order
    h = 32 // p
    patches = x.reshape(n, 3, h, p, h, p).transpose(0, 2, 4, 3, 5, 1).reshape(n, h * h, -1)
    target = np.stack([patches[i, masked[i].numpy() - 1] for i in range(n)])
    mean = target.mean(-1, keepdims=True)
    var = target.var(-1, ddof=1, keepdims=True)  # norm_pix_loss: unbiased variance
    target = (target - mean) / np.sqrt(var + 1e-6)
    assert got == pytest.approx(np.mean((pred - target) ** 2), rel=1e-5)


# ---------------------------------------------------------------- skipped steps
class FakeScaler:
    """GradScaler's protocol; ``inf=True`` makes the next step one it skips."""

    def __init__(self, enabled=True, scale=1024.0):
        self.enabled, self.scale_, self.inf = enabled, scale, False

    def is_enabled(self):
        return self.enabled

    def get_scale(self):
        return self.scale_ if self.enabled else 1.0

    def unscale_(self, optimizer):
        pass

    def step(self, optimizer):
        if not self.inf:
            optimizer.step()

    def update(self):
        if self.enabled:
            self.scale_ *= 0.5 if self.inf else 1.0
        self.inf = False


def test_step_was_skipped_decision():
    s = FakeScaler()
    before = s.get_scale()
    s.inf = True
    s.update()
    assert step_was_skipped(s, before)
    before = s.get_scale()
    s.update()
    assert not step_was_skipped(s, before)
    assert not step_was_skipped(FakeScaler(enabled=False), 1.0)
    # a real (CPU) GradScaler skips a step with inf gradients and lowers its scale
    real = torch.amp.GradScaler("cpu", init_scale=4.0)
    w = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=1.0)
    real.scale(w.sum() * float("inf")).backward()
    before = real.get_scale()
    real.step(opt)
    real.update()
    assert step_was_skipped(real, before) and torch.equal(w.detach(), torch.ones(3))


def test_skipped_step_moves_neither_the_teacher_nor_the_schedules():
    pre, moco = build("mocov3", lr=0.1,
                      encoder=nn.Sequential(nn.Flatten(), nn.Linear(4, 4)))
    opt = pre._optimizer(moco)
    scaler = FakeScaler()
    state = {"module": moco, "optimizer": opt, "scaler": scaler, "step": 3, "total": 10,
             "warmup": 0}
    v = torch.from_numpy(views(n=6))
    moco(v, 0.0).backward()
    teacher = {k: t.clone() for k, t in moco.momentum_projector.state_dict().items()}
    scaler.inf = True
    assert pre._optimizer_step(state, epoch=0) is False
    assert state["step"] == 3
    for k, t in moco.momentum_projector.state_dict().items():
        assert torch.equal(t, teacher[k]), k
    moco(v, 0.0).backward()
    assert pre._optimizer_step(state, epoch=0) is True and state["step"] == 4
    assert opt.param_groups[0]["lr"] == pytest.approx(pre._lr_at(3, 10, 0))
    assert any(not torch.equal(t, teacher[k])
               for k, t in moco.momentum_projector.state_dict().items())


# ---------------------------------------------------------------- checkpoints
def test_cpu_checkpoint_resumes_with_a_float16_scaler():
    cpu_scaler = torch.amp.GradScaler("cpu", enabled=False)  # what a CPU run saves
    saved = cpu_scaler.state_dict()
    assert saved == {}
    fp16 = torch.amp.GradScaler("cpu", init_scale=256.0)  # stands for CUDA's float16 one
    with pytest.warns(UserWarning, match=r"written on cpu with autocast None; resuming on "
                                         r"cuda with autocast float16 \(the gradient "
                                         r"scaler starts afresh\)"):
        resume_scaler(fp16, saved, {"device": "cpu", "autocast_dtype": "None"},
                      {"device": "cuda", "autocast_dtype": "float16"}, "ck")
    assert fp16.get_scale() == 256.0
    # a float16 checkpoint's scale is restored on the same device, silently
    fp16.scale(torch.ones(()))
    fp16.update(64.0)
    again = torch.amp.GradScaler("cpu")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resume_scaler(again, fp16.state_dict(), {"device": "cuda", "autocast_dtype": "f"},
                      {"device": "cuda", "autocast_dtype": "f"}, "ck")
    assert again.get_scale() == 64.0
    resume_scaler(cpu_scaler, fp16.state_dict(), None, {}, "ck")  # disabled: dropped


@pytest.fixture
def unlabelled():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)


def flip(x):
    return torch.flip(x, dims=(-1,)) if torch.rand(()) < 0.5 else x


def flip_v(x):
    return torch.flip(x, dims=(-2,)) if torch.rand(()) < 0.5 else x


def test_checkpoint_is_keyed_by_content_and_settings(unlabelled, tmp_path):
    kw = dict(img_size=32, max_epochs=1, batch_size=8, random_state=0, verbose=False,
              checkpoint_dir=str(tmp_path / "ck"))
    pre = SelfSupervisedPretrainer(make_tiny_vit, augment=flip, **kw).fit(unlabelled)
    ckpt = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)
    assert ckpt["runtime"] == {"device": "cpu", "amp": True, "autocast_dtype": "None"}
    assert pre.n_epochs_ == 1
    other = unlabelled.copy()
    other[3, 0, 0, 0] ^= 1  # one pixel of one image: same count, other content
    with pytest.raises(ValueError, match="other images"):
        SelfSupervisedPretrainer(make_tiny_vit, augment=flip, **kw).fit(other)
    with pytest.raises(ValueError, match="other settings.*augment"):
        SelfSupervisedPretrainer(make_tiny_vit, augment=flip_v, **kw).fit(unlabelled)
    with pytest.raises(ValueError, match="other settings.*weight_decay"):
        SelfSupervisedPretrainer(make_tiny_vit, augment=flip, weight_decay=0.1,
                                 **kw).fit(unlabelled)


def test_checkpoint_dir_that_is_a_file_is_refused_before_training(unlabelled, tmp_path):
    calls = []
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "file", tmp_path / "file" / "under"):
        pre = SelfSupervisedPretrainer(make_tiny_vit, img_size=32, batch_size=8,
                                       augment=lambda x: calls.append(1) or x,
                                       checkpoint_dir=str(bad), verbose=False)
        with pytest.raises(ValueError, match=f"checkpoint_dir='{bad}'"):
            pre.fit(unlabelled)
    assert calls == []


def test_save_encoder_errors_name_the_users_path(unlabelled, tmp_path, monkeypatch):
    pre = SelfSupervisedPretrainer(make_tiny_vit, img_size=32, max_epochs=1, batch_size=8,
                                   random_state=0, verbose=False).fit(unlabelled)
    missing = tmp_path / "nope" / "enc.safetensors"
    with pytest.raises(ValueError, match=f"path='{missing}'.*does not exist"):
        pre.save_encoder(missing)
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        pre.save_encoder(tmp_path / "d.safetensors")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="does not exist"):  # a folder that is a file
        pre.save_encoder(tmp_path / "f" / "enc.safetensors")
    # a read-only location (root writes anywhere: make the writer fail as it would)
    import safetensors.torch

    def refuse(state, filename, metadata=None):
        raise safetensors.SafetensorError(
            f"Error while serializing: I/O error: Read-only file system (os error 30): "
            f"{filename}.tmp1234")

    monkeypatch.setattr(safetensors.torch, "save_file", refuse)
    target = tmp_path / "enc.safetensors"
    with pytest.raises(ValueError, match=f"path='{target}' cannot be written") as err:
        pre.save_encoder(target)
    assert "tmp1234" not in str(err.value)
    assert not os.path.exists(target)


def test_checkpoint_from_a_float16_gpu_run_resumes_on_cpu(unlabelled, tmp_path):
    kw = dict(img_size=32, batch_size=8, random_state=0, verbose=False, augment=flip,
              checkpoint_dir=str(tmp_path / "ck"))
    SelfSupervisedPretrainer(make_tiny_vit, max_epochs=1, **kw).fit(unlabelled)
    path = tmp_path / "ck" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["scaler"] == {} and ckpt["step"] == 2
    # as a float16 CUDA run would have written it: a scaler state, another runtime
    ckpt["scaler"] = torch.amp.GradScaler("cpu", init_scale=512.0).state_dict()
    ckpt["runtime"] = {"device": "cuda", "amp": True, "autocast_dtype": "float16"}
    ckpt["config"]["max_epochs"] = repr(2)
    torch.save(ckpt, path)
    with pytest.warns(UserWarning, match="written on cuda with autocast float16; resuming "
                                         "on cpu with autocast None"):
        pre = SelfSupervisedPretrainer(make_tiny_vit, max_epochs=2, **kw).fit(unlabelled)
    assert pre.history_[:, "epoch"] == [1, 2] and pre.history_[:, "n_steps"] == [2, 4]
