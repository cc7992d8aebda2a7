"""What every task module shares: optimizer wiring from config partials, vocabularies saved in
the checkpoint."""

from collections.abc import Callable

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from seqmodels.data.vocab import Vocab


class SequenceModule(L.LightningModule):
    """:param optimizer: a partial (``_partial_: true``) that takes the parameters.
    :param scheduler: an optional partial that takes the optimizer.
    :param scheduler_monitor: the metric a plateau scheduler watches.
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
        self.train_loss = MeanMetric()  # the epoch's mean training loss

    def log_train_loss(self, loss: Tensor, batch_size: int, weight: int) -> None:
        """Add the step's loss to the epoch's mean (``on_train_epoch_end`` logs it) and, on the
        steps whose numbers reach the loggers, log it (the progress bar shows it from there)."""
        self.train_loss.update(loss.detach(), weight=weight)
        if self.logs_this_step():
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True,
                     batch_size=batch_size)

    def logs_this_step(self) -> bool:
        """Whether this training step's numbers reach the loggers (every
        ``trainer.log_every_n_steps``), or it is the very first step (a number on the progress
        bar from the start). Per-step values are logged only then: ``self.log`` costs about
        1 ms a call (Lightning copies its bookkeeping every time), 5% of an SST-2 step on a
        CPU, and Lightning would drop the other steps' values anyway."""
        connector = getattr(self._trainer, "_logger_connector", None)
        return connector is None or self.global_step == 0 or connector.should_update_logs

    def on_train_epoch_end(self) -> None:
        # compute() syncs the mean over ranks, so each logs the same value; sync_dist says so.
        self.log("train/loss_epoch", self.train_loss.compute(), sync_dist=True)
        self.train_loss.reset()

    def configure_optimizers(self):
        factory = self.optimizer_factory or torch.optim.Adam
        optimizer = factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.scheduler_monitor,
                             "interval": "epoch"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["seqmodels"] = {
            "task": self.task,
            "model_class": f"{type(self).__module__}.{type(self).__qualname__}",
            "vocabs": {name: vocab.to_dict() for name, vocab in self.vocabs.items()},
            "text_settings": self.text_settings,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("seqmodels", {})
        self.vocabs = {name: Vocab.from_dict(v) for name, v in saved.get("vocabs", {}).items()}
        self.text_settings = saved.get("text_settings", {})
