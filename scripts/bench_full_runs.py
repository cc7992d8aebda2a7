"""Does length bucketing cost accuracy? Whole ``seqmodels-train`` runs (early stopping, the
best-dev checkpoint tested) with bucketed and with random batches, over several seeds, written
as the ``full_runs`` section of docs/benchmarks.md.

    python scripts/bench_full_runs.py --tasks sentiment --seeds 12345,1,2 --parallel 2
    python scripts/bench_full_runs.py --seeds sentiment=12345,1,2 --seeds tagging=12345

A plain loop's other naive choices change no number: ``packed`` and ``padded`` give the same
outputs and gradients, for-loop and fused Adam the same steps (tests/test_encoder.py,
tests/test_fast_paths.py). So random batches through ``seqmodels-train`` stand for the naive
plain loop here, and section 2 measures the speed. Accuracy is all this section measures, so
runs may share the machine (``--parallel``, one torch thread each). A run whose directory
under ``--runs-dir`` already holds a ``metrics.json`` is read, not run again: an interrupted
measurement continues where it stopped.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from statistics import mean, stdev

import benchmark as bench

ARMS = {"bucketed (default)": "true", "random batches": "false"}


def run_dir(root: Path, experiment: str, arm: str, seed: int) -> Path:
    return root / experiment / f"{'bucketed' if ARMS[arm] == 'true' else 'random'}_s{seed}"


def command(experiment: str, arm: str, seed: int, directory: Path) -> list[str]:
    return [sys.executable, "-m", "seqmodels.cli.train", f"experiment={experiment}",
            f"data.bucketing={ARMS[arm]}", f"seed={seed}", "logger=csv",
            "callbacks.rich_progress_bar=null", f"hydra.run.dir={directory}"]


def run_all(jobs: list[tuple[list[str], Path]], parallel: int) -> None:
    """Start the missing runs, ``parallel`` at a time, one torch thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    waiting = [(cmd, d) for cmd, d in jobs if not (d / "metrics.json").is_file()]
    running: list[subprocess.Popen] = []
    while waiting or running:
        while waiting and len(running) < parallel:
            cmd, directory = waiting.pop(0)
            directory.mkdir(parents=True, exist_ok=True)
            print("running:", " ".join(cmd[1:]), file=sys.stderr, flush=True)
            log = open(directory / "stdout.log", "w")  # noqa: SIM115 (closed with the process)
            running.append(subprocess.Popen(cmd, cwd=bench.ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT))
        time.sleep(2)
        for process in [p for p in running if p.poll() is not None]:
            running.remove(process)
            if process.returncode:
                raise SystemExit(f"a run failed ({process.returncode}): {process.args}")


def read_run(directory: Path) -> dict:
    metrics = json.loads((directory / "metrics.json").read_text())
    rows = list(csv.DictReader(open(next(directory.glob("csv/metrics.csv")))))
    best = next(directory.glob("checkpoints/epoch_*.ckpt")).stem  # epoch_012: the 13th
    # From the run's first file to its last: the run's own wall time, even when read later.
    wall = ((directory / "metrics.json").stat().st_mtime
            - (directory / "config_resolved.yaml").stat().st_mtime)
    return {"dev": metrics["val/acc_best"], "test": metrics["test/acc"],
            "epochs": sum(1 for r in rows if r.get("val/acc")),
            "best_epoch": int(best.split("_")[1]) + 1, "wall": wall}


def spread(values: list[float]) -> str:
    text = f"{100 * mean(values):.2f}"
    return text + (f" ± {100 * stdev(values):.2f}" if len(values) > 1 else "")


def lower_test_note(ours: list[dict], naive: list[dict]) -> str:
    """A sentence where bucketing's test accuracy is below random batches' in every seed."""
    behind = [n["test"] - o["test"] for o, n in zip(ours, naive)]
    if not all(gap > 0 for gap in behind):
        return ""
    return (f"Test accuracy is lower with bucketing in every seed, by {100 * mean(behind):.2f} "
            "points on average.")


