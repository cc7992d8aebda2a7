"""Turning examples into padded batches, and choosing which examples share a batch.

The batch contract: ``tokens`` (B, T) int64 right-padded with ``PAD_ID``; ``lengths`` (B,)
int64 on the CPU (packing needs them there, so they never move to an accelerator);
``targets``: (B,) class ids for sentence tasks, (B, T) with ``IGNORE_INDEX`` at padding for
token tasks; ``chars`` (``SpelledWords``: the distinct spellings of the batch's words and,
per (B, T) position, the row that spells it) for models with character features.
"""

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Sampler

from seqmodels.callbacks.resume import EpochPosition
from seqmodels.data.chars import SpelledWords, spell_batch
from seqmodels.data.vocab import PAD_ID
from seqmodels.errors import DataError

IGNORE_INDEX = -100


@dataclass
class Batch:
    tokens: Tensor
    lengths: Tensor
    targets: Tensor | None = None
    chars: SpelledWords | None = None
    # Real tokens in the batch, counted where the batch is made: a training step that weighs
    # its loss by them then reads nothing back.
    num_tokens: int | None = None

    def to(self, device, non_blocking: bool = False) -> "Batch":
        def move(t):
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Batch(move(self.tokens), self.lengths, move(self.targets), move(self.chars),
                     self.num_tokens)

    def pin_memory(self) -> "Batch":
        def pin(t):
            return None if t is None else t.pin_memory()

        # lengths stay on the host but pinned too: the encoder's copy of them to the device
        # is then asynchronous as well.
        return Batch(pin(self.tokens), pin(self.lengths), pin(self.targets), pin(self.chars),
                     self.num_tokens)

    def __len__(self) -> int:
        return self.tokens.size(0)


