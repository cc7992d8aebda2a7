"""CPU benchmarks of seqmodels, written to docs/benchmarks.md with the command that made them.

    make bench                                         # every section (~15 minutes on 2 cores)
    make bench ARGS="--sections overhead,generation"   # rerun some sections; the others stay
    make bench ARGS="--quick"                          # smoke test, to /tmp; figures mean nothing

Every figure is a ratio taken inside one process: the two sides (A and B) run alternately,
several times over, on the same batches, and the median of the per-repetition ratios is
reported. The machine is shared and noisy; alternation keeps both sides under the same noise.
The whole run holds ``/tmp/seqmodels-heavy.lock`` (one heavy job at a time: two processes with
two torch threads each on two cores spin-wait into ~50x slowdowns).

Sections:
  overhead    training tokens/s of ``seqmodels.cli.train.train(cfg)`` (callbacks, rich progress bar
              and TensorBoard on) vs a plain PyTorch loop on the same model, optimizer, batches
  batching    length-bucketed vs random batches, and the framework's defaults vs a plain loop's
              naive choices: tokens/s and dev accuracy after the same epochs (SST-2, EWT)
  varlen      encoder ``variable_length=padded`` vs ``packed`` (forward + backward + step)
  optim       Adam: default (for-loop) vs foreach vs fused vs sparse embedding gradients
  threads     torch.set_num_threads(1) vs 2
  generation  characters/s: state carried vs prefix re-run (scripts/bench_generate.py loops)
  data        read + index time of each dataset, loader-only throughput, peak RSS per run
  compile     torch.compile of the sentiment model vs eager
"""

import argparse
import contextlib
import fcntl
import functools
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from statistics import median

import lightning as L
import torch

import plain_loops as pl  # scripts/ is on sys.path: this file lives there
from benchmarks.common import (  # noqa: F401  (re-exported: tests and device_check)
    ROOT,
    SHARED_DATA,
    TASKS,
    Bench,
    Settings,
    Task,
    compose_config,
    faults_per_batch,
    fmt_ratios,
    noise,
    order_balanced_ratio,
    ratios,
    table,
    task_available,
    tps,
    verdict,
)
from seqmodels.config import build
from seqmodels.data.base import SequenceDataModule

SECTIONS = ("overhead", "batching", "varlen", "optim", "threads", "generation", "data",
            "compile")
LOCK = "/tmp/seqmodels-heavy.lock"
DEFAULT_OUTPUT = ROOT / "docs" / "benchmarks.md"




# -- 1. framework overhead ---------------------------------------------------------------------
# Per-epoch overhead ratios move by a few points with the machine's memory traffic; an even
# count makes whole pairs of epochs (see order_balanced_ratio).
OVERHEAD_REPS = 8
NO_ADVERSARIAL = "model.adversarial_epsilon=0"


def overhead_runs(names) -> list[tuple[str, str, str, list[str]]]:
    """(fact key, task, label, extra overrides) of each overhead measurement, in table order:
    each task's experiment, and SST-2 also without adversarial training (its steps are then
    half as long, so Lightning's per-step work weighs twice as much)."""
    runs = []
    for name in names:
        runs.append((name, name, TASKS[name].experiment, []))
        if name == "sentiment":
            runs.append(("sentiment_no_adversarial", name,
                         f"{TASKS[name].experiment} {NO_ADVERSARIAL}", [NO_ADVERSARIAL]))
    return runs


