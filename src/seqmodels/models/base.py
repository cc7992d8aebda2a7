"""What every task module shares: optimizer wiring from config partials, the training loss's
bookkeeping, vocabularies saved in the checkpoint. Optimization is Lightning's own automatic
loop: clipping, accumulation and scheduler stepping are the Trainer's settings."""

from collections.abc import Callable

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from seqmodels.data.vocab import Vocab
from seqmodels.training.precision import clippable_optimizer, scales_gradients
from seqmodels.training.step_costs import is_logging_step


def net_part(name: str) -> property:
    """A read-only attribute of a task module that is the same-named part of its network
    (``module.encoder`` is ``module.net.encoder``), as tools and callbacks read them."""
    return property(lambda module: getattr(module.net, name),
                    doc=f"``self.net.{name}`` (models/networks.py)")


class SequenceModule(L.LightningModule):
    """:param optimizer: a partial (``_partial_: true``) that takes the parameters.
    :param scheduler: an optional partial that takes the optimizer.
    :param scheduler_monitor: the metric a plateau scheduler watches.

    Subclasses give the loss of a training batch (``training_loss``); Lightning's automatic
    loop does the rest (``trainer.gradient_clip_val``, ``trainer.accumulate_grad_batches``).
    One change to its order, through public hooks: gradients are zeroed before the forward
    rather than between forward and backward, so the freed gradients' memory serves the
    forward's tensors instead of the backward taking fresh pages (docs/benchmarks.md).
    """

    task: str  # written into checkpoints so that a tool can refuse another task's checkpoint

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
        # The training loss summed on the spot: a MeanMetric update per step costs about
        # its checks and broadcasting each step; the metric gets the sum once an epoch.
        self._loss_sum, self._loss_weight = torch.zeros(()), 0

    @property
    def optimizer_factory(self) -> Callable | None:
        """The ``optimizer`` partial as this run can use it: unfused where 16-bit mixed
        precision scales the loss and the gradients are clipped (Lightning cannot clip a fused
        optimizer's gradients: it unscales them inside its step;
        ``seqmodels.training.precision``)."""
        trainer = self.attached_trainer()
        clips = bool(trainer and trainer.gradient_clip_val)
        return clippable_optimizer(self._optimizer_factory, clips, trainer)

    @optimizer_factory.setter
    def optimizer_factory(self, factory: Callable | None) -> None:
        self._optimizer_factory = factory

    def attached_trainer(self) -> L.Trainer | None:
        """The trainer running this module, or None outside a run (``self.trainer`` raises)."""
        try:
            return self.trainer
        except RuntimeError:
            return None

    # -- the training step -------------------------------------------------------------------
    def training_loss(self, batch, batch_idx: int) -> Tensor:
        """The loss to minimise on one training batch (subclasses log what else they need)."""
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> Tensor:
        if batch_idx % self.trainer.accumulate_grad_batches == 0:
            # The first batch of an accumulation window: before its forward (see the class
            # docstring); ``optimizer_zero_grad`` below leaves Lightning's own call out.
            self.optimizers().optimizer.zero_grad()
        return self.training_loss(batch, batch_idx)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer) -> None:
        """Done at the start of ``training_step`` instead, for the same batches."""

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        """Lightning's clipping, but for one refusal: its mixed-precision plugin will not clip
        a fused optimizer's gradients under any autocast, because with a loss scaler the fused
        step unscales them itself. Without a scaler (bf16-mixed, 32-true) the gradients are
        the true ones, so they are clipped here as Lightning would; with one (16-mixed) the
        optimizer is built unfused (``optimizer_factory``) and Lightning clips after
        unscaling."""
        if not gradient_clip_val:
            return
        if scales_gradients(self.trainer):
            super().configure_gradient_clipping(optimizer, gradient_clip_val,
                                                gradient_clip_algorithm)
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def log_train_loss(self, loss: Tensor, batch_size: int, weight: int) -> bool:
        """Add the step's loss to the epoch's mean (``on_train_epoch_end`` logs it) and, on the
        steps whose numbers reach the loggers, log it (the progress bar shows it from there).
        Returns whether this step logs (for a subclass's other per-step values)."""
        self._loss_sum = self._loss_sum.to(loss.device) + loss.detach() * weight
        self._loss_weight += weight
        logs = self.logs_this_step()
        if logs:
            # A copy on the host: Lightning turns the progress bar's values into numbers after
            # every batch, the latest logged one included, and a value on the GPU would make
            # each of those steps wait for the device; read once here, on a step that logs
            # anyway. (copy=True: a copy on the CPU too, which tests/test_host_syncs.py sees.)
            self.log("train/loss", loss.detach().to("cpu", copy=True), on_step=True, on_epoch=False,
                     prog_bar=True, batch_size=batch_size)
        return logs

    def logs_this_step(self) -> bool:
        """Whether this training step's numbers reach the loggers (every
        ``trainer.log_every_n_steps`` optimizer steps, as Lightning decides), or it is the very
        first step (a number on the progress bar from the start). Per-step values are logged
        only then: each ``self.log`` call is costly (Lightning copies its bookkeeping every
        time), and Lightning would drop the other steps' values anyway."""
        trainer = self.attached_trainer()
        if trainer is None:
            return True
        return is_logging_step(trainer, trainer.global_step + 1)  # this step, not yet counted

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

    def configure_optimizers(self):
        factory = self.optimizer_factory or torch.optim.Adam
        optimizer = factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        # Lightning steps it once an epoch; a plateau scheduler on scheduler_monitor's value.
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "epoch",
                                 "monitor": self.scheduler_monitor}}

    def upgrade_state_dict(self, state: dict) -> dict:
        """A checkpoint's weights under today's names. Until the network moved into
        ``self.net`` (models/networks.py), its layers sat on the module itself
        (``encoder.rnn.weight_ih_l0``, now ``net.encoder.rnn.weight_ih_l0``): those names gain
        the prefix, so that older checkpoints still load (Lightning calls this hook before it
        loads the state dict, for eval and for resuming alike)."""
        net = getattr(self, "net", None)
        if net is None:
            return state
        layers = {name for name, _ in net.named_children()}
        return {f"net.{key}" if key.split(".", 1)[0] in layers else key: value
                for key, value in state.items()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["seqmodels"] = {
            "task": self.task,
            "model_class": f"{type(self).__module__}.{type(self).__qualname__}",
            "vocabs": {name: vocab.to_dict() for name, vocab in self.vocabs.items()},
            "text_settings": self.text_settings,
            "data": self.data_config,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        for key in ("state_dict", "current_model_state"):  # the latter: weight averaging's
            if key in checkpoint:
                checkpoint[key] = self.upgrade_state_dict(checkpoint[key])
        saved = checkpoint.get("seqmodels", {})
        self.vocabs = {name: Vocab.from_dict(v) for name, v in saved.get("vocabs", {}).items()}
        self.text_settings = saved.get("text_settings", {})
        self.data_config = saved.get("data", {})
