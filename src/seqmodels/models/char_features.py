"""One vector per word from its characters, for models that must read words they never saw in
training (Plank et al. 2016, Ling et al. 2015)."""

import torch
from torch import Tensor, nn

from seqmodels.data.chars import SpelledWords
from seqmodels.data.vocab import PAD_ID
from seqmodels.models.encoder import RNNEncoder


class CharWordEncoder(nn.Module):
    """Each word's characters -> one vector: the final states of a bidirectional RNN over them.

    The RNN runs once per distinct spelling in the batch, and on a CPU in a few groups of
    similar length (``SpelledWords``), so that it computes little over padding; on CUDA, where
    each call costs its kernel launches and padding costs little, in one call over all the
    spellings (``call_groups``; the encoder's padded path makes both exact). The batch's
    collate has found the spellings, sorted and grouped them on the CPU; here every size is
    known on the host before any device work, so a step never waits on one (no ``unique``, no
    boolean indexing, no reads back).
    """

    def __init__(self, num_chars: int, embedding_dim: int = 30, hidden_size: int = 50,
                 cell: str = "lstm"):
        super().__init__()
        self.embedding = nn.Embedding(num_chars, embedding_dim, padding_idx=PAD_ID)
        self.encoder = RNNEncoder(embedding_dim, hidden_size, cell=cell, bidirectional=True)

    def get_output_dim(self) -> int:
        return self.encoder.get_output_dim()

    def forward(self, words: SpelledWords | Tensor, mask: Tensor) -> Tensor:
        """:param words: the batch's ``SpelledWords``; or (B, T, W) character ids, ``PAD_ID``
            after each word's end, read on the host into ``SpelledWords`` (for batches made by
            hand, not for training).
        :param mask: (B, T) true at real tokens.
        :return: (B, T, output_dim), zero where ``mask`` is false."""
        if isinstance(words, Tensor):
            words = SpelledWords.from_padded(words, mask)
        parts = []
        for start, end, width in call_groups(words, words.spellings.device.type):
            group = words.spellings[start:end, :width]  # (G, longest in group)
            parts.append(self.encoder(self.embedding(group), words.lengths[start:end]).final)
        parts.append(self.embedding.weight.new_zeros(1, self.get_output_dim()))  # padding's row
        vectors = torch.cat(parts)[words.index]  # (U + 1, D) -> (B, T, D)
        return vectors * mask.unsqueeze(2).to(vectors.dtype)


def call_groups(words: SpelledWords, device_type: str) -> tuple[tuple[int, int, int], ...]:
    """The ``(start, end, width)`` row ranges of ``words.spellings`` that the character RNN
    reads in one call each: the length groups, or on CUDA all rows at once."""
    if device_type != "cuda" or len(words.groups) < 2:
        return words.groups
    return ((0, words.groups[-1][1], max(width for _, _, width in words.groups)),)