def section_overhead(bench: Bench) -> str:
    reps = bench.settings.reps if bench.settings.quick else max(bench.settings.reps,
                                                                OVERHEAD_REPS)
    rows, details = [], []
    for key, name, label, extra in overhead_runs(bench.tasks):
        task = bench.tasks[name]
        batches = bench.settings.batches(task.overhead_batches)
        # Up to reps more epochs where other processes disturbed some (see plain_loops.CpuWatch).
        overrides = [f"++trainer.limit_train_batches={batches}", "++trainer.limit_val_batches=2",
                     "++trainer.val_check_interval=1.0",
                     f"trainer.max_epochs={2 * reps + 1}", f"trainer.min_epochs={reps + 1}",
                     # Early stopping stays on but cannot fire: a stop that min_epochs overrides
                     # makes Lightning save every logger after every batch (~1 ms a step), a
                     # state no real run is in (its stop ends training).
                     f"callbacks.early_stopping.patience={2 * reps + 2}",
                     "test=false", *extra]
        plan = bench.shadowed_train(task, f"overhead_{key}", [pl.ArmSpec("plain loop")],
                                    overrides, clean_reps=reps)
        framework, plain = plan["arms"]
        values = ratios(framework, plain)
        ratio = order_balanced_ratio(framework, plain)
        bench.facts[f"overhead_{key}"] = ratio
        bench.facts[f"train_tps_{key}"] = tps(framework)
        rows.append([f"`{label}`", f"{batches} x {len(framework.epochs) - 1} (+1 warm-up)",
                     f"{tps(plain):,.0f}", f"{tps(framework):,.0f}", f"**{ratio:.3f}**",
                     verdict(ratio >= 0.95)])
        details.append(f"- `{label}`: per-epoch ratios {fmt_ratios(values)} "
                       f"({noise(plan['arms'])}); minor page faults per batch: "
                       f"seqmodels-train {faults_per_batch(framework):,.0f}, plain loop "
                       f"{faults_per_batch(plain):,.0f}")
    return "\n".join([
        "## 1. Framework overhead",
        "",
        "`seqmodels.cli.train.train(cfg)` exactly as `seqmodels-train experiment=...` runs it "
        "(default "
        "callbacks: checkpoints, early stopping, rich progress bar, model summary, LR monitor, "
        "safety callbacks; TensorBoard logger; gradient clipping 5.0) against a plain PyTorch "
        "loop (`scripts/plain_loops.py`: zero_grad, forward, loss, backward, "
        "`clip_grad_norm_`, step) on a second model of the same class with the same initial "
        "weights, the optimizer its `configure_optimizers` builds, and the same batches from the "
        "same datamodule's `train_dataloader()`. Both run in one process: after each Lightning "
        "epoch (even epochs) or before it (odd epochs) the plain loop runs that epoch's "
        "batches. Lightning's epoch is timed from `on_train_epoch_start` to the end of its last "
        "training batch: dataloader, steps, logging, progress bar and callbacks count; "
        "validation (limited to 2 batches here) and checkpoint writes come after and do not. "
        "Epochs are cut to the first N batches (`trainer.limit_train_batches`), so per-epoch "
        "costs weigh more than in a full epoch. Epoch 0 is a warm-up. The ratio is the median over "
        "pairs of consecutive epochs (one with the plain loop after Lightning's epoch, one with "
        "it before) of each pair's geometric mean: which side runs first shifts a single "
        "epoch's ratio (by up to 0.1 on EWT), and a pair cancels that.",
        "",
        table(["experiment", "batches x timed epochs", "plain loop tokens/s", "seqmodels-train "
               "tokens/s", "ratio", "target >= 0.95x"], rows),
        "",
        *details,
        bench.missing_note(tuple(TASKS)),
        "The progress bar draws less when stdout is not a terminal (as in this run, whose "
        "output goes to a log); in a terminal it refreshes every 10 batches "
        "(`callbacks.rich_progress_bar.refresh_rate`).",
        "",
        "SST-2 trains adversarially by default (a second forward and backward per step, "
        "docs/results.md), so it is also measured without (`model.adversarial_epsilon=0`): "
        "its steps are then the shortest here (about 18 ms), and Lightning's fixed work per "
        "step weighs most. Since 2026-12-01 the task modules train in Lightning's own "
        "automatic loop (clipping, accumulation and scheduler stepping are Trainer settings) "
        "and reach Lightning only through public interfaces. What remains of the earlier "
        "trims, all public: a profiler that hands back one shared no-op context instead of "
        "building a generator context per hook call (`seqmodels/training/step_costs.py`), the "
        "training loss summed on the spot rather than through a `MeanMetric` update per step "
        "and logged only on the steps Lightning logs, the garbage collector leaving the run's "
        "long-lived objects alone (`gc.freeze`, which removes an occasional 0.2 s full "
        "collection), and the gradients zeroed before the forward (the `optimizer_zero_grad` "
        "hook does nothing; `training_step` zeroes), so that the freed gradients' memory "
        "serves the forward and the backward does not take fresh pages from the kernel. Given "
        "up with the manual loop: its own stepping (the automatic loop's closure and extra "
        "hooks cost about 0.4 ms a step), a progress bar that gathered its metrics only when "
        "it redrew, and skipping Lightning's backward and step dispatch; each needed private "
        "Lightning attributes. The overhead runs keep early stopping on but unable to fire: "
        "when its stop is overridden by `min_epochs`, Lightning saves every logger after every"
        " batch (about 1 ms a step), a state no real run is in. Each task is timed over 8 "
        "epochs (4 pairs).",
    ])


