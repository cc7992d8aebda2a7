"""Each task's network as a plain ``nn.Module``: embedding -> dropout -> encoder -> dropout ->
head, and the loss its training minimises (the whole recipe: word dropout, label smoothing,
the adversarial pass). No Lightning here: a task's LightningModule wraps one of these and adds
metrics, logging and checkpoints around it, and a bare training loop (``scripts/``'s GPU
anchor) trains the very same network without Lightning.

Every network has ``training_loss(batch, state=None) -> (loss, state)``: ``state`` is the char
LM's recurrent state carried from one window to the next (truncated BPTT); the other two take
and return None.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmodels.data.batching import IGNORE_INDEX, Batch
from seqmodels.data.chars import SpelledWords
from seqmodels.data.vocab import PAD_ID
from seqmodels.models.adversarial import adversarial_losses
from seqmodels.models.embeddings import WordEmbeddings
from seqmodels.models.encoder import RNNEncoder, State

POOLINGS = ("final", "max", "mean")


def real_tokens(tokens: Tensor, lengths: Tensor) -> Tensor:
    """(B, T) mask of the real (non-padding) steps, built on the tokens' device."""
    steps = torch.arange(tokens.size(1), device=tokens.device)
    return steps < lengths.to(tokens.device, non_blocking=True).unsqueeze(1)


