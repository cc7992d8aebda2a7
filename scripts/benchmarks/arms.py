"""An ``Arm``: one way of training (model, optimizers, batches, threads, averaging), run an
epoch at a time; ``alternate`` interleaves arms; ``ArmSpec`` builds an arm beside a framework
run, from its config, datamodule and initial weights."""

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig
from torch import nn
from torch.optim.swa_utils import AveragedModel

from benchmarks.measure import CpuWatch, Measurement, clean_rounds
from benchmarks.steps import (
    batch_tokens,
    clip_grad_norm,
    make_optimizers,
    set_variable_length,
    task_loss,
)
from seqmodels.callbacks.averaging import ema_avg_fn, ema_multi_avg_fn
from seqmodels.config import build
from seqmodels.data.batching import IGNORE_INDEX, Batch


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
