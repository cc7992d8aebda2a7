"""What every section of ``scripts/device_check.sh`` shares: its arguments, the device, the
configs of the three tasks at GPU or dry-run sizes, and how a section reports.

A section is one process, ``python scripts/device_check/<module>.py <section> --work DIR``
(``--dry-run`` on a CPU). It writes ``DIR/results/<section>.md`` (a markdown fragment for
summary.md) and ``DIR/results/<section>.json`` (its figures), and exits 0 (PASS), 77 (SKIP:
the fragment's first line says why) or anything else (FAIL). The shell script gives each
section its own timeout and collects the output tail.
"""

import argparse
import json
import logging
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))  # benchmark.py and plain_loops.py, reused

import benchmark  # noqa: E402
import plain_loops as pl  # noqa: E402,F401  (the sections import both from here)

PASS, FAIL, SKIP = 0, 1, 77
TASK_NAMES = ("sentiment", "tagging", "charlm")
# Shrinks the experiments' models for the CPU dry run (tiny data; the figures mean nothing).
DRY_OVERRIDES = {
    "sentiment": ["model.encoder.hidden_size=16", "model.embedding_dim=16"],
    "tagging": ["model.encoder.hidden_size=16", "model.embedding_dim=16",
                "model.chars.hidden_size=8", "model.chars.embedding_dim=8"],
    "charlm": ["model.encoder.hidden_size=32", "model.embedding_dim=16", "data.batch_size=8",
               "data.bptt=32"],
}


# Objects a section hands to Hydra-built configs: `{"_target_": "common.shared", "key": ...}`.
SHARED: dict = {}


def shared(key: str):
    return SHARED[key]


@dataclass
class Context:
    section: str
    work: Path
    dry_run: bool
    budget: float  # seconds this section may take (the shell's timeout)
    started: float

    @property
    def cuda(self) -> bool:
        return not self.dry_run and torch.cuda.is_available()

    @property
    def device(self) -> torch.device:
        return torch.device("cuda" if self.cuda else "cpu")

    def left(self) -> float:
        """Seconds left of this section's budget."""
        return self.budget - (time.monotonic() - self.started)

    def run_dir(self, label: str) -> Path:
        path = self.work / "runs" / self.section / f"{label}_{time.monotonic_ns()}"
        path.mkdir(parents=True)
        return path

    def partial(self, text: str) -> None:
        """The section's fragment so far: what summary.md shows if the section times out."""
        (self.work / "results" / f"{self.section}.md").write_text(text.rstrip() + "\n")

    def overrides(self, task: str, *extra: str) -> list[str]:
        """``experiment=...`` overrides for this device: one GPU, or the CPU at tiny sizes."""
        device = ["trainer=gpu"] if self.cuda else ["trainer=cpu"]
        return [*device, *(DRY_OVERRIDES[task] if self.dry_run else []), *extra]

    def compose(self, task: str, *extra: str, label: str = ""):
        """The config ``seqmodels-train experiment=<task's> <overrides>`` runs, in a fresh run
        directory."""
        experiment = benchmark.TASKS[task].experiment
        return benchmark.compose_config(experiment, self.overrides(task, *extra),
                                        self.run_dir(label or task))


def quiet() -> None:
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")


def table(header: list[str], rows: list[list]) -> str:
    return benchmark.table(header, rows)


def main(sections: dict[str, Callable[[Context], tuple[int, str, dict]]]) -> None:
    """Run one section: ``sections[name](ctx)`` returns (status, markdown, figures)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("section", choices=sorted(sections))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--budget", type=float, default=600.0)
    args = parser.parse_args()
    if args.dry_run:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    quiet()
    ctx = Context(args.section, args.work, args.dry_run, args.budget, time.monotonic())
    results = args.work / "results"
    results.mkdir(parents=True, exist_ok=True)
    try:
        status, text, figures = sections[args.section](ctx)
    except Exception as error:  # noqa: BLE001  (any failure is this section's FAIL, reported)
        traceback.print_exc()
        status, text, figures = FAIL, f"failed: {type(error).__name__}: {error}"[:400], {}
    (results / f"{args.section}.md").write_text(text.rstrip() + "\n")
    (results / f"{args.section}.json").write_text(json.dumps(figures, indent=1, default=str))
    print(text, flush=True)
    sys.exit(status)
