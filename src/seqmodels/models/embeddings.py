"""The word vectors every word-level model reads: a trained table, optional pretrained vectors,
optional character features. Sentiment and tagging share it, as they share the encoder.

With pretrained vectors a word's vector is ``pretrained[w] + trained[w]``:

- ``pretrained`` is a fixed table over the whole word vocabulary: the training split's words
  and the vectors file's most frequent other words (``Vocab.extended``), zero for words the
  file lacks. It is a buffer, saved with the checkpoint, so that prediction needs no file.
- ``trained`` covers the training split's words only; it starts at zero where the file has the
  word (so the sum starts at the pretrained vector, and training it is fine-tuning that
  vector) and random elsewhere. Words added from the file have no trained row: they keep their
  pretrained vector as it is, where a fine-tuned copy of the table would have left them behind
  in the old space. ``freeze`` keeps the trained rows of the words the file has at zero.
"""

import logging

import torch
from torch import Tensor, nn

from seqmodels.data.chars import SpelledWords
from seqmodels.data.vocab import PAD_ID, UNK_ID, Vocab
from seqmodels.data.word_vectors import WordVectors
from seqmodels.errors import ConfigError
from seqmodels.models.char_features import CharWordEncoder

log = logging.getLogger(__name__)


class WordEmbeddings(nn.Module):
    """(B, T) word ids -> (B, T, embedding_dim [+ character features]) vectors.

    :param vocab_size: the word vocabulary, with the words added from a vectors file.
    :param trained_vocab_size: its first ids, the training split's words (default: all).
    :param embedding_dim: word vector size (the vectors file's, with pretrained vectors).
    :param pretrained: whether the model has a pretrained table (``load_pretrained`` fills it
        before training; a checkpoint holds it).
    :param freeze: do not train the vectors of the words the file has.
    :param chars: keyword arguments of ``CharWordEncoder`` (needs ``num_chars``), or None.
    :param sparse: sparse gradients for the trained table.
    """

    def __init__(self, vocab_size: int, embedding_dim: int, trained_vocab_size: int | None = None,
                 pretrained: bool = False, freeze: bool = False, chars: dict | None = None,
                 num_chars: int | None = None, sparse: bool = False):
        super().__init__()
        trained_vocab_size = vocab_size if trained_vocab_size is None else trained_vocab_size
        if not 2 <= trained_vocab_size <= vocab_size:
            raise ConfigError(f"trained_vocab_size={trained_vocab_size} must be in "
                              f"[2, vocab_size={vocab_size}]")
        if freeze and not pretrained:
            raise ConfigError("model.embeddings.freeze=true needs model.embeddings.path: frozen "
                              "random vectors cannot learn anything")
        if trained_vocab_size < vocab_size and not pretrained:
            raise ConfigError("a vocabulary extended from a vectors file needs the pretrained "
                              "table (model.embeddings.path)")
        self.trained_vocab_size = trained_vocab_size
        self.freeze = freeze
        self.trained = nn.Embedding(trained_vocab_size, embedding_dim, padding_idx=PAD_ID,
                                    sparse=sparse)
        if pretrained:
            self.register_buffer("pretrained", torch.zeros(vocab_size, embedding_dim))
            self.register_buffer("found", torch.zeros(vocab_size, dtype=torch.bool))
        else:
            self.pretrained = self.found = None
        self.chars = None if chars is None else CharWordEncoder(num_chars, **chars)

    @classmethod
    def from_config(cls, vocab_size: int, embedding_dim: int, trained_vocab_size: int | None,
                    embeddings: dict | None, **kwargs) -> "WordEmbeddings":
        """From a model's ``embeddings`` config (``path``, ``freeze``; ``extra_words`` is
        seqmodels-train's): the table exists when a path is given, and the checkpoint fills it
        when the model is loaded."""
        embeddings = embeddings or {}
        return cls(vocab_size, embedding_dim, trained_vocab_size,
                   pretrained=bool(embeddings.get("path")),
                   freeze=embeddings.get("freeze", False), **kwargs)

    @property
    def vocab_size(self) -> int:
        return self.trained_vocab_size if self.pretrained is None else self.pretrained.size(0)

    def get_output_dim(self) -> int:
        char_dim = 0 if self.chars is None else self.chars.get_output_dim()
        return self.trained.embedding_dim + char_dim

    def unseen(self, tokens: Tensor) -> Tensor:
        """(B, T) true at words the training split never had (``<unk>`` or added from the
        vectors file): the tokens of the OOV metrics."""
        return (tokens == UNK_ID) | (tokens >= self.trained_vocab_size)

    @torch.no_grad()
    def load_pretrained(self, vectors: WordVectors, vocab: Vocab) -> None:
        """Fill the pretrained table from ``vectors`` for the rows of ``vocab``."""
        if self.pretrained is None:
            raise ConfigError("this model was built without pretrained vectors")
        if len(vocab) != self.vocab_size or vocab.trained_size != self.trained_vocab_size:
            raise ConfigError(f"the word vocabulary ({len(vocab)} words, {vocab.trained_size} "
                              f"from train) is not the one the model was sized with")
        table, found = vectors.for_vocab(vocab)
        self.pretrained.copy_(table)
        self.found.copy_(found)
        trained_found = found[: self.trained_vocab_size]
        self.trained.weight[trained_found] = 0.0  # the sum starts at the pretrained vector
        n = self.trained_vocab_size - 2
        log.info("pretrained vectors from %s: %d of %d training words found (%.1f%%; the others "
                 "start random), and %d more words from the file; %s",
                 vectors.path, int(trained_found.sum()), n, 100 * int(trained_found.sum()) / n,
                 self.vocab_size - self.trained_vocab_size,
                 "frozen" if self.freeze else "fine-tuned")

    def forward(self, tokens: Tensor, mask: Tensor, chars: SpelledWords | Tensor | None = None,
                word_dropout: float = 0.0) -> Tensor:
        """:param tokens: (B, T) word ids; ``mask``: (B, T) true at real tokens.
        :param chars: the batch's ``SpelledWords`` (or (B, T, W) character ids), with
            character features.
        :param word_dropout: (pass 0 outside training) replace this share of the real words by
            ``<unk>``; their characters stay, so the ``<unk>`` vector and the character
            features learn to stand in for unseen words."""
        if word_dropout > 0:
            dropped = torch.rand(tokens.shape, device=tokens.device) < word_dropout
            tokens = tokens.masked_fill(dropped & mask, UNK_ID)
        if self.pretrained is None:
            vectors = self.trained(tokens)
        else:
            # Added words have no trained row: they read <pad>'s, which is zero.
            own = tokens.masked_fill(tokens >= self.trained_vocab_size, PAD_ID)
            trained = self.trained(own)
            if self.freeze:
                trained = trained * (~self.found[own]).unsqueeze(2).to(trained.dtype)
            vectors = self.pretrained[tokens].to(trained.dtype) + trained
        if self.chars is None:
            return vectors
        if chars is None:
            raise ValueError("this model uses character features: pass the batch's chars")
        return torch.cat([vectors, self.chars(chars, mask)], dim=2)