class SentenceClassifierNet(nn.Module):
    """Word vectors -> dropout -> encoder -> pooled sentence vector -> dropout -> linear.

    :param embeddings: the ``WordEmbeddings`` (words, optional characters and pretrained
        vectors); ``encoder``: keyword arguments of ``RNNEncoder``.
    :param pooling: ``final`` (the encoder's final states), ``max`` or ``mean`` over the real
        steps. See ``SentimentClassifier`` for the recipe's parameters.
    """

    def __init__(self, embeddings: WordEmbeddings, encoder: dict, num_classes: int,
                 pooling: str = "final", word_dropout: float = 0.0,
                 embedding_dropout: float = 0.0, dropout: float = 0.0,
                 label_smoothing: float = 0.0, adversarial_epsilon: float = 0.0):
        super().__init__()
        self.pooling = pooling
        self.word_dropout = word_dropout
        self.label_smoothing = label_smoothing
        self.adversarial_epsilon = adversarial_epsilon
        self.embeddings = embeddings
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.encoder = RNNEncoder(input_size=embeddings.get_output_dim(), **encoder)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.encoder.get_output_dim(), num_classes)

    def forward(self, tokens: Tensor, lengths: Tensor,
                chars: SpelledWords | Tensor | None = None) -> Tensor:
        """(B, T) token ids, (B,) lengths and, with character features, the batch's
        ``SpelledWords`` (or (B, T, W) character ids) -> (B, num_classes) logits."""
        real = tokens != PAD_ID  # (B, T)
        return self.classify(self.word_vectors(tokens, real, chars), real, lengths)

    def word_vectors(self, tokens: Tensor, real: Tensor,
                     chars: SpelledWords | Tensor | None) -> Tensor:
        """(B, T) token ids and their (B, T) real-token mask -> (B, T, E[+C]) word vectors."""
        return self.embeddings(tokens, real, chars, self.word_dropout if self.training else 0.0)

    def classify(self, vectors: Tensor, real: Tensor, lengths: Tensor) -> Tensor:
        """(B, T, E[+C]) word vectors -> (B, num_classes) logits."""
        encoded = self.encoder(self.embedding_dropout(vectors), lengths)
        if self.pooling == "final":
            sentence = encoded.final  # (B, H_out)
        else:
            mask = real.unsqueeze(2)  # (B, T, 1)
            if self.pooling == "max":
                sentence = encoded.outputs.masked_fill(~mask, float("-inf")).amax(dim=1)
            else:
                counts = lengths.to(real.device, non_blocking=True).unsqueeze(1)
                sentence = encoded.outputs.sum(dim=1) / counts
        return self.classifier(self.dropout(sentence))

    def loss(self, batch: Batch, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
        """Cross-entropy of one batch, and its (B, num_classes) logits."""
        logits = self(batch.tokens, batch.lengths, batch.chars)
        return F.cross_entropy(logits, batch.targets, label_smoothing=label_smoothing), logits

    def training_loss(self, batch: Batch, state: None = None) -> tuple[Tensor, None]:
        """Cross-entropy with label smoothing, plus its adversarial counterpart when
        ``adversarial_epsilon`` > 0 (``models/adversarial.py``)."""
        clean, perturbed = self.training_losses(batch)
        return (clean if perturbed is None else clean + perturbed), None

    def training_losses(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """The two terms of ``training_loss``: the clean loss and the adversarial one (None
        without adversarial training)."""
        if not self.adversarial_epsilon:
            return self.loss(batch, self.label_smoothing)[0], None
        real = batch.tokens != PAD_ID

        def loss_at(vectors: Tensor) -> Tensor:
            return F.cross_entropy(self.classify(vectors, real, batch.lengths), batch.targets,
                                   label_smoothing=self.label_smoothing)

        vectors = self.word_vectors(batch.tokens, real, batch.chars)
        return adversarial_losses(loss_at, vectors, self.adversarial_epsilon)


class TaggerNet(nn.Module):
    """Word (+ character) vectors -> dropout -> encoder -> dropout -> linear at every step."""

    def __init__(self, embeddings: WordEmbeddings, encoder: dict, num_tags: int,
                 word_dropout: float = 0.0, embedding_dropout: float = 0.0,
                 dropout: float = 0.5):
        super().__init__()
        self.word_dropout = word_dropout
        self.embeddings = embeddings
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.encoder = RNNEncoder(input_size=embeddings.get_output_dim(), **encoder)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(self.encoder.get_output_dim(), num_tags)

    def forward(self, tokens: Tensor, lengths: Tensor,
                chars: SpelledWords | Tensor | None = None) -> Tensor:
        """(B, T) word ids, (B,) lengths and the batch's ``SpelledWords`` (or (B, T, W) char
        ids) -> (B, T, num_tags) logits."""
        mask = real_tokens(tokens, lengths)
        vectors = self.embeddings(tokens, mask, chars,
                                  self.word_dropout if self.training else 0.0)  # (B, T, E[+C])
        encoded = self.encoder(self.embedding_dropout(vectors), lengths).outputs  # (B, T, H)
        return self.output(self.dropout(encoded))

    def loss(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Mean cross-entropy over the real tokens (padding targets are IGNORE_INDEX), and the
        (B, T, num_tags) logits."""
        logits = self(batch.tokens, batch.lengths, batch.chars)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(),
                               ignore_index=IGNORE_INDEX)
        return loss, logits

    def training_loss(self, batch: Batch, state: None = None) -> tuple[Tensor, None]:
        return self.loss(batch)[0], None


class CharLMNet(nn.Module):
    """Character vectors -> dropout -> unidirectional encoder -> dropout -> linear over the
    characters."""

    def __init__(self, vocab_size: int, encoder: dict, embedding_dim: int = 64,
                 embedding_dropout: float = 0.0, dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.encoder = RNNEncoder(input_size=embedding_dim, **encoder)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.encoder.get_output_dim(), vocab_size)

    def forward(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State | None]:
        """(B, T) character ids and an optional initial state -> (B, T, V) next-character
        logits and the final state (exact: every row is full length)."""
        embedded = self.embedding_dropout(self.embedding(tokens))  # (B, T, E)
        encoded = self.encoder(embedded, None, state)  # None: every row is full length
        return self.head(self.dropout(encoded.outputs)), encoded.state

    def training_loss(self, batch: Batch,
                      state: State | None = None) -> tuple[Tensor, State | None]:
        """Mean cross-entropy in nats per character from ``state``, and the final state."""
        logits, state = self(batch.tokens, state)
        return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten()), state
