"""One truth per checkpoint: the test figure a training run reports is what ``seqmodels-eval``
of its best checkpoint prints, with no data flags, for every task, with weight averaging and
across a resume; eval reads the training run's data from the checkpoint and refuses data of
another label set; checkpoints survive ``kill -9`` at any moment, and the best one holds the
weights alone."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli, write_lines
from tests.tiny_datasets import sentiment_lines


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def best_checkpoint(run: Path) -> Path:
    (best,) = [p for p in (run / "checkpoints").glob("*.ckpt") if not p.name.startswith("last")]
    return best


def eval_metrics(cwd: Path, env: dict, ckpt: Path, *overrides: str) -> dict:
    out = cwd / f"eval_{len(list(cwd.glob('eval_*')))}"
    ok(run_cli("seqmodels.cli.eval", f"ckpt_path={ckpt}", f"hydra.run.dir={out}", *overrides,
               cwd=cwd, env=env))
    return json.loads((out / "metrics.json").read_text())


def test_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith("test/")}


test_metrics.__test__ = False  # a helper, not a test


@pytest.mark.parametrize("overrides", [
    # Weight averaging on (the SST-2 recipe's callbacks), and the other two tasks.
    ("experiment=sst2_bilstm",),
    ("experiment=ewt_upos",),
    ("experiment=shakespeare_char", "data.batch_size=8", "data.bptt=32", "data.test_fraction=0.05"),
], ids=["sentiment_weight_averaging", "tagger", "char_lm"])
def test_the_reported_test_figure_is_what_eval_of_the_best_checkpoint_prints(user, overrides):
    cwd, env = user
    run = cwd / "run"
    ok(run_cli("seqmodels.cli.train", *overrides, "debug=limit", "logger=csv",
               f"hydra.run.dir={run}", cwd=cwd, env=env))
    reported = test_metrics(json.loads((run / "metrics.json").read_text()))
    assert reported
    assert test_metrics(eval_metrics(cwd, env, best_checkpoint(run))) == reported


def test_after_a_resume_too(user):
    cwd, env = user
    run = cwd / "run"
    common = ("experiment=sst2_bilstm", "debug=limit", "logger=csv", f"hydra.run.dir={run}")
    ok(run_cli("seqmodels.cli.train", *common, "trainer.max_epochs=1", cwd=cwd, env=env))
    ok(run_cli("seqmodels.cli.train", *common, "trainer.max_epochs=3", "ckpt_path=last",
               cwd=cwd, env=env))
    reported = test_metrics(json.loads((run / "metrics.json").read_text()))
    assert reported
    assert test_metrics(eval_metrics(cwd, env, best_checkpoint(run))) == reported


def six_class_lines(n: int, seed: int) -> list[str]:
    """A 6-class set: SST-2-like sentences with labels named A..F."""
    return [f"{'ABCDEF'[i % 6]} {line.split(' ', 1)[1]}"
            for i, line in enumerate(sentiment_lines(n, seed))]


def test_eval_takes_the_training_data_from_the_checkpoint(user, tmp_path):
    cwd, env = user
    train_file = write_lines(tmp_path / "own" / "train.txt", six_class_lines(240, 5))
    run = cwd / "run"
    # No val or test file: both carved from train (the run's seed), and so again by eval.
    ok(run_cli("seqmodels.cli.train", "data=text_classification", f"data.train_path={train_file}",
               "data.test_fraction=0.2", "debug=limit", "logger=csv", "model.embedding_dim=8",
               "model.encoder.hidden_size=8", f"hydra.run.dir={run}", cwd=cwd, env=env))
    reported = test_metrics(json.loads((run / "metrics.json").read_text()))
    best = best_checkpoint(run)
    assert test_metrics(eval_metrics(cwd, env, best)) == reported
    # A setting typed on the command line wins over the recorded one.
    other = write_lines(tmp_path / "own" / "other.txt", six_class_lines(30, 8))
    changed = test_metrics(eval_metrics(cwd, env, best, f"data.test_path={other}"))
    assert changed.keys() == reported.keys() and changed != reported
    # SST-2's labels are not this model's: refused in one line naming both sets.
    result = run_cli("seqmodels.cli.eval", f"ckpt_path={best}", "data=sst2",
                     f"hydra.run.dir={cwd / 'refused'}", cwd=cwd, env=env)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "['negative', 'positive']" in message, result.stderr[-2000:]  # SST-2's, named
    assert "['A', 'B', 'C', 'D', 'E', 'F']" in message, result.stderr[-2000:]
    # A checkpoint that records no data settings is refused in one line, not guessed at.
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    del checkpoint["seqmodels"]["data"]
    torch.save(checkpoint, run / "checkpoints" / "no_data.ckpt")
    result = run_cli("seqmodels.cli.eval", f"ckpt_path={run / 'checkpoints' / 'no_data.ckpt'}",
                     f"hydra.run.dir={cwd / 'no_data'}", cwd=cwd, env=env)
    assert result.returncode != 0
    assert "records no data settings" in result.stderr.strip().splitlines()[-1], \
        result.stderr[-2000:]


def test_checkpoint_sizes_best_holds_the_weights_alone(user):
    cwd, env = user
    run = cwd / "run"
    ok(run_cli("seqmodels.cli.train", "experiment=sst2_bilstm", "debug=limit", "logger=csv",
               f"hydra.run.dir={run}", cwd=cwd, env=env))
    best = torch.load(best_checkpoint(run), map_location="cpu", weights_only=True)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert "optimizer_states" not in best and "current_model_state" not in best
    assert {"optimizer_states", "current_model_state", "loops"} <= set(last)
    last_size = (run / "checkpoints" / "last.ckpt").stat().st_size
    assert best_checkpoint(run).stat().st_size < last_size / 3
    # The averaged weights are what the best checkpoint holds (last.ckpt's state_dict), not
    # the raw ones (current_model_state), as seqmodels-eval and -predict read them.
    ok(run_cli("seqmodels.cli.summary", f"ckpt_path={best_checkpoint(run)}", cwd=cwd, env=env))
    # Resuming from it is refused in one line that says where the training state is.
    result = run_cli("seqmodels.cli.train", "experiment=sst2_bilstm", "debug=limit",
                     f"ckpt_path={best_checkpoint(run)}", f"hydra.run.dir={cwd / 'again'}",
                     cwd=cwd, env=env)
    assert result.returncode != 0 and "last.ckpt" in result.stderr.strip().splitlines()[-1]


def checkpoint_files(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob("*.ckpt")) if (run / "checkpoints").is_dir() else []


def kill_when(cwd: Path, env: dict, overrides: list[str], ready, deadline: float = 240) -> None:
    """Start a training run and SIGKILL it as soon as ``ready(start time)`` holds."""
    started = time.time()
    process = subprocess.Popen([sys.executable, "-m", "seqmodels.cli.train", *overrides], cwd=cwd,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + deadline
        while process.poll() is None and time.monotonic() < end and not ready(started):
            time.sleep(0.001)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it was killed"


def newer(paths, since: float) -> list[Path]:
    found = []
    for path in paths:
        try:
            if path.stat().st_mtime >= since:
                found.append(path)
        except FileNotFoundError:  # renamed away meanwhile
            pass
    return found


def test_sigkill_at_any_moment_leaves_loadable_checkpoints_and_resumes(user):
    cwd, env = user
    run = cwd / "run"
    folder = run / "checkpoints"
    # Many short epochs: a checkpoint write every two steps, of the SST-2 recipe with weight
    # averaging (weights, averages and Adam moments in last.ckpt), big enough (about 60 MB)
    # that a write takes long enough to be caught in the middle.
    common = ["experiment=sst2_bilstm", "logger=csv", "callbacks.early_stopping=null",
              "model.encoder.hidden_size=512", "data.batch_size=4",
              "trainer.max_epochs=40", "+trainer.limit_train_batches=2",
              "+trainer.limit_val_batches=1", f"hydra.run.dir={run}"]

    def temporaries(since: float = 0) -> list[Path]:
        return newer(folder.glob(".*.tmp"), since) if folder.is_dir() else []

    inside_a_write = 0
    for attempt, ready in enumerate([
        lambda since: bool(temporaries(since)),                      # inside a write
        lambda since: bool(newer([folder / "last.ckpt"], since)),    # right after one (resumed)
        lambda since: bool(temporaries(since)),                      # inside one (resumed)
        lambda since: time.time() > since + 12,                      # anywhere
    ]):
        started = time.time()
        kill_when(cwd, env, common + (["ckpt_path=last"] if attempt else []), ready)
        inside_a_write += bool(temporaries(started))
        for path in checkpoint_files(run):
            torch.load(path, map_location="cpu", weights_only=True)  # whole, or it raises
    assert inside_a_write >= 1  # a kill did land inside a checkpoint write
    ok(run_cli("seqmodels.cli.train", *common, "trainer.max_epochs=42", "ckpt_path=last",
               cwd=cwd, env=env))
    assert (run / "metrics.json").is_file()
    assert torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)["epoch"] == 41
    assert checkpoint_files(run)
    for path in checkpoint_files(run):
        torch.load(path, map_location="cpu", weights_only=True)
