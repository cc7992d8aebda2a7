"""What every sequence datamodule shares: vocabularies built from train only, length-aware
batching, and data-directory handling. A task's datamodule says how to read a file, how to
build its vocabularies and how to encode and collate examples."""

import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset

from seqmodels.data.batching import (
    Batch,
    LengthBatchSampler,
    PaddedToMultiple,
    batches_done_in_resumed_epoch,
)
from seqmodels.data.download import ensure_dataset
from seqmodels.data.files import DEFAULT_ENCODING, check_encoding, check_encoding_errors
from seqmodels.data.vocab import Vocab
from seqmodels.errors import DataError

log = logging.getLogger(__name__)


class ListDataset(Dataset):
    def __init__(self, items: Sequence):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


class DataModuleBase(L.LightningDataModule):
    """What every seqmodels datamodule has: a named dataset to fetch when its files are
    missing (or a user's own files), batch sizes, file decoding, the vocabularies, and how
    text becomes ids.

    :param dataset: a dataset known by name (``sst2``, ``ud_ewt``, ``tinyshakespeare``) to
        fetch into ``data_dir`` when its files are missing; None for a user's own files.
    :param batch_size: examples (tracks, for text) per training batch, per device under DDP.
    :param eval_batch_size: per validation/test batch; defaults to ``batch_size``.
    :param encoding_errors: ``strict`` (bytes that are not valid ``encoding`` are an error
        naming file, line and byte), ``replace`` or ``ignore``.
    :param encoding: the files' text encoding: any Python codec (``utf-8``, ``latin-1``,
        ``cp1252``, ``utf-16``...); saved with the model's text settings, so that prediction
        reads new text in the same encoding by default.
    """

    task: str  # matches the task of the models that read this data

    def __init__(self, dataset: str | None, data_dir: str | None, download: bool,
                 batch_size: int, eval_batch_size: int | None, encoding_errors: str,
                 pin_memory: bool | str, encoding: str = DEFAULT_ENCODING):
        super().__init__()
        # Checked here, before any training: a misspelt codec is one line, not a traceback.
        self.encoding = check_encoding(encoding)
        self.encoding_errors = check_encoding_errors(encoding_errors)
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value is not None and value < 1:
                raise DataError(f"data.{name} must be positive, got {value}")
        self.dataset = dataset
        self.data_dir = data_dir
        self.download = download
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        if pin_memory not in (True, False, "auto"):
            raise DataError(f"data.pin_memory must be true, false or auto, got {pin_memory!r}")
        self.pin_memory = pin_memory
        self.vocabs: dict[str, Vocab] | None = None
        self.extra_words: tuple[list[str], int | None] | None = None  # see extend_words
        # What train.py and eval.py look at: which splits exist (split -> file, or None).
        self.paths: dict[str, str | None] = {}

    def pins_memory(self) -> bool:
        """``data.pin_memory``: ``auto`` pins batches when the run trains on CUDA, so that
        their copies to the device overlap the step instead of waiting for it."""
        if self.pin_memory != "auto":
            return self.pin_memory
        return self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"

    def set_vocabs(self, vocabs: dict[str, Vocab]) -> None:
        """Use a trained model's vocabularies instead of building them from train."""
        self.vocabs = vocabs

    def extend_words(self, words: list[str], limit: int | None) -> None:
        """Add up to ``limit`` of ``words`` (a vectors file's, most frequent first) to the
        word vocabulary built from train, so that words unseen in training but known to the
        pretrained vectors keep an id of their own. Call before ``setup``."""
        self.extra_words = (words, limit)

    def _extend_word_vocab(self) -> None:
        if self.extra_words is None or "tokens" not in self.vocabs:
            return
        trained = self.vocabs["tokens"]
        self.vocabs["tokens"] = trained.extended(*self.extra_words)
        log.info("vocabulary: %d words from train, and %d more from the vectors file",
                 len(trained), len(self.vocabs["tokens"]) - len(trained))

    def model_sizes(self) -> dict[str, int]:
        """Keyword arguments that size the model, read from the vocabularies."""
        raise NotImplementedError

    def word_sizes(self) -> dict[str, int]:
        """The word vocabulary's sizes: all of it, and the words of the training split."""
        words = self.vocabs["tokens"]
        return {"vocab_size": len(words), "trained_vocab_size": words.trained_size}

    def text_settings(self) -> dict:
        """How raw text becomes ids besides the vocabularies (the encoding of the files, and
        in subclasses lower-casing, word clipping): saved in checkpoints so that prediction
        reads and prepares new text exactly as training did."""
        return {"encoding": self.encoding}

    def no_test_split_hint(self) -> str:
        """How to get a test split, for the log line that says there is none."""
        return "give data.test_path"

    def say_when_there_is_no_test(self, has_test: bool) -> None:
        """Training tests the best checkpoint only when a test split exists: say so when
        there is none, once, rather than skip the test without a word."""
        if has_test or getattr(self, "_said_no_test", False):
            return
        self._said_no_test = True
        log.warning("no test split: training will end without a test (its metrics have no "
                    "test/ entries); %s", self.no_test_split_hint())


