"""The sentiment task end to end: learning what only word order tells, padding invariance of
predictions, training, checkpointing and evaluation through the CLIs' functions."""

import csv
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from seqmodels.cli.eval import evaluate, load_model
from seqmodels.cli.train import train
from seqmodels.data.batching import collate_classification
from seqmodels.errors import ConfigError
from seqmodels.models.sentiment import SentimentClassifier
from tests.conftest import compose_config, write_lines

POSITIVE, NEGATIVE = ["good", "great", "fun", "fine"], ["bad", "dull", "awful", "weak"]
FILLERS = ["the", "film", "plot", "was", "and", "really", "a", "story", "it", "quite"]


def negation_sentence(rng: random.Random) -> tuple[list[str], int]:
    """A sentiment word whose polarity flips when "not" stands right before it; "not" also
    appears after it (no flip) so that its mere presence says nothing: only order does."""
    positive = rng.random() < 0.5
    word = rng.choice(POSITIVE if positive else NEGATIVE)
    placement = rng.choice(["before", "after", "none"])
    core = {"before": ["not", word], "after": [word, "not"], "none": [word]}[placement]
    left = [rng.choice(FILLERS) for _ in range(rng.randint(0, 4))]
    right = [rng.choice(FILLERS) for _ in range(rng.randint(0, 4))]
    return left + core + right, int(positive != (placement == "before"))


