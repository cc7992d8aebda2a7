"""Per-step costs of a Lightning run outside the model's own arithmetic, trimmed.

On a CPU an SST-2 step takes about 18 ms, so every 0.2 ms of bookkeeping is a point of
throughput (docs/benchmarks.md, section 1, has the measurements). Each piece here does what
Lightning's own does, with less work per step.
"""

import contextlib
import gc
from collections.abc import Iterator

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden

_NOTHING = contextlib.nullcontext()


class SilentProfiler(PassThroughProfiler):
    """Lightning's default when no profiler is chosen, without its cost: the pass-through
    profiler builds a generator context manager for each of the ~150 hook calls of a step
    (about 0.2 ms); this one hands back one shared no-op context."""

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return _NOTHING


class SteadyRichProgressBar(RichProgressBar):
    """Lightning's rich progress bar, moved on and given its metrics every ``refresh_rate``
    batches (and at an epoch's last batch) rather than after each one: gathering the logged
    metrics costs about 0.15 ms, and the bar's own update takes a lock and a timing sample."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.is_disabled:
            return
        if self.train_progress_bar_id is None:  # resumed in the middle of an epoch
            self._initialize_train_progress_bar_id()
        done = batch_idx + 1
        if done % max(self.refresh_rate, 1) == 0 or done == self.total_train_batches:
            self._update(self.train_progress_bar_id, done)
            self._update_metrics(trainer, pl_module)
            self.refresh()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.is_disabled and self.train_progress_bar_id is not None:  # an early stop
            done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            self._update(self.train_progress_bar_id, done)
        super().on_train_epoch_end(trainer, pl_module)


BACKWARD_HOOKS = ("on_before_backward", "on_after_backward")
STEP_HOOKS = ("on_before_optimizer_step",)


def dispatch_is_idle(trainer: L.Trainer, module: L.LightningModule, hooks: tuple[str, ...],
                     module_hooks: tuple[str, ...] = ()) -> bool:
    """Whether Lightning's dispatch around a backward pass or an optimizer step would do
    nothing in this run but call torch (and the module's own hook): one device (DDP prepares
    its reducer in the strategy's hooks), no loss scaling (16-bit mixed precision scales the
    loss and steps through its scaler), no callback overriding any of ``hooks`` and the module
    none of ``module_hooks``. The dispatch (strategy, precision plugin, each callback's hooks)
    costs about 0.1 ms a backward and 0.1 ms a step; where it is idle it can be skipped."""
    precision = trainer.precision_plugin
    plain_precision = type(precision) is Precision or (
        type(precision) is MixedPrecision and precision.scaler is None)
    callback_hooked = any(is_overridden(hook, callback, L.Callback)
                          for callback in trainer.callbacks for hook in hooks)
    module_hooked = any(is_overridden(hook, module, L.LightningModule) for hook in module_hooks)
    return (type(trainer.strategy) is SingleDeviceStrategy and plain_precision
            and module._fabric is None and not callback_hooked and not module_hooked)


@contextlib.contextmanager
def frozen_garbage() -> Iterator[None]:
    """Move every object alive now (model, datasets, configs, Lightning's machinery) out of
    the garbage collector's reach for the duration: they live as long as the run, and each
    full collection would otherwise walk all of them (0.2 s a time, every few epochs)."""
    if gc.get_freeze_count():  # someone froze objects already: theirs to thaw, leave it be
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
