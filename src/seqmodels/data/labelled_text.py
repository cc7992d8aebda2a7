"""Readers for labelled sentences: ``LABEL tokens...`` lines (the SST-2 files) and
tab-separated columns, with the header and column detection of the latter.

Both return a list of ``Example``: the tokens, the label name, and the line it came from, so
that a later check (a label outside the label set) can name the exact line.
"""

import logging
from pathlib import Path

from seqmodels.data.files import DEFAULT_ENCODING, read_lines
from seqmodels.errors import DataError

log = logging.getLogger(__name__)

# One example: (tokens, label name, line number in its file).
Example = tuple[list[str], str, int]


def read_label_text(path: Path, errors: str = "strict",
                    encoding: str = DEFAULT_ENCODING) -> list[Example]:
    """``LABEL tokens...`` per line (the SST-2 files); blank lines are skipped."""
    examples = []
    for number, line in read_lines(path, errors, encoding):
        if not line.strip():
            continue
        label, _, text = line.strip().partition(" ")
        tokens = text.split()
        if not tokens:
            raise DataError(f"line has a label ({label!r}) but no text; expected 'LABEL tokens...'",
                            path, number)
        examples.append((tokens, label, number))
    return examples


# Column names that make a first TSV line a header when no column is configured by name.
TEXT_NAMES = ("text", "sentence", "review", "document", "content", "tweet", "comment",
              "utterance", "question", "phrase")
LABEL_NAMES = ("label", "class", "category", "sentiment", "polarity", "target", "topic",
               "intent")
Column = str | int | None


def looks_like_header(fields: list[str]) -> bool:
    """A line of one-word fields of which at least one is a usual column name (``text``,
    ``sentence``, ... / ``label``, ``sentiment``, ...), compared without case."""
    names = [field.strip().lower() for field in fields]
    return (all(len(name.split()) == 1 for name in names)
            and any(name in TEXT_NAMES or name in LABEL_NAMES for name in names))


def _column_named(name: str, header: list[str], key: str, path: Path, number: int) -> int:
    """The index of the header field ``name`` (exactly, else ignoring case and spaces)."""
    for same in (lambda f: f == name, lambda f: f.strip().lower() == name.strip().lower()):
        found = [i for i, field in enumerate(header) if same(field)]
        if found:
            return found[0]
    raise DataError(f"{key}={name!r} is not a column of the header line {header}; name one of "
                    "these or give a 0-based column index", path, number)


def _usual_column(header: list[str], names: tuple[str, ...], other: int | None) -> int | None:
    found = [i for i, field in enumerate(header)
             if field.strip().lower() in names and i != other]
    return found[0] if found else None


def tsv_columns(first: list[str], text_column: Column, label_column: Column, path: Path,
                number: int) -> tuple[bool, int | None, int]:
    """Whether the first line is a header, and the text and label columns: indices into a
    line's tab-separated fields (negative ones count from the end; text None: every field
    but the label's, as for ``text<TAB>label`` lines whose text holds tabs)."""
    named = isinstance(text_column, str) or isinstance(label_column, str)
    header = named or looks_like_header(first)
    text = (_column_named(text_column, first, "data.text_column", path, number)
            if isinstance(text_column, str) else text_column)
    label = (_column_named(label_column, first, "data.label_column", path, number)
             if isinstance(label_column, str) else label_column)
    if header and label is None:
        label = _usual_column(first, LABEL_NAMES, None if text is None else text % len(first))
    if header and text is None:
        text = _usual_column(first, TEXT_NAMES, None if label is None else label % len(first))
    if label is None:  # the last column, unless the text is there
        label = 0 if text is not None and text % len(first) == len(first) - 1 else -1
    width = len(first)
    if header and text is None and width > 2:  # a header's other columns are not text
        raise DataError(f"which column of the header line {first} is the text? name it with "
                        "data.text_column (a header name or a 0-based index)", path, number)
    for key, index in (("data.text_column", text), ("data.label_column", label)):
        if index is not None and not -width <= index < width:
            raise DataError(f"{key}={index} is out of range: the line has {width} tab-separated "
                            "fields", path, number)
    if text is not None and text % width == label % width:
        raise DataError(f"data.text_column and data.label_column are the same column ({text}) "
                        f"of {width}; a classification file needs a text and a label column",
                        path, number)
    return header, text, label


def read_tsv(path: Path, errors: str = "strict", encoding: str = DEFAULT_ENCODING,
             text_column: Column = None, label_column: Column = None) -> list[Example]:
    """Tab-separated lines: by default ``text<TAB>label`` (the label is the last field, the
    text everything before it). Columns are chosen by ``text_column`` / ``label_column``: a
    0-based index (negative from the end), or a name in the file's header line.

    The first non-blank line is a header when a column is given by name (it must then hold
    that name), or when its fields are single words and one of them is a usual column name
    (``text``, ``sentence``, ``review``... or ``label``, ``sentiment``, ``class``...); a
    header's usual names then choose the columns that were not configured (a header of more
    than two columns without a usual text name needs ``text_column``).
    """
    examples = []
    columns = None
    for number, line in read_lines(path, errors, encoding):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError("line has no tab; expected 'text<TAB>label'", path, number)
        if columns is None:
            header, *columns = tsv_columns(fields, text_column, label_column, path, number)
            if header:
                text, label = columns
                log.info("%s:%d: header line %s: text from %s, label from column %r", path,
                         number, fields, "every other column" if text is None else
                         f"column {fields[text]!r}", fields[label])
                continue
        text, label = columns
        for key, index in (("text_column", text), ("label_column", label)):
            if index is not None and not -len(fields) <= index < len(fields):
                raise DataError(f"line has {len(fields)} tab-separated fields, too few for "
                                f"data.{key}={index}", path, number)
        label_index = label % len(fields)
        text_fields = (fields[:label_index] + fields[label_index + 1:] if text is None
                       else [fields[text]])
        tokens, label_value = " ".join(text_fields).split(), fields[label_index].strip()
        if not label_value:
            raise DataError("line has no label after the tab" if label_index == len(fields) - 1
                            else f"line has an empty label (field {label_index})", path, number)
        if not tokens:
            raise DataError("line has a label but no text", path, number)
        examples.append((tokens, label_value, number))
    return examples
