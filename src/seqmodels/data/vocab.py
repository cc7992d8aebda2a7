"""A vocabulary: a fixed mapping between strings and integer ids.

Built from the training split only and saved with every checkpoint (as plain JSON-able data),
so that evaluation and generation decode with exactly the ids the model was trained with. A word
vocabulary may be extended with the words of a pretrained vectors file (``extended``): words
that training never saw but the vectors know then keep their own id.
"""

from collections import Counter
from collections.abc import Iterable

PAD = "<pad>"
UNK = "<unk>"
PAD_ID = 0
UNK_ID = 1


class Vocab:
    """Strings to ids and back. With ``specials`` (the default) ``<pad>`` is 0 and ``<unk>`` 1;
    label and tag vocabularies have no specials, so their ids are dense class indices.

    ``trained_size``: the ids below it are the training split's; those from it on were added
    from a vectors file (``extended``), and a word missing as written is looked up lower-cased
    among them (vectors files such as GloVe's are lower-case)."""

    def __init__(self, itos: list[str], has_specials: bool = True,
                 trained_size: int | None = None):
        if has_specials and itos[:2] != [PAD, UNK]:
            raise ValueError(f"a vocabulary with specials must start with {PAD}, {UNK}")
        if len(set(itos)) != len(itos):
            raise ValueError("vocabulary entries must be unique")
        self.itos = list(itos)
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.has_specials = has_specials
        self.trained_size = len(self.itos) if trained_size is None else trained_size

    @classmethod
    def build(
        cls,
        sequences: Iterable[Iterable[str]],
        min_freq: int = 1,
        max_size: int | None = None,
        specials: bool = True,
    ) -> "Vocab":
        """Most frequent first (ties broken alphabetically, so the result is deterministic);
        tokens seen fewer than ``min_freq`` times are left out and map to ``<unk>``."""
        counts = Counter(token for sequence in sequences for token in sequence)
        frequent = (t for t, c in counts.items() if c >= min_freq)
        kept = sorted(frequent, key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[:max_size]
        itos = [PAD, UNK] + [t for t in kept if t not in (PAD, UNK)] if specials else kept
        return cls(itos, has_specials=specials)

    def extended(self, words: Iterable[str], limit: int | None = None) -> "Vocab":
        """This vocabulary plus up to ``limit`` (None: all) of ``words`` it lacks, in order."""
        extra = []
        for word in words:
            if limit is not None and len(extra) >= limit:
                break
            if word not in self.stoi:
                extra.append(word)
        return Vocab(self.itos + extra, self.has_specials, trained_size=len(self))

    @property
    def is_extended(self) -> bool:
        return self.trained_size < len(self.itos)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def encode(self, tokens: Iterable[str]) -> list[int]:
        if not self.has_specials:
            return [self.index(t) for t in tokens]
        if not self.is_extended:
            return [self.stoi.get(t, UNK_ID) for t in tokens]
        return [self._word_id(t) for t in tokens]

    def _word_id(self, token: str) -> int:
        index = self.stoi.get(token)
        if index is None:
            index = self.stoi.get(token.lower(), UNK_ID)
            if index < self.trained_size:  # a trained word in another casing stays unseen
                index = UNK_ID
        return index

    def index(self, token: str) -> int:
        try:
            return self.stoi[token]
        except KeyError:
            raise KeyError(token) from None

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def to_dict(self) -> dict:
        data = {"itos": self.itos, "has_specials": self.has_specials}
        if self.is_extended:
            data["trained_size"] = self.trained_size
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Vocab":
        return cls(data["itos"], has_specials=data["has_specials"],
                   trained_size=data.get("trained_size"))

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        extra = f", trained={self.trained_size}" if self.is_extended else ""
        return f"Vocab(size={len(self)}, specials={self.has_specials}{extra})"
