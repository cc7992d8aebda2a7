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


def progress_line(trainer: L.Trainer, done: int, seconds: float) -> str:
    """``epoch 2/29: batch 120/217, 7.9 batches/s, 0:12 left in the epoch``."""
    total = trainer.num_training_batches
    rate = done / seconds if seconds > 0 else 0.0
    last = trainer.max_epochs - 1 if trainer.max_epochs and trainer.max_epochs > 0 else "?"
    known = isinstance(total, int) and rate > 0
    left = f", {format_duration((total - done) / rate)} left in the epoch" if known else ""
    of = f"/{total}" if isinstance(total, int) else ""
    return (f"epoch {trainer.current_epoch}/{last}: batch {done}{of}, {rate:.1f} batches/s"
            f"{left}")


class EpochSummary(L.Callback):
    """``epoch 3/29: val/acc 0.8123 (best 0.8150 at epoch 2); val/loss 0.4321 | 21.3 s, 1:05 in
    all`` after every validation of a fit (the sanity check excluded). A validation inside an
    epoch (``trainer.val_check_interval`` < 1, as the char LM does) says so:
    ``epoch 3/29, batch 120/240: ...``; its time counts from the epoch's start."""

    def __init__(self, monitor: str | None = None, mode: str = "max"):
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r} is not one of ['min', 'max']")
        self.monitor = monitor
        self.mode = mode
        self.best: tuple[float, int] | None = None  # (value, epoch)
        self._fit_start = self._epoch_start = time.monotonic()
        self._batches = 0  # of this epoch, done

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict.get("best")

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = self._epoch_start = time.monotonic()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.monotonic()
        self._batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batches = batch_idx + 1

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
        total = trainer.num_training_batches
        inside = isinstance(total, int) and 0 < self._batches < total
        where = f", batch {self._batches}/{total}" if inside else ""
        return f"epoch {epoch}/{last}{where}: " + "; ".join(parts) + f" | {timing}"

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
    bar's public ``get_metrics``.

    Where the console is not a terminal (a file, a pipe, a batch job) the bar draws nothing
    useful: there it is off, and a line says how the epoch goes every ``line_every_s``
    seconds instead (batches done, their rate, the time the epoch has left); a short epoch
    prints none, its epoch line is enough.
    """

    def __init__(self, *args, line_every_s: float = 30.0, **kwargs):
        super().__init__(*args, **kwargs)
        self._shown: dict | None = None
        self.line_every_s = line_every_s
        self._lines = not console_is_terminal()
        if self._lines:
            self.disable()
        self._epoch_start = self._last_line = time.monotonic()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._epoch_start = self._last_line = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        now = time.monotonic()
        if (not self._lines or not trainer.is_global_zero
                or now - self._last_line < self.line_every_s):
            return
        self._last_line = now
        log.info(progress_line(trainer, batch_idx + 1, now - self._epoch_start))

    def get_metrics(self, trainer, pl_module) -> dict:
        fresh = is_logging_step(trainer, trainer.global_step)
        if trainer.state.stage != RunningStage.TRAINING or fresh or self._shown is None:
            self._shown = super().get_metrics(trainer, pl_module)
        return self._shown