# -- 2. batching, and the defaults against a plain loop's naive choices --------------------------
NAIVE = pl.ArmSpec("plain loop, naive: random batches + packed + for-loop Adam", bucketing=False,
                   variable_length="packed", optimizer="adam")


SPARSE = pl.ArmSpec("plain loop, defaults but sparse embedding gradients + SparseAdam",
                    optimizer="sparse")


def final_accuracy(curves: dict, arm: pl.Arm) -> float:
    """What a run delivers after its last epoch: the averaged weights where it keeps them."""
    last, average = curves[arm.name][-1]
    return last if average is None else average


def accuracy_curve(curves: dict, arm: pl.Arm, which: int) -> str:
    """Dev accuracy % after each epoch: of the last weights (0) or the averaged ones (1)."""
    return " / ".join(f"{100 * pair[which]:.1f}" for pair in curves[arm.name])


def section_batching(bench: Bench) -> str:
    parts = [
        "## 2. Batching, and the defaults against a plain loop's naive choices",
        "",
        "Three ways of training from the same initial weights, interleaved epoch by epoch in "
        "one process (the plain loops run beside `train(cfg)`, as in section 1): "
        "`seqmodels-train` with its defaults (length-bucketed batches, `variable_length=padded`, "
        "fused Adam), a plain loop with random batches (`data.bucketing=false`, all else "
        "default), and a plain loop with a hand-written script's naive choices (random batches, "
        "`pack_padded_sequence`, `torch.optim.Adam` with its CPU default for-loop update); for "
        "SST-2 also a plain loop with the defaults but sparse embedding gradients and "
        "`torch.optim.SparseAdam` for the word embedding (section 4). Where the experiment "
        "keeps a moving average of the weights (`callbacks/weight_averaging`, SST-2), every "
        "plain loop keeps one too, and every arm is evaluated on its average. The "
        "bucketing ratio is taken against the framework run, so the framework's own overhead "
        "(section 1) counts against bucketing, not for it. Tokens/s is over each whole "
        "training epoch (real tokens, padding not counted); the ratio is the median of the "
        "per-epoch ratios (epoch 0 included: every arm trains from scratch). Dev accuracy is "
        "measured with the same function for every arm after every epoch, of the last weights "
        "and, where the run keeps a moving average, of the averaged weights (what the run "
        "delivers). One seed and a few epochs: a check that the fast choices do not cost "
        "accuracy, not a result (docs/results.md has full runs); on SST-2's 872 dev sentences "
        "one sentence is 0.11 points, and after 3 epochs an EMA with decay 0.998 still carries "
        "0.998^651 = 27% of the initial random weights.",
        "",
    ]
    wanted = [t for t in bench.tasks.values() if t.accuracy_epochs > 0]
    for task in wanted:
        epochs = 2 if bench.settings.quick else task.accuracy_epochs
        overrides = [f"trainer.max_epochs={epochs}", f"trainer.min_epochs={epochs}", "test=false"]
        if bench.settings.quick:
            overrides += ["++trainer.limit_train_batches=5", "++trainer.limit_val_batches=2"]
        specs = [pl.ArmSpec("plain loop, random batches", bucketing=False), NAIVE]
        if task.name == "sentiment":  # its 14.8k x 300 table: does a sparse update pay off?
            specs.append(SPARSE)
        plan = bench.shadowed_train(task, f"batching_{task.name}", specs, overrides,
                                    evaluate=True)
        framework, random_batches, naive = plan["arms"][:3]
        curves = plan["accuracy"]
        averaged = curves[framework.name][-1][1] is not None

        final = functools.partial(final_accuracy, curves)
        curve = functools.partial(accuracy_curve, curves)
        rows = []
        for arm in plan["arms"]:
            total = sum(m.tokens for m in arm.epochs) / sum(m.seconds for m in arm.epochs)
            row = [arm.name, f"{total:,.0f}", f"{median(ratios(arm, naive, 0)):.2f}x",
                   curve(arm, 0)]
            rows.append(row + [curve(arm, 1)] if averaged else row)
        bucket = median(ratios(framework, random_batches, 0))
        beyond = median(ratios(framework, naive, 0))
        acc_ok = final(framework) >= final(naive)
        bench.facts[f"beyond_{task.name}"] = beyond
        bench.facts[f"beyond_acc_{task.name}"] = [final(framework), final(naive), epochs]
        sparse_note = []
        if len(plan["arms"]) > 3:
            sparse = plan["arms"][3]
            sparse_note = [
                f"- sparse embedding updates (plain loop, SparseAdam) / seqmodels-train: "
                f"**{median(ratios(sparse, framework, 0)):.2f}x** (per epoch "
                f"{fmt_ratios(ratios(sparse, framework, 0))}); final dev accuracy "
                f"{100 * final(sparse):.2f} vs {100 * final(framework):.2f}"]
        header = ["arm", "tokens/s", "vs naive", "dev accuracy % by epoch, last weights"]
        if averaged:
            header.append("the same, averaged weights (what the run keeps)")
        parts += [
            f"### {task.experiment} ({task.dataset}), {epochs} epochs",
            "",
            table(header, rows),
            "",
            f"- bucketed (seqmodels-train) / random batches (plain loop): **{bucket:.2f}x** "
            f"(per epoch {fmt_ratios(ratios(framework, random_batches, 0))}); final dev "
            f"accuracy {100 * final(framework):.2f} vs {100 * final(random_batches):.2f}",
            f"- seqmodels-train defaults / naive plain loop: **{beyond:.2f}x** (per epoch "
            f"{fmt_ratios(ratios(framework, naive, 0))}); target >= 1.5x: "
            f"{verdict(beyond >= 1.5)}; final dev accuracy {100 * final(framework):.2f} vs "
            f"{100 * final(naive):.2f}: {'equal or better' if acc_ok else 'lower'}",
            *sparse_note,
            f"- {noise(plan['arms'], 0)}",
            "",
        ]
    parts.append(bench.missing_note(("sentiment", "tagging")))
    return "\n".join(parts)


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
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child",
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


