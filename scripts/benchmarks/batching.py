"""Section 2: length-bucketed vs random batches, and the framework's defaults against a
plain loop's naive choices (tokens/s and dev accuracy after the same epochs)."""

import functools
from statistics import median

import plain_loops as pl
from benchmarks.common import (
    Bench,
    fmt_ratios,
    noise,
    ratios,
    table,
    verdict,
)

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