CUDA_LOADER_WORKERS = 2


class SequenceDataModule(DataModuleBase):
    """Examples read from one file per split, batched by length.

    :param train_path, val_path, test_path: the split files.
    :param bucketing: group examples of similar length into batches (less padding).
    :param pad_to_multiple: pad every batch's length up to a multiple of this (null: to its
        longest sequence): a few shapes instead of one per length, for captured steps on a
        GPU; results do not change (padding never does).
    :param drop_last: leave out each training epoch's last batch when it is smaller than
        ``batch_size``, so that every training batch has the same number of rows.
    :param max_length: longest sequence kept; longer ones are truncated (``on_long=truncate``,
        counted in the log) or refused (``on_long=error``).
    The other parameters are ``DataModuleBase``'s and the DataLoader's.
    """

    collate_fn: Callable

    def __init__(
        self,
        train_path: str | None,
        val_path: str | None = None,
        test_path: str | None = None,
        dataset: str | None = None,
        data_dir: str | None = None,
        download: bool = True,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        bucketing: bool = True,
        pad_to_multiple: int | None = None,
        drop_last: bool = False,
        max_length: int | None = None,
        on_long: str = "truncate",
        encoding_errors: str = "strict",
        num_workers: int | str = "auto",
        pin_memory: bool | str = "auto",
        seed: int = 0,
        encoding: str = DEFAULT_ENCODING,
    ):
        super().__init__(dataset, data_dir, download, batch_size, eval_batch_size,
                         encoding_errors, pin_memory, encoding)
        if on_long not in ("truncate", "error"):
            raise DataError(f"data.on_long={on_long!r} is not one of ['truncate', 'error']")
        self.paths = {"train": train_path, "val": val_path, "test": test_path}
        if pad_to_multiple is not None and (isinstance(pad_to_multiple, bool)
                                            or not isinstance(pad_to_multiple, int)
                                            or pad_to_multiple < 1):
            raise DataError(f"data.pad_to_multiple must be a positive integer or null, got "
                            f"{pad_to_multiple!r}")
        self.bucketing = bucketing
        self.pad_to_multiple = pad_to_multiple
        self.drop_last = drop_last
        self.max_length = max_length
        self.on_long = on_long
        if num_workers != "auto" and (isinstance(num_workers, bool)
                                      or not isinstance(num_workers, int) or num_workers < 0):
            raise DataError(f"data.num_workers must be auto or an integer >= 0, got "
                            f"{num_workers!r}")
        self.num_workers = num_workers
        self.seed = seed
        self.splits: dict[str, ListDataset] = {}

    def workers(self) -> int:
        """``data.num_workers``: ``auto`` is 2 loader processes when the run trains on CUDA,
        so that batches (the tagger's character spellings above all: docs/benchmarks_gpu.md)
        are made while the GPU runs the step before; none on a CPU, whose cores the step
        itself uses."""
        if self.num_workers != "auto":
            return self.num_workers
        on_cuda = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return CUDA_LOADER_WORKERS if on_cuda else 0

    # -- what a task defines -------------------------------------------------------------
    def read(self, path: Path) -> list:
        raise NotImplementedError

    def build_vocabs(self, train: list) -> dict[str, Vocab]:
        raise NotImplementedError

    def encode(self, examples: list, path: Path) -> list:
        raise NotImplementedError

    @staticmethod
    def length_of(item) -> int:
        return len(item[0])

    # -- shared machinery ----------------------------------------------------------------
    def prepare_data(self) -> None:
        """Fetch a named dataset when one of the configured files is missing."""
        configured = [Path(p) for p in self.paths.values() if p is not None]
        if self.dataset is not None and not all(p.is_file() for p in configured):
            ensure_dataset(self.dataset, self.data_dir, download=self.download)

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None):
            self.say_when_there_is_no_test(self.split_path("test") is not None)
        if self.vocabs is None:
            self.vocabs = self.build_vocabs(self.read_split("train"))
            self._extend_word_vocab()
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(
            stage, ("train", "val", "test")
        )
        if "val" in wanted and self.split_path("val") is None:
            # No validation would mean no checkpoint choice and no early stopping, silently.
            raise DataError("no validation file configured (data.val_path)")
        for split in wanted:
            if split not in self.splits and self.split_path(split) is not None:
                path = self.split_path(split)
                self.splits[split] = ListDataset(self.encode(self.read_split(split), path))

    def split_path(self, split: str) -> Path | None:
        path = self.paths[split]
        return None if path is None else Path(path)

    def read_split(self, split: str) -> list:
        path = self.split_path(split)
        if path is None:
            raise DataError(f"no {split} file configured (data.{split}_path)")
        examples = self.read(path)
        if not examples:
            raise DataError(f"no examples in the {split} split", path)
        return examples

    def truncate(self, sequences: list, path: Path) -> list:
        """Apply ``max_length`` to a list of (tokens, ...) examples."""
        if self.max_length is None:
            return sequences
        long = [i for i, ex in enumerate(sequences) if len(ex[0]) > self.max_length]
        if long and self.on_long == "error":
            raise DataError(
                f"{len(long)} sequences are longer than data.max_length={self.max_length} "
                f"(example {long[0] + 1} has {len(sequences[long[0]][0])}); raise max_length or "
                "set data.on_long=truncate",
                path,
            )
        if long:
            log.warning("%s: truncated %d sequences to %d tokens", path, len(long), self.max_length)
        return [tuple(part[: self.max_length] if isinstance(part, list) else part for part in ex)
                for ex in sequences]

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.splits:
            raise DataError(f"the {split} split is not set up (data.{split}_path is missing)")
        data = self.splits[split]
        sampler = LengthBatchSampler(
            [self.length_of(item) for item in data.items],
            self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            bucketing=self.bucketing,
            drop_last=train and self.drop_last,
            even_shards=train,
            seed=self.seed,
        )
        collate = self.collate_fn
        if self.pad_to_multiple:
            collate = PaddedToMultiple(collate, self.pad_to_multiple)
        return DataLoader(
            data,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.workers(),
            pin_memory=self.pins_memory(),
            persistent_workers=self.workers() > 0,
        )

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        # Batch.to leaves lengths on the CPU, where packing wants them (no device sync).
        if isinstance(batch, Batch):
            return batch.to(device, non_blocking=device.type == "cuda")
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", train=True)
        if self.trainer is not None:
            # A resumed run draws its first batch before Lightning sets the sampler's epoch:
            # set it here, or epoch k after a restart would repeat epoch 0's order.
            loader.batch_sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)
            loader.batch_sampler.batches_done = partial(batches_done_in_resumed_epoch,
                                                        self.trainer, len(loader))
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
