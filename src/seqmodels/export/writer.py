"""Write a trained task module as a self-contained directory that onnxruntime runs without
torch: the ONNX graph (``graphs.py``), the vocabularies, the text settings the checkpoint
records, a manifest (``export.json``) that ``seqmodels.inference`` reads, and a README.md.

The directory is written under a temporary name beside the target and renamed into place
when complete, so a failed export leaves nothing behind. Before the rename the graph is run
in onnxruntime on a batch of other sizes than the traced one and compared with the PyTorch
network: an export that baked in the traced shapes, or computes something else, is refused.
"""

import contextlib
import json
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from seqmodels.data.chars import SpelledWords
from seqmodels.errors import ConfigError
from seqmodels.export import graphs
from seqmodels.inference.bundle import (
    EXPORT_FORMAT,
    MANIFEST,
    MODEL_FILE,
    TEXT_SETTINGS,
    VOCABS_FILE,
)

log = logging.getLogger(__name__)

FORMATS = ("onnx",)
QUANTIZATIONS = (None, "int8")
DEFAULT_OPSET = 17
# The exported graph must equal the network within this (float32, before quantization).
TOLERANCE = 1e-4


def export_model(model, output: str | Path, fmt: str = "onnx", opset: int = DEFAULT_OPSET,
                 quantize: str | None = None, source: str = "") -> dict:
    """Write ``model`` (a seqmodels task module) to the directory ``output``; return the
    manifest. ``quantize="int8"``: ONNX Runtime's dynamic int8 quantization of the weights."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r} is not one of {list(FORMATS)}")
    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"quantize={quantize!r} is not one of {list(QUANTIZATIONS)}")
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise ConfigError(f"opset={opset!r} must be an integer (an ONNX opset version)")
    output = Path(output)
    if output.exists():
        raise ConfigError(f"output={str(output)!r} exists; name a new directory (nothing is "
                          "overwritten)")
    if not output.parent.is_dir():
        raise ConfigError(f"output={str(output)!r}: its parent directory does not exist")
    spec = task_spec(model)
    partial = output.parent / f".{output.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        manifest = _write(model, spec, partial, opset, quantize, source)
        os.rename(partial, output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


# -- what each task exports --------------------------------------------------------------------
def task_spec(model) -> dict:
    """The graph, its input and output names with their dynamic axes, and the example inputs
    to trace it with and to check it on (of other sizes, so that a baked-in shape shows)."""
    task = getattr(model, "task", None)
    net = getattr(model, "net", None)
    if net is None or task not in ("classification", "tagging", "language_model"):
        raise ConfigError(f"a {type(model).__name__} ({task}) cannot be exported: seqmodels-export "
                          "writes classifiers, taggers and character language models")
    if task == "language_model":
        return _charlm_spec(model, net)
    with_chars = "chars" in model.vocabs
    if with_chars != (net.embeddings.chars is not None):
        raise ConfigError("the checkpoint's character vocabulary and its network disagree on "
                          "character features; it cannot be exported")
    if task == "classification":
        graph, outputs = graphs.ClassifierGraph(net), {"probs": {0: "batch"}}
    else:
        graph, outputs = graphs.TaggerGraph(net), {"scores": {0: "batch", 1: "time"}}
    inputs = {"tokens": {0: "batch", 1: "time"}, "lengths": {0: "batch"}}
    if with_chars:
        inputs["spellings"] = {0: "spellings", 1: "word"}
        inputs["spelling_index"] = {0: "batch", 1: "time"}
    vocab = net.embeddings.vocab_size
    chars = model.vocabs["chars"] if with_chars else None
    return {"task": task, "graph": graph, "inputs": inputs, "outputs": outputs,
            "examples": [_word_batch(lengths, vocab, chars, width)
                         for lengths, width in (((3, 2), 4), ((5, 4, 1), 6))]}


def _word_batch(lengths: tuple, vocab: int, chars, width: int) -> dict:
    generator = torch.Generator().manual_seed(sum(lengths))
    batch, steps = len(lengths), max(lengths)
    lengths = torch.tensor(lengths)
    real = torch.arange(steps) < lengths.unsqueeze(1)
    tokens = torch.randint(2, max(vocab, 3), (batch, steps), generator=generator) * real
    example = {"tokens": tokens, "lengths": lengths}
    if chars is not None:
        ids = torch.randint(2, max(len(chars), 3), (batch, steps, width), generator=generator)
        word_lengths = torch.randint(1, width + 1, (batch, steps, 1), generator=generator)
        ids = ids * (torch.arange(width) < word_lengths) * real.unsqueeze(2)
        spelled = SpelledWords.from_padded(ids, real)  # the layout the runner builds
        example["spellings"], example["spelling_index"] = spelled.spellings, spelled.index
    return example


def _charlm_spec(model, net) -> dict:
    encoder = net.encoder
    state_names = ("h", "c") if encoder.cell == "lstm" else ("h",)
    inputs = {"tokens": {0: "batch", 1: "time"}}
    inputs.update({f"{name}0": {1: "batch"} for name in state_names})
    outputs = {"logits": {0: "batch", 1: "time"}}
    outputs.update({name: {1: "batch"} for name in state_names})
    examples = []
    for batch, steps in ((2, 3), (3, 1)):
        generator = torch.Generator().manual_seed(batch * 10 + steps)
        example = {"tokens": torch.randint(0, net.head.out_features, (batch, steps),
                                           generator=generator)}
        for name in state_names:
            example[f"{name}0"] = 0.5 * torch.randn(encoder.num_layers, batch,
                                                    encoder.hidden_size, generator=generator)
        examples.append(example)
    return {"task": "language_model", "graph": graphs.CharLMStepGraph(net), "inputs": inputs,
            "outputs": outputs, "examples": examples,
            "state": {"names": list(state_names), "layers": encoder.num_layers,
                      "hidden_size": encoder.hidden_size}}


# -- writing -----------------------------------------------------------------------------------
def _write(model, spec: dict, folder: Path, opset: int, quantize: str | None,
           source: str) -> dict:
    started = time.perf_counter()
    float_path = folder / ("model.float32.onnx" if quantize else MODEL_FILE)
    difference = write_graph(spec, float_path, opset)
    manifest = {
        "format": EXPORT_FORMAT, "version": 1, "task": spec["task"], "model": MODEL_FILE,
        "opset": opset, "quantize": quantize, "source": source,
        "inputs": {name: _axes(axes) for name, axes in spec["inputs"].items()},
        "outputs": {name: _axes(axes) for name, axes in spec["outputs"].items()},
        "float32_difference": float(difference),
        "text_settings": _text_settings(model, spec["task"]),
        "cell": _encoder_of(model).cell,
    }
    if "state" in spec:
        manifest["state"] = spec["state"]
    if quantize:
        _quantize(float_path, folder / MODEL_FILE)
        float_path.unlink()
        manifest["int8_difference"] = float(
            _largest_difference(spec["graph"], folder / MODEL_FILE, spec["examples"][1], spec))
    manifest["export_seconds"] = round(time.perf_counter() - started, 2)
    vocabs = {name: vocab.to_dict() for name, vocab in model.vocabs.items()}
    (folder / VOCABS_FILE).write_text(json.dumps(vocabs, ensure_ascii=False), encoding="utf-8")
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                   encoding="utf-8")
    (folder / "README.md").write_text(describe(manifest), encoding="utf-8")
    return manifest


def write_graph(spec: dict, path: Path, opset: int = DEFAULT_OPSET) -> float:
    """The ONNX file of ``spec``'s graph at ``path``, checked on the second example (other
    sizes than the traced one); returns the largest difference from PyTorch."""
    _onnx_export(spec["graph"], spec["examples"][0], list(spec["inputs"]), spec, path, opset)
    difference = _largest_difference(spec["graph"], path, spec["examples"][1], spec)
    if not difference <= TOLERANCE:
        raise ConfigError(f"the exported graph differs from the model by {difference:.2g} "
                          f"(more than {TOLERANCE:g}) on a batch of other sizes than the traced "
                          "one; nothing was written")
    return difference


def _axes(axes: dict) -> list:
    """Dynamic axes as a shape with names: {0: 'batch'} -> ['batch', ...] (rank unknown: the
    README lists the names only)."""
    return [axes[i] if i in axes else "fixed" for i in range(max(axes) + 1)] if axes else []


def _onnx_export(graph, example: dict, names: list, spec: dict, path: Path, opset: int) -> None:
    """The TorchScript-based exporter: it turns the scripted recurrence into an ONNX Loop and
    each torch cell into ONNX's own RNN/GRU/LSTM operator with dynamic axes (the dynamo-based
    exporter of torch 2.13 fixed the sequence length inside its RNN lowering)."""
    args = tuple(example[name] for name in names)
    try:
        with warnings.catch_warnings(), torch.no_grad(), _quiet_stdout():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation, tracer notes
            torch.onnx.export(graph, args, str(path), dynamo=False, opset_version=opset,
                              input_names=names, output_names=list(spec["outputs"]),
                              dynamic_axes={**spec["inputs"], **spec["outputs"]})
    except Exception as error:  # noqa: BLE001 - the exporter raises many types for an opset
        first = next((line for line in str(error).splitlines() if line.strip()), "")
        if "opset" in str(error).lower() or type(error).__name__.endswith("OperatorError"):
            raise ConfigError(f"opset={opset}: ONNX opset {opset} lacks an operator this model "
                              f"needs ({first.strip()[:200]}); use opset={DEFAULT_OPSET}") from None
        raise ConfigError(f"the model could not be exported to ONNX: {type(error).__name__}: "
                          f"{first.strip()[:300]}") from None


@contextlib.contextmanager
def _quiet_stdout():
    """The exporter prints the whole graph to stdout (from C++) when an op fails; the one line
    of the error says what matters."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _largest_difference(graph, path: Path, example: dict, spec: dict) -> float:
    """Largest |onnxruntime - PyTorch| over the outputs' real positions on ``example``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: example[name].numpy() for name in spec["inputs"]})
    with torch.no_grad():
        expected = graph.eval()(*(example[name] for name in spec["inputs"]))
    expected = expected if isinstance(expected, tuple) else (expected,)
    worst = 0.0
    for ours, theirs in zip(got, expected):
        theirs = theirs.numpy()
        if "lengths" in example and ours.ndim == 3:  # tag scores: real tokens only
            real = np.arange(ours.shape[1]) < example["lengths"].numpy()[:, None]
            ours, theirs = ours[real], theirs[real]
        worst = max(worst, float(np.abs(ours - theirs).max()))
    return worst


def _quantize(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Its advice to pre-process the graph (shape inference for convolutional models) goes to
    # the root logger; this graph quantizes the same without it.
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def _encoder_of(model):
    return model.net.encoder


def _text_settings(model, task: str) -> dict:
    """How input text becomes ids: the training data's settings (as seqmodels-predict reads
    them from the checkpoint)."""
    if task == "language_model":
        return {}
    recorded = {**(model.data_config or {}), **(model.text_settings or {})}
    if not model.data_config:
        raise ConfigError("the checkpoint records no data settings (how its training text was "
                          "read and normalised), which the export needs; train it again with "
                          "seqmodels-train")
    settings = {key: recorded.get(key) for key in TEXT_SETTINGS}
    settings["lowercase"] = bool(settings["lowercase"])
    if "chars" not in model.vocabs:
        settings["max_word_length"] = None
    # A classifier's reader lower-cases the words themselves, so its characters too; a
    # tagger lower-cases only on the way to the word vocabulary.
    settings["lowercase_chars"] = settings["lowercase"] and task == "classification"
    return settings


def describe(manifest: dict) -> str:
    """The exported directory's README.md: what goes in, what comes out."""
    task = manifest["task"]
    lines = [f"# seqmodels export: {task} ({manifest['cell']})", "",
             f"`{MODEL_FILE}`: ONNX opset {manifest['opset']}"
             + (", int8 dynamic quantization" if manifest["quantize"] else "")
             + f". Exported from `{manifest['source']}`.", "",
             "Run it without torch: `seqmodels-predict ckpt_path=<this directory> input=...`"
             if task != "language_model" else
             "Run it without torch: `seqmodels-generate ckpt_path=<this directory> prompt=...`",
             "", "## Inputs", ""]
    about = {
        "tokens": "int64 (batch, time): word ids from `vocabs.json` `tokens`, 0 (<pad>) after "
                  "each row's end, 1 (<unk>) for unknown words"
                  if task != "language_model" else
                  "int64 (batch, time): character ids from `vocabs.json` `chars`",
        "lengths": "int64 (batch,): each row's true length, at least 1; padding never changes "
                   "a result",
        "spellings": "int64 (spellings, word): the batch's distinct words as character ids "
                     "(`vocabs.json` `chars`; words clipped to `max_word_length` keeping both "
                     "ends), one row each, 0 after its end",
        "spelling_index": "int64 (batch, time): the row of `spellings` that spells each "
                          "token; the number of rows (one past the last) at padding",
        "h0": "float32 (layers, batch, hidden): the recurrent state (zeros to start)",
        "c0": "float32 (layers, batch, hidden): the LSTM cell state (zeros to start)",
        "probs": "float32 (batch, labels): the probability of each label, in the order of "
                 "`vocabs.json` `labels`",
        "scores": "float32 (batch, time, tags): a score per tag (logits); a token's tag is the "
                  "argmax, in the order of `vocabs.json` `tags`",
        "logits": "float32 (batch, time, chars): the next character's logits after each step",
        "h": "float32 (layers, batch, hidden): the state after the last step (feed it back)",
        "c": "float32 (layers, batch, hidden): the cell state after the last step",
    }
    lines += [f"- `{name}`: {about[name]}" for name in manifest["inputs"]]
    lines += ["", "## Outputs", ""]
    lines += [f"- `{name}`: {about[name]}" for name in manifest["outputs"]]
    if manifest["text_settings"]:
        lines += ["", "## Preparing text", "",
                  "Split on whitespace; " + ", ".join(
                      f"{key}={value}" for key, value in manifest["text_settings"].items())
                  + " (lowercase: lower-case the words before the word vocabulary; "
                  "lowercase_chars: before spelling them out too).", ""]
    return "\n".join(lines) + "\n"
