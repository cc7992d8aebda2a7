"""Section ``full_runs`` (``scripts/device_check.sh --full-runs``): the three default
experiments trained to the end on one GPU, one after the other, in this process, each exactly
as ``seqmodels-train experiment=<name> trainer=gpu`` runs it but for a ``trainer.max_time``
cap (``plan.FULL_RUN_CAPS``) that keeps the three within the 300 s a GPU call is planned for.
Per run: why it stopped (its epochs done, early stopping, or the cap), the wall time of fit
and of fit + test, the best validation figure, the test figure (of the weights the run keeps:
the best checkpoint, the moving average where the experiment keeps one; Tiny Shakespeare has no
test split by default, so its last validation is the figure), and for the char LM
the time from the start of fit to the first validation at or below 1.47 nats/char (nanoGPT's
baby-GPT figure on Tiny Shakespeare).

The CPU dry run: the same code, tiny data and models, two short epochs each."""

import time

import lightning as L
from common import FAIL, PASS, SHARED, SKIP, TASK_NAMES, TASKS, Context, failed_row, table
from lightning.pytorch.callbacks import EarlyStopping, Timer
from omegaconf import open_dict
from plan import FULL_RUN_CAPS

from seqmodels.cli.train import train

CHAR_TARGET = 1.47  # nats/char
DRY_CAP = 20  # seconds
DRY_LIMITS = ["trainer.max_epochs=2", "++trainer.limit_train_batches=4",
              "++trainer.limit_val_batches=2", "++trainer.limit_test_batches=2"]
HEADER = ["experiment", "max_time cap s", "epochs", "stopped by", "fit s", "fit + test s",
          "monitored val: best / last", "test", "char LM: s to val <= 1.47"]


class ValidationCurve(L.Callback):
    """Seconds since the start of fit, epoch and the monitored figure at every validation."""

    def __init__(self, monitor: str):
        self.monitor = monitor
        self.points: list[tuple[float, int, float]] = []
        self.start = time.monotonic()

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = time.monotonic()

    def on_validation_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if not trainer.sanity_checking and value is not None:
            self.points.append((time.monotonic() - self.start, trainer.current_epoch,
                                float(value)))


def hms(seconds: int) -> str:
    return f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def full_run(ctx: Context, task: str) -> dict:
    cap = FULL_RUN_CAPS[task] if ctx.cuda else DRY_CAP
    cap = int(min(cap, max(ctx.left() - 10, 5)))  # the section's own deadline comes first
    extra = [] if ctx.cuda else DRY_LIMITS
    cfg = ctx.compose(task, f"++trainer.max_time={hms(cap)}", *extra, label=f"full_{task}")
    monitor = str(cfg.get("monitor") or "val/loss")
    curve = SHARED[f"curve_{task}"] = ValidationCurve(monitor)
    with open_dict(cfg):
        cfg.callbacks.device_check_curve = {"_target_": "common.shared", "key": f"curve_{task}"}
    started = time.monotonic()
    metrics, objects = train(cfg)
    total = time.monotonic() - started
    trainer = objects["trainer"]
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    early = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
    if early is not None and early.stopped_epoch > 0:
        stopped = f"early stopping (epoch {early.stopped_epoch})"
    elif timer is not None and (timer.time_remaining() or 0) <= 0:
        stopped = "the max_time cap"
    else:
        stopped = "its epochs"
    fit = timer.time_elapsed("train") if timer is not None else None
    values = [v for _, _, v in curve.points]
    mode_max = str(cfg.get("monitor_mode", "max")) == "max"
    best = (max(values) if mode_max else min(values)) if values else None
    test_key = "test/" + monitor.split("/", 1)[1]
    reached = next((s for s, _, v in curve.points if v <= CHAR_TARGET), None) \
        if task == "charlm" else None
    return {"task": task, "cap": cap, "epochs": trainer.current_epoch, "stopped": stopped,
            "fit_seconds": fit, "total_seconds": total, "monitor": monitor, "best_val": best,
            "final_val": values[-1] if values else None,
            "test_key": test_key, "test": metrics.get(test_key), "curve": curve.points,
            "seconds_to_target": reached}


def row(r: dict) -> list:
    def num(value, fmt="{:.4f}"):
        return "-" if value is None else fmt.format(float(value))

    target = "" if r["task"] != "charlm" else (
        f"{r['seconds_to_target']:.0f}" if r["seconds_to_target"] is not None
        else "not reached")
    return [f"`{TASKS[r['task']].experiment}`", r["cap"], r["epochs"], r["stopped"],
            num(r["fit_seconds"], "{:.0f}"), f"{r['total_seconds']:.0f}",
            f"{num(r['best_val'])} / {num(r['final_val'])}",
            f"{r['test_key']} {num(r['test'])}" if r["test"] is not None else "no test split",
            target]


def full_runs(ctx: Context):
    rows, figures, failed = [], {}, []
    for task in TASK_NAMES:
        label = f"`{TASKS[task].experiment}`"
        if ctx.left() < 20:
            rows.append([label, "not run: the section's budget was spent"] + [""] * 7)
            continue
        try:
            figures[task] = r = full_run(ctx, task)
            rows.append(row(r))
            print(f"{task}: {r['total_seconds']:.0f} s, {r['test_key']} {r['test']}", flush=True)
        except Exception as error:  # noqa: BLE001  (one run fails; the others still run)
            failed.append(task)
            rows.append(failed_row(label, error, len(HEADER)))
            print(f"{task}: {error!r}", flush=True)
        ctx.partial(describe(ctx, rows), figures)
    text = describe(ctx, rows)
    if failed:
        return FAIL, text, figures
    if not ctx.cuda:
        return SKIP, "no CUDA: the same runs at tiny sizes on the CPU\n\n" + text, figures
    return PASS, text, figures


def describe(ctx: Context, rows: list) -> str:
    return "\n".join([
        f"The default experiments to the end on {ctx.device_name()}, each as "
        "`seqmodels-train experiment=<name> trainer=gpu trainer.max_time=<cap>` runs it. "
        "fit s: Lightning's Timer (training and validation); fit + test s: the whole "
        "`train(cfg)`, data and model setup included.", "", table(HEADER, rows)])
