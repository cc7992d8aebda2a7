"""Section 1 of docs/benchmarks.md: the framework's overhead. ``train(cfg)`` as
``seqmodels-train`` runs it against a plain PyTorch loop on the same model, optimizer and
batches, epochs interleaved in one process (``plain_loops.ShadowArms``)."""



import plain_loops as pl
from benchmarks.common import (
    TASKS,
    Bench,
    faults_per_batch,
    fmt_ratios,
    noise,
    order_balanced_ratio,
    ratios,
    table,
    tps,
    verdict,
)

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
