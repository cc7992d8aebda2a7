"""Per-step costs of a Lightning run outside the model's own arithmetic, trimmed.

On a CPU a short step makes fixed bookkeeping a visible share of throughput
(docs/benchmarks.md, section 1, has the measurements). Each piece here does what Lightning's
own does, with less work per step, through public interfaces.
"""

import contextlib
import gc
from collections.abc import Iterator

from lightning.pytorch.profilers import PassThroughProfiler

_NOTHING = contextlib.nullcontext()


def is_logging_step(trainer, steps_done: int) -> bool:
    """Whether the optimizer step that brings a run to ``steps_done`` steps logs: Lightning logs
    every ``trainer.log_every_n_steps``, and seqmodels the first step too (a number on the
    progress bar from the start). Only there are values read back from the device."""
    return steps_done <= 1 or steps_done % max(trainer.log_every_n_steps, 1) == 0


class SilentProfiler(PassThroughProfiler):
    """Lightning's default when no profiler is chosen, without its cost: the pass-through
    profiler builds a generator context manager for each hook call of a step; this one hands
    back one shared no-op context."""

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return _NOTHING


@contextlib.contextmanager
def frozen_garbage() -> Iterator[None]:
    """Move every object alive now (model, datasets, configs, Lightning's machinery) out of
    the garbage collector's reach for the duration: they live as long as the run, and each
    full collection would otherwise walk all of them, every few epochs."""
    if gc.get_freeze_count():  # someone froze objects already: theirs to thaw, leave it be
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