def pad(sequences: Sequence[Sequence[int]], value: int = PAD_ID) -> tuple[Tensor, Tensor]:
    """Right-pad id lists into (B, T) and return it with the lengths (B,)."""
    if any(len(s) == 0 for s in sequences):
        # An RNN has no state to report for an empty sequence; readers skip or refuse them.
        raise DataError("cannot batch an empty sequence (every example needs a token)")
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    longest = max((len(s) for s in sequences), default=0)
    out = torch.full((len(sequences), longest), value, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        out[row, : len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
    return out, lengths


def collate_classification(examples: Sequence[tuple]) -> Batch:
    """Examples ``(token ids, label)``, or ``(token ids, label, spelled words)`` for models
    with character features (``chars``: ``SpelledWords``)."""
    tokens, lengths = pad([example[0] for example in examples])
    labels = torch.tensor([example[1] for example in examples], dtype=torch.long)
    chars = None
    if len(examples[0]) > 2:
        chars = spell_batch([example[2] for example in examples], tokens.size(1))
    return Batch(tokens, lengths, labels, chars)


def pad_steps_to_multiple(batch: Batch, multiple: int) -> Batch:
    """The same batch with its length (T) rounded up to a multiple of ``multiple``: only more
    padding (token ``PAD_ID``, per-token targets ``IGNORE_INDEX``, character rows the padding
    row), which never changes a result, and a few shapes instead of one per length, as a
    captured CUDA graph needs."""
    steps = batch.tokens.size(1)
    extra = -steps % multiple
    if not extra:
        return batch

    def widen(t: Tensor, value: int) -> Tensor:
        return torch.nn.functional.pad(t, (0, extra), value=value)

    targets = batch.targets
    if targets is not None and targets.dim() == 2:  # one target per token
        targets = widen(targets, IGNORE_INDEX)
    chars = batch.chars
    if chars is not None:
        chars = SpelledWords(chars.spellings, chars.lengths, chars.groups,
                             widen(chars.index, chars.spellings.size(0)))
    return Batch(widen(batch.tokens, PAD_ID), batch.lengths, targets, chars, batch.num_tokens)


class PaddedToMultiple:
    """A collate function whose batches ``pad_steps_to_multiple`` widens (picklable, for
    loader workers)."""

    def __init__(self, collate: Callable[[Sequence], Batch], multiple: int):
        self.collate, self.multiple = collate, multiple

    def __call__(self, examples: Sequence) -> Batch:
        return pad_steps_to_multiple(self.collate(examples), self.multiple)


def distributed_rank_and_size() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def batches_done_in_resumed_epoch(trainer, batches_per_pass: int) -> int:
    """How many of this epoch's batches a run resumed from a checkpoint written inside the
    epoch (every ``n`` steps, on SIGTERM, at a mid-epoch validation) had trained on, as the
    run's ``EpochPosition`` callback recorded it; 0 for any other start (or without one)."""
    for callback in trainer.callbacks:
        if isinstance(callback, EpochPosition):
            return callback.batches_to_leave_out(trainer, batches_per_pass)
    return 0


class LengthBatchSampler(Sampler[list[int]]):
    """Batches of indices, optionally grouped by similar length, sharded across DDP ranks.

    With ``bucketing``, indices are shuffled, cut into pools of ``pool_batches`` batches, each
    pool sorted by length and cut into batches, and the batches shuffled: little padding, yet a
    different grouping every epoch. Without it, plain (shuffled or ordered) batches.

    Under DDP, for training (``even_shards=True``) each rank takes every ``world_size``-th
    batch, the batch list topped up by repeating its first batches so that every rank steps the
    same number of times. For evaluation (``even_shards=False``) each rank takes every
    ``world_size``-th example of the (length-sorted) order and batches its share: no example is
    counted twice, and no rank is left without a batch (Lightning would skip its evaluation
    loop, and the metrics' cross-rank sync with it, while the other ranks wait for it).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        bucketing: bool = True,
        drop_last: bool = False,
        even_shards: bool = True,
        seed: int = 0,
        pool_batches: int = 50,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.bucketing = bucketing
        self.drop_last = drop_last
        self.even_shards = even_shards
        self.seed = seed
        self.pool_batches = pool_batches
        self.epoch = 0
        # Called as a pass starts: how many of its first batches a run resumed inside this
        # epoch had trained on (``batches_done_in_resumed_epoch``); they are left out.
        self.batches_done: Callable[[], int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def sampler(self) -> "LengthBatchSampler":
        # Lightning calls set_epoch on ``loader.sampler`` and ``loader.batch_sampler.sampler``,
        # never on the batch sampler itself: without this, every epoch had epoch 0's order.
        return self

    def _all_batches(self, rank: int = 0, world: int = 1) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)
        if self.bucketing:
            pool = self.batch_size * self.pool_batches
            order = [
                i
                for start in range(0, len(order), pool)
                for i in sorted(order[start : start + pool], key=self.lengths.__getitem__)
            ]
        order = order[rank::world]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle and self.bucketing:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: the order (and the batches to leave out) is settled when the first batch
        # is drawn, not when the loader's iterator is made (which may be before Lightning has
        # restored a checkpoint's counters).
        rank, world = distributed_rank_and_size()
        if not self.even_shards:
            if world > len(self.lengths):
                raise DataError(f"{len(self.lengths)} evaluation examples cannot be shared by "
                                f"{world} processes; use fewer devices or more data")
            yield from self._all_batches(rank, world)
            return
        batches = self._all_batches()
        if world > 1 and batches:
            total = math.ceil(len(batches) / world) * world
            batches += batches[: total - len(batches)]
        skip = self.batches_done() if self.batches_done is not None else 0
        yield from batches[rank::world][skip:]

    def __len__(self) -> int:
        rank, world = distributed_rank_and_size()
        examples = len(self.lengths) if self.even_shards else len(range(rank, len(self.lengths),
                                                                        world))
        count = examples // self.batch_size
        if not self.drop_last and examples % self.batch_size:
            count += 1
        return math.ceil(count / world) if self.even_shards else count
