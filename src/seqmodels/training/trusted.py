"""Checkpoints from anyone, read without running their code.

A ``.ckpt`` file is a pickle, and unpickling calls whatever functions the file names: a
checkpoint shared by a colleague, taken from a paper's page or copied off a cluster could run
code the moment it is read. So every checkpoint a user names is read here, once, with
``torch.load(weights_only=True)``, which rebuilds tensors and plain containers only: all that
seqmodels-train writes (hyperparameters and the data config as plain containers, vocabularies
as lists of strings), so no type needs allowing with ``torch.serialization.add_safe_globals``.

A checkpoint also *names* code: the task module to build (``seqmodels.model_class``), the
``_target_`` of the data config that seqmodels-eval instantiates, and any ``_target_`` among
its hyperparameters (an optimizer or scheduler partial). Every such name is checked against
an allowlist before anything is imported or built: this project's task modules and
datamodules, ``torch.optim.<Optimizer>`` and ``torch.optim.lr_scheduler.<Scheduler>``.

A file that fails either check is refused in one line naming it and why.
``trust_checkpoint=true`` (eval, predict, generate, summary, and train when resuming) is the
opt-in for a file the user trusts all the same: it is read with pickle's full powers, after a
warning; never by default."""

import importlib
import inspect
import logging
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch

from seqmodels.errors import ConfigError

log = logging.getLogger(__name__)

# By name, not by import: a name is checked before any module it names is loaded.
TASK_MODULES = frozenset({
    "seqmodels.models.sentiment.SentimentClassifier",
    "seqmodels.models.tagger.SequenceTagger",
    "seqmodels.models.charlm.CharLanguageModel",
})
DATAMODULES = frozenset({
    "seqmodels.data.classification.TextClassificationDataModule",
    "seqmodels.data.tagging.TaggingDataModule",
    "seqmodels.data.text.CharTextDataModule",
})

TRUST_HINT = ("if you trust the file and whoever wrote it, trust_checkpoint=true loads it "
              "anyway (and runs any code it holds)")


class UntrustedCheckpoint(ConfigError):
    """A checkpoint that would run or build code that is not on the allowlist."""

    def __init__(self, path, why: str):
        super().__init__(f"refused {path}: {why}; {TRUST_HINT}")


# -- what a name may be ------------------------------------------------------------------------
def is_optimizer(name: str) -> bool:
    """``torch.optim.<Name>`` naming an optimizer class (torch.optim is imported already)."""
    return _is_class_in(torch.optim, "torch.optim.", name, torch.optim.Optimizer)


def is_scheduler(name: str) -> bool:
    """``torch.optim.lr_scheduler.<Name>`` naming a learning-rate scheduler class."""
    schedulers = torch.optim.lr_scheduler
    return _is_class_in(schedulers, "torch.optim.lr_scheduler.", name,
                        (schedulers.LRScheduler, schedulers.ReduceLROnPlateau))


def _is_class_in(module, prefix: str, name: str, base) -> bool:
    attribute = name[len(prefix):] if name.startswith(prefix) else ""
    if not attribute.isidentifier() or attribute.startswith("_"):
        return False
    value = getattr(module, attribute, None)
    return isinstance(value, type) and issubclass(value, base)


ROLES = {  # what a _target_ may name, by the key its config sits under
    "data": ("one of seqmodels' datamodules", DATAMODULES.__contains__),
    "optimizer": ("an optimizer of torch.optim", is_optimizer),
    "scheduler": ("a scheduler of torch.optim.lr_scheduler", is_scheduler),
}
ANY_ROLE = ("one of seqmodels' task modules or datamodules, or torch's optimizers or schedulers",
            lambda name: (name in TASK_MODULES or name in DATAMODULES or is_optimizer(name)
                          or is_scheduler(name)))


# -- reading -----------------------------------------------------------------------------------
def read_checkpoint(path: str | Path, trust: bool = False) -> dict:
    """The checkpoint at ``path``, read once, after the checks above (none when ``trust``)."""
    if not isinstance(trust, bool):
        raise ConfigError(f"trust_checkpoint={trust!r}: give true or false")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={str(path)!r}: no such checkpoint file")
    if trust:
        log.warning("trust_checkpoint=true: reading %s with pickle's full powers; any code it "
                    "holds runs now, with your permissions", path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    else:
        checkpoint = _load_weights_only(path)
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"{path} is not a checkpoint: it holds a {type(checkpoint).__name__}, "
                          "not a dict of weights and settings")
    if not trust:
        check_names(checkpoint, path)
    return checkpoint


