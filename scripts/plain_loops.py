"""Hand-written PyTorch training loops for ``scripts/benchmark.py``: the script a user would write
without the framework, run on the framework's own model classes and batches.

An ``Arm`` is one way of training (a model, its optimizers, where its batches come from, how
many threads). ``ShadowArms`` is a Lightning callback that runs plain-loop arms in the same
process as a ``seqmodels.cli.train.train(cfg)`` run, one epoch of each arm per Lightning epoch,
before or after Lightning's own epoch in turn: every ratio is then taken in one run, with the
machine in the same state for both sides.
"""

import copy
import os
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import WeightAveraging
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from seqmodels.callbacks.averaging import ema_avg_fn, ema_multi_avg_fn
from seqmodels.config import build
from seqmodels.data.batching import IGNORE_INDEX, Batch
from seqmodels.models.charlm import detach_state
from seqmodels.models.encoder import RNNEncoder

OPTIMIZERS = ("adam", "foreach", "fused", "sparse")


# -- what a plain loop does with one batch -------------------------------------------------------
def batch_tokens(batch: Batch) -> int:
    """Real tokens (characters for the language model) in a batch; padding does not count."""
    return int(batch.lengths.sum())


def task_loss(model: nn.Module, batch: Batch, state=None) -> tuple[Tensor, object]:
    """The training loss of one batch, written from each model's public methods, and the
    recurrent state to carry into the next batch (language model only)."""
    if model.task == "classification":
        # The classifier's own objective: cross-entropy, with label smoothing, character
        # features and the adversarial loss where the experiment sets them.
        return model.training_objective(batch), None
    if model.task == "tagging":
        logits = model(batch.tokens, batch.lengths, batch.chars)  # (B, T, C)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(),
                               ignore_index=IGNORE_INDEX)
        return loss, None
    if model.task == "language_model":
        logits, state = model(batch.tokens, state)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten()), detach_state(state)
    raise ValueError(f"no plain loop for task {model.task!r}")


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (what Lightning's ``gradient_clip_val`` calls), which
    also takes sparse gradients: torch's own refuses them. A sparse gradient is coalesced
    first, since its repeated rows add up."""
    parameters = [p for p in parameters if p.grad is not None]
    if not any(p.grad.is_sparse for p in parameters):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    grads = []
    for p in parameters:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            grads.append(p.grad._values())
        else:
            grads.append(p.grad)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale)
    return total


def make_optimizers(model: nn.Module, kind: str, lr: float, weight_decay: float = 0.0,
                    eps: float = 1e-8) -> list[torch.optim.Optimizer]:
    """Adam in one of its CPU implementations.

    ``adam``: torch's default on CPU (a Python loop over the parameters); ``foreach``: one
    multi-tensor kernel per operation; ``fused``: one fused kernel; ``sparse``: ``SparseAdam``
    for the embedding tables that have sparse gradients (it updates only the rows a batch
    used: "lazy" Adam, not the same numbers as dense Adam after the first step) and fused Adam
    for the rest. SparseAdam also adds ``eps`` before its bias correction, not after, which
    weighs it ~30x more in the first steps (it matters only where gradients are near ``eps``).
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer {kind!r} is not one of {OPTIMIZERS}")
    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "sparse":
        sparse_ids = {id(m.weight) for m in model.modules()
                      if isinstance(m, nn.Embedding) and m.sparse}
        if not sparse_ids:
            raise ValueError("optimizer 'sparse' needs an nn.Embedding with sparse=True")
        if weight_decay:
            raise ValueError("SparseAdam has no weight decay")
        sparse = [p for p in params if id(p) in sparse_ids]
        dense = [p for p in params if id(p) not in sparse_ids]
        return [torch.optim.SparseAdam(sparse, lr=lr, eps=eps),
                torch.optim.Adam(dense, lr=lr, eps=eps, fused=True)]
    flags = {"adam": {"foreach": False, "fused": False}, "foreach": {"foreach": True},
             "fused": {"fused": True}}[kind]
    return [torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, eps=eps, **flags)]


def set_variable_length(model: nn.Module, strategy: str) -> nn.Module:
    """Switch every ``RNNEncoder`` in the model (a tagger's character encoder too) to
    ``padded`` or ``packed``; the two give identical results (tests/test_fast_paths.py)."""
    for module in model.modules():
        if isinstance(module, RNNEncoder):
            module.variable_length = strategy
    return model