def section(root: Path, seeds_of: dict[str, list[int]], facts: dict) -> str:
    parts = [
        "## 2b. Does bucketing cost accuracy? Whole runs",
        "",
        "Section 2 trains for a few epochs; this one trains to the end: `seqmodels-train "
        "experiment=...` exactly as a user runs it (early stopping on dev accuracy, the "
        "best-dev checkpoint tested), with `data.bucketing=true` (the default) and `false`, "
        "the same seeds for both. Random batches stand for the naive plain loop: its other "
        "choices (packed sequences, for-loop Adam) give the same numbers as the defaults "
        "(tests/test_encoder.py, tests/test_fast_paths.py). Accuracy in %, mean ± standard "
        "deviation over the seeds. The summary judges by dev accuracy, as issue 6 asks; test "
        "accuracy stands beside it. Wall times are for information only: these runs used one "
        "torch thread each and shared the machine; section 2 measures speed.",
        "",
    ]
    for name, seeds in seeds_of.items():
        task = bench.TASKS[name]
        rows, results = [], {}
        for arm in ARMS:
            runs = [read_run(run_dir(root, task.experiment, arm, s)) for s in seeds]
            results[arm] = runs
            rows.append([arm, spread([r["dev"] for r in runs]), spread([r["test"] for r in runs]),
                         ", ".join(f"{100 * r['test']:.2f}" for r in runs),
                         ", ".join(f"{r['best_epoch']}/{r['epochs']}" for r in runs),
                         f"{mean(r['wall'] for r in runs):.0f}"])
        ours, naive = results["bucketed (default)"], results["random batches"]
        facts[f"full_acc_{name}"] = [mean(r["test"] for r in ours), mean(r["test"] for r in naive),
                                     mean(r["dev"] for r in ours), mean(r["dev"] for r in naive),
                                     len(seeds)]
        parts += [f"### {task.experiment} ({task.dataset}), seeds {', '.join(map(str, seeds))}",
                  "", bench.table(["batches", "best dev acc", "test acc", "test acc per seed",
                                   "best epoch / epochs run", "mean wall s"], rows), ""]
        note = lower_test_note(ours, naive)
        parts += [note, ""] if note else []
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="sentiment,tagging")
    parser.add_argument("--seeds", action="append", default=[],
                        help="LIST (every task) or TASK=LIST, e.g. tagging=12345; repeatable "
                             "(default 12345,1,2)")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--runs-dir", type=Path, default=bench.ROOT / "logs" / "bench_full_runs")
    parser.add_argument("--output", type=Path, default=bench.DEFAULT_OUTPUT)
    args = parser.parse_args()
    seeds_of = {name: [12345, 1, 2] for name in args.tasks.split(",")}
    for given in args.seeds:
        name, _, values = given.rpartition("=")
        for task in [name] if name else list(seeds_of):
            seeds_of[task] = [int(v) for v in values.split(",")]
    if "SEQMODELS_DATA_DIR" not in os.environ and bench.SHARED_DATA.is_dir():
        os.environ["SEQMODELS_DATA_DIR"] = str(bench.SHARED_DATA)
    start = time.perf_counter()
    jobs = []
    for name, seeds in seeds_of.items():
        experiment = bench.TASKS[name].experiment
        for seed in seeds:
            for arm in ARMS:
                directory = run_dir(args.runs_dir, experiment, arm, seed)
                jobs.append((command(experiment, arm, seed, directory), directory))
    run_all(jobs, args.parallel)
    facts: dict = {}
    body = section(args.runs_dir, seeds_of, facts)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "python scripts/bench_full_runs.py " + " ".join(sys.argv[1:])
    bench.write_document(args.output, {"full_runs": bench.block(
        "full_runs", body, cmd.strip(), when, time.perf_counter() - start, facts)})
    print(body)


if __name__ == "__main__":
    main()
