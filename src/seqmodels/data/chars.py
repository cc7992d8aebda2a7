"""Words spelled out as character ids, for models with character features (taggers, and
classifiers that must read words they never saw in training)."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from seqmodels.data.vocab import PAD_ID, Vocab


def clip_word(word: str, max_chars: int) -> str:
    """A long word (URL, e-mail address) cut to ``max_chars`` characters, keeping both its
    beginning and its end, where the prefixes and suffixes a model learns from are."""
    if len(word) <= max_chars:
        return word
    head = (max_chars + 1) // 2
    return word[:head] + word[len(word) - (max_chars - head):]


def build_char_vocab(sentences: Iterable[Sequence[str]], max_chars: int) -> Vocab:
    """Every character of the (clipped) training words; each word is one 'sentence' of them."""
    return Vocab.build(clip_word(w, max_chars) for words in sentences for w in words)


class Speller:
    """Words -> lists of character ids, each word type spelled out once."""

    def __init__(self, chars: Vocab, max_chars: int):
        self.chars, self.max_chars = chars, max_chars
        self._cache: dict[str, list[int]] = {}

    def __call__(self, words: Sequence[str]) -> list[list[int]]:
        spelled = []
        for word in words:
            ids = self._cache.get(word)
            if ids is None:
                ids = self._cache[word] = self.chars.encode(clip_word(word, self.max_chars))
            spelled.append(ids)
        return spelled


# Split points of the length-sorted spellings into groups the character RNN reads one at a time:
# the shorter half, the next 40%, the longest 10%. Most words are short, and one URL would
# otherwise make every word pay for its length.
GROUP_CUTS = (0.5, 0.9)


@dataclass
class SpelledWords:
    """A batch's words as characters, laid out on the CPU (in the collate, in loader workers)
    so that a model reads them with no data-dependent work and no wait on the host.

    Each distinct spelling is there once (a batch repeats "the", "," and "." many times),
    sorted by length and cut into ``groups`` of similar length.

    :ivar spellings: (U, W) character ids, ``PAD_ID`` after each spelling's end; ascending
        length, equal lengths in the order of their ids.
    :ivar lengths: (U,) int64 on the CPU (packing reads them there: they never move), each at
        least 1 (an empty word is read as one ``PAD_ID``).
    :ivar groups: ``(start, end, width)`` per group: its rows of ``spellings`` and the length of
        its longest spelling, plain ints (slicing by them reads nothing back from a device).
    :ivar index: (B, T) int64: the row of ``spellings`` that spells each position; ``U`` (one
        past the last) at padding, where a model puts a zero vector.
    """

    spellings: Tensor
    lengths: Tensor
    groups: tuple[tuple[int, int, int], ...]
    index: Tensor

    def to(self, device, non_blocking: bool = False) -> "SpelledWords":
        return SpelledWords(self.spellings.to(device, non_blocking=non_blocking), self.lengths,
                            self.groups, self.index.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "SpelledWords":
        return SpelledWords(self.spellings.pin_memory(), self.lengths, self.groups,
                            self.index.pin_memory())

    def padded(self) -> Tensor:
        """(B, T, W) character ids per position, ``PAD_ID`` after each word's end and at padded
        steps (for reading a batch; models use the compact form)."""
        blank = self.spellings.new_full((1, self.spellings.size(1)), PAD_ID)
        return torch.cat([self.spellings, blank])[self.index]

    @classmethod
    def from_padded(cls, chars: Tensor, mask: Tensor) -> "SpelledWords":
        """From (B, T, W) character ids (``PAD_ID`` after each word's end) and the (B, T) mask
        of real tokens (each row's first tokens), on ``chars``' device. Reads them on the host:
        for batches made by hand; the collate functions build batches in this form directly."""
        counts = mask.sum(dim=1).tolist()
        rows = chars.tolist()
        spelled = [[_strip(word) for word in row[:count]] for row, count in zip(rows, counts)]
        return spell_batch(spelled, chars.size(1)).to(chars.device)


def _strip(word: list[int]) -> list[int]:
    end = len(word)
    while end and word[end - 1] == PAD_ID:
        end -= 1
    return word[:end]


def spell_batch(spelled: Sequence[Sequence[Sequence[int]]], steps: int) -> SpelledWords:
    """Per sentence, per word, character ids -> the batch's ``SpelledWords`` for (B, ``steps``)
    positions."""
    rows: dict[tuple[int, ...], int] = {}  # spelling -> its first-seen number
    seen = [[rows.setdefault(tuple(word), len(rows)) for word in words] for words in spelled]
    distinct = sorted(rows, key=lambda word: (max(len(word), 1), word))
    count = len(distinct)
    width = max((len(word) for word in distinct), default=1) or 1
    row_of = [0] * count  # first-seen number -> row in length order
    for row, word in enumerate(distinct):
        row_of[rows[word]] = row
    flat = [row for numbers in seen for row in (*map(row_of.__getitem__, numbers),
                                                 *[count] * (steps - len(numbers)))]
    index = torch.tensor(flat, dtype=torch.long).view(len(spelled), steps)
    lengths = [max(len(word), 1) for word in distinct]
    spellings = torch.tensor([[*word, *[PAD_ID] * (width - len(word))] for word in distinct],
                             dtype=torch.long).view(count, width)
    bounds = [0, *(int(count * cut) for cut in GROUP_CUTS), count]
    groups = tuple((start, end, lengths[end - 1])
                   for start, end in zip(bounds, bounds[1:]) if end > start)
    return SpelledWords(spellings, torch.tensor(lengths, dtype=torch.long), groups, index)
