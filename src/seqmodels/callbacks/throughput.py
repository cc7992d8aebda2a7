"""Training speed and memory of a run, for hardware checks (scripts/device_check.sh): real tokens
per second over every rank, peak accelerator memory, and which RNN kernels ran.

Add it to any run: ``seqmodels-train ...
+callbacks.throughput._target_=seqmodels.callbacks.throughput.Throughput
+callbacks.throughput.output_dir='${paths.output_dir}'``; it writes
``<output_dir>/throughput.json`` and logs one line.
"""

import json
import logging
import time
from pathlib import Path

import lightning as L
import torch
from torch.profiler import ProfilerActivity, profile

from seqmodels.data.batching import Batch

log = logging.getLogger(__name__)

# Operators that mark a recurrent layer's implementation in a profile.
RNN_KERNELS = ("aten::_cudnn_rnn", "aten::miopen_rnn", "aten::lstm", "aten::gru",
               "aten::rnn_tanh", "aten::rnn_relu")


class Throughput(L.Callback):
    """:param output_dir: where ``throughput.json`` goes (rank zero writes it).
    :param warmup_steps: training batches left out of the timing (allocator, cuDNN plans).
    :param profile_step: the batch whose operators are recorded to see which RNN kernels run.
    """

    def __init__(self, output_dir: str, warmup_steps: int = 20, profile_step: int = 5):
        self.output_dir = Path(output_dir)
        self.warmup_steps = warmup_steps
        self.profile_step = profile_step
        self.batches = 0
        self.tokens = 0
        self.started: float | None = None
        self.kernels: dict[str, int] = {}
        self._profiler: profile | None = None

    def _synchronize(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.batches == self.warmup_steps:
            self._synchronize(pl_module.device)
            self.started = time.perf_counter()
        if self.batches == self.profile_step:
            self._profiler = profile(activities=[ProfilerActivity.CPU])
            self._profiler.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._profiler is not None:
            self._profiler.__exit__(None, None, None)
            self.kernels = {event.key: event.count for event in self._profiler.key_averages()
                            if event.key in RNN_KERNELS}
            self._profiler = None
        if self.started is not None and isinstance(batch, Batch):
            self.tokens += int(batch.lengths.sum())  # real tokens; lengths live on the CPU
        self.batches += 1

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = pl_module.device
        self._synchronize(device)
        elapsed = time.perf_counter() - self.started if self.started is not None else 0.0
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
        local = torch.tensor([float(self.tokens), elapsed, float(peak)], device=device)
        every = trainer.strategy.all_gather(local).view(-1, 3)  # (world, 3)
        if not trainer.is_global_zero:
            return
        tokens, slowest, peak_max = every[:, 0].sum(), every[:, 1].max(), every[:, 2].max()
        encoder = getattr(pl_module, "encoder", None)
        report = {
            "task": getattr(pl_module, "task", None),
            "precision": str(trainer.precision),
            "world_size": trainer.world_size,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "timed_batches_per_rank": max(self.batches - self.warmup_steps, 0),
            "tokens_per_second": float(tokens / slowest) if slowest > 0 else None,
            "peak_memory_mib": float(peak_max) / 2**20,
            "cudnn_enabled": torch.backends.cudnn.enabled,
            "cudnn_version": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "encoder_device": str(next(encoder.parameters()).device) if encoder else None,
            "rnn_kernels": self.kernels,
        }
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "throughput.json").write_text(json.dumps(report, indent=2) + "\n")
        log.info("throughput: %.0f tokens/s over %d ranks, peak memory %.0f MiB, RNN kernels %s",
                 report["tokens_per_second"] or 0, trainer.world_size, report["peak_memory_mib"],
                 self.kernels)
