"""One vector per word from its characters, for models that must read words they never saw in
training (Plank et al. 2016, Ling et al. 2015)."""

import torch
from torch import Tensor, nn

from seqmodels.data.chars import SpelledWords
from seqmodels.data.vocab import PAD_ID
from seqmodels.models.encoder import RNNEncoder


class CharWordEncoder(nn.Module):
    """Each word's characters -> one vector: the final states of a bidirectional RNN over them.

    The RNN runs once per distinct spelling in the batch, never over padded steps, and in a few
    groups of similar length (``SpelledWords``). The batch's collate has found the spellings,
    sorted and grouped them on the CPU; here every size is known on the host before any device
    work, so a step never waits on one (no ``unique``, no boolean indexing, no reads back).
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
        for start, end, width in words.groups:
            group = words.spellings[start:end, :width]  # (G, longest in group)
            parts.append(self.encoder(self.embedding(group), words.lengths[start:end]).final)
        parts.append(self.embedding.weight.new_zeros(1, self.get_output_dim()))  # padding's row
        vectors = torch.cat(parts)[words.index]  # (U + 1, D) -> (B, T, D)
        return vectors * mask.unsqueeze(2).to(vectors.dtype)
