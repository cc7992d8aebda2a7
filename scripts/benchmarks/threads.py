"""Section 4b: ``torch.set_num_threads(1)`` vs 2 on the default models."""

from statistics import median

import plain_loops as pl
from benchmarks.common import (
    TASKS,
    Bench,
    noise,
    ratios,
    table,
    tps,
)


def section_threads(bench: Bench) -> str:
    reps, rows = bench.settings.reps, []
    for task in bench.tasks.values():
        batches = bench.settings.batches(task.speed_batches)
        arms, _ = bench.plain_arms(task, [pl.ArmSpec("1 thread"), pl.ArmSpec("2 threads")])
        arms[0].threads, arms[1].threads = 1, 2
        pl.alternate(arms, reps, batches)
        ratio = median(ratios(arms[1], arms[0]))
        rows.append([task.experiment, f"{tps(arms[0]):,.0f}", f"{tps(arms[1]):,.0f}",
                     f"**{ratio:.2f}x**", noise(arms)])
    return "\n".join([
        "## 4b. Threads: torch.set_num_threads(1) vs 2",
        "",
        "The default model and batches in a plain loop, alternating between two copies run with "
        "1 and 2 intra-op threads (this machine has 2 cores). Training is not usually run "
        "with fewer threads than cores; this shows how much the second core gives these small "
        "RNNs. Generation (section 5) is measured at both too.",
        "",
        table(["experiment", "1 thread tokens/s", "2 threads tokens/s", "2 / 1", "noise"],
              rows),
        bench.missing_note(tuple(TASKS)),
    ])
