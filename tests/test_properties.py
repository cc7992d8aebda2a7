"""Property-based tests: whatever text a reader is given and whatever sequences reach the
collate function, the result is a well-formed batch or the project's own error, never an
IndexError or a silently wrong shape."""

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqmodels.data.batching import IGNORE_INDEX, collate_classification, pad
from seqmodels.data.labelled_text import read_label_text, read_tsv
from seqmodels.data.vocab import PAD_ID
from seqmodels.errors import DataError

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
# Text with the characters that matter to these formats: spaces, tabs, line breaks, digits.
TEXT = st.text(alphabet=string.ascii_letters + string.digits + " \t\r\n\u00e9-#.", max_size=300)


@SETTINGS
@given(content=st.one_of(TEXT, st.binary(max_size=200)))
@pytest.mark.parametrize("reader", [read_label_text, read_tsv])
def test_readers_give_examples_or_a_data_error(tmp_path, reader, content):
    path = tmp_path / "data.txt"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    try:
        examples = reader(path)
    except DataError as error:
        assert str(path) in str(error)
        return
    for tokens, label, line in examples:
        assert tokens and all(t and not any(c.isspace() for c in t) for t in tokens)
        assert label and line >= 1


@SETTINGS
@given(st.lists(st.tuples(st.lists(st.integers(1, 1000), min_size=1, max_size=20),
                          st.integers(0, 5)), min_size=1, max_size=12))
def test_collate_shapes_and_padding(examples):
    batch = collate_classification(examples)
    B = len(examples)
    T = max(len(ids) for ids, _ in examples)
    assert batch.tokens.shape == (B, T) and batch.lengths.shape == (B,)
    assert batch.targets.tolist() == [label for _, label in examples]
    for row, (ids, _) in enumerate(examples):
        assert batch.lengths[row] == len(ids)
        assert batch.tokens[row, : len(ids)].tolist() == ids
        assert (batch.tokens[row, len(ids) :] == PAD_ID).all()


@SETTINGS
@given(st.lists(st.lists(st.integers(0, 50), max_size=6), min_size=1, max_size=6))
def test_pad_refuses_empty_sequences_with_a_data_error(sequences):
    if any(len(s) == 0 for s in sequences):
        with pytest.raises(DataError, match="empty sequence"):
            pad(sequences)
    else:
        tokens, lengths = pad(sequences, value=IGNORE_INDEX)
        assert tokens.shape == (len(sequences), max(map(len, sequences)))
        assert lengths.tolist() == [len(s) for s in sequences]
