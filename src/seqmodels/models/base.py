"""What every task module shares: optimizer wiring from config partials, the training step's
optimization, vocabularies saved in the checkpoint."""

import contextlib
import math
from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.strategies import ParallelStrategy
from torch import Tensor
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics import MeanMetric

from seqmodels.data.vocab import Vocab
from seqmodels.errors import ConfigError
from seqmodels.precision import clippable_optimizer
from seqmodels.step_costs import BACKWARD_HOOKS, STEP_HOOKS, dispatch_is_idle
from seqmodels.stepping import Stepping


class SequenceModule(L.LightningModule):
    """:param optimizer: a partial (``_partial_: true``) that takes the parameters.
    :param scheduler: an optional partial that takes the optimizer.
    :param scheduler_monitor: the metric a plateau scheduler watches.

    Subclasses give the loss of a training batch (``training_loss``); the optimizer step is
    taken here, with Lightning's manual optimization. Lightning's automatic loop (a closure,
    more hooks and bookkeeping) costs about 0.4 ms a step, 2-3% of a short SST-2 step on a CPU
    (docs/benchmarks.md, section 1). What that loop would do is done here the same way:
    zeroing, gradient clipping after unscaling (``on_before_optimizer_step``), accumulation,
    and stepping LR schedulers by step, by epoch or on a plateau; tests/test_stepping.py
    compares the weights with Lightning's own loop. Clipping and accumulation are set in the
    trainer config as usual; ``train`` hands them over as ``stepping``.
    """

    task: str  # written into checkpoints so that a tool can refuse another task's checkpoint
    automatic_optimization = False

    def __init__(
        self,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        scheduler_monitor: str = "val/loss",
    ):
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_monitor = scheduler_monitor
        self.vocabs: dict[str, Vocab] = {}
        # How the datamodule turned text into ids (its text_settings()), for prediction.
        self.text_settings: dict = {}
        # The training run's resolved data config (paths, format, columns, fractions, seed):
        # seqmodels-eval and -predict read the same data from it unless told otherwise.
        self.data_config: dict = {}
        self.train_loss = MeanMetric()  # the epoch's mean training loss
        self.stepping = Stepping()
        self._window_open = False  # an accumulation window has gradients not yet stepped
        self._finished_epoch = -1  # the last epoch whose last batch was trained on
        # The training loss summed on the spot: a MeanMetric update per step costs about
        # 0.15 ms (its checks and broadcasting); the metric gets the sum once an epoch.
        self._loss_sum, self._loss_weight = torch.zeros(()), 0
        # Whether Lightning's backward / step dispatch can be skipped (set in on_fit_start).
        self._plain_backward = self._plain_step = False

    @property
    def optimizer_factory(self) -> Callable | None:
        """The ``optimizer`` partial as this run can use it: unfused where 16-bit mixed
        precision scales the loss and the gradients are clipped (Lightning cannot clip a fused
        optimizer's gradients: it unscales them inside its step; ``seqmodels.precision``)."""
        return clippable_optimizer(self._optimizer_factory, self.stepping.clips, self._trainer)

    @optimizer_factory.setter
    def optimizer_factory(self, factory: Callable | None) -> None:
        self._optimizer_factory = factory

    # -- the training step -------------------------------------------------------------------
    def training_loss(self, batch, batch_idx: int) -> Tensor:
        """The loss to minimise on one training batch (subclasses log what else they need)."""
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> Tensor:
        optimizer = self.optimizers()
        accumulate = self.stepping.accumulate_grad_batches
        if batch_idx % accumulate == 0:
            # Before the forward, not after it where Lightning's automatic loop zeroes: the
            # memory of the freed gradients then serves the forward's and backward's new
            # tensors. Freed after the forward, the backward took fresh pages from the kernel
            # (3x the page faults; SST-2 steps about 2% slower, docs/benchmarks.md section 1).
            optimizer.zero_grad()
        loss = self.training_loss(batch, batch_idx)
        last = (batch_idx + 1 == self.trainer.num_training_batches
                or self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
        steps = (batch_idx + 1) % accumulate == 0 or last
        with self._gradient_sync(steps):
            self._backward(loss / accumulate if accumulate > 1 else loss)
        self._window_open = not steps  # gradients waiting for the window's other batches
        if steps:
            self._optimizer_step(optimizer)  # on_before_optimizer_step clips first
            self.step_lr_schedulers("step", batch_idx + 1)
        if last:
            # Where Lightning steps epoch schedulers: after the epoch's last step, before
            # validation and its checkpoint; plateau ones wait for validation's metric.
            self.step_lr_schedulers("epoch", self.current_epoch + 1, plateau=False)
            self._finished_epoch = self.current_epoch
        return loss.detach()

    def _backward(self, loss: Tensor) -> None:
        """``manual_backward``, or straight ``loss.backward()`` where that is all it would do
        (``step_costs.dispatch_is_idle``)."""
        if self._plain_backward:
            loss.backward()
        else:
            self.manual_backward(loss)

    def _optimizer_step(self, optimizer) -> None:
        """``optimizer.step()`` of Lightning's optimizer wrapper, or, where its dispatch is idle,
        what it comes down to: the loop's step counting (global_step) around our clipping and
        torch's step. tests/test_stepping.py compares both with Lightning's automatic loop."""
        if self._plain_step:
            optimizer._on_before_step()
            self.on_before_optimizer_step(optimizer.optimizer)
            optimizer.optimizer.step()
            optimizer._on_after_step()
        else:
            optimizer.step()

    def _gradient_sync(self, steps: bool):
        """Under DDP, no gradient all-reduce for the batches of a window but its last (what
        Lightning's automatic loop does with ``no_sync``): the sum is the same, sent once."""
        if steps or not isinstance(self.trainer.strategy, ParallelStrategy):
            return contextlib.nullcontext()
        return self.trainer.strategy.block_backward_sync()

    def on_fit_start(self) -> None:
        # Callbacks, strategy and precision are settled by now (subclasses call this first).
        self._plain_backward = dispatch_is_idle(self.trainer, self, BACKWARD_HOOKS,
                                                module_hooks=(*BACKWARD_HOOKS, "backward"))
        self._plain_step = dispatch_is_idle(self.trainer, self, STEP_HOOKS)

    def on_validation_model_zero_grad(self) -> None:
        # Lightning zeroes gradients before each validation unless its own accumulation is
        # mid-window; with ours it cannot tell, so a validation inside a window (a
        # val_check_interval that is not a multiple of the accumulation) would drop them.
        if not self._window_open:
            super().on_validation_model_zero_grad()

    def on_before_optimizer_step(self, optimizer) -> None:
        # Called after mixed precision unscaled the gradients, as Lightning's own clipping is.
        if self.stepping.clips:
            self.configure_gradient_clipping(optimizer, self.stepping.gradient_clip_val,
                                             self.stepping.gradient_clip_algorithm)

    def step_lr_schedulers(self, interval: str, count: int, plateau: bool | None = None) -> None:
        """Step the schedulers of this ``interval`` (``step`` or ``epoch``) whose frequency
        divides ``count`` (batches or epochs so far), as Lightning's loop does; ``plateau``:
        only plateau schedulers (True), only others (False), or both (None). A plateau
        scheduler gets ``scheduler_monitor``'s latest value."""
        for config in self.trainer.lr_scheduler_configs:
            is_plateau = isinstance(config.scheduler, ReduceLROnPlateau)
            if (config.interval != interval or count % config.frequency
                    or plateau not in (None, is_plateau)):
                continue
            value = None
            if is_plateau:
                value = self.trainer.callback_metrics.get(self.scheduler_monitor)
                if value is None:
                    raise ConfigError(
                        f"the plateau scheduler watches {self.scheduler_monitor!r}, which is not "
                        f"logged; logged: {sorted(self.trainer.callback_metrics)}. Set "
                        "model.scheduler_monitor (validation must run every epoch)")
            self.lr_scheduler_step(config.scheduler, value)

    def estimated_optimizer_steps(self) -> float:
        """The optimizer steps training will take, for per-step schedules: Lightning's
        ``estimated_stepping_batches`` with our accumulation (the trainer sees none)."""
        trainer, accumulate = self.trainer, self.stepping.accumulate_grad_batches
        estimate = trainer.estimated_stepping_batches  # also sizes the train loader
        if (accumulate == 1 or trainer.max_epochs == -1
                or not math.isfinite(trainer.num_training_batches)):
            return estimate  # max_steps, when it decides, counts optimizer steps already
        steps = math.ceil(trainer.num_training_batches / accumulate) * max(trainer.max_epochs, 1)
        return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps

    def log_train_loss(self, loss: Tensor, batch_size: int, weight: int) -> bool:
        """Add the step's loss to the epoch's mean (``on_train_epoch_end`` logs it) and, on the
        steps whose numbers reach the loggers, log it (the progress bar shows it from there).
        Returns whether this step logs (for a subclass's other per-step values)."""
        self._loss_sum = self._loss_sum.to(loss.device) + loss.detach() * weight
        self._loss_weight += weight
        logs = self.logs_this_step()
        if logs:
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True,
                     batch_size=batch_size)
        return logs

    def logs_this_step(self) -> bool:
        """Whether this training step's numbers reach the loggers (every
        ``trainer.log_every_n_steps``), or it is the very first step (a number on the progress
        bar from the start). Per-step values are logged only then: ``self.log`` costs about
        1 ms a call (Lightning copies its bookkeeping every time), 5% of an SST-2 step on a
        CPU, and Lightning would drop the other steps' values anyway."""
        connector = getattr(self._trainer, "_logger_connector", None)
        return connector is None or self.global_step == 0 or connector.should_update_logs

    def epoch_train_loss(self) -> MeanMetric:
        """The epoch's mean training loss, over every rank once computed."""
        if self._loss_weight:
            self.train_loss.update(self._loss_sum / self._loss_weight, weight=self._loss_weight)
        self._loss_sum, self._loss_weight = torch.zeros(()), 0
        return self.train_loss

    def log_epoch_train_loss(self) -> None:
        # compute() syncs the mean over ranks, so each logs the same value; sync_dist says so.
        self.log("train/loss_epoch", self.epoch_train_loss().compute(), sync_dist=True)
        self.train_loss.reset()

    def on_train_epoch_end(self) -> None:
        self.log_epoch_train_loss()
        # Plateau schedulers after validation, as Lightning steps them: not for an epoch cut
        # short (max_steps, a stop), nor in the first epoch after a resume (its metrics are
        # not in the checkpoint).
        if self._finished_epoch == self.current_epoch and not self.trainer.fit_loop.restarting:
            self.step_lr_schedulers("epoch", self.current_epoch + 1, plateau=True)

    def configure_optimizers(self):
        factory = self.optimizer_factory or torch.optim.Adam
        optimizer = factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        # A plateau scheduler's metric is scheduler_monitor (step_lr_schedulers reads it).
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["seqmodels"] = {
            "task": self.task,
            "model_class": f"{type(self).__module__}.{type(self).__qualname__}",
            "vocabs": {name: vocab.to_dict() for name, vocab in self.vocabs.items()},
            "text_settings": self.text_settings,
            "data": self.data_config,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("seqmodels", {})
        self.vocabs = {name: Vocab.from_dict(v) for name, v in saved.get("vocabs", {}).items()}
        self.text_settings = saved.get("text_settings", {})
        self.data_config = saved.get("data", {})
