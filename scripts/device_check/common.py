"""What every section of the device check shares: its context (device, deadline, run
directories, the configs of the three tasks at GPU or dry-run sizes) and how it reports.

A section is a function ``name(ctx) -> (status, markdown, figures)`` in a module of this
folder (``plan.py`` says which). The driver (``driver.py``) calls it in its one process under
the section's deadline; ``ctx.partial(markdown, figures)`` hands the driver the rows so far,
which summary.md shows if the deadline cuts the section short.
"""

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))  # benchmarks/ and plain_loops.py, reused

from benchmarks.common import TASKS, compose_config, table  # noqa: E402,F401

PASS, FAIL, SKIP, TIMEOUT = "PASS", "FAIL", "SKIP", "TIMEOUT"
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
    deadline: float  # time.monotonic() by which the section must be done
    report: Callable[[str, dict], None] = lambda text, figures: None  # the driver's partial hook
    options: dict = field(default_factory=dict)  # the driver's --varlen and such

    @property
    def cuda(self) -> bool:
        return not self.dry_run and torch.cuda.is_available()

    @property
    def device(self) -> torch.device:
        return torch.device("cuda" if self.cuda else "cpu")

    def left(self) -> float:
        """Seconds left of this section's budget."""
        return self.deadline - time.monotonic()

    def run_dir(self, label: str) -> Path:
        path = self.work / "runs" / self.section / f"{label}_{time.monotonic_ns()}"
        path.mkdir(parents=True)
        return path

    def partial(self, text: str, figures: dict | None = None) -> None:
        """The section's markdown and figures so far: what summary.md and results.json keep if
        the deadline cuts the section short."""
        self.report(text, figures or {})

    def overrides(self, task: str, *extra: str) -> list[str]:
        """Overrides for this device: one GPU, or the CPU at tiny sizes."""
        device = ["trainer=gpu"] if self.cuda else ["trainer=cpu"]
        return [*device, *(DRY_OVERRIDES[task] if self.dry_run else []), *extra]

    def compose(self, task: str, *extra: str, label: str = ""):
        """The config ``seqmodels-train experiment=<task's> <overrides>`` runs, in a fresh run
        directory."""
        return compose_config(TASKS[task].experiment, self.overrides(task, *extra),
                              self.run_dir(label or task))

    def device_name(self) -> str:
        return torch.cuda.get_device_name() if self.cuda else "the CPU (dry run)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def failed_row(label: str, error: BaseException, width: int) -> list[str]:
    message = " ".join(f"{type(error).__name__}: {error}".split())  # one table cell
    return [label, f"**failed**: {message}"[:200]] + [""] * (width - 2)
