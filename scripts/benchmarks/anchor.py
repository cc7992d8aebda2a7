"""The strong anchor (issue 22, item 5): what one device does with the very network a
seqmodels run trains, when nothing but the chip stands in the way.

The network is ``module.net`` of the LightningModule the project's Hydra config builds (the
same layers, the same ``net.training_loss``: word dropout, label smoothing, the adversarial
pass, the char LM's carried state). The loop around it is bare: each epoch's batches are
taken from the datamodule and moved to the device (through pinned memory) BEFORE the clock
starts; then per step the loss (under ``torch.autocast`` for ``bf16-mixed``), backward,
``clip_grad_norm_`` (foreach), fused Adam and the exponential moving average of the weights
as one ``torch._foreach_lerp_`` with its warm-up counted on the host: nothing in the loop
reads a value back, so the host never waits. Timed with CUDA events on a GPU
(``time.perf_counter`` on a CPU). What it leaves out of the recipe: the learning-rate
scheduler (the char LM's OneCycleLR; a host-side float per step) and metrics.

seqmodels / anchor is the issue's target (>= 0.95); the old plain loop
(``scripts/plain_loops.py``, which trains the LightningModule itself with its loader and
``AveragedModel``) stays beside it as the "framework overhead" arm.

Alone, on any device (tokens/s and steps/s of the anchor, the config as seqmodels-train
reads it):

    python scripts/benchmarks/anchor.py experiment=sst2_bilstm trainer=gpu --batches 100
"""

import argparse
import copy
import functools
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: plain_loops

import plain_loops as pl  # noqa: E402
from seqmodels.callbacks.averaging import warmup_decay  # noqa: E402
from seqmodels.config import build  # noqa: E402
from seqmodels.models.charlm import detach_state  # noqa: E402

AUTOCAST = {"32-true": None, "bf16-mixed": torch.bfloat16}


def adam_fused(factory, device: torch.device):
    """The configured optimizer partial with ``fused=True`` where torch has a fused kernel
    (Adam and AdamW on CUDA and CPU)."""
    target = getattr(factory, "func", factory)
    if target in (torch.optim.Adam, torch.optim.AdamW):
        return functools.partial(factory, fused=True)
    return factory


class StrongAnchor:
    """A bare training loop over ``net``; an arm of ``plain_loops`` (``run_epoch``,
    ``epochs``), so ``ShadowArms`` can run it beside a Lightning run, epoch for epoch.

    :param batches: epoch -> that epoch's batches (``plain_loops.epoch_loader``).
    :param cfg: the run's config: ``model.optimizer``, ``trainer.gradient_clip_val``,
        ``trainer.precision`` and ``callbacks.weight_averaging`` give the recipe.
    """

    def __init__(self, name: str, net: nn.Module, cfg, batches, device: torch.device):
        precision = str(cfg.trainer.get("precision", "32-true"))
        if precision not in AUTOCAST:
            raise ValueError(f"the strong anchor runs {sorted(AUTOCAST)}, not {precision!r}")
        self.name, self.batches, self.device = name, batches, device
        self.model = net.to(device)
        self.averaged = None  # plain_loops' arms: the averaged model to evaluate (none here)
        self.epochs: list[pl.Measurement] = []
        self.dtype = AUTOCAST[precision]
        self.params = [p for p in net.parameters() if p.requires_grad]
        factory = build(cfg.model.optimizer) if cfg.model.get("optimizer") else torch.optim.Adam
        self.optimizer = adam_fused(factory, device)(params=self.params)
        self.clip = cfg.trainer.get("gradient_clip_val")
        node = (cfg.get("callbacks") or {}).get("weight_averaging")
        fn = (node.get("multi_avg_fn") or node.get("avg_fn")) if node else None
        self.ema_decay = None if fn is None else float(fn.get("decay", 0.998))
        self.ema_warmup = bool(fn.get("warmup", False)) if fn is not None else False
        # The average of every floating-point tensor, as AveragedModel(use_buffers=True) keeps.
        self.live = [t for t in [*net.parameters(), *net.buffers()] if t.is_floating_point()]
        self.ema = [t.detach().clone() for t in self.live] if self.ema_decay is not None else []
        self.updates = 0  # the average's update count, on the host

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def prebuild(self, epoch: int, max_batches: int | None) -> list[tuple[object, int]]:
        """The epoch's batches on the device (through pinned memory), with their real-token
        counts taken on the host."""
        built = []
        for batch in self.batches(epoch):
            if max_batches is not None and len(built) >= max_batches:
                break
            tokens = batch.num_tokens if batch.num_tokens is not None else pl.batch_tokens(batch)
            if self.cuda:
                batch = batch.pin_memory().to(self.device, non_blocking=True)
            built.append((batch, int(tokens)))
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return built

    def step(self, batch, state):
        if self.dtype is None:
            loss, state = self.model.training_loss(batch, state)
        else:
            with torch.autocast(self.device.type, dtype=self.dtype):
                loss, state = self.model.training_loss(batch, state)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.average()
        return detach_state(state)

    @torch.no_grad()
    def average(self) -> None:
        """AveragedModel's first update copies the weights; the n-th after it lerps with the
        warm-up decay of ``seqmodels.callbacks.averaging`` (n counted here, not read back)."""
        if self.ema_decay is None:
            return
        if self.updates == 0:
            torch._foreach_copy_(self.ema, self.live)
        else:
            decay = warmup_decay(self.ema_decay, self.updates, self.ema_warmup)
            torch._foreach_lerp_(self.ema, self.live, 1.0 - decay)
        self.updates += 1

    def run_epoch(self, epoch: int, max_batches: int | None = None) -> pl.Measurement:
        built = self.prebuild(epoch, max_batches)
        self.model.train()
        state = None
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        began = time.perf_counter()
        for batch, _ in built:
            state = self.step(batch, state)
        if self.cuda:
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000.0
        else:
            seconds = time.perf_counter() - began
        measurement = pl.Measurement(seconds, sum(t for _, t in built), len(built))
        self.epochs.append(measurement)
        return measurement

    def averaged_state(self) -> dict[str, torch.Tensor]:
        """The moving average as a state dict of ``net`` (for checks)."""
        named = [*self.model.named_parameters(), *self.model.named_buffers()]
        return dict(zip([n for n, t in named if t.is_floating_point()], self.ema, strict=True))


