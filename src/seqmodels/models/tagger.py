"""Many-to-many: one tag per token (POS tagging, chunking, NER).

Word embedding (+ a character-level vector per word) -> encoder -> dropout -> linear at every
step -> cross-entropy over the real tokens only. The character features are the word+char
setup of Plank et al. (2016): a small bidirectional RNN reads each word's characters, and its
two final states are concatenated to the word's embedding. Rare and unseen words, where a
word-only tagger has nothing but the ``<unk>`` vector to go on, are where they help.
"""

import logging
from collections.abc import Sequence

import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassStatScores,
)

from seqmodels.data.batching import IGNORE_INDEX, Batch
from seqmodels.data.chars import SpelledWords
from seqmodels.errors import ConfigError
from seqmodels.models.base import SequenceModule, net_part
from seqmodels.models.embeddings import WordEmbeddings
from seqmodels.models.networks import TaggerNet
from seqmodels.models.span_metrics import SpanF1, check_scheme
from seqmodels.models.tag_metrics import SubsetAccuracy, tag_report

log = logging.getLogger(__name__)


class SequenceTagger(SequenceModule):
    """Embedding (+ char features) -> encoder -> dropout -> linear per step -> softmax.

    :param vocab_size, trained_vocab_size, num_chars, tags: read from the datamodule's
        vocabularies (``trained_vocab_size``: the training split's words, the others were
        added from a vectors file).
    :param encoder: keyword arguments of ``RNNEncoder`` (its input size is the word vector size
        plus the character feature size).
    :param embedding_dim: word vector size.
    :param embeddings: pretrained word vectors: ``path`` (a GloVe or word2vec text file;
        null: none), ``freeze``, and ``extra_words`` (read by seqmodels-train: how many of the
        file's other words join the vocabulary); see ``models/embeddings.py``.
    :param chars: character features (``embedding_dim``, ``hidden_size``, ``cell`` of the
        char RNN), or null for words only.
    :param word_dropout: in training, replace this share of word ids with ``<unk>`` so that the
        ``<unk>`` vector (and the char features behind it) learn to tag unseen words.
    :param embedding_dropout: dropout on the word (+ char) vectors; ``dropout``: before the
        output layer.
    :param span_scheme: ``bio`` or ``bioes`` adds span precision/recall/F1 (chunking, NER);
        null for tag sets without spans (POS).

    Metrics skip padding: ``acc`` (token accuracy), ``f1`` (macro over tags) and ``oov_acc``:
    accuracy on tokens whose word the training split's vocabulary lacks (``<unk>``, or a word
    added from the vectors file). With the default ``data.min_freq=1`` those are exactly the
    tokens never seen in training, with or without pretrained vectors.
    """

    task = "tagging"

    def __init__(
        self,
        vocab_size: int,
        num_chars: int,
        tags: Sequence[str],
        encoder: dict,
        embedding_dim: int = 100,
        embeddings: dict | None = None,
        trained_vocab_size: int | None = None,
        chars: dict | None = None,
        word_dropout: float = 0.0,
        embedding_dropout: float = 0.0,
        dropout: float = 0.5,
        span_scheme: str | None = None,
        optimizer=None,
        scheduler=None,
        scheduler_monitor: str = "val/loss",
    ):
        super().__init__(optimizer, scheduler, scheduler_monitor)
        for name, p in (("word_dropout", word_dropout), ("embedding_dropout", embedding_dropout),
                        ("dropout", dropout)):
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {p}")
        tags = list(tags)
        if len(tags) < 2:
            raise ConfigError(f"a tagger needs at least 2 tags, the training data has {tags}")
        if span_scheme is not None:
            check_scheme(tags, span_scheme)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.tags = tags
        self.net = TaggerNet(
            WordEmbeddings.from_config(vocab_size, embedding_dim, trained_vocab_size, embeddings,
                                       chars=chars, num_chars=num_chars),
            encoder, len(tags), word_dropout=word_dropout,
            embedding_dropout=embedding_dropout, dropout=dropout)

        num_tags = len(tags)
        metrics = {
            "acc": MulticlassAccuracy(num_tags, average="micro", ignore_index=IGNORE_INDEX),
            "f1": MulticlassF1Score(num_tags, average="macro", ignore_index=IGNORE_INDEX),
        }
        if span_scheme is not None:
            metrics["span"] = SpanF1(tags, span_scheme)
        metrics = MetricCollection(metrics, compute_groups=False)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_oov, self.test_oov = SubsetAccuracy(), SubsetAccuracy()
        self.test_tag_stats = MulticlassStatScores(num_tags, average=None,
                                                   ignore_index=IGNORE_INDEX)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        self.test_report: list[dict] = []  # per-tag rows of the last test run

    # -- the network (``self.net``, models/networks.py) ---------------------------------------
    # Its parts, as tools and callbacks read them (seqmodels-summary, the gradient views).
    embeddings = net_part("embeddings")
    encoder = net_part("encoder")
    output = net_part("output")

    def forward(self, tokens: Tensor, lengths: Tensor,
                chars: SpelledWords | Tensor | None = None) -> Tensor:
        """(B, T) word ids, (B,) lengths and the batch's ``SpelledWords`` (or (B, T, W) char
        ids) -> (B, T, num_tags) logits."""
        return self.net(tokens, lengths, chars)

    # -- steps --------------------------------------------------------------------------------
    def _step(self, batch: Batch) -> tuple[Tensor, Tensor]:
        return self.net.loss(batch)

    @staticmethod
    def _num_tokens(batch: Batch) -> int:
        if batch.num_tokens is not None:  # counted by the collate
            return batch.num_tokens
        return int(batch.lengths.sum())

    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # the sanity check's numbers are not a result

    def training_loss(self, batch: Batch, batch_idx: int) -> Tensor:
        loss, _ = self._step(batch)
        self.log_train_loss(loss, batch_size=len(batch), weight=self._num_tokens(batch))
        return loss

    def _evaluate(self, batch: Batch, loss_metric: MeanMetric, metrics: MetricCollection,
                  oov: SubsetAccuracy) -> Tensor:
        loss, logits = self._step(batch)
        preds = logits.argmax(dim=2)  # (B, T)
        loss_metric(loss, weight=self._num_tokens(batch))
        metrics.update(preds, batch.targets)
        oov.update(preds, batch.targets, self.embeddings.unseen(batch.tokens))
        return preds

    def validation_step(self, batch: Batch, batch_idx: int) -> Tensor:
        preds = self._evaluate(batch, self.val_loss, self.val_metrics, self.val_oov)
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True)
        return preds  # (B, T) for callbacks (per-tag F1 in TensorBoard)

    def on_validation_epoch_end(self) -> None:
        values = self._log_metrics(self.val_metrics, self.val_oov, "val/")
        self.val_acc_best(values["val/acc"])
        self.log("val/acc_best", self.val_acc_best.compute())

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        preds = self._evaluate(batch, self.test_loss, self.test_metrics, self.test_oov)
        self.test_tag_stats(preds, batch.targets)
        self.log("test/loss", self.test_loss, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, self.test_oov, "test/")
        self.test_report, table = tag_report(self.tags, self.test_tag_stats.compute())
        self.test_tag_stats.reset()
        self._publish_report(table)

    def _log_metrics(self, metrics: MetricCollection, oov: SubsetAccuracy,
                     prefix: str) -> dict[str, Tensor]:
        """Log the epoch's metrics (computed once, synced across ranks) and reset them."""
        values = metrics.compute()  # {"val/acc": ..., "val/f1": ..., "val/span_f1": ...}
        oov_acc = oov.compute()
        if not oov_acc.isnan():  # no unseen word in the split: no OOV accuracy to report
            values[prefix + "oov_acc"] = oov_acc
        self.log_dict(values, prog_bar=prefix == "val/")
        metrics.reset()
        oov.reset()
        return values

    @rank_zero_only
    def _publish_report(self, table: str) -> None:
        log.info("per-tag results on the test split:\n%s", table)
        for logger in self.loggers:
            if hasattr(logger.experiment, "add_text"):  # TensorBoard: markdown code block
                text = "    " + table.replace("\n", "\n    ")
                logger.experiment.add_text("test/per_tag", text, self.global_step)

    @torch.no_grad()
    def predict_step(self, batch: Batch, batch_idx: int) -> list[list[str]]:
        """Tag names per sentence, padding dropped."""
        preds = self(batch.tokens, batch.lengths, batch.chars).argmax(dim=2)
        return [[self.tags[i] for i in row[:n].tolist()]
                for row, n in zip(preds, batch.lengths.tolist())]
