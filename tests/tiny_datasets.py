"""Tiny stand-ins for the named datasets, in the layout ``SEQMODELS_DATA_DIR`` points at
(``sst2/``, ``ud_ewt/``, ``tinyshakespeare/``), and for a user's own files: what the README's
commands read when the tests run them as a user types them."""

import csv
import gzip
import json
import random
from pathlib import Path

from tests.conftest import write_lines

POSITIVE = ["good", "fun", "great", "gripping", "funny", "moving"]
NEGATIVE = ["bad", "dull", "awful", "boring", "flat", "tedious"]
FILLER = ["a", "film", "the", "plot", ",", "."]
# (word, UPOS, XPOS): a grammar small enough to learn in a few steps.
LEXICON = [("the", "DET", "DT"), ("a", "DET", "DT"), ("dog", "NOUN", "NN"),
           ("film", "NOUN", "NN"), ("runs", "VERB", "VBZ"), ("sees", "VERB", "VBZ"),
           ("quickly", "ADV", "RB"), ("red", "ADJ", "JJ"), (".", "PUNCT", ".")]


def sentiment_lines(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        label = rng.choice("01")
        words = POSITIVE if label == "1" else NEGATIVE
        lines.append(f"{label} " + " ".join(rng.choices(words + FILLER, k=rng.randint(3, 9))))
    return lines


def tagged_sentences(n: int, seed: int) -> list[list[tuple[str, str, str]]]:
    rng = random.Random(seed)
    return [[rng.choice(LEXICON[:2]), rng.choice(LEXICON[2:4]), rng.choice(LEXICON[4:6]),
             *rng.choices(LEXICON[6:8], k=rng.randint(0, 3)), LEXICON[8]] for _ in range(n)]


def conllu(sentences) -> list[str]:
    lines = []
    for number, sentence in enumerate(sentences, 1):
        lines.append(f"# sent_id = {number}")
        lines.append("# text = " + " ".join(word for word, _, _ in sentence))
        lines += [f"{i}\t{word}\t{word}\t{upos}\t{xpos}\t_\t0\tdep\t_\t_"
                  for i, (word, upos, xpos) in enumerate(sentence, 1)]
        lines.append("")
    return lines


def shakespeare_text(chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    names = ["ROMEO", "JULIET", "NURSE"]
    words = ["thou", "art", "my", "love", "and", "the", "night", "is", "sweet", "o", "fair"]
    parts, size = [], 0
    while size < chars:
        speech = f"{rng.choice(names)}:\n" + " ".join(rng.choices(words, k=12)) + ".\n\n"
        parts.append(speech)
        size += len(speech)
    return "".join(parts)[:chars]


def write_named_datasets(root: Path) -> Path:
    """``root`` as a data directory: every named dataset's files present, so none is fetched."""
    for split, n, seed in (("train", 120, 0), ("dev", 40, 1), ("test", 40, 2)):
        write_lines(root / "sst2" / f"stsa.binary.{split}", sentiment_lines(n, seed))
        write_lines(root / "ud_ewt" / f"en_ewt-ud-{split}.conllu",
                    conllu(tagged_sentences(n, seed)))
    # The char LM cuts val and train into batch_size x bptt windows (32 x 128 in the experiment).
    text = root / "tinyshakespeare" / "input.txt"
    text.parent.mkdir(parents=True, exist_ok=True)
    text.write_text(shakespeare_text(120_000), encoding="utf-8")
    write_glove(root / "glove" / "glove.6B.50d.txt.gz", 50)
    return root


# Words the tiny training files never have, but the tiny vectors file does.
UNSEEN_WITH_VECTORS = ["superb", "dreadful", "cat"]


def write_glove(path: Path, dim: int, seed: int = 0, word2vec_header: bool = False) -> Path:
    """A GloVe-format vectors file (gzipped when ``path`` ends in .gz; with word2vec's
    ``count dim`` first line if asked) for the tiny datasets' words, lower-cased, and a few
    words they never use."""
    rng = random.Random(seed)
    words = dict.fromkeys(w.lower() for w in POSITIVE + NEGATIVE + FILLER
                          + [word for word, _, _ in LEXICON] + UNSEEN_WITH_VECTORS)
    lines = [w + " " + " ".join(f"{rng.uniform(-1, 1):.4f}" for _ in range(dim)) for w in words]
    if word2vec_header:
        lines.insert(0, f"{len(words)} {dim}")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_reviews_csv(path: Path, lines: list[str]) -> Path:
    """A spreadsheet's export: ``id,review,label`` with a header, reviews quoted where they hold
    commas or quotes, Windows line endings, cp1252 (its curly apostrophe is byte 0x92, which is
    not UTF-8)."""
    rows = [["id", "review", "label"]]
    for i, line in enumerate(lines):
        label, words = line.split()[0], line.split()[1:]
        text = " ".join(words) + (", isn\u2019t it" if i % 2 else ' ("so" they say)')
        rows.append([str(i), text, "positive" if label == "1" else "negative"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="cp1252", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def write_reviews_jsonl(path: Path, lines: list[str]) -> Path:
    """JSON lines: ``{"text": ..., "label": ...}`` and an extra key."""
    records = [{"id": i, "text": " ".join(line.split()[1:]),
                "label": "positive" if line[0] == "1" else "negative"}
               for i, line in enumerate(lines)]
    return write_lines(path, [json.dumps(record) for record in records])


def write_own_files(folder: Path) -> None:
    """A user's own files, as the README's examples name them (``my/``, ``my_corpus/``, ...)."""
    my = folder / "my"
    write_lines(my / "train.tsv", [" ".join(line.split()[1:]) + "\t" + line.split()[0]
                                   for line in sentiment_lines(80, 3)])
    write_lines(my / "test.tsv", [" ".join(line.split()[1:]) + "\t" + line.split()[0]
                                  for line in sentiment_lines(30, 4)])
    # Latin-1, with a `text<TAB>sentiment` header (the README's own-data example).
    reviews = ["text\tsentiment"] + [
        " ".join(line.split()[1:]) + (" café" if i % 3 else " naïve") + "\t"
        + ("pos" if line[0] == "1" else "neg") for i, line in enumerate(sentiment_lines(80, 9))]
    (my / "reviews.tsv").write_bytes(("\n".join(reviews) + "\n").encode("latin-1"))
    write_reviews_csv(my / "reviews.csv", sentiment_lines(80, 10))
    write_reviews_jsonl(my / "reviews.jsonl", sentiment_lines(80, 11))
    write_lines(my / "train.conllu", conllu(tagged_sentences(60, 5)))
    write_lines(my / "dev.conllu", conllu(tagged_sentences(20, 6)))
    columns = []
    for sentence in tagged_sentences(60, 7):
        columns += [f"{word} {xpos} _ {upos}" for word, upos, xpos in sentence] + [""]
    write_lines(my / "train.txt", columns)
    write_lines(my / "dev.txt", columns[: len(columns) // 3])
    (folder / "my_corpus").mkdir(parents=True, exist_ok=True)
    (folder / "my_corpus" / "a.txt").write_text(shakespeare_text(60_000, 1), encoding="utf-8")
    (folder / "my_corpus" / "b.txt").write_text(shakespeare_text(60_000, 2), encoding="utf-8")
    write_glove(my / "vectors.vec", 100, word2vec_header=True)  # fastText's .vec layout
    write_lines(folder / "reviews.txt", ["a gripping , funny film", "", "a dull , flat plot"])
    write_lines(folder / "sentences.txt", ["the dog runs .", "a film sees quickly ."])
    write_lines(folder / "test.conllu", conllu(tagged_sentences(5, 8)))
