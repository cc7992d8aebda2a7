"""The plain loop of ``scripts/plain_loops.py`` on an accelerator and in mixed precision, run
beside a Lightning run by the same ``ShadowArms`` callback as the CPU benchmark: the
"framework overhead" arm of the throughput section (it trains the LightningModule itself,
with its packing, loader and averaging, so it prices Lightning, not what the GPU can do; the
strong anchor, ``scripts/benchmarks/anchor.py``, does that).

What changes on a GPU: the batch goes to the device (lengths stay on the CPU, as the
datamodule's ``transfer_batch_to_device`` leaves them), the forward and loss run under
``torch.autocast`` for ``bf16-mixed`` and ``16-mixed``, ``16-mixed`` scales the loss
(``torch.amp.GradScaler``, unscaled before clipping, as Lightning does), and the clock waits for
the device at both ends of every timed epoch, Lightning's and the plain loop's alike.
"""

import contextlib
import functools
import time

import torch
from common import synchronize

import plain_loops as pl

AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class DeviceArm(pl.Arm):
    """``plain_loops.Arm`` on ``device`` in ``precision`` (Lightning's names)."""

    def __init__(self, *args, device: torch.device, precision: str = "32-true", **kwargs):
        super().__init__(*args, **kwargs)
        self.device = device
        self.precision = precision
        scaled = precision == "16-mixed" and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if scaled else None

    def autocast(self):
        dtype = AUTOCAST.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        if self.device.type == "cpu":
            dtype = torch.bfloat16  # Lightning runs 16-mixed as bf16-mixed on a CPU
        return torch.autocast(self.device.type, dtype=dtype)

    def train_step(self, batch, state, params):
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss, state = pl.task_loss(self.model, batch, state)
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()
            for optimizer in self.optimizers:
                self.scaler.unscale_(optimizer)
        if self.clip is not None:
            pl.clip_grad_norm(params, self.clip)
        for optimizer in self.optimizers:
            if self.scaler is None:
                optimizer.step()
            else:
                self.scaler.step(optimizer)
        if self.scaler is not None:
            self.scaler.update()
        if self.averaged is not None:
            self.averaged.update_parameters(self.model)
        return state

    def run_epoch(self, epoch: int, max_batches: int | None = None) -> pl.Measurement:
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.model.train()
        state, tokens, count = None, 0, 0
        cuda = self.device.type == "cuda"
        synchronize(self.device)
        watch = pl.CpuWatch()
        start = time.perf_counter()
        for batch in self.batches(epoch):
            if max_batches is not None and count >= max_batches:
                break
            tokens += pl.batch_tokens(batch)  # lengths live on the CPU: no device sync
            state = self.train_step(batch.to(self.device, non_blocking=cuda), state, params)
            count += 1
        synchronize(self.device)
        measurement = pl.Measurement(time.perf_counter() - start, tokens, count,
                                     watch.others(), watch.faults())
        self.epochs.append(measurement)
        return measurement


class DeviceArmSpec(pl.ArmSpec):
    """A plain-loop arm with the Lightning run's model, optimizer, clipping and weight
    averaging, on the Lightning run's device and in its precision."""

    def build(self, cfg, datamodule, reference) -> DeviceArm:
        device = reference.device
        model = pl.copy_model(cfg, datamodule, reference).to(device)
        precision = str(cfg.trainer.precision)
        clip = cfg.trainer.get("gradient_clip_val")
        factory = model.optimizer_factory or torch.optim.Adam
        if (precision == "16-mixed" and device.type == "cuda" and clip
                and isinstance(factory, functools.partial) and factory.keywords.get("fused")):
            # as seqmodels.training.precision does
            factory = functools.partial(factory, fused=False)
        optimizers = [factory(params=[p for p in model.parameters() if p.requires_grad])]
        return DeviceArm(self.name, model, optimizers, pl.epoch_loader(datamodule), clip=clip,
                         averaged=pl.configured_averaging(cfg, model), device=device,
                         precision=precision)


class DeviceShadowArms(pl.ShadowArms):
    """``ShadowArms`` whose Lightning epochs are timed from an idle device to an idle device."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        synchronize(pl_module.device)
        super().on_train_epoch_start(trainer, pl_module)
        synchronize(pl_module.device)  # the shadow epoch (odd epochs) ran just before
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == self._max_batches(trainer):
            synchronize(pl_module.device)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
