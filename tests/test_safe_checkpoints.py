"""A checkpoint from someone else cannot run code on your machine (issue 28), tried as a user
would, through the commands from a directory outside the repo.

Every command that reads a checkpoint (seqmodels-eval, -predict, -generate, -summary, -export,
and seqmodels-train resuming) refuses, in one line naming the file and why, a checkpoint carrying
a pickle payload, a model_class outside the project, a data ``_target_`` or an optimizer
``_target_`` outside the allowlist; the payload's file is never created. The pickle payload
and the data target are live: ``trust_checkpoint=true`` (the opt-in, with its warning) runs
the one, Hydra's ``instantiate`` the other. The real checkpoints of all three tasks, weights
alone (the best) and full (last.ckpt), still load in every command with the same figures:
eval and a resumed run report the training run's test figure.

Each task's tiny model is trained once for the module. To keep CI short it runs the sentiment
task and one malicious file per command (``-m slow``: the rest); the same loader's other
real-checkpoint paths run in CI elsewhere: eval == the reported figure of each task's best
checkpoint (tests/test_checkpoints.py), predict (test_predict.py), generate (test_charlm.py),
export (test_export.py), resuming (test_resume.py)."""

import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from seqmodels.config import config_dir
from seqmodels.errors import ConfigError
from seqmodels.training import trusted
from seqmodels.training.checkpoint_io import AtomicCheckpointIO
from tests.conftest import ROOT, run_cli, write_lines
from tests.tiny_datasets import write_named_datasets

SMALL = ("debug=limit", "trainer.max_epochs=1", "logger=csv")
# Tiny versions of the three experiments; one validation an epoch, so that the best checkpoint
# and last.ckpt hold the same epoch's weights.
TASKS = {
    "sentiment": ("experiment=sst2_bilstm", "model.embedding_dim=16",
                  "model.encoder.hidden_size=16"),
    "tagger": ("experiment=ewt_upos", "model.embedding_dim=16", "model.encoder.hidden_size=16",
               "model.chars.embedding_dim=4", "model.chars.hidden_size=4"),
    "char_lm": ("experiment=shakespeare_char", "data.batch_size=8", "data.bptt=32",
                "data.test_fraction=0.05", "model.embedding_dim=8",
                "model.encoder.hidden_size=16", "trainer.val_check_interval=1.0",
                # OneCycleLR's warm-up must be over a step long (10 steps x 0.1 is not)
                "model.scheduler.pct_start=0.25"),
}


