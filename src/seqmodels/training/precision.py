"""What mixed precision needs: bfloat16 RNN kernels on a CPU (probed, not guessed from the CPU's
name), and an optimizer whose gradients can be clipped when the loss is scaled.

bf16 on a CPU: under ``torch.autocast('cpu', dtype=torch.bfloat16)`` an LSTM runs in oneDNN,
which has bfloat16 LSTM kernels only on CPUs with AVX-512. On an AVX2-only x86 CPU the forward
fails with "could not create a primitive descriptor for the LSTM forward propagation
primitive" (``ONEDNN_MAX_CPU_ISA=AVX2`` shows the same on any x86 CPU). Which kernels exist is
the kernel library's business and changes between torch releases, so we try them: once per
process, on a tiny input, in a few milliseconds.

Loss scaling (``16-mixed`` on a GPU): a fused optimizer unscales the gradients inside its own
step, after clipping would have had to happen, so Lightning refuses to clip them
(``MixedPrecision.clip_gradients``). Where the loss is scaled and the gradients clipped, the
task modules build their optimizer unfused; Lightning then unscales before
``on_before_optimizer_step``, where the clipping happens.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from seqmodels.errors import ConfigError

# Lightning's names of the mixed precisions that autocast on a CPU: 16-mixed included, which
# Lightning turns into bf16-mixed on a CPU (fp16 autocast is for GPUs).
CPU_AUTOCAST_PRECISIONS = ("bf16-mixed", "bf16", "16-mixed", "16")
PROBED_CELLS = ("LSTM", "GRU", "RNN")


@dataclass(frozen=True)
class Probe:
    """:param works: the thing tried ran.
    :param reason: why not, in one line (empty when it works)."""

    works: bool
    reason: str = ""


def first_sentence(error: BaseException) -> str:
    """An exception's message as one short line: oneDNN appends advice about ONEDNN_VERBOSE."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text.split(". ")[0].rstrip(".")


@functools.cache
def cpu_bf16_rnns() -> Probe:
    """Whether every RNN cell (LSTM, GRU, plain RNN) runs a forward and a backward pass under
    bfloat16 autocast on this CPU. Tried once per process; the global RNG, grad mode and
    autocast state are left as they were (a seeded run draws the same numbers as without the
    probe)."""
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(0)
        inputs = torch.randn(2, 3, 4)
        for name in PROBED_CELLS:
            rnn = getattr(torch.nn, name)(4, 4, batch_first=True)
            try:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    outputs, _ = rnn(inputs)
                outputs.float().sum().backward()
            except Exception as error:  # noqa: BLE001 (whatever the kernels raise: a no)
                return Probe(False, f"torch.nn.{name} under bfloat16 autocast fails on this CPU "
                                    f"({first_sentence(error)})")
    return Probe(True)


def check_cpu_precision(precision: str) -> None:
    """Refuse, in one line and before anything is built, a mixed precision that this CPU's RNN
    kernels cannot run."""
    if str(precision) not in CPU_AUTOCAST_PRECISIONS:
        return
    probe = cpu_bf16_rnns()
    if not probe.works:
        also = "" if "bf16" in precision else " (on a CPU Lightning runs it as bf16-mixed)"
        raise ConfigError(f"trainer.precision={precision}{also}: {probe.reason}; oneDNN has "
                          "bfloat16 LSTM kernels only on CPUs with AVX-512. Use "
                          "trainer.precision=32-true")


def scales_gradients(trainer) -> bool:
    """Whether the trainer's precision plugin scales the loss (16-mixed on a GPU): the gradients
    are unscaled only just before the optimizer step."""
    return trainer is not None and getattr(trainer.precision_plugin, "scaler", None) is not None


def clippable_optimizer(factory: Callable | None, clips: bool, trainer) -> Callable | None:
    """The optimizer ``factory`` (a config partial) as this run can use it: with ``fused``
    turned off where the loss is scaled and the gradients are clipped (see the module's
    docstring); otherwise unchanged."""
    fused = isinstance(factory, functools.partial) and factory.keywords.get("fused")
    if fused and clips and scales_gradients(trainer):
        return functools.partial(factory, fused=False)
    return factory
