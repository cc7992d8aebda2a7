"""Many-to-one: one label per sentence (sentiment and any other sentence classification)."""

import torch
from torch import Tensor
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from seqmodels.data.batching import Batch
from seqmodels.data.chars import SpelledWords
from seqmodels.errors import ConfigError
from seqmodels.models.base import SequenceModule, net_part
from seqmodels.models.embeddings import WordEmbeddings
from seqmodels.models.networks import POOLINGS, SentenceClassifierNet


class SentimentClassifier(SequenceModule):
    """Embedding -> encoder -> pooled sentence vector -> dropout -> linear -> softmax: the
    network is ``self.net`` (``models/networks.py``); this module adds metrics and logging.

    :param vocab_size, trained_vocab_size, num_classes: read from the datamodule's
        vocabularies (``trained_vocab_size``: the training split's words, the others were
        added from a vectors file).
    :param encoder: keyword arguments of ``RNNEncoder`` (its input size is ``embedding_dim``,
        plus the character features' size).
    :param embeddings: pretrained word vectors: ``path`` (a GloVe or word2vec text file;
        null: none), ``freeze``, and ``extra_words`` (read by seqmodels-train: how many of the
        file's other words join the vocabulary); see ``models/embeddings.py``.
    :param chars: keyword arguments of ``CharWordEncoder``: a vector per word from its
        characters, concatenated to its embedding, for the words training never saw (their
        embedding is ``<unk>``'s); needs ``data.char_features=true`` (which gives ``num_chars``).
    :param pooling: ``final`` (the encoder's final states, directions combined), or ``max`` /
        ``mean`` over the real steps of the outputs.
    :param word_dropout: in training, replace this share of tokens by ``<unk>`` (Iyyer et al.
        2015): the model cannot lean on any single word and learns a useful ``<unk>`` vector.
    :param embedding_dropout: dropout on the word vectors; ``dropout``: before the classifier.
    :param label_smoothing: the training loss's target puts this much weight evenly on all
        classes (Szegedy et al. 2016); validation and test losses use the plain targets.
    :param adversarial_epsilon: when > 0, adversarial training (Miyato et al. 2017): the
        training loss adds the loss at the word vectors moved by this L2 norm per sentence
        along the loss's gradient, before embedding dropout (``models/adversarial.py``); about
        twice the compute per step. ``train/loss`` is then the clean loss, as without it,
        and ``train/adversarial_loss`` the other term; training minimises their sum.
    :param sparse_embeddings: sparse embedding gradients (pair with a sparse-aware optimizer).
    """

    task = "classification"

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        encoder: dict,
        embedding_dim: int = 300,
        embeddings: dict | None = None,
        trained_vocab_size: int | None = None,
        chars: dict | None = None,
        num_chars: int | None = None,
        pooling: str = "final",
        word_dropout: float = 0.0,
        embedding_dropout: float = 0.0,
        dropout: float = 0.0,
        label_smoothing: float = 0.0,
        adversarial_epsilon: float = 0.0,
        sparse_embeddings: bool = False,
        optimizer=None,
        scheduler=None,
        scheduler_monitor: str = "val/loss",
    ):
        super().__init__(optimizer, scheduler, scheduler_monitor)
        if pooling not in POOLINGS:
            raise ConfigError(f"model.pooling={pooling!r} is not one of {list(POOLINGS)}")
        for name, p in (("word_dropout", word_dropout), ("embedding_dropout", embedding_dropout),
                        ("dropout", dropout), ("label_smoothing", label_smoothing)):
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {p}")
        if adversarial_epsilon < 0:
            raise ConfigError(f"model.adversarial_epsilon must be >= 0, got {adversarial_epsilon}")
        if num_classes < 2:
            raise ConfigError(f"a classifier needs at least 2 classes, the data has {num_classes}")
        if chars is not None and not num_chars:
            raise ConfigError("model.chars (character features) needs the data to spell words "
                              "out: set data.char_features=true")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = SentenceClassifierNet(
            WordEmbeddings.from_config(vocab_size, embedding_dim, trained_vocab_size, embeddings,
                                       chars=chars, num_chars=num_chars,
                                       sparse=sparse_embeddings),
            encoder, num_classes, pooling=pooling, word_dropout=word_dropout,
            embedding_dropout=embedding_dropout, dropout=dropout,
            label_smoothing=label_smoothing, adversarial_epsilon=adversarial_epsilon)

        metrics = MetricCollection({
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        })
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()

    # The network's parts, as tools and callbacks read them (seqmodels-summary, the gradient
    # views, word-vector loading).
    embeddings = net_part("embeddings")
    encoder = net_part("encoder")
    classifier = net_part("classifier")

    def forward(self, tokens: Tensor, lengths: Tensor,
                chars: SpelledWords | Tensor | None = None) -> Tensor:
        """(B, T) token ids, (B,) lengths and, with character features, the batch's
        ``SpelledWords`` (or (B, T, W) character ids) -> (B, num_classes) logits."""
        return self.net(tokens, lengths, chars)

    def training_objective(self, batch: Batch) -> Tensor:
        """The loss training minimises: cross-entropy, plus its adversarial counterpart when
        ``adversarial_epsilon`` > 0."""
        return self.net.training_loss(batch)[0]

    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # the sanity check's numbers are not a result

    def training_loss(self, batch: Batch, batch_idx: int) -> Tensor:
        clean, perturbed = self.net.training_losses(batch)
        if self.log_train_loss(clean, batch_size=len(batch), weight=len(batch)) and \
                perturbed is not None:
            self.log("train/adversarial_loss", perturbed.detach().to("cpu", copy=True),
                     on_step=True, on_epoch=False, batch_size=len(batch))
        return clean if perturbed is None else clean + perturbed

    def validation_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss, logits = self.net.loss(batch)
        self.val_loss(loss, weight=len(batch))
        self.val_metrics(logits, batch.targets)
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True)
        self.log_dict(self.val_metrics, on_epoch=True, prog_bar=True)
        return logits.argmax(dim=-1)  # (B,) for callbacks (confusion matrix in TensorBoard)

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_metrics["acc"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        loss, logits = self.net.loss(batch)
        self.test_loss(loss, weight=len(batch))
        self.test_metrics(logits, batch.targets)
        self.log("test/loss", self.test_loss, on_epoch=True)
        self.log_dict(self.test_metrics, on_epoch=True)

    @torch.no_grad()
    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self(batch.tokens, batch.lengths, batch.chars).softmax(dim=-1)