@dataclass
class Run:
    overrides: tuple[str, ...]
    directory: Path
    best: Path
    last: Path
    reported: dict[str, float]  # the training run's test figures


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A user's working directory outside the repo, with the tiny named datasets."""
    root = tmp_path_factory.mktemp("user")
    data = write_named_datasets(root / "datasets")
    cwd = root / "work"
    cwd.mkdir()
    write_lines(cwd / "sentences.txt", ["a gripping , funny film", "the dog sees a red film ."])
    return cwd, {"SEQMODELS_DATA_DIR": str(data), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def runs(user):
    """``runs(task)``: that task's tiny training run, made at most once for the module."""
    cwd, env = user
    done: dict[str, Run] = {}

    def get(task: str) -> Run:
        if task not in done:
            directory = cwd / f"run_{task}"
            overrides = (*TASKS[task], *SMALL)
            ok(run_cli("seqmodels.cli.train", *overrides, f"hydra.run.dir={directory}",
                       cwd=cwd, env=env))
            (best,) = [p for p in (directory / "checkpoints").glob("*.ckpt")
                       if not p.name.startswith("last")]
            done[task] = Run(overrides, directory, best, directory / "checkpoints" / "last.ckpt",
                             test_figures(directory / "metrics.json"))
        return done[task]

    return get


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def test_figures(metrics_file: Path) -> dict[str, float]:
    figures = {k: v for k, v in json.loads(metrics_file.read_text()).items()
               if k.startswith("test/")}
    assert figures, metrics_file
    return figures


test_figures.__test__ = False  # a helper, not a test


def command(name: str, ckpt: Path, user, run: Run, out: Path,
            *options: str) -> subprocess.CompletedProcess:
    """The command a user types to use ``ckpt``; eval, export and resume write ``out``.
    ``resume_last``: ``ckpt`` is a run's last.ckpt (in ``out``), which Lightning finds."""
    cwd, env = user
    if name == "resume_last":
        (out / "checkpoints").mkdir(parents=True)
        shutil.copy(ckpt, out / "checkpoints" / "last.ckpt")
        return run_cli("seqmodels.cli.train", *run.overrides, "ckpt_path=last",
                       f"hydra.run.dir={out}", *options, cwd=cwd, env=env)
    args = {
        "eval": ("seqmodels.cli.eval", f"hydra.run.dir={out}"),
        "predict": ("seqmodels.cli.predict", "input=sentences.txt"),
        "generate": ("seqmodels.cli.generate", "prompt=ROMEO:", "num_chars=40", "seed=3"),
        "summary": ("seqmodels.cli.summary",),
        "export": ("seqmodels.cli.export", f"output={out}"),
        "resume": ("seqmodels.cli.train", *run.overrides, f"hydra.run.dir={out}"),
    }[name]
    return run_cli(args[0], f"ckpt_path={ckpt}", *args[1:], *options, cwd=cwd, env=env)


# -- malicious checkpoints, one per vector ------------------------------------------------------
class Payload:
    """What the issue found: an object whose unpickling runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def pickle_payload(checkpoint: dict, marker: Path) -> None:
    checkpoint["seqmodels"]["note"] = Payload(marker)


def foreign_model_class(checkpoint: dict, marker: Path) -> None:
    # Built from the checkpoint's hyperparameters: open(file=marker, mode="w").
    checkpoint["seqmodels"]["model_class"] = "builtins.open"
    checkpoint["hyper_parameters"] = {"file": str(marker), "mode": "w"}


def foreign_data_target(checkpoint: dict, marker: Path) -> None:
    # What seqmodels-eval instantiates (Hydra's blocklist lets open through).
    checkpoint["seqmodels"]["data"] = {"_target_": "builtins.open", "_args_": [str(marker), "w"]}


def foreign_optimizer_target(checkpoint: dict, marker: Path) -> None:
    checkpoint["hyper_parameters"]["optimizer"] = {
        "_target_": "builtins.open", "_partial_": True, "_args_": [str(marker), "w"]}


VECTORS = {  # how each is made, and what its refusal says
    "pickle": (pickle_payload, "it holds a pickled posix.system, code that reading it would run"),
    "model_class": (foreign_model_class, "its model_class 'builtins.open' is not one of "
                    "seqmodels' task modules"),
    "data_target": (foreign_data_target, "seqmodels.data._target_ is 'builtins.open', which is "
                    "not one of seqmodels' datamodules"),
    "optimizer_target": (foreign_optimizer_target, "hyper_parameters.optimizer._target_ is "
                         "'builtins.open', which is not an optimizer of torch.optim"),
}
COMMANDS = ("eval", "predict", "generate", "summary", "export", "resume", "resume_last")
# Every vector through every command (one loader serves them all); CI (`make test`) tries each
# command once and each vector at least once, `make test-all` the whole matrix.
CI_PAIRS = {("data_target", "eval"), ("pickle", "predict"), ("optimizer_target", "generate"),
            ("model_class", "summary"), ("pickle", "export"), ("optimizer_target", "resume"),
            ("pickle", "resume_last")}


def malicious(genuine: Path, vector: str, folder: Path) -> tuple[Path, Path]:
    """A copy of a real full checkpoint (it resumes and loads as it is) with one vector added;
    returns it and the file its payload would create."""
    marker = folder / f"{vector}_payload_ran"
    checkpoint = torch.load(genuine, map_location="cpu", weights_only=True)
    VECTORS[vector][0](checkpoint, marker)
    path = folder / f"{vector}.ckpt"
    torch.save(checkpoint, path)
    return path, marker


@pytest.mark.parametrize(("vector", "name"), [
    pytest.param(v, c, marks=() if (v, c) in CI_PAIRS else pytest.mark.slow)
    for v in VECTORS for c in COMMANDS])
def test_every_command_refuses_every_vector_in_one_line(vector, name, runs, user, tmp_path):
    run = runs("sentiment")
    ckpt, marker = malicious(run.last, vector, tmp_path)
    out = tmp_path / "out"
    result = command(name, ckpt, user, run, out)
    assert result.returncode == 1, (result.stdout + result.stderr)[-4000:]
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    named = out / "checkpoints" / "last.ckpt" if name == "resume_last" else ckpt
    assert last_line.startswith(f"error: refused {named}: {VECTORS[vector][1]}"), result.stderr
    assert "trust_checkpoint=true" in last_line
    assert not marker.exists()


def test_each_payload_is_live_and_trust_checkpoint_runs_it_after_a_warning(runs, user, tmp_path):
    """The refusals above guard something: with the opt-in the pickle payload runs through
    the real command, and Hydra builds the data target."""
    run = runs("sentiment")
    ckpt, marker = malicious(run.last, "pickle", tmp_path)
    result = ok(command("summary", ckpt, user, run, tmp_path / "out", "trust_checkpoint=true"))
    assert marker.exists()
    assert f"trust_checkpoint=true: reading {ckpt} with pickle's full powers" in result.stderr

    # Even trusted, a model_class is built only if it is a LightningModule.
    ckpt, marker = malicious(run.last, "model_class", tmp_path)
    with pytest.raises(ConfigError, match="model_class 'builtins.open' is not a LightningModule"):
        trusted.build_task_module(trusted.read_checkpoint(ckpt, trust=True), ckpt)
    assert not marker.exists()

    from hydra.utils import instantiate

    ckpt, marker = malicious(run.last, "data_target", tmp_path)
    instantiate(torch.load(ckpt, weights_only=True)["seqmodels"]["data"]).close()
    assert marker.exists()


# -- real checkpoints -------------------------------------------------------------------------
def use_command(task: str) -> str:
    return "generate" if task == "char_lm" else "predict"


@pytest.mark.parametrize("task", [
    "sentiment", pytest.param("tagger", marks=pytest.mark.slow),
    pytest.param("char_lm", marks=pytest.mark.slow)])
def test_real_checkpoints_load_in_every_command_with_the_same_figures(task, runs, user,
                                                                      tmp_path):
    run = runs(task)
    for ckpt in (run.best, run.last):  # weights alone, full
        out = tmp_path / f"eval_{ckpt.stem}"
        ok(command("eval", ckpt, user, run, out))
        assert test_figures(out / "metrics.json") == run.reported, ckpt
    # Same weights in both (one epoch): the same predictions or text, the same summary.
    outputs = [ok(command(use_command(task), ckpt, user, run, tmp_path)).stdout
               for ckpt in (run.best, run.last)]
    assert outputs[0] and outputs[0] == outputs[1]
    model_class = torch.load(run.last, weights_only=True)["seqmodels"]["model_class"]
    summary = ok(command("summary", run.last, user, run, tmp_path)).stdout
    # the table's title may be wrapped at the terminal's width
    assert f"{model_class.rpartition('.')[2]} from {run.last}" in " ".join(summary.split())
    # Resumed from last.ckpt with no epoch left: the whole state restores, and the run tests
    # its best checkpoint again.
    resumed = tmp_path / "resumed"
    ok(command("resume", run.last, user, run, resumed))
    assert test_figures(resumed / "metrics.json") == run.reported


# -- in process: the allowlist and reading once -------------------------------------------------
def config_targets(group: str) -> set[str]:
    targets = set()
    for path in (Path(config_dir()) / group).glob("*.yaml"):
        target = (yaml.safe_load(path.read_text()) or {}).get("_target_")
        if target:
            targets.add(target)
    return targets


def test_the_allowlist_names_every_task_module_and_datamodule_of_the_configs():
    import importlib

    import lightning as L

    from seqmodels.models.base import SequenceModule

    assert config_targets("model") == trusted.TASK_MODULES
    assert config_targets("data") == trusted.DATAMODULES
    for names, base in ((trusted.TASK_MODULES, SequenceModule),
                        (trusted.DATAMODULES, L.LightningDataModule)):
        for name in names:
            module, _, attribute = name.rpartition(".")
            assert issubclass(getattr(importlib.import_module(module), attribute), base)


@pytest.mark.parametrize(("name", "optimizer", "scheduler"), [
    ("torch.optim.Adam", True, False), ("torch.optim.SGD", True, False),
    ("torch.optim.lr_scheduler.OneCycleLR", False, True),
    ("torch.optim.lr_scheduler.ReduceLROnPlateau", False, True),
    ("torch.optim.lr_scheduler", False, False),  # a module, not a class
    ("torch.optim.adam.Adam", False, False), ("torch.optim._functional", False, False),
    ("torch.optim.lr_scheduler.LambdaLR.__init__", False, False),
    ("os.system", False, False), ("torch.load", False, False)])
def test_optimizers_and_schedulers_are_torchs_classes_alone(name, optimizer, scheduler):
    assert trusted.is_optimizer(name) is optimizer
    assert trusted.is_scheduler(name) is scheduler


def test_a_recorded_data_config_with_an_interpolation_is_refused():
    checkpoint = {"seqmodels": {"data": {
        "_target_": "seqmodels.data.classification.TextClassificationDataModule",
        "train_path": "${oc.decode:'{_target_: builtins.open}'}"}}}
    with pytest.raises(ConfigError, match=r"seqmodels\.data\.train_path holds an interpolation"):
        trusted.check_names(checkpoint, "x.ckpt")


def test_trust_checkpoint_takes_true_or_false_only(tmp_path):
    torch.save({}, tmp_path / "x.ckpt")
    with pytest.raises(ConfigError, match="trust_checkpoint='yes': give true or false"):
        trusted.read_checkpoint(tmp_path / "x.ckpt", trust="yes")


@pytest.mark.parametrize("damage", ["text", "truncated"])
def test_a_damaged_file_is_named_in_one_line(tmp_path, damage):
    path = tmp_path / "model.ckpt"
    if damage == "text":
        write_lines(path, ["not a checkpoint"])
    else:
        torch.save({"state_dict": {"w": torch.ones(1000)}}, path)
        path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ConfigError, match=f"{path} is not a readable checkpoint") as error:
        trusted.read_checkpoint(path)
    assert "\n" not in str(error.value)


def test_each_command_reads_the_file_once(runs, monkeypatch):
    """The tools build the model from the one dict read; a resumed trainer gets the dict that
    seqmodels-train's early check read."""
    from seqmodels.cli.eval import load_model
    from seqmodels.cli.train import check_checkpoint

    run = runs("sentiment")
    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load",
                        lambda *a, **k: reads.append(str(a[0])) or real_load(*a, **k))
    load_model(run.best)
    assert reads == [str(run.best)]

    reads.clear()
    checkpoint = check_checkpoint(str(run.last), str(run.directory))
    io = AtomicCheckpointIO(preloaded={str(run.last): checkpoint})
    assert io.load_checkpoint(run.last) is checkpoint
    assert reads == [str(run.last)]


def test_make_tensorboard_serves_on_this_machine_unless_told():
    def dry_run(*args: str) -> str:
        return subprocess.run(["make", "-n", "-C", str(ROOT), "tensorboard", *args],
                              capture_output=True, text=True, check=True).stdout

    line = [c for c in dry_run().splitlines() if "tensorboard --logdir" in c]
    assert line and "--bind_all" not in line[0] and "--host" not in line[0]
    assert "--bind_all" in dry_run("ARGS=--bind_all")
