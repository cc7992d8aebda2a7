"""Plain text for character language models: Tiny Shakespeare or a user's own text files (UTF-8
or any encoding Python knows, ``data.encoding``).

The text is one stream of characters, split contiguously by fraction (by default the first
90% trains and the last 10% validates, as nanoGPT does). Batches serve truncated
backpropagation through time (TBPTT): each split's stream is cut into ``batch_size``
contiguous tracks per rank, and batch k+1's row i continues exactly where batch k's row i
stopped, so that a model can carry its hidden state from one batch to the next.
"""

import logging
import math
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from seqmodels.data.base import DataModuleBase
from seqmodels.data.batching import Batch, batches_done_in_resumed_epoch, distributed_rank_and_size
from seqmodels.data.download import ensure_dataset
from seqmodels.data.files import (
    DEFAULT_ENCODING,
    check_encoding,
    check_encoding_errors,
    decoding_error,
)
from seqmodels.data.vocab import UNK_ID, Vocab
from seqmodels.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def text_files(path: Path) -> list[Path]:
    """The file itself, or every non-hidden file under a folder, in path order."""
    if not path.exists():
        raise DataError("text file or folder not found", path)
    if path.is_file():
        return [path]
    files = sorted(
        p for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise DataError("folder has no text files", path)
    return files


def decode_file(raw: bytes, path: Path, errors: str = "strict",
                encoding: str = DEFAULT_ENCODING) -> str:
    """Decode a whole file at once (fast), naming the line and byte offset of bad bytes."""
    try:
        return raw.decode(encoding, errors=errors)
    except UnicodeDecodeError as error:
        # The line: newlines in what decoded before the error (right for utf-16 too).
        line = raw[: error.start].decode(encoding, errors="replace").count("\n") + 1
        raise decoding_error(error, error.start, encoding, path, line) from None


def read_text(path: str | Path, errors: str = "strict", encoding: str = DEFAULT_ENCODING) -> str:
    """A file's text, or a folder's files joined in path order, each ending with a newline.
    Windows line endings become ``\\n``, so that a model does not learn ``\\r``."""
    check_encoding_errors(errors)
    check_encoding(encoding)
    parts = []
    for file in text_files(Path(path)):
        text = decode_file(file.read_bytes(), file, errors, encoding).replace("\r\n", "\n")
        if parts and parts[-1] and not parts[-1].endswith("\n"):
            parts.append("\n")
        parts.append(text)
    text = "".join(parts)
    if not text:
        raise DataError("no text to read (empty file)", path)
    return text


def encode_chars(text: str, vocab: Vocab) -> Tensor:
    """(N,) int64 ids of the characters of ``text``; characters not in ``vocab`` become
    ``<unk>``. One table lookup over code points instead of a Python loop."""
    code_points = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32).long()
    known = {ord(ch): i for i, ch in enumerate(vocab.itos) if len(ch) == 1}
    size = max(int(code_points.max()) if len(code_points) else 0, max(known, default=0)) + 1
    table = torch.full((size,), UNK_ID, dtype=torch.long)
    table[torch.tensor(list(known), dtype=torch.long)] = torch.tensor(list(known.values()))
    return table[code_points]


