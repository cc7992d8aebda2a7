"""Sections of ``scripts/device_check.sh`` that run commands as a user types them.

env: what this machine has (torch, CUDA, cuDNN, Lightning, Hydra and where each came from).
cuda_tests: the tests that ``-k cuda`` selects (a ``cuda`` marker, a ``[cuda]`` parameter, or
    ``cuda`` in a name), run on a GPU; on a CPU only collected, and their count reported.
ddp: ``seqmodels-train ... trainer=ddp`` on every GPU (``trainer=ddp_cpu``, 2 processes, on a
    CPU), with the throughput callback.
resume: the default experiment with default callbacks for one epoch, resumed from its
    ``last.ckpt`` for a second, then tested.
"""

import importlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import FAIL, PASS, ROOT, SKIP, TASK_NAMES, Context, benchmark, main, table

TRAIN = [sys.executable, "-m", "seqmodels.cli.train"]


def env(ctx: Context):
    rows = [["python", sys.version.split()[0], sys.executable]]
    for name in ("torch", "lightning", "hydra", "omegaconf", "torchmetrics", "seqmodels"):
        try:
            module = importlib.import_module(name)
            rows.append([name, getattr(module, "__version__", "?"),
                         str(Path(module.__file__).parent)])
        except ImportError as error:
            rows.append([name, f"**missing**: {error}", ""])
    cuda = torch.cuda.is_available()
    facts = {"cuda_available": cuda, "torch_cuda": torch.version.cuda,
             "data_dir": os.environ.get("SEQMODELS_DATA_DIR", "(default)")}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        facts.update(gpus=torch.cuda.device_count(), gpu=props.name,
                     capability=f"{props.major}.{props.minor}",
                     memory_gib=round(props.total_memory / 2**30, 1),
                     cudnn=torch.backends.cudnn.version(),
                     bf16=torch.cuda.is_bf16_supported())
    gpu = f"{facts['gpus']} x {facts['gpu']}, cuDNN {facts['cudnn']}" if cuda else "no CUDA GPU"
    text = "\n".join([f"torch {torch.__version__} (CUDA {torch.version.cuda}): {gpu}", "",
                      table(["package", "version", "from"], rows), "",
                      table(["fact", "value"], [[k, v] for k, v in facts.items()])])
    missing = any("missing" in str(row[1]) for row in rows)
    return (FAIL if missing else PASS), text, {"packages": rows, **facts}


def pytest_counts(output: str) -> dict:
    """{'passed': 3, 'skipped': 1, ...} from pytest's last summary line."""
    found = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed|"
                       r"tests? collected)", output)
    return {kind: int(n) for n, kind in found}


def cuda_tests(ctx: Context):
    command = [sys.executable, "-m", "pytest", "-q", "-k", "cuda", "-p", "no:cacheprovider",
               "tests"]
    if not ctx.cuda:
        command.insert(3, "--collect-only")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            timeout=max(ctx.left() - 5, 10))
    print(result.stdout[-6000:], result.stderr[-3000:], sep="\n", flush=True)
    counts = pytest_counts(result.stdout)
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "(no output)"
    shown = " ".join(command[1:])
    text = f"`python {shown}`: {last}"
    if result.returncode not in (0, 5):  # 5: no test selected
        return FAIL, text, counts
    selected = counts.get("tests collected", counts.get("test collected", 0)) if not ctx.cuda \
        else sum(counts.get(k, 0) for k in ("passed", "skipped", "xfailed", "xpassed"))
    if result.returncode == 5 or selected == 0:
        return SKIP, f"no test is selected by `-k cuda` yet\n\n{text}", counts
    if not ctx.cuda:
        return SKIP, f"no CUDA: {selected} tests selected by `-k cuda`, collected only\n\n{text}", \
            counts
    return PASS, text, counts