class BagOfWords(nn.Module):
    """Mean of word vectors -> linear: sees which words occur, not in what order."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, dim, mode="mean", padding_idx=0)
        self.classifier = nn.Linear(dim, 2)

    def forward(self, tokens, lengths):
        return self.classifier(self.embedding(tokens))


def fit_and_score(model, train_set, val_set, epochs=25) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):
        model.train()
        for start in range(0, len(train_set), 32):
            batch = collate_classification(train_set[start : start + 32])
            loss = nn.functional.cross_entropy(model(batch.tokens, batch.lengths), batch.targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    batch = collate_classification(val_set)
    with torch.no_grad():
        predictions = model(batch.tokens, batch.lengths).argmax(-1)
    return (predictions == batch.targets).float().mean().item()


def test_lstm_learns_negation_that_bag_of_words_cannot():
    rng = random.Random(0)
    words = ["<pad>", "<unk>", "not", *POSITIVE, *NEGATIVE, *FILLERS]
    ids = {w: i for i, w in enumerate(words)}

    def dataset(n):
        sentences = (negation_sentence(rng) for _ in range(n))
        return [([ids[w] for w in words], label) for words, label in sentences]

    train_set, val_set = dataset(1200), dataset(400)
    torch.manual_seed(0)
    lstm = SentimentClassifier(len(words), 2, {"cell": "lstm", "hidden_size": 24},
                               embedding_dim=16)
    bag = BagOfWords(len(words), 16 + 24)
    lstm_acc = fit_and_score(lstm, train_set, val_set)
    bag_acc = fit_and_score(bag, train_set, val_set)
    assert lstm_acc >= 0.95
    assert bag_acc < 0.80  # a linear bag of words cannot express "polarity XOR negated"


@pytest.mark.parametrize("chars", [False, True], ids=["words", "words+chars"])
def test_predictions_do_not_depend_on_batch_padding(chars):
    torch.manual_seed(0)
    model = SentimentClassifier(30, 3, {"cell": "gru", "hidden_size": 8, "bidirectional": True,
                                        "num_layers": 2}, embedding_dim=6, pooling="max",
                                chars={"embedding_dim": 4, "hidden_size": 3} if chars else None,
                                num_chars=12 if chars else None).eval()
    spelled = [[[2, 3, 4], [5], [6, 7], [8, 9, 10, 11], [2]], [[3, 3]], [[4, 5], [6], [7, 8, 9]]]
    examples = [([3, 4, 5, 6, 7], 0), ([8], 1), ([9, 10, 11], 2)]
    if chars:
        examples = [(*example, words) for example, words in zip(examples, spelled)]
    batch = collate_classification(examples)
    together = model(batch.tokens, batch.lengths, batch.chars)
    for i, example in enumerate(examples):
        alone = collate_classification([example])
        torch.testing.assert_close(together[i], model(alone.tokens, alone.lengths,
                                                      alone.chars)[0])


def test_char_features_tell_unseen_words_apart():
    """Two sentences of unseen words (both all ``<unk>``) differ only in spelling: a words-only
    model must score them alike, one with character features must not."""
    torch.manual_seed(0)
    words_only = SentimentClassifier(10, 2, {"hidden_size": 8}, embedding_dim=6).eval()
    with_chars = SentimentClassifier(10, 2, {"hidden_size": 8}, embedding_dim=6, num_chars=12,
                                     chars={"embedding_dim": 4, "hidden_size": 3}).eval()
    a = collate_classification([([1, 1], 0, [[2, 3, 4], [5, 6]])])  # 1 = <unk>
    b = collate_classification([([1, 1], 0, [[7, 8], [9, 10, 11]])])
    torch.testing.assert_close(words_only(a.tokens, a.lengths), words_only(b.tokens, b.lengths))
    assert not torch.allclose(with_chars(a.tokens, a.lengths, a.chars),
                              with_chars(b.tokens, b.lengths, b.chars))
    with pytest.raises(ConfigError, match="data.char_features=true"):
        SentimentClassifier(10, 2, {"hidden_size": 8}, chars={"hidden_size": 3})


@pytest.fixture
def tiny_sentiment_files(tmp_path) -> list[str]:
    rng = random.Random(1)
    lines = [f"{label} {' '.join(s)}" for s, label in (negation_sentence(rng) for _ in range(120))]
    train = write_lines(tmp_path / "data" / "train.txt", lines[:80])
    val = write_lines(tmp_path / "data" / "val.txt", lines[80:100])
    test = write_lines(tmp_path / "data" / "test.txt", lines[100:])
    return ["data=text_classification", f"data.train_path={train}", f"data.val_path={val}",
            f"data.test_path={test}"]


def test_train_then_eval_reproduces_the_validation_metric(tmp_path, tiny_sentiment_files):
    cfg = compose_config(tmp_path, [
        *tiny_sentiment_files, "trainer.max_epochs=3", "data.batch_size=16",
        "model.embedding_dim=16", "model.encoder.hidden_size=16",
        "callbacks.rich_progress_bar=null", "callbacks.model_summary=null",
    ])
    metrics, objects = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    best = objects["trainer"].checkpoint_callback.best_model_path
    assert Path(best).is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "vocab.json").is_file() and (run_dir / "config_resolved.yaml").is_file()
    assert "test/acc" in metrics

    # The checkpoint alone rebuilds the model, its vocabularies included.
    model = load_model(best)
    assert model.vocabs["tokens"] == objects["datamodule"].vocabs["tokens"]

    best_val_acc = objects["trainer"].checkpoint_callback.best_model_score.item()
    val_path = cfg.data.val_path
    eval_cfg = compose_config(tmp_path / "eval", [
        *tiny_sentiment_files, f"data.test_path={val_path}", f"ckpt_path={best}",
    ], config_name="eval")
    eval_metrics, _ = evaluate(eval_cfg)
    assert eval_metrics["test/acc"] == pytest.approx(best_val_acc, abs=1e-6)


def test_step_losses_reach_the_logger_every_log_every_n_steps(tmp_path, tiny_sentiment_files):
    """The step loss is logged only on the steps Lightning writes to its loggers (``self.log``
    is slow): the CSV log must hold it at exactly those steps, and the epoch mean every epoch."""
    cfg = compose_config(tmp_path, [
        *tiny_sentiment_files, "trainer.max_epochs=2", "data.batch_size=8", "logger=csv",
        "trainer.log_every_n_steps=3", "model.embedding_dim=8", "model.encoder.hidden_size=8",
        "callbacks=model_checkpoint", "test=false",
    ])
    _, objects = train(cfg)
    steps_run = objects["trainer"].global_step
    rows = list(csv.DictReader(open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv")))
    logged = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert steps_run == 20 and logged == [s for s in range(steps_run) if (s + 1) % 3 == 0]
    assert len([r for r in rows if r.get("train/loss_epoch")]) == 2
