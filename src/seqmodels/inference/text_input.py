"""What seqmodels-predict reads and writes, without torch: the input formats (one sentence a
line, CSV, JSON lines, CoNLL-U, columns) turned into ``(tokens, line)`` sentences, the output
stream, and the lines written to it. Shared by the command over a checkpoint
(``seqmodels.cli.predict``) and over an exported model (``seqmodels.inference.commands``,
which must not import torch)."""

import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import chain
from typing import TextIO

from seqmodels.data.conll import CONLLU_COLUMNS, CONLLU_FORM, DOCSTART
from seqmodels.data.files import (
    DEFAULT_ENCODING,
    check_encoding_errors,
    decode_lines,
    read_lines,
)
from seqmodels.data.labelled_text import csv_rows, json_records, text_column_of, tokens_of
from seqmodels.errors import DataError

OUTPUT_FORMATS = ("tsv", "jsonl")
INPUT_FORMATS = ("text", "csv", "jsonl", "conllu", "column")
SENTENCE_FORMATS = ("text", "csv", "jsonl")  # one sentence a record: for classifiers too
# Probabilities are printed to this many decimals: more is noise to a reader.
PROBABILITY_DIGITS = 4
# One input sentence: its tokens and the 1-based input line it starts on.
Sentence = tuple[list[str], int]


# -- input ---------------------------------------------------------------------------------------
def input_lines(source: str, errors: str = "strict",
                encoding: str = DEFAULT_ENCODING) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a file, or of stdin for ``-``, in ``encoding``; bytes that
    are not valid in it are an error naming the line and byte (``encoding_errors=strict``)."""
    if source != "-":
        yield from read_lines(source, errors, encoding, prefix="")
        return
    check_encoding_errors(errors, "encoding_errors")
    yield from decode_lines(sys.stdin.buffer, "<stdin>", encoding, errors, prefix="")


def read_sentences(lines: Iterable[tuple[int, str]], input_format: str,
                   source: str, text_column=None) -> Iterator[Sentence]:
    """Sentences of ``text`` (one a line), ``csv`` (a column of comma-separated records),
    ``jsonl`` (a key of one object a line), ``conllu`` (FORM column) or ``column`` (first
    whitespace column; blank lines end sentences) input. Tags in the input are ignored."""
    if input_format == "text":
        for number, line in lines:
            if line.strip():
                yield line.split(), number
        return
    if input_format == "csv":
        yield from csv_sentences(lines, source, text_column)
        return
    if input_format == "jsonl":
        key = "text" if text_column is None else str(text_column)
        for number, record in json_records(lines, source):
            if key not in record:
                raise DataError(f"the object has no {key!r} key (it has {sorted(record)}); name "
                                "the text's key with text_column=<key>", source, number)
            yield tokens_of(record[key]), number
        return
    tokens, first = [], 0
    for number, line in lines:
        if not line.strip():
            if tokens:
                yield tokens, first
            tokens = []
            continue
        token = _token_of(line, input_format, source, number)
        if token is not None:
            first = first if tokens else number
            tokens.append(token)
    if tokens:
        yield tokens, first


def csv_sentences(lines: Iterable[tuple[int, str]], source: str,
                  text_column) -> Iterator[Sentence]:
    rows = csv_rows(lines, source)
    first = next(rows, None)
    if first is None:
        return
    number, fields = first
    header, column = text_column_of(fields, text_column, "text_column", source, number)
    for number, fields in rows if header else chain([first], rows):
        if not -len(fields) <= column < len(fields):
            raise DataError(f"the record has {len(fields)} fields, too few for the text's column "
                            f"({column})", source, number)
        yield fields[column].split(), number


def _token_of(line: str, input_format: str, source: str, number: int) -> str | None:
    """The token of one non-blank line, or None for a line that carries none."""
    if input_format == "column":
        token = line.split()[0]
        return None if token == DOCSTART else token
    if line.startswith("#"):
        return None
    columns = line.split("\t")
    if len(columns) != CONLLU_COLUMNS:
        raise DataError(f"expected {CONLLU_COLUMNS} tab-separated columns (CoNLL-U), found "
                        f"{len(columns)}; for one sentence a line use input_format=text",
                        source, number)
    # Multiword-token ranges (3-4) and empty nodes (8.1) are not words of their own.
    return columns[CONLLU_FORM] if columns[0].isdigit() else None


@contextmanager
def open_output(target: str):
    if target == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    with open(target, "w", encoding="utf-8", newline="\n") as handle:
        yield handle


def pools(sentences: Iterable[Sentence], size: int) -> Iterator[list[Sentence]]:
    """The sentences in lists of ``size`` (the last may be shorter), read one list at a time."""
    pool = []
    for sentence in sentences:
        pool.append(sentence)
        if len(pool) == size:
            yield pool
            pool = []
    if pool:
        yield pool


# -- output --------------------------------------------------------------------------------------
def classification_writer(out: TextIO, labels: list[str], output_format: str):
    """A writer of one sentence's probabilities (a torch tensor or a numpy array)."""
    if output_format == "tsv":
        out.write("\t".join(["line", "text", "label", *(f"p({label})" for label in labels)]) + "\n")

    def write(sentence: Sentence, probs) -> None:
        words, line = sentence
        probs = probs.tolist()
        label = labels[max(range(len(probs)), key=probs.__getitem__)]
        if output_format == "tsv":
            shown = [f"{p:.{PROBABILITY_DIGITS}f}" for p in probs]
            out.write("\t".join([str(line), " ".join(words), label, *shown]) + "\n")
        else:
            record = {"line": line, "text": " ".join(words), "label": label,
                      "probs": {name: round(p, PROBABILITY_DIGITS)
                                for name, p in zip(labels, probs)}}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")

    return write


def tagging_writer(out: TextIO, output_format: str):
    def write(sentence: Sentence, tags: list[str]) -> None:
        words, line = sentence
        if output_format == "tsv":  # CoNLL style: token<TAB>tag, a blank line after a sentence
            out.write("".join(f"{w}\t{t}\n" for w, t in zip(words, tags)) + "\n")
        else:
            out.write(json.dumps({"line": line, "tokens": words, "tags": tags},
                                 ensure_ascii=False) + "\n")

    return write
