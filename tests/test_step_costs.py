"""The cheaper stand-ins for Lightning's per-step machinery do what Lightning's do: the
progress bar shows the same numbers, the garbage collector is given back, and the training
loss's epoch mean is still the mean of every step's loss."""

import csv
import gc
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from seqmodels.models.sentiment import SentimentClassifier
from seqmodels.step_costs import (
    BACKWARD_HOOKS,
    STEP_HOOKS,
    SilentProfiler,
    SteadyRichProgressBar,
    dispatch_is_idle,
    frozen_garbage,
)
from seqmodels.train import train
from tests.conftest import compose_config
from tests.test_sentiment import tiny_sentiment_files  # noqa: F401 (a fixture)
from tests.test_stepping import fit


def test_objects_are_frozen_for_the_run_and_thawed_after():
    with frozen_garbage():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_a_run_gets_the_silent_profiler_and_the_steady_bar_and_logs_every_steps_loss(
        tmp_path, tiny_sentiment_files, monkeypatch):  # noqa: F811
    gathered = []
    original = SteadyRichProgressBar._update_metrics
    monkeypatch.setattr(SteadyRichProgressBar, "_update_metrics",
                        lambda self, trainer, module, *args, **kwargs: (
                            gathered.append(trainer.global_step),
                            original(self, trainer, module, *args, **kwargs)))
    cfg = compose_config(tmp_path, [
        *tiny_sentiment_files, "trainer.max_epochs=2", "data.batch_size=8", "logger=csv",
        "trainer.log_every_n_steps=1", "model.embedding_dim=8", "model.encoder.hidden_size=8",
        "callbacks.rich_progress_bar.refresh_rate=4", "callbacks.model_summary=null",
        "test=false", "data.bucketing=false",
    ])
    _, objects = train(cfg)
    trainer = objects["trainer"]
    assert isinstance(trainer.profiler, SilentProfiler)
    bar = trainer.progress_bar_callback
    assert isinstance(bar, SteadyRichProgressBar)
    # 10 batches an epoch: metrics gathered after batches 4, 8 and 10 (when the bar redraws),
    # then at validation's and the epoch's end; Lightning's bar gathers after every batch.
    assert gathered == [0, 4, 8, 10, 10, 10, 14, 18, 20, 20, 20]
    assert "train/loss" in bar._metric_component._metrics

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


class CountHooks(L.Callback):
    """Counts the backward and optimizer-step hooks Lightning calls on it."""

    def __init__(self, hooks: tuple[str, ...]):
        self.calls = []
        for hook in hooks:
            setattr(self, hook, lambda *args, hook=hook: self.calls.append(hook))


CLIPPED = {"gradient_clip_val": 0.05}


@pytest.mark.parametrize("precision", ["32-true",
                                       pytest.param("bf16-mixed", marks=pytest.mark.cpu_bf16)])
@pytest.mark.parametrize("hooks", [BACKWARD_HOOKS, STEP_HOOKS])
def test_lightnings_dispatch_is_skipped_only_where_it_would_do_nothing(precision, hooks,
                                                                       one_thread):
    plain, _ = fit(SentimentClassifier, CLIPPED, None, manual=True, precision=precision)
    assert plain._plain_backward and plain._plain_step
    counter = CountHooks(hooks)
    hooked, trainer = fit(SentimentClassifier, CLIPPED, None, manual=True, callbacks=[counter],
                          precision=precision)
    # Lightning's path where the callback listens, so its hooks run once per backward or step.
    assert hooked._plain_backward == (hooks != BACKWARD_HOOKS)
    assert hooked._plain_step == (hooks != STEP_HOOKS)
    assert counter.calls == list(hooks) * trainer.global_step
    for (name, a), b in zip(plain.named_parameters(), hooked.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_lightnings_dispatch_is_kept_under_ddp_and_loss_scaling():
    model = SentimentClassifier(vocab_size=5, num_classes=2, embedding_dim=4,
                                encoder={"cell": "lstm", "hidden_size": 3})
    ddp = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    single = L.Trainer(accelerator="cpu", devices=1, logger=False)
    scaler = torch.amp.GradScaler("cpu")  # what 16-bit mixed precision brings on a GPU
    scaled = L.Trainer(accelerator="cpu", devices=1, logger=False,
                       plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    for hooks in (BACKWARD_HOOKS, STEP_HOOKS):
        assert dispatch_is_idle(single, model, hooks)
        assert not dispatch_is_idle(ddp, model, hooks)
        assert not dispatch_is_idle(scaled, model, hooks)
