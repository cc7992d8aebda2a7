"""What every benchmark shares: the three tasks, the config a ``seqmodels-train`` command runs,
ratios taken inside one run, markdown tables, and ``Bench`` (settings, tasks, a scratch
directory, the figures so far). ``scripts/benchmark.py`` and ``scripts/device_check/`` both
build on it."""

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import lightning as L
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, open_dict

import plain_loops as pl  # scripts/ is on sys.path
from seqmodels.cli.train import build_data_and_model, train
from seqmodels.config import config_dir

ROOT = Path(__file__).resolve().parents[2]
# The datasets beside this checkout, as the Makefile uses them, unless the caller chose others.
SHARED_DATA = ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class Task:
    name: str
    experiment: str
    dataset: str
    unit: str  # what a "token" is for this task
    overhead_batches: int  # batches per timed epoch in the overhead section
    speed_batches: int  # batches per repetition in the varlen/optim/threads sections
    accuracy_epochs: int  # full epochs in the batching section (0: not measured)
    rss_run: tuple[str, ...]  # overrides of the training run whose peak memory is measured


TASKS = {
    # Memory: whole epochs where batch shapes vary (allocations grow with new shapes), a
    # part of one where every window has the same shape.
    "sentiment": Task("sentiment", "sst2_bilstm", "SST-2", "tokens", 100, 40, 3,
                      ("trainer.max_epochs=2",)),
    "tagging": Task("tagging", "ewt_upos", "UD English-EWT", "tokens", 100, 30, 2,
                    ("trainer.max_epochs=3",)),
    "charlm": Task("charlm", "shakespeare_char", "Tiny Shakespeare", "characters", 10, 6, 0,
                   ("trainer.max_epochs=1", "++trainer.limit_train_batches=40",
                    "++trainer.limit_val_batches=5")),
}


@dataclass
class Settings:
    quick: bool
    reps: int  # timed repetitions per arm (after one warm-up)
    threads: int  # torch intra-op threads (child processes get OMP_NUM_THREADS)

    def batches(self, full: int) -> int:
        return 3 if self.quick else full


# -- plumbing ----------------------------------------------------------------------------------
def compose_config(experiment: str, overrides: list[str], run_dir: Path) -> DictConfig:
    """The config ``seqmodels-train experiment=<experiment> <overrides>`` would run, writing
    under ``run_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", *overrides],
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.log_dir = str(run_dir / "logs")
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg


def task_available(task: Task) -> str | None:
    """None when the task's model and datamodule import; else why not."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cfg = compose_config(task.experiment, [], Path(tmp))
            get_class(cfg.model._target_)
            get_class(cfg.data._target_)
        except Exception as error:  # noqa: BLE001  (anything: the task is not there yet)
            return f"{type(error).__name__}: {error}".splitlines()[0][:200]
    return None


def ratios(a: pl.Arm, b: pl.Arm, warmup: int = 1) -> list[float]:
    """tokens/s of ``a`` over ``b``, repetition by repetition (each pair run back to back),
    leaving out pairs that other processes disturbed (unless every pair was)."""
    pairs = list(zip(a.epochs, b.epochs))
    kept = pairs[warmup:] or pairs
    clean = [(x, y) for x, y in kept if not (x.disturbed or y.disturbed)]
    return [x.tokens_per_second / y.tokens_per_second for x, y in clean or kept]


