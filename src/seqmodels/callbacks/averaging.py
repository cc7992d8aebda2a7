"""Exponential moving averages of the weights whose decay warms up, for Lightning's
``WeightAveraging`` callback (``configs/callbacks/weight_averaging.yaml``).

torch's ``get_ema_multi_avg_fn(decay)`` starts the average at the weights of the first step and
decays it by ``decay`` from then on: with decay 0.998 the first step's weights, still close to
the random initialisation, keep ``0.998 ** n`` of the average after ``n`` more steps (0.20
after 800 steps, three SST-2 epochs), and a short run's average can be worse than its last
weights. With ``warmup=True`` the decay of the ``n``-th update is, as in TensorFlow's
``ExponentialMovingAverage(num_updates=...)``::

    min(decay, (1 + n) / (10 + n))

so the average covers about the last tenth of the steps so far until that reaches
``1 / (1 - decay)`` steps (n = 4490 for 0.998), then it is the plain EMA.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def warmup_decay(decay: float, num_averaged: int, warmup: bool = True) -> float:
    """The decay of the update that follows ``num_averaged`` averaged models (1, 2, ...)."""
    if not warmup:
        return decay
    return min(decay, (1.0 + num_averaged) / (10.0 + num_averaged))


def _check(decay: float) -> None:
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"weight averaging: decay={decay} is not in [0, 1]")


def ema_multi_avg_fn(decay: float = 0.998, warmup: bool = True) -> Callable:
    """``AveragedModel(multi_avg_fn=...)``: one in-place foreach lerp over all tensors a step,
    like ``torch.optim.swa_utils.get_ema_multi_avg_fn`` (the same with ``warmup=False``).

    The update count is the ``AveragedModel``'s ``n_averaged`` (saved in checkpoints, so a
    resumed run continues the warm-up where it was). It lives on the device, so it is read
    once, at the first update, and counted on the host from then on: no sync a step.
    """
    _check(decay)
    count: list[int] = []  # the updates so far, once read

    @torch.no_grad()
    def update(averaged: Sequence[Tensor], current: Sequence[Tensor],
               num_averaged: Tensor) -> None:
        if count:
            count[0] += 1
        else:
            count.append(int(num_averaged))
        step_decay = warmup_decay(decay, count[0], warmup)
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - step_decay)
        else:
            for p_avg, p_now in zip(averaged, current, strict=True):
                p_avg.copy_(p_avg * step_decay + p_now * (1.0 - step_decay))

    return update


def ema_avg_fn(decay: float = 0.998, warmup: bool = True) -> Callable:
    """``AveragedModel(avg_fn=...)``: the same average, one parameter at a time into a new
    tensor (``get_ema_avg_fn`` with ``warmup=False``); slower, kept for comparisons."""
    _check(decay)

    @torch.no_grad()
    def average(p_avg: Tensor, p_now: Tensor, num_averaged: Tensor) -> Tensor:
        step_decay = warmup_decay(decay, int(num_averaged), warmup)
        return step_decay * p_avg + (1.0 - step_decay) * p_now

    return average