# -- measuring on a shared machine --------------------------------------------------------------
# A repetition during which other processes kept more than this share of a core busy is
# "disturbed": on 2 cores one more busy thread can slow ours several times over.
DISTURBED = 0.2


def busy_cpu_seconds() -> float:
    """CPU seconds every process on the machine has spent busy since boot (Linux
    ``/proc/stat``); 0 where there is no such file (then nothing counts as disturbed)."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


class CpuWatch:
    """How busy other processes kept the CPUs while we measured, and how many minor page
    faults this process took."""

    def __init__(self):
        self.wall = time.perf_counter()
        self.busy = busy_cpu_seconds()
        self.own = _own_cpu_seconds()
        self.minor_faults = _minor_faults()

    def faults(self) -> int:
        return _minor_faults() - self.minor_faults

    def others(self) -> float:
        """Cores' worth of CPU (0.5 = half a core) used by other processes since the start."""
        wall = time.perf_counter() - self.wall
        if wall <= 0 or self.busy == 0.0:
            return 0.0
        other = (busy_cpu_seconds() - self.busy) - (_own_cpu_seconds() - self.own)
        return max(0.0, other) / wall


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


# -- arms --------------------------------------------------------------------------------------
@dataclass
class Measurement:
    seconds: float
    tokens: int
    batches: int
    others: float = 0.0  # CPU other processes used meanwhile, in cores (see CpuWatch)
    faults: int = 0  # minor page faults meanwhile (fresh memory the kernel had to map)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def disturbed(self) -> bool:
        return self.others > DISTURBED


@dataclass
class Arm:
    """One way of training, run one epoch (or its first ``max_batches``) at a time.

    :param batches: epoch -> that epoch's batches, the same for every arm that shares a loader.
    :param clip: gradient-norm clipping, as the trainer's ``gradient_clip_val`` does.
    :param threads: ``torch.set_num_threads`` for this arm's epochs (None: leave as is).
    :param averaged: a moving average of the weights, updated after every step (what the
        ``weight_averaging`` callback keeps); it is the model that gets evaluated.
    """

    name: str
    model: nn.Module
    optimizers: list[torch.optim.Optimizer]
    batches: Callable[[int], Iterable[Batch]]
    clip: float | None = 5.0
    threads: int | None = None
    averaged: AveragedModel | None = None
    epochs: list[Measurement] = field(default_factory=list)

    @property
    def evaluated_model(self) -> nn.Module:
        return self.model if self.averaged is None else self.averaged.module

    def run_epoch(self, epoch: int, max_batches: int | None = None) -> Measurement:
        previous_threads = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.model.train()
        state, tokens, count = None, 0, 0
        watch = CpuWatch()
        start = time.perf_counter()
        for batch in self.batches(epoch):
            if max_batches is not None and count >= max_batches:
                break
            for optimizer in self.optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss, state = task_loss(self.model, batch, state)
            loss.backward()
            if self.clip is not None:
                clip_grad_norm(params, self.clip)
            for optimizer in self.optimizers:
                optimizer.step()
            if self.averaged is not None:
                self.averaged.update_parameters(self.model)
            tokens += batch_tokens(batch)
            count += 1
        measurement = Measurement(time.perf_counter() - start, tokens, count, watch.others(),
                                  watch.faults())
        torch.set_num_threads(previous_threads)
        self.epochs.append(measurement)
        return measurement


def clean_rounds(arms: list, warmup: int = 1) -> list[int]:
    """Indices of the repetitions after the warm-up in which no arm was disturbed."""
    count = min(len(arm.epochs) for arm in arms)
    return [i for i in range(warmup, count) if not any(arm.epochs[i].disturbed for arm in arms)]


def steady_tokens_per_second(epochs: list[Measurement], warmup: int = 1) -> float:
    """The median tokens/s of the undisturbed epochs after the first ``warmup`` ones (all of
    them after the warm-up if every one was disturbed)."""
    kept = epochs[warmup:] or epochs
    return median(m.tokens_per_second for m in [m for m in kept if not m.disturbed] or kept)


def alternate(arms: list[Arm], reps: int, max_batches: int | None = None,
              warmup: int = 1) -> None:
    """Run a warm-up and ``reps`` repetitions of every arm, interleaved, the order reversed
    every other round (A B C, C B A, ...) so that no arm always follows the same neighbour.
    Rounds that other processes disturbed are run again, up to ``reps`` more rounds."""
    epoch = 0
    while epoch < warmup + reps or (len(clean_rounds(arms, warmup)) < reps
                                    and epoch < warmup + 2 * reps):
        for arm in arms if epoch % 2 == 0 else arms[::-1]:
            arm.run_epoch(epoch, max_batches)
        epoch += 1


