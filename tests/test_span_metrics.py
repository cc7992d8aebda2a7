"""Span extraction and span precision/recall/F1 against hand-computed cases (conlleval rules)."""

import pytest
import torch

from seqmodels.data.batching import IGNORE_INDEX
from seqmodels.errors import ConfigError
from seqmodels.models.span_metrics import SpanF1, check_scheme, extract_spans, span_counts


@pytest.mark.parametrize(
    ("tags", "spans"),
    [
        # Plain BIO.
        (["B-PER", "I-PER", "O", "B-LOC"], {("PER", 0, 1), ("LOC", 3, 3)}),
        # I- after O starts a span (conlleval; this is also how IOB1 is read).
        (["O", "I-PER", "I-PER", "O"], {("PER", 1, 2)}),
        # I- at the very start of a sentence, too.
        (["I-ORG", "O"], {("ORG", 0, 0)}),
        # A change of type inside I- tags splits the span.
        (["B-PER", "I-PER", "I-LOC", "I-LOC"], {("PER", 0, 1), ("LOC", 2, 3)}),
        # B- right after a span of the same type starts a new one.
        (["B-PER", "B-PER", "I-PER"], {("PER", 0, 0), ("PER", 1, 2)}),
        # A span that runs to the end of the sentence is closed there.
        (["O", "O", "B-MISC", "I-MISC"], {("MISC", 2, 3)}),
        # BIOES: S- is a one-token span, E- closes a span, I- after E- starts a new one.
        (["S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"],
         {("PER", 0, 0), ("LOC", 1, 3), ("LOC", 4, 4)}),
        (["B-ORG", "E-ORG", "I-ORG", "E-ORG"], {("ORG", 0, 1), ("ORG", 2, 3)}),
        (["O", "O"], set()),
    ],
)
def test_extract_spans(tags, spans):
    assert extract_spans(tags) == spans


def test_span_counts_hand_computed():
    gold = [["B-PER", "I-PER", "O", "B-LOC"],          # PER(0,1) LOC(3,3)
            ["B-ORG", "I-ORG", "I-ORG", "O"]]          # ORG(0,2)
    predicted = [["B-PER", "I-PER", "O", "B-ORG"],     # PER right, LOC typed wrong
                 ["B-ORG", "I-ORG", "O", "I-MISC"]]    # ORG boundary wrong; MISC spurious
    # correct: PER(0,1) only; predicted: PER, ORG(3,3), ORG(0,1), MISC(3,3) = 4; gold: 3.
    assert span_counts(gold, predicted) == (1, 4, 3)


def test_span_f1_metric_on_padded_batches():
    tags = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]
    ids = {t: i for i, t in enumerate(tags)}
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "I-LOC"]]
    predicted = [["B-PER", "I-PER", "O", "O"], ["B-LOC", "I-LOC"]]
    targets = torch.tensor([[ids[t] for t in gold[0]],
                            [ids[t] for t in gold[1]] + [IGNORE_INDEX] * 2])
    # Padded predictions that would add a span if padding were read.
    preds = torch.tensor([[ids[t] for t in predicted[0]],
                          [ids[t] for t in predicted[1]] + [ids["B-PER"]] * 2])
    metric = SpanF1(tags, "bio")
    metric.update(preds[:1], targets[:1])
    metric.update(preds[1:], targets[1:])
    result = metric.compute()
    # correct 2 (PER, LOC in sentence 2), predicted 2, gold 3.
    precision, recall = 2 / 2, 2 / 3
    assert result["span_precision"].item() == pytest.approx(precision)
    assert result["span_recall"].item() == pytest.approx(recall)
    assert result["span_f1"].item() == pytest.approx(2 * precision * recall / (precision + recall))


def test_no_predicted_spans_gives_zero_not_nan():
    metric = SpanF1(["B-X", "I-X", "O"], "bio")
    metric.update(torch.tensor([[2, 2]]), torch.tensor([[0, 1]]))
    assert {k: v.item() for k, v in metric.compute().items()} == {
        "span_precision": 0.0, "span_recall": 0.0, "span_f1": 0.0}


def test_scheme_check_names_offending_tags():
    check_scheme(["B-PER", "I-PER", "E-PER", "S-PER", "O"], "bioes")
    with pytest.raises(ConfigError, match=r"\['S-PER'\]"):
        check_scheme(["B-PER", "I-PER", "S-PER", "O"], "bio")
    with pytest.raises(ConfigError, match=r"\['NOUN', 'VERB'\]"):
        check_scheme(["NOUN", "VERB"], "bio")
    with pytest.raises(ConfigError, match="span_scheme='iob3'"):
        check_scheme(["O"], "iob3")