# -- 5. generation -----------------------------------------------------------------------------
def section_generation(bench: Bench) -> str:
    try:
        import bench_generate as bg  # scripts/bench_generate.py (the char-LM engineer's loops)
    except ImportError as error:
        return f"## 5. Generation\n\nnot measured: scripts/bench_generate.py missing ({error})\n"
    watch = pl.CpuWatch()
    num_chars = 300 if bench.settings.quick else 2000
    reps = 1 if bench.settings.quick else 3
    model = bg.random_model()
    prompt = model.encode_prompt("\n", unknown_chars="skip")
    fast = {name: loop for name, loop in bg.LOOPS.items() if name != "rerun_prefix"}
    seconds = {(name, t): [] for name in [*fast, "model.generate"] for t in (1, 2)}
    texts = {}
    # The state-carrying loops, interleaved across loops and thread counts.
    for _ in range(reps):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for name, loop in fast.items():
                ids, _, took = bg.sample(model, loop(model), prompt, num_chars, 1.0, 0)
                seconds[name, threads].append(took)
                texts[name, threads] = ids
            start = time.perf_counter()
            model.generate("\n", num_chars, 1.0, seed=0, unknown_chars="skip")
            seconds["model.generate", threads].append(time.perf_counter() - start)
    best = min((1, 2), key=lambda t: median(seconds["model.generate", t]))
    # The prefix re-run is ~100x slower: once, at the thread count where generate is fastest.
    torch.set_num_threads(best)
    reference, _, rerun = bg.sample(model, bg.Rerun(model), prompt, num_chars, 1.0, 0)
    torch.set_num_threads(bench.settings.threads)
    rows = [["rerun_prefix", best, f"{num_chars / rerun:,.0f}", "1.0x", "(reference)"]]
    for (name, threads), took in seconds.items():
        same = texts.get((name, threads))
        rows.append([name, threads, f"{num_chars / median(took):,.0f}",
                     f"{rerun / median(took):.0f}x",
                     "-" if same is None else ("yes" if same == reference else "**no**")])
    speed = num_chars / median(seconds["model.generate", best])
    vs_rerun = rerun / median(seconds["model.generate", best])
    bench.facts["generation_chars_per_s"] = speed
    bench.facts["generation_vs_rerun"] = [vs_rerun, num_chars]
    return "\n".join([
        "## 5. Generation",
        "",
        f"A 2-layer, 256-unit LSTM character model (67 characters, random weights: speed does "
        f"not depend on them), {num_chars} characters sampled at temperature 1 after the prompt "
        "`\\n`, with the loops of `scripts/bench_generate.py`. The state-carrying loops run "
        f"interleaved (loops and thread counts alternating), {reps} repetition(s), medians; "
        "`model.generate` is the production path end to end (prompt check, `make_stepper`'s "
        "fused LSTM step, sampling, decoding). `rerun_prefix` re-reads the whole text for every "
        "new character; it runs once, at the thread count where `model.generate` is fastest "
        "(its ratio is large enough that noise does not matter). \"same text\": the same seed "
        "wrote the same characters as `rerun_prefix`.",
        "",
        table(["loop", "threads", "characters/s", "vs rerun", "same text"], rows),
        "",
        f"- `model.generate`: **{speed:,.0f} characters/s** ({best} thread(s)); target >= "
        f"3,000: {verdict(speed >= 3000)}",
        f"- vs re-running the prefix for a {num_chars}-character sample: **{vs_rerun:.0f}x**; "
        f"target >= 20x: {verdict(vs_rerun >= 20)}",
        f"- other processes kept {watch.others():.2f} cores busy on average meanwhile",
        "",
    ])


