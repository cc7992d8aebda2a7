"""Callbacks that keep a run's work safe: stop on a non-finite loss before it spoils the
checkpoints, and write a checkpoint when the run is interrupted."""

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from seqmodels.errors import TrainingError
from seqmodels.training.step_costs import is_logging_step

log = logging.getLogger(__name__)


class StopOnNonFiniteLoss(L.Callback):
    """Stop once a training loss is NaN or infinite, before any later checkpoint is written,
    so the last good one is kept.

    Reading a loss back is a host sync on a GPU, so each step only notes on the device whether
    its loss was finite; the note is read on the steps that log (every
    ``trainer.log_every_n_steps``, and the first) and before every checkpoint is saved."""

    def __init__(self):
        self._non_finite: Tensor | None = None  # any loss since the last check, on the device
        self._loss: Tensor | None = None  # the latest loss, for the message
        self._checked_step = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        self._loss = loss.detach()
        bad = ~torch.isfinite(self._loss).all()
        self._non_finite = bad if self._non_finite is None else self._non_finite | bad
        if is_logging_step(trainer, trainer.global_step):  # counted after this step
            self.check(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self.check(trainer)

    def check(self, trainer) -> None:
        if self._non_finite is None:
            return
        found, self._non_finite = bool(self._non_finite), None
        since, self._checked_step = self._checked_step, trainer.global_step
        if found:
            best = getattr(trainer.checkpoint_callback, "best_model_path", "") or "none yet"
            raise TrainingError(
                f"training loss became {float(self._loss)} (non-finite since step {since}; now "
                f"epoch {trainer.current_epoch}, step {trainer.global_step}); stopped. Last good "
                f"checkpoint: {best}. Lower model.optimizer.lr, keep trainer.gradient_clip_val "
                "on, or check the data"
            )


class CheckpointOnInterrupt(L.Callback):
    """On Ctrl+C (SIGINT) or SIGTERM, write ``last.ckpt`` so ``ckpt_path=last`` resumes here.

    Single-process runs only: under DDP the other ranks may already be gone, so a collective
    save could hang; there the checkpoints written at each validation are what resume uses."""

    def __init__(self, dirpath: str, filename: str = "last.ckpt"):
        self.path = Path(dirpath) / filename

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt | SIGTERMException):
            return
        if trainer.world_size > 1 or trainer.state.fn != TrainerFn.FITTING:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(self.path)
        log.warning("interrupted: checkpoint written to %s; resume with ckpt_path=%s",
                    self.path, self.path)
