"""A training run tracked in MLflow (``logger=mlflow``): Lightning's ``MLFlowLogger``, plus

- the run's settings as its params: the resolved ``model``, ``data`` and ``trainer`` groups and
  the seed, flattened to the keys TensorBoard's HParams tab shows (``model/encoder/cell``),
  logged when the logger is built, so the run is in MLflow before training starts;
- tags: the config choices (``data``, ``model``, ``experiment``, ...), the config's ``tags``
  and the run directory;
- as artifacts after the run: ``config_resolved.yaml``, ``metrics.json`` and the best
  checkpoint (``upload_run_files``, called by ``seqmodels-train``).

Metrics go through Lightning as for every logger: each logged value with its step, so the
validation metrics once per epoch.

The tracking store is checked when the logger is built: a URI that does not answer is one line
of error before anything is read or trained.
"""

import fcntl
import logging
import os
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from seqmodels.callbacks.tensorboard_views.hparams_tab import flatten
from seqmodels.errors import ConfigError

log = logging.getLogger(__name__)

# The config groups whose choice is a tag of the run.
TAGGED_CHOICES = ("experiment", "data", "model", "model/encoder", "trainer", "hparams_search")
# How long the check of a tracking server may take: no retries, a short timeout.
CHECK_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


@contextmanager
def environment(values: Mapping[str, str]):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def first_use_lock(uri: str):
    """A SQLite store is created on first use (tables, migrations); the jobs of a parallel
    sweep would all create it at once. They take turns, through a lock file beside it."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(uri[len("sqlite:///"):]).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def check_tracking_uri(uri: str) -> None:
    """One request to the tracking store; a ConfigError naming it when it does not answer."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError("logger=mlflow needs MLflow: pip install -e \".[mlflow]\" (or "
                          "pip install mlflow)") from None
    try:
        with environment(CHECK_ENV), first_use_lock(uri):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise ConfigError(f"logger.mlflow.tracking_uri={uri}: no MLflow tracking store answers "
                          f"there ({reason}); start one (`mlflow server`), or leave the default, "
                          "a local store in logs/mlflow.db") from None


def choice_tags() -> dict[str, str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {name: str(choices[name]) for name in TAGGED_CHOICES
            if choices.get(name) not in (None, "null")}


class MLflowRun(MLFlowLogger):
    """``MLFlowLogger`` that records a seqmodels run (module docstring).

    :param settings: the nested settings to log as params (the config passes the resolved
        ``model``, ``data`` and ``trainer`` groups and the seed).
    :param run_dir: the run's directory, a tag, and where its files are read from.
    :param tags: extra tags: a mapping, or a list (the config's ``tags``: ``tag.<name>``)."""

    def __init__(self, settings: Mapping, run_dir: str, tracking_uri: str,
                 experiment_name: str = "seqmodels", run_name: str | None = None,
                 tags: Any = None, artifact_location: str | None = None):
        check_tracking_uri(tracking_uri)
        if isinstance(settings, DictConfig):
            settings = OmegaConf.to_container(settings, resolve=True)
        tags = OmegaConf.to_container(tags) if OmegaConf.is_config(tags) else tags or {}
        if not isinstance(tags, Mapping):  # the config's `tags` list
            tags = {f"tag.{name}": "true" for name in tags}
        all_tags = {**choice_tags(), "seqmodels.run_dir": str(run_dir), **tags}
        if not str(tracking_uri).startswith(("sqlite:", "file:")):
            artifact_location = None  # a server keeps the artifacts where it is set up to
        super().__init__(experiment_name=experiment_name, tracking_uri=tracking_uri,
                         run_name=run_name or default_run_name(run_dir), tags=all_tags,
                         artifact_location=artifact_location, log_model=False)
        self.run_dir = Path(run_dir)
        # Now, before training: the run and its settings are in MLflow from the start.
        super().log_hyperparams(flatten(settings))

    def log_hyperparams(self, params: Any) -> None:
        """Lightning's call with the model's own hyperparameters: already in the params under
        their config names (``model/...``); MLflow would refuse none, but a second, partial
        copy of the settings under other names helps nobody."""

    def log_run_files(self, best_checkpoint: str | None) -> None:
        """The run's resolved config, final metrics and best checkpoint, as artifacts."""
        for name in ("config_resolved.yaml", "metrics.json"):
            path = self.run_dir / name
            if path.is_file():
                self.experiment.log_artifact(self.run_id, str(path))
        if best_checkpoint and Path(best_checkpoint).is_file():
            self.experiment.log_artifact(self.run_id, best_checkpoint, "checkpoints")
        log.info("MLflow run %s: params, metrics and files in %s", self.run_id,
                 self._tracking_uri)


def default_run_name(run_dir: str) -> str:
    """``runs/<time>`` or ``multiruns/<time>/<job>``: the run's directory under the task's."""
    parts = Path(run_dir).parts
    for anchor in ("runs", "multiruns"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor):])
    return Path(run_dir).name


def upload_run_files(trainer: L.Trainer, best_checkpoint: str | None) -> None:
    """After the run: its files to every MLflow logger it has (rank 0 only)."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, MLflowRun):
            logger.log_run_files(best_checkpoint)