def run_train(ctx: Context, label: str, args: list[str], budget: float):
    """``seqmodels-train`` as a user types it (``python -m seqmodels.cli.train``), in its own run
    directory unless ``args`` name one; returns (return code, run directory, seconds)."""
    run_dir = ctx.run_dir(label)
    if not any(a.startswith("ckpt_path=") for a in args):
        args = [*args, f"hydra.run.dir={run_dir}"]
    started = time.monotonic()
    with open(ctx.work / "runs" / ctx.section / f"{label}.log", "w") as log:
        print("$ seqmodels-train " + " ".join(args), flush=True)
        try:
            code = subprocess.run([*TRAIN, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=max(budget, 5)).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    tail = (ctx.work / "runs" / ctx.section / f"{label}.log").read_text().splitlines()[-8:]
    print("\n".join(tail), flush=True)
    return code, run_dir, time.monotonic() - started


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def ddp(ctx: Context):
    tasks = TASK_NAMES if ctx.cuda else ("sentiment",)
    batches = 60 if ctx.cuda else 3
    trainer = ["trainer=ddp"] if ctx.cuda else ["trainer=ddp_cpu", "trainer.devices=2"]
    rows, figures, failed = [], {}, []
    for name in tasks:
        experiment = benchmark.TASKS[name].experiment
        if ctx.left() < 20:
            rows.append([f"`{experiment}`", "not run: the section's budget was spent", "", "", ""])
            continue
        args = [f"experiment={experiment}", *trainer, *ctx.overrides(name)[1:],
                "trainer.max_epochs=1", f"++trainer.limit_train_batches={batches}",
                "++trainer.limit_val_batches=3", "++trainer.limit_test_batches=3", "logger=csv",
                "++callbacks.throughput._target_=seqmodels.callbacks.throughput.Throughput",
                "++callbacks.throughput.output_dir=${paths.output_dir}",
                f"++callbacks.throughput.warmup_steps={batches // 3}"]
        code, run_dir, seconds = run_train(ctx, f"ddp_{name}", args, ctx.left() - 5)
        metrics, speed = read_json(run_dir / "metrics.json"), read_json(run_dir / "throughput.json")
        ok = code == 0 and any(k.startswith("val/") for k in metrics)
        if not ok:
            failed.append(name)
        figures[name] = {"code": code, "metrics": metrics, "throughput": speed}
        tps = speed.get("tokens_per_second")
        tested = "tested" if any(k.startswith("test/") for k in metrics) else "no test split"
        rows.append([f"`{experiment}`", f"ok, {tested}" if ok else f"**failed** (exit {code})",
                     speed.get("world_size", "?"), f"{tps:,.0f}" if tps else "-",
                     f"{seconds:.0f}"])
        ctx.partial(ddp_text(trainer, batches, rows))
    return (FAIL if failed else PASS), ddp_text(trainer, batches, rows), figures


def ddp_text(trainer: list[str], batches: int, rows: list[list]) -> str:
    return "\n".join([f"`seqmodels-train experiment=... {' '.join(trainer)}`, one epoch of "
                      f"{batches} batches per rank, then tested where the data has a test split:",
                      "", table(["task", "fit + test", "ranks", "tokens/s (all ranks)",
                                 "seconds"], rows)])


def resume(ctx: Context):
    experiment = benchmark.TASKS["sentiment"].experiment
    batches = 40 if ctx.cuda else 3
    common = [f"experiment={experiment}", *ctx.overrides("sentiment"),
              f"++trainer.limit_train_batches={batches}", "++trainer.limit_val_batches=5",
              "++trainer.limit_test_batches=5"]
    code1, run_dir, s1 = run_train(ctx, "first", [*common, "trainer.max_epochs=1", "test=false"],
                                   ctx.left() / 2)
    last = run_dir / "checkpoints" / "last.ckpt"
    rows = [["1 epoch, default callbacks", code1, f"{s1:.0f}", "last.ckpt written"
             if last.is_file() else "**no last.ckpt**"]]
    if code1 != 0 or not last.is_file():
        return FAIL, table(["run", "exit", "seconds", "result"], rows), {}
    code2, _, s2 = run_train(ctx, "resumed", [*common, f"ckpt_path={last}",
                                              "trainer.max_epochs=2", "test=true"],
                             ctx.left() - 5)
    metrics = read_json(run_dir / "metrics.json")
    epoch = torch.load(last, map_location="cpu", weights_only=False).get("epoch")
    tested = {k: round(v, 4) for k, v in metrics.items() if k.startswith("test/")}
    ok = code2 == 0 and tested and epoch == 1
    rows.append([f"resumed from {last.relative_to(ctx.work)}, to 2 epochs, tested", code2,
                 f"{s2:.0f}", f"last.ckpt epoch {epoch}; {tested or '**no test metrics**'}"])
    text = "\n".join([f"`seqmodels-train experiment={experiment}` on {ctx.device}, "
                      f"{batches} batches an epoch:", "",
                      table(["run", "exit", "seconds", "result"], rows)])
    return (PASS if ok else FAIL), text, {"metrics": metrics, "epoch": epoch}


if __name__ == "__main__":
    main({"env": env, "cuda_tests": cuda_tests, "ddp": ddp, "resume": resume})