# -- 6. data preparation and memory ------------------------------------------------------------
def time_indexing(bench: Bench, task: Task) -> tuple[float, float]:
    """Seconds to read + build vocabularies + index the train split alone, and for
    ``setup('fit')`` (train and dev), each on a fresh datamodule; medians of 3."""
    cfg = compose_config(task.experiment, [], bench.run_dir(f"data_{task.name}"))
    train_only, fit = [], []
    for _ in range(1 if bench.settings.quick else 3):
        datamodule = build(cfg.data)
        datamodule.prepare_data()
        if isinstance(datamodule, SequenceDataModule):
            start = time.perf_counter()
            examples = datamodule.read_split("train")
            datamodule.vocabs = datamodule.build_vocabs(examples)
            datamodule.encode(examples, datamodule.split_path("train"))
            train_only.append(time.perf_counter() - start)
        datamodule = build(cfg.data)
        start = time.perf_counter()
        datamodule.setup("fit")
        fit.append(time.perf_counter() - start)
    # The text datamodule reads and indexes its one file at once: setup is the figure.
    train_only = train_only or fit
    return median(train_only), median(fit)


def loader_tokens_per_second(bench: Bench, task: Task) -> float:
    """Real tokens/s of iterating one epoch of the training loader alone (collation)."""
    cfg = compose_config(task.experiment, [], bench.run_dir(f"loader_{task.name}"))
    datamodule = build(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    start, tokens = time.perf_counter(), 0
    for batch in datamodule.train_dataloader():
        tokens += pl.batch_tokens(batch)
    return tokens / (time.perf_counter() - start)


def peak_rss_mb(bench: Bench, task: Task) -> tuple[float, int, str]:
    """Peak resident memory of a default training run in a child process (its test split
    skipped), the exit status, and what the run was."""
    if bench.settings.quick:
        run = ("trainer.max_epochs=1", "++trainer.limit_train_batches=5",
               "++trainer.limit_val_batches=2")
    else:
        run = task.rss_run
    run_dir = bench.run_dir(f"rss_{task.name}")
    command = [sys.executable, "-m", "seqmodels.cli.train", f"experiment={task.experiment}", *run,
               "test=false", f"hydra.run.dir={run_dir}"]
    probe = ("import resource, subprocess, sys; "
             "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)")
    env = {**os.environ, "OMP_NUM_THREADS": str(bench.settings.threads)}
    out = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True,
                         check=True, cwd=ROOT, env=env)
    kilobytes, code = out.stdout.split()[-2:]
    described = ", ".join(r.removeprefix("++").removeprefix("trainer.") for r in run)
    return int(kilobytes) / 1024, int(code), described


