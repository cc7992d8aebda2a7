"""Sentence classification data: SST-2 and a user's own label-text, TSV, CSV or JSON-lines
files (read by ``seqmodels.data.labelled_text``)."""

import logging
import random
from collections import Counter
from pathlib import Path

from seqmodels.data.base import SequenceDataModule
from seqmodels.data.batching import collate_classification
from seqmodels.data.chars import Speller, build_char_vocab
from seqmodels.data.labelled_text import (
    Column,
    Example,
    read_csv,
    read_jsonl,
    read_label_text,
    read_tsv,
)
from seqmodels.data.vocab import Vocab
from seqmodels.errors import DataError

log = logging.getLogger(__name__)

READERS = {"label_text": read_label_text, "tsv": read_tsv, "csv": read_csv, "jsonl": read_jsonl}
FORMATS = tuple(READERS)
# Files whose name says their format: read in another one, they would give nonsense or errors
# that do not say why.
FORMAT_OF_SUFFIX = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

# The test share of a train file is drawn with this seed, not the run's: the same examples
# test every run (and seqmodels-eval) on the same file.
TEST_SPLIT_SEED = 1234
# Labels met only once in training are named one by one, up to this many.
SINGLETONS_NAMED = 5


def warn_single_labels(train: list[Example], path) -> None:
    """A label that only one training example has cannot be learnt, and is most often a header
    line that was not recognised or a typo: name each such line."""
    counts = Counter(label for _, label, _ in train)
    single = [(number, label) for _, label, number in train if counts[label] == 1]
    for number, label in single[:SINGLETONS_NAMED]:
        log.warning("%s:%d: label %r occurs only once in training (of %d labels): a header line "
                    "(then name its columns: data.format=tsv data.label_column=<name>), a typo, "
                    "or a class that needs more examples?", path, number, label, len(counts))
    if len(single) > SINGLETONS_NAMED:
        log.warning("%s: %d more labels occur only once in training (%d of %d labels in all)",
                    path, len(single) - SINGLETONS_NAMED, len(single), len(counts))


def label_order(labels: set[str]) -> list[str]:
    """Numeric labels in numeric order (so "0", "1" keep their ids), others alphabetically."""
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


