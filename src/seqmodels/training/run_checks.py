"""What ``seqmodels-train`` settles before and after a run: the model fits the data's task, and
a run that failed before it saved anything leaves no directory behind."""

import logging
import shutil
from pathlib import Path

from hydra.utils import get_class
from omegaconf import DictConfig

from seqmodels.errors import ConfigError

log = logging.getLogger(__name__)

# The model config that trains each task's data, and the experiment that shows it in full.
MODEL_FOR_TASK = {
    "classification": ("sentiment", "sst2_bilstm"),
    "tagging": ("tagger", "ewt_upos"),
    "language_model": ("charlm", "shakespeare_char"),
}
# What a run directory holds before its first checkpoint: nothing worth keeping.
SET_UP_FILES = {".hydra", "train.log", "config_resolved.yaml", "vocab.json", "environment.json",
                "tensorboard", "csv", "checkpoints"}


def check_model_fits_data(cfg: DictConfig, choices: dict | None = None) -> None:
    """``data=ud_ewt`` with the default sentence classifier is refused in one line naming the
    ``model=`` that trains it, before any file is read."""
    data_task = get_class(cfg.data._target_).task
    model_task = get_class(cfg.model._target_).task
    if data_task == model_task:
        return
    choices = choices or {}
    model, experiment = MODEL_FOR_TASK.get(data_task, ("?", "?"))
    raise ConfigError(
        f"data={choices.get('data', cfg.data._target_)} is {data_task} data, but "
        f"model={choices.get('model', cfg.model._target_)} is a {model_task} model: add "
        f"model={model} (or start from experiment={experiment})"
    )


def has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("*.ckpt"))


def discard_unstarted_run(run_dir: str | Path) -> bool:
    """Remove a run directory that holds only what a run writes before its first checkpoint
    (config, log, vocabularies, empty logger folders). Anything else (a checkpoint, a file of
    the user's) keeps it. Returns whether it was removed."""
    path = Path(run_dir)
    if not path.is_dir() or has_checkpoint(path):
        return False
    if any(entry.name not in SET_UP_FILES for entry in path.iterdir()):
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True
