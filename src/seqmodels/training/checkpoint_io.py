"""How checkpoints reach the disk: whole or not at all, and no bigger than their use needs.

Each file is written under a temporary name in its own directory, flushed and fsynced, then
moved over the old one with ``os.replace`` (atomic on POSIX and Windows): a run killed at any
moment (``kill -9``, a lost node) leaves every ``.ckpt`` complete and loadable, or absent, and
``ckpt_path=last`` resumes from the newest complete one. A killed write leaves only its
temporary file (``.<name>.tmp``), which no checkpoint lookup reads and the next write of that
checkpoint replaces.

Only ``last*.ckpt`` files (``last.ckpt``, ``last_step.ckpt``: what resuming reads) keep the full
training state: optimizer moments, loops, callbacks, the raw weights beside averaged ones. Every
other checkpoint (the best one, for evaluation) keeps the weights it is evaluated with (the
averaged ones under weight averaging), the hyperparameters and the vocabularies alone: what
``seqmodels-eval``, ``-predict``, ``-summary`` and ``-generate`` read. Lightning's own
``save_weights_only`` cannot be used for that: it skips the callbacks' checkpoint hooks, so a
weight-averaged run would store its raw weights.

Reading goes through ``seqmodels.training.trusted`` (tensors and plain containers only, and
allowlisted names): a resumed run reads its checkpoint once, in ``seqmodels-train``'s early
check, and hands that dict to the trainer here (``preloaded``) rather than reading it again.
"""

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from seqmodels.training.trusted import read_checkpoint

# What an evaluation checkpoint keeps: enough for our tools to rebuild the task module.
WEIGHTS_ONLY_KEYS = ("state_dict", "hyper_parameters", "hparams_name", "seqmodels", "epoch",
                     "global_step", "pytorch-lightning_version")
FULL_STATE_PREFIX = "last"  # Lightning's ckpt_path=last looks for last*.ckpt


def is_weights_only(checkpoint: dict) -> bool:
    """Whether a checkpoint holds the weights alone (no optimizer state to resume from)."""
    return "optimizer_states" not in checkpoint and "loops" not in checkpoint


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path``, which holds the old file or the whole new one at any moment."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    try:
        with open(temporary, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    # The rename itself survives a crash of the machine once the directory is on disk.
    if hasattr(os, "O_DIRECTORY"):
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic, fsynced writes; files not named
    ``<full_state_prefix>*`` keep the weights alone (``WEIGHTS_ONLY_KEYS``). Reads run no code
    from the file unless ``trust`` (``trust_checkpoint=true``); a checkpoint already read is
    passed in ``preloaded`` (path: dict) and served from there, once."""

    def __init__(self, full_state_prefix: str = FULL_STATE_PREFIX, trust: bool = False,
                 preloaded: dict[str, dict] | None = None):
        super().__init__()
        self.full_state_prefix = full_state_prefix
        self.trust = trust
        self.preloaded = {os.path.realpath(path): checkpoint
                          for path, checkpoint in (preloaded or {}).items()}

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        if not Path(path).name.startswith(self.full_state_prefix):
            checkpoint = {k: checkpoint[k] for k in WEIGHTS_ONLY_KEYS if k in checkpoint}
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        """The checkpoint at ``path`` on the CPU (Lightning moves each state to its device as it
        restores it), never unpickling code; ``weights_only`` is always so here."""
        checkpoint = self.preloaded.pop(os.path.realpath(path), None)
        return checkpoint if checkpoint is not None else read_checkpoint(path, self.trust)
