"""Section 3: the encoder's ``variable_length=padded`` vs ``packed``, in plain-loop
training steps of each sentence task."""

from statistics import median

import plain_loops as pl
from benchmarks.common import (
    Bench,
    noise,
    ratios,
    table,
    tps,
)


# -- 3. variable-length strategy ---------------------------------------------------------------
def section_varlen(bench: Bench) -> str:
    reps, rows, notes = bench.settings.reps, [], []
    for task in bench.tasks.values():
        if task.name == "charlm":
            continue
        batches = bench.settings.batches(task.speed_batches)
        specs = [pl.ArmSpec("padded"), pl.ArmSpec("packed", variable_length="packed"),
                 pl.ArmSpec("padded, random", bucketing=False),
                 pl.ArmSpec("packed, random", bucketing=False, variable_length="packed")]
        arms, _ = bench.plain_arms(task, specs)
        pl.alternate(arms, reps, batches)
        padded, packed, padded_random, packed_random = arms
        bucketed_ratio = median(ratios(padded, packed))
        random_ratio = median(ratios(padded_random, packed_random))
        bench.facts[f"varlen_{task.name}"] = bucketed_ratio
        notes.append(f"- {task.experiment}: {noise(arms)}")
        rows.append([task.experiment, f"bucketed (default), {batches}", f"{tps(padded):,.0f}",
                     f"{tps(packed):,.0f}", f"**{bucketed_ratio:.2f}x**"])
        rows.append([task.experiment, f"random, {batches}", f"{tps(padded_random):,.0f}",
                     f"{tps(packed_random):,.0f}", f"**{random_ratio:.2f}x**"])
    return "\n".join([
        "## 3. Variable-length strategy: padded vs packed",
        "",
        "Plain-loop training steps (forward + backward + clip + fused Adam step) of each task's "
        "default model, every `RNNEncoder` in it (the tagger's character encoder too) set to "
        "`padded` (default: each row's backward direction runs over the row reversed within "
        "its own length, final states read at each row's last real step) or `packed` "
        "(`pack_padded_sequence`). The two give identical outputs and gradients "
        "(tests/test_encoder.py, and whole models in tests/test_fast_paths.py). The same "
        f"batches for all four arms, {reps} repetitions after a warm-up, alternating; 'random': "
        "`data.bucketing=false`, where rows differ more in length and padding costs more.",
        "",
        table(["experiment", "batches", "padded tokens/s", "packed tokens/s",
               "padded / packed"], rows),
        "",
        *notes,
        "",
        "shakespeare_char: every row of a TBPTT window is full length, so both strategies run the "
        "same code (the encoder only packs when some row is shorter); nothing to measure.",
        bench.missing_note(("sentiment", "tagging")),
    ])