def section_data(bench: Bench) -> str:
    targets = {"tagging": 2.0, "charlm": 1.0}
    rows, rss_rows, loader_rows = [], [], []
    watch = pl.CpuWatch()
    for task in bench.tasks.values():
        train_only, fit = time_indexing(bench, task)
        target = targets.get(task.name)
        bench.facts[f"index_{task.name}"] = train_only
        goal = "-" if target is None else f"< {target:.0f} s: {verdict(train_only < target)}"
        rows.append([task.dataset, f"{train_only:.2f}", f"{fit:.2f}", goal])
        loader = loader_tokens_per_second(bench, task)
        trained = bench.facts.get(f"train_tps_{task.name}")
        share = "-" if trained is None else f"{100 * trained / loader:.1f}%"
        loader_rows.append([task.experiment, f"{loader:,.0f}", share])
        rss, code, described = peak_rss_mb(bench, task)
        bench.facts[f"rss_{task.name}"] = rss if code == 0 else float("inf")
        rss_rows.append([task.experiment, described,
                         f"{rss:,.0f}" + ("" if code == 0 else f" (exit {code})"),
                         verdict(rss < 2048 and code == 0)])
    return "\n".join([
        "## 6. Data preparation and memory",
        "",
        "Read + vocabularies + index, on a fresh datamodule each time (median of 3; the files "
        "are in the page cache after the first): the train split alone, and `setup('fit')` "
        "(train and dev). Tiny Shakespeare is one file read and indexed at once, so both "
        "columns are the same operation.",
        "",
        table(["dataset", "train read + index s", "setup('fit') s", "target"], rows),
        "",
        f"(Other processes kept {watch.others():.2f} cores busy on average during this "
        "section.)",
        "",
        "Peak resident memory (`ru_maxrss` of a child process) of default training runs "
        "(`python -m seqmodels.cli.train experiment=...`, validation and checkpoints included, "
        "test skipped). Where batch shapes vary (SST-2, EWT) memory keeps creeping up as the "
        "allocator and oneDNN meet new shapes, so those runs cover whole epochs; every "
        "character-model window has the same shape, so its peak comes within the first "
        "batches.",
        "",
        table(["experiment", "run", "peak RSS MB", "target < 2 GB"], rss_rows),
        "",
        "### Data loading: num_workers and pin_memory",
        "",
        "Real tokens/s of iterating one epoch of the training loader alone (sampling + "
        "collation, no model), and the share of that speed the training step consumes "
        "(section 1's seqmodels-train tokens/s; '-' when section 1 did not run in this "
        "invocation). The share is the most that `data.num_workers > 0` could win, and on 2 "
        "cores a worker process takes its CPU from the training step. `data.pin_memory=true` "
        "only speeds host-to-GPU copies (with `non_blocking`, which the datamodules use); it "
        "does nothing on a CPU run.",
        "",
        table(["experiment", "loader-only tokens/s", "training / loader"], loader_rows),
        bench.missing_note(tuple(TASKS)),
    ])


RUNNERS: dict[str, Callable[[Bench], str]] = {
    "overhead": section_overhead, "batching": section_batching, "varlen": section_varlen,
    "optim": section_optim, "threads": section_threads, "compile": section_compile,
    "generation": section_generation, "data": section_data,
}


# -- the document ------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"(threads: {torch.get_num_threads()}), lightning {L.__version__}, Python "
            f"{platform.python_version()}")


