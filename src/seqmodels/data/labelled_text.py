"""Readers for labelled sentences: ``LABEL tokens...`` lines (the SST-2 files), tab-separated
columns, comma-separated files (Python's ``csv`` module: quoted fields may hold commas, quotes
and newlines) and JSON lines (``{"text": ..., "label": ...}``), with the header and column
detection of the column formats.

Both return a list of ``Example``: the tokens, the label name, and the line it came from, so
that a later check (a label outside the label set) can name the exact line.
"""

import csv
import json
import logging
from collections.abc import Iterable, Iterator
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
            raise DataError(f"line has a label ({label!r}) but no text; expected 'LABEL tokens...'"
                            + csv_hint(path, line), path, number)
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
                number: int, kind: str = "tab-separated") -> tuple[bool, int | None, int]:
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
            raise DataError(f"{key}={index} is out of range: the line has {width} {kind} "
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
    rows = []
    for number, line in read_lines(path, errors, encoding):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError("line has no tab; expected 'text<TAB>label'" + csv_hint(path, line),
                            path, number)
        rows.append((number, fields))
    return examples_from_rows(rows, path, text_column, label_column, "tab-separated")


def examples_from_rows(rows: Iterable[tuple[int, list[str]]], path: Path, text_column: Column,
                       label_column: Column, kind: str) -> list[Example]:
    """Examples from the rows of a column file (``(line number, fields)``): the header, the
    text and the label columns as ``read_tsv`` says."""
    examples = []
    columns = None
    for number, fields in rows:
        if columns is None:
            header, *columns = tsv_columns(fields, text_column, label_column, path, number, kind)
            if header:
                text, label = columns
                log.info("%s:%d: header line %s: text from %s, label from column %r", path,
                         number, fields, "every other column" if text is None else
                         f"column {fields[text]!r}", fields[label])
                continue
        text, label = columns
        for key, index in (("text_column", text), ("label_column", label)):
            if index is not None and not -len(fields) <= index < len(fields):
                raise DataError(f"line has {len(fields)} {kind} fields, too few for "
                                f"data.{key}={index}", path, number)
        label_index = label % len(fields)
        text_fields = (fields[:label_index] + fields[label_index + 1:] if text is None
                       else [fields[text]])
        tokens, label_value = " ".join(text_fields).split(), fields[label_index].strip()
        if not label_value:
            raise DataError(f"line has no label in its last {kind} field"
                            if label_index == len(fields) - 1
                            else f"line has an empty label (field {label_index})", path, number)
        if not tokens:
            raise DataError("line has a label but no text", path, number)
        examples.append((tokens, label_value, number))
    return examples


# -- comma-separated values and JSON lines --------------------------------------------------------
def looks_like_csv(path: Path, first_line: str) -> bool:
    """A ``.csv`` name, or a first line with commas and no tab (a header ``id,review,label``
    or a record ``3,"a fine, long film",pos``)."""
    return Path(path).suffix.lower() == ".csv" or ("," in first_line and "\t" not in first_line)


def csv_hint(path: Path, line: str) -> str:
    """The hint that ends an error about a file that is really comma-separated."""
    if not looks_like_csv(path, line):
        return ""
    return "; the file looks comma-separated: read it with data.format=csv"


def csv_rows(lines: Iterable[tuple[int, str]], path) -> Iterator[tuple[int, list[str]]]:
    """The records of comma-separated text as ``(first line number, fields)``, parsed by the
    ``csv`` module (quoted fields may hold commas, doubled quotes and newlines); blank records
    are skipped."""
    numbers: list[int] = []

    def text():
        for number, line in lines:
            numbers.append(number)
            yield line + "\n"

    reader = csv.reader(text(), strict=True)
    start = 1
    try:
        for fields in reader:
            first, start = start, (numbers[-1] + 1 if numbers else start)
            if any(field.strip() for field in fields):
                yield first, fields
    except csv.Error as error:  # an unclosed quote, most often
        raise DataError(f"not valid CSV ({error}); a field that holds a comma or a quote must be "
                        'quoted, its quotes doubled: "a ""fine"", long film"', path,
                        numbers[-1] if numbers else 1) from None


def text_column_of(first: list[str], text_column: Column, key: str, path,
                   number: int) -> tuple[bool, int]:
    """For input without labels (``seqmodels-predict``): whether the first record is a header,
    and the text's column: ``text_column`` (a header name or an index), else a header's usual
    text name (``text``, ``review``, ...), else the only column."""
    header = isinstance(text_column, str) or looks_like_header(first)
    if isinstance(text_column, str):
        return True, _column_named(text_column, first, key, path, number)
    if text_column is not None:
        if not -len(first) <= int(text_column) < len(first):
            raise DataError(f"{key}={text_column} is out of range: the record has {len(first)} "
                            "fields", path, number)
        return header, int(text_column)
    usual = _usual_column(first, TEXT_NAMES, None) if header else None
    if usual is not None:
        return True, usual
    if len(first) == 1:
        return header, 0
    raise DataError(f"which of the {len(first)} columns is the text? name it with {key}=<a "
                    "header name or a 0-based index>", path, number)


def read_csv(path: Path, errors: str = "strict", encoding: str = DEFAULT_ENCODING,
             text_column: Column = None, label_column: Column = None) -> list[Example]:
    """Comma-separated records, with the columns, header and defaults of ``read_tsv``: a
    header ``id,review,label`` picks ``review`` and ``label`` by their usual names."""
    rows = [(number, fields) for number, fields in csv_rows(read_lines(path, errors, encoding),
                                                             path)]
    for number, fields in rows:
        if len(fields) < 2:
            raise DataError("record has one field; expected 'text,label' (comma-separated, "
                            "quoted where the text holds commas)", path, number)
    return examples_from_rows(rows, path, text_column, label_column, "comma-separated")


def json_records(lines: Iterable[tuple[int, str]], path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of JSON lines."""
    for number, line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"not a JSON object ({error.msg}); expected one object a line, "
                            'such as {"text": "a fine film", "label": "pos"}', path,
                            number) from None
        if not isinstance(record, dict):
            raise DataError(f"a JSON {type(record).__name__}, not an object; expected one "
                            'object a line, such as {"text": "a fine film", "label": "pos"}',
                            path, number)
        yield number, record


def json_field(record: dict, key: str, option: str, path, number: int):
    if key not in record:
        raise DataError(f"the object has no {key!r} key (it has {sorted(record)}); name the "
                        f"key with {option}=<key>", path, number)
    return record[key]


def tokens_of(value) -> list[str]:
    """A JSON text: a string (split on whitespace) or a list of tokens."""
    if isinstance(value, list):
        return [str(token) for token in value]
    return str(value).split()


def read_jsonl(path: Path, errors: str = "strict", encoding: str = DEFAULT_ENCODING,
               text_column: Column = None, label_column: Column = None) -> list[Example]:
    """One JSON object a line: its ``text`` (a string or a list of tokens) and ``label``
    keys, or those named by ``text_column`` / ``label_column``."""
    text_key = "text" if text_column is None else str(text_column)
    label_key = "label" if label_column is None else str(label_column)
    examples = []
    for number, record in json_records(read_lines(path, errors, encoding), path):
        tokens = tokens_of(json_field(record, text_key, "data.text_column", path, number))
        label = json_field(record, label_key, "data.label_column", path, number)
        if not tokens:
            raise DataError(f"the {text_key!r} of this object is empty", path, number)
        if label is None or str(label).strip() == "":
            raise DataError(f"the {label_key!r} of this object is empty", path, number)
        examples.append((tokens, str(label).strip(), number))
    return examples
