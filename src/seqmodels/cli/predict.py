"""``seqmodels-predict``: label sentences or tag their tokens with a trained checkpoint.

The model, its hyperparameters, its vocabularies and how the training data was read and
normalised (``data.encoding``, ``data.lowercase``, and with character features
``data.max_word_length``: the datamodule's ``text_settings``) all come from the checkpoint;
``encoding=``, ``lowercase=`` and ``max_word_length=`` override them. A checkpoint that records
no data settings (written before seqmodels-train saved them, or not by seqmodels-train) is
refused.

Input is whitespace-tokenised, one sentence a line, as the training readers do. Blank lines
hold no sentence and are skipped; every output record names its input line (``line``). CSV
(``input_format=csv``) and JSON-lines (``input_format=jsonl``) input name the text's column
or key with ``text_column=`` (by default a header's usual text name, ``text``).
"""

import logging
import os
import sys
from contextlib import nullcontext
from itertools import chain
from pathlib import Path
from typing import TextIO

import hydra
import torch
from omegaconf import DictConfig

from seqmodels.cli.eval import load_model
from seqmodels.cli.generate import resolve_device
from seqmodels.config import config_dir, exit_on_user_error
from seqmodels.data.batching import collate_classification
from seqmodels.data.classification import TextClassificationDataModule
from seqmodels.data.conll import TaggedSentence
from seqmodels.data.files import (
    check_encoding,
)
from seqmodels.data.tagging import TaggingDataModule, collate_tagging
from seqmodels.errors import ConfigError, DataError
from seqmodels.inference import commands as exported
from seqmodels.inference.bundle import is_export_dir
from seqmodels.inference.text_input import (
    INPUT_FORMATS,
    OUTPUT_FORMATS,
    SENTENCE_FORMATS,
    Sentence,
    classification_writer,
    input_lines,
    open_output,
    pools,
    read_sentences,
    tagging_writer,
)
from seqmodels.overrides import hold_composition_errors

log = logging.getLogger(__name__)

# Sentences sorted by length together: a pool of this many batches is read, predicted and
# written before the next is read, so memory stays bounded and output starts early.
POOL_BATCHES = 64


# -- how the training data was normalised -------------------------------------------------------
def recorded_data_config(ckpt_path: str, model) -> dict:
    """How the training data was read and normalised: the training run's data config, under
    its text settings, both saved in the checkpoint by seqmodels-train."""
    if not model.data_config:
        raise ConfigError(f"{ckpt_path} records no data settings (how its training text was read "
                          "and normalised): it predates checkpoints that save them, or was not "
                          "written by seqmodels-train; train it again with seqmodels-train")
    return {**model.data_config, **model.text_settings}


def setting(cfg: DictConfig, recorded: dict, key: str):
    """``key=`` where given, else the training data's ``data.<key>``."""
    return recorded[key] if cfg.get(key) is None else cfg[key]


# -- encoding, as the training datamodules do ---------------------------------------------------
def classification_encoder(model, lowercase: bool, max_word_length: int | None):
    # The training datamodule's own encode() (word ids, and character ids for a model with
    # character features); its readers split on whitespace and lower-case, as done here.
    options = ({} if max_word_length is None
               else {"char_features": True, "max_word_length": max_word_length})
    datamodule = TextClassificationDataModule(None, **options)
    datamodule.set_vocabs(model.vocabs)
    placeholder = model.vocabs["labels"].itos[0]  # encode() wants labels; predictions ignore them

    def encode(pool: list[Sentence]) -> list:
        examples = [([w.lower() for w in words] if lowercase else words, placeholder, line)
                    for words, line in pool]
        return datamodule.encode(examples, Path("<input>"))

    return encode


def tagging_encoder(model, lowercase: bool, max_word_length: int):
    # The training datamodule's own encode(): word normalisation, character ids and word
    # clipping are then the same code as in training. No max_length: every token gets a tag.
    datamodule = TaggingDataModule(None, lowercase=lowercase, max_word_length=max_word_length)
    datamodule.set_vocabs(model.vocabs)
    placeholder = model.vocabs["tags"].itos[0]  # encode() wants tags; predictions ignore them

    def encode(pool: list[Sentence]) -> list:
        sentences = [TaggedSentence(words, [placeholder] * len(words), [line] * len(words))
                     for words, line in pool]
        return datamodule.encode(sentences, Path("<input>"))

    return encode