def _load_weights_only(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found is not None:
            raise UntrustedCheckpoint(path, f"it holds a pickled {found.group(1)}, code that "
                                      "reading it would run (a checkpoint holds tensors and plain "
                                      "values only)") from None
        # What the safe reader stopped at: the first words after its "error:".
        found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(error))
        reason = found.group(1).strip() if found else _last_line(error)
        if found is None or reason.startswith("Unsupported operand"):  # no pickle at all
            raise ConfigError(f"{path} is not a readable checkpoint (not written by torch.save, "
                              f"or damaged): {reason}") from None
        raise UntrustedCheckpoint(path, f"it holds more than tensors and plain values ({reason})"
                                  ) from None
    except Exception as error:  # torch raises many types for a file that is no checkpoint
        raise ConfigError(f"{path} is not a readable checkpoint (not written by torch.save, or "
                          f"damaged): {type(error).__name__}: {_last_line(error)}") from None


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


# -- the names a checkpoint holds --------------------------------------------------------------
def check_names(checkpoint: dict, path) -> None:
    """Refuse a checkpoint whose ``model_class`` or any ``_target_`` is off the allowlist, or
    whose recorded data config holds an interpolation (Hydra would resolve it on building)."""
    info = checkpoint.get("seqmodels")
    if isinstance(info, dict) and "model_class" in info:
        name = info["model_class"]
        if name not in TASK_MODULES:
            raise UntrustedCheckpoint(path, f"its model_class {name!r} is not one of seqmodels' "
                                      f"task modules ({', '.join(sorted(TASK_MODULES))})")
    for where, node in _configs_with_targets(checkpoint, ()):
        name = node["_target_"]
        kind, allowed = ROLES.get(where[-1] if where else "", ANY_ROLE)
        if not (isinstance(name, str) and allowed(name)):
            raise UntrustedCheckpoint(path, f"{'.'.join(map(str, where))}._target_ is {name!r}, "
                                      f"which is not {kind}")
    data = info.get("data") if isinstance(info, dict) else None
    for where, value in _strings(data, ("seqmodels", "data")):
        if "${" in value:
            raise UntrustedCheckpoint(path, f"{'.'.join(map(str, where))} holds an "
                                      f"interpolation ({value!r}), which no recorded data "
                                      "config has")


def _configs_with_targets(node: Any, where: tuple) -> Iterator[tuple[tuple, dict]]:
    if isinstance(node, dict):
        if "_target_" in node:
            yield where, node
        for key, value in node.items():
            yield from _configs_with_targets(value, (*where, key))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _configs_with_targets(value, (*where, index))


def _strings(node: Any, where: tuple) -> Iterator[tuple[tuple, str]]:
    if isinstance(node, str):
        yield where, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, (*where, key))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _strings(value, (*where, index))


# -- building the task module ------------------------------------------------------------------
def model_class_of(checkpoint: dict, path) -> type:
    """The task module class a checkpoint names (imported only once it passed the checks)."""
    info = checkpoint.get("seqmodels")
    if not isinstance(info, dict) or not isinstance(info.get("model_class"), str):
        raise ConfigError(f"{path} is not a seqmodels checkpoint (no model class or vocabularies)")
    name = info["model_class"]
    module_name, _, class_name = name.rpartition(".")
    try:
        model_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:  # trust_checkpoint=true only
        raise ConfigError(f"{path}: its model_class {name!r} cannot be imported: "
                          f"{_last_line(error)}") from None
    if not (isinstance(model_class, type) and issubclass(model_class, L.LightningModule)):
        raise ConfigError(f"{path}: its model_class {name!r} is not a LightningModule")
    return model_class


def build_task_module(checkpoint: dict, path, map_location="cpu"):
    """The task module a checkpoint holds, built from its hyperparameters, then its vocabularies
    and settings (``on_load_checkpoint``, which also renames older weights) and its weights:
    what Lightning's ``load_from_checkpoint`` does, from the dict already read."""
    model_class = model_class_of(checkpoint, path)
    hparams = checkpoint.get("hyper_parameters") or {}
    if not isinstance(hparams, dict):
        raise ConfigError(f"{path}: its hyper_parameters are a {type(hparams).__name__}, not a "
                          "dict")
    parameters = inspect.signature(model_class).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        # As Lightning's loader: settings that an older version had and this one has not go.
        hparams = {key: value for key, value in hparams.items() if key in parameters}
    try:
        model = model_class(**hparams)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{path}: its hyperparameters do not build a {model_class.__name__}: "
                          f"{_last_line(error)}") from None
    model.on_load_checkpoint(checkpoint)
    try:
        model.load_state_dict(checkpoint.get("state_dict") or {})
    except RuntimeError as error:
        reason = " ".join(str(error).split())[:400]
        raise ConfigError(f"{path}: its weights do not fit the {model_class.__name__} its "
                          f"hyperparameters describe: {reason}") from None
    return model.to(map_location)
