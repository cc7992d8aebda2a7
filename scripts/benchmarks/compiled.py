"""Section 7: ``torch.compile`` of the sentiment model vs eager."""

import os
from statistics import median

import torch

import plain_loops as pl
from benchmarks.common import (
    Bench,
    fmt_ratios,
    noise,
    ratios,
    table,
    tps,
)
from benchmarks.overhead import NO_ADVERSARIAL


# -- torch.compile -----------------------------------------------------------------------------
def section_compile(bench: Bench) -> str:
    task = bench.tasks.get("sentiment")
    if task is None:
        return "## 7. torch.compile\n" + bench.missing_note(("sentiment",))
    reps = bench.settings.reps
    batches = bench.settings.batches(task.speed_batches)
    # Without adversarial training: its loss calls the encoder outside the model's forward,
    # which is what torch.compile wraps.
    arms, _ = bench.plain_arms(task, [pl.ArmSpec("eager"), pl.ArmSpec("torch.compile")],
                               (NO_ADVERSARIAL,))
    eager, compiled = arms
    # A fresh inductor cache: the first epoch then shows what a user's first run pays.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(bench.run_dir("inductor_cache"))
    compiled.model.compile()  # in place: every call of the model runs compiled
    error = None
    try:
        # Warm-up epoch alone first: it holds the compilation.
        first = compiled.run_epoch(0, batches)
        compiled.epochs.clear()  # the compiling epoch is reported alone; then warm-up + reps
        pl.alternate(arms, reps, batches)
    except Exception as caught:  # noqa: BLE001  (report what torch.compile did, whatever it is)
        error = f"{type(caught).__name__}: {str(caught).splitlines()[0][:300]}"
    if error is not None:
        body = f"torch.compile failed on the sentiment model: `{error}`."
    else:
        ratio = median(ratios(compiled, eager))
        counters = torch._dynamo.utils.counters
        breaks = sum(counters["graph_break"].values())
        bench.facts["compile_sentiment"] = ratio
        body = "\n".join([
            table(["mode", "first epoch s (incl. compilation, cold cache)", "steady tokens/s",
                   "vs eager"],
                  [["eager", "-", f"{tps(eager):,.0f}", "1.00x"],
                   ["torch.compile", f"{first.seconds:.1f}", f"{tps(compiled):,.0f}",
                    f"**{ratio:.2f}x**"]]),
            "",
            f"Graph breaks counted by dynamo: {breaks}. Per-repetition ratios: "
            f"{fmt_ratios(ratios(compiled, eager))} ({noise(arms)}).",
        ])
    return "\n".join([
        "## 7. torch.compile (sentiment model)",
        "",
        f"`model.compile()` (torch.compile, default inductor backend) of the default sentiment "
        f"model without adversarial training (`{NO_ADVERSARIAL}`: the adversarial loss runs the "
        f"encoder outside the compiled forward) in a plain loop, vs eager, {batches} batches "
        f"per repetition with bucketed batches (their "
        "shapes vary, so dynamo recompiles with dynamic shapes after the first new shape), "
        f"{reps} repetitions after the compiling warm-up.",
        "",
        body,
        "",
    ])
