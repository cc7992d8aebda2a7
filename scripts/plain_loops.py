"""Hand-written PyTorch training loops for ``scripts/benchmark.py``: the script a user would write
without the framework, run on the framework's own model classes and batches.

An ``Arm`` is one way of training (a model, its optimizers, where its batches come from, how
many threads). ``ShadowArms`` is a Lightning callback that runs plain-loop arms in the same
process as a ``seqmodels.cli.train.train(cfg)`` run, one epoch of each arm per Lightning epoch,
before or after Lightning's own epoch in turn: every ratio is then taken in one run, with the
machine in the same state for both sides.

The pieces live in ``scripts/benchmarks/``: ``steps`` (one batch), ``measure`` (timing on a
shared machine), ``arms`` (an arm, building one beside a run) and ``shadow`` (``ShadowArms``).
This module gathers them under the one name that configs (``plain_loops.ShadowArms``), tests and
the device check use.
"""

from benchmarks.arms import (  # noqa: F401
    AVERAGING,
    Arm,
    ArmSpec,
    alternate,
    configured_averaging,
    configured_optimizers,
    copy_model,
    dev_accuracy,
    epoch_loader,
)
from benchmarks.measure import (  # noqa: F401
    DISTURBED,
    CpuWatch,
    Measurement,
    busy_cpu_seconds,
    clean_rounds,
    steady_tokens_per_second,
)
from benchmarks.shadow import PLANS, ShadowArms  # noqa: F401
from benchmarks.steps import (  # noqa: F401
    OPTIMIZERS,
    batch_tokens,
    clip_grad_norm,
    make_optimizers,
    set_variable_length,
    task_loss,
)
