"""A run fails early and clearly, and loses no work: non-finite losses stop it with the last
good checkpoint kept; a real SIGINT/SIGTERM writes a checkpoint that a new run resumes from."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seqmodels.cli.train import train
from seqmodels.errors import ConfigError, TrainingError
from tests.conftest import ROOT, compose_config, write_lines


def tiny_files(tmp_path: Path, n: int = 60) -> list[str]:
    rng = random.Random(0)
    words = ["good", "bad", "film", "plot", "fun", "dull"]
    lines = [f"{rng.randint(0, 1)} " + " ".join(rng.choices(words, k=rng.randint(1, 6)))
             for _ in range(n)]
    train_file = write_lines(tmp_path / "data" / "train.txt", lines)
    return ["data=text_classification", f"data.train_path={train_file}",
            f"data.val_path={train_file}", "data.batch_size=8", "model.embedding_dim=8",
            "model.encoder.hidden_size=8", "callbacks.rich_progress_bar=null",
            "callbacks.model_summary=null", "logger=csv"]


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from seqmodels.models.sentiment import SentimentClassifier

    original = SentimentClassifier.training_step

    def poisoned(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.current_epoch == 1 and batch_idx == 2 else loss

    monkeypatch.setattr(SentimentClassifier, "training_step", poisoned)
    cfg = compose_config(tmp_path, [*tiny_files(tmp_path), "trainer.max_epochs=5"])
    # Found before epoch 1 saves anything (the check runs before every checkpoint write).
    found = r"loss became nan \(non-finite since step \d+; now epoch 1"
    with pytest.raises(TrainingError, match=found):
        train(cfg)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    saved = sorted(checkpoints.glob("*.ckpt"))
    assert saved, "the epoch-0 checkpoint must survive"
    for path in saved:
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert state["epoch"] == 0
        assert all(torch.isfinite(t).all() for t in state["state_dict"].values())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_real_signal_writes_a_checkpoint_and_the_run_resumes_from_it(tmp_path, signum):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "seqmodels.cli.train", *tiny_files(tmp_path, n=400),
            "trainer.max_epochs=10000", "callbacks.early_stopping=null", "test=false",
            f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    # Wait for the first epoch's checkpoint, so the run is really training.
    while time.monotonic() < deadline and not last.exists():
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.2)
    time.sleep(0.5)
    first_step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    written = last.stat().st_mtime_ns
    process.send_signal(signum)
    output, _ = process.communicate(timeout=60)
    assert "interrupted: checkpoint written" in output, output[-3000:]
    # The interruption wrote last.ckpt anew (not only the validation before it did) ...
    assert last.stat().st_mtime_ns > written
    state = torch.load(last, map_location="cpu", weights_only=True)
    # ... from where training had got to, which is no earlier than that validation.
    assert state["global_step"] >= first_step
    assert process.returncode != 0  # an interrupted run does not report success

    resumed_dir = tmp_path / "resumed"
    resumed = subprocess.run(
        [sys.executable, "-m", "seqmodels.cli.train", *tiny_files(tmp_path, n=400),
         f"trainer.max_epochs={state['epoch'] + 2}", "callbacks.early_stopping=null",
         "test=false", f"ckpt_path={last}", f"hydra.run.dir={resumed_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = torch.load(resumed_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)
    assert final["epoch"] == state["epoch"] + 1


def test_two_runs_with_the_same_seed_give_identical_metrics(tmp_path):
    overrides = [*tiny_files(tmp_path), "trainer.max_epochs=2", "trainer.deterministic=true",
                 "model.word_dropout=0.2", "model.dropout=0.3"]
    first, _ = train(compose_config(tmp_path / "a", overrides))
    second, _ = train(compose_config(tmp_path / "b", overrides))
    assert first == second
    assert first["val/loss"] > 0


def test_a_dataset_smaller_than_one_batch_still_trains(tmp_path):
    cfg = compose_config(tmp_path, [*tiny_files(tmp_path, n=3), "data.batch_size=64",
                                    "trainer.max_epochs=1"])
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 1  # one batch of 3: one optimizer step
    model = objects["model"].eval()
    (batch,) = list(objects["datamodule"].val_dataloader())  # the same 3 sentences
    with torch.no_grad():
        predicted = model(batch.tokens, batch.lengths, batch.chars).argmax(-1)
    # The logged accuracy is that of the trained weights on those sentences.
    assert metrics["val/acc"] == pytest.approx((predicted == batch.targets).float().mean().item())


def test_eval_refuses_a_checkpoint_of_another_task(tmp_path):
    from seqmodels.cli.eval import evaluate

    cfg = compose_config(tmp_path, [*tiny_files(tmp_path), "trainer.max_epochs=1"])
    _, objects = train(cfg)
    checkpoint = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    text = write_lines(tmp_path / "corpus.txt", ["to be or not to be"] * 50)
    eval_cfg = compose_config(tmp_path / "eval", [
        "data=text_files", f"data.path={text}", f"ckpt_path={checkpoint}",
    ], config_name="eval")
    with pytest.raises(ConfigError, match="holds a classification model"):
        evaluate(eval_cfg)
