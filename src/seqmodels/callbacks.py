"""Callbacks that keep a run's work safe: stop on a non-finite loss before it spoils the
checkpoints, and write a checkpoint when the run is interrupted."""

import logging
import math
from pathlib import Path

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from seqmodels.errors import TrainingError

log = logging.getLogger(__name__)


class StopOnNonFiniteLoss(L.Callback):
    """Stop at the first training step whose loss is NaN or infinite.

    Raising at once means no later checkpoint is written, so the last good one is kept."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach())
        if not math.isfinite(value):
            best = getattr(trainer.checkpoint_callback, "best_model_path", "") or "none yet"
            raise TrainingError(
                f"training loss became {value} at epoch {trainer.current_epoch}, step "
                f"{trainer.global_step}; stopped. Last good checkpoint: {best}. Lower "
                "model.optimizer.lr, keep trainer.gradient_clip_val on, or check the data"
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
