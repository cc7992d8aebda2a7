"""The cheaper stand-ins for Lightning's per-step machinery do what Lightning's do: the
profiler is silent unless one is chosen, the garbage collector is given back, and the training
loss's epoch mean is still the mean of every step's loss (logged every step here)."""

import csv
import gc
from pathlib import Path

import pytest

from seqmodels.cli.train import train
from seqmodels.training.step_costs import SilentProfiler, frozen_garbage
from tests.conftest import compose_config
from tests.test_sentiment import tiny_sentiment_files  # noqa: F401 (a fixture)


def test_objects_are_frozen_for_the_run_and_thawed_after():
    with frozen_garbage():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_a_run_gets_the_silent_profiler_and_logs_every_steps_loss(
        tmp_path, tiny_sentiment_files):  # noqa: F811
    cfg = compose_config(tmp_path, [
        *tiny_sentiment_files, "trainer.max_epochs=2", "data.batch_size=8", "logger=csv",
        "trainer.log_every_n_steps=1", "model.embedding_dim=8", "model.encoder.hidden_size=8",
        "callbacks.rich_progress_bar.refresh_rate=4", "callbacks.model_summary=null",
        "test=false", "data.bucketing=false",
    ])
    _, objects = train(cfg)
    trainer = objects["trainer"]
    assert isinstance(trainer.profiler, SilentProfiler)
    assert type(trainer.progress_bar_callback).__name__ == "SteadyRichProgressBar"

    rows = list(csv.DictReader(open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv")))
    steps = [(int(r["epoch"]), float(r["train/loss"])) for r in rows if r.get("train/loss")]
    for epoch in (0, 1):
        losses = [loss for e, loss in steps if e == epoch]  # 10 batches of 8 sentences each
        epoch_mean = next(float(r["train/loss_epoch"]) for r in rows
                          if r.get("train/loss_epoch") and int(r["epoch"]) == epoch)
        assert len(losses) == 10
        assert epoch_mean == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_a_chosen_profiler_is_kept(tmp_path, tiny_sentiment_files):  # noqa: F811
    cfg = compose_config(tmp_path, [
        *tiny_sentiment_files, "trainer.max_epochs=1", "model.embedding_dim=8",
        "model.encoder.hidden_size=8", "+trainer.profiler=simple", "callbacks=none",
        "logger=csv", "test=false",
    ])
    _, objects = train(cfg)
    assert type(objects["trainer"].profiler).__name__ == "SimpleProfiler"
