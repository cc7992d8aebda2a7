"""Pretrained word vectors from a text file: GloVe (``word v1 ... vD``) or word2vec / fastText
(the same, after a ``count dim`` header line), plain or gzipped.

The file is read in one pass, and its words and vectors are cached as a torch file (keyed by
the file's path, size and modification time), so that a rerun loads them memory-mapped.
"""

import gzip
import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from seqmodels.data.vocab import PAD_ID, UNK_ID, Vocab
from seqmodels.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the cache's layout changes


@dataclass
class WordVectors:
    """The words of a vectors file (in file order: most frequent first for GloVe, word2vec
    and fastText) and their (N, dim) float32 vectors."""

    path: Path
    words: list[str]
    vectors: Tensor

    @property
    def dim(self) -> int:
        return self.vectors.size(1)

    def for_vocab(self, vocab: Vocab) -> tuple[Tensor, Tensor]:
        """(V, dim) vectors for the rows of ``vocab`` and the (V,) mask of rows found.

        A word is looked up as it is, then lower-cased (GloVe's words are lower-case), its own
        casing winning. ``<pad>`` and ``<unk>`` are never looked up."""
        index = {word: i for i, word in enumerate(self.words)}
        rows = torch.full((len(vocab),), -1, dtype=torch.long)
        for i, word in enumerate(vocab.itos):
            if i in (PAD_ID, UNK_ID):
                continue
            row = index.get(word)
            if row is None:
                row = index.get(word.lower())
            if row is not None:
                rows[i] = row
        found = rows >= 0
        table = torch.zeros(len(vocab), self.dim)
        table[found] = self.vectors[rows[found]]
        return table, found


def check_vectors_file(path: str | Path | None, embedding_dim: int) -> None:
    """Fail before training, in one line, on a missing file or a wrong model.embedding_dim."""
    if path is None:
        return
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.embeddings.path={str(path)!r}: no such file (a GloVe or "
                          "word2vec text file, plain or .gz; e.g. glove.6B.50d.txt from the "
                          "GloVe 6B release)")
    file_dim = _first_line_dim(path)
    if file_dim != embedding_dim:
        raise ConfigError(f"{path} has {file_dim}-dimensional vectors but "
                          f"model.embedding_dim={embedding_dim}; set "
                          f"model.embedding_dim={file_dim}")


def load_word_vectors(path: str | Path, cache_dir: str | Path | None = None) -> WordVectors:
    """Read ``path`` (or its cached copy in ``cache_dir``; None: no cache)."""
    path = Path(path)
    cached = None if cache_dir is None else Path(cache_dir) / _cache_name(path)
    if cached is not None and cached.is_file():
        try:
            data = torch.load(cached, map_location="cpu", weights_only=True, mmap=True)
            words = data["words"].split("\n")
            if len(words) == data["vectors"].size(0):
                log.info("word vectors: %d x %d from the cache %s", len(words),
                         data["vectors"].size(1), cached)
                return WordVectors(path, words, data["vectors"])
        except Exception as error:  # a damaged cache is rebuilt, never trusted
            log.warning("word vectors: ignoring the unreadable cache %s (%s)", cached, error)
    vectors = read_vectors_text(path)
    if cached is not None:
        _write_cache(vectors, cached)
    return vectors


def read_vectors_text(path: Path) -> WordVectors:
    """One pass over the lines; the numbers are parsed by numpy in one call."""
    words: list[str] = []
    numbers: list[str] = []
    lines: list[int] = []  # each row's line number, for the errors found after the pass
    dim = None
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n\r")
            if number == 1 and _is_word2vec_header(line):
                dim = int(line.split()[1])
                continue
            if not line.strip():
                continue
            line = line.rstrip(" ")
            if dim is None:
                dim = line.count(" ")
                if dim < 1:
                    raise DataError("a vectors line is 'word v1 v2 ...': found no numbers",
                                    path, number)
            spaces = line.count(" ")
            if spaces == dim:
                word, _, values = line.partition(" ")
            elif spaces > dim:  # a word with spaces in it (some GloVe files): numbers are last
                parts = line.split(" ")
                word, values = " ".join(parts[:-dim]), " ".join(parts[-dim:])
            else:
                raise DataError(f"expected a word and {dim} numbers, found {spaces} values",
                                path, number)
            words.append(word)
            numbers.append(values)
            lines.append(number)
    if not words:
        raise DataError("no word vectors in the file", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # older numpy: stops early
            flat = np.fromstring(" ".join(numbers), dtype=np.float32, sep=" ")
    except ValueError:  # newer numpy: a value that is not a number
        flat = None
    if flat is None or flat.size != len(words) * dim:
        _raise_at_first_bad_number(path, numbers, words, lines)
    vectors = torch.from_numpy(flat.reshape(len(words), dim))
    if not torch.isfinite(vectors).all():
        row = int((~torch.isfinite(vectors)).any(1).nonzero()[0])
        raise DataError(f"the vector of {words[row]!r} is not finite", path, lines[row])
    log.info("word vectors: read %d x %d from %s", len(words), dim, path)
    return WordVectors(path, words, vectors)


def _raise_at_first_bad_number(path: Path, numbers: list[str], words: list[str],
                               lines: list[int]) -> None:
    for row, text in enumerate(numbers):
        for value in text.split(" "):
            try:
                float(value)
            except ValueError:
                raise DataError(f"{value!r} in the vector of {words[row]!r} is not a number",
                                path, lines[row]) from None
    raise DataError("the vectors could not be parsed as numbers", path)


def _open_text(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    # Vectors files are UTF-8; a few published ones carry broken bytes in rare words.
    return opener(path, "rt", encoding="utf-8", errors="replace")


def _is_word2vec_header(line: str) -> bool:
    parts = line.split()
    return len(parts) == 2 and all(p.isdigit() for p in parts)


def _first_line_dim(path: Path) -> int:
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if number == 1 and _is_word2vec_header(line):
                return int(line.split()[1])
            if line.strip():
                return len(line.rstrip("\n\r ").split(" ")) - 1
    raise DataError("no word vectors in the file", path)


def _cache_name(path: Path) -> str:
    stat = path.resolve().stat()
    key = f"{CACHE_VERSION}\0{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return f"{path.name}.{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def _write_cache(vectors: WordVectors, cached: Path) -> None:
    """Best effort: a cache that cannot be written only costs the next run a re-read."""
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.partial")
        torch.save({"words": "\n".join(vectors.words), "vectors": vectors.vectors}, partial)
        os.replace(partial, cached)
    except OSError as error:
        log.warning("word vectors: could not write the cache %s (%s)", cached, error)