def split_by_fraction(text: str, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Contiguous parts: train first, then val, then test (the last ``test_fraction``)."""
    n = len(text)
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    n_train = n - n_val - n_test
    parts = {"train": text[:n_train], "val": text[n_train : n_train + n_val],
             "test": text[n_train + n_val :]}
    for split, part in parts.items():
        if (split != "test" or test_fraction > 0) and len(part) < 2:
            raise DataError(
                f"the {split} part of {n} characters has {len(part)}; a language model needs at "
                "least 2 (an input and its target); change data.val_fraction/test_fraction or "
                "give more text"
            )
    return parts


class TrackBatches:
    """Consecutive TBPTT windows over one rank's tracks of a character stream.

    The stream ``ids`` (N,) is cut into ``world_size * batch_size`` tracks of ``length``
    inputs each (the fewer than ``world_size * batch_size`` characters left over at the end are
    not used); rank r owns tracks ``r * batch_size`` to ``(r + 1) * batch_size - 1``. Batch k
    holds inputs ``[k * bptt, k * bptt + T)`` of every owned track and the targets one
    character later; the last window is shorter when ``bptt`` does not divide ``length``.
    Every rank therefore steps the same number of batches, and every used character but the
    first is a target exactly once per pass.
    """

    def __init__(self, ids: Tensor, batch_size: int, bptt: int, rank: int = 0,
                 world_size: int = 1, pin_memory: bool = False):
        tracks_total = batch_size * world_size
        self.length = (len(ids) - 1) // tracks_total
        if self.length < 1:
            raise DataError(
                f"{len(ids)} characters are too few for {tracks_total} tracks (data.batch_size="
                f"{batch_size} x {world_size} ranks); lower data.batch_size or give more text"
            )
        # Track t reads ids[t * length : (t + 1) * length + 1]: inputs plus one more target.
        every = ids[: tracks_total * self.length + 1].as_strided(
            (tracks_total, self.length + 1), (self.length, 1)
        )
        self.tracks = every[rank * batch_size : (rank + 1) * batch_size].contiguous()  # (B, L+1)
        if pin_memory:
            self.tracks = self.tracks.pin_memory()
        self.batch_size = batch_size
        self.bptt = bptt
        # As LengthBatchSampler's: the windows a run resumed inside this epoch had done.
        self.batches_done: Callable[[], int] | None = None

    def __len__(self) -> int:
        return math.ceil(self.length / self.bptt)

    def __iter__(self) -> Iterator[Batch]:
        skip = self.batches_done() if self.batches_done is not None else 0
        for start in range(skip * self.bptt, self.length, self.bptt):
            steps = min(self.bptt, self.length - start)
            tokens = self.tracks[:, start : start + steps]  # (B, T)
            targets = self.tracks[:, start + 1 : start + steps + 1]  # (B, T)
            lengths = torch.full((self.batch_size,), steps, dtype=torch.long)
            yield Batch(tokens, lengths, targets)


class CharTextDataModule(DataModuleBase):
    """Characters of one text, for a language model.

    :param path: a text file (in ``encoding``), or a folder whose files are joined in path
        order.
    :param dataset: a dataset known by name (``tinyshakespeare``) to fetch into ``data_dir``
        when it is missing; None for a user's own text.
    :param val_fraction, test_fraction: the shares of the text, taken from its end, that
        validate and test (test last; ``test_fraction=0``: no test split).
    :param bptt: characters per window (the truncation length of backpropagation).
    The other parameters are ``DataModuleBase``'s (batch sizes count tracks here).
    """

    task = "language_model"

    def __init__(
        self,
        path: str,
        dataset: str | None = None,
        data_dir: str | None = None,
        download: bool = True,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        bptt: int = 128,
        encoding_errors: str = "strict",
        pin_memory: bool | str = "auto",
        encoding: str = DEFAULT_ENCODING,
    ):
        super().__init__(dataset, data_dir, download, batch_size, eval_batch_size,
                         encoding_errors, pin_memory, encoding)
        if path is None:
            raise DataError("no text configured: set data.path to a text file or folder")
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if not 0.0 <= test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
            raise DataError(
                f"data.test_fraction={test_fraction} must be in [0, 1) and leave training text "
                f"beside data.val_fraction={val_fraction}"
            )
        if bptt < 1:
            raise DataError(f"data.bptt must be positive, got {bptt}")
        self.path = path
        self.paths = {"train": path, "val": path, "test": path if test_fraction > 0 else None}
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.bptt = bptt
        self.splits: dict[str, Tensor] = {}  # split -> (N,) character ids

    def prepare_data(self) -> None:
        if self.dataset is not None:
            ensure_dataset(self.dataset, self.data_dir, download=self.download)

    def no_test_split_hint(self) -> str:
        return "hold out the end of the text with data.test_fraction=0.1"

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None):
            self.say_when_there_is_no_test(self.test_fraction > 0)
        if self.splits:
            return
        parts = split_by_fraction(read_text(self.path, self.encoding_errors, self.encoding),
                                  self.val_fraction, self.test_fraction)
        if self.vocabs is None:
            # Characters of the training part only: validation may hold a few unseen ones,
            # which become <unk> as they would for any new text.
            self.vocabs = {"chars": Vocab.build([parts["train"]])}
        vocab = self.vocabs["chars"]
        self.splits = {split: encode_chars(text, vocab) for split, text in parts.items() if text}
        log.info("text: %s characters (%s), vocabulary of %d characters",
                 f"{sum(len(t) for t in parts.values()):,}",
                 ", ".join(f"{s} {len(t):,}" for s, t in parts.items() if t), len(vocab))

    def model_sizes(self) -> dict[str, int]:
        return {"vocab_size": len(self.vocabs["chars"])}

    def rank_and_world_size(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return distributed_rank_and_size()

    def batches(self, split: str, rank: int | None = None,
                world_size: int | None = None) -> TrackBatches:
        """The TBPTT batches of a split for one rank (by default this process's rank)."""
        if split not in self.splits:
            raise DataError(f"the {split} split is not set up (is data.{split}_fraction 0?)")
        if rank is None or world_size is None:
            rank, world_size = self.rank_and_world_size()
        batch_size = self.batch_size if split == "train" else self.eval_batch_size
        return TrackBatches(self.splits[split], batch_size, self.bptt, rank, world_size,
                            self.pins_memory())

    # Plain iterables rather than DataLoaders: the order is the point, so Lightning must not
    # wrap them in a (shuffling) distributed sampler, and slicing needs no worker processes.
    def train_dataloader(self) -> TrackBatches:
        batches = self.batches("train")
        if self.trainer is not None:
            batches.batches_done = partial(batches_done_in_resumed_epoch, self.trainer,
                                           len(batches))
        return batches

    def val_dataloader(self) -> TrackBatches:
        return self.batches("val")

    def test_dataloader(self) -> TrackBatches:
        return self.batches("test")

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        if isinstance(batch, Batch):
            return batch.to(device, non_blocking=device.type == "cuda")
        return super().transfer_batch_to_device(batch, device, dataloader_idx)
