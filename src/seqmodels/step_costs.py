"""Per-step costs of a Lightning run outside the model's own arithmetic, trimmed.

On a CPU an SST-2 step takes about 18 ms, so every 0.2 ms of bookkeeping is a point of
throughput (docs/benchmarks.md, section 1, has the measurements). Each piece here does what
Lightning's own does, with less work per step, through public interfaces.
"""

import contextlib
import gc
from collections.abc import Iterator

from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.trainer.states import RunningStage

_NOTHING = contextlib.nullcontext()


class SilentProfiler(PassThroughProfiler):
    """Lightning's default when no profiler is chosen, without its cost: the pass-through
    profiler builds a generator context manager for each of the ~150 hook calls of a step
    (about 0.2 ms); this one hands back one shared no-op context."""

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return _NOTHING


class SteadyRichProgressBar(RichProgressBar):
    """Lightning's rich progress bar, which reads the logged metrics back after every batch:
    each read is a host sync on a GPU (and about 0.15 ms on a CPU). During training this one
    reads them on the steps that log new values (every ``trainer.log_every_n_steps``, and the
    first), which is when they change, and shows the numbers it read until then. Through the
    bar's public ``get_metrics``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._shown: dict | None = None

    def get_metrics(self, trainer, pl_module) -> dict:
        step = trainer.global_step
        fresh = step <= 1 or step % max(trainer.log_every_n_steps, 1) == 0
        if trainer.state.stage != RunningStage.TRAINING or fresh or self._shown is None:
            self._shown = super().get_metrics(trainer, pl_module)
        return self._shown


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
