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
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor
from torch.optim.swa_utils import AveragedModel


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

    ``num_averaged`` is the count of averages so far: ``HostCountedAverage`` passes it as a
    host integer, so nothing is read back from the device (torch's ``AveragedModel`` passes a
    device tensor, read here once per update and per dtype group).
    """
    _check(decay)

    @torch.no_grad()
    def update(averaged: Sequence[Tensor], current: Sequence[Tensor],
               num_averaged: Tensor | int) -> None:
        step_decay = warmup_decay(decay, int(num_averaged), warmup)
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


class HostCountedAverage(AveragedModel):
    """torch's ``AveragedModel`` whose update never waits on the host.

    torch's ``update_parameters`` tests its device-side count (``n_averaged == 0``, then
    ``> 0``) on every update: two host syncs a training step on a GPU. Here the count is read
    once (at the first update, and again after a checkpoint is loaded) and kept on the host;
    the device copy still goes up by one each update, in place, so checkpoints record it as
    torch's does. The first update copies the weights, later ones call ``multi_avg_fn`` once
    per device and dtype (``ema_multi_avg_fn``: one foreach lerp)."""

    host_count: int | None = None

    def update_parameters(self, model: torch.nn.Module) -> None:
        if self.multi_avg_fn is None:
            raise ValueError("weight averaging: HostCountedAverage needs a multi_avg_fn "
                             "(seqmodels.callbacks.averaging.ema_multi_avg_fn)")
        if self.host_count is None:
            self.host_count = int(self.n_averaged)
        averaged, current = list(self.module.parameters()), list(model.parameters())
        if self.use_buffers:
            averaged += list(self.module.buffers())
            current += list(model.buffers())
        groups: dict[tuple, tuple[list[Tensor], list[Tensor]]] = {}
        for p_avg, p_now in zip(averaged, current, strict=True):
            mine, theirs = groups.setdefault((p_avg.device, p_avg.dtype), ([], []))
            mine.append(p_avg.detach())
            theirs.append(p_now.detach().to(p_avg.device))
        with torch.no_grad():
            for mine, theirs in groups.values():
                if self.host_count == 0:
                    torch._foreach_copy_(mine, theirs)
                else:
                    self.multi_avg_fn(mine, theirs, self.host_count)
            if not self.use_buffers:  # buffers follow the model, as in torch's
                for b_avg, b_now in zip(self.module.buffers(), model.buffers(), strict=True):
                    b_avg.detach().copy_(b_now.detach().to(b_avg.device))
            self.n_averaged.add_(1)
        self.host_count += 1

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self.host_count = None  # read the loaded count at the next update
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


class EMAWeightAveraging(WeightAveraging):
    """Lightning's ``WeightAveraging`` (validation, checkpoints and the end of training use
    the average), with the average kept by ``HostCountedAverage``: no host sync a step.

    Lightning builds its ``AveragedModel`` in ``setup`` and keeps it in ``_average_model``,
    with no public way to choose the class. That private name is read here only, and
    ``tests/test_weight_averaging.py`` fails if it moves; the class is swapped in place (no
    state is added by the subclass, so the object Lightning built is used as it is)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        average = getattr(self, "_average_model", None)
        if stage == "fit":
            if not isinstance(average, AveragedModel):
                raise RuntimeError("Lightning's WeightAveraging no longer keeps its average in "
                                   "_average_model: update seqmodels.callbacks.averaging")
            average.__class__ = HostCountedAverage