class TextClassificationDataModule(SequenceDataModule):
    """One label per sentence.

    :param format: ``label_text`` (``LABEL tokens...``), ``tsv`` (tab-separated columns; see
        ``read_tsv`` for the header and the columns), ``csv`` (comma-separated, quoted as the
        ``csv`` module reads it; columns as for ``tsv``) or ``jsonl`` (one JSON object a line).
    :param text_column, label_column: ``tsv``/``csv``: a 0-based column index (negative from
        the end) or a name in the files' header line; by default the header's usual names,
        else the label is the last column and the text everything before it. ``jsonl``: the
        keys (``text`` and ``label`` by default).
    :param label_names: names for the labels as the files write them (``{0: negative, 1:
        positive}`` for SST-2): predictions, the confusion matrix and ``vocab.json`` then
        show the names. Labels without a name keep their own.
    :param labels: the allowed label set (after naming); by default the labels seen in train.
    :param lowercase: lower-case tokens before they meet the vocabulary.
    :param min_freq, max_size: vocabulary limits (train only).
    :param char_features: also spell every word out as character ids (``Batch.chars``), for a
        model with character features (``model.chars``); ``max_word_length`` characters are
        kept per word (the first and last ones).
    :param val_fraction: with no ``val_path``, this share of the train file (``seed``)
        validates.
    :param test_fraction: with no ``test_path``, this share of the train file tests (0: no
        test split). Drawn first, with a fixed seed of its own (``TEST_SPLIT_SEED``), so that
        every run on the same file tests on the same examples whatever its ``seed``; the
        validation share is then drawn from the rest: the three splits are disjoint.
    """

    task = "classification"
    collate_fn = staticmethod(collate_classification)

    def __init__(
        self,
        *args,
        format: str = "label_text",
        text_column: Column = None,
        label_column: Column = None,
        label_names: dict | None = None,
        labels: list[str] | None = None,
        lowercase: bool = False,
        min_freq: int = 1,
        max_size: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        char_features: bool = False,
        max_word_length: int = 30,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if format not in FORMATS:
            raise DataError(f"data.format={format!r} is not one of {list(FORMATS)}")
        if format == "label_text" and (text_column is not None or label_column is not None):
            raise DataError("data.text_column and data.label_column choose the columns of "
                            "tsv, csv or jsonl files: set data.format=tsv (or csv, jsonl), "
                            "not 'label_text', or leave them null")
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if not 0.0 <= test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
            raise DataError(f"data.test_fraction={test_fraction} must be in [0, 1) and leave "
                            f"training examples beside data.val_fraction={val_fraction}")
        if test_fraction > 0 and self.paths["test"] is not None:
            raise DataError(f"data.test_fraction={test_fraction} carves a test split out of "
                            f"train, but data.test_path={self.paths['test']} is given too; "
                            "keep one of them")
        self.format = format
        self.text_column = text_column
        self.label_column = label_column
        self.label_names = {str(k): str(v) for k, v in (label_names or {}).items()}
        self.labels = None if labels is None else [str(label) for label in labels]
        self.lowercase = lowercase
        self.min_freq = min_freq
        self.max_size = max_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.char_features = char_features
        self.max_word_length = max_word_length
        # The splits carved out of the train file (train first): "val" with no val_path,
        # "test" with test_fraction > 0.
        self.carved_splits = tuple(
            split for split, carved in (("val", self.paths["val"] is None),
                                        ("test", test_fraction > 0)) if carved)
        if "test" in self.carved_splits:
            self.paths["test"] = self.paths["train"]  # train.py: a test split exists
        self._carved: dict[str, list[Example]] = {}

    def read(self, path: Path) -> list[Example]:
        named = FORMAT_OF_SUFFIX.get(Path(path).suffix.lower())
        if named is not None and named != self.format:
            raise DataError(f"a {Path(path).suffix} file read with data.format={self.format}: "
                            f"read it with data.format={named}", path)
        if self.format == "label_text":
            examples = read_label_text(path, self.encoding_errors, self.encoding)
        else:
            examples = READERS[self.format](path, self.encoding_errors, self.encoding,
                                            self.text_column, self.label_column)
        if self.lowercase:
            examples = [([t.lower() for t in tokens], label, n) for tokens, label, n in examples]
        if self.label_names:
            names = self.label_names
            examples = [(tokens, names.get(label, label), n) for tokens, label, n in examples]
        return examples

    def read_split(self, split: str) -> list[Example]:
        if not self.carved_splits or (split != "train" and split not in self.carved_splits):
            return super().read_split(split)
        # Splits carved out of train: fixed shares, the same on every rank and in eval.
        if not self._carved:
            self._carved = self._carve(super().read_split("train"))
        return self._carved[split]

    def _carve(self, examples: list[Example]) -> dict[str, list[Example]]:
        n = len(examples)
        rest = list(range(n))
        carved = {}
        for split, fraction, seed in (("test", self.test_fraction, TEST_SPLIT_SEED),
                                      ("val", self.val_fraction, self.seed)):
            if split not in self.carved_splits:
                continue
            random.Random(seed).shuffle(rest)
            cut = round(n * fraction)
            if cut == 0 or cut >= len(rest):
                raise DataError(
                    f"data.{split}_fraction={fraction} of {n} training examples leaves an empty "
                    f"split; give data.{split}_path or change {split}_fraction",
                    self.paths["train"],
                )
            carved[split] = sorted(rest[:cut])
            rest = sorted(rest[cut:])
        carved["train"] = rest
        log.info("carved from %s (%d examples): %s", self.paths["train"], n, ", ".join(
            f"{split} {len(carved[split])}" + (" (fixed seed)" if split == "test" else "")
            for split in ("train", "val", "test") if split in carved))
        return {split: [examples[i] for i in chosen] for split, chosen in carved.items()}

    def split_path(self, split: str) -> Path | None:
        if split in self.carved_splits:
            return Path(self.paths["train"])
        return super().split_path(split)

    def no_test_split_hint(self) -> str:
        return "give data.test_path, or hold out part of train with data.test_fraction=0.1"

    def build_vocabs(self, train: list[Example]) -> dict[str, Vocab]:
        seen = {label for _, label, _ in train}
        warn_single_labels(train, self.split_path("train"))
        if self.labels is not None:
            self._check_labels(train, self.labels, self.split_path("train"))
            labels = self.labels
        else:
            labels = self.named_label_order(seen)
        tokens = Vocab.build((t for t, _, _ in train), self.min_freq, self.max_size)
        log.info("vocabulary: %d tokens, %d labels %s", len(tokens), len(labels), labels)
        vocabs = {"tokens": tokens, "labels": Vocab(labels, has_specials=False)}
        if self.char_features:
            vocabs["chars"] = build_char_vocab((t for t, _, _ in train), self.max_word_length)
        return vocabs

    def encode(self, examples: list[Example], path: Path) -> list[tuple[list[int], int]]:
        tokens, labels = self.vocabs["tokens"], self.vocabs["labels"]
        self._check_labels(examples, labels.itos, path)
        encoded = [(tokens.encode(t), labels.index(label)) for t, label, _ in examples]
        if self.char_features:
            spell = Speller(self.vocabs["chars"], self.max_word_length)
            encoded = [(*pair, spell(t)) for pair, (t, _, _) in zip(encoded, examples)]
        return self.truncate(encoded, path)

    def named_label_order(self, seen: set[str]) -> list[str]:
        """The labels' order, by the files' own labels where they were named (SST-2's 0, 1:
        negative, positive keep ids 0, 1)."""
        raw_of = {name: raw for raw, name in self.label_names.items()}
        label_of_raw = {raw_of.get(label, label): label for label in seen}
        return [label_of_raw[raw] for raw in label_order(set(label_of_raw))]

    @staticmethod
    def _check_labels(examples: list[Example], allowed: list[str], path) -> None:
        allowed = set(allowed)
        for _, label, number in examples:
            if label not in allowed:
                raise DataError(
                    f"label {label!r} is not in the label set {sorted(allowed)}; fix the line or "
                    "add the label to data.labels (a model cannot predict a class it never saw)",
                    path,
                    number,
                )

    def text_settings(self) -> dict:
        settings = {**super().text_settings(), "lowercase": self.lowercase}
        if self.char_features:
            settings["max_word_length"] = self.max_word_length
        return settings

    def model_sizes(self) -> dict[str, int]:
        """What the model needs to size itself, read from the vocabularies."""
        sizes = {**self.word_sizes(), "num_classes": self.num_classes}
        if self.char_features:
            sizes["num_chars"] = len(self.vocabs["chars"])
        return sizes

    @property
    def vocab_size(self) -> int:
        return len(self.vocabs["tokens"])

    @property
    def num_classes(self) -> int:
        return len(self.vocabs["labels"])
