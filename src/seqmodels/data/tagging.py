"""Token tagging data (one tag per token): UD English-EWT, and a user's own CoNLL-U or
column-format files for POS tagging, chunking and NER."""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seqmodels.data.base import SequenceDataModule
from seqmodels.data.batching import IGNORE_INDEX, Batch, pad
from seqmodels.data.chars import Speller, build_char_vocab, spell_batch
from seqmodels.data.conll import TaggedSentence, read_columns, read_conllu
from seqmodels.data.vocab import Vocab
from seqmodels.errors import DataError

log = logging.getLogger(__name__)

FORMATS = ("conllu", "column")
# One encoded sentence: word ids, tag ids, and each word's character ids.
Encoded = tuple[list[int], list[int], list[list[int]]]


def collate_tagging(examples: Sequence[Encoded]) -> Batch:
    """(B, T) word ids, (B,) lengths, (B, T) tag ids with ``IGNORE_INDEX`` at padding, and
    the words' characters (``SpelledWords``: each distinct spelling once, and its row for
    every position)."""
    tokens, lengths = pad([words for words, _, _ in examples])
    targets, _ = pad([tags for _, tags, _ in examples], value=IGNORE_INDEX)
    return Batch(tokens, lengths, targets,
                 spell_batch([c for _, _, c in examples], tokens.size(1)),
                 num_tokens=sum(len(words) for words, _, _ in examples))


class TaggingDataModule(SequenceDataModule):
    """One tag per token.

    :param format: ``conllu`` (10 tab-separated columns, FORM as the token) or ``column``
        (whitespace-separated columns, ``-DOCSTART-`` lines skipped).
    :param tag_column: for ``conllu``, ``upos`` or ``xpos``; for ``column``, a column index
        (negative counts from the end; ``-1`` is the last column).
    :param token_column: for ``column`` only: the index of the token column.
    :param lowercase: lower-case words before they meet the word vocabulary (characters keep
        their case: capitals are a strong cue for proper nouns and names).
    :param min_freq, max_size: word vocabulary limits (train only); rarer words map to <unk>.
    :param max_word_length: characters kept per word for character features (longer words
        keep their first and last characters).
    """

    task = "tagging"
    collate_fn = staticmethod(collate_tagging)

    def __init__(
        self,
        *args,
        format: str = "conllu",
        tag_column: str | int = "upos",
        token_column: int = 0,
        lowercase: bool = False,
        min_freq: int = 1,
        max_size: int | None = None,
        max_word_length: int = 30,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if format not in FORMATS:
            raise DataError(f"data.format={format!r} is not one of {list(FORMATS)}")
        if format == "column" and not isinstance(tag_column, int):
            raise DataError(f"data.tag_column={tag_column!r}: for data.format=column give a "
                            "column index (0, 1, ..., or -1 for the last column)")
        if max_word_length < 1:
            raise DataError(f"data.max_word_length must be positive, got {max_word_length}")
        self.format = format
        self.tag_column = tag_column
        self.token_column = token_column
        self.lowercase = lowercase
        self.min_freq = min_freq
        self.max_size = max_size
        self.max_word_length = max_word_length

    def read(self, path: Path) -> list[TaggedSentence]:
        if self.format == "conllu":
            return read_conllu(path, self.tag_column, self.encoding_errors, self.encoding)
        return read_columns(path, self.token_column, self.tag_column, self.encoding_errors,
                            self.encoding)

    def normalize(self, word: str) -> str:
        """The form a word takes in the word vocabulary."""
        return word.lower() if self.lowercase else word

    def build_vocabs(self, train: list[TaggedSentence]) -> dict[str, Vocab]:
        words = Vocab.build(([self.normalize(w) for w in s.tokens] for s in train),
                            self.min_freq, self.max_size)
        # Tags in order of first appearance would depend on the file order; sort instead.
        tags = Vocab(sorted({t for s in train for t in s.tags}), has_specials=False)
        chars = build_char_vocab((s.tokens for s in train), self.max_word_length)
        log.info("vocabulary: %d words, %d characters, %d tags %s", len(words), len(chars),
                 len(tags), tags.itos)
        return {"tokens": words, "tags": tags, "chars": chars}

    def encode(self, examples: list[TaggedSentence], path: Path) -> list[Encoded]:
        words, tags, chars = self.vocabs["tokens"], self.vocabs["tags"], self.vocabs["chars"]
        self._check_tags(examples, tags, path)
        spell = Speller(chars, self.max_word_length)
        encoded = []
        for sentence in examples:
            encoded.append((words.encode([self.normalize(w) for w in sentence.tokens]),
                            [tags.stoi[t] for t in sentence.tags], spell(sentence.tokens)))
        return self.truncate(encoded, path)

    @staticmethod
    def _check_tags(examples: list[TaggedSentence], tags: Vocab, path: Path) -> None:
        for sentence in examples:
            for tag, number in zip(sentence.tags, sentence.lines):
                if tag not in tags:
                    raise DataError(
                        f"tag {tag!r} never occurs in the training data, so the model cannot "
                        f"predict it (known tags: {tags.itos}); fix the tag on this line, add "
                        "training sentences that use it, or map it to a known tag", path, number)

    def text_settings(self) -> dict:
        return {**super().text_settings(), "lowercase": self.lowercase,
                "max_word_length": self.max_word_length}

    def model_sizes(self) -> dict[str, Any]:
        """What the model needs to size itself, read from the vocabularies: vocabulary sizes,
        and the tag names (for per-tag reports and span metrics)."""
        return {**self.word_sizes(), "num_chars": len(self.vocabs["chars"]),
                "tags": list(self.vocabs["tags"].itos)}
