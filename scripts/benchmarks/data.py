"""Section 6: read + index time of each dataset, loader-only throughput, and the peak
resident memory of default training runs."""

import os
import subprocess
import sys
import time
from statistics import median

import plain_loops as pl
from benchmarks.common import (
    ROOT,
    TASKS,
    Bench,
    Task,
    compose_config,
    table,
    verdict,
)
from seqmodels.config import build
from seqmodels.data.base import SequenceDataModule


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