HEADER = """# Benchmarks (CPU)

Produced by `scripts/benchmark.py` (`make bench`, about 15 minutes); each section names the
command that made it, and one section can be rerun alone (`make bench ARGS="--sections
generation"`) without touching the others. Section 2b trains whole runs over several seeds
(`scripts/bench_full_runs.py`, about an hour). GPU figures (bf16, cuDNN) are in
[benchmarks_gpu.md](benchmarks_gpu.md). minGRU / minLSTM vs LSTM:
[parallel_cells.md](parallel_cells.md) (`scripts/bench_parallel_cells.py`). Reading pretrained
word vectors, first time and cached: [results.md](results.md#pretrained-word-vectors-glove-6b-50d)
(`scripts/bench_word_vectors.py`).

How to read them: this machine has 2 cores shared with other jobs, so absolute speeds drift
from minute to minute. Every comparison is therefore a ratio taken inside one run: the two
sides run alternately, several times, on the same batches, and the median of the
per-repetition ratios is reported; tokens/s figures are medians too. Each repetition also
records how busy other processes kept the CPUs meanwhile (`/proc/stat` minus this process's
own CPU time): a repetition during which they used more than 0.2 of a core is "disturbed",
left out of the figures and, where the section allows, run again; each section says how many
were. Runs hold
`/tmp/seqmodels-heavy.lock` so that no other heavy job shares the cores (two processes with 2
torch threads each on 2 cores spin-wait into ~50x slowdowns): `make bench` takes the lock
itself; `flock /tmp/seqmodels-heavy.lock python scripts/benchmark.py --no-lock` is the same.
"Tokens" are real tokens, padding not counted; for the character model, characters.

Performance settings, all in the configs (the defaults are the fastest measured here):
`data.bucketing` (length-bucketed batches, default true), `model.encoder.variable_length`
(`padded` default, `packed`), `model.optimizer.fused` (fused Adam, default true),
`data.num_workers` and `data.pin_memory` (data loading: section 6), `trainer.precision`
(`bf16-mixed` on GPUs: benchmarks_gpu.md). `torch.compile` is measured in section 7.
"""


def block(name: str, body: str, command: str, when: str, seconds: float,
          facts: dict | None = None) -> str:
    """One section of the document; its key figures ride along (for the summary) as JSON in
    an HTML comment."""
    hidden = f"<!-- facts {json.dumps(facts, sort_keys=True)} -->\n" if facts else ""
    return (f"<!-- section:{name} -->\n{body.rstrip()}\n\n"
            f"<sub>`{command}` on {when}, {seconds:.0f} s; {machine()}</sub>\n"
            f"{hidden}<!-- /section:{name} -->")


# full_runs: whole training runs (scripts/bench_full_runs.py), too long for `make bench`.
ORDER = ("summary", "overhead", "batching", "full_runs", *SECTIONS[2:])


def summary(facts: dict) -> str:
    """The issue's targets against the figures of the sections now in the document."""
    rows = []
    for key, _, label, _ in overhead_runs(TASKS):
        if f"overhead_{key}" in facts:
            ratio = facts[f"overhead_{key}"]
            rows.append([f"overhead, {label}", ">= 0.95x", f"{ratio:.3f}x",
                         verdict(ratio >= 0.95), "1"])
    for name in TASKS:
        if f"beyond_{name}" in facts:
            ratio = facts[f"beyond_{name}"]
            ours, naive, epochs = facts[f"beyond_acc_{name}"]
            where = "2"
            accuracy = f"dev {100 * ours:.2f} vs {100 * naive:.2f} after {epochs} epochs"
            if f"full_acc_{name}" in facts:  # whole runs over seeds settle it better
                test_ours, test_naive, ours, naive, seeds = facts[f"full_acc_{name}"]
                where, accuracy = "2, 2b", (
                    f"whole runs, mean of {seeds} seed(s): dev {100 * ours:.2f} vs "
                    f"{100 * naive:.2f}, test {100 * test_ours:.2f} vs {100 * test_naive:.2f}")
            rows.append([f"defaults vs naive plain loop, {TASKS[name].experiment}",
                         ">= 1.5x, accuracy >=", f"{ratio:.2f}x; {accuracy}",
                         verdict(ratio >= 1.5 and ours >= naive), where])
    if "generation_chars_per_s" in facts:
        speed = facts["generation_chars_per_s"]
        vs_rerun, num_chars = facts["generation_vs_rerun"]
        rows.append(["generation, 2x256 LSTM", ">= 3,000 chars/s", f"{speed:,.0f}",
                     verdict(speed >= 3000), "5"])
        rows.append([f"generation vs prefix re-run, {num_chars} chars", ">= 20x",
                     f"{vs_rerun:.0f}x", verdict(vs_rerun >= 20), "5"])
    for name, limit in (("tagging", 2.0), ("charlm", 1.0)):
        if f"index_{name}" in facts:
            took = facts[f"index_{name}"]
            rows.append([f"read + index {TASKS[name].dataset} train", f"< {limit:.0f} s",
                         f"{took:.2f} s", verdict(took < limit), "6"])
    for name in TASKS:
        if f"rss_{name}" in facts:
            rss = facts[f"rss_{name}"]
            rows.append([f"peak RSS, {TASKS[name].experiment}", "< 2 GB", f"{rss:,.0f} MB",
                         verdict(rss < 2048), "6"])
    if not rows:
        return ""
    return "\n".join(["## Targets (issue 6) at a glance", "",
                      table(["target", "wanted", "measured", "status", "section"], rows)])


