"""Section ``throughput``: per task, in 32-true and bf16-mixed, training tokens/s of
``train(cfg)`` (default callbacks, as ``seqmodels-train experiment=... trainer=gpu`` runs)
against two arms run beside it in the same process, epoch for epoch (``ShadowArms``; the
plain arms go after Lightning's epoch on even epochs, before it on odd ones):

- the strong anchor (``scripts/benchmarks/anchor.py``): the same network, batches already on
  the device, no syncs, fused Adam, the same recipe; seqmodels / anchor is the issue's target;
- the plain loop (``device_arms.py``), which trains the LightningModule itself: the
  "framework overhead" arm.

Then, on the anchor alone, each ``model.encoder.variable_length`` of ``--varlen`` (default
padded, packed) for the two sentence tasks, alternating: which one the GPU runs fastest.

Rows go in order of importance (32-true, the variable-length comparison, bf16-mixed) and a
row that would not fit in the budget is recorded as not run. The cuDNN kernels of a profiled
step and the peak memory come with the 32-true rows.
"""

import json
import time
from statistics import median

import torch
from common import FAIL, PASS, SKIP, TASKS, Context, failed_row, table
from device_arms import DeviceArmSpec
from omegaconf import open_dict

import plain_loops as pl
from benchmarks.anchor import AnchorSpec, from_config
from benchmarks.common import order_balanced_ratio, ratios, tps
from seqmodels.cli.train import train
from seqmodels.training.precision import cpu_bf16_rnns

PRECISIONS = ("32-true", "bf16-mixed")
SENTENCE_TASKS = ("sentiment", "tagging")
# Batches per timed epoch and timed epochs after one warm-up (an even count: whole pairs).
GPU_SIZES = {"batches": 30, "reps": 4}
DRY_SIZES = {"batches": 2, "reps": 2}
# No row starts with less of the budget left (a GPU train row: setup, 5 epochs of 3 arms).
ROW_SECONDS = {("train", True): 20.0, ("varlen", True): 10.0, ("train", False): 3.0,
               ("varlen", False): 3.0}

TRAIN_HEADER = ["experiment", "precision", "batches x epochs", "seqmodels tokens/s (steps/s)",
                "anchor tokens/s (steps/s)", "plain loop tokens/s", "seqmodels / anchor",
                "seqmodels / plain", "peak MiB", "cuDNN RNN"]
VARLEN_HEADER = ["experiment", "precision", "variable_length", "anchor tokens/s", "steps/s",
                 "vs the first"]


def precision_skip(ctx: Context, precision: str) -> str | None:
    """Why a precision cannot run here, or None."""
    if precision == "32-true":
        return None
    if not ctx.cuda:
        probe = cpu_bf16_rnns()
        return None if probe.works else probe.reason
    if not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name()} has no bfloat16"
    return None


def steps_per_second(arm, warmup: int = 1) -> float:
    kept = arm.epochs[warmup:] or arm.epochs
    return median(m.batches / m.seconds for m in kept)


def measure_train(ctx: Context, task: str, precision: str) -> dict:
    sizes = GPU_SIZES if ctx.cuda else DRY_SIZES
    reps, batches = sizes["reps"], sizes["batches"]
    cfg = ctx.compose(task, f"trainer.precision={precision}",
                      f"++trainer.limit_train_batches={batches}", "++trainer.limit_val_batches=2",
                      "++trainer.num_sanity_val_steps=0", "++trainer.val_check_interval=1.0",
                      f"trainer.max_epochs={reps + 1}", f"trainer.min_epochs={reps + 1}",
                      f"callbacks.early_stopping.patience={reps + 2}", "test=false",
                      label=f"{task}_{precision}")
    key = f"throughput_{task}_{precision}"
    pl.PLANS[key] = plan = {"cfg": cfg, "evaluate": False, "clean_reps": None,
                            "specs": [AnchorSpec("strong anchor"), DeviceArmSpec("plain loop")]}
    profile = precision == "32-true"
    with open_dict(cfg):
        cfg.callbacks.device_check_shadow = {"_target_": "device_arms.DeviceShadowArms",
                                             "plan": key}
        if profile:  # kernels of one profiled step (in the warm-up epoch) and peak memory
            cfg.callbacks.device_check_throughput = {
                "_target_": "seqmodels.callbacks.throughput.Throughput",
                "output_dir": cfg.paths.output_dir, "warmup_steps": batches, "profile_step": 1}
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()
    train(cfg)
    framework, anchor, plain = plan["arms"]
    report = {}
    if profile:
        with open(cfg.paths.output_dir + "/throughput.json") as handle:
            report = json.load(handle)
    peak = torch.cuda.max_memory_allocated() / 2**20 if ctx.cuda else None
    return {"task": task, "precision": precision, "batches": batches,
            "epochs": len(framework.epochs) - 1,
            "seqmodels_tps": tps(framework), "anchor_tps": tps(anchor), "plain_tps": tps(plain),
            "seqmodels_steps_per_s": steps_per_second(framework),
            "anchor_steps_per_s": steps_per_second(anchor),
            "plain_steps_per_s": steps_per_second(plain),
            "vs_anchor": order_balanced_ratio(framework, anchor),
            "vs_plain": order_balanced_ratio(framework, plain),
            "per_epoch_vs_anchor": ratios(framework, anchor),
            "seconds_per_epoch": {arm.name: [m.seconds for m in arm.epochs]
                                  for arm in plan["arms"]},
            "peak_mib": peak, "kernels": report.get("rnn_kernels")}


