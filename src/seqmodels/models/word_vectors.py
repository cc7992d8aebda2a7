"""Pretrained word vectors (GloVe, word2vec/fastText text format, plain or gzipped) for the
rows of a vocabulary."""

import logging
from pathlib import Path

import torch
from torch import Tensor

from seqmodels.data.vocab import PAD_ID, UNK_ID, Vocab
from seqmodels.errors import ConfigError

log = logging.getLogger(__name__)


def read_word_vectors(path: str | Path, vocab: Vocab, dim: int) -> tuple[Tensor, Tensor]:
    """Vectors for the words of ``vocab`` from a GloVe or word2vec text file.

    A word is looked up as it is, then lower-cased (GloVe files are lower-case).
    :return: (V, dim) vectors and a (V,) bool mask of the words found.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.embeddings.path={str(path)!r}: no such file")
    exact: dict[str, int] = {}
    lowered: dict[str, list[int]] = {}  # lower-cased form -> ids that may fall back to it
    for index, word in enumerate(vocab.itos):
        if index not in (PAD_ID, UNK_ID):
            exact[word] = index
            lowered.setdefault(word.lower(), []).append(index)
    vectors = torch.zeros(len(vocab), dim)
    found = torch.zeros(len(vocab), dtype=torch.bool)
    found_exact = torch.zeros(len(vocab), dtype=torch.bool)
    first_vector = True
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.rstrip().split(" ")
            if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                if int(parts[1]) != dim:
                    raise _dim_error(path, int(parts[1]), dim)
                continue  # the word2vec header: "count dim"
            if first_vector:  # the vector size shows on the first line that has one
                if len(parts) != dim + 1:
                    raise _dim_error(path, len(parts) - 1, dim)
                first_vector = False
            if len(parts) < dim + 1:
                continue
            word = " ".join(parts[:-dim])  # some GloVe files have words with spaces
            if word not in exact and word not in lowered:
                continue
            vector = torch.tensor([float(v) for v in parts[-dim:]])
            if word in exact:
                index = exact[word]
                vectors[index], found[index], found_exact[index] = vector, True, True
            for index in lowered.get(word, []):
                if not found_exact[index]:  # a word's own casing wins over its lower-case form
                    vectors[index], found[index] = vector, True
    return vectors, found


def _dim_error(path: Path, file_dim: int, dim: int) -> ConfigError:
    return ConfigError(f"{path} has {file_dim}-dimensional vectors but model.embedding_dim={dim}; "
                       f"set model.embedding_dim={file_dim}")


# -- metrics -----------------------------------------------------------------------------------
