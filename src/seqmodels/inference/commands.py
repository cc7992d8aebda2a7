"""``seqmodels-predict`` and ``seqmodels-generate`` over an exported directory
(``ckpt_path=<directory>``): the same configs, input formats and output as with a checkpoint,
run by onnxruntime without importing torch or Lightning (``dispatch.py`` sends them here).

The input readers are ``seqmodels.cli.predict``'s own (``text_input``, torch-free); the output
writers follow its; tests/test_export.py checks that both commands write the same lines for
the same model.
"""

import functools
import sys
from contextlib import contextmanager
from itertools import chain
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from seqmodels.data.files import (
    DEFAULT_ENCODING,
    check_encoding,
)
from seqmodels.errors import ConfigError, DataError, SeqModelsError
from seqmodels.inference.bundle import ExportedModel
from seqmodels.inference.text_input import (
    INPUT_FORMATS,
    OUTPUT_FORMATS,
    SENTENCE_FORMATS,
    classification_writer,
    input_lines,
    open_output,
    pools,
    read_sentences,
    tagging_writer,
)

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
        for pool in pools(chain([first], sentences), POOL_SENTENCES):
            for sentence, result in zip(pool, _in_length_order(model, pool, batch_size)):
                write(sentence, result)
            count += len(pool)
    return count


@contextmanager
def _kept(stream):
    yield stream


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
    """seqmodels-predict's writers, fed from the exported model's numpy outputs."""
    if model.task == "classification":
        return classification_writer(out, model.vocabs["labels"].itos, output_format)
    tag_names = model.vocabs["tags"].itos
    write = tagging_writer(out, output_format)

    def write_tags(sentence, scores: np.ndarray) -> None:
        tags = [tag_names[i] for i in scores[:len(sentence[0])].argmax(axis=1).tolist()]
        write(sentence, tags)

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