def order_balanced_ratio(a: pl.Arm, b: pl.Arm, warmup: int = 1) -> float:
    """The median, over pairs of consecutive epochs, of each pair's geometric-mean ratio.

    ShadowArms runs the plain loop after Lightning's epoch on even epochs and before it on odd
    ones, and which side runs first shifts one epoch's ratio by up to 0.1 (EWT); a pair holds
    one epoch of each order, so the shift cancels within it, which a median over single epochs
    (4 of one order, 3 of the other) does not do. Pairs with a disturbed epoch are left out;
    with no whole pair, the median over single epochs."""
    per_epoch = {i: x.tokens_per_second / y.tokens_per_second
                 for i, (x, y) in enumerate(zip(a.epochs, b.epochs))
                 if i >= warmup and not (x.disturbed or y.disturbed)}
    pairs = [math.sqrt(per_epoch[i] * per_epoch[i + 1])
             for i in range(warmup, len(a.epochs) - 1, 2) if i in per_epoch and i + 1 in per_epoch]
    return median(pairs) if pairs else median(ratios(a, b, warmup))


def noise(arms: list[pl.Arm], warmup: int = 1) -> str:
    """How many repetitions other processes disturbed (they are left out of the figures)."""
    count = min(len(arm.epochs) for arm in arms) - warmup
    disturbed = count - len(pl.clean_rounds(arms, warmup))
    if disturbed == 0:
        return f"{count} repetitions, none disturbed"
    left = "left out" if disturbed < count else "all kept: no clean one"
    return (f"{count} repetitions, {disturbed} disturbed by other processes "
            f"(> {pl.DISTURBED:.1f} core busy elsewhere; {left})")


def faults_per_batch(arm: pl.Arm, warmup: int = 1) -> float:
    """Median minor page faults per batch over the epochs after the warm-up."""
    kept = arm.epochs[warmup:] or arm.epochs
    return median(m.faults / max(m.batches, 1) for m in kept)


def fmt_ratios(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def tps(arm: pl.Arm, warmup: int = 1) -> float:
    return pl.steady_tokens_per_second(arm.epochs, warmup)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


class Bench:
    """What every section needs: settings, tasks, a scratch directory, the results so far."""

    def __init__(self, settings: Settings, tasks: list[str], scratch: Path):
        self.settings = settings
        self.tasks = {}
        self.missing = {}
        for name in tasks:
            reason = task_available(TASKS[name])
            if reason is None:
                self.tasks[name] = TASKS[name]
            else:
                self.missing[name] = reason
        self.scratch = scratch
        self.facts: dict[str, float] = {}  # figures a later section refers to

    def run_dir(self, label: str) -> Path:
        path = self.scratch / f"{label}_{time.monotonic_ns()}"
        path.mkdir(parents=True)
        return path

    def missing_note(self, wanted: tuple[str, ...]) -> str:
        notes = [f"- {TASKS[n].experiment}: not measured, its code is not there yet "
                 f"({self.missing[n]})" for n in wanted if n in self.missing]
        return ("\n" + "\n".join(notes) + "\n") if notes else ""

    def data_and_model(self, task: Task, overrides: tuple[str, ...] = ()):
        cfg = compose_config(task.experiment, list(overrides), self.run_dir(task.name))
        L.seed_everything(cfg.seed, verbose=False)
        datamodule, model = build_data_and_model(cfg)
        return cfg, datamodule, model

    def plain_arms(self, task: Task, specs: list[pl.ArmSpec], overrides: tuple[str, ...] = ()):
        cfg, datamodule, model = self.data_and_model(task, overrides)
        return [spec.build(cfg, datamodule, model) for spec in specs], datamodule

    def shadowed_train(self, task: Task, plan_name: str, specs: list[pl.ArmSpec],
                       overrides: list[str], evaluate: bool = False,
                       clean_reps: int | None = None) -> dict:
        """``train(cfg)`` with plain-loop arms run beside it (plain_loops.ShadowArms)."""
        cfg = compose_config(task.experiment, overrides, self.run_dir(plan_name))
        pl.PLANS[plan_name] = plan = {"cfg": cfg, "specs": specs, "evaluate": evaluate,
                                      "clean_reps": clean_reps}
        with open_dict(cfg):
            cfg.callbacks.benchmark_shadow_arms = {"_target_": "plain_loops.ShadowArms",
                                                   "plan": plan_name}
        train(cfg)
        return plan

