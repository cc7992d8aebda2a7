"""``seqmodels-predict`` and ``seqmodels-generate`` over an exported directory
(``ckpt_path=<directory>``): the same configs, input formats and output as with a checkpoint,
run by onnxruntime without importing torch or Lightning (``dispatch.py`` sends them here).

The input readers and the output writers follow ``seqmodels.cli.predict``'s (which imports
torch), built from the same torch-free pieces of ``seqmodels.data``; tests/test_export.py
checks that both commands write the same lines for the same model.
"""

import functools
import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import chain
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from seqmodels.data.conll import CONLLU_COLUMNS, CONLLU_FORM, DOCSTART
from seqmodels.data.files import (
    DEFAULT_ENCODING,
    check_encoding,
    check_encoding_errors,
    decode_lines,
    read_lines,
)
from seqmodels.data.labelled_text import csv_rows, json_records, text_column_of, tokens_of
from seqmodels.errors import ConfigError, DataError, SeqModelsError
from seqmodels.inference.bundle import ExportedModel

OUTPUT_FORMATS = ("tsv", "jsonl")
INPUT_FORMATS = ("text", "csv", "jsonl", "conllu", "column")
SENTENCE_FORMATS = ("text", "csv", "jsonl")
PROBABILITY_DIGITS = 4  # as seqmodels-predict prints them
POOL_SENTENCES = 64 * 256  # sentences read, predicted and written at a time


def config_dir() -> str:
    """The ``configs/`` tree (as ``seqmodels.config.config_dir``, which imports Lightning)."""
    packaged = Path(__file__).resolve().parents[1] / "configs"
    if packaged.is_dir():
        return str(packaged)
    return str(Path(__file__).resolve().parents[3] / "configs")


