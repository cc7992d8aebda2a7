"""Callbacks that make a resumed run continue exactly.

Each training epoch's first batch starts from a seed made of (seed, epoch, rank), so a run
resumed at an epoch boundary draws the same dropout masks as one that never stopped. A run
resumed inside an epoch gets the random state its checkpoint recorded (one process), and its
loader leaves out the batches already done (``EpochPosition``).
"""

import hashlib
import random

import lightning as L
import numpy as np
import torch


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed for one epoch on one rank, the same on every machine and Python."""
    digest = hashlib.sha256(f"{seed}/{epoch}/{rank}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def random_states() -> dict:
    """torch's, Python's and NumPy's random states, in types a checkpoint loads safely."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": (name, keys.tolist(), position, has_gauss, gauss)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    name, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class SeedEachEpoch(L.Callback):
    """Reseed torch, Python and NumPy before the first training batch of every epoch.

    Lightning does not save random states in checkpoints, and the steps between a restart and
    the next batch (sanity check, dataloader set-up) draw from them differently than an
    uninterrupted run does. Seeding each epoch from (seed, epoch, rank) right before its first
    batch makes the stream of epoch k the same however the run got there. Ranks get different
    streams: dropout masks should not repeat across the shards of one batch.

    A checkpoint written inside an epoch records the random state of that moment (between two
    batches), and a one-process run resumed from it goes on from that state, so it draws what
    the uninterrupted run drew. Under DDP only rank 0's state would be in the checkpoint: there
    the resumed epoch is reseeded from (seed, epoch, rank), a different but reproducible stream.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self._seeded_epoch: int | None = None
        self._resumed: dict | None = None  # the state a checkpoint recorded, until used

    def state_dict(self) -> dict:
        return {"epoch": self._seeded_epoch, "random_states": random_states()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resumed = state_dict

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch,
                             batch_idx: int) -> None:
        if self._seeded_epoch == trainer.current_epoch:
            return
        self._seeded_epoch = trainer.current_epoch
        resumed, self._resumed = self._resumed, None
        if (batch_idx > 0 and trainer.world_size == 1 and resumed
                and resumed.get("epoch") == trainer.current_epoch):
            set_random_states(resumed["random_states"])  # resumed inside this epoch
            return
        L.seed_everything(epoch_seed(self.seed, trainer.current_epoch, trainer.global_rank),
                          workers=True, verbose=False)


class EpochPosition(L.Callback):
    """How many batches of the running epoch have been trained on, saved in every checkpoint.

    Lightning restores its own counters from a checkpoint written inside an epoch and counts on
    from there, but a loader without state would start the epoch's order over and feed the
    batches done again; ours ask ``batches_to_leave_out`` and leave them out."""

    def __init__(self):
        self.epoch, self.done = -1, 0
        self._resumed: tuple[int, int] | None = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "done": self.done}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resumed = (state_dict["epoch"], state_dict["done"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.epoch, self.done = trainer.current_epoch, batch_idx + 1

    def batches_to_leave_out(self, trainer: L.Trainer, batches_per_pass: int) -> int:
        """For the first training pass after a resume inside an epoch: the batches it had
        trained on; 0 for any other pass."""
        resumed, self._resumed = self._resumed, None
        if resumed is None:
            return 0
        epoch, done = resumed
        return done if epoch == trainer.current_epoch and 0 < done < batches_per_pass else 0
