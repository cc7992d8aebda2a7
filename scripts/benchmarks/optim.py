"""Section 4: which Adam for the embeddings (for-loop, foreach, fused, sparse), and what
the SST-2 experiment's moving average of the weights costs per step (fresh processes,
``scripts/benchmark.py --child``)."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

import torch

import plain_loops as pl
from benchmarks.common import (
    ROOT,
    TASKS,
    Bench,
    Settings,
    Task,
    compose_config,
    noise,
    ratios,
    table,
    tps,
)


# -- 4. embedding updates, and threads ----------------------------------------------------------
def section_optim(bench: Bench) -> str:
    reps, parts = bench.settings.reps, []
    parts += [
        "## 4. Embedding updates: which Adam",
        "",
        "Plain-loop training steps of the default model with the default batches, alternating "
        "between copies that differ only in the optimizer. `adam`: `torch.optim.Adam(lr)`, "
        "which on CPU runs a Python loop over the parameters; `foreach=True`; `fused=True` (the "
        "configs' default); `sparse`: `model.sparse_embeddings=true` (sparse gradients for the "
        "word embedding) with `torch.optim.SparseAdam` for it and fused Adam for the rest. "
        "adam, foreach and fused give the same numbers (tests/test_fast_paths.py); SparseAdam "
        "is lazy Adam: it leaves the moments of rows a batch does not use untouched, so after "
        "the first step its numbers differ from dense Adam's (a different optimizer, not a "
        "faster path to the same one). No weight averaging in these runs (its cost is the "
        "last table).",
        "",
    ]
    for name in ("sentiment", "tagging"):
        task = bench.tasks.get(name)
        if task is None:
            continue
        batches = bench.settings.batches(task.speed_batches)
        kinds = ["adam", "foreach", "fused"] + (["sparse"] if name == "sentiment" else [])
        # Without weight averaging (SST-2 keeps one): its cost is measured on its own below.
        specs = [pl.ArmSpec(k, optimizer=k, averaging="none") for k in kinds]
        arms, _ = bench.plain_arms(task, specs)
        pl.alternate(arms, reps, batches)
        base = arms[0]
        rows = [[arm.name, f"{tps(arm):,.0f}", f"**{median(ratios(arm, base)):.2f}x**"]
                for arm in arms]
        for arm in arms:
            bench.facts[f"optim_{name}_{arm.name}"] = median(ratios(arm, base))
        vocab = arms[0].model.embeddings.trained.weight.shape
        parts += [f"### {task.experiment}: word embedding {vocab[0]:,} x {vocab[1]}, "
                  f"{batches} batches per repetition", "",
                  table(["optimizer", "tokens/s", "vs adam"], rows), "", noise(arms), ""]
    task = bench.tasks.get("sentiment")
    if task is not None:
        parts += section_averaging(bench, task)
    parts.append(bench.missing_note(("sentiment", "tagging")))
    return "\n".join(parts)


AVERAGING_VARIANTS = {  # mode -> (label, the function it averages with)
    "per parameter": ("EMA through get_ema_avg_fn (new tensors per parameter)", "get_ema_avg_fn"),
    "foreach": ("EMA through get_ema_multi_avg_fn (one in-place foreach lerp)",
                "get_ema_multi_avg_fn"),
    "none": ("no weight averaging", None),
}


def section_averaging(bench: Bench, task: Task) -> list[str]:
    """What the SST-2 experiment's moving average of the weights costs per step, each
    variant in fresh processes (A B C C B A): what a step costs depends on the allocator's
    history, and a new ``seqmodels-train`` starts with none."""
    cfg = compose_config(task.experiment, [], bench.run_dir("averaging"))
    node = (cfg.get("callbacks") or {}).get("weight_averaging")
    if not node:
        return []
    configured = (node.get("avg_fn") or node.get("multi_avg_fn"))._target_.rsplit(".", 1)[-1]
    batches = bench.settings.batches(task.speed_batches)
    runs: dict[str, list[dict]] = {mode: [] for mode in AVERAGING_VARIANTS}
    for mode in [*AVERAGING_VARIANTS, *reversed(AVERAGING_VARIANTS)]:
        spec = {"task": task.name, "averaging": mode, "batches": batches,
                "reps": bench.settings.reps, "threads": bench.settings.threads}
        out = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--child",
                              json.dumps(spec)], capture_output=True, text=True, check=True,
                             cwd=ROOT)
        runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))

    def kept(mode):  # the undisturbed repetitions of both processes (all if none is)
        reps = [r for run in runs[mode] for r in run["reps"]]
        return [r for r in reps if r["others"] <= pl.DISTURBED] or reps

    base = median(r["tokens_per_second"] for r in kept("per parameter"))
    rows, disturbed, total = [], 0, 0
    for mode, (label, function) in AVERAGING_VARIANTS.items():
        reps = [r for run in runs[mode] for r in run["reps"]]
        disturbed += sum(r["others"] > pl.DISTURBED for r in reps)
        total += len(reps)
        speed = median(r["tokens_per_second"] for r in kept(mode))
        faults = median(r["faults_per_batch"] for r in kept(mode))
        label += " (configured)" if function == configured else ""
        rows.append([label, f"{speed:,.0f}", f"**{speed / base:.2f}x**", f"{faults:,.0f}"])
        bench.facts[f"averaging_{mode.replace(' ', '_')}"] = speed / base
    return [
        f"### Weight averaging in {task.experiment}",
        "",
        "The experiment keeps an exponential moving average of all 5M weights "
        "(`callbacks/weight_averaging`, updated after every step). Lightning's `WeightAveraging` "
        "passes its `avg_fn` or `multi_avg_fn` to `AveragedModel`. With `get_ema_avg_fn` "
        "(the usual example) that computes `decay * ema + (1 - decay) * w` into new tensors "
        "for every parameter, every step: for the 14.8k x 300 "
        "embedding that is fresh 17.8 MB buffers, which glibc maps and the kernel zero-fills "
        "page by page (the minor page faults below). `get_ema_multi_avg_fn` with the same decay "
        "is one in-place `_foreach_lerp_` (the same average: tests/test_fast_paths.py). How "
        "much the allocation costs depends on the allocator's history, and a training run "
        "starts as a fresh process, so each variant runs in fresh processes here (A B C C B A, "
        f"{batches} batches x {bench.settings.reps} repetitions after a warm-up in each; "
        "plain loop, fused Adam, default batches):",
        "",
        table(["weight averaging", "tokens/s", "vs get_ema_avg_fn", "minor page faults / batch"],
              rows),
        "",
        f"{total} repetitions, {disturbed} disturbed by other processes (left out).",
        "",
    ]


def child_run(spec: dict) -> None:
    """In a child process: one plain-loop arm's repetitions, printed as JSON."""
    torch.set_num_threads(spec["threads"])
    with tempfile.TemporaryDirectory(prefix="seqmodels_bench_child_") as tmp:
        bench = Bench(Settings(False, spec["reps"], spec["threads"]), [], Path(tmp))
        arms, _ = bench.plain_arms(TASKS[spec["task"]],
                                   [pl.ArmSpec("child", averaging=spec["averaging"])])
        reps = []
        for epoch in range(spec["reps"] + 1):
            measured = arms[0].run_epoch(epoch, spec["batches"])
            reps.append({"tokens_per_second": measured.tokens_per_second,
                         "faults_per_batch": measured.faults / measured.batches,
                         "others": measured.others})
    print(json.dumps({"reps": reps[1:]}))
