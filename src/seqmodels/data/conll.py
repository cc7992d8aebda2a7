"""Readers for token-per-line tagging files: CoNLL-U (Universal Dependencies) and the plain
whitespace-separated column format of CoNLL-2000/2003-style chunking and NER corpora.

Both return a list of ``TaggedSentence``: the tokens, their tags, and for each token the line it
came from, so that a later check (a tag that training never saw) can name the exact line.
"""

import logging
from pathlib import Path
from typing import NamedTuple

from seqmodels.data.files import DEFAULT_ENCODING, read_lines
from seqmodels.errors import DataError

log = logging.getLogger(__name__)

# CoNLL-U columns (0-based): ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC.
CONLLU_COLUMNS = 10
CONLLU_FORM = 1
CONLLU_TAG_COLUMNS = {"upos": 3, "xpos": 4}
DOCSTART = "-DOCSTART-"


class TaggedSentence(NamedTuple):
    tokens: list[str]
    tags: list[str]
    lines: list[int]  # 1-based line number of each token


class _SentenceCollector:
    """Gathers tokens between blank lines and counts blocks that held no token at all."""

    def __init__(self, path: Path):
        self.path = path
        self.sentences: list[TaggedSentence] = []
        self.tokens: list[str] = []
        self.tags: list[str] = []
        self.lines: list[int] = []
        self.block_has_content = False  # comments or skipped lines since the last blank line
        self.empty = 0

    def add(self, token: str, tag: str, number: int) -> None:
        self.tokens.append(token)
        self.tags.append(tag)
        self.lines.append(number)

    def end_sentence(self) -> None:
        if self.tokens:
            self.sentences.append(TaggedSentence(self.tokens, self.tags, self.lines))
            self.tokens, self.tags, self.lines = [], [], []
        elif self.block_has_content:
            self.empty += 1
        self.block_has_content = False

    def finish(self, last_line: int, last_blank: bool) -> list[TaggedSentence]:
        if self.tokens and not last_blank:
            # Accepted as the last sentence; a truncated file would look the same, so say so.
            log.warning("%s:%d: the file ends without a blank line after its last sentence; "
                        "reading it as complete (check the file if it was cut short)",
                        self.path, last_line)
        self.end_sentence()
        if self.empty:
            log.warning("%s: skipped %d empty sentence%s (no token lines between blank lines)",
                        self.path, self.empty, "" if self.empty == 1 else "s")
        return self.sentences


def read_conllu(path: str | Path, tag_column: str = "upos", errors: str = "strict",
                encoding: str = DEFAULT_ENCODING) -> list[TaggedSentence]:
    """Sentences of a CoNLL-U file: FORM as the token, UPOS or XPOS as the tag.

    Comment lines (``#``), multiword-token lines (ID ``3-4``) and empty nodes (ID ``8.1``) carry
    no tag of their own and are skipped; a blank line ends a sentence.
    """
    if tag_column not in CONLLU_TAG_COLUMNS:
        raise DataError(f"data.tag_column={tag_column!r} is not one of "
                        f"{sorted(CONLLU_TAG_COLUMNS)} for CoNLL-U files")
    path = Path(path)
    tag_index = CONLLU_TAG_COLUMNS[tag_column]
    sentences = _SentenceCollector(path)
    number, blank = 0, True
    for number, line in read_lines(path, errors, encoding):
        blank = not line.strip()
        if blank:
            sentences.end_sentence()
            continue
        if line[0] == "#":
            sentences.block_has_content = True
            continue
        columns = line.split("\t")
        if len(columns) != CONLLU_COLUMNS:
            raise DataError(
                f"expected {CONLLU_COLUMNS} tab-separated columns (CoNLL-U), found "
                f"{len(columns)}; for whitespace-separated token/tag columns use "
                "data=column_tagging", path, number)
        word_id = columns[0]
        if not word_id.isdigit():
            if "-" in word_id or "." in word_id:  # multiword token or empty node
                sentences.block_has_content = True
                continue
            raise DataError(f"ID column {word_id!r} is not a word index (1, 2, ...), a range "
                            "(3-4) or an empty node (8.1)", path, number)
        tag = columns[tag_index]
        if tag in ("", "_"):
            raise DataError(
                f"token {columns[CONLLU_FORM]!r} has no {tag_column.upper()} tag ({tag!r}); "
                f"fill it in or choose the other column with data.tag_column", path, number)
        sentences.add(columns[CONLLU_FORM], tag, number)
    return sentences.finish(number, blank)


def read_columns(path: str | Path, token_column: int = 0, tag_column: int = -1,
                 errors: str = "strict", encoding: str = DEFAULT_ENCODING) -> list[TaggedSentence]:
    """Sentences of a whitespace-separated column file (CoNLL-2000 chunking, CoNLL-2003 NER):
    one token a line, a blank line between sentences, ``-DOCSTART-`` lines skipped.

    Columns are counted from 0; negative indices count from the end (``-1``: the last column).
    Every token line must have as many columns as the file's first one.
    """
    path = Path(path)
    sentences = _SentenceCollector(path)
    width = None  # columns per token line, fixed by the first one
    number, blank = 0, True
    for number, line in read_lines(path, errors, encoding):
        columns = line.split()
        blank = not columns
        if blank:
            sentences.end_sentence()
            continue
        if columns[0] == DOCSTART:
            continue
        if width is None:
            width = len(columns)
            _check_column_choice(width, token_column, tag_column, path, number)
        if len(columns) != width:
            what = "too few" if len(columns) < width else "too many"
            raise DataError(
                f"{what} columns: {len(columns)}, but the file's first token line has {width} "
                "(a missing tag, or a token with a space in it?)", path, number)
        sentences.add(columns[token_column], columns[tag_column], number)
    return sentences.finish(number, blank)


def _check_column_choice(width: int, token_column: int, tag_column: int, path: Path,
                         number: int) -> None:
    for name, index in (("token_column", token_column), ("tag_column", tag_column)):
        if not -width <= index < width:
            raise DataError(f"data.{name}={index} is out of range: the token lines have {width} "
                            "columns", path, number)
    if token_column % width == tag_column % width:
        raise DataError(f"data.token_column={token_column} and data.tag_column={tag_column} name "
                        f"the same column of {width}; a tagging file needs a token and a tag "
                        "column", path, number)
