"""Measuring on a shared machine: how busy other processes kept the CPUs while an arm ran
(a repetition they disturbed is left out), one epoch's measurement, and the medians taken
over repetitions."""

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

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




def clean_rounds(arms: list, warmup: int = 1) -> list[int]:
    """Indices of the repetitions after the warm-up in which no arm was disturbed."""
    count = min(len(arm.epochs) for arm in arms)
    return [i for i in range(warmup, count) if not any(arm.epochs[i].disturbed for arm in arms)]


def steady_tokens_per_second(epochs: list[Measurement], warmup: int = 1) -> float:
    """The median tokens/s of the undisturbed epochs after the first ``warmup`` ones (all of
    them after the warm-up if every one was disturbed)."""
    kept = epochs[warmup:] or epochs
    return median(m.tokens_per_second for m in [m for m in kept if not m.disturbed] or kept)
