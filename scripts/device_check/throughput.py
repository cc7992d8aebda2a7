"""Section ``throughput``: per task and precision, training tokens/s of ``train(cfg)`` (default
callbacks, as ``seqmodels-train experiment=...`` runs) against the plain loop on the same device,
in the same process, epochs interleaved (``plain_loops.ShadowArms``, as ``scripts/benchmark.py``
measures the CPU). The ratio matters most where a step is shortest: SST-2 without adversarial
training. Also which RNN kernels ran (``aten::_cudnn_rnn`` is cuDNN's fused kernel) and the peak
GPU memory, from ``seqmodels.callbacks.throughput.Throughput``.

Runs go precision by precision (all of fp32 first), so that a budget cut short leaves the
most important rows; a row that does not fit in the budget is recorded as not run.
"""

import json
import time

import torch
from common import FAIL, PASS, SKIP, Context, benchmark, main, pl, table
from device_arms import DeviceArmSpec
from omegaconf import open_dict

from seqmodels.cli.train import train
from seqmodels.training.precision import cpu_bf16_rnns

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
# Batches per timed epoch and timed epochs (after one warm-up epoch).
GPU_SIZES = {"batches": 50, "reps": 4}
DRY_SIZES = {"batches": 2, "reps": 1}
ROW_SECONDS = {"gpu": 25.0, "cpu": 10.0}  # no row starts with less of the budget left


def precision_skip(ctx: Context, precision: str) -> str | None:
    """Why a precision cannot run here, or None."""
    if precision == "32-true":
        return None
    if not ctx.cuda:
        if precision == "16-mixed":
            return "fp16 autocast with loss scaling is for GPUs (a CPU runs it as bf16-mixed)"
        probe = cpu_bf16_rnns()
        return None if probe.works else probe.reason
    if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name()} has no bfloat16"
    return None


def measure(ctx: Context, key: str, task_name: str, precision: str, extra: list[str]) -> dict:
    sizes = GPU_SIZES if ctx.cuda else DRY_SIZES
    reps = sizes["reps"]
    overrides = [f"trainer.precision={precision}",
                 f"++trainer.limit_train_batches={sizes['batches']}",
                 "++trainer.limit_val_batches=2", "++trainer.val_check_interval=1.0",
                 f"trainer.max_epochs={2 * reps + 1}", f"trainer.min_epochs={reps + 1}",
                 f"callbacks.early_stopping.patience={2 * reps + 2}", "test=false", *extra]
    cfg = ctx.compose(task_name, *overrides, label=f"{key}_{precision}")
    plan_name = f"{key}_{precision}"
    pl.PLANS[plan_name] = plan = {"cfg": cfg, "specs": [DeviceArmSpec("plain loop")],
                                  "evaluate": False, "clean_reps": reps}
    with open_dict(cfg):
        cfg.callbacks.device_check_shadow = {"_target_": "device_arms.DeviceShadowArms",
                                             "plan": plan_name}
        # Kernels and peak memory only (its timing spans both arms); the profiled step is in
        # the warm-up epoch, which no ratio uses.
        cfg.callbacks.device_check_throughput = {
            "_target_": "seqmodels.callbacks.throughput.Throughput",
            "output_dir": cfg.paths.output_dir,
            "warmup_steps": sizes["batches"], "profile_step": 1}
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()
    train(cfg)
    framework, plain = plan["arms"]
    report_path = cfg.paths.output_dir + "/throughput.json"
    report = json.loads(open(report_path).read())
    return {"key": key, "precision": precision, "batches": sizes["batches"],
            "epochs": len(framework.epochs) - 1, "plain_tps": benchmark.tps(plain),
            "lightning_tps": benchmark.tps(framework),
            "ratio": benchmark.order_balanced_ratio(framework, plain),
            "per_epoch": benchmark.ratios(framework, plain),
            "peak_mib": report.get("peak_memory_mib"), "kernels": report.get("rnn_kernels")}


def kernels_cell(ctx: Context, kernels: dict | None) -> str:
    if not ctx.cuda:
        return ", ".join(sorted(kernels or {})) or "-"
    return "yes" if "aten::_cudnn_rnn" in (kernels or {}) else f"NO {sorted(kernels or {})}"


def section(ctx: Context):
    runs = benchmark.overhead_runs(benchmark.TASKS)
    rows, figures, failed = [], [], []
    for precision in PRECISIONS:
        why = precision_skip(ctx, precision)
        for key, name, label, extra in runs:
            first = [f"`{label}`", precision]
            if why:
                rows.append(first + ["skipped: " + why] + [""] * 5)
                continue
            if ctx.left() < ROW_SECONDS["gpu" if ctx.cuda else "cpu"]:
                rows.append(first + ["not run: the section's budget was spent"] + [""] * 5)
                continue
            ctx.partial(describe(ctx, rows))  # summary.md shows the rows so far on a timeout
            started = time.monotonic()
            try:
                r = measure(ctx, key, name, precision, extra)
            except Exception as error:  # noqa: BLE001  (a row fails; the others still run)
                failed.append(f"{label} {precision}")
                rows.append(first + [f"**failed**: {type(error).__name__}: {error}"[:200]]
                            + [""] * 5)
                print(f"{label} {precision}: {error!r}", flush=True)
                continue
            r["seconds"] = time.monotonic() - started
            figures.append(r)
            rows.append(first + [f"{r['batches']} x {r['epochs']}", f"{r['plain_tps']:,.0f}",
                                 f"{r['lightning_tps']:,.0f}", f"**{r['ratio']:.3f}**",
                                 f"{r['peak_mib']:,.0f}" if r["peak_mib"] else "-",
                                 kernels_cell(ctx, r["kernels"])])
            print(f"{label} {precision}: ratio {r['ratio']:.3f} ({r['seconds']:.0f} s)",
                  flush=True)
    text = describe(ctx, rows)
    if failed:
        return FAIL, text, {"rows": figures, "failed": failed}
    if not figures:
        return SKIP, "nothing measured\n\n" + text, {}
    return PASS, text, {"rows": figures}


def describe(ctx: Context, rows: list[list]) -> str:
    device = torch.cuda.get_device_name() if ctx.cuda else "CPU (dry run: figures mean nothing)"
    return "\n".join([
        f"Training tokens/s on {device}: the plain loop and `train(cfg)` with default callbacks, "
        "epochs interleaved in one process; ratio = seqmodels / plain (median over pairs of "
        "epochs, the warm-up epoch left out; target >= 0.95). Peak memory holds both models.",
        "",
        table(["run", "precision", "batches x epochs", "plain tokens/s", "seqmodels tokens/s",
               "ratio", "peak MiB", "cuDNN RNN" if ctx.cuda else "RNN ops"], rows)])


if __name__ == "__main__":
    main({"throughput": section})
