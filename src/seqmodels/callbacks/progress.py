"""What a run shows of its progress: one line per validation (for logs and consoles that are
not terminals), and a progress bar that reads values back only when they change.

A progress bar draws nothing useful into a file or a pipe (``make train > out.log``, a batch
job), so there each validation prints one line: epoch, the monitored metric, the best so far
and the time. ``train.log`` always gets the line; a terminal, which has the progress bar, does
not."""

import logging
import math
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from lightning.pytorch.utilities import rank_zero_only

from seqmodels.config import record_in_log_files
from seqmodels.training.step_costs import is_logging_step

log = logging.getLogger(__name__)


def console_is_terminal() -> bool:
    return sys.stdout.isatty()


def format_duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class EpochSummary(L.Callback):
    """``epoch 3/29: val/acc 0.8123 (best 0.8150 at epoch 2); val/loss 0.4321 | 21.3 s, 1:05 in
    all`` after every validation of a fit (the sanity check excluded)."""

    def __init__(self, monitor: str | None = None, mode: str = "max"):
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r} is not one of ['min', 'max']")
        self.monitor = monitor
        self.mode = mode
        self.best: tuple[float, int] | None = None  # (value, epoch)
        self._fit_start = self._epoch_start = time.monotonic()

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict.get("best")

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = self._epoch_start = time.monotonic()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.monotonic()

    def improves(self, value: float) -> bool:
        if self.best is None or math.isnan(self.best[0]):
            return not math.isnan(value)
        return value > self.best[0] if self.mode == "max" else value < self.best[0]

    def line(self, trainer: L.Trainer) -> str:
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()
                   if name.startswith("val/") and not name.endswith("_best")}
        epoch = trainer.current_epoch
        parts = []
        if self.monitor in metrics:
            value = metrics.pop(self.monitor)
            if self.improves(value):
                self.best = (value, epoch)
            best_value, best_epoch = self.best or (value, epoch)
            parts.append(f"{self.monitor} {value:.4f} (best {best_value:.4f} at epoch "
                         f"{best_epoch})")
        parts += [f"{name} {value:.4f}" for name, value in sorted(metrics.items())]
        now = time.monotonic()
        timing = (f"{now - self._epoch_start:.1f} s, {format_duration(now - self._fit_start)} "
                  "in all")
        # Counted from 0 like checkpoint names; "/29" is the last epoch, as Lightning's bar says.
        last = trainer.max_epochs - 1 if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        return f"epoch {epoch}/{last}: " + "; ".join(parts) + f" | {timing}"

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        message = self.line(trainer)
        if console_is_terminal():
            record_in_log_files(message, logging.INFO, log)
        else:
            log.info(message)


class SteadyRichProgressBar(RichProgressBar):
    """Lightning's rich progress bar, which reads the logged metrics back after every batch:
    each read is a host sync on a GPU. During training this one
    reads them on the steps that log new values (every ``trainer.log_every_n_steps``, and the
    first), which is when they change, and shows the numbers it read until then. Through the
    bar's public ``get_metrics``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._shown: dict | None = None

    def get_metrics(self, trainer, pl_module) -> dict:
        fresh = is_logging_step(trainer, trainer.global_step)
        if trainer.state.stage != RunningStage.TRAINING or fresh or self._shown is None:
            self._shown = super().get_metrics(trainer, pl_module)
        return self._shown
