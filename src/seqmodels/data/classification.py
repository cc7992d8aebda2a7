"""Sentence classification data: SST-2 and a user's own label-text or TSV files."""

import logging
import random
from pathlib import Path

from seqmodels.data.base import SequenceDataModule
from seqmodels.data.batching import collate_classification
from seqmodels.data.chars import Speller, build_char_vocab
from seqmodels.data.files import read_lines
from seqmodels.data.vocab import Vocab
from seqmodels.errors import DataError

log = logging.getLogger(__name__)

FORMATS = ("label_text", "tsv")
# One example: (tokens, label name, line number in its file).
Example = tuple[list[str], str, int]


def read_label_text(path: Path, errors: str = "strict") -> list[Example]:
    """``LABEL tokens...`` per line (the SST-2 files); blank lines are skipped."""
    examples = []
    for number, line in read_lines(path, errors):
        if not line.strip():
            continue
        label, _, text = line.strip().partition(" ")
        tokens = text.split()
        if not tokens:
            raise DataError(f"line has a label ({label!r}) but no text; expected 'LABEL tokens...'",
                            path, number)
        examples.append((tokens, label, number))
    return examples


def read_tsv(path: Path, errors: str = "strict") -> list[Example]:
    """``text<TAB>label`` per line; a first line whose label column reads ``label`` is a header."""
    examples = []
    for number, line in read_lines(path, errors):
        if not line.strip():
            continue
        text, tab, label = line.rpartition("\t")
        if not tab:
            raise DataError("line has no tab; expected 'text<TAB>label'", path, number)
        if number == 1 and label.strip().lower() == "label":
            continue
        tokens, label = text.split(), label.strip()
        if not label:
            raise DataError("line has no label after the tab", path, number)
        if not tokens:
            raise DataError("line has a label but no text", path, number)
        examples.append((tokens, label, number))
    return examples


READERS = {"label_text": read_label_text, "tsv": read_tsv}


def label_order(labels: set[str]) -> list[str]:
    """Numeric labels in numeric order (so "0", "1" keep their ids), others alphabetically."""
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


class TextClassificationDataModule(SequenceDataModule):
    """One label per sentence.

    :param format: ``label_text`` (``LABEL tokens...``) or ``tsv`` (``text<TAB>label``).
    :param labels: the allowed label set; by default the labels seen in train.
    :param lowercase: lower-case tokens before they meet the vocabulary.
    :param min_freq, max_size: vocabulary limits (train only).
    :param char_features: also spell every word out as character ids (``Batch.chars``), for a
        model with character features (``model.chars``); ``max_word_length`` characters are
        kept per word (the first and last ones).
    :param val_fraction: with no ``val_path``, this share of train (fixed seed) validates.
    """

    task = "classification"
    collate_fn = staticmethod(collate_classification)

    def __init__(
        self,
        *args,
        format: str = "label_text",
        labels: list[str] | None = None,
        lowercase: bool = False,
        min_freq: int = 1,
        max_size: int | None = None,
        val_fraction: float = 0.1,
        char_features: bool = False,
        max_word_length: int = 30,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if format not in FORMATS:
            raise DataError(f"data.format={format!r} is not one of {list(FORMATS)}")
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        self.format = format
        self.labels = None if labels is None else [str(label) for label in labels]
        self.lowercase = lowercase
        self.min_freq = min_freq
        self.max_size = max_size
        self.val_fraction = val_fraction
        self.char_features = char_features
        self.max_word_length = max_word_length
        self._carved: dict[str, list[Example]] = {}

    def read(self, path: Path) -> list[Example]:
        examples = READERS[self.format](path, self.encoding_errors)
        if self.lowercase:
            examples = [([t.lower() for t in tokens], label, n) for tokens, label, n in examples]
        return examples

    def read_split(self, split: str) -> list[Example]:
        if self.paths["val"] is not None or split == "test":
            return super().read_split(split)
        # No validation file: carve a fixed share out of train, the same on every rank.
        if not self._carved:
            examples = super().read_split("train")
            order = list(range(len(examples)))
            random.Random(self.seed).shuffle(order)
            cut = round(len(examples) * self.val_fraction)
            if cut == 0 or cut == len(examples):
                raise DataError(
                    f"data.val_fraction={self.val_fraction} of {len(examples)} training examples "
                    "leaves an empty split; give data.val_path or change val_fraction",
                    self.paths["train"],
                )
            self._carved = {"val": [examples[i] for i in sorted(order[:cut])],
                            "train": [examples[i] for i in sorted(order[cut:])]}
            log.info("validation split carved from train: %d val, %d train", cut,
                     len(examples) - cut)
        return self._carved[split]

    def split_path(self, split: str) -> Path | None:
        if split == "val" and self.paths["val"] is None:
            return Path(self.paths["train"])
        return super().split_path(split)

    def build_vocabs(self, train: list[Example]) -> dict[str, Vocab]:
        seen = {label for _, label, _ in train}
        if self.labels is not None:
            self._check_labels(train, self.labels, self.split_path("train"))
            labels = self.labels
        else:
            labels = label_order(seen)
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
        settings = {"lowercase": self.lowercase}
        if self.char_features:
            settings["max_word_length"] = self.max_word_length
        return settings

    def model_sizes(self) -> dict[str, int]:
        """What the model needs to size itself, read from the vocabularies."""
        sizes = {"vocab_size": self.vocab_size, "num_classes": self.num_classes}
        if self.char_features:
            sizes["num_chars"] = len(self.vocabs["chars"])
        return sizes

    @property
    def vocab_size(self) -> int:
        return len(self.vocabs["tokens"])

    @property
    def num_classes(self) -> int:
        return len(self.vocabs["labels"])
