"""Learning-rate schedules as skorch callbacks that keep per-group lr ratios.

Each group's lr is set to ``base_lr_of_group * factor``, so that per-group lrs (layer
decay, a head with its own lr) keep their ratios under warm-up and decay.
"""

from __future__ import annotations

from skorch.callbacks import Callback

from ._hyperrule import bit_lr_factor


class _GroupLR(Callback):
    def on_train_begin(self, net, **kwargs):
        # lrs as initialised; a warm start continues from the current ones
        self.base_lrs_ = [g["lr"] for g in net.optimizer_.param_groups]
        self.scale_ = 1.0
        self.step_ = 0

    def _apply(self, net, factor):
        for g, base in zip(net.optimizer_.param_groups, self.base_lrs_):
            g["lr"] = base * factor


class BitSchedule(_GroupLR):
    """The BiT-HyperRule schedule, stepped every optimizer step (batch).

    Parameters
    ----------
    rule : Bunch
        The result of :func:`bit_hyperrule`.
    """

    def __init__(self, rule):
        self.rule = rule

    def on_train_begin(self, net, **kwargs):
        super().on_train_begin(net, **kwargs)
        self._apply(net, bit_lr_factor(0, self.rule))

    def on_batch_end(self, net, batch=None, training=None, **kwargs):
        if training:
            self.step_ += 1
            self._apply(net, bit_lr_factor(self.step_, self.rule))
            net.history.record_batch("lr", net.optimizer_.param_groups[-1]["lr"])


class WarmupPlateau(_GroupLR):
    """Linear warm-up over ``warmup_steps`` batches, then x``factor`` whenever
    ``monitor`` has not improved for ``patience`` epochs.

    Parameters
    ----------
    warmup_steps : int
    patience : int, default=3
    factor : float, default=0.1
    monitor : str, default="valid_loss"
    """

    def __init__(self, warmup_steps, patience=3, factor=0.1, monitor="valid_loss"):
        self.warmup_steps = warmup_steps
        self.patience = patience
        self.factor = factor
        self.monitor = monitor

    def on_train_begin(self, net, **kwargs):
        super().on_train_begin(net, **kwargs)
        self.best_ = float("inf")
        self.bad_epochs_ = 0
        self._apply(net, self._warm())

    def _warm(self):
        if self.warmup_steps <= 0:
            return 1.0
        return min(1.0, (self.step_ + 1) / (self.warmup_steps + 1))

    def on_batch_end(self, net, batch=None, training=None, **kwargs):
        if training:
            self.step_ += 1
            self._apply(net, self.scale_ * self._warm())
            net.history.record_batch("lr", net.optimizer_.param_groups[-1]["lr"])

    def on_epoch_end(self, net, **kwargs):
        score = net.history[-1].get(self.monitor)
        if score is None:
            raise ValueError(
                f"schedule='warmup_plateau' monitors {self.monitor!r}, which this epoch "
                f"did not record; pass train_split (e.g. skorch.dataset.ValidSplit(0.2, "
                f"stratified=True)) so that there is a validation loss.")
        if score < self.best_ * (1 - 1e-4):
            self.best_, self.bad_epochs_ = score, 0
        else:
            self.bad_epochs_ += 1
            if self.bad_epochs_ > self.patience:
                self.scale_ *= self.factor
                self.bad_epochs_ = 0
                self._apply(net, self.scale_ * self._warm())
