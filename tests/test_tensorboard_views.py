"""What TensorBoard shows, read back from the event files: the HParams record of a run, the
confusion matrix and per-tag F1 images against counts by hand, and the per-step gradient norms
against a direct autograd computation, without changing training."""

import copy
import random
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from seqmodels.callbacks.tensorboard_views.hidden_grad_norms import HiddenGradNorms, step_norms
from seqmodels.callbacks.tensorboard_views.hparams_tab import HParamsTab, flatten
from seqmodels.callbacks.tensorboard_views.validation import ConfusionMatrixView, PerClassF1View
from seqmodels.cli.eval import load_model
from seqmodels.cli.train import train
from seqmodels.data.batching import IGNORE_INDEX, collate_classification
from seqmodels.models.sentiment import SentimentClassifier
from seqmodels.models.tag_metrics import tag_report
from tests.conftest import compose_config, write_lines
from tests.test_sentiment import negation_sentence
from tests.test_tagging import tiny_overrides, toy_files  # noqa: F401 (a fixture)

QUIET = ["callbacks.rich_progress_bar=null", "callbacks.model_summary=null",
         "callbacks.early_stopping=null"]


pytestmark = pytest.mark.usefixtures("one_thread")


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    accumulator.Reload()
    return accumulator


def view(trainer: L.Trainer, kind: type):
    return next(c for c in trainer.callbacks if isinstance(c, kind))


@pytest.fixture
def sentiment_overrides(tmp_path) -> list[str]:
    rng = random.Random(3)
    lines = [f"{label} {' '.join(s)}" for s, label in (negation_sentence(rng) for _ in range(90))]
    paths = {split: write_lines(tmp_path / "data" / f"{split}.txt", part)
             for split, part in (("train", lines[:60]), ("val", lines[60:75]),
                                 ("test", lines[75:]))}
    return ["data=text_classification", f"data.train_path={paths['train']}",
            f"data.val_path={paths['val']}", f"data.test_path={paths['test']}",
            "data.batch_size=16", "model.embedding_dim=8", "model.encoder.hidden_size=8", *QUIET]