@torch.no_grad()
def dev_accuracy(model: nn.Module, batches: Iterable[Batch]) -> float:
    """Accuracy over sentences (classification) or real tokens (tagging)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for batch in batches:
        if model.task == "classification":
            preds = model(batch.tokens, batch.lengths).argmax(dim=1)  # (B,)
            correct += int((preds == batch.targets).sum())
            total += len(batch)
        else:
            preds = model(batch.tokens, batch.lengths, batch.chars).argmax(dim=2)  # (B, T)
            real = batch.targets != IGNORE_INDEX
            correct += int((preds[real] == batch.targets[real]).sum())
            total += int(real.sum())
    model.train(was_training)
    return correct / max(total, 1)


# -- building arms beside a framework run --------------------------------------------------------
def epoch_loader(datamodule, bucketing: bool | None = None) -> Callable[[int], Iterable[Batch]]:
    """epoch -> the datamodule's training batches of that epoch (the order Lightning's run
    draws in the same epoch); ``bucketing`` overrides the datamodule's setting."""
    if bucketing is not None and bucketing != getattr(datamodule, "bucketing", bucketing):
        datamodule = copy.copy(datamodule)  # shares the encoded splits
        datamodule.bucketing = bucketing

    def batches(epoch: int) -> Iterable[Batch]:
        loader = datamodule.train_dataloader()
        sampler = getattr(loader, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        return loader

    return batches


def copy_model(cfg, datamodule, reference: nn.Module) -> nn.Module:
    """A new model of the configured class with the reference's weights."""
    model = build(cfg.model, _convert_="all", **datamodule.model_sizes())
    model.load_state_dict(reference.state_dict())
    model.vocabs = datamodule.vocabs
    return model


def configured_optimizers(model) -> list[torch.optim.Optimizer]:
    """The optimizer the configured partial builds (what ``configure_optimizers`` hands
    Lightning). LR schedulers are left out: a plain loop would step one in microseconds, and
    a per-step schedule needs a trainer to count its steps."""
    factory = model.optimizer_factory or torch.optim.Adam
    return [factory(params=[p for p in model.parameters() if p.requires_grad])]


AVERAGING = ("as configured", "foreach", "per parameter", "none")


def configured_averaging(cfg, model: nn.Module,
                         mode: str = "as configured") -> AveragedModel | None:
    """The moving average of the weights that the run's ``weight_averaging`` callback keeps
    (Lightning's ``WeightAveraging``: an ``AveragedModel`` updated after every step), or None.

    :param mode: ``as configured``; the configured EMA decay and warm-up through ``foreach``:
        ``seqmodels.callbacks.averaging.ema_multi_avg_fn`` (one in-place ``_foreach_lerp_`` over all
        tensors) or ``per parameter``: ``ema_avg_fn`` (a new tensor per parameter per step);
        ``none``: no average.
    """
    if mode not in AVERAGING:
        raise ValueError(f"averaging {mode!r} is not one of {AVERAGING}")
    node = (cfg.get("callbacks") or {}).get("weight_averaging")
    if not node or mode == "none":
        return None
    kwargs = {key: build(value) if isinstance(value, DictConfig) and "_target_" in value
              else value for key, value in node.items() if key not in ("_target_", "device")}
    if mode in ("foreach", "per parameter"):
        fn = node.get("avg_fn") or node.get("multi_avg_fn")
        decay, warmup = fn.decay, fn.get("warmup", False)
        kwargs = {"use_buffers": node.get("use_buffers", True),
                  **({"multi_avg_fn": ema_multi_avg_fn(decay, warmup)} if mode == "foreach"
                     else {"avg_fn": ema_avg_fn(decay, warmup)})}
    return AveragedModel(model, **{"use_buffers": True, **kwargs})


@dataclass
class ArmSpec:
    """How a plain-loop arm differs from the framework run it shadows (None: the same)."""

    name: str
    bucketing: bool | None = None
    variable_length: str | None = None
    optimizer: str | None = None
    averaging: str = "as configured"

    def build(self, cfg, datamodule, reference: nn.Module) -> Arm:
        model = copy_model(cfg, datamodule, reference)
        if self.optimizer == "sparse":
            model.embeddings.trained.sparse = True  # the word embedding's gradient becomes sparse
        if self.variable_length is not None:
            set_variable_length(model, self.variable_length)
        if self.optimizer is None:
            optimizers = configured_optimizers(model)
        else:
            optimizers = make_optimizers(model, self.optimizer, cfg.model.optimizer.lr,
                                         cfg.model.optimizer.get("weight_decay", 0.0))
        return Arm(self.name, model, optimizers, epoch_loader(datamodule, self.bucketing),
                   clip=cfg.trainer.get("gradient_clip_val"),
                   averaged=configured_averaging(cfg, model, self.averaging))


# Plans for ShadowArms, by name: the benchmark fills this before it calls train(cfg).
PLANS: dict[str, dict] = {}


class ShadowArms(L.Callback):
    """Time Lightning's training epochs and run plain-loop arms beside them.

    Lightning's epoch is timed from ``on_train_epoch_start`` to the end of its last training
    batch: its dataloader, forward, backward, optimizer step, logging, progress bar and every
    callback's per-batch hooks count, while validation and checkpointing (which come after the
    last batch) do not; a validation inside the epoch is taken out. The shadow arms run each
    epoch's batches after Lightning's epoch on even epochs and before it on odd ones.

    The plan (``PLANS[plan]``): ``cfg``, ``specs`` (ArmSpec list), ``evaluate`` (measure every
    arm's dev accuracy after every epoch), ``clean_reps`` (stop once this many epochs after
    the first were undisturbed by other processes, see ``CpuWatch``). Results land in the plan:
    ``arms`` (the Lightning arm first), ``accuracy``.
    """

    def __init__(self, plan: str):
        self.plan = PLANS[plan]
        self.lightning = Arm("seqmodels-train", None, [], batches=lambda epoch: [])
        self.shadows: list[Arm] = []
        self._start = 0.0
        self._tokens = 0
        self._timing = False
        self._validation_start = 0.0
        self._watch = CpuWatch()

    def on_train_start(self, trainer, pl_module) -> None:
        self.lightning.model = pl_module
        cfg, datamodule = self.plan["cfg"], trainer.datamodule
        # Built now, from the weights Lightning starts from, before its first step.
        self.shadows = [spec.build(cfg, datamodule, pl_module) for spec in self.plan["specs"]]
        self.plan["arms"] = [self.lightning, *self.shadows]

    def _run_shadows(self, trainer) -> None:
        for arm in self.shadows:
            arm.run_epoch(trainer.current_epoch, self._max_batches(trainer))

    @staticmethod
    def _max_batches(trainer) -> int:
        return int(trainer.num_training_batches)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch % 2 == 1:
            self._run_shadows(trainer)
        self._tokens = 0
        self._timing = True
        self._watch = CpuWatch()
        self._start = time.perf_counter()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._timing:  # a validation inside the epoch (val_check_interval < 1) is not training
            self._start += time.perf_counter() - self._validation_start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._tokens += batch_tokens(batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == self._max_batches(trainer):
            self._timing = False
            seconds = time.perf_counter() - self._start
            self.lightning.epochs.append(Measurement(seconds, self._tokens, batch_idx + 1,
                                                     self._watch.others(),
                                                     self._watch.faults()))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch % 2 == 0:
            self._run_shadows(trainer)
        wanted = self.plan.get("clean_reps")
        arms = [self.lightning, *self.shadows]
        if wanted is not None and len(clean_rounds(arms)) >= wanted:
            trainer.should_stop = True  # enough undisturbed epochs (Lightning keeps min_epochs)
        if self.plan.get("evaluate"):
            self._evaluate(trainer)

    def _evaluate(self, trainer) -> None:
        """Every arm's dev accuracy after this epoch: ``plan["accuracy"][arm] = [(last
        weights, averaged weights or None), ...]``, one pair per epoch."""
        averaging = [c for c in trainer.callbacks if isinstance(c, WeightAveraging)]
        if averaging:  # Lightning validates (and finally keeps) the averaged weights
            self.lightning.averaged = averaging[0]._average_model
        val = trainer.datamodule.val_dataloader()
        results = self.plan.setdefault("accuracy", {})
        for arm in self.plan["arms"]:
            averaged = None if arm.averaged is None else dev_accuracy(arm.averaged.module, val)
            results.setdefault(arm.name, []).append((dev_accuracy(arm.model, val), averaged))
