"""An exported model directory (``seqmodels-export``'s), read and run with onnxruntime and
numpy alone: nothing here imports torch or Lightning, so a service or a CPU box needs neither.

A directory is recognised by its manifest, ``export.json``; ``vocabs.json`` holds the
vocabularies and ``model.onnx`` the graph (its inputs and outputs: the directory's README.md).
"""

import json
from pathlib import Path

import numpy as np

from seqmodels.data.vocab import PAD_ID, UNK_ID, Vocab
from seqmodels.errors import ConfigError

EXPORT_FORMAT = "seqmodels-onnx"
MANIFEST = "export.json"
MODEL_FILE = "model.onnx"
VOCABS_FILE = "vocabs.json"
# The text settings a checkpoint records that turn a sentence into ids.
TEXT_SETTINGS = ("encoding", "lowercase", "max_word_length")


def is_export_dir(path) -> bool:
    """Whether ``path`` is a directory that seqmodels-export wrote."""
    try:
        return (Path(path) / MANIFEST).is_file()
    except (OSError, ValueError):
        return False


def clip_word(word: str, max_chars: int) -> str:
    """A long word cut to ``max_chars`` characters keeping its beginning and end: the same cut
    as training's (``seqmodels.data.chars.clip_word``, which imports torch; tested equal)."""
    if len(word) <= max_chars:
        return word
    head = (max_chars + 1) // 2
    return word[:head] + word[len(word) - (max_chars - head):]


def distinct_spellings(sentences: list[list[list[int]]],
                       steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sentence, per word, character ids -> the batch's distinct spellings (U, W), ``PAD_ID``
    after each end, and the (B, ``steps``) row of each position's spelling, U at padding: the
    layout of training's ``SpelledWords``. A batch repeats "the" and "," many times; each
    distinct word goes through the character encoder once."""
    rows: dict[tuple[int, ...], int] = {}
    index = np.empty((len(sentences), steps), dtype=np.int64)
    for b, words in enumerate(sentences):
        index[b, :len(words)] = [rows.setdefault(tuple(word), len(rows)) for word in words]
    index[index_padding(sentences, steps)] = len(rows)
    width = max((len(word) for word in rows), default=1) or 1
    spellings = np.full((max(len(rows), 1), width), PAD_ID, dtype=np.int64)
    for word, row in rows.items():
        spellings[row, :len(word)] = word
    return spellings, index


def index_padding(sentences: list, steps: int) -> np.ndarray:
    """(B, steps) true past each sentence's end."""
    return np.arange(steps) >= np.array([len(words) for words in sentences])[:, None]


class ExportedModel:
    """An exported directory: its manifest, vocabularies and an onnxruntime session.

    :param threads: onnxruntime's intra-op threads (None: its default).
    """

    def __init__(self, folder, threads: int | None = None):
        self.folder = Path(folder)
        try:
            self.manifest = json.loads((self.folder / MANIFEST).read_text(encoding="utf-8"))
            vocabs = json.loads((self.folder / VOCABS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ConfigError(f"{self.folder} is not a readable seqmodels export: "
                              f"{type(error).__name__}: {error}") from None
        if self.manifest.get("format") != EXPORT_FORMAT:
            raise ConfigError(f"{self.folder / MANIFEST} is not a seqmodels export manifest")
        self.task = self.manifest["task"]
        self.vocabs = {name: Vocab.from_dict(data) for name, data in vocabs.items()}
        self.settings = self.manifest.get("text_settings") or {}
        self.session = _session(self.folder / self.manifest["model"], threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    # -- words -------------------------------------------------------------------------------
    def encode(self, words: list[str]) -> tuple[list[int], list[list[int]] | None]:
        """A sentence's word ids and, with character features, each word's character ids, as
        the training datamodule encodes them."""
        lowercase = self.settings.get("lowercase", False)
        normal = [w.lower() for w in words] if lowercase else words
        ids = self.vocabs["tokens"].encode(normal)
        if "chars" not in self.vocabs:
            return ids, None
        spelled = normal if self.settings.get("lowercase_chars") else words
        limit, chars = int(self.settings["max_word_length"]), self.vocabs["chars"]
        return ids, [chars.encode(clip_word(w, limit)) for w in spelled]

    def run_words(self, encoded: list) -> np.ndarray:
        """One batch of ``encode`` results -> the graph's output (probs or tag scores)."""
        steps = max(len(ids) for ids, _ in encoded)
        tokens = np.full((len(encoded), steps), PAD_ID, dtype=np.int64)
        for row, (ids, _) in enumerate(encoded):
            tokens[row, :len(ids)] = ids
        feed = {"tokens": tokens,
                "lengths": np.array([len(ids) for ids, _ in encoded], dtype=np.int64)}
        if "spellings" in self.input_names:
            feed["spellings"], feed["spelling_index"] = distinct_spellings(
                [spelled for _, spelled in encoded], steps)
        return self.session.run(None, feed)[0]

    # -- characters (the language model's step function) --------------------------------------
    def initial_state(self, batch: int = 1) -> dict[str, np.ndarray]:
        state = self.manifest["state"]
        shape = (state["layers"], batch, state["hidden_size"])
        return {f"{name}0": np.zeros(shape, dtype=np.float32) for name in state["names"]}

    def step(self, ids: list[int], state: dict) -> tuple[np.ndarray, dict]:
        """Character ids (one row) and the state -> (V,) logits after the last and the new
        state."""
        outputs = self.session.run(None, {"tokens": np.array([ids], dtype=np.int64), **state})
        names = self.manifest["state"]["names"]
        return outputs[0][0, -1], {f"{name}0": out for name, out in zip(names, outputs[1:])}

    def never_written(self) -> np.ndarray:
        """(V,) 0, or -inf at <pad> and <unk>: not characters, never written."""
        mask = np.zeros(len(self.vocabs["chars"]), dtype=np.float32)
        if self.vocabs["chars"].has_specials:
            mask[[PAD_ID, UNK_ID]] = -np.inf
        return mask


def _session(path: Path, threads: int | None):
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("running an exported model needs onnxruntime: "
                          "pip install 'seqmodels[export]'") from None
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime's own exception types
        raise ConfigError(f"{path} cannot be loaded by onnxruntime: {error}") from None
