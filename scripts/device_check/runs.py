"""Sections ``resume`` and ``ddp`` of the device check.

resume: the default experiment with default callbacks for one epoch, then resumed from its
    ``last.ckpt`` for a second and tested: ``train(cfg)`` in this process, which is what
    ``seqmodels-train ... ckpt_path=<last.ckpt>`` runs.
ddp: ``seqmodels-train experiment=sst2_bilstm trainer=ddp`` on every GPU, in a subprocess
    (DDP launches its own processes); SKIP where there is one GPU (or none: the dry run).
    ``trainer=ddp_cpu`` runs in CI (tests/test_distributed.py).
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import FAIL, PASS, ROOT, SKIP, TASKS, Context, table

from seqmodels.cli.train import train


def resume(ctx: Context):
    task = "sentiment"
    experiment = TASKS[task].experiment
    batches = 20 if ctx.cuda else 3
    limits = [f"++trainer.limit_train_batches={batches}", "++trainer.limit_val_batches=5",
              "++trainer.limit_test_batches=5"]
    started = time.monotonic()
    first = ctx.compose(task, *limits, "trainer.max_epochs=1", "test=false", label="first")
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    rows = [["1 epoch, default callbacks", f"{time.monotonic() - started:.1f}",
             "last.ckpt written" if last.is_file() else "**no last.ckpt**"]]
    if not last.is_file():
        return FAIL, table(["run", "seconds", "result"], rows), {}
    ctx.partial(table(["run", "seconds", "result"], rows))
    started = time.monotonic()
    second = ctx.compose(task, *limits, f"++ckpt_path={last}", "trainer.max_epochs=2",
                         "test=true", label="resumed")
    metrics, _ = train(second)
    resumed_last = Path(second.paths.output_dir) / "checkpoints" / "last.ckpt"
    saved = torch.load(resumed_last, map_location="cpu", weights_only=False) \
        if resumed_last.is_file() else {}
    epoch, step = saved.get("epoch"), saved.get("global_step")
    tested = {k: round(float(v), 4) for k, v in metrics.items() if k.startswith("test/")}
    ok = bool(tested) and epoch == 1 and step == 2 * batches
    rows.append(["resumed from the first run's last.ckpt to 2 epochs, tested",
                 f"{time.monotonic() - started:.1f}",
                 f"its last.ckpt: epoch {epoch}, step {step} (want 1, {2 * batches}); "
                 f"{tested or '**no test metrics**'}"])
    text = "\n".join([f"`seqmodels-train experiment={experiment}` on {ctx.device_name()}, "
                      f"{batches} batches an epoch:", "",
                      table(["run", "seconds", "result"], rows)])
    return (PASS if ok else FAIL), text, {"metrics": metrics, "epoch": epoch, "step": step}


def ddp(ctx: Context):
    gpus = torch.cuda.device_count() if ctx.cuda else 0
    if gpus < 2:
        return SKIP, (f"{gpus} GPU(s) here: DDP needs two or more (trainer=ddp_cpu runs in CI, "
                      "tests/test_distributed.py)"), {"gpus": gpus}
    run_dir = ctx.run_dir("ddp")
    args = ["experiment=sst2_bilstm", "trainer=ddp", "trainer.max_epochs=1",
            "++trainer.limit_train_batches=60", "++trainer.limit_val_batches=3",
            "++trainer.limit_test_batches=3", "logger=csv", f"hydra.run.dir={run_dir}"]
    started = time.monotonic()
    try:
        result = subprocess.run([sys.executable, "-m", "seqmodels.cli.train", *args], cwd=ROOT,
                                capture_output=True, text=True, timeout=max(ctx.left() - 3, 5))
        code, output = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired as error:
        code, output = "timeout", str(error.stdout or "")
    print(output[-3000:], flush=True)
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    ok = code == 0 and any(k.startswith("test/") for k in metrics)
    text = "\n".join([f"`seqmodels-train {' '.join(args[:-1])}` on {gpus} GPUs:", "",
                      table(["exit", "seconds", "metrics"],
                            [[code, f"{time.monotonic() - started:.0f}", metrics or "-"]])])
    return (PASS if ok else FAIL), text, {"gpus": gpus, "exit": code, "metrics": metrics}