def document_facts(text: str) -> dict:
    facts = {}
    for found in re.finditer(r"<!-- facts (.*?) -->", text):
        facts.update(json.loads(found.group(1)))
    return facts


def write_document(path: Path, blocks: dict[str, str]) -> None:
    """Replace the given sections' blocks, keep every other section as it was, and rebuild
    the summary from the figures of all of them."""
    text = path.read_text() if path.is_file() else ""
    found = _blocks(text)
    found.update(blocks)
    facts = document_facts("\n".join(found.values()))
    found.pop("summary", None)
    table_text = summary(facts)
    if table_text:
        found["summary"] = (f"<!-- section:summary -->\n{table_text}\n"
                            "<!-- /section:summary -->")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "\n" + "\n\n".join(found[n] for n in ORDER if n in found) + "\n")


def _blocks(text: str) -> dict[str, str]:
    pattern = r"<!-- section:{0} -->.*?<!-- /section:{0} -->"
    return {name: m.group(0) for name in ORDER
            if (m := re.search(pattern.format(name), text, re.S))}


@contextlib.contextmanager
def heavy_lock(path: str | None):
    if not path:
        yield
        return
    with open(path, "a") as handle:
        print(f"waiting for {path} ...", file=sys.stderr, flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("Sections:")[1])
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, from: {', '.join(SECTIONS)}")
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help=f"comma-separated, from: {', '.join(TASKS)}")
    parser.add_argument("--quick", action="store_true",
                        help="a few batches per measurement: checks that everything runs")
    parser.add_argument("--reps", type=int, default=None,
                        help="timed repetitions per arm after a warm-up (default 3; quick 1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads (default: one per core)")
    parser.add_argument("--output", type=Path, default=None,
                        help="markdown file (default docs/benchmarks.md; with --quick, "
                             "a file in the temp directory)")
    parser.add_argument("--lock", default=LOCK,
                        help="lock file held for the whole run ('' to skip: when the command "
                             "is already wrapped in `flock <file>`)")
    parser.add_argument("--no-lock", dest="lock", action="store_const", const="",
                        help="same as --lock ''")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # JSON: see child_run
    args = parser.parse_args(argv)
    for name, known in (("sections", SECTIONS), ("tasks", TASKS)):
        values = [v for v in getattr(args, name).split(",") if v]
        unknown = [v for v in values if v not in known]
        if unknown:
            parser.error(f"--{name}: unknown {unknown}; choose from {list(known)}")
        setattr(args, name, values)
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.output is None:
        args.output = (Path(tempfile.gettempdir()) / "benchmarks_quick.md" if args.quick
                       else DEFAULT_OUTPUT)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if "SEQMODELS_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
        os.environ["SEQMODELS_DATA_DIR"] = str(SHARED_DATA)
    if args.child:
        child_run(json.loads(args.child))
        return
    command = "python scripts/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    torch.set_num_threads(args.threads)
    with heavy_lock(args.lock), tempfile.TemporaryDirectory(prefix="seqmodels_bench_") as tmp:
        bench = Bench(Settings(args.quick, args.reps, args.threads), args.tasks, Path(tmp))
        blocks = {}
        for name in args.sections:
            print(f"\n=== {name} ===", file=sys.stderr, flush=True)
            start = time.perf_counter()
            known = set(bench.facts)
            body = RUNNERS[name](bench)
            when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            facts = {k: v for k, v in bench.facts.items() if k not in known}
            blocks[name] = block(name, body, command.strip(), when, time.perf_counter() - start,
                                 facts)
            write_document(args.output, blocks)  # after each section: a crash keeps the rest
            print(body, file=sys.stderr, flush=True)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
