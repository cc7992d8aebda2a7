"""Span-level precision, recall and F1 for BIO / BIOES tag sets (chunking, NER), with the
semantics of the CoNLL shared tasks' ``conlleval`` script: a span counts as correct only if
its type and both of its boundaries match a gold span.

Like ``conlleval``, spans are read leniently from any tag sequence: an ``I-`` tag after ``O``
or after a span of another type starts a new span, and so does a change of type. So ``bio``
also covers the older IOB1 encoding of CoNLL-2003, where ``I-`` starts most spans. ``conlleval``
itself predates BIOES (it has no ``S-``); for ``E-``/``S-`` we follow the rules that seqeval's
conlleval-compatible mode uses: ``E-`` and ``S-`` always close their span.
"""

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from seqmodels.data.batching import IGNORE_INDEX
from seqmodels.errors import ConfigError

SCHEMES = {"bio": ("B", "I"), "bioes": ("B", "I", "E", "S")}
OUTSIDE = "O"

Span = tuple[str, int, int]  # (type, first token, last token), both inclusive


def split_tag(tag: str) -> tuple[str, str]:
    """``B-PER`` -> (``B``, ``PER``); ``O`` -> (``O``, ``""``)."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    prefix, _, kind = tag.partition("-")
    return prefix, kind


def _ends(prev: str, prev_kind: str, tag: str, kind: str) -> bool:
    """Does the span open at the previous token end before this one? (conlleval endOfChunk)"""
    if prev in ("E", "S"):
        return True
    if prev in ("B", "I"):
        return tag in ("B", "S", OUTSIDE) or kind != prev_kind
    return False


def _starts(prev: str, prev_kind: str, tag: str, kind: str) -> bool:
    """Does a new span start at this token? (conlleval startOfChunk)"""
    if tag in ("B", "S"):
        return True
    if tag in ("I", "E"):
        return prev in ("E", "S", OUTSIDE) or kind != prev_kind
    return False


def extract_spans(tags: Sequence[str]) -> set[Span]:
    """The typed spans of one sentence's tag sequence."""
    spans, start = set(), None
    prev, prev_kind = OUTSIDE, ""
    for position, tag in enumerate([*tags, OUTSIDE]):  # a final O closes a span at the end
        prefix, kind = split_tag(tag)
        if start is not None and _ends(prev, prev_kind, prefix, kind):
            spans.add((prev_kind, start, position - 1))
            start = None
        if _starts(prev, prev_kind, prefix, kind):
            start = position
        prev, prev_kind = prefix, kind
    return spans


def check_scheme(tags: Sequence[str], scheme: str) -> None:
    """Refuse a tag set that does not fit the scheme, naming the tags that do not."""
    if scheme not in SCHEMES:
        raise ConfigError(f"model.span_scheme={scheme!r} is not one of {sorted(SCHEMES)} (or null "
                          "for no span metrics)")
    prefixes = SCHEMES[scheme]

    def fits(tag: str) -> bool:
        prefix, kind = split_tag(tag)
        return tag == OUTSIDE or (prefix in prefixes and bool(kind))

    bad = [t for t in tags if not fits(t)]
    if bad:
        allowed = "/".join(prefixes)
        raise ConfigError(
            f"model.span_scheme={scheme}: tags {bad[:10]} are not 'O' or '{allowed}-TYPE'; use "
            "span_scheme=null for tag sets without spans (POS tags)")


def span_counts(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
                ) -> tuple[int, int, int]:
    """(correct, predicted, gold) span counts over sentences of tag strings."""
    correct = n_predicted = n_gold = 0
    for gold_tags, predicted_tags in zip(gold, predicted, strict=True):
        gold_spans, predicted_spans = extract_spans(gold_tags), extract_spans(predicted_tags)
        correct += len(gold_spans & predicted_spans)
        n_predicted += len(predicted_spans)
        n_gold += len(gold_spans)
    return correct, n_predicted, n_gold


def precision_recall_f1(correct: float, predicted: float,
                        gold: float) -> tuple[float, float, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


class SpanF1(Metric):
    """Micro-averaged span precision/recall/F1 over padded batches of tag ids.

    :param tags: tag names by id (the tag vocabulary).
    :param scheme: ``bio`` or ``bioes``; the tag names are checked against it.
    """

    full_state_update = False

    def __init__(self, tags: Sequence[str], scheme: str = "bio", **kwargs):
        super().__init__(**kwargs)
        check_scheme(tags, scheme)
        self.tags = list(tags)
        for name in ("correct", "predicted", "gold"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, targets: Tensor) -> None:
        """:param preds: (B, T) predicted tag ids. :param targets: (B, T) gold tag ids,
        ``IGNORE_INDEX`` at padding."""
        real = (targets != IGNORE_INDEX).cpu()
        preds, targets = preds.cpu(), targets.cpu()
        gold_rows, predicted_rows = [], []
        for row in range(targets.size(0)):
            gold_rows.append([self.tags[i] for i in targets[row][real[row]].tolist()])
            predicted_rows.append([self.tags[i] for i in preds[row][real[row]].tolist()])
        correct, predicted, gold = span_counts(gold_rows, predicted_rows)
        self.correct += correct
        self.predicted += predicted
        self.gold += gold

    def compute(self) -> dict[str, Tensor]:
        precision, recall, f1 = precision_recall_f1(
            self.correct.item(), self.predicted.item(), self.gold.item())
        return {"span_precision": torch.tensor(precision), "span_recall": torch.tensor(recall),
                "span_f1": torch.tensor(f1)}