def one_line_errors(main):
    """A user's mistake is one line on stderr and exit status 1."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except SeqModelsError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)

    return wrapper


# -- input (as seqmodels-predict reads it) -------------------------------------------------------
def input_lines(source: str, errors: str, encoding: str) -> Iterator[tuple[int, str]]:
    if source != "-":
        yield from read_lines(source, errors, encoding, prefix="")
        return
    check_encoding_errors(errors, "encoding_errors")
    yield from decode_lines(sys.stdin.buffer, "<stdin>", encoding, errors, prefix="")


def read_sentences(lines: Iterable[tuple[int, str]], input_format: str, source: str,
                   text_column=None) -> Iterator[tuple[list[str], int]]:
    """``(tokens, line)`` per sentence of text, csv, jsonl, conllu or column input."""
    if input_format == "text":
        yield from ((line.split(), number) for number, line in lines if line.strip())
    elif input_format == "csv":
        rows = csv_rows(lines, source)
        first = next(rows, None)
        if first is None:
            return
        header, column = text_column_of(first[1], text_column, "text_column", source, first[0])
        for number, fields in rows if header else chain([first], rows):
            if not -len(fields) <= column < len(fields):
                raise DataError(f"the record has {len(fields)} fields, too few for the text's "
                                f"column ({column})", source, number)
            yield fields[column].split(), number
    elif input_format == "jsonl":
        key = "text" if text_column is None else str(text_column)
        for number, record in json_records(lines, source):
            if key not in record:
                raise DataError(f"the object has no {key!r} key (it has {sorted(record)}); name "
                                "the text's key with text_column=<key>", source, number)
            yield tokens_of(record[key]), number
    else:
        yield from _token_lines(lines, input_format, source)


def _token_lines(lines, input_format: str, source: str):
    tokens, first = [], 0
    for number, line in lines:
        if not line.strip():
            if tokens:
                yield tokens, first
            tokens = []
            continue
        if input_format == "column":
            token = line.split()[0]
            token = None if token == DOCSTART else token
        elif line.startswith("#"):
            token = None
        else:
            columns = line.split("\t")
            if len(columns) != CONLLU_COLUMNS:
                raise DataError(f"expected {CONLLU_COLUMNS} tab-separated columns (CoNLL-U), "
                                f"found {len(columns)}; for one sentence a line use "
                                "input_format=text", source, number)
            token = columns[CONLLU_FORM] if columns[0].isdigit() else None
        if token is not None:
            first = first if tokens else number
            tokens.append(token)
    if tokens:
        yield tokens, first


@contextmanager
def open_output(target: str):
    if target == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    with open(target, "w", encoding="utf-8", newline="\n") as handle:
        yield handle


# -- predict -------------------------------------------------------------------------------------
def check_device(cfg: DictConfig) -> None:
    device = str(cfg.get("device", "auto"))
    if device not in ("auto", "cpu"):
        raise ConfigError(f"device={device}: an exported model runs on the CPU with onnxruntime; "
                          "use device=cpu (or a checkpoint for a GPU)")


def predict(cfg: DictConfig, out=None) -> int:
    """seqmodels-predict over an exported classifier or tagger; returns the sentence count."""
    for key, allowed in (("format", OUTPUT_FORMATS), ("input_format", INPUT_FORMATS)):
        if cfg[key] not in allowed:
            raise ConfigError(f"{key}={cfg[key]!r} is not one of {list(allowed)}")
    batch_size = int(cfg.batch_size)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {cfg.batch_size}")
    check_device(cfg)
    model = ExportedModel(cfg.ckpt_path, cfg.get("threads"))
    where = cfg.ckpt_path
    if model.task == "language_model":
        raise ConfigError(f"{where} holds a character language model, which writes text rather "
                          f"than labelling it; use seqmodels-generate ckpt_path={where} prompt=...")
    if model.task == "classification" and cfg.input_format not in SENTENCE_FORMATS:
        raise ConfigError(f"input_format={cfg.input_format} is for tagging models; a classifier "
                          "reads one sentence a record (input_format=text, csv or jsonl)")
    for key in ("lowercase", "max_word_length"):  # the command line overrides the recorded
        if cfg.get(key) is not None:
            model.settings[key] = cfg[key]
    if cfg.get("lowercase") is not None:
        model.settings["lowercase_chars"] = bool(cfg.lowercase) and model.task == "classification"
    encoding = check_encoding(cfg.get("encoding") or model.settings.get("encoding")
                              or DEFAULT_ENCODING, "encoding")
    source = str(cfg.input)
    name = "<stdin>" if source == "-" else source
    sentences = read_sentences(input_lines(source, cfg.encoding_errors, encoding),
                               cfg.input_format, name, cfg.get("text_column"))
    first = next(sentences, None)
    if first is None:
        raise DataError("no sentence to predict: the input has only blank lines", name)
    count = 0
    with open_output(str(cfg.output)) if out is None else _kept(out) as stream:
        write = _writer(model, stream, cfg.format)
        for pool in _pools(chain([first], sentences), POOL_SENTENCES):
            for sentence, result in zip(pool, _in_length_order(model, pool, batch_size)):
                write(sentence, result)
            count += len(pool)
    return count


@contextmanager
def _kept(stream):
    yield stream


def _pools(sentences, size: int):
    pool = []
    for sentence in sentences:
        pool.append(sentence)
        if len(pool) == size:
            yield pool
            pool = []
    if pool:
        yield pool


def _in_length_order(model: ExportedModel, pool: list, batch_size: int) -> list:
    """The graph's output per sentence (probs, or the real tokens' scores), batched by
    similar length, in input order."""
    encoded = [model.encode(words) for words, _ in pool]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    results = [None] * len(encoded)
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        outputs = model.run_words([encoded[i] for i in chosen])
        for row, index in enumerate(chosen):
            results[index] = outputs[row]
    return results


def _writer(model: ExportedModel, out, output_format: str):
    if model.task == "classification":
        labels = model.vocabs["labels"].itos
        if output_format == "tsv":
            out.write("\t".join(["line", "text", "label", *(f"p({lb})" for lb in labels)]) + "\n")

        def write(sentence, probs: np.ndarray) -> None:
            words, line = sentence
            probs = probs.tolist()
            label = labels[max(range(len(probs)), key=probs.__getitem__)]
            if output_format == "tsv":
                shown = [f"{p:.{PROBABILITY_DIGITS}f}" for p in probs]
                out.write("\t".join([str(line), " ".join(words), label, *shown]) + "\n")
            else:
                out.write(json.dumps({"line": line, "text": " ".join(words), "label": label,
                                      "probs": {lb: round(p, PROBABILITY_DIGITS)
                                                for lb, p in zip(labels, probs)}},
                                     ensure_ascii=False) + "\n")

        return write
    tag_names = model.vocabs["tags"].itos

    def write_tags(sentence, scores: np.ndarray) -> None:
        words, line = sentence
        tags = [tag_names[i] for i in scores[:len(words)].argmax(axis=1).tolist()]
        if output_format == "tsv":
            out.write("".join(f"{w}\t{t}\n" for w, t in zip(words, tags)) + "\n")
        else:
            out.write(json.dumps({"line": line, "tokens": words, "tags": tags},
                                 ensure_ascii=False) + "\n")

    return write_tags


# -- generate ------------------------------------------------------------------------------------
UNKNOWN_CHARS = ("error", "skip")


def generate(cfg: DictConfig, out=sys.stdout) -> str:
    """seqmodels-generate over an exported character language model: the prompt, then each
    sampled character as soon as it is chosen. Greedy (temperature=0) writes what the
    checkpoint writes; a seed gives repeatable text, though not the checkpoint's (numpy's
    random numbers, not torch's)."""
    check_device(cfg)
    model = ExportedModel(cfg.ckpt_path, cfg.get("threads"))
    if model.task != "language_model":
        raise ConfigError(f"{cfg.ckpt_path} holds a {model.task} model, but this command needs a "
                          "language_model model; pass an export of a character language model")
    prompt, num_chars = str(cfg.prompt), int(cfg.num_chars)
    temperature, top_k = float(cfg.temperature), cfg.get("top_k")
    ids = _prompt_ids(model, prompt, str(cfg.get("unknown_chars", "error")))
    if num_chars < 0:
        raise ConfigError(f"num_chars must be >= 0, got {num_chars}")
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    if top_k is not None and int(top_k) < 1:
        raise ConfigError(f"top_k must be a positive integer or null, got {top_k}")
    rng = np.random.default_rng(cfg.get("seed"))
    never, itos = model.never_written(), model.vocabs["chars"].itos
    out.write(prompt)
    out.flush()
    logits, state = model.step(ids, model.initial_state())
    written = []
    for count in range(num_chars):
        char_id = _pick(logits + never, temperature, top_k, rng)
        out.write(itos[char_id])
        out.flush()
        written.append(itos[char_id])
        if count + 1 < num_chars:
            logits, state = model.step([char_id], state)
    out.write("\n")
    out.flush()
    return "".join(written)


def _prompt_ids(model: ExportedModel, prompt: str, unknown_chars: str) -> list[int]:
    if unknown_chars not in UNKNOWN_CHARS:
        raise ConfigError(f"unknown_chars={unknown_chars!r} is not one of {list(UNKNOWN_CHARS)}")
    stoi = model.vocabs["chars"].stoi
    unknown = list(dict.fromkeys(ch for ch in prompt if ch not in stoi))
    if unknown and unknown_chars == "error":
        raise ConfigError(f"the prompt has {len(unknown)} character(s) that the model never saw "
                          f"in training: {', '.join(repr(ch) for ch in unknown)}; remove them or "
                          "pass unknown_chars=skip to leave them out")
    ids = [stoi[ch] for ch in prompt if ch in stoi]
    if not ids:
        raise ConfigError("the prompt has no character the model knows; give at least one "
                          "(for example a newline)")
    return ids


def _pick(logits: np.ndarray, temperature: float, top_k, rng: np.random.Generator) -> int:
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.astype(np.float64) / temperature
    if top_k is not None and int(top_k) < logits.size:
        kth = np.sort(logits)[-int(top_k)]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max())
    return int(rng.choice(logits.size, p=probs / probs.sum()))