def train_row(ctx: Context, r: dict) -> list:
    kernels = r["kernels"]
    if kernels is None:
        cell = "-"
    elif ctx.cuda:
        cell = "yes" if "aten::_cudnn_rnn" in kernels else f"NO {sorted(kernels)}"
    else:
        cell = ", ".join(sorted(kernels)) or "-"
    return [f"`{TASKS[r['task']].experiment}`", r["precision"], f"{r['batches']} x {r['epochs']}",
            f"{r['seqmodels_tps']:,.0f} ({r['seqmodels_steps_per_s']:.1f})",
            f"{r['anchor_tps']:,.0f} ({r['anchor_steps_per_s']:.1f})", f"{r['plain_tps']:,.0f}",
            f"**{r['vs_anchor']:.3f}**", f"{r['vs_plain']:.3f}",
            "-" if r["peak_mib"] is None else f"{r['peak_mib']:,.0f}", cell]


def measure_varlen(ctx: Context, task: str, precision: str, variants: list[str]) -> list[dict]:
    """The anchor with each ``model.encoder.variable_length``, every one from the same seed
    (the same initial weights and batches), epochs alternating."""
    sizes = GPU_SIZES if ctx.cuda else DRY_SIZES
    arms = []
    for variant in variants:
        cfg = ctx.compose(task, f"trainer.precision={precision}",
                          f"model.encoder.variable_length={variant}",
                          label=f"varlen_{task}_{variant}")
        anchor, _ = from_config(cfg, ctx.device, name=variant)
        arms.append(anchor)
    pl.alternate(arms, sizes["reps"], sizes["batches"])
    first = arms[0]
    return [{"task": task, "precision": precision, "variant": arm.name, "tps": tps(arm),
             "steps_per_s": steps_per_second(arm), "vs_first": median(ratios(arm, first)),
             "seconds_per_epoch": [m.seconds for m in arm.epochs]} for arm in arms]


def throughput(ctx: Context):
    variants = ctx.options.get("varlen") or ["padded", "packed"]
    work = []  # (kind, task, precision) in order of importance
    for precision in PRECISIONS:
        work += [("train", task, precision) for task in TASKS]
        work += [("varlen", task, precision) for task in SENTENCE_TASKS]
    trained, varlen, failed = [], [], []
    train_rows, varlen_rows = [], []
    for kind, task, precision in work:
        experiment = f"`{TASKS[task].experiment}`"
        rows = train_rows if kind == "train" else varlen_rows
        width = len(TRAIN_HEADER if kind == "train" else VARLEN_HEADER)
        why = precision_skip(ctx, precision)
        if why or ctx.left() < ROW_SECONDS[kind, ctx.cuda]:
            reason = f"skipped: {why}" if why else "not run: the section's budget was spent"
            rows.append([experiment, precision, reason] + [""] * (width - 3))
            continue
        started = time.monotonic()
        try:
            if kind == "train":
                r = measure_train(ctx, task, precision)
                trained.append(r)
                rows.append(train_row(ctx, r))
                print(f"{task} {precision}: seqmodels / anchor {r['vs_anchor']:.3f}, / plain "
                      f"{r['vs_plain']:.3f} ({time.monotonic() - started:.0f} s)", flush=True)
            else:
                for v in measure_varlen(ctx, task, precision, variants):
                    varlen.append(v)
                    rows.append([experiment, precision, v["variant"], f"{v['tps']:,.0f}",
                                 f"{v['steps_per_s']:.1f}", f"**{v['vs_first']:.2f}x**"])
                print(f"{task} {precision} variable lengths: {time.monotonic() - started:.0f} s",
                      flush=True)
        except Exception as error:  # noqa: BLE001  (a row fails; the others still run)
            failed.append(f"{kind} {task} {precision}")
            rows.append(failed_row(experiment, error, width))
            print(f"{kind} {task} {precision}: {error!r}", flush=True)
        figures = {"train": trained, "varlen": varlen, "failed": failed}
        ctx.partial(describe(ctx, train_rows, varlen_rows, variants), figures)
    text = describe(ctx, train_rows, varlen_rows, variants)
    figures = {"train": trained, "varlen": varlen, "failed": failed}
    if failed:
        return FAIL, text, figures
    if not trained:
        return SKIP, "nothing measured\n\n" + text, figures
    return PASS, text, figures


def describe(ctx: Context, train_rows: list, varlen_rows: list, variants: list[str]) -> str:
    sizes = GPU_SIZES if ctx.cuda else DRY_SIZES
    return "\n".join([
        f"Training tokens/s on {ctx.device_name()}, {sizes['batches']} batches an epoch, one "
        f"warm-up and {sizes['reps']} timed epochs: `train(cfg)` with default callbacks, the "
        "strong anchor (same network, batches on the device, no syncs) and the plain loop "
        "(the LightningModule in a loop), epochs interleaved in one process; ratios: median "
        "over pairs of epochs (target seqmodels / anchor >= 0.95).", "",
        table(TRAIN_HEADER, train_rows), "",
        f"The strong anchor alone, `model.encoder.variable_length` = {', '.join(variants)}, "
        "epochs alternating:", "",
        table(VARLEN_HEADER, varlen_rows) if varlen_rows else "(not run)"])