@torch.inference_mode()
def predict_in_length_order(model, encoded: list, collate, batch_size: int,
                            device: torch.device) -> list:
    """``model.predict_step`` per example, batched by similar length, in input order."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    results = [None] * len(encoded)
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        batch = collate([encoded[i] for i in chosen]).to(device)
        for index, result in zip(chosen, model.predict_step(batch, start // batch_size)):
            results[index] = result
    return results


# -- the command -----------------------------------------------------------------------------------
def check_options(cfg: DictConfig) -> None:
    for key, allowed in (("format", OUTPUT_FORMATS), ("input_format", INPUT_FORMATS)):
        if cfg[key] not in allowed:
            raise ConfigError(f"{key}={cfg[key]!r} is not one of {list(allowed)}")
    if int(cfg.batch_size) < 1:
        raise ConfigError(f"batch_size must be positive, got {cfg.batch_size}")


def predict(cfg: DictConfig, out: TextIO | None = None) -> int:
    """Write a prediction per input sentence to ``out`` (default: ``cfg.output``); return how
    many sentences were predicted."""
    if is_export_dir(cfg.ckpt_path):  # seqmodels-export's directory: run by onnxruntime
        return exported.predict(cfg, out)
    check_options(cfg)
    device = resolve_device(str(cfg.get("device", "auto")))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    model = load_model(cfg.ckpt_path, map_location=device, trust=cfg.get("trust_checkpoint", False))
    if model.task == "language_model":
        raise ConfigError(f"{cfg.ckpt_path} holds a character language model, which writes "
                          "text rather than labelling it; use seqmodels-generate "
                          f"ckpt_path={cfg.ckpt_path} prompt=...")
    if model.task not in ("classification", "tagging"):
        raise ConfigError(f"{cfg.ckpt_path} holds a {model.task} model; seqmodels-predict "
                          "reads classifiers and taggers")
    if model.task == "classification" and cfg.input_format not in SENTENCE_FORMATS:
        raise ConfigError(f"input_format={cfg.input_format} is for tagging checkpoints; a "
                          "classifier reads one sentence a record (input_format=text, csv "
                          "or jsonl)")
    model.to(device).eval()
    recorded = recorded_data_config(str(cfg.ckpt_path), model)
    lowercase = bool(setting(cfg, recorded, "lowercase"))
    encoding = check_encoding(setting(cfg, recorded, "encoding"), "encoding")

    source = str(cfg.input)
    name = "<stdin>" if source == "-" else source
    sentences = read_sentences(input_lines(source, cfg.encoding_errors, encoding),
                               cfg.input_format, name, cfg.get("text_column"))
    first = next(sentences, None)  # before any output: an empty input writes nothing at all
    if first is None:
        raise DataError("no sentence to predict: the input has only blank lines", name)
    batch_size = int(cfg.batch_size)
    with open_output(str(cfg.output)) if out is None else nullcontext(out) as stream:
        # Words are clipped for character features as in training.
        max_word_length = (int(setting(cfg, recorded, "max_word_length"))
                           if "chars" in model.vocabs else None)
        if model.task == "classification":
            encode = classification_encoder(model, lowercase, max_word_length)
            collate = collate_classification
            write = classification_writer(stream, model.vocabs["labels"].itos, cfg.format)
        else:
            encode, collate = tagging_encoder(model, lowercase, max_word_length), collate_tagging
            write = tagging_writer(stream, cfg.format)
        count = 0
        for pool in pools(chain([first], sentences), batch_size * POOL_BATCHES):
            for sentence, result in zip(pool, predict_in_length_order(
                    model, encode(pool), collate, batch_size, device)):
                write(sentence, result)
            count += len(pool)
    log.info("predicted %d sentences", count)
    return count


@hold_composition_errors("predict")
@hydra.main(version_base="1.3", config_path=config_dir(), config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    try:
        predict(cfg)
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, without a traceback at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