def test_sentiment_run_shows_its_settings_metrics_and_confusion_matrices(tmp_path,
                                                                         sentiment_overrides):
    cfg = compose_config(tmp_path, [*sentiment_overrides, "trainer.max_epochs=2"])
    _, objects = train(cfg)
    run_dir, trainer = Path(cfg.paths.output_dir), objects["trainer"]
    board = events(run_dir)

    # HParams: the run's own settings and end status; no experiment summary, so that
    # TensorBoard builds the table's columns from all runs, metrics from their scalars.
    content = board.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    assert hparams_metadata.EXPERIMENT_TAG not in content
    start = hparams_metadata.parse_session_start_info_plugin_data(
        content[hparams_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["model/encoder/cell"].string_value == "lstm"
    assert start.hparams["data/batch_size"].number_value == 16
    assert start.hparams["trainer/max_epochs"].number_value == 2
    assert start.hparams["seed"].number_value == cfg.seed
    assert start.hparams["model/scheduler"].string_value == "null"
    assert "model/optimizer/_partial_" not in start.hparams
    end = hparams_metadata.parse_session_end_info_plugin_data(
        content[hparams_metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_SUCCESS
    assert {"val/acc_best", "val/loss", "test/acc", "test/f1"} <= set(board.Tags()["scalars"])

    # One confusion matrix per validation epoch (none for the sanity check), no per-tag chart.
    images = board.Images("val/confusion_matrix")
    assert len(images) == 2 and images[0].width > 100 and images[0].height > 100
    assert "val/per_class_f1" not in board.Tags()["images"]
    steps_per_epoch = trainer.num_training_batches
    assert [e.step for e in images] == [steps_per_epoch, 2 * steps_per_epoch]

    # The last matrix equals a count by hand of the final weights' validation predictions.
    model = load_model(run_dir / "checkpoints" / "last.ckpt").eval()
    counts = torch.zeros(2, 2, dtype=torch.long)
    with torch.no_grad():
        for batch in objects["datamodule"].val_dataloader():
            predictions = model(batch.tokens, batch.lengths).argmax(dim=-1)
            for true, predicted in zip(batch.targets.tolist(), predictions.tolist()):
                counts[true, predicted] += 1
    assert counts.sum() == 15
    assert torch.equal(view(trainer, ConfusionMatrixView).last, counts)


def test_tagger_run_shows_per_tag_f1(tmp_path, toy_files):  # noqa: F811 (the fixture)
    cfg = compose_config(tmp_path, ["experiment=ewt_upos", "trainer.max_epochs=1", "test=false",
                                    *tiny_overrides(toy_files), *QUIET])
    _, objects = train(cfg)
    run_dir, trainer = Path(cfg.paths.output_dir), objects["trainer"]
    board = events(run_dir)
    assert len(board.Images("val/per_class_f1")) == 1
    assert "val/confusion_matrix" not in board.Tags()["images"]

    # Per-tag F1 from the view's counts equals a count by hand of true/false positives.
    model = load_model(run_dir / "checkpoints" / "last.ckpt").eval()
    tags = model.tags
    tp, fp, fn = ([0] * len(tags) for _ in range(3))
    with torch.no_grad():
        for batch in objects["datamodule"].val_dataloader():
            predictions = model(batch.tokens, batch.lengths, batch.chars).argmax(dim=2)
            for true, predicted in zip(batch.targets.flatten().tolist(),
                                       predictions.flatten().tolist()):
                if true == IGNORE_INDEX:
                    continue
                if true == predicted:
                    tp[true] += 1
                else:
                    fp[predicted] += 1
                    fn[true] += 1
    by_hand = {tag: 2 * tp[i] / (2 * tp[i] + fp[i] + fn[i]) if tp[i] else 0.0
               for i, tag in enumerate(tags)}
    rows, _ = tag_report(tags, view(trainer, PerClassF1View).last)
    assert {r["tag"]: r["f1"] for r in rows} == pytest.approx(by_hand)


def test_views_do_nothing_without_tensorboard(tmp_path, sentiment_overrides):
    cfg = compose_config(tmp_path, [*sentiment_overrides, "trainer.max_epochs=1", "test=false",
                                    "logger=csv", "callbacks=[default,hidden_grad_norms]",
                                    *QUIET, "callbacks.hidden_grad_norms.every_n_steps=1"])
    _, objects = train(cfg)
    assert not (Path(cfg.paths.output_dir) / "tensorboard").exists()
    assert view(objects["trainer"], ConfusionMatrixView).last is None
    assert view(objects["trainer"], HiddenGradNorms).history == {}


def test_flatten_gives_values_the_hparams_tab_takes():
    settings = {"model": {"_target_": "x.Y", "encoder": {"cell": "rnn", "sizes": [1, 2]},
                          "optimizer": {"_partial_": True, "lr": 0.1}, "scheduler": None},
                "seed": 7}
    assert flatten(settings) == {"model/_target_": "x.Y", "model/encoder/cell": "rnn",
                                 "model/encoder/sizes": "[1, 2]", "model/optimizer/lr": 0.1,
                                 "model/scheduler": "null", "seed": 7}
    assert HParamsTab({"a": {"b": 1}}).hparams == {"a/b": 1}


# -- gradient norms through time ---------------------------------------------------------------
def tiny_classifier(**kwargs) -> SentimentClassifier:
    torch.manual_seed(0)
    return SentimentClassifier(20, 2, {"cell": "rnn", "hidden_size": 6}, embedding_dim=5,
                               pooling="final", **kwargs)


def batches(count: int) -> list:
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        lengths = torch.randint(1, 12, (6,), generator=generator).tolist()
        examples = [(torch.randint(2, 20, (n,), generator=generator).tolist(), n % 2)
                    for n in lengths]
        out.append(collate_classification(examples))
    return out


def fit(model, data, save_dir: Path, callbacks=()) -> L.Trainer:
    torch.manual_seed(0)  # dropout masks come from here: the same in every run
    trainer = L.Trainer(max_steps=len(data), accelerator="cpu", callbacks=list(callbacks),
                        logger=TensorBoardLogger(save_dir, name="", version=""),
                        limit_val_batches=0, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(
        data, batch_size=None, collate_fn=lambda batch: batch))
    return trainer


def test_grad_norms_equal_a_direct_autograd_computation(tmp_path):
    model, data = tiny_classifier(), batches(1)
    before = copy.deepcopy(model)
    callback = HiddenGradNorms(every_n_steps=1, align="end")
    fit(model, data, tmp_path, [callback])

    # Directly: the gradient on the embedded words, which are the encoder's input here.
    batch = data[0]
    embedded = []
    before.embeddings.register_forward_hook(lambda m, i, out: embedded.append(out) or
                                            out.retain_grad())
    F.cross_entropy(before(batch.tokens, batch.lengths), batch.targets).backward()
    norms = embedded[0].grad.norm(dim=2)  # (B, T)
    lengths = batch.lengths.tolist()
    expected = torch.tensor([
        torch.stack([norms[row, n - 1 - back] for row, n in enumerate(lengths) if n > back]).mean()
        for back in range(max(lengths))
    ])
    assert list(callback.history) == [0]
    torch.testing.assert_close(callback.history[0], expected)
    # The vanishing it is there to show: a simple RNN's last word gets far more than its first.
    assert expected[0] > 10 * expected[max(lengths) - 1]
    board = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    board.Reload()
    assert [e.step for e in board.Images("train/grad_norm_by_step")] == [0]


def test_grad_norms_do_not_change_training(tmp_path):
    data = batches(4)
    dropout = {"word_dropout": 0.2, "embedding_dropout": 0.2, "dropout": 0.2}
    plain, watched = tiny_classifier(**dropout), tiny_classifier(**dropout)
    fit(plain, data, tmp_path / "plain")
    callback = HiddenGradNorms(every_n_steps=2)
    fit(watched, data, tmp_path / "watched", [callback])
    assert sorted(callback.history) == [0, 2]
    for (name, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        assert torch.equal(a, b), name


def test_step_norms_average_the_rows_long_enough():
    grad = torch.zeros(2, 3, 1)
    grad[0, :, 0] = torch.tensor([1.0, 2.0, 3.0])
    grad[1, :2, 0] = torch.tensor([5.0, 7.0])
    lengths = torch.tensor([3, 2])
    torch.testing.assert_close(step_norms(grad, lengths, "start"), torch.tensor([3.0, 4.5, 3.0]))
    torch.testing.assert_close(step_norms(grad, lengths, "end"), torch.tensor([5.0, 3.5, 1.0]))
