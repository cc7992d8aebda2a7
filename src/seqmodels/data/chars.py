"""Words spelled out as character ids, for models with character features (taggers, and
classifiers that must read words they never saw in training)."""

from collections.abc import Iterable, Sequence

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


def pad_chars(spelled: Sequence[Sequence[Sequence[int]]], steps: int) -> Tensor:
    """Per sentence, per word, character ids -> (B, steps, W), ``PAD_ID`` after each word's end
    and at padded steps."""
    width = max((len(c) for words in spelled for c in words), default=1)
    blank_word = [PAD_ID] * width
    flat = []
    for words in spelled:
        flat.extend(list(c) + [PAD_ID] * (width - len(c)) for c in words)
        flat.extend([blank_word] * (steps - len(words)))
    return torch.tensor(flat, dtype=torch.long).view(len(spelled), steps, width)