class AnchorSpec(pl.ArmSpec):
    """A ``ShadowArms`` arm: the strong anchor on a copy of the Lightning run's network (the
    weights Lightning starts from), on its device, in its precision; ``variable_length``
    switches every encoder of the copy."""

    def build(self, cfg, datamodule, reference) -> StrongAnchor:
        net = copy.deepcopy(reference.net)
        if self.variable_length is not None:
            pl.set_variable_length(net, self.variable_length)
        return StrongAnchor(self.name, net, cfg, pl.epoch_loader(datamodule), reference.device)


def from_config(cfg, device: torch.device, name: str = "strong anchor"):
    """The anchor on a fresh module built from ``cfg`` as ``seqmodels-train`` builds it, and
    the datamodule; only ``module.net`` is trained."""
    import lightning as L

    from seqmodels.cli.train import build_data_and_model

    L.seed_everything(cfg.seed, verbose=False)
    datamodule, module = build_data_and_model(cfg)
    return StrongAnchor(name, module.net, cfg, pl.epoch_loader(datamodule), device), datamodule


def main(argv: list[str] | None = None) -> None:
    from benchmarks.common import compose_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="experiment=... and other overrides")
    parser.add_argument("--batches", type=int, default=100, help="batches per timed epoch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after a warm-up")
    args = parser.parse_args(argv)
    experiment = next((o.split("=", 1)[1] for o in args.overrides
                       if o.startswith("experiment=")), "sst2_bilstm")
    rest = [o for o in args.overrides if not o.startswith("experiment=")]
    with tempfile.TemporaryDirectory(prefix="seqmodels_anchor_") as tmp:
        cfg = compose_config(experiment, rest, Path(tmp))
        accelerator = str(cfg.trainer.get("accelerator", "cpu"))
        device = torch.device("cuda" if accelerator in ("gpu", "cuda") else "cpu")
        anchor, _ = from_config(cfg, device)
        for epoch in range(args.epochs + 1):
            m = anchor.run_epoch(epoch, args.batches)
            label = "warm-up" if epoch == 0 else f"epoch {epoch}"
            print(f"{label}: {m.batches} steps in {m.seconds:.3f} s: "
                  f"{m.batches / m.seconds:,.1f} steps/s, {m.tokens_per_second:,.0f} tokens/s",
                  flush=True)
    print(f"strong anchor, {experiment} on {device}: "
          f"{pl.steady_tokens_per_second(anchor.epochs):,.0f} tokens/s (median after warm-up)")


if __name__ == "__main__":
    main()
